//! Injected latency and transient failures, set at start or changed at run time.
//!
//! Every request passes [`FaultInjector::before`] once, after routing: it sleeps for the
//! configured latency, then may answer in place of the handler. `fail_next` failures are
//! deterministic (tests use them); `fail_rate` failures are random, 429 and 503 half each.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// Which requests a fault setting applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultScope {
    /// The JSON API, resolve downloads and the CAS.
    #[default]
    All,
    /// Everything except the CAS.
    Api,
    /// Only the CAS (`/v1`, `/v2`, upload grant URLs).
    Cas,
}

/// Fault settings. `POST /admin/faults` takes the same JSON (missing fields take defaults)
/// and replaces the settings as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Probability that a request is answered 429 (with `Retry-After: 1`) or 503.
    pub fail_rate: f64,
    /// The next N matching requests are answered with `fail_status`.
    pub fail_next: u32,
    /// Status used by `fail_next`.
    pub fail_status: u16,
    /// Delay before answering each matching request.
    pub latency_ms: u64,
    /// Which requests the settings apply to.
    pub scope: FaultScope,
}

impl Default for Faults {
    fn default() -> Self {
        Self { fail_rate: 0.0, fail_next: 0, fail_status: 503, latency_ms: 0, scope: FaultScope::All }
    }
}

impl Faults {
    /// Rejects settings that cannot be applied.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.fail_rate) {
            return Err(format!("fail_rate must be within 0..=1, got {}", self.fail_rate));
        }
        if !(400..=599).contains(&self.fail_status) {
            return Err(format!("fail_status must be a 4xx or 5xx status, got {}", self.fail_status));
        }
        if self.latency_ms > 600_000 {
            return Err(format!("latency_ms must be at most 600000, got {}", self.latency_ms));
        }
        Ok(())
    }
}

/// Whether a request belongs to the JSON API side or the CAS side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestClass {
    Api,
    Cas,
}

/// Shared fault state.
pub struct FaultInjector {
    faults: Mutex<Faults>,
    rng: AtomicU64,
}

impl FaultInjector {
    pub fn new(initial: Faults) -> Self {
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        Self { faults: Mutex::new(initial), rng: AtomicU64::new(seed | 1) }
    }

    /// Replaces the settings.
    pub fn set(&self, faults: Faults) {
        *self.lock() = faults;
    }

    /// The current settings.
    pub fn get(&self) -> Faults {
        self.lock().clone()
    }

    /// Applies latency, then returns the response that replaces the handler's, if any.
    pub async fn before(&self, class: RequestClass) -> Option<Response> {
        let (latency, failure) = {
            let mut f = self.lock();
            let applies = match f.scope {
                FaultScope::All => true,
                FaultScope::Api => class == RequestClass::Api,
                FaultScope::Cas => class == RequestClass::Cas,
            };
            if !applies {
                return None;
            }
            let failure = if f.fail_next > 0 {
                f.fail_next -= 1;
                Some(f.fail_status)
            } else if f.fail_rate > 0.0 && self.uniform() < f.fail_rate {
                Some(if self.uniform() < 0.5 { 429 } else { 503 })
            } else {
                None
            };
            (f.latency_ms, failure)
        };
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        failure.map(injected_response)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Faults> {
        // A poisoned lock only means a panic elsewhere; the settings themselves stay valid.
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A uniform sample in [0, 1) from a splitmix64 sequence (no need for a crypto RNG).
    fn uniform(&self) -> f64 {
        let mut z = self.rng.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn injected_response(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let body = serde_json::json!({ "error": format!("injected fault ({})", status.as_u16()) }).to_string();
    let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fail_next_is_counted_and_scoped() {
        let inj =
            FaultInjector::new(Faults { fail_next: 2, fail_status: 429, scope: FaultScope::Cas, ..Faults::default() });
        assert!(inj.before(RequestClass::Api).await.is_none());
        let r = inj.before(RequestClass::Cas).await.expect("first failure");
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers().get(header::RETRY_AFTER).unwrap(), "1");
        assert!(inj.before(RequestClass::Cas).await.is_some());
        assert!(inj.before(RequestClass::Cas).await.is_none());
    }

    #[tokio::test]
    async fn fail_rate_one_always_fails_with_transient_statuses() {
        let inj = FaultInjector::new(Faults { fail_rate: 1.0, ..Faults::default() });
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..64 {
            seen.insert(inj.before(RequestClass::Api).await.expect("always fails").status().as_u16());
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![429, 503]);
    }

    #[test]
    fn validation() {
        assert!(Faults { fail_status: 200, ..Faults::default() }.validate().is_err());
        assert!(Faults { fail_rate: -0.1, ..Faults::default() }.validate().is_err());
        let parsed: Faults = serde_json::from_str(r#"{"fail_next":1,"fail_status":429,"scope":"api"}"#).unwrap();
        assert_eq!(parsed.scope, FaultScope::Api);
        assert!(serde_json::from_str::<Faults>(r#"{"nope":1}"#).is_err());
    }
}
