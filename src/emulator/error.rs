//! The emulator's single error type and its mapping to HTTP responses (the only place).
//!
//! Bodies are `{"error": "..."}`, which `hf-hub` surfaces as the server message; 404s also
//! carry `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`,
//! `BucketNotFound`) as the Hub does, and entry misses in a repo carry `X-Repo-Commit`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Everything that can go wrong, at start or while answering a request.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{message}")]
    NotFound { code: &'static str, message: String, commit: Option<String> },
    #[error("{0}")]
    Conflict(String),
    #[error("requested range not satisfiable for a {size}-byte file")]
    RangeNotSatisfiable { size: u64 },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CAS: {0}")]
    Cas(String),
    #[error("import of {what} failed: {message}")]
    Import { what: String, message: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl EmulatorError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }

    pub fn bucket_not_found(id: &str) -> Self {
        Self::NotFound { code: "BucketNotFound", message: format!("Bucket {id} not found"), commit: None }
    }

    pub fn repo_not_found(id: &str) -> Self {
        Self::NotFound { code: "RepoNotFound", message: format!("Repository {id} not found"), commit: None }
    }

    pub fn revision_not_found(id: &str, rev: &str) -> Self {
        Self::NotFound {
            code: "RevisionNotFound",
            message: format!("Invalid rev id: {rev} (repository {id})"),
            commit: None,
        }
    }

    pub fn entry_not_found(path: &str, commit: Option<String>) -> Self {
        Self::NotFound { code: "EntryNotFound", message: format!("Entry not found: {path}"), commit }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Config(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::Io { .. } | Self::Cas(_) | Self::Import { .. } | Self::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl IntoResponse for EmulatorError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let message = self.to_string();
        let body = serde_json::json!({ "error": message }).to_string();
        let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        let headers = resp.headers_mut();
        // Header values must be visible ASCII; fall back to omitting the message header.
        if let Ok(v) = HeaderValue::from_str(&message) {
            headers.insert("x-error-message", v);
        }
        match self {
            Self::NotFound { code, commit, .. } => {
                headers.insert("x-error-code", HeaderValue::from_static(code));
                if let Some(v) = commit.and_then(|c| HeaderValue::from_str(&c).ok()) {
                    headers.insert("x-repo-commit", v);
                }
            }
            Self::RangeNotSatisfiable { size } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
            }
            _ => {}
        }
        resp
    }
}

/// Result alias used across the emulator.
pub type Result<T, E = EmulatorError> = std::result::Result<T, E>;
