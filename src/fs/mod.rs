//! The filesystem, independent of FUSE: inode table, merged listings, read path, content cache,
//! the local layer (staging and overlay), the flush manager and the change poll. Generic over
//! [`Remote`] so it runs against the Hub, the emulator or a fake.
//!
//! Locking: the inode table, the handle map and the layer each have one mutex, held only for
//! short in-memory work and never across an `.await`; remote calls happen outside them. Order:
//! table, then layer, then a layer entry's state.

mod attr;
mod content_cache;
mod error;
mod flush;
mod inode;
mod layer;
mod poll;
mod reader;
mod staging;
mod write;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

pub use attr::{Attr, DirEntry, FileKind, FsStats, Ino, ROOT_INO};
pub use content_cache::{BLOCK_SIZE, ContentCache};
pub use error::{FsError, FsResult};
pub use poll::run_poll;
pub use write::{SetAttr, TimeSet};

use content_cache::Blob;
use inode::{InodeTable, ListingDiff, Node};
use layer::{Layer, LocalEntry, LocalKind, MergedEntry, merge_listing};
use reader::ReadAhead;

use crate::hub::{Remote, RemoteEntry, RemoteFile, SourceInfo};

/// Cache lifetimes used for immutable (pinned repo) content.
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// How a mount treats changes.
#[derive(Debug, Clone)]
pub enum WriteMode {
    /// Every mutation is refused with `EROFS`.
    ReadOnly,
    /// Changes are staged locally and committed to the bucket.
    Bucket(FlushConfig),
    /// Changes stay in a local upper layer forever; nothing is uploaded.
    Overlay,
}

/// When staged changes are committed.
#[derive(Debug, Clone, Copy)]
pub struct FlushConfig {
    /// Quiet time after a close before a file is committed (batches bursts of writes).
    pub debounce: Duration,
    /// A file dirty this long is committed even if it keeps changing.
    pub max_window: Duration,
    /// How long unmount waits for everything to be committed.
    pub unmount_timeout: Duration,
}

/// Where and how much local change may be kept.
#[derive(Debug, Clone)]
pub struct StagingConfig {
    /// The layer directory (staging area or overlay upper layer).
    pub dir: PathBuf,
    /// Above this many bytes, clean staged files are garbage-collected (0 = never).
    pub max_staging_size: u64,
    /// Hard cap on the bytes of the layer; writes beyond it get `ENOSPC` (0 = none).
    pub staging_quota: u64,
}

/// How a mount behaves.
#[derive(Debug, Clone)]
pub struct FsConfig {
    pub uid: u32,
    pub gid: u32,
    pub write: WriteMode,
    /// Required unless `write` is `ReadOnly`.
    pub staging: Option<StagingConfig>,
    /// How long the kernel and we may trust metadata before asking the remote again.
    pub metadata_ttl: Duration,
    /// How often listed directories are re-listed to pick up remote changes (`None` = never).
    pub poll_interval: Option<Duration>,
    /// Soft cap on cached inodes (those the kernel holds are never evicted).
    pub max_inodes: usize,
}

impl FsConfig {
    pub fn read_only(&self) -> bool {
        matches!(self.write, WriteMode::ReadOnly)
    }
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
    pub append: bool,
}

/// Where an open file's bytes come from.
enum FileSource {
    /// Remote content through the content cache.
    Remote { file: RemoteFile, blob: OnceLock<Arc<Blob>>, read_ahead: Mutex<ReadAhead> },
    /// A local layer entry (its data file, or its remote content when it has none).
    Local(Arc<LocalEntry>),
}

struct FileHandle {
    ino: Ino,
    source: FileSource,
    writable: bool,
    append: bool,
    /// Whether this handle wrote since its last flush.
    wrote: AtomicBool,
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
    pub writes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub commits: AtomicU64,
    pub committed_files: AtomicU64,
    pub uploaded_new_bytes: AtomicU64,
    pub flush_failures: AtomicU64,
    pub gc_files: AtomicU64,
    pub gc_bytes: AtomicU64,
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
    layer: Option<Layer>,
    flusher: Arc<flush::Flusher>,
    /// Serializes namespace changes (create, rename, unlink...) so layer and table agree.
    ns_lock: tokio::sync::Mutex<()>,
    /// Bumped after each commit lands, before the layer lets go of what it committed. A remote
    /// answer fetched across a bump may predate the commit, and is fetched again rather than
    /// merged with a layer that no longer shadows it.
    commit_epoch: AtomicU64,
    pub counters: FsCounters,
}

impl<R: Remote> Fs<R> {
    /// A filesystem over an opened remote source. Opens (and recovers) the local layer when the
    /// mount is writable.
    pub fn new(remote: Arc<R>, info: SourceInfo, cfg: FsConfig, cache: Arc<ContentCache>) -> FsResult<Arc<Self>> {
        let table = InodeTable::new(cfg.max_inodes, info.default_mtime);
        let layer = match (&cfg.write, &cfg.staging) {
            (WriteMode::ReadOnly, _) => None,
            (_, Some(st)) => Some(Layer::open(&st.dir)?),
            (_, None) => {
                return Err(FsError::Io(std::io::Error::other("a writable mount needs a staging directory")));
            }
        };
        let fs = Arc::new(Fs {
            remote,
            info,
            cfg,
            cache,
            table: Mutex::new(table),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            listing_locks: Mutex::new(HashMap::new()),
            invalidator: OnceLock::new(),
            layer,
            flusher: Arc::default(),
            ns_lock: tokio::sync::Mutex::new(()),
            commit_epoch: AtomicU64::new(0),
            counters: FsCounters::default(),
        });
        if let Some(l) = &fs.layer {
            let pending = l.all().iter().filter(|(_, e)| e.lock().pending).count();
            tracing::info!(dir = %l.dir().display(), entries = l.len(), pending, bytes = l.usage(), "local layer loaded");
        }
        Ok(fs)
    }

    /// Start background work (the flush manager of bucket mounts). Call once, in a runtime.
    pub fn start_background(self: &Arc<Self>) {
        if let WriteMode::Bucket(fc) = self.cfg.write {
            tokio::spawn(flush::run(Arc::downgrade(self), fc));
        }
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

    /// Bytes held by the local layer (staging or overlay).
    pub fn staging_usage(&self) -> u64 {
        self.layer.as_ref().map(Layer::usage).unwrap_or(0)
    }

    /// Layer entries that still have to reach the remote (bucket mounts).
    pub fn pending_count(&self) -> usize {
        match (&self.layer, &self.cfg.write) {
            (Some(l), WriteMode::Bucket(_)) => l.all().iter().filter(|(_, e)| e.lock().pending).count(),
            _ => 0,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, InodeTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Handle>> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ttl(&self) -> Duration {
        if self.info.immutable && self.layer.is_none() { FOREVER } else { self.cfg.metadata_ttl }
    }

    fn fresh(&self, at: Instant) -> bool {
        (self.info.immutable && self.layer.is_none()) || at.elapsed() < self.cfg.metadata_ttl
    }

    /// Directory link count: 2 + subdirectories when the listing is complete, else 1 (the
    /// conventional "unknown", so tools never skip subdirectories based on it).
    fn dir_nlink(&self, t: &InodeTable, n: &Node) -> u32 {
        match n.dir.as_ref() {
            Some(d) if d.listed.is_some() => {
                2 + d.entries.values().filter(|c| t.get(**c).is_some_and(|cn| cn.kind == FileKind::Dir)).count() as u32
            }
            _ => 1,
        }
    }

    fn attr_of(&self, t: &InodeTable, ino: Ino, n: &Node) -> Attr {
        let mut a = self.attr_of_node(ino, n);
        if a.kind == FileKind::Dir {
            a.nlink = self.dir_nlink(t, n);
        }
        if n.detached {
            a.nlink = 0;
        }
        a
    }

    fn attr_of_node(&self, ino: Ino, n: &Node) -> Attr {
        if let Some(l) = &n.local {
            let st = l.lock();
            let kind = match st.kind {
                LocalKind::Dir => FileKind::Dir,
                LocalKind::Symlink => FileKind::Symlink,
                LocalKind::Special => FileKind::special_from_mode(st.mode as u32).unwrap_or(FileKind::File),
                LocalKind::File | LocalKind::Whiteout => FileKind::File,
            };
            return Attr {
                ino,
                kind,
                size: if kind == FileKind::Symlink {
                    st.target.as_ref().map_or(0, |t| t.len() as u64)
                } else {
                    st.size
                },
                mtime: st.mtime,
                ctime: st.ctime,
                atime: st.atime,
                perm: st.mode & 0o7777,
                nlink: if kind == FileKind::Dir { 2 } else { 1 },
                uid: st.uid,
                gid: st.gid,
                rdev: st.rdev,
            };
        }
        let ro = self.cfg.read_only();
        let (perm, nlink) = match (n.kind, ro) {
            (FileKind::Dir, false) => (0o755, 2),
            (FileKind::Dir, true) => (0o555, 2),
            (FileKind::File, false) => (0o644, 1),
            (FileKind::File, true) => (0o444, 1),
            (FileKind::Symlink, _) => (0o777, 1),
            // Remote sources hold no special files; only the layer does.
            (FileKind::Fifo | FileKind::Socket | FileKind::CharDevice | FileKind::BlockDevice, _) => (0o644, 1),
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
            rdev: 0,
        }
    }

    fn invalidate(&self, parent: Ino, diff: &ListingDiff) {
        let Some(inv) = self.invalidator.get() else { return };
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

    /// The path of `ino`, or `NotFound` when it was removed.
    fn path_of(&self, ino: Ino) -> FsResult<String> {
        self.table().path(ino).ok_or(FsError::NotFound)
    }

    /// Whether the remote side of directory `path` is hidden by the layer.
    fn remote_hidden(&self, path: &str) -> bool {
        let Some(l) = &self.layer else { return false };
        if l.hides_remote(path) {
            return true;
        }
        l.get(path).is_some_and(|e| {
            let st = e.lock();
            st.kind == LocalKind::Whiteout || st.opaque
        })
    }

    /// The remote listing of `path` merged with the layer.
    /// `path`'s children, remote merged with the layer, and the commit epoch they are valid
    /// for: apply them only while the epoch is still the same.
    async fn merged_listing(&self, path: &str) -> FsResult<(Vec<MergedEntry>, u64)> {
        let mut attempts = 0;
        loop {
            let epoch = self.commit_epoch.load(Ordering::Acquire);
            let hidden = self.remote_hidden(path);
            let remote = if hidden {
                Vec::new()
            } else {
                self.counters.remote_listings.fetch_add(1, Ordering::Relaxed);
                self.remote.list_dir(path).await?
            };
            let merged = match &self.layer {
                Some(l) => merge_listing(l, path, remote, hidden),
                None => {
                    return Ok((remote.into_iter().map(|r| MergedEntry { remote: r, local: None }).collect(), epoch));
                }
            };
            attempts += 1;
            let now = self.commit_epoch.load(Ordering::Acquire);
            if now == epoch || attempts >= 5 {
                return Ok((merged, now));
            }
        }
    }

    /// The commit epoch (see `commit_epoch`).
    pub(crate) fn epoch(&self) -> u64 {
        self.commit_epoch.load(Ordering::Acquire)
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
        let diff = loop {
            let (merged, epoch) = self.merged_listing(&path).await?;
            let mut t = self.table();
            if self.epoch() != epoch {
                continue;
            }
            let diff = t.apply_listing(dir, &merged);
            for ino in &diff.changed {
                if let Some(n) = t.get_mut(*ino) {
                    n.cached_content = None;
                }
            }
            t.evict_over_cap();
            break diff;
        };
        self.invalidate(dir, &diff);
        self.listing_locks.lock().unwrap_or_else(|p| p.into_inner()).remove(&dir);
        Ok(())
    }

    /// Look `name` up in `parent`; the kernel takes a reference on success.
    pub async fn lookup(&self, parent: Ino, name: &OsStr) -> FsResult<Entry> {
        let name = check_name(name)?;
        {
            let mut t = self.table();
            let p = t.get(parent).ok_or(FsError::NotFound)?;
            let d = p.dir.as_ref().ok_or(FsError::NotDir)?;
            let listed = d.listed.is_some_and(|at| self.fresh(at));
            if let Some(ino) = t.child(parent, name) {
                let n = t.get(ino).expect("indexed child exists");
                if listed || n.local.is_some() || self.fresh(n.validated) {
                    let attr = self.attr_of(&t, ino, n);
                    t.add_lookup(ino);
                    return Ok(Entry { attr, ttl: self.ttl() });
                }
            } else if listed {
                return Err(FsError::NotFound);
            }
        }
        let path = write::join(&self.path_of(parent)?, name);
        if let Some(l) = &self.layer {
            if let Some(e) = l.get(&path) {
                let Some(m) = layer::local_entry_of(&path, &e) else {
                    return Err(FsError::NotFound);
                };
                let mut t = self.table();
                let (ino, _) = t.upsert_merged(parent, &m);
                let attr = self.attr_of(&t, ino, t.get(ino).expect("just inserted"));
                t.add_lookup(ino);
                return Ok(Entry { attr, ttl: self.ttl() });
            }
            if l.hides_remote(&path) {
                return Err(FsError::NotFound);
            }
            if l.has_below(&path) {
                let mut t = self.table();
                let (ino, _) = t.upsert_merged(parent, &layer::implicit_dir(path));
                let attr = self.attr_of(&t, ino, t.get(ino).expect("just inserted"));
                t.add_lookup(ino);
                return Ok(Entry { attr, ttl: self.ttl() });
            }
        }
        if self.info.immutable {
            // Pinned repos: list once, answer every later lookup in this directory from memory.
            self.ensure_listed(parent).await?;
        } else {
            // Buckets may hold huge directories: ask for this one entry only.
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
        let attr = self.attr_of(&t, ino, t.get(ino).expect("indexed child exists"));
        t.add_lookup(ino);
        t.evict_over_cap();
        Ok(Entry { attr, ttl: self.ttl() })
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
        Ok((self.attr_of(&t, ino, n), self.ttl()))
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
        let h = Arc::new(DirHandle { ino, entries: Mutex::new(None) });
        self.handles().insert(fh, Handle::Dir(h));
        Ok(fh)
    }

    /// Directory entries from `offset` on (`.` and `..` included). Offsets are positions in a
    /// snapshot taken when the handle first read, so a concurrent change never repeats or skips.
    pub async fn readdir(&self, ino: Ino, fh: u64, offset: u64) -> FsResult<Arc<Vec<DirEntry>>> {
        let h = match self.handles().get(&fh) {
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
            v.push(DirEntry { ino, kind: FileKind::Dir, name: ".".into() });
            v.push(DirEntry {
                ino: if ino == ROOT_INO { ino } else { n.parent },
                kind: FileKind::Dir,
                name: "..".into(),
            });
            for (name, &c) in &d.entries {
                if let Some(cn) = t.get(c) {
                    v.push(DirEntry { ino: c, kind: cn.kind, name: name.to_string() });
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
        t.get(ino).map(|n| Entry { attr: self.attr_of(&t, ino, n), ttl: self.ttl() })
    }

    pub fn releasedir(&self, fh: u64) {
        let h = self.handles().remove(&fh);
        if let Some(Handle::Dir(h)) = h {
            let mut t = self.table();
            if let Some(n) = t.get_mut(h.ino) {
                n.opens = n.opens.saturating_sub(1);
            }
        }
    }

    /// Open a file. Writing a remote file copies it into the local layer first.
    pub async fn open(&self, ino: Ino, flags: OpenFlags) -> FsResult<Opened> {
        let wants_write = flags.write || flags.truncate;
        if wants_write && self.layer.is_none() {
            return Err(FsError::ReadOnly);
        }
        let (kind, local, remote) = {
            let t = self.table();
            let n = t.get(ino).ok_or(FsError::NotFound)?;
            let remote = n.content.clone().map(|c| (c, n.size));
            (n.kind, n.local.clone(), remote)
        };
        match kind {
            FileKind::Dir => return Err(FsError::IsDir),
            FileKind::File => {}
            // The kernel opens FIFOs, sockets and devices itself; symlinks are never opened.
            _ => return Err(FsError::Unsupported),
        }
        let local = match local {
            Some(l) if wants_write => Some(self.make_writable(ino, l, flags.truncate).await?),
            Some(l) => Some(l),
            None if wants_write => Some(self.copy_up(ino, flags.truncate).await?),
            None => None,
        };
        let (source, keep_cache) = match local {
            Some(l) => {
                {
                    let mut st = l.lock();
                    st.open_handles += 1;
                    if wants_write {
                        st.open_writers += 1;
                    }
                    st.last_used = Instant::now();
                }
                // Local bytes change under the kernel's feet only through this mount.
                (FileSource::Local(l), true)
            }
            None => {
                let (content, size) = remote.ok_or(FsError::NotFound)?;
                let mut t = self.table();
                let path = t.path(ino).unwrap_or_default();
                let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
                let keep = self.info.immutable || n.cached_content.as_ref() == Some(&content);
                n.cached_content = Some(content.clone());
                let file = RemoteFile { path, size, content };
                (FileSource::Remote { file, blob: OnceLock::new(), read_ahead: Mutex::default() }, keep)
            }
        };
        self.table().get_mut(ino).ok_or(FsError::NotFound)?.opens += 1;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let h = Arc::new(FileHandle {
            ino,
            source,
            writable: wants_write,
            append: flags.append,
            wrote: AtomicBool::new(flags.truncate),
        });
        self.handles().insert(fh, Handle::File(h));
        Ok(Opened { fh, keep_cache })
    }

    fn file_handle(&self, ino: Ino, fh: u64) -> FsResult<Arc<FileHandle>> {
        match self.handles().get(&fh) {
            Some(Handle::File(h)) if h.ino == ino => Ok(h.clone()),
            _ => Err(FsError::BadHandle),
        }
    }

    pub async fn read(&self, ino: Ino, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let h = self.file_handle(ino, fh)?;
        let data = match &h.source {
            FileSource::Remote { file, blob, read_ahead } => {
                let blob = match blob.get() {
                    Some(b) => b.clone(),
                    None => {
                        let b = self.cache.blob(&file.content.cache_key(), file.size)?;
                        blob.get_or_init(|| b).clone()
                    }
                };
                reader::read(&self.remote, file, &blob, read_ahead, offset, size).await?
            }
            FileSource::Local(l) => self.read_local(l, offset, size).await?,
        };
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.counters.read_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }

    /// Read a layer entry: its data file, or the remote content it refers to.
    async fn read_local(&self, l: &Arc<LocalEntry>, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let (data, content, len) = {
            let mut st = l.lock();
            st.last_used = Instant::now();
            (st.data.clone(), st.content.clone(), st.size)
        };
        let end = offset.saturating_add(size as u64).min(len);
        if offset >= end {
            return Ok(Vec::new());
        }
        if let Some(f) = data {
            let mut buf = vec![0u8; (end - offset) as usize];
            let n = f.read_at(&mut buf, offset)?;
            buf.truncate(n);
            return Ok(buf);
        }
        let content = content.ok_or(FsError::NotFound)?;
        let file = RemoteFile { path: l.lock().path.clone(), size: len, content };
        let blob = self.cache.blob(&file.content.cache_key(), file.size)?;
        let ra = Mutex::new(ReadAhead::default());
        reader::read(&self.remote, &file, &blob, &ra, offset, size).await
    }

    pub fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let t = self.table();
        let n = t.get(ino).ok_or(FsError::NotFound)?;
        if n.kind != FileKind::Symlink {
            return Err(FsError::NotSymlink);
        }
        let l = n.local.as_ref().ok_or(FsError::NotSymlink)?;
        let target = l.lock().target.clone().unwrap_or_default();
        Ok(target.into_bytes())
    }

    pub fn statfs(&self) -> FsStats {
        let bsize = 4096u64;
        let (total, used) = match &self.cfg.staging {
            Some(st) if st.staging_quota > 0 => (st.staging_quota, self.staging_usage().min(st.staging_quota)),
            Some(st) => match statvfs_bytes(&st.dir) {
                Some((total, avail)) => (total, total.saturating_sub(avail)),
                None => (1u64 << 50, self.staging_usage()),
            },
            None => match self.cache.limit() {
                0 => (1u64 << 50, self.cache.usage()),
                l => (l, self.cache.usage().min(l)),
            },
        };
        let free = (total - used) / bsize;
        FsStats {
            block_size: bsize as u32,
            blocks: total / bsize,
            blocks_free: free,
            blocks_available: if self.cfg.read_only() { 0 } else { free },
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
            let (merged, epoch) = match self.merged_listing(&path).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(dir = %path, error = %e, "poll: listing failed; will retry next round");
                    continue;
                }
            };
            let diff = {
                let mut t = self.table();
                if t.get(ino).is_none_or(|n| n.detached) || self.epoch() != epoch {
                    // Gone, or a commit landed since the listing: next round.
                    continue;
                }
                let diff = t.apply_listing(ino, &merged);
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
        let mut targets = self.table().unlisted_files();
        if let Some(l) = &self.layer {
            targets.retain(|(_, p)| l.get(p).is_none() && !l.hides_remote(p));
        }
        let mut changes = 0;
        for batch in targets.chunks(500) {
            let paths: Vec<String> = batch.iter().map(|(_, p)| p.clone()).collect();
            self.counters.remote_stats.fetch_add(1, Ordering::Relaxed);
            let epoch = self.epoch();
            let found = match self.remote.stat_many(&paths).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "poll: re-checking files failed; will retry next round");
                    continue;
                }
            };
            let by_path: HashMap<&str, &RemoteEntry> = found.iter().map(|e| (e.path.as_str(), e)).collect();
            let mut inval: Vec<(Ino, ListingDiff)> = Vec::new();
            {
                let mut t = self.table();
                if self.epoch() != epoch {
                    // A commit landed meanwhile: these answers may predate it. Next round.
                    continue;
                }
                for (parent, path) in batch {
                    let name = path.rsplit('/').next().unwrap_or(path);
                    if t.child(*parent, name).and_then(|c| t.get(c)).is_some_and(|n| n.local.is_some()) {
                        continue;
                    }
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
            tracing::info!(changes, "remote changes picked up for individually looked-up files");
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

/// (total, available) bytes of the filesystem holding `dir`.
fn statvfs_bytes(dir: &std::path::Path) -> Option<(u64, u64)> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: zeroed statvfs is a valid out-parameter; `c` is a valid path.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some((s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize))
}

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;
