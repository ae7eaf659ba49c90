//! Mutations: create, write, truncate, attributes, unlink, mkdir, rmdir, rename, symlink,
//! close and fsync. Each records its effect in the local layer (keyed by path, persisted) and
//! in the inode table; bucket mounts then commit the layer through the flush manager.
//!
//! Namespace changes hold `ns_lock` so the layer and the table change together.

use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use super::error::{FsError, FsResult};
use super::layer::{LocalEntry, LocalKind, local_entry_of, new_state};
use super::{Attr, Entry, FileHandle, FileKind, FileSource, Fs, Handle, Ino, OpenFlags, Opened, WriteMode, check_name};
use crate::hub::Remote;

/// A time to set with `utimens`.
#[derive(Debug, Clone, Copy)]
pub enum TimeSet {
    Now,
    At(SystemTime),
}

impl TimeSet {
    fn resolve(self) -> SystemTime {
        match self {
            TimeSet::Now => SystemTime::now(),
            TimeSet::At(t) => t,
        }
    }
}

/// The attribute changes of one `setattr`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub mtime: Option<TimeSet>,
    pub atime: Option<TimeSet>,
    /// The handle `ftruncate` came through, if any.
    pub fh: Option<u64>,
}

/// `a` joined with `b` (`""` is the root).
pub(super) fn join(a: &str, b: &str) -> String {
    if a.is_empty() { b.to_string() } else { format!("{a}/{b}") }
}

const RENAME_NOREPLACE: u32 = 1;

impl<R: Remote> Fs<R> {
    fn writable(&self) -> FsResult<&super::layer::Layer> {
        self.layer.as_ref().ok_or(FsError::ReadOnly)
    }

    fn bucket(&self) -> bool {
        matches!(self.cfg.write, WriteMode::Bucket(_))
    }

    /// Resolve `name` in `parent` without taking a kernel reference.
    async fn find(&self, parent: Ino, name: &str) -> FsResult<Option<Ino>> {
        match self.lookup(parent, OsStr::new(name)).await {
            Ok(e) => {
                self.forget(e.attr.ino, 1);
                Ok(Some(e.attr.ino))
            }
            Err(FsError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the remote holds something at the path of the (merged) node `ino`.
    fn remote_exists(&self, ino: Ino) -> bool {
        let t = self.table();
        match t.get(ino).and_then(|n| n.local.clone()) {
            Some(l) => l.lock().remote_exists,
            None => true,
        }
    }

    /// Whether a whiteout at `path` says the remote still holds it.
    fn whiteout_at(&self, path: &str) -> bool {
        self.layer.as_ref().and_then(|l| l.get(path)).is_some_and(|e| e.lock().kind == LocalKind::Whiteout)
    }

    fn new_entry(&self, path: String, kind: LocalKind, mode: u16, uid: u32, gid: u32) -> super::layer::LocalState {
        let mut st = new_state(path, kind, mode, uid, gid);
        st.last_close = Some(Instant::now());
        st
    }

    /// Add a whiteout at `path` (the remote holds a file, or with `dir` a directory, there).
    fn add_whiteout(&self, path: &str, dir: bool) {
        if let Some(l) = &self.layer {
            // A whiteout's mode carries the type bits of what it hides.
            let mode = if dir { 0o040000 } else { 0o100000 };
            let mut st = new_state(path.to_string(), LocalKind::Whiteout, mode, 0, 0);
            st.remote_exists = true;
            st.pending = self.bucket();
            st.last_close = Some(Instant::now());
            l.insert(st);
            self.flusher.notify();
        }
    }

    /// A directory's entries changed: its mtime and ctime become now (kept by the layer for a
    /// local directory, in memory for a remote one, which has no times of its own).
    fn touch_dir(&self, ino: Ino) {
        let now = SystemTime::now();
        let mut t = self.table();
        let Some(n) = t.get_mut(ino) else { return };
        match &n.local {
            Some(l) => {
                {
                    let mut st = l.lock();
                    st.mtime = now;
                    st.ctime = now;
                }
                l.persist();
            }
            None => n.mtime = now,
        }
    }

    fn entry_for(&self, ino: Ino) -> FsResult<Entry> {
        let t = self.table();
        let n = t.get(ino).ok_or(FsError::NotFound)?;
        Ok(Entry { attr: self.attr_of(&t, ino, n), ttl: self.ttl() })
    }

    /// Create and open a regular file.
    #[allow(clippy::too_many_arguments)]
    pub async fn create(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: OpenFlags,
        exclusive: bool,
        uid: u32,
        gid: u32,
    ) -> FsResult<(Entry, Opened)> {
        let layer = self.writable()?;
        let name = check_name(name)?;
        let guard = self.ns_lock.lock().await;
        if let Some(ino) = self.find(parent, name).await? {
            drop(guard);
            if exclusive {
                return Err(FsError::Exists);
            }
            let opened = self.open(ino, OpenFlags { write: true, ..flags }).await?;
            self.table().add_lookup(ino);
            return Ok((self.entry_for(ino)?, opened));
        }
        let path = join(&self.path_of(parent)?, name);
        let mut st = self.new_entry(path.clone(), LocalKind::File, (mode & !umask & 0o7777) as u16, uid, gid);
        st.remote_exists = self.whiteout_at(&path);
        st.generation = 1;
        st.pending = self.bucket();
        st.dirty_since = Some(Instant::now());
        st.open_handles = 1;
        st.open_writers = 1;
        let entry = layer.create_file(st)?;
        let ino = {
            let mut t = self.table();
            let m = local_entry_of(&path, &entry).ok_or(FsError::Invalid)?;
            let (ino, _) = t.upsert_merged(parent, &m);
            t.add_lookup(ino);
            if let Some(n) = t.get_mut(ino) {
                n.opens += 1;
            }
            ino
        };
        drop(guard);
        self.touch_dir(parent);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let h = Arc::new(FileHandle {
            ino,
            source: FileSource::Local(entry),
            writable: true,
            append: flags.append,
            wrote: std::sync::atomic::AtomicBool::new(true),
        });
        self.handles().insert(fh, Handle::File(h));
        Ok((self.entry_for(ino)?, Opened { fh, keep_cache: true }))
    }

    /// Write `data` at `offset` (or at the end for `O_APPEND`).
    pub async fn write(&self, ino: Ino, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let (h, e) = self.writable_handle(ino, fh)?;
        let (offset, growth) = self.write_extent(&h, &e, offset, data.len())?;
        self.reserve(growth).await?;
        self.write_at(&h, &e, offset, data)
    }

    /// The same write, done right away when no waiting is needed (the quota has room): no
    /// copy of the data and no task switch. `None` means "use [`Self::write`]".
    pub fn write_now(&self, ino: Ino, fh: u64, offset: u64, data: &[u8]) -> Option<FsResult<u32>> {
        let (h, e) = match self.writable_handle(ino, fh) {
            Ok(x) => x,
            Err(err) => return Some(Err(err)),
        };
        let (offset, growth) = match self.write_extent(&h, &e, offset, data.len()) {
            Ok(x) => x,
            Err(err) => return Some(Err(err)),
        };
        if !self.fits(growth) {
            return None;
        }
        Some(self.write_at(&h, &e, offset, data))
    }

    fn writable_handle(&self, ino: Ino, fh: u64) -> FsResult<(Arc<FileHandle>, Arc<LocalEntry>)> {
        let h = self.file_handle(ino, fh)?;
        let FileSource::Local(e) = &h.source else { return Err(FsError::BadHandle) };
        if !h.writable {
            return Err(FsError::BadHandle);
        }
        let e = e.clone();
        Ok((h, e))
    }

    /// Where a write lands and how many bytes it adds to the layer.
    fn write_extent(&self, h: &FileHandle, e: &LocalEntry, offset: u64, len: usize) -> FsResult<(u64, u64)> {
        let st = e.lock();
        let offset = if h.append { st.size } else { offset };
        let end = offset.checked_add(len as u64).ok_or(FsError::Invalid)?;
        Ok((offset, end.saturating_sub(st.accounted)))
    }

    fn write_at(&self, h: &FileHandle, e: &Arc<LocalEntry>, offset: u64, data: &[u8]) -> FsResult<u32> {
        let layer = self.writable()?;
        let file = e.lock().data.clone().ok_or(FsError::BadHandle)?;
        file.write_all_at(data, offset)?;
        let end = offset + data.len() as u64;
        let first = self.mark_dirty(e);
        {
            let mut st = e.lock();
            if end > st.size {
                st.size = end;
            }
            // An unlinked file still open is no longer part of the layer's total.
            if end > st.accounted && !st.orphan {
                layer.add_usage((end - st.accounted) as i64);
                st.accounted = end;
            }
            st.last_used = Instant::now();
        }
        if first {
            e.persist();
        }
        h.wrote.store(true, Ordering::Relaxed);
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.counters.write_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data.len() as u32)
    }

    /// `close(2)` of one descriptor: schedule the commit and report an earlier flush failure.
    pub fn flush_handle(&self, ino: Ino, fh: u64) -> FsResult<()> {
        let Ok(h) = self.file_handle(ino, fh) else { return Ok(()) };
        let FileSource::Local(e) = &h.source else { return Ok(()) };
        if h.wrote.swap(false, Ordering::Relaxed) {
            e.lock().last_close = Some(Instant::now());
            e.persist();
            self.flusher.notify();
        }
        match e.lock().error.take() {
            Some(err) => Err(FsError::Remote(err)),
            None => Ok(()),
        }
    }

    /// The last descriptor of an open file went away.
    pub fn release(&self, fh: u64) {
        let h = self.handles().remove(&fh);
        let Some(Handle::File(h)) = h else { return };
        let mut clean_close = false;
        if let FileSource::Local(e) = &h.source {
            let mut st = e.lock();
            st.open_handles = st.open_handles.saturating_sub(1);
            if h.writable {
                st.open_writers = st.open_writers.saturating_sub(1);
            }
            if h.wrote.load(Ordering::Relaxed) {
                st.last_close = Some(Instant::now());
            }
            clean_close = st.open_handles == 0 && !st.is_dirty();
            drop(st);
            if h.wrote.load(Ordering::Relaxed) {
                e.persist();
                self.flusher.notify();
            }
        }
        {
            let mut t = self.table();
            if let Some(n) = t.get_mut(h.ino) {
                n.opens = n.opens.saturating_sub(1);
            }
            t.forget(h.ino, 0);
        }
        if clean_close {
            self.maybe_gc();
        }
    }

    /// `fsync(2)`: on a bucket, return once this file's bytes are committed to the remote (or
    /// the commit failed); in an overlay, once they are on local disk.
    pub async fn fsync(&self, ino: Ino, fh: u64) -> FsResult<()> {
        let h = self.file_handle(ino, fh)?;
        let FileSource::Local(e) = &h.source else { return Ok(()) };
        match self.cfg.write {
            WriteMode::Bucket(_) => self.wait_committed(e).await,
            _ => {
                let data = e.lock().data.clone();
                if let Some(f) = data {
                    f.sync_data()?;
                }
                e.persist();
                Ok(())
            }
        }
    }

    /// Wait until `e`'s current generation is committed, or report the flush error.
    pub(super) async fn wait_committed(&self, e: &Arc<LocalEntry>) -> FsResult<()> {
        let target = {
            let mut st = e.lock();
            if !st.pending && !st.is_dirty() {
                return Ok(());
            }
            st.last_close = Some(Instant::now());
            st.generation
        };
        let mut rounds = 0u32;
        loop {
            let round = self.flusher.wait_round();
            tokio::pin!(round);
            round.as_mut().enable();
            {
                let mut st = e.lock();
                if st.orphan {
                    return Ok(());
                }
                if st.committed >= target && !st.pending {
                    return Ok(());
                }
                if let Some(err) = st.error.take() {
                    return Err(FsError::Remote(err));
                }
            }
            if rounds >= 3 {
                // Not committed after a few rounds (a rename or write keeps moving it): let the
                // flusher breathe rather than spin with it.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            rounds += 1;
            self.flusher.urge(e.id);
            let _ = tokio::time::timeout(Duration::from_secs(5), round).await;
        }
    }

    /// Change attributes: size (truncate), mode, owner, times.
    pub async fn setattr(&self, ino: Ino, a: SetAttr) -> FsResult<(Attr, Duration)> {
        if a.mode.is_none()
            && a.uid.is_none()
            && a.gid.is_none()
            && a.size.is_none()
            && a.mtime.is_none()
            && a.atime.is_none()
        {
            return self.getattr(ino);
        }
        let layer = self.writable()?;
        let kind = self.table().get(ino).ok_or(FsError::NotFound)?.kind;
        if let Some(size) = a.size {
            if kind == FileKind::Dir {
                return Err(FsError::IsDir);
            }
            let local = self.table().get(ino).and_then(|n| n.local.clone());
            let e = match local {
                Some(l) => self.make_writable(ino, l, size == 0).await?,
                None => self.copy_up(ino, size == 0).await?,
            };
            let (file, cur, accounted) = {
                let st = e.lock();
                (st.data.clone().ok_or(FsError::BadHandle)?, st.size, st.accounted)
            };
            if size != cur {
                self.reserve(size.saturating_sub(accounted)).await?;
                file.set_len(size)?;
                self.mark_dirty(&e);
                let mut st = e.lock();
                st.size = size;
                layer.add_usage(size as i64 - st.accounted as i64);
                st.accounted = size;
                drop(st);
                e.persist();
                self.flusher.notify();
            }
        }
        if a.mode.is_some() || a.uid.is_some() || a.gid.is_some() || a.mtime.is_some() || a.atime.is_some() {
            let e = self.local_for_attrs(ino)?;
            {
                let mut st = e.lock();
                if let Some(m) = a.mode {
                    // A special file keeps its type bits; only permissions change.
                    let keep = if st.kind == LocalKind::Special { st.mode & 0o170000 } else { 0 };
                    st.mode = keep | (m & 0o7777) as u16;
                }
                if let Some(u) = a.uid {
                    st.uid = u;
                }
                if let Some(g) = a.gid {
                    st.gid = g;
                }
                if let Some(t) = a.mtime {
                    st.mtime = t.resolve();
                }
                if let Some(t) = a.atime {
                    st.atime = t.resolve();
                }
                st.ctime = SystemTime::now();
            }
            e.persist();
        }
        self.getattr(ino)
    }

    /// The layer entry holding `ino`'s attributes, created (without data) when it has none.
    fn local_for_attrs(&self, ino: Ino) -> FsResult<Arc<LocalEntry>> {
        let layer = self.writable()?;
        let mut t = self.table();
        let path = t.path(ino).ok_or(FsError::NotFound)?;
        let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
        if let Some(l) = &n.local {
            return Ok(l.clone());
        }
        let (kind, mode) = match n.kind {
            FileKind::Dir => (LocalKind::Dir, 0o755),
            _ => (LocalKind::File, 0o644),
        };
        let mut st = new_state(path.clone(), kind, mode, self.cfg.uid, self.cfg.gid);
        st.size = n.size;
        st.mtime = n.mtime;
        st.ctime = n.mtime;
        st.atime = n.mtime;
        st.content = n.content.clone();
        st.remote_exists = true;
        st.origin = Some(path);
        let e = layer.insert(st);
        n.local = Some(e.clone());
        Ok(e)
    }

    /// Make a directory.
    pub async fn mkdir(&self, parent: Ino, name: &OsStr, mode: u32, umask: u32, uid: u32, gid: u32) -> FsResult<Entry> {
        let layer = self.writable()?;
        let name = check_name(name)?;
        let _g = self.ns_lock.lock().await;
        if self.find(parent, name).await?.is_some() {
            return Err(FsError::Exists);
        }
        let path = join(&self.path_of(parent)?, name);
        let over_whiteout = self.whiteout_at(&path);
        let mut st = self.new_entry(path.clone(), LocalKind::Dir, (mode & !umask & 0o7777) as u16, uid, gid);
        // Replacing a removed remote directory: its old children must stay hidden.
        st.opaque = over_whiteout;
        st.remote_exists = over_whiteout;
        let e = layer.insert(st);
        let mut t = self.table();
        let m = local_entry_of(&path, &e).ok_or(FsError::Invalid)?;
        let (ino, _) = t.upsert_merged(parent, &m);
        if let Some(d) = t.get_mut(ino).and_then(|n| n.dir.as_mut()) {
            // A new directory is empty: no need to ask the remote.
            d.listed = Some(Instant::now());
        }
        t.add_lookup(ino);
        drop(t);
        self.touch_dir(parent);
        self.entry_for(ino)
    }

    /// Make a symbolic link (overlays only: buckets cannot store links).
    pub async fn symlink(
        &self,
        parent: Ino,
        name: &OsStr,
        target: &std::path::Path,
        uid: u32,
        gid: u32,
    ) -> FsResult<Entry> {
        let layer = self.writable()?;
        if self.bucket() {
            return Err(FsError::NotPermitted);
        }
        let name = check_name(name)?;
        let target = target.to_str().ok_or(FsError::InvalidName)?.to_string();
        let _g = self.ns_lock.lock().await;
        if self.find(parent, name).await?.is_some() {
            return Err(FsError::Exists);
        }
        let path = join(&self.path_of(parent)?, name);
        let mut st = self.new_entry(path.clone(), LocalKind::Symlink, 0o777, uid, gid);
        st.remote_exists = self.whiteout_at(&path);
        st.size = target.len() as u64;
        st.target = Some(target);
        let e = layer.insert(st);
        let mut t = self.table();
        let m = local_entry_of(&path, &e).ok_or(FsError::Invalid)?;
        let (ino, _) = t.upsert_merged(parent, &m);
        t.add_lookup(ino);
        drop(t);
        self.touch_dir(parent);
        self.entry_for(ino)
    }

    /// Make a FIFO, socket or device node (overlays only: a remote cannot store them), or an
    /// empty regular file.
    #[allow(clippy::too_many_arguments)]
    pub async fn mknod(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Entry> {
        let layer = self.writable()?;
        let perm = mode & !umask & 0o7777;
        if mode & libc::S_IFMT == libc::S_IFREG || mode & libc::S_IFMT == 0 {
            let (e, o) = self.create(parent, name, perm, 0, OpenFlags::default(), true, uid, gid).await?;
            self.release(o.fh);
            return Ok(e);
        }
        if FileKind::special_from_mode(mode).is_none() {
            return Err(FsError::Invalid);
        }
        if self.bucket() {
            return Err(FsError::NotPermitted);
        }
        let name = check_name(name)?;
        let _g = self.ns_lock.lock().await;
        if self.find(parent, name).await?.is_some() {
            return Err(FsError::Exists);
        }
        let path = join(&self.path_of(parent)?, name);
        let mut st = self.new_entry(path.clone(), LocalKind::Special, ((mode & libc::S_IFMT) | perm) as u16, uid, gid);
        st.rdev = rdev;
        st.remote_exists = self.whiteout_at(&path);
        let e = layer.insert(st);
        let ino = {
            let mut t = self.table();
            let m = local_entry_of(&path, &e).ok_or(FsError::Invalid)?;
            let (ino, _) = t.upsert_merged(parent, &m);
            t.add_lookup(ino);
            ino
        };
        self.touch_dir(parent);
        self.entry_for(ino)
    }

    /// Remove a file or symlink.
    pub async fn unlink(&self, parent: Ino, name: &OsStr) -> FsResult<()> {
        let layer = self.writable()?;
        let name = check_name(name)?;
        let _g = self.ns_lock.lock().await;
        let ino = self.find(parent, name).await?.ok_or(FsError::NotFound)?;
        if self.table().get(ino).is_some_and(|n| n.kind == FileKind::Dir) {
            return Err(FsError::IsDir);
        }
        let path = join(&self.path_of(parent)?, name);
        let remote = self.remote_exists(ino);
        layer.remove(&path, None);
        if remote {
            self.add_whiteout(&path, false);
        }
        self.table().detach_child(parent, name);
        self.touch_dir(parent);
        Ok(())
    }

    /// Remove an empty directory.
    pub async fn rmdir(&self, parent: Ino, name: &OsStr) -> FsResult<()> {
        let layer = self.writable()?;
        let name = check_name(name)?;
        let _g = self.ns_lock.lock().await;
        let ino = self.find(parent, name).await?.ok_or(FsError::NotFound)?;
        if self.table().get(ino).is_none_or(|n| n.kind != FileKind::Dir) {
            return Err(FsError::NotDir);
        }
        self.ensure_listed(ino).await?;
        if self.table().get(ino).and_then(|n| n.dir.as_ref()).is_some_and(|d| !d.entries.is_empty()) {
            return Err(FsError::NotEmpty);
        }
        let path = join(&self.path_of(parent)?, name);
        // A directory made here may exist remotely by now (its files were committed), and
        // whiteouts of those files may still be pending: hide whatever the remote holds.
        let remote = !layer.hides_remote(&path);
        layer.remove(&path, None);
        if remote {
            self.add_whiteout(&path, true);
        }
        self.table().detach_child(parent, name);
        self.touch_dir(parent);
        Ok(())
    }

    /// Hard links: a bucket or repo cannot store two names for one file.
    pub fn link(&self) -> FsResult<Entry> {
        self.writable()?;
        Err(FsError::NotPermitted)
    }

    /// Rename a file or directory (`RENAME_NOREPLACE` honoured; `RENAME_EXCHANGE` refused).
    pub async fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        let layer = self.writable()?;
        if flags & !RENAME_NOREPLACE != 0 {
            return Err(FsError::Invalid);
        }
        let (name, new_name) = (check_name(name)?, check_name(new_name)?);
        let _g = self.ns_lock.lock().await;
        let src = self.find(parent, name).await?.ok_or(FsError::NotFound)?;
        let dst = self.find(new_parent, new_name).await?;
        let src_kind = self.table().get(src).ok_or(FsError::NotFound)?.kind;
        if let Some(d) = dst {
            if d == src {
                return Ok(());
            }
            if flags & RENAME_NOREPLACE != 0 {
                return Err(FsError::Exists);
            }
            let dst_kind = self.table().get(d).ok_or(FsError::NotFound)?.kind;
            match (src_kind == FileKind::Dir, dst_kind == FileKind::Dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) => {
                    self.ensure_listed(d).await?;
                    if self.table().get(d).and_then(|n| n.dir.as_ref()).is_some_and(|x| !x.entries.is_empty()) {
                        return Err(FsError::NotEmpty);
                    }
                }
                (false, false) => {}
            }
        }
        let src_path = join(&self.path_of(parent)?, name);
        let dst_path = join(&self.path_of(new_parent)?, new_name);
        let dst_remote = match dst {
            Some(d) => self.remote_exists(d),
            None => self.whiteout_at(&dst_path),
        };
        if src_kind == FileKind::Dir {
            self.rename_dir(src, &src_path, &dst_path, dst_remote).await?;
        } else {
            self.rename_file(src, &src_path, &dst_path, dst_remote)?;
        }
        {
            let mut t = self.table();
            t.rename_child(parent, name, new_parent, new_name);
            // Re-link every moved inode to the layer entry now at its path.
            let mut moved = vec![src];
            moved.extend(t.descendants(src));
            for ino in moved {
                if let Some(p) = t.path(ino) {
                    let l = layer.get(&p);
                    if let Some(n) = t.get_mut(ino) {
                        n.local = l;
                    }
                }
            }
        }
        self.touch_dir(parent);
        if new_parent != parent {
            self.touch_dir(new_parent);
        }
        self.flusher.notify();
        Ok(())
    }

    fn rename_file(&self, ino: Ino, src: &str, dst: &str, dst_remote: bool) -> FsResult<()> {
        let layer = self.writable()?;
        let src_remote = self.remote_exists(ino);
        let bucket = self.bucket();
        match layer.get(src) {
            Some(e) => {
                layer.rekey(src, dst);
                let mut st = e.lock();
                st.remote_exists = dst_remote;
                st.pending = bucket && (st.kind == LocalKind::File);
                st.last_close = Some(Instant::now());
                st.ctime = SystemTime::now();
                drop(st);
                e.persist();
            }
            None => {
                let (size, mtime, content) = {
                    let t = self.table();
                    let n = t.get(ino).ok_or(FsError::NotFound)?;
                    (n.size, n.mtime, n.content.clone())
                };
                let mut st = self.new_entry(dst.to_string(), LocalKind::File, 0o644, self.cfg.uid, self.cfg.gid);
                st.size = size;
                st.mtime = mtime;
                st.content = content;
                st.origin = Some(src.to_string());
                st.remote_exists = dst_remote;
                st.pending = bucket;
                layer.insert(st);
            }
        }
        if src_remote {
            self.add_whiteout(src, false);
        }
        Ok(())
    }

    /// Move a directory: local entries are re-keyed; remote files below it become references
    /// at the new place plus whiteouts at the old one (commits add and delete them by hash).
    async fn rename_dir(&self, ino: Ino, src: &str, dst: &str, dst_remote: bool) -> FsResult<()> {
        let layer = self.writable()?;
        let bucket = self.bucket();
        // Ask the remote even for a directory made here: files committed below it since are
        // remote now. (Below an opaque `src`, the loop skips what the layer hides.)
        let src_remote = !layer.hides_remote(src);
        let remote_files = if src_remote { self.remote.list_recursive(src).await? } else { Vec::new() };
        let local = layer.subtree(src);
        let shadowed: std::collections::HashSet<String> = local.iter().map(|(p, _)| p.clone()).collect();
        let mode = layer.get(src).map(|e| e.lock().mode).unwrap_or(0o755);
        for (p, e) in &local {
            if p == src {
                continue;
            }
            let kind = e.lock().kind;
            if kind == LocalKind::Whiteout {
                // Keeps hiding (and, on a bucket, deleting) the remote file at the old place.
                continue;
            }
            let new = format!("{dst}{}", &p[src.len()..]);
            layer.rekey(p, &new);
            let mut st = e.lock();
            let was_remote = st.remote_exists;
            st.remote_exists = false;
            st.pending = bucket && kind == LocalKind::File;
            st.last_close = Some(Instant::now());
            drop(st);
            e.persist();
            if was_remote && kind != LocalKind::Dir {
                // The remote still has the old name (a committed or overwritten file).
                self.add_whiteout(p, false);
            }
        }
        for r in remote_files {
            if shadowed.contains(&r.path) || layer.hides_remote(&r.path) {
                continue;
            }
            let new = format!("{dst}{}", &r.path[src.len()..]);
            let mut st = self.new_entry(new, LocalKind::File, 0o644, self.cfg.uid, self.cfg.gid);
            st.size = r.size;
            st.mtime = r.mtime.unwrap_or(self.info.default_mtime);
            st.content = r.content.clone();
            st.origin = Some(r.path.clone());
            st.pending = bucket;
            layer.insert(st);
            self.add_whiteout(&r.path, false);
        }
        let mut st = self.new_entry(dst.to_string(), LocalKind::Dir, mode, self.cfg.uid, self.cfg.gid);
        st.remote_exists = dst_remote;
        layer.insert(st);
        layer.remove(src, None);
        if src_remote {
            self.add_whiteout(src, true);
        }
        // The moved directory's cached children stay valid: each now shows its layer entry
        // at the new place (re-linked by the caller).
        let _ = ino;
        Ok(())
    }
}
