//! Typed emulator configuration, and the parsers that turn command-line specs into it.
//!
//! The parsers live here rather than in the CLI so that the `hub` flags, the `local`
//! command and tests all agree on one syntax; each error names the flag and the bad value.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::faults::Faults;

/// Default number of entries in one page of a tree or bucket listing (the Hub's own size).
pub const DEFAULT_PAGE_SIZE: usize = 1000;

/// Everything the emulator needs to start. Build one with [`EmulatorConfig::new`] and adjust
/// the public fields.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Root of all persistent state (metadata, git blobs, CAS data). Reused across restarts.
    pub data_dir: PathBuf,
    /// Public address; `127.0.0.1:0` picks an ephemeral port.
    pub listen: SocketAddr,
    /// Accepted API tokens: the bearer value is the name.
    pub tokens: Vec<(String, TokenScope)>,
    /// Content loaded at start, before the listener serves requests.
    pub imports: Vec<Import>,
    /// Ids made private: `ns/name` for buckets, `models/ns/name`, `datasets/ns/name`,
    /// `spaces/ns/name` for repos. Imported resources not listed here are public; other
    /// stored resources keep their visibility unless listed.
    pub private: Vec<String>,
    /// Delay added before answering every request (API and CAS).
    pub latency_ms: u64,
    /// Fraction of requests answered with a transient error (429 or 503, half each).
    pub fail_rate: f64,
    /// Largest page a listing returns; a client's `limit` may only lower it.
    pub page_size: usize,
    /// Read-only public buckets whose `COUNT` entries are synthesized on demand.
    pub synthetic_buckets: Vec<(String, u64)>,
}

impl EmulatorConfig {
    /// A configuration with no tokens, no imports, no faults, an ephemeral port on loopback
    /// and the Hub's page size.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tokens: Vec::new(),
            imports: Vec::new(),
            private: Vec::new(),
            latency_ms: 0,
            fail_rate: 0.0,
            page_size: DEFAULT_PAGE_SIZE,
            synthetic_buckets: Vec::new(),
        }
    }

    /// The fault settings in force at start, derived from `latency_ms` and `fail_rate`.
    pub fn initial_faults(&self) -> Faults {
        Faults { fail_rate: self.fail_rate, latency_ms: self.latency_ms, ..Faults::default() }
    }

    /// Checks values that each parser cannot see on its own.
    pub fn validate(&self) -> Result<(), String> {
        if self.page_size == 0 {
            return Err("page size must be at least 1".to_string());
        }
        if !(0.0..=1.0).contains(&self.fail_rate) {
            return Err(format!("fail rate must be within 0..=1, got {}", self.fail_rate));
        }
        let mut names: Vec<&str> = self.tokens.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("token {:?} is given twice", w[0]));
        }
        for (id, _) in &self.synthetic_buckets {
            validate_id(id).map_err(|e| format!("synthetic bucket {id:?}: {e}"))?;
            let clash = self.imports.iter().any(|i| matches!(i, Import::Bucket { id: b, .. } if b == id));
            if clash {
                return Err(format!("bucket {id:?} is both imported and synthetic"));
            }
        }
        for id in &self.private {
            parse_private_id(id)?;
        }
        Ok(())
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenScope {
    /// Read public and private resources.
    Read,
    /// Read, plus create, delete and change buckets and get CAS write tokens.
    Write,
}

/// The three kinds of git-backed repositories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RepoKind {
    Model,
    Dataset,
    Space,
}

impl RepoKind {
    /// All kinds, in URL-registration order.
    pub const ALL: [RepoKind; 3] = [RepoKind::Model, RepoKind::Dataset, RepoKind::Space];

    /// The `/api/{plural}/...` segment.
    pub fn plural(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
            RepoKind::Space => "spaces",
        }
    }

    /// The prefix of resolve URLs: models have none.
    pub fn url_prefix(self) -> &'static str {
        match self {
            RepoKind::Model => "",
            RepoKind::Dataset => "datasets/",
            RepoKind::Space => "spaces/",
        }
    }

    /// Parses the plural form (`models`, `datasets`, `spaces`).
    pub fn from_plural(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.plural() == s)
    }
}

/// One directory to load into the emulator at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Import {
    /// Every file under `dir` becomes an entry of bucket `id` (created if missing).
    Bucket { id: String, dir: PathBuf },
    /// `dir` becomes the tree of a new commit on branch `main` of repo `id`, optionally tagged.
    Repo { kind: RepoKind, id: String, dir: PathBuf, tag: Option<String> },
}

/// Checks a namespace or name: 1 to 96 characters from `A-Za-z0-9._-`, not `.` or `..`.
pub fn validate_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 96 {
        return Err(format!("{s:?} must be 1 to 96 characters long"));
    }
    if s == "." || s == ".." {
        return Err(format!("{s:?} is not a valid name"));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!("{s:?} contains {c:?}; only A-Z a-z 0-9 . _ - are allowed"));
    }
    Ok(())
}

/// Checks an `ns/name` id.
pub fn validate_id(id: &str) -> Result<(), String> {
    let (ns, name) = id.split_once('/').ok_or_else(|| format!("{id:?} is not of the form NAMESPACE/NAME"))?;
    validate_name(ns)?;
    validate_name(name)
}

/// Parses `--token NAME:read|write`.
pub fn parse_token_spec(spec: &str) -> Result<(String, TokenScope), String> {
    let bad = |why: &str| format!("--token expects NAME:read|write, got {spec:?}: {why}");
    let (name, scope) = spec.rsplit_once(':').ok_or_else(|| bad("missing ':'"))?;
    if name.is_empty() {
        return Err(bad("empty token name"));
    }
    if let Some(c) = name.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(&format!("token name contains {c:?}")));
    }
    let scope = match scope {
        "read" => TokenScope::Read,
        "write" => TokenScope::Write,
        other => return Err(bad(&format!("unknown scope {other:?}"))),
    };
    Ok((name.to_string(), scope))
}

/// Parses `--import-bucket NS/NAME=DIR`.
pub fn parse_bucket_import(spec: &str) -> Result<Import, String> {
    let (id, dir) = split_id_dir("--import-bucket", "NS/NAME=DIR", spec)?;
    Ok(Import::Bucket { id, dir: PathBuf::from(dir) })
}

/// Parses `--import-model NS/NAME=DIR[@TAG]` and its dataset/space siblings.
///
/// The tag is whatever follows the last `@`, provided it contains no `/` (so a directory
/// named `a@b/c` stays a directory).
pub fn parse_repo_import(kind: RepoKind, spec: &str) -> Result<Import, String> {
    let flag = match kind {
        RepoKind::Model => "--import-model",
        RepoKind::Dataset => "--import-dataset",
        RepoKind::Space => "--import-space",
    };
    let (id, rest) = split_id_dir(flag, "NS/NAME=DIR[@TAG]", spec)?;
    let (dir, tag) = match rest.rsplit_once('@') {
        Some((dir, tag)) if !tag.contains('/') => {
            validate_ref_name(tag).map_err(|e| format!("{flag} {spec:?}: bad tag: {e}"))?;
            (dir, Some(tag.to_string()))
        }
        _ => (rest.as_str(), None),
    };
    if dir.is_empty() {
        return Err(format!("{flag} expects NS/NAME=DIR[@TAG], got {spec:?}: empty directory"));
    }
    Ok(Import::Repo { kind, id, dir: PathBuf::from(dir), tag })
}

/// Parses `--synthetic-bucket NS/NAME=COUNT`.
pub fn parse_synthetic_bucket(spec: &str) -> Result<(String, u64), String> {
    let (id, count) = split_id_dir("--synthetic-bucket", "NS/NAME=COUNT", spec)?;
    let count: u64 = count
        .parse()
        .map_err(|_| format!("--synthetic-bucket expects NS/NAME=COUNT, got {spec:?}: {count:?} is not a number"))?;
    if count == 0 || count > 100_000_000 {
        return Err(format!("--synthetic-bucket {spec:?}: COUNT must be within 1..=100000000"));
    }
    Ok((id, count))
}

/// Parses `--fail-rate P` (a probability).
pub fn parse_fail_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("--fail-rate expects a number within 0..=1, got {s:?}")),
    }
}

/// Parses `--page-size N` (at least 1).
pub fn parse_page_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("--page-size expects a whole number of at least 1, got {s:?}")),
    }
}

/// Parses `--private ID` into what it designates: `(None, "ns/name")` for a bucket, or
/// `(Some(kind), "ns/name")` for a repo.
pub fn parse_private_id(id: &str) -> Result<(Option<RepoKind>, String), String> {
    let bad = |e: String| format!("--private expects NS/NAME or models|datasets|spaces/NS/NAME, got {id:?}: {e}");
    match id.split_once('/') {
        Some((first, rest)) if rest.contains('/') => {
            let kind = RepoKind::from_plural(first).ok_or_else(|| bad(format!("unknown repo type {first:?}")))?;
            validate_id(rest).map_err(bad)?;
            Ok((Some(kind), rest.to_string()))
        }
        _ => {
            validate_id(id).map_err(bad)?;
            Ok((None, id.to_string()))
        }
    }
}

/// Checks a branch or tag name given on the command line.
pub fn validate_ref_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 200 {
        return Err(format!("{name:?} must be 1 to 200 characters long"));
    }
    if name.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(format!("{name:?} has an empty, '.' or '..' component"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
    {
        return Err(format!("{name:?} contains {c:?}"));
    }
    Ok(())
}

fn split_id_dir(flag: &str, form: &str, spec: &str) -> Result<(String, String), String> {
    let (id, rest) = spec.split_once('=').ok_or_else(|| format!("{flag} expects {form}, got {spec:?}: missing '='"))?;
    validate_id(id).map_err(|e| format!("{flag} expects {form}, got {spec:?}: {e}"))?;
    if rest.is_empty() {
        return Err(format!("{flag} expects {form}, got {spec:?}: nothing after '='"));
    }
    Ok((id.to_string(), rest.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_specs() {
        assert_eq!(parse_token_spec("alice:write").unwrap(), ("alice".into(), TokenScope::Write));
        assert_eq!(parse_token_spec("a:b:read").unwrap(), ("a:b".into(), TokenScope::Read));
        for bad in ["alice", ":read", "alice:admin", "al ice:read"] {
            let err = parse_token_spec(bad).unwrap_err();
            assert!(err.contains("--token") && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn repo_import_specs() {
        assert_eq!(
            parse_repo_import(RepoKind::Model, "org/m=/tmp/x@v1").unwrap(),
            Import::Repo { kind: RepoKind::Model, id: "org/m".into(), dir: "/tmp/x".into(), tag: Some("v1".into()) }
        );
        assert_eq!(
            parse_repo_import(RepoKind::Dataset, "org/d=/tmp/a@b/c").unwrap(),
            Import::Repo { kind: RepoKind::Dataset, id: "org/d".into(), dir: "/tmp/a@b/c".into(), tag: None }
        );
        assert!(parse_repo_import(RepoKind::Model, "org=/tmp").unwrap_err().contains("--import-model"));
        assert!(parse_repo_import(RepoKind::Model, "org/m=@v1").is_err());
    }

    #[test]
    fn synthetic_and_private_specs() {
        assert_eq!(parse_synthetic_bucket("s/big=2500").unwrap(), ("s/big".into(), 2500));
        assert!(parse_synthetic_bucket("s/big=many").unwrap_err().contains("many"));
        assert_eq!(parse_private_id("a/b").unwrap(), (None, "a/b".into()));
        assert_eq!(parse_private_id("datasets/a/b").unwrap(), (Some(RepoKind::Dataset), "a/b".into()));
        assert!(parse_private_id("things/a/b").is_err());
        assert!(parse_fail_rate("1.5").is_err());
        assert!(parse_page_size("0").is_err());
    }
}
