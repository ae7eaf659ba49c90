//! Retries on top of the clients' own, and the translation of client errors into
//! [`RemoteError`] — the one place that knows both vocabularies.
//!
//! `hf-hub` already retries transient statuses a few times with a short backoff but ignores
//! `Retry-After`; this layer waits what the server asked for (capped) and tries again, so a
//! burst of 429s or a short outage never surfaces as an I/O error.

use std::future::Future;
use std::time::Duration;

use hf_hub::HFError;
use xet::XetError;

use super::error::RemoteError;

/// How persistent the outer retry loop is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 4, base_delay: Duration::from_millis(250), max_delay: Duration::from_secs(30) }
    }
}

/// A classified failure plus the delay the server asked for, if any.
pub(crate) struct Failure {
    pub error: RemoteError,
    pub retry_after: Option<Duration>,
}

/// Run `op` until it succeeds, fails permanently, or the attempts run out.
pub(crate) async fn with_retry<T, F, Fut>(policy: RetryPolicy, what: &str, mut op: F) -> Result<T, RemoteError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(f) if f.error.is_transient() && attempt + 1 < policy.attempts => {
                let backoff = policy.base_delay * 2u32.saturating_pow(attempt);
                let delay = f.retry_after.unwrap_or(backoff).min(policy.max_delay);
                tracing::debug!(what, attempt, ?delay, error = %f.error, "transient remote failure; retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(f) => {
                if f.error.is_transient() {
                    tracing::warn!(what, attempts = attempt + 1, error = %f.error, "remote still failing after retries");
                }
                return Err(f.error);
            }
        }
    }
}

/// Classify an `hf-hub` error. `what` names the resource for the message.
pub(crate) fn from_hf(e: HFError, what: &str) -> Failure {
    let mut retry_after = None;
    let error = match e {
        HFError::RateLimited { retry_after: ra, .. } => {
            retry_after = ra;
            RemoteError::RateLimited(what.to_string())
        }
        HFError::AuthRequired { .. } => RemoteError::Unauthorized(what.to_string()),
        HFError::Forbidden { .. } => RemoteError::Forbidden(what.to_string()),
        HFError::RepoNotFound { .. } | HFError::BucketNotFound { .. } => RemoteError::NotFound(what.to_string()),
        HFError::RevisionNotFound { revision, .. } => RemoteError::NotFound(format!("{what}: revision {revision}")),
        HFError::EntryNotFound { path, .. } => RemoteError::NotFound(format!("{what}: {path}")),
        HFError::Http { context } => {
            let detail = match &context.server_message {
                Some(m) => format!("{what}: HTTP {} ({m})", context.status.as_u16()),
                None => format!("{what}: HTTP {}", context.status.as_u16()),
            };
            RemoteError::from_status(context.status.as_u16(), detail)
        }
        HFError::Conflict { .. } => RemoteError::Invalid(format!("{what}: conflict")),
        HFError::Request { source, .. } => {
            if source.is_builder() {
                RemoteError::Invalid(format!("{what}: {source}"))
            } else {
                RemoteError::Unavailable(format!("{what}: {source}"))
            }
        }
        HFError::InvalidParameter(m) => RemoteError::Invalid(format!("{what}: {m}")),
        HFError::Xet { source, .. } => {
            return match source.downcast::<XetError>() {
                Ok(x) => from_xet(*x, what),
                Err(other) => Failure { error: RemoteError::Other(format!("{what}: {other}")), retry_after: None },
            };
        }
        other => RemoteError::Other(format!("{what}: {other}")),
    };
    Failure { error, retry_after }
}

/// The HTTP status `hf-xet` names in an error message, if any: it reports some failures of
/// its token and CAS requests only as text, e.g. `HTTP status client error (403 Forbidden)`.
fn status_in_message(m: &str) -> Option<u16> {
    let i = m.find("error (")? + "error (".len();
    let code = m.get(i..i + 3)?;
    let status: u16 = code.parse().ok()?;
    (100..600).contains(&status).then_some(status)
}

/// Classify an `hf-xet` error.
pub(crate) fn from_xet(e: XetError, what: &str) -> Failure {
    let msg = format!("{what}: {e}");
    if let XetError::Network(inner) | XetError::ServerError(inner) = &e
        && let Some(status) = status_in_message(inner)
    {
        return Failure { error: RemoteError::from_status(status, msg), retry_after: None };
    }
    let error = match e {
        XetError::Authentication(_) => RemoteError::Unauthorized(msg),
        XetError::NotFound(_) => RemoteError::NotFound(msg),
        XetError::RateLimited(_) => RemoteError::RateLimited(msg),
        XetError::Network(_) | XetError::ServerError(_) | XetError::Timeout(_) => RemoteError::Unavailable(msg),
        XetError::Configuration(_) => RemoteError::Invalid(msg),
        _ => RemoteError::Other(msg),
    };
    Failure { error, retry_after: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn xet_messages_carry_statuses() {
        let e = XetError::Network(
            "Request error: HTTP status client error (403 Forbidden), domain: http://h/api/buckets/a/b/xet-write-token"
                .into(),
        );
        assert!(matches!(from_xet(e, "x").error, RemoteError::Forbidden(_)));
        let e = XetError::Network("HTTP status server error (507 Insufficient Storage)".into());
        assert!(matches!(from_xet(e, "x").error, RemoteError::NoSpace(_)));
        let e = XetError::Network("connection reset".into());
        assert!(matches!(from_xet(e, "x").error, RemoteError::Unavailable(_)));
    }

    fn fast() -> RetryPolicy {
        RetryPolicy { attempts: 3, base_delay: Duration::from_millis(1), max_delay: Duration::from_millis(5) }
    }

    #[tokio::test]
    async fn transient_then_success() {
        let calls = AtomicU32::new(0);
        let r = with_retry(fast(), "x", || async {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(Failure {
                    error: RemoteError::RateLimited("x".into()),
                    retry_after: Some(Duration::from_millis(2)),
                })
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn permanent_error_is_not_retried() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = with_retry(fast(), "x", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Failure { error: RemoteError::NotFound("x".into()), retry_after: None })
        })
        .await;
        assert!(matches!(r, Err(RemoteError::NotFound(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn gives_up_after_attempts() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = with_retry(fast(), "x", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Failure { error: RemoteError::Unavailable("x".into()), retry_after: None })
        })
        .await;
        assert!(matches!(r, Err(RemoteError::Unavailable(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
