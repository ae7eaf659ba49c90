//! Memory of a process from /proc/PID/status: resident now (VmRSS) and its peak (VmHWM).

/// Resident set sizes in MiB.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Rss {
    pub now_mib: f64,
    pub peak_mib: f64,
}

pub fn read(pid: u32) -> Result<Rss, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
    parse(&text).ok_or_else(|| format!("/proc/{pid}/status has no VmRSS/VmHWM"))
}

fn parse(status: &str) -> Option<Rss> {
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    };
    Some(Rss { now_mib: field("VmRSS:")?, peak_mib: field("VmHWM:")? })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_status() {
        let r = super::parse("Name:\tx\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\n").unwrap();
        assert_eq!((r.now_mib, r.peak_mib), (10.0, 20.0));
        assert!(super::read(std::process::id()).unwrap().peak_mib > 0.0);
    }
}
