//! `ls -l` of a 10,000-entry directory, cold (fresh mount) and warm (again, same mount),
//! next to `ls -l` of a local directory with as many entries.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use super::Ctx;
use crate::cleanup;
use crate::dataset::{MANY_BUCKET, MANY_DIR, MANY_ENTRIES};
use crate::report::Row;

/// Runs `ls -l dir`; returns ms, after checking every entry was listed.
fn ls_ms(dir: &Path) -> Result<f64, String> {
    let t = Instant::now();
    let out = cleanup::run(Command::new("ls").arg("-l").arg(dir)).map_err(|e| format!("running ls: {e}"))?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        return Err(format!("ls -l failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let n = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.ends_with(|c: char| c.is_ascii_digit()) && l.contains(" f"))
        .count();
    if n != MANY_ENTRIES {
        return Err(format!("ls -l showed {n} entries, expected {MANY_ENTRIES}"));
    }
    Ok(ms)
}

pub fn run(ctx: &Ctx<'_>, local_many: &Path) -> Vec<Row> {
    let sec = "directory listing";
    let _ = ls_ms(local_many);
    let local = ls_ms(local_many);
    let measured = ctx.in_fresh_mount(MANY_BUCKET, "ls", |m| {
        let dir = m.path(MANY_DIR);
        let before = ctx.hub();
        let cold = ls_ms(&dir)?;
        let mid = ctx.hub();
        let warm = ls_ms(&dir)?;
        let after = ctx.hub();
        Ok((cold, mid.since(&before), warm, after.since(&mid)))
    });
    let (cold, cold_cost, warm, warm_cost) = match measured {
        Ok(((c, cc, w, wc), _)) => (Ok(c), Ok(cc), Ok(w), Ok(wc)),
        Err(e) => (Err(e.clone()), Err(e.clone()), Err(e.clone()), Err(e)),
    };
    if let (Ok(c), Ok(w)) = (&cold_cost, &warm_cost) {
        ctx.detail("ls/cold_hub", c.to_json());
        ctx.detail("ls/warm_hub", w.to_json());
    }
    let req =
        |c: &Result<crate::hubstats::HubStats, String>| c.as_ref().map(|c| c.total_requests()).map_err(Clone::clone);
    vec![
        Row::new(sec, "ls -l of 10,000 entries, cold", "ms")
            .value(cold)
            .baseline(local.clone(), "local directory, warm"),
        Row::new(sec, "Hub requests, cold ls -l", "").value(req(&cold_cost)),
        Row::new(sec, "ls -l of 10,000 entries, warm", "ms").value(warm).baseline(local, "local directory, warm"),
        Row::new(sec, "Hub requests, warm ls -l", "").value(req(&warm_cost)),
        Row::new(sec, "peak RSS of the mount", "MiB").value(ctx.peak_rss(&["ls".to_string()])),
    ]
}
