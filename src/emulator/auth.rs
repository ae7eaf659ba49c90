//! Who is calling: API tokens (`Authorization: Bearer NAME`) and the CAS access tokens the
//! emulator issues from `xet-read-token` / `xet-write-token`.
//!
//! Rules, as on the Hub: an unknown token is always 401; without a token public resources
//! are readable and private ones answer 401; writes need a write token (anonymous: 401,
//! read token: 403). Token values are never logged.
//!
//! CAS tokens are self-verifying: `xetcas.{r|w}.{exp}.{mac}` where `mac` is a SHA-256 keyed
//! with a secret kept in the data directory. The emulator thus remembers every token it
//! issued (scope and expiry included) without a table, and tokens stay valid across a
//! restart, as a client holding one expects. URLs the CAS hands out for clients to use
//! without credentials (term fetches, upload grants) are signed the same way.

use std::collections::HashMap;
use std::path::Path;

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};

use super::config::TokenScope;
use super::error::{EmulatorError, Result};
use super::timefmt::now_secs;

/// Lifetime of issued CAS tokens.
pub const CAS_TOKEN_TTL_SECS: u64 = 3600;

/// The caller of an API request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    Token(TokenScope),
}

impl Principal {
    /// May this caller read a resource with the given visibility?
    pub fn check_read(self, private: bool, what: &str) -> Result<()> {
        match (self, private) {
            (Principal::Anonymous, true) => {
                Err(EmulatorError::Unauthorized(format!("{what} is private; authentication required")))
            }
            _ => Ok(()),
        }
    }

    /// May this caller change things?
    pub fn check_write(self, what: &str) -> Result<()> {
        match self {
            Principal::Token(TokenScope::Write) => Ok(()),
            Principal::Token(TokenScope::Read) => {
                Err(EmulatorError::Forbidden(format!("a read token cannot {what}; use a write token")))
            }
            Principal::Anonymous => Err(EmulatorError::Unauthorized(format!("authentication required to {what}"))),
        }
    }

    pub fn is_authenticated(self) -> bool {
        matches!(self, Principal::Token(_))
    }
}

/// Token tables and the CAS signing key.
pub struct Auth {
    tokens: HashMap<String, TokenScope>,
    secret: Vec<u8>,
}

impl Auth {
    /// Loads the CAS signing key from `data_dir/secret`, creating it on first start.
    pub fn load(data_dir: &Path, tokens: &[(String, TokenScope)]) -> Result<Self> {
        let path = data_dir.join("secret");
        let secret = match std::fs::read(&path) {
            Ok(s) if s.len() >= 32 => s,
            _ => {
                let s = fresh_secret(data_dir);
                super::store::write_atomic(&path, &s)?;
                s
            }
        };
        Ok(Self { tokens: tokens.iter().cloned().collect(), secret })
    }

    /// Identifies the caller of an API request; an unknown or malformed token is 401.
    pub fn principal(&self, headers: &HeaderMap) -> Result<Principal> {
        let Some(token) = bearer(headers)? else {
            return Ok(Principal::Anonymous);
        };
        self.tokens
            .get(token)
            .map(|s| Principal::Token(*s))
            .ok_or_else(|| EmulatorError::Unauthorized("invalid or unknown token".to_string()))
    }

    /// Issues a CAS token; returns it with its expiry (Unix seconds).
    pub fn issue_cas_token(&self, scope: TokenScope) -> (String, u64) {
        let exp = now_secs() + CAS_TOKEN_TTL_SECS;
        let s = scope_char(scope);
        (format!("xetcas.{s}.{exp}.{}", self.mac(&format!("cas|{s}|{exp}"))), exp)
    }

    /// Checks the CAS token of a CAS request and returns its scope.
    pub fn cas_scope(&self, headers: &HeaderMap) -> Result<TokenScope> {
        let unauthorized = || EmulatorError::Unauthorized("a valid CAS access token is required".to_string());
        let token = bearer(headers)?.ok_or_else(unauthorized)?;
        let mut parts = token.split('.');
        let (Some("xetcas"), Some(s), Some(exp), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(unauthorized());
        };
        let exp: u64 = exp.parse().map_err(|_| unauthorized())?;
        let scope = match s {
            "r" => TokenScope::Read,
            "w" => TokenScope::Write,
            _ => return Err(unauthorized()),
        };
        if !constant_time_eq(mac.as_bytes(), self.mac(&format!("cas|{s}|{exp}")).as_bytes()) {
            return Err(unauthorized());
        }
        if exp < now_secs() {
            return Err(EmulatorError::Unauthorized("CAS access token expired".to_string()));
        }
        Ok(scope)
    }

    /// Signs a URL the CAS hands out (term fetch, upload grant) so that it works without a
    /// token for [`CAS_TOKEN_TTL_SECS`], as a pre-signed URL does in production.
    pub fn sign_url(&self, url: &str) -> String {
        let exp = now_secs() + CAS_TOKEN_TTL_SECS;
        let sig = self.mac(&format!("url|{}|{exp}", path_and_query(url)));
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}{SIG_EXP}={exp}&{SIG}={sig}")
    }

    /// Checks the signature that [`Auth::sign_url`] appended to `path_and_query` (403 if it
    /// is missing, wrong or expired, as object stores answer).
    pub fn check_signed_url(&self, path_and_query: &str) -> Result<()> {
        let denied = |why: &str| EmulatorError::Forbidden(format!("signed CAS URL {why}"));
        let at = path_and_query.rfind(&format!("{SIG_EXP}=")).ok_or_else(|| denied("required"))?;
        let signed = path_and_query
            .get(..at.saturating_sub(1))
            .filter(|_| at > 0 && matches!(path_and_query.as_bytes()[at - 1], b'?' | b'&'))
            .ok_or_else(|| denied("is malformed"))?;
        let mut exp = None;
        let mut sig = None;
        for pair in path_and_query[at..].split('&') {
            match pair.split_once('=') {
                Some((SIG_EXP, v)) => exp = v.parse::<u64>().ok(),
                Some((SIG, v)) => sig = Some(v),
                _ => return Err(denied("is malformed")),
            }
        }
        let (Some(exp), Some(sig)) = (exp, sig) else {
            return Err(denied("is malformed"));
        };
        if !constant_time_eq(sig.as_bytes(), self.mac(&format!("url|{signed}|{exp}")).as_bytes()) {
            return Err(denied("has a bad signature"));
        }
        if exp < now_secs() {
            return Err(denied("has expired"));
        }
        Ok(())
    }

    fn mac(&self, message: &str) -> String {
        let mut h = Sha256::new();
        h.update(&self.secret);
        h.update(b"|");
        h.update(message.as_bytes());
        hex::encode(&h.finalize()[..16])
    }
}

/// Query parameters of URL signatures.
const SIG_EXP: &str = "x-emulator-expires";
const SIG: &str = "x-emulator-signature";

/// `/path?query` of an absolute URL (the URL itself if it is already relative).
fn path_and_query(url: &str) -> &str {
    match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => url,
    }
}

fn scope_char(scope: TokenScope) -> &'static str {
    match scope {
        TokenScope::Read => "r",
        TokenScope::Write => "w",
    }
}

/// The bearer token of a request, if it has an `Authorization` header.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || EmulatorError::Unauthorized("malformed Authorization header; expected 'Bearer TOKEN'".to_string());
    let value = value.to_str().map_err(|_| bad())?;
    let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).ok_or_else(bad)?;
    let token = token.trim();
    if token.is_empty() {
        return Err(bad());
    }
    Ok(Some(token))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new signing key: 32 bytes from the OS random source, or (where there is none) a hash
/// of the data directory, process id and time, which still differs between installations.
fn fresh_secret(data_dir: &Path) -> Vec<u8> {
    let mut key = [0u8; 32];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| {
        use std::io::Read as _;
        f.read_exact(&mut key)
    });
    if random.is_ok() {
        return key.to_vec();
    }
    let seed = format!("{}|{}|{}", data_dir.display(), std::process::id(), super::timefmt::now_ms());
    Sha256::digest(seed.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn api_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::load(dir.path(), &[("w1".into(), TokenScope::Write)]).unwrap();
        assert_eq!(auth.principal(&HeaderMap::new()).unwrap(), Principal::Anonymous);
        assert_eq!(auth.principal(&headers("Bearer w1")).unwrap(), Principal::Token(TokenScope::Write));
        assert!(matches!(auth.principal(&headers("Bearer nope")), Err(EmulatorError::Unauthorized(_))));
        assert!(matches!(auth.principal(&headers("Basic x")), Err(EmulatorError::Unauthorized(_))));
        assert!(matches!(Principal::Token(TokenScope::Read).check_write("x"), Err(EmulatorError::Forbidden(_))));
        assert!(matches!(Principal::Anonymous.check_read(true, "x"), Err(EmulatorError::Unauthorized(_))));
    }

    #[test]
    fn signed_urls() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::load(dir.path(), &[]).unwrap();
        let url = auth.sign_url("http://127.0.0.1:9/v1/fetch_term?term=abc");
        let pq = url.strip_prefix("http://127.0.0.1:9").unwrap();
        auth.check_signed_url(pq).unwrap();
        let grant = auth.sign_url("http://h/simulation/xorb-uploads/g1");
        auth.check_signed_url(grant.strip_prefix("http://h").unwrap()).unwrap();
        for bad in [
            "/v1/fetch_term?term=abc".to_string(),
            pq.replace("term=abc", "term=abd"),
            pq.replace("x-emulator-signature=", "x-emulator-signature=0"),
            format!("{pq}&more=1"),
        ] {
            assert!(matches!(auth.check_signed_url(&bad), Err(EmulatorError::Forbidden(_))), "{bad}");
        }
    }

    #[test]
    fn cas_tokens_verify_and_survive_reload() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::load(dir.path(), &[]).unwrap();
        let (tok, exp) = auth.issue_cas_token(TokenScope::Write);
        assert!(exp > now_secs());
        assert_eq!(auth.cas_scope(&headers(&format!("Bearer {tok}"))).unwrap(), TokenScope::Write);
        let reloaded = Auth::load(dir.path(), &[]).unwrap();
        assert_eq!(reloaded.cas_scope(&headers(&format!("Bearer {tok}"))).unwrap(), TokenScope::Write);
        let forged = tok.replacen("xetcas.w.", "xetcas.r.", 1);
        assert!(auth.cas_scope(&headers(&format!("Bearer {forged}"))).is_err());
        let other = Auth::load(tempfile::tempdir().unwrap().path(), &[]).unwrap();
        assert!(other.cas_scope(&headers(&format!("Bearer {tok}"))).is_err());
        assert!(auth.cas_scope(&HeaderMap::new()).is_err());
    }
}
