//! Reads of one file through real mounts: sequential (cold, cold from the on-disk cache,
//! warm), time to first byte, one 1 MiB range, and 100 scattered 4 KiB reads; each compared
//! with its baseline.

use super::Ctx;
use super::baseline::{FileBaseline, range_offset};
use crate::dataset::{DATA_BUCKET, DataFile};
use crate::hubstats::HubStats;
use crate::measure::{MIB, drop_page_cache, first_byte_ms, mb_s, mean_p99, range_ms, read_all, scattered_ms};
use crate::report::{Row, Target};

/// Cold, cached and warm sequential reads, and what the cold one cost the Hub.
struct Sequential {
    cold_mb_s: Result<f64, String>,
    cold_ms: Result<f64, String>,
    cold_cost: Option<HubStats>,
    cached_mb_s: Result<f64, String>,
    cached_cost: Option<HubStats>,
    warm_mb_s: Result<f64, String>,
}

fn check_len(n: u64, file: &DataFile) -> Result<(), String> {
    if n == file.size { Ok(()) } else { Err(format!("read {n} bytes, expected {}", file.size)) }
}

/// Mount A reads the file cold (empty cache dir); mount B, on the same cache dir after its
/// page cache was evicted, reads it from the on-disk cache, then again from the page cache.
fn sequential(ctx: &Ctx<'_>, file: &DataFile) -> Result<Sequential, String> {
    let scen = format!("seq {}", file.label());
    let a = ctx.mount(DATA_BUCKET, &scen, None)?;
    let cache = a.cache_dir.clone();
    let before = ctx.hub();
    let cpu = ctx.cpu_start(&a);
    let cold = read_all(&a.path(&file.remote));
    ctx.cpu_end(&a, &scen, cpu);
    let cold_cost = ctx.hub().since(&before);
    let finished = ctx.finish(a, &scen);
    // A read error says more than the unmount that follows it.
    let (n, secs) = cold.map_err(|e| match &finished {
        Err(f) => format!("{e}; then: {f}"),
        Ok(_) => e,
    })?;
    finished?;
    check_len(n, file)?;

    drop_page_cache(&cache)?;
    let b = ctx.mount(DATA_BUCKET, &format!("{scen} cached"), Some(&cache))?;
    let before = ctx.hub();
    let cpu = ctx.cpu_start(&b);
    let cached = read_all(&b.path(&file.remote));
    ctx.cpu_end(&b, &format!("{scen} cached"), cpu);
    let cached_cost = ctx.hub().since(&before);
    let cpu = ctx.cpu_start(&b);
    let warm = read_all(&b.path(&file.remote));
    ctx.cpu_end(&b, &format!("{scen} warm"), cpu);
    let finished = ctx.finish(b, &scen);
    let cached = cached.and_then(|(n, s)| check_len(n, file).map(|_| mb_s(n, s)));
    let warm = warm.and_then(|(n, s)| check_len(n, file).map(|_| mb_s(n, s)));
    if let (Ok(_), Ok(_), Err(f)) = (&cached, &warm, finished) {
        return Err(f);
    }
    Ok(Sequential {
        cold_mb_s: Ok(mb_s(n, secs)),
        cold_ms: Ok(secs * 1e3),
        cold_cost: Some(cold_cost),
        cached_mb_s: cached,
        cached_cost: Some(cached_cost),
        warm_mb_s: warm,
    })
}

pub fn run(ctx: &Ctx<'_>, file: &DataFile, base: &FileBaseline, offsets: &[u64]) -> Vec<Row> {
    let label = file.label();
    let sec = format!("{label} file");
    let sec = sec.as_str();
    let rtt = ctx.rtt_ms();

    let seq = sequential(ctx, file).unwrap_or_else(|e| Sequential {
        cold_mb_s: Err(e.clone()),
        cold_ms: Err(e.clone()),
        cold_cost: None,
        cached_mb_s: Err(e.clone()),
        cached_cost: None,
        warm_mb_s: Err(e),
    });
    let ttfb = ctx.in_fresh_mount(DATA_BUCKET, &format!("ttfb {label}"), |m| first_byte_ms(&m.path(&file.remote)));
    let offset = range_offset(file.size);
    let range = ctx.in_fresh_mount(DATA_BUCKET, &format!("range {label}"), |m| {
        range_ms(&m.path(&file.remote), offset, MIB as usize)
    });
    let random =
        ctx.in_fresh_mount(DATA_BUCKET, &format!("random {label}"), |m| scattered_ms(&m.path(&file.remote), offsets));

    let key = |k: &str| format!("{label}/{k}");
    ctx.detail(key("baselines"), base.to_json());
    if let Some(c) = &seq.cold_cost {
        ctx.detail(key("seq_cold_hub"), c.to_json());
    }
    if let Some(c) = &seq.cached_cost {
        ctx.detail(key("seq_cached_hub"), c.to_json());
        if c.cas_bytes > 0.0 {
            ctx.note(format!(
                "{label}: the read from the on-disk cache still fetched {:.1} MiB from the CAS",
                c.cas_bytes / MIB as f64
            ));
        }
    }
    if let Ok((_, c)) = &range {
        ctx.detail(key("range_hub"), c.to_json());
    }
    if let Ok((samples, c)) = &random {
        ctx.detail(key("random_hub"), c.to_json());
        ctx.detail(key("random_samples_ms"), serde_json::json!(samples));
    }
    if let Ok((_, c)) = &ttfb {
        ctx.detail(key("ttfb_hub"), c.to_json());
    }

    let random_stats = random.as_ref().map(|(v, _)| mean_p99(v)).map_err(Clone::clone);
    let rtt_target = |mult: f64, plus: f64| {
        if rtt == 0.0 && plus == 0.0 {
            Target::Na("no network RTT in this profile".into())
        } else {
            Target::AtMost(mult * rtt + plus)
        }
    };
    let cost =
        |c: &Option<HubStats>, f: fn(&HubStats) -> f64| c.as_ref().map(f).ok_or_else(|| "not measured".to_string());
    vec![
        Row::new(sec, "sequential read, cold", "MB/s")
            .value(seq.cold_mb_s.clone())
            .baseline(base.download_mb_s.clone(), "hf-hub/hf-xet download")
            .target(Target::RatioAtLeast(0.5)),
        Row::new(sec, "sequential read, cold from on-disk cache", "MB/s")
            .value(seq.cached_mb_s.clone())
            .baseline(base.local_cold_mb_s.clone(), "local disk, cold")
            .target(Target::RatioAtLeast(0.8)),
        Row::new(sec, "sequential re-read, warm (page cache)", "MB/s")
            .value(seq.warm_mb_s.clone())
            .baseline(base.local_warm_mb_s.clone(), "local disk, warm")
            .target(Target::AtLeast(5000.0)),
        Row::new(sec, "time to last byte, cold", "ms")
            .value(seq.cold_ms.clone())
            .baseline(base.download_ttlb_ms.clone(), "download, then read"),
        Row::new(sec, "Hub requests, cold sequential read", "").value(cost(&seq.cold_cost, HubStats::total_requests)),
        Row::new(sec, "CAS bytes served / file size, cold sequential read", "×")
            .value(cost(&seq.cold_cost, |c| c.cas_bytes).map(|b| b / file.size as f64)),
        Row::new(sec, "time to first byte (open + 4 KiB), cold", "ms")
            .value(ttfb.as_ref().map(|t| t.0).map_err(Clone::clone))
            .baseline(base.download_ttfb_ms.clone(), "download, then read")
            .target(rtt_target(1.0, 5.0)),
        Row::new(sec, format!("range read 1 MiB at {} MiB, cold", offset / MIB), "ms")
            .value(range.as_ref().map(|t| t.0).map_err(Clone::clone))
            .baseline(base.local_range_ms.clone(), "local disk, cold"),
        Row::new(sec, "CAS bytes served for that 1 MiB range", "MiB")
            .value(range.as_ref().map(|t| t.1.cas_bytes / MIB as f64).map_err(Clone::clone))
            .baseline(Ok(1.0), "bytes asked for"),
        Row::new(sec, "100 random 4 KiB reads, cold: mean", "ms")
            .value(random_stats.clone().map(|s| s.0))
            .baseline(base.local_random_mean_ms.clone(), "local disk, cold")
            .target(rtt_target(1.2, 0.0)),
        Row::new(sec, "100 random 4 KiB reads, cold: p99", "ms")
            .value(random_stats.map(|s| s.1))
            .baseline(base.local_random_p99_ms.clone(), "local disk, cold"),
        Row::new(sec, "Hub requests per random 4 KiB read", "")
            .value(random.as_ref().map(|(v, c)| c.total_requests() / v.len().max(1) as f64).map_err(Clone::clone)),
        Row::new(sec, "peak RSS of the mount, over these reads", "MiB")
            .value(ctx.peak_rss(&["seq", "ttfb", "range", "random"].map(|s| format!("{s} {label}")))),
    ]
}
