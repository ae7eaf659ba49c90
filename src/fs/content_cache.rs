//! The on-disk content cache: file bytes keyed by content id, shared by every mount (in any
//! process) that uses the same cache directory, bounded by a size limit with LRU eviction.
//!
//! Each blob is a sparse data file plus a block map (one byte per [`BLOCK_SIZE`] block, 1 =
//! present). A block is marked present only after its bytes are written, so a crash at worst
//! loses a block that is then fetched again. Content ids never change meaning, so nothing in
//! here is ever invalidated — only evicted. Another process may fill blocks we lack: a miss
//! re-reads the map from disk before fetching.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use tokio::sync::Notify;

/// Granularity of caching and fetching.
pub const BLOCK_SIZE: u64 = 256 * 1024;

/// Counters for logs and metrics.
#[derive(Debug, Default)]
pub struct CacheCounters {
    pub blocks_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub blobs_evicted: AtomicU64,
}

/// (last use, key, bytes present) of one cached blob.
type BlobUse = (SystemTime, String, u64);

/// The cache directory.
pub struct ContentCache {
    dir: PathBuf,
    limit: u64,
    usage: AtomicU64,
    live: Mutex<HashMap<String, Weak<Blob>>>,
    evicting: AtomicBool,
    pub counters: CacheCounters,
}

impl std::fmt::Debug for ContentCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentCache").field("dir", &self.dir).field("limit", &self.limit).finish()
    }
}

impl ContentCache {
    /// Open (creating) the cache under `dir`, limited to `limit` bytes (0 = unlimited).
    pub fn open(dir: &Path, limit: u64) -> io::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)?;
        let cache = ContentCache {
            dir: dir.to_path_buf(),
            limit,
            usage: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            evicting: AtomicBool::new(false),
            counters: CacheCounters::default(),
        };
        let (total, _) = cache.scan()?;
        cache.usage.store(total, Ordering::Relaxed);
        Ok(Arc::new(cache))
    }

    /// Bytes currently cached (as of the last scan plus what this process wrote since).
    pub fn usage(&self) -> u64 {
        self.usage.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn paths(&self, key: &str) -> (PathBuf, PathBuf) {
        let shard = &key[key.len().saturating_sub(2)..];
        let d = self.dir.join(shard);
        (d.join(format!("{key}.data")), d.join(format!("{key}.map")))
    }

    /// The blob for `key` holding `size` bytes, shared with other users in this process.
    pub fn blob(self: &Arc<Self>, key: &str, size: u64) -> io::Result<Arc<Blob>> {
        if !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') || key.len() < 3 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad cache key {key:?}")));
        }
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = live.get(key).and_then(Weak::upgrade)
            && b.size == size
        {
            return Ok(b);
        }
        let (data_path, map_path) = self.paths(key);
        if let Some(parent) = data_path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let blocks = size.div_ceil(BLOCK_SIZE);
        let data = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&data_path)?;
        let map = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&map_path)?;
        if data.metadata()?.len() != size || map.metadata()?.len() != blocks {
            // New, or inconsistent (interrupted creation): start empty.
            map.set_len(0)?;
            map.set_len(blocks)?;
            data.set_len(size)?;
        }
        let mut present = vec![0u8; blocks as usize];
        map.read_exact_at(&mut present, 0)?;
        let _ = map.set_modified(SystemTime::now());
        let blob = Arc::new(Blob {
            size,
            data,
            map,
            present: Mutex::new(present),
            notify: Notify::new(),
            fetch: Mutex::default(),
            cache: Arc::downgrade(self),
        });
        live.insert(key.to_string(), Arc::downgrade(&blob));
        live.retain(|_, w| w.strong_count() > 0);
        Ok(blob)
    }

    fn note_written(&self, bytes: u64) {
        self.counters.blocks_written.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        let usage = self.usage.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if self.limit > 0 && usage > self.limit {
            self.evict_soon();
        }
    }

    fn evict_soon(&self) {
        if self.evicting.swap(true, Ordering::AcqRel) {
            return;
        }
        let result = self.evict();
        self.evicting.store(false, Ordering::Release);
        if let Err(e) = result {
            tracing::warn!(error = %e, dir = %self.dir.display(), "content cache eviction failed");
        }
    }

    /// Walk the cache: total bytes present, and each blob's use.
    fn scan(&self) -> io::Result<(u64, Vec<BlobUse>)> {
        let mut total = 0;
        let mut blobs = Vec::new();
        for shard in std::fs::read_dir(&self.dir)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(shard.path())? {
                let f = f?;
                let name = f.file_name().to_string_lossy().to_string();
                let Some(key) = name.strip_suffix(".map") else {
                    continue;
                };
                let map = match std::fs::read(f.path()) {
                    Ok(m) => m,
                    Err(_) => continue,
                };
                let bytes = map.iter().filter(|b| **b == 1).count() as u64 * BLOCK_SIZE;
                let used = f.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
                total += bytes;
                blobs.push((used, key.to_string(), bytes));
            }
        }
        Ok((total, blobs))
    }

    /// Delete least recently used blobs not open in this process until under 90% of the limit.
    fn evict(&self) -> io::Result<()> {
        let (mut total, mut blobs) = self.scan()?;
        let target = self.limit - self.limit / 10;
        blobs.sort();
        for (_, key, bytes) in blobs {
            if total <= target {
                break;
            }
            let in_use = {
                let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
                live.get(&key).is_some_and(|w| w.strong_count() > 0)
            };
            if in_use {
                continue;
            }
            let (data, map) = self.paths(&key);
            // Map first: a blob without its map is never trusted.
            let _ = std::fs::remove_file(&map);
            let _ = std::fs::remove_file(&data);
            total = total.saturating_sub(bytes);
            self.counters.blobs_evicted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(key, bytes, "evicted from the content cache");
        }
        self.usage.store(total, Ordering::Relaxed);
        Ok(())
    }
}

/// The cached bytes of one content id.
pub struct Blob {
    size: u64,
    data: File,
    map: File,
    present: Mutex<Vec<u8>>,
    /// Woken whenever a block lands (and when a fetch fails).
    pub notify: Notify,
    /// In-process fetch bookkeeping, owned by the read path.
    pub(crate) fetch: Mutex<FetchState>,
    cache: Weak<ContentCache>,
}

/// Which blocks this process is fetching, and which fetches failed (reported once to a waiter).
#[derive(Debug, Default)]
pub(crate) struct FetchState {
    pub inflight: std::collections::HashSet<u64>,
    pub failed: HashMap<u64, crate::hub::RemoteError>,
}

impl Blob {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The blocks covering bytes `range`.
    pub fn blocks_of(&self, range: Range<u64>) -> Range<u64> {
        if range.start >= range.end {
            return 0..0;
        }
        range.start / BLOCK_SIZE..range.end.min(self.size).div_ceil(BLOCK_SIZE)
    }

    /// The byte range of block `b`.
    pub fn block_bytes(&self, b: u64) -> Range<u64> {
        b * BLOCK_SIZE..((b + 1) * BLOCK_SIZE).min(self.size)
    }

    pub fn has(&self, b: u64) -> bool {
        let p = self.present.lock().unwrap_or_else(|p| p.into_inner());
        p.get(b as usize).is_some_and(|v| *v == 1)
    }

    /// Whether every block of `blocks` is present in memory's view.
    pub fn has_all(&self, blocks: Range<u64>) -> bool {
        let p = self.present.lock().unwrap_or_else(|p| p.into_inner());
        blocks.clone().all(|b| p.get(b as usize).is_some_and(|v| *v == 1))
    }

    pub fn is_complete(&self) -> bool {
        let p = self.present.lock().unwrap_or_else(|p| p.into_inner());
        p.iter().all(|v| *v == 1)
    }

    /// Re-read the map for `blocks` from disk (another process may have filled them).
    pub fn refresh(&self, blocks: Range<u64>) -> io::Result<()> {
        if blocks.is_empty() {
            return Ok(());
        }
        let mut buf = vec![0u8; (blocks.end - blocks.start) as usize];
        self.map.read_exact_at(&mut buf, blocks.start)?;
        let mut p = self.present.lock().unwrap_or_else(|p| p.into_inner());
        for (i, v) in buf.into_iter().enumerate() {
            if v == 1 {
                p[blocks.start as usize + i] = 1;
            }
        }
        Ok(())
    }

    /// Store block `b` (exactly its full length) and mark it present.
    pub fn write_block(&self, b: u64, bytes: &[u8]) -> io::Result<()> {
        let range = self.block_bytes(b);
        if bytes.len() as u64 != range.end - range.start {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "block length mismatch"));
        }
        self.data.write_all_at(bytes, range.start)?;
        self.map.write_all_at(&[1], b)?;
        let newly = {
            let mut p = self.present.lock().unwrap_or_else(|p| p.into_inner());
            let newly = p[b as usize] == 0;
            p[b as usize] = 1;
            newly
        };
        if newly && let Some(c) = self.cache.upgrade() {
            c.note_written(bytes.len() as u64);
        }
        self.notify.notify_waiters();
        Ok(())
    }

    /// Read `len` bytes at `offset` (the caller made sure the blocks are present).
    pub fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.data.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// The data file, for handing to the kernel when the blob is complete.
    pub fn data_file(&self) -> &File {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_persist_and_are_shared_through_disk() {
        let dir = tempfile::tempdir().unwrap();
        let size = BLOCK_SIZE * 2 + 10;
        let c1 = ContentCache::open(dir.path(), 0).unwrap();
        let b1 = c1.blob("xet-abc", size).unwrap();
        assert_eq!(b1.blocks_of(0..size), 0..3);
        assert!(!b1.has(2));
        b1.write_block(2, &[7u8; 10]).unwrap();
        assert!(b1.write_block(1, &[1u8; 3]).is_err());
        // A second process opening the same cache sees the block.
        let c2 = ContentCache::open(dir.path(), 0).unwrap();
        let b2 = c2.blob("xet-abc", size).unwrap();
        assert!(b2.has(2) && !b2.has(0));
        assert_eq!(b2.read(BLOCK_SIZE * 2, 10).unwrap(), vec![7u8; 10]);
        // Blocks written later by the first are found by a refresh.
        b1.write_block(0, &vec![3u8; BLOCK_SIZE as usize]).unwrap();
        assert!(!b2.has(0));
        b2.refresh(0..3).unwrap();
        assert!(b2.has(0));
        assert_eq!(c2.usage(), BLOCK_SIZE);
    }

    #[test]
    fn eviction_removes_least_recently_used_unopened_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let c = ContentCache::open(dir.path(), 3 * BLOCK_SIZE).unwrap();
        for key in ["xet-old", "xet-mid"] {
            let b = c.blob(key, BLOCK_SIZE).unwrap();
            b.write_block(0, &vec![1u8; BLOCK_SIZE as usize]).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let keep = c.blob("xet-new", 2 * BLOCK_SIZE).unwrap();
        keep.write_block(0, &vec![1u8; BLOCK_SIZE as usize]).unwrap();
        keep.write_block(1, &vec![1u8; BLOCK_SIZE as usize]).unwrap();
        assert!(c.usage() <= 3 * BLOCK_SIZE, "usage {}", c.usage());
        let (data_old, _) = c.paths("xet-old");
        let (data_new, _) = c.paths("xet-new");
        assert!(!data_old.exists());
        assert!(data_new.exists());
    }

    #[test]
    fn rejects_path_like_keys() {
        let dir = tempfile::tempdir().unwrap();
        let c = ContentCache::open(dir.path(), 0).unwrap();
        assert!(c.blob("../etc", 1).is_err());
    }
}
