//! A description of the machine the numbers were taken on: CPU, cores, RAM, kernel, the disk
//! under the work directory, and how busy the machine was when the run started.

use std::path::Path;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub ram_gib: f64,
    pub kernel: String,
    pub disk: String,
    pub loadavg_at_start: String,
    pub fio: String,
    pub hf_csi_commit: String,
}

impl Machine {
    pub fn probe(work_dir: &Path, fio: &Result<String, String>) -> Machine {
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let ram_kib: f64 = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let commit = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let dirty = std::process::Command::new("git")
            .args(["diff", "--quiet", "HEAD", "--", "src", "Cargo.toml"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .is_ok_and(|s| s.code() == Some(1));
        let commit = if dirty { format!("{commit} + uncommitted changes") } else { commit };
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ram_gib: ram_kib / 1048576.0,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            disk: disk_of(work_dir),
            loadavg_at_start: read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
            fio: fio.clone().unwrap_or_else(|e| e.clone()),
            hf_csi_commit: commit,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} × {}, {:.1} GiB RAM, Linux {}, work dir on {}; load average at start {}; {}; hf-csi {}",
            self.cores,
            self.cpu,
            self.ram_gib,
            self.kernel,
            self.disk,
            self.loadavg_at_start,
            self.fio,
            self.hf_csi_commit
        )
    }
}

fn read(p: &str) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// The filesystem and block device holding `dir`, e.g. `ext4 on /dev/vda (virtio, SSD)`.
fn disk_of(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let info = read("/proc/self/mountinfo");
    // Fields: id parent major:minor root mountpoint opts ... - fstype source superopts
    let best = info
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let mp = *f.get(4)?;
            let dash = f.iter().position(|x| *x == "-")?;
            Some((mp, *f.get(dash + 1)?, *f.get(dash + 2)?))
        })
        .filter(|(mp, _, _)| dir.starts_with(mp))
        .max_by_key(|(mp, _, _)| mp.len());
    let Some((_, fstype, source)) = best else {
        return "unknown".into();
    };
    let dev = source.trim_start_matches("/dev/");
    let base: String = dev.trim_end_matches(|c: char| c.is_ascii_digit()).to_string();
    let base =
        if base.ends_with('p') && dev.starts_with("nvme") { base.trim_end_matches('p').to_string() } else { base };
    let sys = format!("/sys/block/{base}");
    let mut traits = Vec::new();
    if base.starts_with("vd") {
        traits.push("virtio".to_string());
    }
    match read(&format!("{sys}/queue/rotational")).trim() {
        "0" => traits.push("non-rotational".into()),
        "1" => traits.push("reported rotational".into()),
        _ => {}
    }
    let model = read(&format!("{sys}/device/model")).trim().to_string();
    if !model.is_empty() {
        traits.push(model);
    }
    let size_gib =
        read(&format!("{sys}/size")).trim().parse::<f64>().map(|sectors| sectors * 512.0 / 1073741824.0).unwrap_or(0.0);
    if size_gib > 0.0 {
        traits.push(format!("{size_gib:.0} GiB"));
    }
    format!("{fstype} on {source} ({})", traits.join(", "))
}
