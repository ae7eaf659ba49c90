//! The public face of the CAS: checks CAS access, counts traffic, and streams requests and
//! responses to and from the internal `LocalServer` without buffering.
//!
//! The original `Host` header is forwarded, so the URLs `LocalServer` builds into its
//! answers (term fetch URLs, xorb upload grants) point back at the public port.
//!
//! Access rules: uploads (`POST /v1/xorbs`, grants, grant commits, shards) need a write
//! token (403 with a read token); other calls need any valid CAS token (401 otherwise).
//! xet fetches term data and uploads to grant URLs without credentials, as those are
//! pre-signed URLs in production; so the proxy signs such URLs in the `LocalServer` answers
//! that carry them (reconstruction plans, upload grants) and requires the signature back
//! (403 if missing, wrong or expired, as object stores answer).

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::config::TokenScope;
use super::error::{EmulatorError, Result};
use super::metrics::WriteKind;
use super::resolve::Counted;
use super::server::{AppState, Shared};

/// Largest JSON answer the proxy buffers to sign the URLs in it.
const MAX_SIGNED_BODY: usize = 256 * 1024 * 1024;

/// The metrics name of a CAS request.
pub fn route_name(method: &Method, path: &str) -> &'static str {
    let p = path;
    if p.starts_with("/simulation/xorb-uploads/") {
        "cas_xorb_upload"
    } else if p == "/v1/fetch_term" {
        "cas_fetch_term"
    } else if p.starts_with("/v1/get_xorb/") {
        "cas_get_xorb"
    } else if p == "/v1/reconstructions" {
        "cas_reconstruction_batch"
    } else if p.starts_with("/v1/reconstructions/") || p.starts_with("/v2/reconstructions/") {
        "cas_reconstruction"
    } else if p.starts_with("/v1/chunks/") {
        "cas_chunk"
    } else if p.starts_with("/v1/xorb-grants/") {
        "cas_xorb_grant"
    } else if p.starts_with("/v1/xorb-commits/") {
        "cas_xorb_commit"
    } else if p.starts_with("/v1/xorbs/") {
        if method == Method::HEAD { "cas_xorb_head" } else { "cas_xorb" }
    } else if p == "/v1/shards" || p == "/v2/shards" {
        "cas_shard"
    } else if p.starts_with("/v1/files/") {
        "cas_file"
    } else if p == "/v1/telemetry" {
        "cas_telemetry"
    } else {
        "cas_other"
    }
}

/// What a CAS call must present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Token(TokenScope),
    SignedUrl,
    Open,
}

fn access(name: &str) -> Access {
    match name {
        "cas_fetch_term" | "cas_xorb_upload" => Access::SignedUrl,
        "cas_telemetry" => Access::Open,
        "cas_xorb" | "cas_xorb_grant" | "cas_xorb_commit" | "cas_shard" => Access::Token(TokenScope::Write),
        _ => Access::Token(TokenScope::Read),
    }
}

/// Answers whose JSON carries URLs for credential-less use, which get signed.
fn hands_out_urls(name: &str) -> bool {
    matches!(name, "cas_reconstruction" | "cas_reconstruction_batch" | "cas_xorb_grant")
}

/// Any method on `/v1/*`, `/v2/*` and grant upload URLs.
pub async fn proxy(State(s): State<AppState>, req: Request) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let name = route_name(&parts.method, parts.uri.path());
    let path_and_query = parts.uri.path_and_query().map_or(parts.uri.path(), |pq| pq.as_str());
    match access(name) {
        Access::Open => {}
        Access::SignedUrl => s.auth.check_signed_url(path_and_query)?,
        Access::Token(needed) => {
            let scope = s.auth.cas_scope(&parts.headers)?;
            if needed == TokenScope::Write && scope != TokenScope::Write {
                return Err(EmulatorError::Forbidden("this CAS call needs a write token".to_string()));
            }
        }
    }
    match name {
        // Transfer telemetry is accepted and dropped: the emulator has no use for it, and
        // the internal server would keep every document in memory.
        "cas_telemetry" => return Ok(StatusCode::NO_CONTENT.into_response()),
        "cas_xorb" | "cas_xorb_upload" => s.metrics.write(WriteKind::Xorb),
        "cas_shard" => s.metrics.write(WriteKind::Shard),
        _ => {}
    }

    let url = format!("{}{path_and_query}", s.cas.internal_url());
    let mut out = s.proxy.request(parts.method.clone(), url);
    for (k, v) in &parts.headers {
        if !is_hop_by_hop(k) {
            out = out.header(k, v);
        }
    }
    if body.size_hint().exact() != Some(0) {
        let metrics = s.clone();
        let upload = Counted::new(body.into_data_stream(), move |n| metrics.metrics.cas_bytes_received(n));
        out = out.body(reqwest::Body::wrap_stream(upload));
    }
    let resp = out.send().await.map_err(|e| EmulatorError::Cas(format!("forwarding {name}: {e}")))?;

    let status = resp.status();
    let mut headers = HeaderMap::new();
    for (k, v) in resp.headers() {
        if !is_hop_by_hop(k) {
            headers.append(k, v.clone());
        }
    }
    if status.is_success() && hands_out_urls(name) {
        let json = read_limited(resp, name).await?;
        let json = sign_urls_in(&s, &json).map_err(EmulatorError::Cas)?;
        headers.remove(header::CONTENT_LENGTH);
        return Ok((status, headers, json).into_response());
    }
    let counts_as_data = matches!(name, "cas_fetch_term" | "cas_get_xorb");
    let metrics = s.clone();
    let body = Body::from_stream(Counted::new(resp.bytes_stream(), move |n| {
        if counts_as_data {
            metrics.metrics.cas_bytes_served(n);
        }
    }));
    Ok((status, headers, body).into_response())
}

/// Reads a (JSON) answer into memory, refusing absurd sizes.
async fn read_limited(resp: reqwest::Response, name: &str) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| EmulatorError::Cas(format!("reading the {name} answer: {e}")))?;
        if body.len() + chunk.len() > MAX_SIGNED_BODY {
            return Err(EmulatorError::Cas(format!("the {name} answer is too large to sign")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Signs every URL in a JSON answer that points at a credential-less CAS endpoint.
fn sign_urls_in(s: &Shared, json: &[u8]) -> std::result::Result<Vec<u8>, String> {
    fn walk(s: &Shared, v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(url) if needs_signature(url) => *url = s.auth.sign_url(url),
            serde_json::Value::Array(items) => items.iter_mut().for_each(|i| walk(s, i)),
            serde_json::Value::Object(map) => map.values_mut().for_each(|i| walk(s, i)),
            _ => {}
        }
    }
    let mut v: serde_json::Value = serde_json::from_slice(json).map_err(|e| format!("unexpected CAS answer: {e}"))?;
    walk(s, &mut v);
    serde_json::to_vec(&v).map_err(|e| e.to_string())
}

fn needs_signature(url: &str) -> bool {
    url.starts_with("http") && (url.contains("/v1/fetch_term?") || url.contains("/simulation/xorb-uploads/"))
}

/// Headers that describe one connection and must not be forwarded (RFC 9110 §7.6.1).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_access() {
        let n = |m: Method, p: &str| route_name(&m, p);
        assert_eq!(n(Method::GET, "/v1/fetch_term"), "cas_fetch_term");
        assert_eq!(n(Method::GET, "/v2/reconstructions/ab"), "cas_reconstruction");
        assert_eq!(n(Method::POST, "/v1/xorbs/default/ab"), "cas_xorb");
        assert_eq!(n(Method::HEAD, "/v1/xorbs/default/ab"), "cas_xorb_head");
        assert_eq!(n(Method::PUT, "/simulation/xorb-uploads/g"), "cas_xorb_upload");
        assert_eq!(n(Method::POST, "/v2/shards"), "cas_shard");
        assert_eq!(access("cas_shard"), Access::Token(TokenScope::Write));
        assert_eq!(access("cas_xorb_head"), Access::Token(TokenScope::Read));
        assert_eq!(access("cas_fetch_term"), Access::SignedUrl);
        assert_eq!(access("cas_xorb_upload"), Access::SignedUrl);
        assert!(needs_signature("http://h:1/v1/fetch_term?term=x"));
        assert!(needs_signature("http://h:1/simulation/xorb-uploads/g"));
        assert!(!needs_signature("/v1/fetch_term?term=x"));
    }
}
