//! `find` over the synthetic bucket (a million entries in directories of 1,000): how long
//! the walk takes, what it asks of the Hub, and the mount's memory before and after.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Ctx;
use crate::cleanup;
use crate::dataset::MILLION_BUCKET;
use crate::report::{Row, Target};
use crate::rss;

/// Runs `find dir`; returns (entries printed, seconds).
fn find(dir: &std::path::Path) -> Result<(u64, f64), String> {
    let t = Instant::now();
    let mut child = Command::new("find")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running find: {e}"))?;
    cleanup::register(child.id(), None);
    let mut lines = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    if let Some(mut out) = child.stdout.take() {
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        }
    }
    let status = child.wait();
    cleanup::unregister(child.id());
    let secs = t.elapsed().as_secs_f64();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    match status {
        Ok(s) if s.success() => Ok((lines, secs)),
        Ok(s) => Err(format!("find exited with {s}: {}", err.lines().next().unwrap_or(""))),
        Err(e) => Err(format!("waiting for find: {e}")),
    }
}

pub fn run(ctx: &Ctx<'_>, entries: u64) -> Vec<Row> {
    let sec = format!("{entries}-entry bucket walk");
    let measured = (|| {
        let m = ctx.mount(MILLION_BUCKET, "million", None)?;
        std::thread::sleep(Duration::from_secs(1));
        let idle = rss::read(m.pid())?;
        let before = ctx.hub();
        let walk = find(&m.mountpoint);
        let cost = ctx.hub().since(&before);
        let after = rss::read(m.pid());
        ctx.finish(m, "million")?;
        let (lines, secs) = walk?;
        Ok::<_, String>((idle, lines, secs, cost, after?))
    })();
    let (idle, lines, secs, cost, after) = match measured {
        Ok((i, l, s, c, a)) => (Ok(i), Ok(l), Ok(s), Ok(c), Ok(a)),
        Err(e) => (Err(e.clone()), Err(e.clone()), Err(e.clone()), Err(e.clone()), Err(e)),
    };
    if let Ok(c) = &cost {
        ctx.detail("million/hub", c.to_json());
    }
    let expected = entries + entries.div_ceil(1000) + 1;
    if let Ok(l) = lines
        && l != expected
    {
        ctx.note(format!("find printed {l} paths; {expected} expected (files + directories + root)"));
    }
    vec![
        Row::new(&sec, "find over every entry", "s").value(secs),
        Row::new(&sec, "paths printed by find", "").value(lines.map(|l| l as f64)),
        Row::new(&sec, "Hub requests during the walk", "")
            .value(cost.as_ref().map(|c| c.total_requests()).map_err(Clone::clone)),
        Row::new(&sec, "RSS idle, right after mounting", "MiB")
            .value(idle.map(|r| r.now_mib))
            .target(Target::AtMost(64.0)),
        Row::new(&sec, "RSS after the walk", "MiB")
            .value(after.as_ref().map(|r| r.now_mib).map_err(Clone::clone))
            .target(Target::AtMost(256.0)),
        Row::new(&sec, "peak RSS during the walk", "MiB").value(after.map(|r| r.peak_mib)),
    ]
}
