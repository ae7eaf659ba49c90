//! Writes through a read-write bucket mount (write token, `--flush-debounce-ms`
//! [`DEBOUNCE_MS`]), next to the same writes on local disk, for one file size:
//!
//! - a new file written with 1 MiB `write()` calls, then closed: the `write()` phase
//!   throughput, the `close()` time, and the time from `close()` until another client (a fresh
//!   `hf-hub` client, through the same profile) sees the file with its full size;
//! - a new file written, then `fsync`ed: `fsync` on a bucket file returns once the bytes are
//!   committed, so open → write → fsync is the end-to-end time of a durable write;
//! - the same bytes again under a new path (an identical re-save): what deduplication saves,
//!   as the CAS bytes the mount uploaded (`hub_cas_bytes_received_total`) over the file size.
//!
//! Every file gets fresh pseudo-random content so nothing deduplicates unless it should. The
//! baselines write the same number of bytes the same way to a local file on the same disk:
//! once without fsync (page-cache speed, the one the target ratio uses) and once with
//! `sync_all` (disk speed).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use super::Ctx;
use crate::dataset::{DataFile, READ_TOKEN, WRITE_BUCKET};
use crate::hubstats::HubStats;
use crate::measure::{SEQ_BUF, fresh_bytes, mb_s};
use crate::report::{Row, Target};

/// `--flush-debounce-ms` of the read-write mounts: short, so that close-to-committed shows
/// the upload and commit rather than the (default 2 s) quiet period.
pub const DEBOUNCE_MS: u64 = 200;
/// How often the other client asks whether the file is there.
const POLL: Duration = Duration::from_millis(50);
/// Longest wait for a closed file to show.
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(300);

type R = Result<f64, String>;

/// Seconds of the phases of one write of a whole file.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct WriteTimes {
    /// open (create) of the new file.
    pub open_s: f64,
    /// From open returning to the last `write()` returning.
    pub write_s: f64,
    /// The `sync_all` call, if asked for.
    pub fsync_s: Option<f64>,
    pub close_s: f64,
    /// open to the last call before `close()` (the fsync if any, else the last write).
    pub to_sync_s: f64,
}

/// Writes `data` to a new file at `path` in [`SEQ_BUF`] calls, optionally `fsync`s it, and
/// closes it checking `close()`'s result. Returns the phase times and the instant `close()`
/// was called.
pub fn write_file(path: &Path, data: &[u8], fsync: bool) -> Result<(WriteTimes, Instant), String> {
    let t0 = Instant::now();
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| format!("create {}: {e}", path.display()))?;
    let opened = Instant::now();
    for (i, chunk) in data.chunks(SEQ_BUF).enumerate() {
        f.write_all(chunk).map_err(|e| format!("write {} at {}: {e}", path.display(), i * SEQ_BUF))?;
    }
    let t1 = Instant::now();
    let fsync_s = if fsync {
        f.sync_all().map_err(|e| format!("fsync {}: {e}", path.display()))?;
        Some(t1.elapsed().as_secs_f64())
    } else {
        None
    };
    let closing = Instant::now();
    close(f).map_err(|e| format!("close {}: {e}", path.display()))?;
    Ok((
        WriteTimes {
            open_s: (opened - t0).as_secs_f64(),
            write_s: (t1 - opened).as_secs_f64(),
            fsync_s,
            close_s: closing.elapsed().as_secs_f64(),
            to_sync_s: (closing - t0).as_secs_f64(),
        },
        closing,
    ))
}

/// `close(2)`, reporting its error (dropping a `File` ignores it, and a mount reports commit
/// errors there).
fn close(f: File) -> std::io::Result<()> {
    let fd = f.into_raw_fd();
    // SAFETY: we own `fd` (taken out of the File) and close it exactly once.
    if unsafe { libc::close(fd) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Another client of the bucket: a fresh `hf-hub` client (read token) through the profile.
struct Observer {
    bucket: hf_hub::buckets::HFBucket,
}

impl Observer {
    fn new(ctx: &Ctx<'_>) -> Result<Observer, String> {
        let _rt = ctx.rt.enter();
        let client = hf_hub::HFClient::builder()
            .endpoint(ctx.endpoint.clone())
            .token(READ_TOKEN)
            .cache_enabled(false)
            .build()
            .map_err(|e| format!("hf-hub client: {e}"))?;
        let (ns, name) = WRITE_BUCKET.split_once('/').unwrap_or_default();
        Ok(Observer { bucket: client.bucket(ns, name) })
    }

    /// The committed size of `path`, `None` if the bucket has no such file.
    async fn size(&self, path: &str) -> Result<Option<u64>, String> {
        let entries = self.bucket.get_paths_info().paths(vec![path.to_string()]).send().await;
        let entries = entries.map_err(|e| format!("paths-info: {e}"))?;
        Ok(entries.iter().find_map(|e| match e {
            hf_hub::buckets::BucketTreeEntry::File { path: p, size, .. } if p == path => Some(*size),
            _ => None,
        }))
    }

    /// Seconds from `since` until `path` shows with `size` bytes, asking every [`POLL`].
    fn wait_visible(&self, ctx: &Ctx<'_>, path: &str, size: u64, since: Instant) -> R {
        ctx.rt.block_on(async {
            loop {
                let last = match self.size(path).await {
                    Ok(Some(s)) if s == size => return Ok(since.elapsed().as_secs_f64()),
                    Ok(s) => format!("size {s:?}"),
                    Err(e) => e,
                };
                if since.elapsed() > VISIBLE_TIMEOUT {
                    return Err(format!("{path} not committed with {size} bytes after {VISIBLE_TIMEOUT:?} ({last})"));
                }
                tokio::time::sleep(POLL).await;
            }
        })
    }
}

/// The local-disk baselines: the same write without fsync (page cache) and with `sync_all`.
struct LocalBaseline {
    nosync: Result<WriteTimes, String>,
    fsync: Result<WriteTimes, String>,
}

fn local_baseline(ctx: &Ctx<'_>, data: &[u8]) -> LocalBaseline {
    let dir = ctx.fresh_dir("write-local");
    let one = |name: &str, fsync: bool| {
        let p = dir.join(name);
        let r = write_file(&p, data, fsync).map(|(t, _)| t);
        let _ = std::fs::remove_file(&p);
        r
    };
    let nosync = one("nosync.bin", false);
    let fsync = one("fsync.bin", true);
    // SAFETY: sync(2) has no preconditions. Leaves no dirty pages of ours to the mount's turn.
    unsafe { libc::sync() };
    let _ = std::fs::remove_dir_all(&dir);
    LocalBaseline { nosync, fsync }
}

/// What the mount did, phase by phase.
struct MountWrites {
    /// New file, no fsync: times, close-to-visible seconds, what it cost the Hub.
    seq: Result<(WriteTimes, R, HubStats), String>,
    /// New file, fsync: times, cost.
    e2e: Result<(WriteTimes, HubStats), String>,
    /// The same bytes under a new path, fsync: times, cost.
    rewrite: Result<(WriteTimes, HubStats), String>,
    peak_rss: R,
}

fn mount_writes(ctx: &Ctx<'_>, file: &DataFile, first: &[u8]) -> Result<MountWrites, String> {
    let label = file.label();
    let scen = format!("write {label}");
    let observer = Observer::new(ctx)?;
    let m = ctx.mount_rw(WRITE_BUCKET, &scen)?;
    let stem = format!("{}-{}", ctx.profile.name, file.remote.trim_end_matches(".bin"));
    // Each phase: its times, the instant close() was called, the Hub counters before it.
    let phase = |name: &str, data: &[u8], fsync: bool| -> Result<(WriteTimes, Instant, HubStats), String> {
        let before = ctx.hub();
        let cpu = ctx.cpu_start(&m);
        let out = write_file(&m.path(&format!("{stem}-{name}.bin")), data, fsync);
        ctx.cpu_end(&m, &format!("{scen} {name}"), cpu);
        out.map(|(t, closing)| (t, closing, before))
    };

    // 1. A new file, closed; then wait until another client sees it. Its cost runs from
    //    before the write to the moment it showed (the upload starts after the debounce).
    let seq = phase("seq", first, false).map(|(t, closing, before)| {
        let visible = observer.wait_visible(ctx, &format!("{stem}-seq.bin"), file.size, closing);
        (t, visible, ctx.hub().since(&before))
    });
    // 2. A new file (its own fresh bytes), fsync'ed: committed when fsync returns.
    let second = fresh_bytes(file.size);
    let e2e = phase("e2e", &second, true).and_then(|(t, _, before)| {
        let cost = ctx.hub().since(&before);
        let rel = format!("{stem}-e2e.bin");
        match ctx.rt.block_on(observer.size(&rel)) {
            Ok(Some(s)) if s == file.size => Ok((t, cost)),
            other => Err(format!("fsync returned but another client does not see {rel} yet ({other:?})")),
        }
    });
    // 3. The same bytes again under a new path, fsync'ed.
    let rewrite = phase("rewrite", &second, true).map(|(t, _, before)| (t, ctx.hub().since(&before)));
    drop(second);
    // A mount that died explains the failed phases: add its last log lines to them.
    let finished = ctx.finish(m, &scen);
    let with_death = |e: String| match &finished {
        Err(f) => format!("{e}; then: {f}"),
        Ok(_) => e,
    };
    Ok(MountWrites {
        seq: seq.map_err(with_death),
        e2e: e2e.map_err(with_death),
        rewrite: rewrite.map_err(with_death),
        peak_rss: finished.as_ref().map(|r| r.peak_mib).map_err(Clone::clone),
    })
}

pub fn run(ctx: &Ctx<'_>, file: &DataFile) -> Vec<Row> {
    let label = file.label();
    let sec = format!("{label} file: writes (bucket mount, --flush-debounce-ms {DEBOUNCE_MS})");
    let sec = sec.as_str();
    let first = fresh_bytes(file.size);
    let local = local_baseline(ctx, &first);
    let mounted = mount_writes(ctx, file, &first);
    drop(first);

    let key = |k: &str| format!("{label}/write/{k}");
    let js = |r: &Result<WriteTimes, String>| match r {
        Ok(t) => serde_json::to_value(t).unwrap_or_default(),
        Err(e) => serde_json::json!({ "error": e }),
    };
    ctx.detail(key("local_nosync"), js(&local.nosync));
    ctx.detail(key("local_fsync"), js(&local.fsync));

    let size = file.size;
    let err = |e: &String| e.clone();
    let (seq, e2e, rewrite, peak) = match &mounted {
        Ok(m) => (m.seq.clone(), m.e2e.clone(), m.rewrite.clone(), m.peak_rss.clone()),
        Err(e) => (Err(e.clone()), Err(e.clone()), Err(e.clone()), Err(e.clone())),
    };
    if let Ok((t, v, c)) = &seq {
        ctx.detail(
            key("seq"),
            serde_json::json!({"times": t, "close_to_visible_s": v.as_ref().ok(), "hub": c.to_json()}),
        );
    }
    for (name, r) in [("e2e", &e2e), ("rewrite", &rewrite)] {
        if let Ok((t, c)) = r {
            ctx.detail(key(name), serde_json::json!({"times": t, "hub": c.to_json()}));
        }
    }

    let l_nosync = local.nosync.as_ref().map(|t| mb_s(size, t.write_s)).map_err(err);
    let l_fsync_mb_s = local.fsync.as_ref().map(|t| mb_s(size, t.to_sync_s)).map_err(err);
    let l_fsync_s = local.fsync.as_ref().map(|t| t.to_sync_s).map_err(err);
    let seq_mb_s = seq.as_ref().map(|(t, _, _)| mb_s(size, t.write_s)).map_err(err);
    let visible = seq.as_ref().map_err(err).and_then(|(_, v, _)| v.clone());
    let debounce_s = DEBOUNCE_MS as f64 / 1e3;
    let cas_fraction = |c: &HubStats| c.cas_bytes_received / size as f64 * 100.0;
    vec![
        Row::new(sec, "open (create) of a new file", "ms")
            .value(seq.as_ref().map(|(t, _, _)| t.open_s * 1e3).map_err(err))
            .baseline(local.nosync.as_ref().map(|t| t.open_s * 1e3).map_err(err), "local disk"),
        Row::new(sec, "sequential write, write() phase (1 MiB writes, new file)", "MB/s")
            .value(seq_mb_s.clone())
            .baseline(l_nosync.clone(), "local disk, no fsync")
            .target(Target::RatioAtLeast(0.7)),
        Row::new(sec, "the same, against local disk with fsync (disk speed)", "MB/s")
            .value(seq_mb_s)
            .baseline(l_fsync_mb_s.clone(), "local disk, write + fsync"),
        Row::new(sec, "close() of that file", "ms")
            .value(seq.as_ref().map(|(t, _, _)| t.close_s * 1e3).map_err(err))
            .baseline(local.nosync.as_ref().map(|t| t.close_s * 1e3).map_err(err), "local disk"),
        Row::new(sec, "close to committed (seen by another client, 50 ms polls)", "s").value(visible.clone()),
        Row::new(sec, format!("of which upload + commit (minus the {DEBOUNCE_MS} ms debounce)"), "s")
            .value(visible.map(|v| v - debounce_s)),
        Row::new(sec, "CAS bytes uploaded / file size, new file", "%")
            .value(seq.as_ref().map(|(_, _, c)| cas_fraction(c)).map_err(err)),
        Row::new(sec, "write end-to-end: open → write → fsync returned (committed)", "s")
            .value(e2e.as_ref().map(|(t, _)| t.to_sync_s).map_err(err))
            .baseline(l_fsync_s, "local disk, write + fsync"),
        Row::new(sec, "write end-to-end throughput", "MB/s")
            .value(e2e.as_ref().map(|(t, _)| mb_s(size, t.to_sync_s)).map_err(err))
            .baseline(l_fsync_mb_s, "local disk, write + fsync"),
        Row::new(sec, "of which fsync (upload + commit)", "s")
            .value(e2e.as_ref().map(|(t, _)| t.fsync_s.unwrap_or(f64::NAN)).map_err(err)),
        Row::new(sec, "identical rewrite (same bytes, new path): write() phase", "MB/s")
            .value(rewrite.as_ref().map(|(t, _)| mb_s(size, t.write_s)).map_err(err))
            .baseline(l_nosync, "local disk, no fsync"),
        Row::new(sec, "identical rewrite: end-to-end (open → fsync returned)", "s")
            .value(rewrite.as_ref().map(|(t, _)| t.to_sync_s).map_err(err)),
        Row::new(sec, "identical rewrite: close() after fsync", "ms")
            .value(rewrite.as_ref().map(|(t, _)| t.close_s * 1e3).map_err(err)),
        Row::new(sec, "identical rewrite: CAS bytes uploaded / file size", "%")
            .value(rewrite.as_ref().map(|(_, c)| cas_fraction(c)).map_err(err))
            .target(Target::AtMost(1.0)),
        Row::new(sec, "peak RSS of the mount, over these writes", "MiB").value(peak),
    ]
}
