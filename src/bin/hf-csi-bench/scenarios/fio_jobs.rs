//! fio jobs on a mount (each in a fresh mount, cold cache) next to the same job on the local
//! copy: sequential 128 KiB reads, random 4 KiB reads at queue depth 1 and 16, and sequential
//! 1 MiB writes of a new file through a read-write mount.

use super::Ctx;
use crate::dataset::{DATA_BUCKET, DataFile, WRITE_BUCKET};
use crate::fio::{self, FioResult, Job};
use crate::report::{Row, Target};

/// The read jobs: (name, rw, block size, iodepth, time based).
const READ_JOBS: [(&str, &str, u64, u32, bool); 3] = [
    ("seq-read-128k", "read", 128 * 1024, 1, false),
    ("rand-read-4k-qd1", "randread", 4096, 1, true),
    ("rand-read-4k-qd16", "randread", 4096, 16, true),
];

/// Longest a whole-file sequential job may run.
const SEQ_RUNTIME_CAP: u64 = 300;

pub fn run(ctx: &Ctx<'_>, file: &DataFile) -> Vec<Row> {
    let sec = format!("fio on the {} file", file.label());
    if let Err(why) = &ctx.fio {
        return vec![Row::new(sec, "fio jobs", "").value(Err(why.clone()))];
    }
    let mut rows = Vec::new();
    for (name, rw, bs, iodepth, time_based) in READ_JOBS {
        let job = |filename| Job {
            name,
            rw,
            block_size: bs,
            iodepth,
            size: file.size,
            runtime_secs: if time_based { ctx.fio_runtime } else { SEQ_RUNTIME_CAP },
            time_based,
            filename,
        };
        let scen = format!("fio {name}");
        let mounted =
            ctx.in_fresh_mount(DATA_BUCKET, &scen, |m| fio::run(&job(m.path(&file.remote)))).map(|(r, cost)| {
                ctx.detail(format!("fio/{name}/hub"), cost.to_json());
                r
            });
        let local = fio::run(&job(file.local.clone()));
        record(ctx, name, &mounted, &local);
        rows.extend(job_rows(&sec, name, bs > 4096, &mounted, &local, None));
    }
    rows.extend(write_job(ctx, &sec, file));
    rows.push(
        Row::new(&sec, "peak RSS of the mount, over the fio jobs", "MiB")
            .value(ctx.peak_rss(&READ_JOBS.map(|j| format!("fio {}", j.0)))),
    );
    rows
}

fn record(ctx: &Ctx<'_>, name: &str, mounted: &Result<FioResult, String>, local: &Result<FioResult, String>) {
    let j = |r: &Result<FioResult, String>| match r {
        Ok(r) => serde_json::to_value(r).unwrap_or_default(),
        Err(e) => serde_json::json!({ "error": e }),
    };
    ctx.detail(format!("fio/{name}/mount"), j(mounted));
    ctx.detail(format!("fio/{name}/local"), j(local));
}

/// Bandwidth (sequential) or IOPS (random), mean and p99 latency of one job.
fn job_rows(
    sec: &str,
    name: &str,
    sequential: bool,
    mounted: &Result<FioResult, String>,
    local: &Result<FioResult, String>,
    throughput_target: Option<Target>,
) -> Vec<Row> {
    let m = |f: fn(&FioResult) -> f64| mounted.as_ref().map(f).map_err(Clone::clone);
    let l = |f: fn(&FioResult) -> f64| local.as_ref().map(f).map_err(Clone::clone);
    let engine = mounted.as_ref().map(|r| r.engine.clone()).unwrap_or_default();
    let name = if engine.is_empty() { name.to_string() } else { format!("{name} ({engine})") };
    let first = if sequential {
        Row::new(sec, format!("{name}: bandwidth"), "MB/s")
            .value(m(|r| r.bw_mb_s))
            .baseline(l(|r| r.bw_mb_s), "local disk")
    } else {
        Row::new(sec, format!("{name}: IOPS"), "IOPS").value(m(|r| r.iops)).baseline(l(|r| r.iops), "local disk")
    };
    vec![
        first.target(throughput_target.unwrap_or(Target::None)),
        Row::new(sec, format!("{name}: mean latency"), "ms")
            .value(m(|r| r.lat_mean_ms))
            .baseline(l(|r| r.lat_mean_ms), "local disk"),
        Row::new(sec, format!("{name}: p99 latency"), "ms")
            .value(m(|r| r.lat_p99_ms))
            .baseline(l(|r| r.lat_p99_ms), "local disk"),
    ]
}

/// Sequential 1 MiB writes of a new file through a read-write mount (write token,
/// `--flush-debounce-ms` [`super::writes::DEBOUNCE_MS`]), ending with fio's `fsync`, which on a
/// bucket file returns once the file is committed: fio's bandwidth includes the upload and
/// the commit (fio counts `end_fsync` in the job's run time). Fresh random buffers
/// (`refill_buffers`, `randrepeat=0`), so Xet finds nothing to deduplicate.
fn write_job(ctx: &Ctx<'_>, sec: &str, file: &DataFile) -> Vec<Row> {
    let name = "seq-write-1M";
    let scen = format!("fio {name}");
    let job = |filename| Job {
        name,
        rw: "write",
        block_size: 1024 * 1024,
        iodepth: 1,
        size: file.size,
        runtime_secs: SEQ_RUNTIME_CAP,
        time_based: false,
        filename,
    };
    let mounted = (|| {
        let m = ctx.mount_rw(WRITE_BUCKET, &scen)?;
        let before = ctx.hub();
        let cpu = ctx.cpu_start(&m);
        let r = fio::run(&job(m.path(&format!("{}-fio-{name}.bin", ctx.profile.name))));
        ctx.cpu_end(&m, &scen, cpu);
        ctx.detail(format!("fio/{name}/hub"), ctx.hub().since(&before).to_json());
        let finished = ctx.finish(m, &scen);
        let r = r.map_err(|e| match &finished {
            Err(f) => format!("{e}; then: {f}"),
            Ok(_) => e,
        })?;
        finished?;
        Ok::<_, String>(r)
    })();
    let p = ctx.fresh_dir("fio-write-local").join("write.bin");
    let local = fio::run(&job(p.clone()));
    let _ = std::fs::remove_file(p);
    record(ctx, name, &mounted, &local);
    let mut rows = job_rows(sec, name, true, &mounted, &local, Some(Target::RatioAtLeast(0.7)));
    if mounted.is_err() {
        rows.truncate(1);
    }
    let runtime = |r: &Result<FioResult, String>| r.as_ref().map(|r| r.runtime_s).map_err(Clone::clone);
    rows.push(
        Row::new(sec, format!("{name}: job run time, final fsync (= commit) included"), "s")
            .value(runtime(&mounted))
            .baseline(runtime(&local), "local disk, final fsync included"),
    );
    rows.push(Row::new(sec, format!("peak RSS of the mount, {name}"), "MiB").value(ctx.peak_rss(&[scen])));
    rows
}
