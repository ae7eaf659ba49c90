//! [`Source`]: what a mount serves (a bucket prefix or a repo subfolder at a revision), parsed
//! and validated once at the edge so no unchecked value reaches a URL or a path.

use std::fmt;

/// A repo kind and its URL spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
    Space,
}

impl RepoKind {
    /// Singular name, as users say it.
    pub fn singular(self) -> &'static str {
        match self {
            RepoKind::Model => "model",
            RepoKind::Dataset => "dataset",
            RepoKind::Space => "space",
        }
    }

    /// Plural name, as the API spells it (`/api/models/...`).
    pub fn plural(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
            RepoKind::Space => "spaces",
        }
    }

    /// Parse `model`, `models`, `dataset`, ... .
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "model" | "models" => Some(RepoKind::Model),
            "dataset" | "datasets" => Some(RepoKind::Dataset),
            "space" | "spaces" => Some(RepoKind::Space),
            _ => None,
        }
    }
}

/// What a mount serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A bucket, optionally narrowed to a key prefix (a directory inside it).
    Bucket { namespace: String, name: String, prefix: String },
    /// A repo at a revision (branch, tag or commit), optionally narrowed to a subfolder.
    Repo { kind: RepoKind, namespace: String, name: String, subdir: String, revision: String },
}

/// Why a source, path or revision was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("invalid {what} {value:?}: {why}")]
    Invalid { what: &'static str, value: String, why: &'static str },
}

fn invalid(what: &'static str, value: &str, why: &'static str) -> SourceError {
    SourceError::Invalid { what, value: value.to_string(), why }
}

impl Source {
    /// Parse `NS/NAME[/PREFIX]`.
    pub fn parse_bucket(spec: &str) -> Result<Self, SourceError> {
        let (namespace, name, rest) = split_id("bucket", spec)?;
        Ok(Source::Bucket { namespace, name, prefix: rest })
    }

    /// Parse `[models/|datasets/|spaces/]NS/NAME[/SUBDIR]` with a revision.
    pub fn parse_repo(spec: &str, revision: &str) -> Result<Self, SourceError> {
        let (kind, id) = match spec.split_once('/') {
            Some((first, rest)) if matches!(first, "models" | "datasets" | "spaces") => {
                (RepoKind::parse(first).unwrap_or(RepoKind::Model), rest)
            }
            _ => (RepoKind::Model, spec),
        };
        let (namespace, name, subdir) = split_id("repo", id)?;
        validate_revision(revision)?;
        Ok(Source::Repo { kind, namespace, name, subdir, revision: revision.to_string() })
    }

    /// `ns/name`.
    pub fn id(&self) -> String {
        match self {
            Source::Bucket { namespace, name, .. } | Source::Repo { namespace, name, .. } => {
                format!("{namespace}/{name}")
            }
        }
    }

    /// The path inside the bucket or repo that the mount root maps to (`""` for the top).
    pub fn root(&self) -> &str {
        match self {
            Source::Bucket { prefix, .. } => prefix,
            Source::Repo { subdir, .. } => subdir,
        }
    }

    /// A stable, file-name-safe key for per-source local state (overlay, staging).
    pub fn state_key(&self) -> String {
        let raw = match self {
            Source::Bucket { .. } => format!("bucket/{}/{}", self.id(), self.root()),
            Source::Repo { kind, .. } => format!("{}/{}/{}", kind.plural(), self.id(), self.root()),
        };
        raw.trim_end_matches('/')
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' { c } else { '~' })
            .collect()
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Bucket { prefix, .. } if prefix.is_empty() => write!(f, "bucket {}", self.id()),
            Source::Bucket { prefix, .. } => write!(f, "bucket {}/{prefix}", self.id()),
            Source::Repo { kind, subdir, revision, .. } => {
                write!(f, "{} {}", kind.singular(), self.id())?;
                if !subdir.is_empty() {
                    write!(f, "/{subdir}")?;
                }
                write!(f, "@{revision}")
            }
        }
    }
}

/// Split `NS/NAME[/REST]`, validating each part.
fn split_id(what: &'static str, spec: &str) -> Result<(String, String, String), SourceError> {
    let mut parts = spec.splitn(3, '/');
    let namespace = parts.next().unwrap_or_default();
    let Some(name) = parts.next() else {
        return Err(invalid(what, spec, "expected NAMESPACE/NAME"));
    };
    validate_id_part(what, spec, namespace)?;
    validate_id_part(what, spec, name)?;
    let rest = parts.next().unwrap_or("").trim_end_matches('/');
    if !rest.is_empty() {
        validate_relative_path(rest)?;
    }
    Ok((namespace.to_string(), name.to_string(), rest.to_string()))
}

fn validate_id_part(what: &'static str, spec: &str, part: &str) -> Result<(), SourceError> {
    if part.is_empty() {
        return Err(invalid(what, spec, "namespace and name must not be empty"));
    }
    if part.len() > 96 {
        return Err(invalid(what, spec, "namespace and name are at most 96 characters"));
    }
    if !part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(invalid(what, spec, "namespace and name may only use letters, digits, '-', '_' and '.'"));
    }
    if part.starts_with(['.', '-']) || part.contains("..") {
        return Err(invalid(what, spec, "namespace and name must not start with '.' or '-' or contain '..'"));
    }
    Ok(())
}

/// Check a `/`-separated relative path: no empty, `.` or `..` segments, no NUL, no leading `/`.
pub fn validate_relative_path(path: &str) -> Result<(), SourceError> {
    if path.starts_with('/') {
        return Err(invalid("path", path, "must be relative"));
    }
    for seg in path.split('/') {
        if seg.is_empty() {
            return Err(invalid("path", path, "empty path segment"));
        }
        if seg == "." || seg == ".." {
            return Err(invalid("path", path, "'.' and '..' segments are not allowed"));
        }
        if seg.contains('\0') {
            return Err(invalid("path", path, "NUL byte"));
        }
    }
    Ok(())
}

/// Check a revision (branch, tag or commit sha) before it reaches a URL.
pub fn validate_revision(rev: &str) -> Result<(), SourceError> {
    if rev.is_empty() {
        return Err(invalid("revision", rev, "must not be empty"));
    }
    if rev.len() > 255 {
        return Err(invalid("revision", rev, "longer than 255 characters"));
    }
    if rev.contains("..") {
        return Err(invalid("revision", rev, "must not contain '..'"));
    }
    if !rev.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '+')) {
        return Err(invalid("revision", rev, "may only use letters, digits, '-', '_', '.', '/' and '+'"));
    }
    if rev.starts_with(['/', '.', '-']) || rev.ends_with('/') || rev.contains("//") {
        return Err(invalid("revision", rev, "malformed ref name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_with_and_without_prefix() {
        assert_eq!(
            Source::parse_bucket("acme/data").unwrap(),
            Source::Bucket { namespace: "acme".into(), name: "data".into(), prefix: "".into() }
        );
        let s = Source::parse_bucket("acme/data/runs/7/").unwrap();
        assert_eq!(s.root(), "runs/7");
        assert_eq!(s.to_string(), "bucket acme/data/runs/7");
    }

    #[test]
    fn repo_kinds_and_subdir() {
        let s = Source::parse_repo("datasets/acme/ds/train", "main").unwrap();
        assert!(matches!(s, Source::Repo { kind: RepoKind::Dataset, .. }));
        assert_eq!(s.root(), "train");
        let m = Source::parse_repo("acme/m", "v1.0").unwrap();
        assert!(matches!(m, Source::Repo { kind: RepoKind::Model, .. }));
        assert_eq!(m.to_string(), "model acme/m@v1.0");
    }

    #[test]
    fn rejects_bad_ids_paths_and_revisions() {
        assert!(Source::parse_bucket("acme").is_err());
        assert!(Source::parse_bucket("/data").is_err());
        assert!(Source::parse_bucket("acme/da ta").is_err());
        assert!(Source::parse_bucket("acme/data/../x").is_err());
        assert!(Source::parse_bucket("acme/data/a//b").is_err());
        assert!(Source::parse_repo("acme/m", "../../etc").is_err());
        assert!(Source::parse_repo("acme/m", "main?x=1").is_err());
        assert!(Source::parse_repo("acme/m", "").is_err());
        let err = Source::parse_repo("acme/m", "a..b").unwrap_err().to_string();
        assert!(err.contains("revision") && err.contains("'..'"), "{err}");
        assert!(Source::parse_repo("acme/m", "refs/pr/1").is_ok());
    }

    #[test]
    fn state_keys_are_file_name_safe_and_distinct() {
        let a = Source::parse_bucket("acme/data/x").unwrap().state_key();
        let b = Source::parse_bucket("acme/data").unwrap().state_key();
        assert_ne!(a, b);
        assert!(!a.contains('/'));
    }
}
