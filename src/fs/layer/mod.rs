//! The local layer: every local change to the tree, keyed by path and persisted on disk, merged
//! over the remote listing. Bucket mounts drain it to the Hub (see `flush`); no-push overlay
//! mounts keep it forever. One model serves both.
//!
//! Entries: a file with local bytes (`data`), a reference to remote content at a new path
//! (a renamed remote file), a directory, a symlink, or a whiteout hiding a remote path.
//! Each entry is one sidecar JSON file (`meta/<id>.json`, holding its path) plus, for files
//! with local bytes, `data/<id>`; re-keying (rename) rewrites sidecars, never data.
//!
//! Lock order: the layer map lock, then an entry's state lock; neither is held across `.await`.

mod merge;
mod persist;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

pub(crate) use merge::{MergedEntry, implicit_dir, local_entry as local_entry_of, merge_listing};
pub(crate) use persist::Sidecar;

use crate::hub::{ContentId, RemoteError};

/// What a layer entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LocalKind {
    File,
    Dir,
    Symlink,
    Whiteout,
    /// A FIFO, socket or device node (overlays only); `mode` carries its type bits.
    Special,
}

/// The mutable state of one entry.
#[derive(Debug)]
pub(crate) struct LocalState {
    pub path: String,
    pub kind: LocalKind,
    pub size: u64,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// Access time, as last set explicitly (`utimensat`); reads do not move it (`noatime`).
    pub atime: SystemTime,
    /// Permission bits; for a whiteout, the file-type bits of what it hides; for a special
    /// file, its type bits and permissions.
    pub mode: u16,
    /// Device number of a device node.
    pub rdev: u32,
    pub uid: u32,
    pub gid: u32,
    /// Remote content this entry stands for: a renamed remote file, or the last committed
    /// version of a local file.
    pub content: Option<ContentId>,
    /// Local bytes (staged file); `None` for references, directories, symlinks, whiteouts.
    pub data: Option<Arc<File>>,
    /// Symlink target.
    pub target: Option<String>,
    /// A directory that hides the remote directory it replaced.
    pub opaque: bool,
    /// Bumped by every change of the bytes or size.
    pub generation: u64,
    /// The generation last committed to the remote (files), or `generation` when nothing is
    /// pending. An entry is dirty while they differ.
    pub committed: u64,
    /// Whether the remote must learn about this entry (a pending add, rename or delete).
    pub pending: bool,
    pub open_handles: u32,
    pub open_writers: u32,
    /// When the file was last closed after a write (for the flush debounce).
    pub last_close: Option<Instant>,
    /// When it first became dirty (for the maximum flush window).
    pub dirty_since: Option<Instant>,
    /// Last use, for the staging GC's LRU order.
    pub last_used: Instant,
    /// The last flush error, reported once on the next close or fsync.
    pub error: Option<RemoteError>,
    /// Bytes this entry's data file accounts for in the staging total.
    pub accounted: u64,
    /// Removed from the layer while still open (the data file is deleted on drop).
    pub orphan: bool,
    /// Removed from the layer: never persisted again.
    pub removed: bool,
    /// Whether the remote holds something at `path` (so removing it needs a whiteout).
    pub remote_exists: bool,
    /// For a reference to remote content: the remote path it was read from (git content is
    /// fetched by path).
    pub origin: Option<String>,
}

impl LocalState {
    pub fn is_dirty(&self) -> bool {
        self.generation != self.committed
    }
}

/// One layer entry.
#[derive(Debug)]
pub(crate) struct LocalEntry {
    pub id: u64,
    state: Mutex<LocalState>,
    layer_dir: PathBuf,
}

impl LocalEntry {
    pub fn lock(&self) -> MutexGuard<'_, LocalState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn data_path(&self) -> PathBuf {
        self.layer_dir.join("data").join(self.id.to_string())
    }

    fn meta_path(&self) -> PathBuf {
        self.layer_dir.join("meta").join(format!("{}.json", self.id))
    }

    /// Write the sidecar (atomically). Failures are logged: the data is still safe on disk.
    /// Runs under the entry's lock, like removal, so a removed entry is never resurrected.
    pub fn persist(&self) {
        let st = self.lock();
        if st.removed {
            return;
        }
        let side = Sidecar::from_state(self.id, &st);
        if let Err(e) = persist::write_sidecar(&self.meta_path(), &side) {
            tracing::error!(path = %side.path, error = %e, "cannot persist a staging entry");
        }
    }

    fn remove_files(&self) {
        let _ = std::fs::remove_file(self.meta_path());
        let _ = std::fs::remove_file(self.data_path());
    }
}

impl Drop for LocalEntry {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if st.orphan {
            let _ = std::fs::remove_file(self.layer_dir.join("data").join(self.id.to_string()));
        }
    }
}

/// The local layer of one mount.
pub(crate) struct Layer {
    dir: PathBuf,
    /// Held (flock) for the layer's lifetime: one mount process per layer directory.
    _lock: File,
    entries: Mutex<BTreeMap<String, Arc<LocalEntry>>>,
    next_id: AtomicU64,
    /// Bytes of all data files (dirty, clean and copied-up).
    usage: AtomicU64,
}

impl Layer {
    /// Open (creating) the layer in `dir` and load every persisted entry.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("meta"))?;
        std::fs::create_dir_all(dir.join("data"))?;
        let lock = lock_dir(dir)?;
        let layer = Layer {
            dir: dir.to_path_buf(),
            _lock: lock,
            entries: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            usage: AtomicU64::new(0),
        };
        let loaded = persist::load_all(dir)?;
        let mut max_id = 0;
        let mut usage = 0;
        {
            let mut map = layer.map();
            for (side, data) in loaded {
                let id = side.id;
                max_id = max_id.max(id);
                let accounted = data.as_ref().and_then(|f| f.metadata().ok()).map(|m| m.len()).unwrap_or(0);
                usage += accounted;
                let mut st = side.into_state(data.map(Arc::new));
                st.accounted = accounted;
                if st.kind == LocalKind::File && st.data.is_some() {
                    // The data file is the truth for the size after a crash.
                    st.size = accounted;
                }
                let path = st.path.clone();
                let e = Arc::new(LocalEntry { id, state: Mutex::new(st), layer_dir: layer.dir.clone() });
                if let Some(old) = map.insert(path, e.clone()) {
                    // Two sidecars for one path (a crash mid-rename): keep the newer id.
                    let (keep, drop) = if old.id > e.id { (old, e) } else { (e, old) };
                    let p = keep.lock().path.clone();
                    drop.remove_files();
                    map.insert(p, keep);
                }
            }
        }
        layer.next_id.store(max_id + 1, Ordering::Relaxed);
        layer.usage.store(usage, Ordering::Relaxed);
        Ok(layer)
    }

    fn map(&self) -> MutexGuard<'_, BTreeMap<String, Arc<LocalEntry>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes used by data files.
    pub fn usage(&self) -> u64 {
        self.usage.load(Ordering::Relaxed)
    }

    /// Account `delta` bytes more (or fewer) of data.
    pub fn add_usage(&self, delta: i64) {
        if delta >= 0 {
            self.usage.fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            let d = delta.unsigned_abs();
            let _ = self.usage.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| Some(u.saturating_sub(d)));
        }
    }

    pub fn get(&self, path: &str) -> Option<Arc<LocalEntry>> {
        self.map().get(path).cloned()
    }

    /// Whether `path` is hidden by a whiteout or an opaque directory above it, i.e. the
    /// remote entry at `path` must not show.
    pub fn hides_remote(&self, path: &str) -> bool {
        let map = self.map();
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let ancestor = &path[..end + i];
            if let Some(e) = map.get(ancestor) {
                let st = e.lock();
                if st.kind == LocalKind::Whiteout || (st.kind == LocalKind::Dir && st.opaque) {
                    return true;
                }
            }
            end += i + 1;
        }
        false
    }

    /// Entries directly inside directory `dir` (`""` = root), as (name, entry). A name with
    /// entries below it but none of its own is an implicit directory (`None`), as on a bucket.
    pub fn children(&self, dir: &str) -> Vec<(String, Option<Arc<LocalEntry>>)> {
        let map = self.map();
        let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        let mut out: Vec<(String, Option<Arc<LocalEntry>>)> = Vec::new();
        for (k, e) in map.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)) {
            let rest = &k[prefix.len()..];
            match rest.split_once('/') {
                None if !rest.is_empty() => out.push((rest.to_string(), Some(e.clone()))),
                Some((first, _))
                    if out.last().is_none_or(|(n, _)| n != first) && e.lock().kind != LocalKind::Whiteout =>
                {
                    out.push((first.to_string(), None));
                }
                Some(_) => {}
                None => {}
            }
        }
        // An explicit entry wins over the implicit directory of the same name.
        out.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.is_some().cmp(&a.1.is_some())));
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }

    /// Whether something (other than whiteouts) lies below `path` in the layer.
    pub fn has_below(&self, path: &str) -> bool {
        let map = self.map();
        let prefix = format!("{path}/");
        map.range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .any(|(_, e)| e.lock().kind != LocalKind::Whiteout)
    }

    /// Entries at `dir` or below it (for directory renames and deletes).
    pub fn subtree(&self, dir: &str) -> Vec<(String, Arc<LocalEntry>)> {
        let map = self.map();
        let prefix = format!("{dir}/");
        let mut out: Vec<_> = map
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        if let Some(e) = map.get(dir) {
            out.push((dir.to_string(), e.clone()));
        }
        out
    }

    /// Insert a new entry at `path`, replacing (and dropping) whatever was there.
    pub fn insert(&self, state: LocalState) -> Arc<LocalEntry> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let path = state.path.clone();
        let e = Arc::new(LocalEntry { id, state: Mutex::new(state), layer_dir: self.dir.clone() });
        e.persist();
        let old = self.map().insert(path, e.clone());
        if let Some(old) = old {
            self.discard(&old);
        }
        e
    }

    /// Remove the entry at `path` (if it is `expected`, when given).
    pub fn remove(&self, path: &str, expected: Option<&Arc<LocalEntry>>) -> Option<Arc<LocalEntry>> {
        let mut map = self.map();
        if let Some(exp) = expected
            && map.get(path).is_none_or(|e| !Arc::ptr_eq(e, exp))
        {
            return None;
        }
        let e = map.remove(path)?;
        drop(map);
        self.discard(&e);
        Some(e)
    }

    /// Forget an entry's files; an open data file lives until its last handle closes.
    fn discard(&self, e: &Arc<LocalEntry>) {
        let mut st = e.lock();
        st.removed = true;
        let _ = std::fs::remove_file(e.meta_path());
        if st.data.is_some() {
            self.add_usage(-(st.accounted as i64));
            st.accounted = 0;
            if st.open_handles > 0 {
                st.orphan = true;
            } else {
                let _ = std::fs::remove_file(e.data_path());
            }
        }
    }

    /// Move the entry at `from` to `to` (replacing whatever was at `to`).
    pub fn rekey(&self, from: &str, to: &str) -> Option<Arc<LocalEntry>> {
        let mut map = self.map();
        let e = map.remove(from)?;
        e.lock().path = to.to_string();
        let old = map.insert(to.to_string(), e.clone());
        drop(map);
        if let Some(old) = old
            && !Arc::ptr_eq(&old, &e)
        {
            self.discard(&old);
        }
        e.persist();
        Some(e)
    }

    /// Insert a new file entry with an empty data file.
    pub fn create_file(&self, mut state: LocalState) -> std::io::Result<Arc<LocalEntry>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let data_path = self.dir.join("data").join(id.to_string());
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&data_path)?;
        state.data = Some(Arc::new(f));
        let path = state.path.clone();
        let e = Arc::new(LocalEntry { id, state: Mutex::new(state), layer_dir: self.dir.clone() });
        e.persist();
        let old = self.map().insert(path, e.clone());
        if let Some(old) = old {
            self.discard(&old);
        }
        Ok(e)
    }

    /// Give an existing entry an empty data file (to fill from its remote content).
    pub fn attach_data(&self, e: &Arc<LocalEntry>) -> std::io::Result<Arc<File>> {
        let f = Arc::new(
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(e.data_path())?,
        );
        e.lock().data = Some(f.clone());
        Ok(f)
    }

    /// Drop the local bytes of a clean file (staging GC); the entry itself goes too when the
    /// remote already holds exactly this file.
    pub fn drop_clean_data(&self, path: &str, e: &Arc<LocalEntry>) -> u64 {
        let freed = {
            let mut st = e.lock();
            if st.is_dirty() || st.pending || st.open_handles > 0 || st.data.is_none() {
                return 0;
            }
            st.data = None;
            let freed = st.accounted;
            st.accounted = 0;
            freed
        };
        self.add_usage(-(freed as i64));
        let _ = std::fs::remove_file(e.data_path());
        self.remove(path, Some(e));
        freed
    }

    /// Every entry (for the flush manager and the GC).
    pub fn all(&self) -> Vec<(String, Arc<LocalEntry>)> {
        self.map().iter().map(|(k, e)| (k.clone(), e.clone())).collect()
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }
}

/// Take the layer directory's lock, or explain who holds it.
fn lock_dir(dir: &Path) -> std::io::Result<File> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    let mut f =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join("lock"))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        let _ = f.read_to_string(&mut holder);
        return Err(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            format!("{} is in use by another mount (pid {})", dir.display(), holder.trim()),
        ));
    }
    f.set_len(0)?;
    f.seek(std::io::SeekFrom::Start(0))?;
    write!(f, "{}", std::process::id())?;
    Ok(f)
}

/// A fresh state for a new entry.
pub(crate) fn new_state(path: String, kind: LocalKind, mode: u16, uid: u32, gid: u32) -> LocalState {
    let now = SystemTime::now();
    LocalState {
        path,
        kind,
        size: 0,
        mtime: now,
        ctime: now,
        atime: now,
        mode,
        rdev: 0,
        uid,
        gid,
        content: None,
        data: None,
        target: None,
        opaque: false,
        generation: 0,
        committed: 0,
        pending: false,
        open_handles: 0,
        open_writers: 0,
        last_close: None,
        dirty_since: None,
        last_used: Instant::now(),
        error: None,
        accounted: 0,
        orphan: false,
        removed: false,
        remote_exists: false,
        origin: None,
    }
}
