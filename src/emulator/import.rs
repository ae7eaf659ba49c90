//! Loading local directories into buckets and repos at start.
//!
//! Bucket imports upload every file through hf-xet and add (or refresh) one entry per file.
//! Repo imports build a commit on `main` holding exactly the directory's files: files under
//! 10 MiB become git blobs, larger ones Xet files, as on the Hub. Importing content that
//! `main` already holds adds no commit (restarts are idempotent); a tag is (re)pointed at
//! whatever commit holds the content.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha1::{Digest as _, Sha1};

use super::cas::Cas;
use super::config::{Import, RepoKind};
use super::error::{EmulatorError, Result};
use super::paths::validate_path;
use super::repos::lfs_pointer;
use super::store::{Bucket, BucketFile, Commit, Repo, RepoFile, Store, XetContent, git_blob_oid};
use super::timefmt::now_ms;

/// Repo files at least this large are stored as Xet files.
pub const XET_THRESHOLD: u64 = 10 * 1024 * 1024;

/// Runs all imports. Repo imports are applied per repo as one sequence of trees: if the
/// history of `main` already ends with a prefix of that sequence (a restart replaying the
/// same imports), those commits are reused and only the rest is committed on top.
pub async fn run_all(store: &Store, cas: &Cas, imports: &[Import], is_private: impl Fn(&Import) -> bool) -> Result<()> {
    let mut repos: Vec<RepoImports> = Vec::new();
    for import in imports {
        match import {
            Import::Bucket { id, dir } => import_bucket(store, cas, id, dir, is_private(import)).await?,
            Import::Repo { kind, id, dir, tag } => {
                let tree = build_tree(store, cas, *kind, id, dir).await?;
                let key = (*kind, id.clone());
                let snapshot = Snapshot { tree, tag: tag.clone(), dir: dir.display().to_string() };
                match repos.iter_mut().find(|r| r.key == key) {
                    Some(r) => r.seq.push(snapshot),
                    None => repos.push(RepoImports { key, private: is_private(import), seq: vec![snapshot] }),
                }
            }
        }
    }
    for RepoImports { key: (kind, id), private, seq } in repos {
        commit_sequence(store, kind, &id, private, seq)?;
    }
    Ok(())
}

type Tree = BTreeMap<String, RepoFile>;

/// The imports of one repo, in command-line order.
struct RepoImports {
    key: (RepoKind, String),
    private: bool,
    seq: Vec<Snapshot>,
}

/// One imported directory, as a tree.
struct Snapshot {
    tree: Tree,
    tag: Option<String>,
    dir: String,
}

/// A regular file found under an import directory.
struct LocalFile {
    rel: String,
    abs: PathBuf,
    size: u64,
    mtime_ms: u64,
}

async fn import_bucket(store: &Store, cas: &Cas, id: &str, dir: &Path, private: bool) -> Result<()> {
    let what = || format!("bucket {id} from {}", dir.display());
    let files = walk(dir).map_err(|m| EmulatorError::Import { what: what(), message: m })?;
    let paths: Vec<PathBuf> = files.iter().map(|f| f.abs.clone()).collect();
    let stored =
        cas.upload_paths(&paths).await.map_err(|e| EmulatorError::Import { what: what(), message: e.to_string() })?;

    let now = now_ms();
    let mut state = store.write();
    let created = !state.buckets.contains_key(id);
    let bucket = state.buckets.entry(id.to_string()).or_insert_with(|| Bucket::new(id, private, now));
    let mut changed = created || bucket.private != private;
    bucket.private = private;
    for (f, s) in files.iter().zip(stored) {
        let unchanged = bucket.files.get(&f.rel).is_some_and(|e| e.xet_hash == s.hash && e.mtime_ms == f.mtime_ms);
        if unchanged {
            continue;
        }
        let entry =
            BucketFile { xet_hash: s.hash, size: s.size, mtime_ms: f.mtime_ms, uploaded_ms: now, content_type: None };
        bucket.insert(f.rel.clone(), entry);
        changed = true;
    }
    if changed {
        bucket.updated_ms = now.max(bucket.updated_ms);
        let snapshot = bucket.clone();
        store.save_bucket(&snapshot)?;
    }
    tracing::info!(bucket = id, files = files.len(), "imported bucket");
    Ok(())
}

/// Stores a directory's files (blobs on disk, large files in the CAS) and returns its tree.
async fn build_tree(store: &Store, cas: &Cas, kind: RepoKind, id: &str, dir: &Path) -> Result<Tree> {
    let fail = |message: String| EmulatorError::Import {
        what: format!("{} {id} from {}", kind.plural(), dir.display()),
        message,
    };
    let files = walk(dir).map_err(fail)?;
    let mut tree = Tree::new();
    let (large, small): (Vec<&LocalFile>, Vec<&LocalFile>) = files.iter().partition(|f| f.size >= XET_THRESHOLD);
    for f in small {
        let content = std::fs::read(&f.abs).map_err(|e| fail(format!("reading {}: {e}", f.abs.display())))?;
        let oid = store.put_blob(&content)?;
        tree.insert(f.rel.clone(), RepoFile { size: content.len() as u64, oid, xet: None });
    }
    let large_paths: Vec<PathBuf> = large.iter().map(|f| f.abs.clone()).collect();
    if !large_paths.is_empty() {
        let stored = cas.upload_paths(&large_paths).await.map_err(|e| fail(e.to_string()))?;
        for (f, s) in large.iter().zip(stored) {
            let pointer = lfs_pointer(&s.sha256, s.size);
            let file = RepoFile {
                size: s.size,
                oid: git_blob_oid(pointer.as_bytes()),
                xet: Some(XetContent { hash: s.hash, sha256: s.sha256 }),
            };
            tree.insert(f.rel.clone(), file);
        }
    }
    Ok(tree)
}

/// Makes `main` end with the given trees (see [`run_all`]) and points the tags.
fn commit_sequence(store: &Store, kind: RepoKind, id: &str, private: bool, seq: Vec<Snapshot>) -> Result<()> {
    let now = now_ms();
    let mut state = store.write();
    let repo = state.repos.entry((kind, id.to_string())).or_insert_with(|| Repo {
        kind,
        id: id.to_string(),
        private,
        created_ms: now,
        branches: BTreeMap::new(),
        tags: BTreeMap::new(),
        commits: BTreeMap::new(),
    });
    repo.private = private;

    // First-parent history of main, oldest first.
    let mut chain: Vec<String> = Vec::new();
    let mut at = repo.branches.get("main").cloned();
    while let Some(sha) = at {
        at = repo.commits.get(&sha).and_then(|c| c.parent.clone());
        chain.push(sha);
    }
    chain.reverse();
    let reused = (0..=seq.len().min(chain.len()))
        .rev()
        .find(|&k| {
            chain[chain.len() - k..]
                .iter()
                .zip(&seq[..k])
                .all(|(sha, snap)| repo.commits.get(sha).is_some_and(|c| c.files == snap.tree))
        })
        .unwrap_or(0);

    let mut parent = chain.last().cloned();
    for (i, Snapshot { tree, tag, dir }) in seq.into_iter().enumerate() {
        let sha = if i < reused {
            chain[chain.len() - reused + i].clone()
        } else {
            let sha = commit_id(parent.as_deref(), &tree);
            let title = format!("Import {dir}");
            repo.commits.insert(
                sha.clone(),
                Commit { id: sha.clone(), parent: parent.clone(), created_ms: now, title, files: tree },
            );
            repo.branches.insert("main".to_string(), sha.clone());
            parent = Some(sha.clone());
            sha
        };
        if let Some(tag) = tag {
            repo.tags.insert(tag, sha.clone());
        }
        tracing::info!(repo = id, kind = kind.plural(), commit = sha.as_str(), reused = i < reused, "imported repo");
    }
    let snapshot = repo.clone();
    store.save_repo(&snapshot)
}

/// A commit id: SHA-1 over the parent and the tree (no identical pair is ever committed twice).
fn commit_id(parent: Option<&str>, tree: &BTreeMap<String, RepoFile>) -> String {
    let mut h = Sha1::new();
    h.update(format!("parent {}\n", parent.unwrap_or("-")).as_bytes());
    for (path, f) in tree {
        h.update(path.as_bytes());
        h.update(b"\0");
        h.update(f.oid.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// Regular files under `root` (following symlinks), sorted by their `/`-joined relative path.
fn walk(root: &Path) -> std::result::Result<Vec<LocalFile>, String> {
    let meta = std::fs::metadata(root).map_err(|e| format!("{}: {e}", root.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", root.display()));
    }
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("listing {}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("listing {}: {e}", dir.display()))?;
            let name = entry.file_name();
            let name = name.to_str().ok_or_else(|| format!("{}: file name is not UTF-8", entry.path().display()))?;
            let child_rel = if rel.is_empty() { name.to_string() } else { format!("{rel}/{name}") };
            let abs = entry.path();
            let meta = std::fs::metadata(&abs).map_err(|e| format!("{}: {e}", abs.display()))?;
            if meta.is_dir() {
                stack.push((abs, child_rel));
            } else if meta.is_file() {
                validate_path(&child_rel, "file path").map_err(|e| e.to_string())?;
                let mtime_ms = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as u64);
                out.push(LocalFile { rel: child_rel, abs, size: meta.len(), mtime_ms });
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_lists_nested_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        std::fs::write(dir.path().join("b/c/x"), b"1").unwrap();
        std::fs::write(dir.path().join("a"), b"22").unwrap();
        let files = walk(dir.path()).unwrap();
        let rels: Vec<_> = files.iter().map(|f| (f.rel.as_str(), f.size)).collect();
        assert_eq!(rels, vec![("a", 2), ("b/c/x", 1)]);
        assert!(walk(&dir.path().join("a")).is_err());
    }
}
