//! The filesystem, independent of FUSE: inode table, listings, read path, content cache and the
//! change poll. Generic over [`Remote`] so it runs against the Hub, the emulator or a fake.
//!
//! Locking: one mutex over the inode table and one over open handles, each held only for short
//! in-memory work and never across an `.await`; remote calls happen outside them.

mod attr;
mod content_cache;
mod error;
mod inode;
mod poll;
mod reader;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

pub use attr::{Attr, DirEntry, FileKind, FsStats, Ino, ROOT_INO};
pub use content_cache::{BLOCK_SIZE, ContentCache};
pub use error::{FsError, FsResult};
pub use poll::run_poll;

use content_cache::Blob;
use inode::{InodeTable, ListingDiff, Node};
use reader::ReadAhead;

use crate::hub::{Remote, RemoteFile, SourceInfo};

/// Whether the filesystem accepts writes yet (bucket writes arrive with the write path).
pub const WRITES_SUPPORTED: bool = false;

/// Cache lifetimes used for immutable (pinned repo) content.
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// How a mount behaves.
#[derive(Debug, Clone)]
pub struct FsConfig {
    pub uid: u32,
    pub gid: u32,
    pub read_only: bool,
    /// How long the kernel and we may trust metadata before asking the remote again.
    pub metadata_ttl: Duration,
    /// How often listed directories are re-listed to pick up remote changes (`None` = never).
    pub poll_interval: Option<Duration>,
    /// Soft cap on cached inodes (those the kernel holds are never evicted).
    pub max_inodes: usize,
}

/// Kernel cache invalidation, implemented by the adapter. Must not block on FUSE requests.
pub trait Invalidator: Send + Sync + 'static {
    /// Drop the kernel's dentry for `name` in `parent` (positive or negative).
    fn entry(&self, parent: Ino, name: &str);
    /// Drop the kernel's cached attributes and page cache of `ino`.
    fn inode(&self, ino: Ino);
}

/// A successful lookup.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub attr: Attr,
    pub ttl: Duration,
}

/// A successful open.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub fh: u64,
    /// The kernel may keep the page cache it has for this file.
    pub keep_cache: bool,
}

/// How a file is being opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenFlags {
    pub write: bool,
    pub truncate: bool,
}

struct FileHandle {
    ino: Ino,
    file: RemoteFile,
    blob: OnceLock<Arc<Blob>>,
    read_ahead: Mutex<ReadAhead>,
}

struct DirHandle {
    ino: Ino,
    entries: Mutex<Option<Arc<Vec<DirEntry>>>>,
}

enum Handle {
    File(Arc<FileHandle>),
    Dir(Arc<DirHandle>),
}

/// Counters for logs and metrics.
#[derive(Debug, Default)]
pub struct FsCounters {
    pub remote_listings: AtomicU64,
    pub remote_stats: AtomicU64,
    pub reads: AtomicU64,
    pub read_bytes: AtomicU64,
}

/// One mounted filesystem.
pub struct Fs<R: Remote> {
    remote: Arc<R>,
    info: SourceInfo,
    cfg: FsConfig,
    cache: Arc<ContentCache>,
    table: Mutex<InodeTable>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    listing_locks: Mutex<HashMap<Ino, Arc<tokio::sync::Mutex<()>>>>,
    invalidator: OnceLock<Arc<dyn Invalidator>>,
    pub counters: FsCounters,
}

impl<R: Remote> Fs<R> {
    /// A filesystem over an opened remote source.
    pub fn new(
        remote: Arc<R>,
        info: SourceInfo,
        cfg: FsConfig,
        cache: Arc<ContentCache>,
    ) -> Arc<Self> {
        let table = InodeTable::new(cfg.max_inodes, info.default_mtime);
        Arc::new(Fs {
            remote,
            info,
            cfg,
            cache,
            table: Mutex::new(table),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            listing_locks: Mutex::new(HashMap::new()),
            invalidator: OnceLock::new(),
            counters: FsCounters::default(),
        })
    }

    /// Connect kernel cache invalidation (once the session exists).
    pub fn set_invalidator(&self, inv: Arc<dyn Invalidator>) {
        let _ = self.invalidator.set(inv);
    }

    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    pub fn source_info(&self) -> &SourceInfo {
        &self.info
    }

    /// Number of inodes currently cached.
    pub fn inode_count(&self) -> usize {
        self.table().len()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, InodeTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ttl(&self) -> Duration {
        if self.info.immutable {
            FOREVER
        } else {
            self.cfg.metadata_ttl
        }
    }

    fn fresh(&self, at: Instant) -> bool {
        self.info.immutable || at.elapsed() < self.cfg.metadata_ttl
    }

    fn attr_of(&self, ino: Ino, n: &Node) -> Attr {
        let (perm, nlink) = match (n.kind, self.cfg.read_only) {
            (FileKind::Dir, false) => (0o755, 2),
            (FileKind::Dir, true) => (0o555, 2),
            (FileKind::File, false) => (0o644, 1),
            (FileKind::File, true) => (0o444, 1),
            (FileKind::Symlink, _) => (0o777, 1),
        };
        Attr {
            ino,
            kind: n.kind,
            size: n.size,
            mtime: n.mtime,
            ctime: n.mtime,
            atime: n.mtime,
            perm,
            nlink,
            uid: self.cfg.uid,
            gid: self.cfg.gid,
        }
    }

    fn invalidate(&self, parent: Ino, diff: &ListingDiff) {
        let Some(inv) = self.invalidator.get() else {
            return;
        };
        for name in &diff.added {
            inv.entry(parent, name);
        }
        for (_, name) in &diff.removed {
            inv.entry(parent, name);
        }
        for ino in &diff.changed {
            inv.inode(*ino);
        }
    }

    /// Make sure `dir`'s children are listed and fresh.
    async fn ensure_listed(&self, dir: Ino) -> FsResult<()> {
        let lock = {
            let mut locks = self.listing_locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(dir).or_default().clone()
        };
        let _guard = lock.lock().await;
        let path = {
            let t = self.table();
            let n = t.get(dir).ok_or(FsError::NotFound)?;
            let d = n.dir.as_ref().ok_or(FsError::NotDir)?;
            if d.listed.is_some_and(|at| self.fresh(at)) {
                return Ok(());
            }
            t.path(dir).ok_or(FsError::NotFound)?
        };
        self.counters
            .remote_listings
            .fetch_add(1, Ordering::Relaxed);
        let entries = self.remote.list_dir(&path).await?;
        let diff = {
            let mut t = self.table();
            let diff = t.apply_listing(dir, &entries);
            for ino in &diff.changed {
                if let Some(n) = t.get_mut(*ino) {
                    n.cached_content = None;
                }
            }
            t.evict_over_cap();
            diff
        };
        self.invalidate(dir, &diff);
        self.listing_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&dir);
        Ok(())
    }

    /// Look `name` up in `parent`; the kernel takes a reference on success.
    pub async fn lookup(&self, parent: Ino, name: &OsStr) -> FsResult<Entry> {
        let name = check_name(name)?;
        // Answer from the cache when it is fresh enough.
        {
            let mut t = self.table();
            let p = t.get(parent).ok_or(FsError::NotFound)?;
            let d = p.dir.as_ref().ok_or(FsError::NotDir)?;
            let listed = d.listed.is_some_and(|at| self.fresh(at));
            if let Some(ino) = t.child(parent, name) {
                let n = t.get(ino).expect("indexed child exists");
                if listed || self.fresh(n.validated) {
                    let attr = self.attr_of(ino, n);
                    t.add_lookup(ino);
                    return Ok(Entry {
                        attr,
                        ttl: self.ttl(),
                    });
                }
            } else if listed {
                return Err(FsError::NotFound);
            }
        }
        if self.info.immutable {
            // Pinned repos: list once, answer every later lookup in this directory from memory.
            self.ensure_listed(parent).await?;
        } else {
            // Buckets may hold huge directories: ask for this one entry only.
            let path = {
                let t = self.table();
                let base = t.path(parent).ok_or(FsError::NotFound)?;
                crate::hub::join_path(&base, name)
            };
            self.counters.remote_stats.fetch_add(1, Ordering::Relaxed);
            let found = self.remote.stat(&path).await?;
            let mut t = self.table();
            match found {
                Some(e) => {
                    let (ino, change) = t.upsert_child(parent, &e);
                    if change == inode::Change::Changed
                        && let Some(n) = t.get_mut(ino)
                    {
                        n.cached_content = None;
                    }
                }
                None => {
                    t.detach_child(parent, name);
                }
            }
        }
        let mut t = self.table();
        let ino = t.child(parent, name).ok_or(FsError::NotFound)?;
        let attr = self.attr_of(ino, t.get(ino).expect("indexed child exists"));
        t.add_lookup(ino);
        t.evict_over_cap();
        Ok(Entry {
            attr,
            ttl: self.ttl(),
        })
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: Ino, n: u64) {
        self.table().forget(ino, n);
    }

    /// The kernel kept an entry returned by `readdirplus`.
    pub fn entry_returned(&self, ino: Ino) {
        self.table().add_lookup(ino);
    }

    pub fn getattr(&self, ino: Ino) -> FsResult<(Attr, Duration)> {
        let t = self.table();
        let n = t.get(ino).ok_or(FsError::NotFound)?;
        Ok((self.attr_of(ino, n), self.ttl()))
    }

    pub async fn opendir(&self, ino: Ino) -> FsResult<u64> {
        {
            let mut t = self.table();
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            if n.kind != FileKind::Dir {
                return Err(FsError::NotDir);
            }
            n.opens += 1;
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let h = Arc::new(DirHandle {
            ino,
            entries: Mutex::new(None),
        });
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Handle::Dir(h));
        Ok(fh)
    }

    /// Directory entries from `offset` on (`.` and `..` included). Offsets are positions in a
    /// snapshot taken when the handle first read, so a concurrent change never repeats or skips.
    pub async fn readdir(&self, ino: Ino, fh: u64, offset: u64) -> FsResult<Arc<Vec<DirEntry>>> {
        let h = match self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
        {
            Some(Handle::Dir(h)) if h.ino == ino => h.clone(),
            _ => return Err(FsError::BadHandle),
        };
        let existing = h.entries.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(e) = existing
            && offset != 0
        {
            return Ok(e);
        }
        self.ensure_listed(ino).await?;
        let entries = {
            let t = self.table();
            let n = t.get(ino).ok_or(FsError::NotFound)?;
            let d = n.dir.as_ref().ok_or(FsError::NotDir)?;
            let mut v = Vec::with_capacity(d.entries.len() + 2);
            v.push(DirEntry {
                ino,
                kind: FileKind::Dir,
                name: ".".into(),
            });
            v.push(DirEntry {
                ino: if ino == ROOT_INO { ino } else { n.parent },
                kind: FileKind::Dir,
                name: "..".into(),
            });
            for (name, &c) in &d.entries {
                if let Some(cn) = t.get(c) {
                    v.push(DirEntry {
                        ino: c,
                        kind: cn.kind,
                        name: name.to_string(),
                    });
                }
            }
            Arc::new(v)
        };
        *h.entries.lock().unwrap_or_else(|p| p.into_inner()) = Some(entries.clone());
        Ok(entries)
    }

    /// Attributes for a `readdirplus` entry (without taking a reference yet).
    pub fn entry_attr(&self, ino: Ino) -> Option<Entry> {
        let t = self.table();
        t.get(ino).map(|n| Entry {
            attr: self.attr_of(ino, n),
            ttl: self.ttl(),
        })
    }

    pub fn releasedir(&self, fh: u64) {
        let h = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
        if let Some(Handle::Dir(h)) = h {
            let mut t = self.table();
            if let Some(n) = t.get_mut(h.ino) {
                n.opens = n.opens.saturating_sub(1);
            }
        }
    }

    pub async fn open(&self, ino: Ino, flags: OpenFlags) -> FsResult<Opened> {
        if flags.write || flags.truncate {
            return Err(FsError::ReadOnly);
        }
        let (file, keep_cache) = {
            let mut t = self.table();
            let path = t.path(ino);
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            match n.kind {
                FileKind::Dir => return Err(FsError::IsDir),
                FileKind::Symlink => return Err(FsError::Unsupported),
                FileKind::File => {}
            }
            let content = n.content.clone().ok_or(FsError::NotFound)?;
            let keep = self.info.immutable || n.cached_content.as_ref() == Some(&content);
            n.cached_content = Some(content.clone());
            n.opens += 1;
            let path = path.unwrap_or_default();
            (
                RemoteFile {
                    path,
                    size: n.size,
                    content,
                },
                keep,
            )
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let h = Arc::new(FileHandle {
            ino,
            file,
            blob: OnceLock::new(),
            read_ahead: Mutex::default(),
        });
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Handle::File(h));
        Ok(Opened { fh, keep_cache })
    }

    pub async fn read(&self, ino: Ino, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let h = match self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
        {
            Some(Handle::File(h)) if h.ino == ino => h.clone(),
            _ => return Err(FsError::BadHandle),
        };
        let blob = match h.blob.get() {
            Some(b) => b.clone(),
            None => {
                let b = self.cache.blob(&h.file.content.cache_key(), h.file.size)?;
                h.blob.get_or_init(|| b).clone()
            }
        };
        let data = reader::read(&self.remote, &h.file, &blob, &h.read_ahead, offset, size).await?;
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.counters
            .read_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }

    pub fn release(&self, fh: u64) {
        let h = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
        if let Some(Handle::File(h)) = h {
            let mut t = self.table();
            if let Some(n) = t.get_mut(h.ino) {
                n.opens = n.opens.saturating_sub(1);
            }
            t.forget(h.ino, 0);
        }
    }

    pub fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let t = self.table();
        let n = t.get(ino).ok_or(FsError::NotFound)?;
        match n.kind {
            FileKind::Symlink => Err(FsError::Unsupported),
            _ => Err(FsError::NotSymlink),
        }
    }

    pub fn statfs(&self) -> FsStats {
        let bsize = 4096u64;
        let (total, used) = match self.cache.limit() {
            0 => (1u64 << 50, self.cache.usage()),
            l => (l, self.cache.usage().min(l)),
        };
        let free = (total - used) / bsize;
        FsStats {
            block_size: bsize as u32,
            blocks: total / bsize,
            blocks_free: free,
            blocks_available: if self.cfg.read_only { 0 } else { free },
            files: self.inode_count() as u64,
            files_free: 1 << 32,
            name_max: 255,
        }
    }

    /// Re-list every cached directory once, applying what changed remotely (see `poll`).
    pub async fn refresh_listed(&self, max_dirs: usize) -> usize {
        let dirs = self.table().listed_dirs();
        let mut changes = 0;
        for (ino, path) in dirs.into_iter().take(max_dirs) {
            self.counters
                .remote_listings
                .fetch_add(1, Ordering::Relaxed);
            let entries = match self.remote.list_dir(&path).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(dir = %path, error = %e, "poll: listing failed; will retry next round");
                    continue;
                }
            };
            let diff = {
                let mut t = self.table();
                if t.get(ino).is_none_or(|n| n.detached) {
                    continue;
                }
                let diff = t.apply_listing(ino, &entries);
                for c in &diff.changed {
                    if let Some(n) = t.get_mut(*c) {
                        n.cached_content = None;
                    }
                }
                diff
            };
            if !diff.is_empty() {
                tracing::info!(
                    dir = %path,
                    added = diff.added.len(),
                    removed = diff.removed.len(),
                    changed = diff.changed.len(),
                    "remote changes picked up"
                );
                changes += diff.added.len() + diff.removed.len() + diff.changed.len();
                self.invalidate(ino, &diff);
            }
        }
        changes += self.refresh_unlisted().await;
        self.table().evict_over_cap();
        changes
    }

    /// Re-check files that were looked up one by one (their directory is not listed), in
    /// batches, so a deletion or change shows without listing a possibly huge directory.
    async fn refresh_unlisted(&self) -> usize {
        let targets = self.table().unlisted_files();
        let mut changes = 0;
        for batch in targets.chunks(500) {
            let paths: Vec<String> = batch.iter().map(|(_, p)| p.clone()).collect();
            self.counters.remote_stats.fetch_add(1, Ordering::Relaxed);
            let found = match self.remote.stat_many(&paths).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "poll: re-checking files failed; will retry next round");
                    continue;
                }
            };
            let by_path: HashMap<&str, &crate::hub::RemoteEntry> =
                found.iter().map(|e| (e.path.as_str(), e)).collect();
            let mut inval: Vec<(Ino, ListingDiff)> = Vec::new();
            {
                let mut t = self.table();
                for (parent, path) in batch {
                    let name = path.rsplit('/').next().unwrap_or(path);
                    let mut diff = ListingDiff::default();
                    match by_path.get(path.as_str()) {
                        Some(e) => {
                            let (ino, change) = t.upsert_child(*parent, e);
                            if change == inode::Change::Changed {
                                if let Some(n) = t.get_mut(ino) {
                                    n.cached_content = None;
                                }
                                diff.changed.push(ino);
                            }
                        }
                        None => {
                            if let Some(ino) = t.detach_child(*parent, name) {
                                diff.removed.push((ino, name.to_string()));
                            }
                        }
                    }
                    if !diff.is_empty() {
                        changes += 1;
                        inval.push((*parent, diff));
                    }
                }
            }
            for (parent, diff) in inval {
                self.invalidate(parent, &diff);
            }
        }
        if changes > 0 {
            tracing::info!(
                changes,
                "remote changes picked up for individually looked-up files"
            );
        }
        changes
    }

    /// Time of the source's content, for diagnostics.
    pub fn default_mtime(&self) -> SystemTime {
        self.info.default_mtime
    }
}

/// Validate a name from the kernel.
fn check_name(name: &OsStr) -> FsResult<&str> {
    let s = name.to_str().ok_or(FsError::InvalidName)?;
    if s.len() > 255 {
        return Err(FsError::NameTooLong);
    }
    if s.is_empty() || s == "." || s == ".." || s.contains('/') || s.contains('\0') {
        return Err(FsError::InvalidName);
    }
    Ok(s)
}
