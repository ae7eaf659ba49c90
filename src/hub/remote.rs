//! The [`Remote`] trait and the plain data types it speaks in.

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;
use futures::Stream;

use super::error::RemoteError;

/// A stream of file bytes, in order.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, RemoteError>> + Send>>;

/// What identifies the bytes of a remote file. Equal ids mean equal bytes, so the content
/// cache is keyed by it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ContentId {
    /// A Xet file: its Xet merkle hash (64 hex characters).
    Xet(String),
    /// A regular git blob of a repo (small files): its git object id.
    Git(String),
}

impl ContentId {
    /// A file-name-safe key for the content cache.
    pub fn cache_key(&self) -> String {
        match self {
            ContentId::Xet(h) => format!("xet-{h}"),
            ContentId::Git(h) => format!("git-{h}"),
        }
    }
}

/// Whether an entry is a file or a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
}

/// One entry of a remote listing. `path` is relative to the mounted source root (the bucket
/// prefix or the repo subfolder), with `/` separators and no leading slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEntry {
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
    pub mtime: Option<SystemTime>,
    pub content: Option<ContentId>,
}

impl RemoteEntry {
    /// The last path component.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// The part of a file entry that a read needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub path: String,
    pub size: u64,
    pub content: ContentId,
}

/// One file to register in a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitAdd {
    pub path: String,
    pub xet_hash: String,
    pub size: u64,
    /// Modification time, milliseconds since the Unix epoch.
    pub mtime_ms: u64,
}

/// The result of uploading one local file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub xet_hash: String,
    pub size: u64,
    /// Bytes that actually went over the wire (after deduplication).
    pub new_bytes: u64,
}

/// What a source resolved to when it was opened.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    /// Human-readable description, e.g. `bucket acme/data` or `model acme/m@<sha>`.
    pub description: String,
    /// For repos: the commit the mount serves. For buckets: none (buckets are mutable).
    pub commit: Option<String>,
    /// Repos are immutable at a commit; buckets change.
    pub immutable: bool,
    /// Modification time to show for entries that carry none (a repo's commit date).
    pub default_mtime: SystemTime,
}

/// Everything the filesystem asks of the remote store.
///
/// Paths are relative to the source root. Implementations retry transient failures
/// themselves; an error returned here is final for that call.
pub trait Remote: Send + Sync + 'static {
    /// Check that the source exists and is readable; resolve a repo revision to a commit.
    fn open(&self) -> impl Future<Output = Result<SourceInfo, RemoteError>> + Send;

    /// The direct children of directory `dir` (`""` is the root). A directory that does not
    /// exist lists as empty (directories are implicit on buckets).
    fn list_dir(&self, dir: &str) -> impl Future<Output = Result<Vec<RemoteEntry>, RemoteError>> + Send;

    /// One entry, or `None` if nothing exists at `path`.
    fn stat(&self, path: &str) -> impl Future<Output = Result<Option<RemoteEntry>, RemoteError>> + Send;

    /// Entries for many paths at once (one request per batch); absent paths are left out.
    fn stat_many(&self, paths: &[String]) -> impl Future<Output = Result<Vec<RemoteEntry>, RemoteError>> + Send;

    /// Every file below directory `dir` (for directory renames).
    fn list_recursive(&self, dir: &str) -> impl Future<Output = Result<Vec<RemoteEntry>, RemoteError>> + Send;

    /// Upload local files' contents (deduplicated by the client); nothing becomes visible yet.
    fn upload(&self, files: &[std::path::PathBuf]) -> impl Future<Output = Result<Vec<Uploaded>, RemoteError>> + Send;

    /// Atomically register `adds` then apply `deletes` (paths relative to the source root).
    fn commit(&self, adds: &[CommitAdd], deletes: &[String]) -> impl Future<Output = Result<(), RemoteError>> + Send;

    /// The bytes of `range` of a file (`range` lies within the file).
    fn read_range(
        &self,
        file: &RemoteFile,
        range: Range<u64>,
    ) -> impl Future<Output = Result<ByteStream, RemoteError>> + Send;
}
