//! Snapshots of the emulator's counters (requests per route, CAS bytes served), so that a
//! scenario can report what it cost the Hub.

use std::collections::BTreeMap;

use hf_csi::emulator::Emulator;

#[derive(Debug, Clone, Default)]
pub struct HubStats {
    /// Requests per route, all statuses together.
    pub requests: BTreeMap<String, f64>,
    pub cas_bytes: f64,
    /// Bytes uploaded into the CAS (xorbs and shards).
    pub cas_bytes_received: f64,
}

impl HubStats {
    pub fn snapshot(emu: &Emulator) -> HubStats {
        parse(&emu.metrics_text())
    }

    /// What happened between `before` and `self`.
    pub fn since(&self, before: &HubStats) -> HubStats {
        let requests = self
            .requests
            .iter()
            .map(|(k, v)| (k.clone(), v - before.requests.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, v)| *v != 0.0)
            .collect();
        HubStats {
            requests,
            cas_bytes: self.cas_bytes - before.cas_bytes,
            cas_bytes_received: self.cas_bytes_received - before.cas_bytes_received,
        }
    }

    pub fn total_requests(&self) -> f64 {
        // Folding from +0.0 avoids printing "-0" for an empty sum.
        self.requests.values().fold(0.0, |a, b| a + b)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.requests,
            "cas_bytes": self.cas_bytes,
            "cas_bytes_received": self.cas_bytes_received,
        })
    }
}

fn parse(text: &str) -> HubStats {
    let mut s = HubStats::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if key == "hub_cas_bytes_served_total" {
            s.cas_bytes = value;
        } else if key == "hub_cas_bytes_received_total" {
            s.cas_bytes_received = value;
        } else if let Some(labels) = key.strip_prefix("hub_requests_total{") {
            let route = labels
                .split(',')
                .find_map(|l| l.strip_prefix("endpoint=\""))
                .map(|r| r.trim_end_matches(['"', '}']).to_string())
                .unwrap_or_default();
            *s.requests.entry(route).or_default() += value;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_and_diffs() {
        let a = super::parse("hub_requests_total{endpoint=\"tree\",status=\"200\"} 3\nhub_cas_bytes_served_total 10\n");
        let b = super::parse(
            "# x\nhub_requests_total{endpoint=\"tree\",status=\"200\"} 5\nhub_requests_total{endpoint=\"tree\",status=\"404\"} 1\nhub_cas_bytes_served_total 30\nhub_cas_bytes_received_total 7\n",
        );
        let d = b.since(&a);
        assert_eq!(d.total_requests(), 3.0);
        assert_eq!(d.cas_bytes, 20.0);
        assert_eq!(d.cas_bytes_received, 7.0);
    }
}
