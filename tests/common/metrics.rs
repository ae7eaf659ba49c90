//! Reading the emulator's Prometheus text in assertions.

use std::collections::HashMap;

/// Parsed `name{labels} value` samples.
#[derive(Debug, Clone)]
pub struct Metrics {
    samples: HashMap<String, f64>,
}

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let mut samples = HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if let Some((k, v)) = line.rsplit_once(' ')
                && let Ok(v) = v.parse::<f64>()
            {
                samples.insert(k.to_string(), v);
            }
        }
        Metrics { samples }
    }

    /// Sum of every sample of `name` whose labels contain all of `labels` (`k="v"` strings).
    pub fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
            .filter(|(k, _)| labels.iter().all(|l| k.contains(l)))
            .map(|(_, v)| *v)
            .sum()
    }

    pub fn cas_bytes_served(&self) -> f64 {
        self.sum("hub_cas_bytes_served_total", &[])
    }

    pub fn writes(&self) -> f64 {
        self.sum("hub_write_requests_total", &[])
    }

    /// Requests answered with `status`.
    pub fn with_status(&self, status: u16) -> f64 {
        self.sum("hub_requests_total", &[&format!("status=\"{status}\"")])
    }
}
