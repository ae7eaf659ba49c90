//! The flush manager of bucket mounts: batches pending layer entries (dirty files after a
//! quiet period, renames, deletes), uploads the dirty files in one `hf-xet` upload, then makes
//! everything visible with **one** commit (adds, then deletes). Nothing is half-visible: a
//! reader sees the old or the new file.
//!
//! A file written while its upload runs stays dirty (its generation moved) and goes again in a
//! later round; one round runs at a time, so one upload per file. A failed round is retried
//! with backoff; its error is kept on the files for their next `close` or `fsync`. Staged bytes
//! are never dropped until committed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use super::layer::{LocalEntry, LocalKind};
use super::{FlushConfig, Fs};
use crate::hub::{CommitAdd, ContentId, Remote, RemoteError};

/// At most this many operations per commit (the Hub's batch chunk size).
const MAX_OPS: usize = 1000;
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Wake-ups and waiters of the flush manager.
#[derive(Default)]
pub(crate) struct Flusher {
    wake: Notify,
    round_done: Notify,
    urgent: Mutex<HashSet<u64>>,
    all: AtomicBool,
    rounds: AtomicU64,
}

impl Flusher {
    /// Something changed: look again.
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// Commit this entry without waiting for the debounce.
    pub fn urge(&self, id: u64) {
        self.urgent.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
        self.wake.notify_one();
    }

    /// Commit everything now (unmount, quota pressure).
    pub fn urge_all(&self) {
        self.all.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Resolves after the next round (successful or not).
    pub fn wait_round(&self) -> tokio::sync::futures::Notified<'_> {
        self.round_done.notified()
    }
}

/// One pending entry chosen for a round.
struct Item {
    path: String,
    entry: Arc<LocalEntry>,
    op: Op,
}

enum Op {
    /// Upload the data file of this generation, then add it.
    Upload { generation: u64 },
    /// Add by hash (a renamed or moved file whose bytes the remote already has).
    AddRef { hash: String, size: u64 },
    /// Delete the remote file.
    Delete,
    /// A directory whiteout: nothing to send; dropped once nothing below it is pending.
    DirWhiteout,
}

/// Run until the filesystem goes away.
pub(crate) async fn run<R: Remote>(fs: Weak<Fs<R>>, cfg: FlushConfig) {
    let tick = (cfg.debounce / 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut backoff = Duration::ZERO;
    let mut retry_at = Instant::now();
    loop {
        {
            let Some(flusher) = fs.upgrade().map(|f| f.flusher.clone()) else { return };
            let _ = tokio::time::timeout(tick, flusher.wake.notified()).await;
        }
        let Some(fs) = fs.upgrade() else { return };
        let urgent = fs.flusher.all.load(Ordering::Relaxed)
            || !fs.flusher.urgent.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
        if Instant::now() < retry_at && !urgent {
            continue;
        }
        match fs.flush_round(&cfg).await {
            Ok(_) => backoff = Duration::ZERO,
            Err(e) => {
                backoff = (backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                retry_at = Instant::now() + backoff;
                fs.counters.flush_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, retry_in = ?backoff, "commit failed; staged data kept, will retry");
            }
        }
        fs.flusher.rounds.fetch_add(1, Ordering::Relaxed);
        fs.flusher.round_done.notify_waiters();
    }
}

fn mtime_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

impl<R: Remote> Fs<R> {
    /// Choose what is ready to commit.
    fn ready_items(&self, cfg: &FlushConfig) -> Vec<Item> {
        let Some(layer) = &self.layer else { return Vec::new() };
        let all = self.flusher.all.swap(false, Ordering::Relaxed);
        let urgent: HashSet<u64> = std::mem::take(&mut *self.flusher.urgent.lock().unwrap_or_else(|p| p.into_inner()));
        let now = Instant::now();
        let entries = layer.all();
        let pending_paths: Vec<String> =
            entries.iter().filter(|(_, e)| e.lock().pending).map(|(p, _)| p.clone()).collect();
        let mut items = Vec::new();
        for (path, e) in entries {
            if items.len() >= MAX_OPS {
                break;
            }
            let mut st = e.lock();
            if !st.pending && st.kind == LocalKind::File && st.is_dirty() {
                // Dirty bytes are always on their way to the remote; never leave them behind.
                tracing::warn!(path, "dirty file was not marked pending; queued for upload");
                st.pending = true;
            }
            if !st.pending {
                continue;
            }
            let quiet = st.open_writers == 0 && st.last_close.is_none_or(|t| t + cfg.debounce <= now);
            let overdue = st.dirty_since.is_some_and(|t| t + cfg.max_window <= now);
            if !(all || urgent.contains(&e.id) || quiet || overdue) {
                continue;
            }
            let op = match st.kind {
                LocalKind::File if st.is_dirty() && st.data.is_some() => Op::Upload { generation: st.generation },
                LocalKind::File => match &st.content {
                    Some(ContentId::Xet(h)) => Op::AddRef { hash: h.clone(), size: st.size },
                    _ => {
                        tracing::warn!(path, "pending file without bytes or Xet content; left local");
                        continue;
                    }
                },
                LocalKind::Whiteout if st.mode & 0o170000 == 0o040000 => {
                    let prefix = format!("{path}/");
                    if pending_paths.iter().any(|p| p.starts_with(&prefix)) {
                        continue;
                    }
                    Op::DirWhiteout
                }
                LocalKind::Whiteout => Op::Delete,
                LocalKind::Dir | LocalKind::Symlink | LocalKind::Special => continue,
            };
            drop(st);
            items.push(Item { path, entry: e, op });
        }
        items
    }

    /// One round: upload, commit, settle. Returns how many entries were committed.
    pub(super) async fn flush_round(&self, cfg: &FlushConfig) -> Result<usize, RemoteError> {
        let items = self.ready_items(cfg);
        if items.is_empty() {
            return Ok(0);
        }
        let Some(layer) = &self.layer else { return Ok(0) };
        let started = Instant::now();
        let mut uploads: Vec<&Item> = items.iter().filter(|i| matches!(i.op, Op::Upload { .. })).collect();
        let uploaded = loop {
            let files: Vec<std::path::PathBuf> = uploads.iter().map(|i| i.entry.data_path()).collect();
            match self.remote.upload(&files).await {
                Ok(u) => break u,
                Err(e) => {
                    // A file unlinked since it was chosen takes its staged bytes with it; that
                    // version is stale anyway. Upload the rest rather than fail them all.
                    let before = uploads.len();
                    uploads.retain(|i| i.entry.data_path().exists());
                    if uploads.len() < before {
                        tracing::debug!(
                            dropped = before - uploads.len(),
                            "files removed during upload; retrying the rest"
                        );
                        continue;
                    }
                    self.record_error(&items, &e);
                    return Err(e);
                }
            }
        };
        // From here on the namespace stands still: the commit is built from the entries'
        // current paths and lands before any rename or unlink can look at them again. (A rename
        // racing with an in-flight commit would otherwise miss that the old name now exists
        // remotely and leave it behind.)
        let _ns = self.ns_lock.lock().await;
        let current = |path: &str, e: &Arc<LocalEntry>| layer.get(path).is_some_and(|x| Arc::ptr_eq(&x, e));
        let mut adds = Vec::new();
        let mut committed_uploads = Vec::new();
        for (item, up) in uploads.iter().zip(uploaded.iter()) {
            let Op::Upload { generation } = item.op else { continue };
            // Lock order: the layer map before an entry's state.
            let path = item.entry.lock().path.clone();
            let is_current = current(&path, &item.entry);
            let st = item.entry.lock();
            if st.generation != generation || !is_current || st.path != path {
                // Written, truncated or removed during the upload: this version is stale.
                continue;
            }
            adds.push(CommitAdd {
                path: st.path.clone(),
                xet_hash: up.xet_hash.clone(),
                size: up.size,
                mtime_ms: mtime_ms(st.mtime),
            });
            committed_uploads.push((item.entry.clone(), generation, up.xet_hash.clone(), up.size));
            self.counters.uploaded_new_bytes.fetch_add(up.new_bytes, Ordering::Relaxed);
        }
        let mut refs = Vec::new();
        let mut deletes = Vec::new();
        let mut dir_whiteouts = Vec::new();
        for item in &items {
            match &item.op {
                Op::AddRef { hash, size } => {
                    let path = item.entry.lock().path.clone();
                    if !current(&path, &item.entry) {
                        continue;
                    }
                    let st = item.entry.lock();
                    adds.push(CommitAdd {
                        path: st.path.clone(),
                        xet_hash: hash.clone(),
                        size: *size,
                        mtime_ms: mtime_ms(st.mtime),
                    });
                    refs.push(item.entry.clone());
                }
                // A whiteout replaced by a new entry since: that entry's add will overwrite.
                Op::Delete if current(&item.path, &item.entry) => deletes.push(item.path.clone()),
                Op::DirWhiteout if current(&item.path, &item.entry) => dir_whiteouts.push(item.path.clone()),
                Op::Delete | Op::DirWhiteout | Op::Upload { .. } => {}
            }
        }
        let added: HashSet<&str> = adds.iter().map(|a| a.path.as_str()).collect();
        deletes.retain(|d| !added.contains(d.as_str()));
        if !adds.is_empty() || !deletes.is_empty() {
            if let Err(e) = self.remote.commit(&adds, &deletes).await {
                self.record_error(&items, &e);
                return Err(e);
            }
            self.counters.commits.fetch_add(1, Ordering::Relaxed);
        }
        self.commit_epoch.fetch_add(1, Ordering::AcqRel);
        // Settle: what the remote now holds no longer needs the layer.
        for (e, generation, hash, size) in &committed_uploads {
            let mut st = e.lock();
            st.committed = st.committed.max(*generation);
            st.content = Some(ContentId::Xet(hash.clone()));
            st.remote_exists = true;
            st.error = None;
            if !st.is_dirty() {
                st.pending = false;
                st.dirty_since = None;
            }
            let path = st.path.clone();
            drop(st);
            e.persist();
            self.point_inode_at(&path, hash, *size);
        }
        for e in &refs {
            let (path, hash, size, has_data) = {
                let mut st = e.lock();
                // A write that landed while the commit was in flight keeps the file pending:
                // its new bytes still have to be uploaded.
                st.pending = st.is_dirty();
                st.remote_exists = true;
                st.error = None;
                (st.path.clone(), st.content.clone(), st.size, st.data.is_some() || st.pending)
            };
            if let Some(ContentId::Xet(h)) = hash {
                self.point_inode_at(&path, &h, size);
            }
            if has_data {
                // A clean staged file that moved: keep its bytes as a read cache (GC-able).
                e.persist();
            } else {
                // A pure reference: the remote now has the file at its new path.
                layer.remove(&path, Some(e));
                self.unlink_local(&path, e);
            }
        }
        for p in deletes.iter().chain(dir_whiteouts.iter()) {
            if let Some(e) = layer.get(p)
                && e.lock().kind == LocalKind::Whiteout
            {
                layer.remove(p, Some(&e));
            }
        }
        let n = committed_uploads.len() + refs.len() + deletes.len();
        self.counters.committed_files.fetch_add(n as u64, Ordering::Relaxed);
        if n > 0 {
            tracing::info!(
                uploaded = committed_uploads.len(),
                renamed = refs.len(),
                deleted = deletes.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "committed one batch"
            );
        }
        self.maybe_gc();
        Ok(n)
    }

    fn record_error(&self, items: &[Item], e: &RemoteError) {
        for i in items {
            i.entry.lock().error = Some(e.clone());
        }
    }

    /// After a commit, let the inode at `path` know the remote content it now has.
    fn point_inode_at(&self, path: &str, hash: &str, size: u64) {
        let mut t = self.table();
        if let Some(ino) = t.resolve(path)
            && let Some(n) = t.get_mut(ino)
        {
            n.content = Some(ContentId::Xet(hash.to_string()));
            n.size = size;
        }
    }

    /// The layer entry `e` left the layer: its inode now shows the remote.
    fn unlink_local(&self, path: &str, e: &Arc<LocalEntry>) {
        let mut t = self.table();
        if let Some(ino) = t.resolve(path)
            && let Some(n) = t.get_mut(ino)
            && n.local.as_ref().is_some_and(|l| Arc::ptr_eq(l, e))
        {
            n.local = None;
        }
    }

    /// Commit everything pending, waiting at most `timeout`. Returns the entries left behind.
    pub async fn flush_all(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.pending_count();
            if left == 0 || Instant::now() >= deadline {
                if left > 0 {
                    tracing::warn!(
                        left,
                        "unmount: entries not committed in time stay in staging and are retried on the next mount"
                    );
                }
                return left;
            }
            let round = self.flusher.wait_round();
            tokio::pin!(round);
            round.as_mut().enable();
            self.flusher.urge_all();
            let _ = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), round).await;
        }
    }
}
