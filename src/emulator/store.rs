//! All persistent state (buckets, repos and their commits, git blobs) and its on-disk form.
//!
//! Layout under the data directory:
//! ```text
//! state/buckets/{ns}/{name}.json          one bucket: metadata and every entry
//! state/repos/{models|datasets|spaces}/{ns}/{name}.json   refs and commits of one repo
//! blobs/{oid[..2]}/{oid}                  contents of small (non-Xet) repo files
//! cas/                                    the Xet CAS (owned by xet's LocalServer)
//! ```
//! Every metadata write goes to a temporary file that is then renamed over the old one, so
//! a crash leaves either the old or the new version. In memory, everything sits behind one
//! `RwLock` that is never held across an `.await`; a writer persists while holding it, so
//! files on disk are written in the same order as the changes they record.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};
use sha1::{Digest as _, Sha1};

use super::config::RepoKind;
use super::error::{EmulatorError, Result};

/// One bucket entry; all bucket files live in the Xet CAS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketFile {
    pub xet_hash: String,
    pub size: u64,
    /// Modification time reported by the client, in epoch milliseconds.
    pub mtime_ms: u64,
    /// When the entry was added, in epoch milliseconds.
    pub uploaded_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// A bucket: a mutable flat map from path to entry; directories are implicit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bucket {
    pub id: String,
    pub private: bool,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub files: BTreeMap<String, BucketFile>,
    /// Sum of entry sizes, kept in step with `files`.
    #[serde(skip)]
    pub total_size: u64,
}

impl Bucket {
    pub fn new(id: &str, private: bool, now_ms: u64) -> Self {
        Self {
            id: id.to_string(),
            private,
            created_ms: now_ms,
            updated_ms: now_ms,
            files: BTreeMap::new(),
            total_size: 0,
        }
    }

    pub fn insert(&mut self, path: String, file: BucketFile) {
        self.total_size += file.size;
        if let Some(old) = self.files.insert(path, file) {
            self.total_size -= old.size;
        }
    }

    pub fn remove(&mut self, path: &str) -> bool {
        match self.files.remove(path) {
            Some(old) => {
                self.total_size -= old.size;
                true
            }
            None => false,
        }
    }
}

/// Content of a repo file that is stored in the Xet CAS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XetContent {
    pub hash: String,
    /// SHA-256 of the content: the LFS oid and the ETag.
    pub sha256: String,
}

/// One file of a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoFile {
    pub size: u64,
    /// Git blob id: of the content for regular files, of the LFS pointer for Xet files.
    pub oid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xet: Option<XetContent>,
}

/// An immutable snapshot of a repo.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Commit {
    pub id: String,
    pub parent: Option<String>,
    pub created_ms: u64,
    pub title: String,
    pub files: BTreeMap<String, RepoFile>,
}

/// A model, dataset or space repository.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Repo {
    pub kind: RepoKind,
    pub id: String,
    pub private: bool,
    pub created_ms: u64,
    pub branches: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    pub commits: BTreeMap<String, Commit>,
}

impl Repo {
    /// Resolves a branch, tag (optionally `refs/heads/` / `refs/tags/` qualified) or full
    /// commit id to a commit.
    pub fn resolve(&self, rev: &str) -> Option<&Commit> {
        if rev.len() == 40
            && rev.bytes().all(|b| b.is_ascii_hexdigit())
            && let Some(c) = self.commits.get(&rev.to_ascii_lowercase())
        {
            return Some(c);
        }
        let sha = if let Some(b) = rev.strip_prefix("refs/heads/") {
            self.branches.get(b)
        } else if let Some(t) = rev.strip_prefix("refs/tags/") {
            self.tags.get(t)
        } else {
            self.branches.get(rev).or_else(|| self.tags.get(rev))
        }?;
        self.commits.get(sha)
    }
}

/// Everything in memory.
#[derive(Debug, Default)]
pub struct StoreState {
    pub buckets: BTreeMap<String, Bucket>,
    pub repos: BTreeMap<(RepoKind, String), Repo>,
}

/// The state and where it persists.
pub struct Store {
    data_dir: PathBuf,
    state: RwLock<StoreState>,
}

impl Store {
    /// Loads everything persisted under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let mut state = StoreState::default();
        for path in json_files(&data_dir.join("state/buckets"), 2)? {
            let mut b: Bucket = read_json(&path)?;
            b.total_size = b.files.values().map(|f| f.size).sum();
            state.buckets.insert(b.id.clone(), b);
        }
        for path in json_files(&data_dir.join("state/repos"), 3)? {
            let r: Repo = read_json(&path)?;
            state.repos.insert((r.kind, r.id.clone()), r);
        }
        Ok(Self { data_dir: data_dir.to_path_buf(), state: RwLock::new(state) })
    }

    pub fn read(&self) -> RwLockReadGuard<'_, StoreState> {
        // A panic while holding the lock cannot leave a half-applied change: every mutation
        // is computed first and applied with infallible map operations.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, StoreState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn save_bucket(&self, bucket: &Bucket) -> Result<()> {
        write_atomic(&self.bucket_path(&bucket.id), &serde_json::to_vec(bucket).map_err(internal)?)
    }

    pub fn remove_bucket(&self, id: &str) -> Result<()> {
        let path = self.bucket_path(id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(EmulatorError::io(format!("removing {}", path.display()), e))
            }
            _ => Ok(()),
        }
    }

    pub fn save_repo(&self, repo: &Repo) -> Result<()> {
        let path = self.data_dir.join("state/repos").join(repo.kind.plural()).join(format!("{}.json", repo.id));
        write_atomic(&path, &serde_json::to_vec(repo).map_err(internal)?)
    }

    /// Stores a git blob and returns its id (idempotent).
    pub fn put_blob(&self, content: &[u8]) -> Result<String> {
        let oid = git_blob_oid(content);
        let path = self.blob_path(&oid);
        if !path.exists() {
            write_atomic(&path, content)?;
        }
        Ok(oid)
    }

    pub fn blob_path(&self, oid: &str) -> PathBuf {
        let shard = oid.get(..2).unwrap_or("xx");
        self.data_dir.join("blobs").join(shard).join(oid)
    }

    fn bucket_path(&self, id: &str) -> PathBuf {
        self.data_dir.join("state/buckets").join(format!("{id}.json"))
    }
}

/// Git's blob id: `sha1("blob {len}\0" + content)`.
pub fn git_blob_oid(content: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", content.len()).as_bytes());
    h.update(content);
    hex::encode(h.finalize())
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let io = |what: &str, e| EmulatorError::io(format!("{what} {}", path.display()), e);
    let dir = path.parent().ok_or_else(|| EmulatorError::Internal(format!("{} has no parent", path.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.tmp.{}.{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("writing", e));
    }
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| EmulatorError::io(format!("reading {}", path.display()), e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| EmulatorError::Internal(format!("corrupt state file {}: {e}", path.display())))
}

/// `*.json` files exactly `depth` directories below `root` (temporary files are skipped).
fn json_files(root: &Path, depth: usize) -> Result<Vec<PathBuf>> {
    let mut level = vec![root.to_path_buf()];
    for d in 0..depth {
        let mut next = Vec::new();
        for dir in level {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(EmulatorError::io(format!("listing {}", dir.display()), e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| EmulatorError::io(format!("listing {}", dir.display()), e))?;
                let path = entry.path();
                let is_last = d + 1 == depth;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let wanted = if is_last {
                    !name.starts_with('.') && name.ends_with(".json") && path.is_file()
                } else {
                    path.is_dir()
                };
                if wanted {
                    next.push(path);
                }
            }
        }
        level = next;
    }
    level.sort();
    Ok(level)
}

fn internal(e: serde_json::Error) -> EmulatorError {
    EmulatorError::Internal(format!("serializing state: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_oid_matches_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(git_blob_oid(b"hello\n"), "ce013625030ba8dba906f756967f9e9ca394464a");
        assert_eq!(git_blob_oid(b""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
    }

    #[test]
    fn state_round_trips_through_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut b = Bucket::new("ns/b", true, 5);
        b.insert(
            "a/x".into(),
            BucketFile { xet_hash: "h".into(), size: 7, mtime_ms: 1, uploaded_ms: 2, content_type: None },
        );
        store.save_bucket(&b).unwrap();
        let oid = store.put_blob(b"hi").unwrap();
        let commit =
            Commit { id: "c".repeat(40), parent: None, created_ms: 3, title: "t".into(), files: BTreeMap::new() };
        let repo = Repo {
            kind: RepoKind::Dataset,
            id: "ns/r".into(),
            private: false,
            created_ms: 3,
            branches: [("main".to_string(), commit.id.clone())].into(),
            tags: BTreeMap::new(),
            commits: [(commit.id.clone(), commit)].into(),
        };
        store.save_repo(&repo).unwrap();

        let again = Store::open(dir.path()).unwrap();
        let s = again.read();
        assert_eq!(s.buckets["ns/b"].total_size, 7);
        assert!(s.buckets["ns/b"].private);
        let r = &s.repos[&(RepoKind::Dataset, "ns/r".to_string())];
        assert!(r.resolve("main").is_some());
        assert!(r.resolve("refs/heads/main").is_some());
        assert!(r.resolve(&"C".repeat(40)).is_some());
        assert!(r.resolve("nope").is_none());
        assert_eq!(std::fs::read(again.blob_path(&oid)).unwrap(), b"hi");
        drop(s);
        again.remove_bucket("ns/b").unwrap();
        assert!(Store::open(dir.path()).unwrap().read().buckets.is_empty());
    }
}
