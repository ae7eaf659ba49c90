//! The comparison points for one file, taken in the same run: the same reads from the local
//! copy on the same disk (the ceiling), and the way users get a file today, downloading it
//! whole with the `hf-hub` client (hf-xet underneath) before reading it.

use std::path::Path;
use std::time::Instant;

use super::Ctx;
use crate::dataset::{DATA_BUCKET, DataFile, READ_TOKEN};
use crate::measure::{KIB4, MIB, drop_page_cache, first_byte_ms, mb_s, mean_p99, range_ms, read_all, scattered_ms};

type R = Result<f64, String>;

/// Baseline numbers for one file; an `Err` says why a number is missing.
pub struct FileBaseline {
    pub local_cold_mb_s: R,
    pub local_warm_mb_s: R,
    pub local_ttfb_ms: R,
    pub local_range_ms: R,
    pub local_random_mean_ms: R,
    pub local_random_p99_ms: R,
    /// Whole-file download with `hf-hub`: throughput and duration.
    pub download_mb_s: R,
    pub download_ms: R,
    /// Download, then open and read the first 4 KiB of the local copy.
    pub download_ttfb_ms: R,
    /// Download, then read the local copy to the end.
    pub download_ttlb_ms: R,
}

impl FileBaseline {
    pub fn to_json(&self) -> serde_json::Value {
        let v = |r: &R| match r {
            Ok(v) => serde_json::json!(v),
            Err(e) => serde_json::json!({ "error": e }),
        };
        serde_json::json!({
            "local_cold_mb_s": v(&self.local_cold_mb_s),
            "local_warm_mb_s": v(&self.local_warm_mb_s),
            "local_ttfb_ms": v(&self.local_ttfb_ms),
            "local_range_ms": v(&self.local_range_ms),
            "local_random_mean_ms": v(&self.local_random_mean_ms),
            "local_random_p99_ms": v(&self.local_random_p99_ms),
            "download_mb_s": v(&self.download_mb_s),
            "download_ms": v(&self.download_ms),
            "download_ttfb_ms": v(&self.download_ttfb_ms),
            "download_ttlb_ms": v(&self.download_ttlb_ms),
        })
    }
}

/// Offset of the 1 MiB range read: 25 MiB, or as close as the file allows.
pub fn range_offset(size: u64) -> u64 {
    (25 * MIB).min(size.saturating_sub(MIB)) / KIB4 as u64 * KIB4 as u64
}

pub fn measure(ctx: &Ctx<'_>, file: &DataFile, offsets: &[u64]) -> FileBaseline {
    let p = &file.local;
    let cold = |f: &dyn Fn() -> R| -> R {
        drop_page_cache(p)?;
        f()
    };
    let local_cold_mb_s = cold(&|| read_all(p).map(|(n, s)| mb_s(n, s)));
    let local_warm_mb_s = read_all(p).and_then(|_| read_all(p)).map(|(n, s)| mb_s(n, s));
    let local_ttfb_ms = cold(&|| first_byte_ms(p));
    let local_range_ms = cold(&|| range_ms(p, range_offset(file.size), MIB as usize));
    let random = drop_page_cache(p).and_then(|_| scattered_ms(p, offsets)).map(|v| mean_p99(&v));
    let (download_mb_s, download_ms, download_ttfb_ms, download_ttlb_ms) = match download(ctx, file) {
        Ok(d) => (Ok(d.0), Ok(d.1), Ok(d.2), Ok(d.3)),
        Err(e) => (Err(e.clone()), Err(e.clone()), Err(e.clone()), Err(e)),
    };
    FileBaseline {
        local_cold_mb_s,
        local_warm_mb_s,
        local_ttfb_ms,
        local_range_ms,
        local_random_mean_ms: random.clone().map(|r| r.0),
        local_random_p99_ms: random.map(|r| r.1),
        download_mb_s,
        download_ms,
        download_ttfb_ms,
        download_ttlb_ms,
    }
}

/// (MB/s, download ms, first-byte ms, last-byte ms) of a fresh `hf-hub` client downloading
/// `file` through the profile, then reading it.
fn download(ctx: &Ctx<'_>, file: &DataFile) -> Result<(f64, f64, f64, f64), String> {
    let dir = ctx.fresh_dir("download");
    let target = dir.join("file.bin");
    let endpoint = ctx.endpoint.clone();
    let remote = file.remote.clone();
    let t0 = Instant::now();
    let dl = target.clone();
    let hf_home = dir.join("hf-home");
    ctx.rt.block_on(async move {
        let client = hf_hub::HFClient::builder()
            .endpoint(endpoint)
            .token(READ_TOKEN)
            .cache_dir(hf_home)
            .cache_enabled(false)
            .build()
            .map_err(|e| format!("hf-hub client: {e}"))?;
        let (ns, name) = DATA_BUCKET.split_once('/').unwrap_or_default();
        client
            .bucket(ns, name)
            .download_files()
            .files(vec![hf_hub::buckets::BucketDownload::new(remote, dl)])
            .send()
            .await
            .map_err(|e| format!("hf-hub download: {e}"))
    })?;
    let download_ms = t0.elapsed().as_secs_f64() * 1e3;
    let size = std::fs::metadata(&target).map_err(|e| format!("downloaded file: {e}"))?.len();
    if size != file.size {
        return Err(format!("downloaded {size} bytes, expected {}", file.size));
    }
    let ttfb = download_ms + first_byte_ms(&target)?;
    let ttlb = download_ms + read_all(&target)?.1 * 1e3;
    remove(&dir);
    Ok((mb_s(file.size, download_ms / 1e3), download_ms, ttfb, ttlb))
}

fn remove(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
