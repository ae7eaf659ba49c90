//! Bucket batch commits: NDJSON `addFile` / `copyFile` / `deleteFile` lines applied
//! atomically.
//!
//! Everything is validated before anything changes: each line must parse, every path must
//! be valid, every Xet hash must exist in the CAS (with the declared size), and the result
//! must not make a path both a file and a directory. Adds and copies apply before deletes,
//! as on the Hub. Errors name the offending line (1-based).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Deserialize;

use super::auth::Principal;
use super::buckets::{check_id, with_bucket};
use super::config::RepoKind;
use super::error::{EmulatorError, Result};
use super::paths::validate_path;
use super::server::Shared;
use super::store::BucketFile;
use super::timefmt::now_ms;

/// Timestamps below this are seconds, at or above it milliseconds (10^11 s is year 5138).
const SECONDS_CUTOFF: u64 = 100_000_000_000;

#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
enum Op {
    #[serde(rename = "addFile", rename_all = "camelCase")]
    Add {
        path: String,
        xet_hash: String,
        #[serde(default)]
        size: Option<u64>,
        #[serde(default)]
        mtime: Option<u64>,
        #[serde(default)]
        content_type: Option<String>,
    },
    #[serde(rename = "copyFile", rename_all = "camelCase")]
    Copy {
        path: String,
        xet_hash: String,
        source_repo_type: String,
        source_repo_id: String,
        #[serde(default)]
        size: Option<u64>,
        #[serde(default)]
        mtime: Option<u64>,
        #[serde(default)]
        content_type: Option<String>,
    },
    #[serde(rename = "deleteFile")]
    Delete { path: String },
}

/// A validated addition.
struct Add {
    line: usize,
    file: BucketFile,
}

/// Validates and applies a batch to bucket `id`; returns the number of operations.
pub async fn apply(s: &Shared, who: Principal, id: &str, body: &[u8]) -> Result<usize> {
    if s.synthetic.contains_key(id) {
        return Err(EmulatorError::Forbidden(format!("bucket {id} is synthetic and read-only")));
    }
    with_bucket(s, id, who, |_| Ok(()))?;
    let text = std::str::from_utf8(body).map_err(|_| EmulatorError::BadRequest("batch body is not UTF-8".into()))?;
    let ops = parse(text)?;

    // Validate content against the CAS without holding the state lock.
    let now = now_ms();
    let mut sizes: HashMap<String, u64> = HashMap::new();
    let mut adds: BTreeMap<String, Add> = BTreeMap::new();
    let mut deletes: BTreeSet<String> = BTreeSet::new();
    for (line, op) in &ops {
        let line = *line;
        let at = |e: EmulatorError| at_line(line, e);
        match op {
            Op::Add { path, xet_hash, size, mtime, content_type }
            | Op::Copy { path, xet_hash, size, mtime, content_type, .. } => {
                validate_path(path, "path").map_err(at)?;
                if let Op::Copy { source_repo_type, source_repo_id, .. } = op {
                    check_source(s, who, source_repo_type, source_repo_id).map_err(at)?;
                }
                let actual = match sizes.get(xet_hash) {
                    Some(n) => *n,
                    None => {
                        let n = s.cas.file_size(xet_hash).await.map_err(at)?.ok_or_else(|| {
                            at(EmulatorError::Unprocessable(format!(
                                "xetHash {xet_hash} is not in the CAS; upload it first"
                            )))
                        })?;
                        sizes.insert(xet_hash.clone(), n);
                        n
                    }
                };
                if let Some(declared) = size
                    && *declared != actual
                {
                    return Err(at(EmulatorError::Unprocessable(format!(
                        "size {declared} does not match the {actual} bytes stored under xetHash {xet_hash}"
                    ))));
                }
                let mtime_ms = match mtime {
                    Some(t) if *t < SECONDS_CUTOFF => t.saturating_mul(1000),
                    Some(t) => *t,
                    None => now,
                };
                let file = BucketFile {
                    xet_hash: xet_hash.clone(),
                    size: actual,
                    mtime_ms,
                    uploaded_ms: now,
                    content_type: content_type.clone(),
                };
                adds.insert(path.clone(), Add { line, file });
            }
            Op::Delete { path } => {
                validate_path(path, "path").map_err(at)?;
                deletes.insert(path.clone());
            }
        }
    }

    // Build the new version aside and persist it before it becomes visible, so a failed
    // write leaves memory and disk as they were.
    let mut state = s.store.write();
    let current = state.buckets.get(id).ok_or_else(|| EmulatorError::bucket_not_found(id))?;
    check_shape(&current.files, &adds, &deletes)?;
    let mut next = current.clone();
    for (path, add) in adds {
        next.insert(path, add.file);
    }
    for path in &deletes {
        next.remove(path);
    }
    next.updated_ms = now_ms().max(current.updated_ms + 1);
    s.store.save_bucket(&next)?;
    state.buckets.insert(id.to_string(), next);
    Ok(ops.len())
}

/// Parses the NDJSON lines; blank lines are ignored.
fn parse(text: &str) -> Result<Vec<(usize, Op)>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str::<Op>(l)
                .map(|op| (i + 1, op))
                .map_err(|e| EmulatorError::BadRequest(format!("line {}: invalid operation: {e}", i + 1)))
        })
        .collect()
}

fn at_line(line: usize, e: EmulatorError) -> EmulatorError {
    match e {
        EmulatorError::BadRequest(m) => EmulatorError::BadRequest(format!("line {line}: {m}")),
        EmulatorError::Unprocessable(m) => EmulatorError::Unprocessable(format!("line {line}: {m}")),
        EmulatorError::NotFound { message, .. } => EmulatorError::BadRequest(format!("line {line}: {message}")),
        EmulatorError::Unauthorized(m) | EmulatorError::Forbidden(m) => {
            EmulatorError::Forbidden(format!("line {line}: {m}"))
        }
        other => other,
    }
}

/// The source of a `copyFile` must exist and be readable by the caller.
fn check_source(s: &Shared, who: Principal, kind: &str, id: &str) -> Result<()> {
    check_id(id)?;
    let repo_kind = match kind {
        "bucket" => return with_bucket(s, id, who, |_| Ok(())),
        "model" => RepoKind::Model,
        "dataset" => RepoKind::Dataset,
        "space" => RepoKind::Space,
        other => {
            return Err(EmulatorError::BadRequest(format!(
                "sourceRepoType must be bucket, model, dataset or space, got {other:?}"
            )));
        }
    };
    let state = s.store.read();
    let repo = state.repos.get(&(repo_kind, id.to_string())).ok_or_else(|| EmulatorError::repo_not_found(id))?;
    who.check_read(repo.private, &format!("repository {id}"))
}

/// Rejects a result where a path would be both a file and a directory.
fn check_shape(
    files: &BTreeMap<String, BucketFile>,
    adds: &BTreeMap<String, Add>,
    deletes: &BTreeSet<String>,
) -> Result<()> {
    let exists_after = |p: &str| !deletes.contains(p) && (adds.contains_key(p) || files.contains_key(p));
    for (path, add) in adds {
        if deletes.contains(path) {
            continue;
        }
        let mut ancestor = path.as_str();
        while let Some(i) = ancestor.rfind('/') {
            ancestor = &ancestor[..i];
            if exists_after(ancestor) {
                return Err(EmulatorError::BadRequest(format!(
                    "line {}: {path} would lie under the file {ancestor}",
                    add.line
                )));
            }
        }
        let under = format!("{path}/");
        let below = files
            .range::<str, _>((std::ops::Bound::Included(under.as_str()), std::ops::Bound::Unbounded))
            .map(|(k, _)| k)
            .chain(
                adds.range::<str, _>((std::ops::Bound::Included(under.as_str()), std::ops::Bound::Unbounded))
                    .map(|(k, _)| k),
            )
            .take_while(|k| k.starts_with(&under))
            .find(|k| exists_after(k));
        if let Some(k) = below {
            return Err(EmulatorError::BadRequest(format!(
                "line {}: {path} would be a file while {k} lies under it",
                add.line
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> BucketFile {
        BucketFile { xet_hash: "h".into(), size: 1, mtime_ms: 0, uploaded_ms: 0, content_type: None }
    }

    #[test]
    fn parses_lines_and_names_bad_ones() {
        let ops = parse("{\"type\":\"addFile\",\"path\":\"a\",\"xetHash\":\"h\",\"mtime\":5}\n\n{\"type\":\"deleteFile\",\"path\":\"b\"}\n").unwrap();
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[1].0, 3);
        let err = parse("{\"type\":\"deleteFile\",\"path\":\"b\"}\n{\"type\":\"renameFile\"}").unwrap_err();
        assert!(err.to_string().starts_with("line 2:"), "{err}");
    }

    #[test]
    fn shape_conflicts() {
        let files: BTreeMap<String, BucketFile> = [("a/b".to_string(), file())].into();
        let add = |p: &str| (p.to_string(), Add { line: 1, file: file() });
        // A file where a directory is.
        assert!(check_shape(&files, &[add("a")].into(), &BTreeSet::new()).is_err());
        // Fine once the directory's only file is deleted in the same batch.
        assert!(check_shape(&files, &[add("a")].into(), &["a/b".to_string()].into()).is_ok());
        // A file under a file.
        assert!(check_shape(&files, &[add("a/b/c")].into(), &BTreeSet::new()).is_err());
        // Two adds conflicting with each other.
        assert!(check_shape(&BTreeMap::new(), &[add("x"), add("x/y")].into(), &BTreeSet::new()).is_err());
        assert!(check_shape(&files, &[add("a/c")].into(), &BTreeSet::new()).is_ok());
    }
}
