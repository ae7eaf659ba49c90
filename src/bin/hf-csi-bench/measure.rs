//! Timed reads of one file (whole, first bytes, one range, scattered blocks) and page-cache
//! eviction, shared by the mount scenarios and the local-disk baseline so both are measured
//! the same way.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Buffer size of sequential reads (what `cp` and most loaders use, give or take).
pub const SEQ_BUF: usize = 1024 * 1024;
pub const KIB4: usize = 4096;
pub const MIB: u64 = 1024 * 1024;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Reads `path` start to end; returns (bytes, seconds).
pub fn read_all(path: &Path) -> Result<(u64, f64), String> {
    let t = Instant::now();
    let mut f = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut buf = vec![0u8; SEQ_BUF];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| format!("read {} at {total}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    Ok((total, t.elapsed().as_secs_f64()))
}

/// MB/s (10^6 bytes per second).
pub fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}

/// Open plus the first 4 KiB, in ms.
pub fn first_byte_ms(path: &Path) -> Result<f64, String> {
    let t = Instant::now();
    let f = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut buf = vec![0u8; KIB4];
    f.read_exact_at(&mut buf, 0).map_err(|e| format!("read {}: {e}", path.display()))?;
    Ok(ms(t.elapsed()))
}

/// Opens `path`, then times one read of `len` bytes at `offset`, in ms.
pub fn range_ms(path: &Path, offset: u64, len: usize) -> Result<f64, String> {
    let f = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut buf = vec![0u8; len];
    let t = Instant::now();
    f.read_exact_at(&mut buf, offset).map_err(|e| format!("read {} at {offset}: {e}", path.display()))?;
    Ok(ms(t.elapsed()))
}

/// Opens `path`, then times each 4 KiB read at `offsets`, in ms.
pub fn scattered_ms(path: &Path, offsets: &[u64]) -> Result<Vec<f64>, String> {
    let f = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut buf = vec![0u8; KIB4];
    offsets
        .iter()
        .map(|&o| {
            let t = Instant::now();
            f.read_exact_at(&mut buf, o).map_err(|e| format!("read {} at {o}: {e}", path.display()))?;
            Ok(ms(t.elapsed()))
        })
        .collect()
}

/// 100 distinct 4 KiB-aligned offsets, one in each hundredth of the file, in shuffled order
/// (deterministic, so the mount and the local baseline read the same blocks).
pub fn random_offsets(size: u64, count: usize, seed: u64) -> Vec<u64> {
    let mut rng = XorShift(seed | 1);
    let region = (size / count as u64) / KIB4 as u64 * KIB4 as u64;
    let slots = (region / KIB4 as u64).max(1);
    let mut v: Vec<u64> = (0..count as u64)
        .map(|i| i * region + rng.next() % slots * KIB4 as u64)
        .filter(|o| o + KIB4 as u64 <= size)
        .collect();
    for i in (1..v.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// Mean and 99th percentile (nearest rank) of `samples`.
pub fn mean_p99(samples: &[f64]) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((0.99 * s.len() as f64).ceil() as usize).clamp(1, s.len());
    (mean, s[rank - 1])
}

pub fn median(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Evicts `path` (a file, or every file below a directory) from the page cache. Dirty pages
/// are written first, so nothing stays resident. Other files' caches are left alone: the
/// emulator stands for a remote server, whose memory is not ours to flush.
pub fn drop_page_cache(path: &Path) -> Result<(), String> {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    evict(path)
}

fn evict(path: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))? {
            let entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
            evict(&entry.path())?;
        }
        return Ok(());
    }
    if !meta.is_file() {
        return Ok(());
    }
    let f = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    // SAFETY: fadvise on a descriptor we own; offset 0 / len 0 means the whole file.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(format!("posix_fadvise({}): {}", path.display(), std::io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}

/// Writes `len` pseudo-random (incompressible, dedup-free) bytes to `path` and flushes them.
pub fn write_pattern(path: &Path, len: u64, seed: u64) -> Result<(), String> {
    use std::io::Write;
    let mut f = File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?;
    let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut buf = vec![0u8; SEQ_BUF];
    let mut left = len;
    while left > 0 {
        rng.fill(&mut buf);
        let n = left.min(SEQ_BUF as u64) as usize;
        f.write_all(&buf[..n]).map_err(|e| format!("write {}: {e}", path.display()))?;
        left -= n as u64;
    }
    f.sync_all().map_err(|e| format!("sync {}: {e}", path.display()))
}

/// `len` pseudo-random bytes that no earlier call in this process (or earlier run) produced:
/// content the Xet client cannot deduplicate against anything already uploaded.
pub fn fresh_bytes(len: u64) -> Vec<u8> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let seed = (nanos as u64) ^ (CALLS.fetch_add(1, Ordering::Relaxed) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = XorShift(seed | 1);
    let mut v = vec![0u8; len as usize];
    rng.fill(&mut v);
    v
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Fill `buf` with the next words, little-endian; a tail shorter than a word takes the
    /// first bytes of one more.
    fn fill(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next().to_le_bytes());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            let last = self.next().to_le_bytes();
            tail.copy_from_slice(&last[..tail.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_distinct_aligned_and_inside() {
        let size = 50 * MIB;
        let v = random_offsets(size, 100, 7);
        assert_eq!(v.len(), 100);
        let mut s = v.clone();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), 100);
        assert!(v.iter().all(|o| o % 4096 == 0 && o + 4096 <= size));
        assert_eq!(v, random_offsets(size, 100, 7));
    }

    #[test]
    fn stats() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(mean_p99(&v), (50.5, 99.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }
}
