//! The staging area's budget: the hard quota (`ENOSPC` instead of filling the node), the GC of
//! clean staged files above `max_staging_size`, and copy-up of remote files into the layer.
//!
//! Every byte of a layer data file is accounted, in memory, so the quota check on the write
//! path is a comparison of two counters — no system call.

use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::error::{FsError, FsResult};
use super::layer::{LocalEntry, LocalKind, new_state};
use super::reader::{self, ReadAhead};
use super::{Fs, Ino, WriteMode};
use crate::hub::{ContentId, Remote, RemoteFile};

/// How long a write waits for dirty bytes to drain before answering `ENOSPC`.
const DRAIN_WAIT: Duration = Duration::from_secs(30);
/// Copy-up reads the remote file in steps of this size.
const COPY_STEP: u32 = 8 << 20;

impl<R: Remote> Fs<R> {
    fn quota(&self) -> u64 {
        self.cfg.staging.as_ref().map_or(0, |s| s.staging_quota)
    }

    /// Whether `bytes` more fit under the quota right now (two loads, no system call).
    pub(super) fn fits(&self, bytes: u64) -> bool {
        let quota = self.quota();
        quota == 0 || bytes == 0 || self.layer.as_ref().is_some_and(|l| l.usage() + bytes <= quota)
    }

    /// Make room for `bytes` more bytes in the layer: free clean files, then (bucket mounts)
    /// force a flush and wait, bounded, for dirty bytes to drain; then give up with `ENOSPC`.
    pub(super) async fn reserve(&self, bytes: u64) -> FsResult<()> {
        let quota = self.quota();
        let Some(layer) = &self.layer else { return Err(FsError::ReadOnly) };
        if quota == 0 || bytes == 0 || layer.usage() + bytes <= quota {
            return Ok(());
        }
        if bytes > quota {
            return Err(FsError::NoSpace);
        }
        let target = quota - bytes;
        self.gc_to(target);
        if layer.usage() <= target {
            return Ok(());
        }
        if matches!(self.cfg.write, WriteMode::Bucket(_)) {
            let deadline = Instant::now() + DRAIN_WAIT;
            tracing::info!(needed = bytes, used = layer.usage(), quota, "staging quota reached; flushing to make room");
            while Instant::now() < deadline {
                let drainable = layer.all().iter().any(|(_, e)| {
                    let st = e.lock();
                    st.is_dirty() && st.open_writers == 0
                });
                if !drainable {
                    break;
                }
                self.flusher.urge_all();
                let waited = tokio::time::timeout(Duration::from_secs(1), self.flusher.wait_round()).await;
                self.gc_to(target);
                if layer.usage() <= target {
                    return Ok(());
                }
                if waited.is_err() {
                    continue;
                }
            }
        }
        tracing::warn!(needed = bytes, used = layer.usage(), quota, "staging quota exhausted: ENOSPC");
        Err(FsError::NoSpace)
    }

    /// Run the GC if the layer is above `max_staging_size` (bucket mounts only: in an overlay
    /// the layer holds the only copy).
    pub(super) fn maybe_gc(&self) {
        let Some(st) = &self.cfg.staging else { return };
        if st.max_staging_size > 0 && self.staging_usage() > st.max_staging_size {
            self.gc_to(st.max_staging_size);
        }
    }

    /// Delete clean, closed, settled staged files, least recently used first, until the layer
    /// holds at most `target` bytes. Returns the bytes freed.
    pub(super) fn gc_to(&self, target: u64) -> u64 {
        let Some(layer) = &self.layer else { return 0 };
        if !matches!(self.cfg.write, WriteMode::Bucket(_)) || layer.usage() <= target {
            return 0;
        }
        let mut candidates: Vec<(Instant, String, Arc<LocalEntry>)> = layer
            .all()
            .into_iter()
            .filter_map(|(p, e)| {
                let st = e.lock();
                let eligible = st.kind == LocalKind::File
                    && st.data.is_some()
                    && !st.is_dirty()
                    && !st.pending
                    && st.open_handles == 0
                    && st.content.is_some();
                let used = st.last_used;
                drop(st);
                eligible.then_some((used, p, e))
            })
            .collect();
        candidates.sort_by_key(|(t, _, _)| *t);
        let mut freed = 0;
        for (_, path, e) in candidates {
            if layer.usage() <= target {
                break;
            }
            // Re-point the inode at the committed remote content before the bytes go.
            let (content, size, mtime) = {
                let st = e.lock();
                (st.content.clone(), st.size, st.mtime)
            };
            {
                let mut t = self.table();
                if let Some(ino) = t.resolve(&path)
                    && let Some(n) = t.get_mut(ino)
                    && n.local.as_ref().is_some_and(|l| Arc::ptr_eq(l, &e))
                {
                    n.local = None;
                    n.content = content;
                    n.size = size;
                    n.mtime = mtime;
                }
            }
            let f = layer.drop_clean_data(&path, &e);
            if f > 0 {
                freed += f;
                self.counters.gc_files.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.counters.gc_bytes.fetch_add(f, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(path, bytes = f, "staging GC dropped a clean file");
            }
        }
        freed
    }

    /// Copy remote file `ino` into the layer so it can be changed (`truncate`: start empty and
    /// fetch nothing). Returns the new layer entry, already linked to the inode.
    pub(super) async fn copy_up(&self, ino: Ino, truncate: bool) -> FsResult<Arc<LocalEntry>> {
        let layer = self.layer.as_ref().ok_or(FsError::ReadOnly)?;
        let lock = {
            let mut locks = self.listing_locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(ino).or_default().clone()
        };
        let _guard = lock.lock().await;
        let (path, content, size, mtime, existing) = {
            let t = self.table();
            let n = t.get(ino).ok_or(FsError::NotFound)?;
            (t.path(ino).ok_or(FsError::NotFound)?, n.content.clone(), n.size, n.mtime, n.local.clone())
        };
        if let Some(l) = existing {
            return self.make_writable(ino, l, truncate).await;
        }
        let content = content.ok_or(FsError::NotFound)?;
        let mut st = new_state(path.clone(), LocalKind::File, 0o644, self.cfg.uid, self.cfg.gid);
        st.mtime = mtime;
        st.ctime = mtime;
        st.atime = mtime;
        st.content = Some(content.clone());
        st.remote_exists = true;
        st.origin = Some(path.clone());
        let keep = if truncate { 0 } else { size };
        self.reserve(keep).await?;
        let entry = layer.create_file(st)?;
        if let Err(e) = self.fill(&entry, &path, &content, size, keep).await {
            layer.remove(&path, Some(&entry));
            return Err(e);
        }
        if truncate && size > 0 {
            self.mark_dirty(&entry);
        }
        entry.persist();
        if let Some(n) = self.table().get_mut(ino) {
            n.local = Some(entry.clone());
        }
        Ok(entry)
    }

    /// Prepare an existing layer entry for writing: fetch its bytes if it only refers to remote
    /// content, and truncate if asked.
    pub(super) async fn make_writable(
        &self,
        ino: Ino,
        e: Arc<LocalEntry>,
        truncate: bool,
    ) -> FsResult<Arc<LocalEntry>> {
        let layer = self.layer.as_ref().ok_or(FsError::ReadOnly)?;
        let (data, content, size, path, origin) = {
            let st = e.lock();
            (st.data.clone(), st.content.clone(), st.size, st.path.clone(), st.origin.clone())
        };
        match data {
            Some(f) => {
                if truncate && size > 0 {
                    f.set_len(0)?;
                    let mut st = e.lock();
                    layer.add_usage(-(st.accounted as i64));
                    st.accounted = 0;
                    st.size = 0;
                    drop(st);
                    self.mark_dirty(&e);
                    e.persist();
                } else if truncate {
                    // O_TRUNC of an empty file changes nothing but its times.
                    let mut st = e.lock();
                    let now = std::time::SystemTime::now();
                    st.mtime = now;
                    st.ctime = now;
                }
            }
            None => {
                let content = content.ok_or(FsError::NotFound)?;
                let keep = if truncate { 0 } else { size };
                self.reserve(keep).await?;
                layer.attach_data(&e)?;
                self.fill(&e, origin.as_deref().unwrap_or(&path), &content, size, keep).await?;
                if truncate && size > 0 {
                    self.mark_dirty(&e);
                }
                e.persist();
            }
        }
        if let Some(n) = self.table().get_mut(ino) {
            n.local = Some(e.clone());
        }
        Ok(e)
    }

    /// Fill `e`'s data file with the first `keep` bytes of remote `content` (`size` bytes).
    async fn fill(
        &self,
        e: &Arc<LocalEntry>,
        remote_path: &str,
        content: &ContentId,
        size: u64,
        keep: u64,
    ) -> FsResult<()> {
        let Some(layer) = &self.layer else { return Err(FsError::ReadOnly) };
        let data = e.lock().data.clone().ok_or(FsError::BadHandle)?;
        if keep > 0 {
            let file = RemoteFile { path: remote_path.to_string(), size, content: content.clone() };
            let blob = self.cache.blob(&content.cache_key(), size)?;
            let ra = Mutex::new(ReadAhead::default());
            let mut off = 0;
            while off < keep {
                let want = (keep - off).min(COPY_STEP as u64) as u32;
                let chunk = reader::read(&self.remote, &file, &blob, &ra, off, want).await?;
                if chunk.is_empty() {
                    return Err(FsError::Io(std::io::Error::other("remote file shorter than listed")));
                }
                data.write_all_at(&chunk, off)?;
                off += chunk.len() as u64;
            }
        }
        data.set_len(keep)?;
        let mut st = e.lock();
        st.size = keep;
        let delta = keep as i64 - st.accounted as i64;
        st.accounted = keep;
        drop(st);
        layer.add_usage(delta);
        Ok(())
    }

    /// Record a change of `e`'s bytes.
    pub(super) fn mark_dirty(&self, e: &Arc<LocalEntry>) -> bool {
        let bucket = matches!(self.cfg.write, WriteMode::Bucket(_));
        let mut st = e.lock();
        let was_dirty = st.is_dirty();
        st.generation += 1;
        let now = std::time::SystemTime::now();
        st.mtime = now;
        st.ctime = now;
        if !was_dirty {
            st.dirty_since = Some(Instant::now());
        }
        st.pending = bucket;
        !was_dirty
    }
}
