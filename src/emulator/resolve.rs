//! `HEAD`/`GET .../resolve/...`: file metadata in headers and file bytes with `Range`
//! support, for buckets and repos.
//!
//! Small repo files are served from git blobs on disk; Xet files (every bucket file and
//! repo files of 10 MiB or more) are reconstructed from the CAS through hf-xet and streamed.

use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;

use super::buckets::{bucket_id, with_bucket};
use super::error::{EmulatorError, Result};
use super::paths::validate_path;
use super::repos::{Kind, repo_id, with_commit};
use super::server::{AppState, Shared};
use super::timefmt::http_date_ms;

/// Where a file's bytes are and what its headers say.
struct Target {
    size: u64,
    /// Bare (unquoted) entity tag.
    etag: String,
    modified_ms: u64,
    content: Content,
    commit: Option<String>,
}

enum Content {
    Blob(String),
    Xet(String),
}

/// `HEAD|GET /buckets/{ns}/{name}/resolve/{path}`.
pub async fn bucket(
    State(s): State<AppState>,
    method: Method,
    Path((ns, name, path)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let who = s.principal(&headers)?;
    let id = bucket_id(&ns, &name)?;
    validate_path(&path, "path")?;
    let target = with_bucket(&s, &id, who, |b| {
        let f = b.get(&path).ok_or_else(|| EmulatorError::entry_not_found(&path, None))?;
        Ok(Target {
            size: f.size,
            etag: f.xet_hash.clone(),
            modified_ms: f.mtime_ms,
            content: Content::Xet(f.xet_hash),
            commit: None,
        })
    })?;
    respond(&s, &method, &headers, target).await
}

/// `HEAD|GET /{|datasets/|spaces/}{ns}/{name}/resolve/{rev}/{path}`.
pub async fn repo(
    State(s): State<AppState>,
    Kind(kind): Kind,
    method: Method,
    Path((ns, name, rev, path)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let who = s.principal(&headers)?;
    let id = repo_id(&ns, &name)?;
    validate_path(&path, "path")?;
    let target = with_commit(&s, kind, &id, &rev, who, |_, commit| {
        let missing = || EmulatorError::entry_not_found(&path, Some(commit.id.clone()));
        let f = commit.files.get(&path).ok_or_else(missing)?;
        Ok(match &f.xet {
            Some(x) => Target {
                size: f.size,
                etag: x.sha256.clone(),
                modified_ms: commit.created_ms,
                content: Content::Xet(x.hash.clone()),
                commit: Some(commit.id.clone()),
            },
            None => Target {
                size: f.size,
                etag: f.oid.clone(),
                modified_ms: commit.created_ms,
                content: Content::Blob(f.oid.clone()),
                commit: Some(commit.id.clone()),
            },
        })
    })?;
    respond(&s, &method, &headers, target).await
}

async fn respond(s: &AppState, method: &Method, req: &HeaderMap, t: Target) -> Result<Response> {
    let mut h = HeaderMap::new();
    let quoted = format!("\"{}\"", t.etag);
    insert(&mut h, header::ETAG, &quoted);
    insert(&mut h, header::LAST_MODIFIED, &http_date_ms(t.modified_ms));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(c) = &t.commit {
        insert(&mut h, "x-repo-commit", c);
    }
    if let Content::Xet(hash) = &t.content {
        insert(&mut h, "x-xet-hash", hash);
        insert(&mut h, "x-linked-size", &t.size.to_string());
        insert(&mut h, "x-linked-etag", &quoted);
    }

    if etag_matches(req, &t.etag) {
        return Ok((StatusCode::NOT_MODIFIED, h).into_response());
    }
    if *method == Method::HEAD {
        insert(&mut h, header::CONTENT_LENGTH, &t.size.to_string());
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        return Ok((StatusCode::OK, h).into_response());
    }

    let range = parse_range(req.get(header::RANGE), t.size)?;
    let (status, span) = match range {
        Some(r) => {
            insert(&mut h, header::CONTENT_RANGE, &format!("bytes {}-{}/{}", r.start, r.end - 1, t.size));
            (StatusCode::PARTIAL_CONTENT, r)
        }
        None => (StatusCode::OK, 0..t.size),
    };
    insert(&mut h, header::CONTENT_LENGTH, &(span.end - span.start).to_string());
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));

    let stream: Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>> = match t.content {
        _ if span.is_empty() => Box::pin(futures::stream::empty()),
        Content::Blob(oid) => {
            let path = s.store.blob_path(&oid);
            let data = tokio::fs::read(&path).await.map_err(|e| EmulatorError::io(format!("reading blob {oid}"), e))?;
            let chunk = data
                .get(span.start as usize..span.end as usize)
                .ok_or_else(|| EmulatorError::Internal(format!("blob {oid} is shorter than recorded")))?;
            Box::pin(futures::stream::iter([Ok(Bytes::copy_from_slice(chunk))]))
        }
        Content::Xet(hash) => {
            let full = span.start == 0 && span.end == t.size;
            Box::pin(s.cas.read(&hash, t.size, (!full).then_some(span)).await?)
        }
    };
    let shared: Arc<Shared> = s.clone();
    let body = Body::from_stream(Counted::new(stream, move |n| shared.metrics.resolve_bytes_served(n)));
    Ok((status, h, body).into_response())
}

fn insert<K: header::IntoHeaderName>(h: &mut HeaderMap, name: K, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// `If-None-Match` lists this entity tag (or `*`).
fn etag_matches(req: &HeaderMap, etag: &str) -> bool {
    let Some(v) = req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    v.split(',').map(|t| t.trim().trim_start_matches("W/").trim_matches('"')).any(|t| t == "*" || t == etag)
}

/// Parses a single-range `Range` header against a file of `size` bytes; returns the
/// half-open byte span, `None` for no (or an unsupported multi-range) header, or 416.
pub fn parse_range(value: Option<&HeaderValue>, size: u64) -> Result<Option<Range<u64>>> {
    let Some(value) = value else { return Ok(None) };
    let bad = || EmulatorError::RangeNotSatisfiable { size };
    let spec = value.to_str().map_err(|_| bad())?.trim();
    let spec = spec.strip_prefix("bytes=").ok_or_else(bad)?;
    if spec.contains(',') {
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').ok_or_else(bad)?;
    let (start, end) = (start.trim(), end.trim());
    let range = match (start.is_empty(), end.is_empty()) {
        (false, _) => {
            let start: u64 = start.parse().map_err(|_| bad())?;
            let end =
                if end.is_empty() { size } else { end.parse::<u64>().map_err(|_| bad())?.saturating_add(1).min(size) };
            start..end
        }
        (true, false) => {
            let n: u64 = end.parse().map_err(|_| bad())?;
            size.saturating_sub(n)..size
        }
        (true, true) => return Err(bad()),
    };
    if range.start >= range.end {
        return Err(bad());
    }
    Ok(Some(range))
}

/// A byte stream that reports each chunk's length as it is handed to the client.
pub struct Counted<S, F> {
    inner: S,
    on_bytes: F,
}

impl<S, F> Counted<S, F> {
    pub fn new(inner: S, on_bytes: F) -> Self {
        Self { inner, on_bytes }
    }
}

impl<S, F, E> Stream for Counted<S, F>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    F: Fn(u64) + Unpin,
{
    type Item = std::result::Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let item = Pin::new(&mut this.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &item {
            (this.on_bytes)(chunk.len() as u64);
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(v: &str, size: u64) -> Result<Option<Range<u64>>> {
        parse_range(Some(&HeaderValue::from_str(v).unwrap()), size)
    }

    #[test]
    fn ranges() {
        assert_eq!(r("bytes=0-9", 100).unwrap(), Some(0..10));
        assert_eq!(r("bytes=90-", 100).unwrap(), Some(90..100));
        assert_eq!(r("bytes=-5", 100).unwrap(), Some(95..100));
        assert_eq!(r("bytes=50-500", 100).unwrap(), Some(50..100));
        assert_eq!(r("bytes=0-1,5-6", 100).unwrap(), None);
        assert!(matches!(r("bytes=100-", 100), Err(EmulatorError::RangeNotSatisfiable { size: 100 })));
        assert!(r("bytes=5-2", 100).is_err());
        assert!(r("items=0-1", 100).is_err());
        assert!(r("bytes=0-0", 0).is_err());
        assert_eq!(parse_range(None, 10).unwrap(), None);
    }
}
