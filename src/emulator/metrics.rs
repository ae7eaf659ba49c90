//! Request and byte counters, rendered in the Prometheus text format at `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Kinds of write requests counted by `hub_write_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WriteKind {
    Batch,
    Xorb,
    Shard,
    WriteToken,
}

impl WriteKind {
    fn label(self) -> &'static str {
        match self {
            WriteKind::Batch => "batch",
            WriteKind::Xorb => "xorb",
            WriteKind::Shard => "shard",
            WriteKind::WriteToken => "write-token",
        }
    }
}

/// All counters of one emulator.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    writes: Mutex<BTreeMap<WriteKind, u64>>,
    cas_bytes_served: AtomicU64,
    cas_bytes_received: AtomicU64,
    resolve_bytes_served: AtomicU64,
}

impl Metrics {
    /// Counts one answered request of route `endpoint`.
    pub fn request(&self, endpoint: &'static str, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((endpoint, status)).or_default() += 1;
    }

    pub fn write(&self, kind: WriteKind) {
        let mut map = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(kind).or_default() += 1;
    }

    pub fn cas_bytes_served(&self, n: u64) {
        self.cas_bytes_served.fetch_add(n, Ordering::Relaxed);
    }

    pub fn cas_bytes_received(&self, n: u64) {
        self.cas_bytes_received.fetch_add(n, Ordering::Relaxed);
    }

    pub fn resolve_bytes_served(&self, n: u64) {
        self.resolve_bytes_served.fetch_add(n, Ordering::Relaxed);
    }

    /// The Prometheus exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP hub_requests_total Requests answered, by route and status.\n");
        out.push_str("# TYPE hub_requests_total counter\n");
        for ((endpoint, status), n) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "hub_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}");
        }
        out.push_str("# HELP hub_write_requests_total Write requests accepted for processing, by kind.\n");
        out.push_str("# TYPE hub_write_requests_total counter\n");
        let writes = self.writes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for kind in [WriteKind::Batch, WriteKind::Xorb, WriteKind::Shard, WriteKind::WriteToken] {
            let n = writes.get(&kind).copied().unwrap_or(0);
            let _ = writeln!(out, "hub_write_requests_total{{kind=\"{}\"}} {n}", kind.label());
        }
        let scalars = [
            ("hub_cas_bytes_served_total", "Body bytes of CAS data responses streamed out.", &self.cas_bytes_served),
            ("hub_cas_bytes_received_total", "Body bytes of requests streamed into the CAS.", &self.cas_bytes_received),
            ("hub_resolve_bytes_served_total", "Body bytes served by resolve downloads.", &self.resolve_bytes_served),
        ];
        for (name, help, counter) in scalars {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labels_and_zeroes() {
        let m = Metrics::default();
        m.request("bucket_info", 200);
        m.request("bucket_info", 200);
        m.write(WriteKind::Batch);
        m.cas_bytes_served(10);
        let text = m.render();
        assert!(text.contains("hub_requests_total{endpoint=\"bucket_info\",status=\"200\"} 2\n"), "{text}");
        assert!(text.contains("hub_write_requests_total{kind=\"batch\"} 1\n"));
        assert!(text.contains("hub_write_requests_total{kind=\"write-token\"} 0\n"));
        assert!(text.contains("hub_cas_bytes_served_total 10\n"));
        assert!(text.contains("hub_resolve_bytes_served_total 0\n"));
    }
}
