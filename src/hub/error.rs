//! [`RemoteError`]: how a remote call failed, in terms the filesystem can act on.
//!
//! Messages name the resource and the cause, never a token.

/// A final (already retried) failure of a remote call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    /// 404: the bucket, repo, revision or path does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// 401: no token, or the token is not valid.
    #[error("authentication required: {0}")]
    Unauthorized(String),
    /// 403: the token lacks the permission.
    #[error("permission denied: {0}")]
    Forbidden(String),
    /// 413 / 507: the remote is out of space or quota.
    #[error("remote storage full: {0}")]
    NoSpace(String),
    /// 429 after all retries.
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// 5xx, timeouts and connection failures after all retries.
    #[error("remote unavailable: {0}")]
    Unavailable(String),
    /// The caller passed something the remote cannot accept.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Anything else (malformed responses, local I/O inside a client).
    #[error("remote error: {0}")]
    Other(String),
}

impl RemoteError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, RemoteError::RateLimited(_) | RemoteError::Unavailable(_))
    }

    /// Classify an HTTP status (used for errors that only carry a status).
    pub fn from_status(status: u16, what: String) -> Self {
        match status {
            401 => RemoteError::Unauthorized(what),
            403 => RemoteError::Forbidden(what),
            404 => RemoteError::NotFound(what),
            413 | 507 => RemoteError::NoSpace(what),
            429 => RemoteError::RateLimited(what),
            408 | 500..=599 => RemoteError::Unavailable(what),
            400..=499 => RemoteError::Invalid(what),
            _ => RemoteError::Other(what),
        }
    }
}
