//! What a process costs: memory from /proc/PID/status (resident now, VmRSS, and its peak,
//! VmHWM) and CPU time from /proc/PID/stat or getrusage.

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

/// User + system CPU seconds of process `pid` so far.
pub fn cpu_secs(pid: u32) -> Result<f64, String> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("reading /proc/{pid}/stat: {e}"))?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    let (Some(u), Some(s)) = (ticks(11), ticks(12)) else {
        return Err(format!("/proc/{pid}/stat has no CPU times"));
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((u + s) / hz)
}

/// User + system CPU seconds of this process (emulator, proxy and measuring thread).
pub fn own_cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_status() {
        let r = super::parse("Name:\tx\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\n").unwrap();
        assert_eq!((r.now_mib, r.peak_mib), (10.0, 20.0));
        assert!(super::read(std::process::id()).unwrap().peak_mib > 0.0);
        assert!(super::cpu_secs(std::process::id()).unwrap() >= 0.0);
        assert!(super::own_cpu_secs() > 0.0);
    }
}
