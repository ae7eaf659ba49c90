//! The public face of the CAS: checks CAS access tokens, counts traffic, and streams
//! requests and responses to and from the internal `LocalServer` without buffering.
//!
//! The original `Host` header is forwarded, so the URLs `LocalServer` builds into its
//! answers (term fetch URLs, xorb upload grants) point back at the public port.
//!
//! Access rules: uploads (`POST /v1/xorbs`, grants, grant commits, shards) need a write
//! token (403 with a read token); other calls need any valid CAS token (401 otherwise).
//! Two kinds of URL carry their own authority, as pre-signed URLs do in production, and
//! take no token: term fetches (`/v1/fetch_term`, which xet fetches without credentials)
//! and grant uploads (`/simulation/xorb-uploads/{grant}`, whose grant id is unguessable
//! and whose data only lands in the CAS once a write-token holder commits it).

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::config::TokenScope;
use super::error::{EmulatorError, Result};
use super::metrics::WriteKind;
use super::resolve::Counted;
use super::server::AppState;

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
        if method == Method::HEAD {
            "cas_xorb_head"
        } else {
            "cas_xorb"
        }
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

/// The token a CAS call needs, `None` if it carries its own authority.
fn required_scope(name: &str) -> Option<TokenScope> {
    match name {
        "cas_fetch_term" | "cas_xorb_upload" | "cas_telemetry" => None,
        "cas_xorb" | "cas_xorb_grant" | "cas_xorb_commit" | "cas_shard" => Some(TokenScope::Write),
        _ => Some(TokenScope::Read),
    }
}

/// Any method on `/v1/*`, `/v2/*` and grant upload URLs.
pub async fn proxy(State(s): State<AppState>, req: Request) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let name = route_name(&parts.method, parts.uri.path());
    if let Some(needed) = required_scope(name) {
        let scope = s.auth.cas_scope(&parts.headers)?;
        if needed == TokenScope::Write && scope != TokenScope::Write {
            return Err(EmulatorError::Forbidden(
                "this CAS call needs a write token".to_string(),
            ));
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

    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |pq| pq.as_str());
    let url = format!("{}{path_and_query}", s.cas.internal_url());
    let mut out = s.proxy.request(parts.method.clone(), url);
    for (k, v) in &parts.headers {
        if !is_hop_by_hop(k) {
            out = out.header(k, v);
        }
    }
    if body.size_hint().exact() != Some(0) {
        let metrics = s.clone();
        let upload = Counted::new(body.into_data_stream(), move |n| {
            metrics.metrics.cas_bytes_received(n)
        });
        out = out.body(reqwest::Body::wrap_stream(upload));
    }
    let resp = out
        .send()
        .await
        .map_err(|e| EmulatorError::Cas(format!("forwarding {name}: {e}")))?;

    let status = resp.status();
    let mut headers = HeaderMap::new();
    for (k, v) in resp.headers() {
        if !is_hop_by_hop(k) {
            headers.append(k, v.clone());
        }
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
    fn names_and_scopes() {
        let n = |m: Method, p: &str| route_name(&m, p);
        assert_eq!(n(Method::GET, "/v1/fetch_term"), "cas_fetch_term");
        assert_eq!(
            n(Method::GET, "/v2/reconstructions/ab"),
            "cas_reconstruction"
        );
        assert_eq!(n(Method::POST, "/v1/xorbs/default/ab"), "cas_xorb");
        assert_eq!(n(Method::HEAD, "/v1/xorbs/default/ab"), "cas_xorb_head");
        assert_eq!(
            n(Method::PUT, "/simulation/xorb-uploads/g"),
            "cas_xorb_upload"
        );
        assert_eq!(n(Method::POST, "/v2/shards"), "cas_shard");
        assert_eq!(required_scope("cas_shard"), Some(TokenScope::Write));
        assert_eq!(required_scope("cas_xorb_head"), Some(TokenScope::Read));
        assert_eq!(required_scope("cas_fetch_term"), None);
    }
}
