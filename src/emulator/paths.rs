//! Validation of file paths and revisions taken from URLs and bodies, and URL encoding.

use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC, utf8_percent_encode};

use super::error::{EmulatorError, Result};

/// Characters escaped inside one path segment (RFC 3986 `pchar` minus a few).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\')
    .add(b'^')
    .add(b'|')
    .add(b'[')
    .add(b']');

/// Everything but unreserved characters, for query values and single-segment revisions.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Longest path accepted, in bytes.
const MAX_PATH: usize = 4096;

/// Checks a file or directory path within a bucket or repo: relative, `/`-separated,
/// without empty, `.` or `..` segments or control characters. `what` names the path in errors.
pub fn validate_path(path: &str, what: &str) -> Result<()> {
    if path.is_empty() {
        return Err(EmulatorError::BadRequest(format!("{what} is empty")));
    }
    if path.len() > MAX_PATH {
        return Err(EmulatorError::BadRequest(format!("{what} is longer than {MAX_PATH} bytes")));
    }
    if path.chars().any(char::is_control) {
        return Err(EmulatorError::BadRequest(format!("{what} {path:?} contains a control character")));
    }
    if let Some(seg) = path.split('/').find(|s| s.is_empty() || *s == "." || *s == "..") {
        let why = if seg.is_empty() { "an empty segment" } else { "a '.' or '..' segment" };
        return Err(EmulatorError::BadRequest(format!("{what} {path:?} has {why}")));
    }
    Ok(())
}

/// Checks a revision taken from a URL segment (already percent-decoded).
pub fn validate_revision(rev: &str) -> Result<()> {
    if rev.is_empty() || rev.len() > 256 {
        return Err(EmulatorError::BadRequest(format!("revision {rev:?} must be 1 to 256 characters long")));
    }
    if rev.chars().any(char::is_control) || rev.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(EmulatorError::BadRequest(format!("revision {rev:?} is not a valid branch, tag or commit")));
    }
    Ok(())
}

/// Percent-encodes a `/`-separated path segment by segment, keeping the slashes.
pub fn encode_path(path: &str) -> String {
    path.split('/').map(|s| utf8_percent_encode(s, SEGMENT).to_string()).collect::<Vec<_>>().join("/")
}

/// Percent-encodes a query value or a single-segment revision.
pub fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_paths() {
        for bad in ["", "/a", "a/", "a//b", "a/../b", "./a", "a\nb"] {
            assert!(validate_path(bad, "path").is_err(), "{bad:?}");
        }
        for good in ["a", "a/b.txt", "dir with space/f#1", "ü/ö"] {
            assert!(validate_path(good, "path").is_ok(), "{good:?}");
        }
        assert!(validate_revision("refs/pr/1").is_ok());
        assert!(validate_revision("a/../b").is_err());
    }

    #[test]
    fn encodes() {
        assert_eq!(encode_path("a b/c#d"), "a%20b/c%23d");
        assert_eq!(encode_component("a/b c"), "a%2Fb%20c");
    }
}
