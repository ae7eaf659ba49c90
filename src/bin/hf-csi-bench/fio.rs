//! Running `fio` jobs and reading their JSON output: bandwidth, IOPS, mean and p99 latency.

use std::path::PathBuf;
use std::process::Command;

use crate::cleanup;

/// One fio job against one file.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: &'static str,
    /// `read`, `randread` or `write`.
    pub rw: &'static str,
    pub block_size: u64,
    pub iodepth: u32,
    pub size: u64,
    /// Stop after this many seconds.
    pub runtime_secs: u64,
    /// Run for the whole runtime, wrapping around (random jobs); otherwise stop at `size`.
    pub time_based: bool,
    pub filename: PathBuf,
}

/// What one job measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FioResult {
    pub engine: String,
    pub bw_mb_s: f64,
    pub iops: f64,
    pub lat_mean_ms: f64,
    pub lat_p99_ms: f64,
    pub io_mib: f64,
    /// The job's run time in seconds (for writes it includes the final fsync).
    pub runtime_s: f64,
}

/// The fio version, or why fio cannot be used.
pub fn version() -> Result<String, String> {
    match Command::new("fio").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        Ok(o) => Err(format!("fio --version failed: {}", o.status)),
        Err(_) => Err("fio is not installed (scripts/bench installs it)".to_string()),
    }
}

/// Runs `job`; queue depths above 1 try io_uring, then libaio (both buffered: FUSE mounts
/// may refuse O_DIRECT). The error is a one-line reason fit for an "n/a" cell.
pub fn run(job: &Job) -> Result<FioResult, String> {
    let engines: &[&str] = if job.iodepth > 1 { &["io_uring", "libaio"] } else { &["psync"] };
    let mut why = Vec::new();
    for engine in engines {
        match run_with(job, engine) {
            Ok(r) => return Ok(r),
            Err(e) => why.push(format!("{engine}: {e}")),
        }
    }
    Err(why.join("; "))
}

fn run_with(job: &Job, engine: &str) -> Result<FioResult, String> {
    let mut cmd = Command::new("fio");
    cmd.arg(format!("--name={}", job.name))
        .arg(format!("--filename={}", job.filename.display()))
        .arg(format!("--rw={}", job.rw))
        .arg(format!("--bs={}", job.block_size))
        .arg(format!("--ioengine={engine}"))
        .arg(format!("--iodepth={}", job.iodepth))
        .arg(format!("--size={}", job.size))
        .arg(format!("--runtime={}", job.runtime_secs))
        .arg("--direct=0")
        .arg("--invalidate=1")
        .arg("--output-format=json");
    if job.time_based {
        cmd.arg("--time_based");
    }
    if job.rw == "write" {
        // Fresh random content in every buffer, different in every run: block-level
        // scrambling (fio's default) would leave most Xet chunks identical.
        cmd.arg("--end_fsync=1").arg("--refill_buffers=1").arg("--randrepeat=0");
    } else {
        cmd.arg("--readonly");
    }
    let out = cleanup::run(&mut cmd).map_err(|e| format!("running fio: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let msg = stderr
            .lines()
            .chain(stdout.lines())
            .find(|l| l.contains("error") || l.contains("fio:"))
            .unwrap_or("no message");
        return Err(format!("fio {}: {}", out.status, msg.trim()));
    }
    parse(&stdout, engine, if job.rw == "write" { "write" } else { "read" })
}

/// Extracts one direction of the first job from fio's JSON (which may follow warnings).
fn parse(stdout: &str, engine: &str, dir: &str) -> Result<FioResult, String> {
    let start = stdout.find('{').ok_or("fio printed no JSON")?;
    let v: serde_json::Value = serde_json::from_str(&stdout[start..]).map_err(|e| format!("fio JSON: {e}"))?;
    let job = &v["jobs"][0];
    if let Some(err) = job["error"].as_i64().filter(|e| *e != 0) {
        return Err(format!("fio job error {err} ({})", std::io::Error::from_raw_os_error(err as i32)));
    }
    let d = &job[dir];
    let num = |v: &serde_json::Value| v.as_f64().ok_or_else(|| format!("fio JSON lacks {dir}"));
    let bytes = num(&d["io_bytes"])?;
    if bytes <= 0.0 {
        return Err("fio moved no data".to_string());
    }
    Ok(FioResult {
        engine: engine.to_string(),
        bw_mb_s: num(&d["bw_bytes"])? / 1e6,
        iops: num(&d["iops"])?,
        lat_mean_ms: num(&d["lat_ns"]["mean"])? / 1e6,
        lat_p99_ms: num(&d["clat_ns"]["percentile"]["99.000000"])? / 1e6,
        io_mib: bytes / 1048576.0,
        runtime_s: job["job_runtime"].as_f64().unwrap_or(f64::NAN) / 1e3,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_fio_json() {
        let out = r#"note: something
{"jobs":[{"error":0,"read":{"io_bytes":1048576,"bw_bytes":2000000,"iops":500.5,
 "lat_ns":{"mean":1500000.0},"clat_ns":{"percentile":{"99.000000":3000000}}}}]}"#;
        let r = super::parse(out, "psync", "read").unwrap();
        assert_eq!((r.bw_mb_s, r.iops, r.lat_mean_ms, r.lat_p99_ms), (2.0, 500.5, 1.5, 3.0));
        assert!(super::parse("{}", "psync", "read").is_err());
    }
}
