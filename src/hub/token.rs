//! [`TokenSource`]: where the Hub token comes from, re-read when its file changes so a rotated
//! token is used without remounting. The token value never appears in `Debug` or errors.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the token file is checked for changes, at most.
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A source of the Hub token.
pub struct TokenSource {
    file: Option<PathBuf>,
    state: Mutex<State>,
}

struct State {
    generation: u64,
    token: Option<String>,
    /// (inode, mtime ns, len) of the token file when last read.
    file_id: Option<(u64, i128, u64)>,
    checked_at: Instant,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let has_token = self.state.lock().map(|s| s.token.is_some()).unwrap_or(false);
        f.debug_struct("TokenSource").field("file", &self.file).field("has_token", &has_token).finish()
    }
}

impl TokenSource {
    /// No token: anonymous access.
    pub fn anonymous() -> Self {
        Self::with(None, None)
    }

    /// A fixed token (from `HF_TOKEN`).
    pub fn fixed(token: String) -> Self {
        let token = token.trim().to_string();
        Self::with(None, (!token.is_empty()).then_some(token))
    }

    /// A token file, read now and re-read whenever it changes.
    pub fn file(path: &Path) -> Result<Self, String> {
        let (token, id) = read_token_file(path)?;
        let source = Self::with(Some(path.to_path_buf()), Some(token));
        source.state.lock().map_err(|_| "token state poisoned".to_string())?.file_id = Some(id);
        Ok(source)
    }

    fn with(file: Option<PathBuf>, token: Option<String>) -> Self {
        TokenSource {
            file,
            state: Mutex::new(State { generation: 1, token, file_id: None, checked_at: Instant::now() }),
        }
    }

    /// The current token and its generation (bumped whenever the token value changes).
    pub fn current(&self) -> (u64, Option<String>) {
        self.check(false)
    }

    /// Re-read the token file now (after an authentication failure), returning the result.
    pub fn recheck(&self) -> (u64, Option<String>) {
        self.check(true)
    }

    fn check(&self, force: bool) -> (u64, Option<String>) {
        let Ok(mut st) = self.state.lock() else {
            return (0, None);
        };
        if let Some(path) = &self.file
            && (force || st.checked_at.elapsed() >= RECHECK_INTERVAL)
        {
            st.checked_at = Instant::now();
            let current_id = std::fs::metadata(path).ok().map(|m| file_id(&m));
            if current_id.is_some() && current_id != st.file_id {
                match read_token_file(path) {
                    Ok((token, id)) => {
                        st.file_id = Some(id);
                        if st.token.as_deref() != Some(token.as_str()) {
                            st.token = Some(token);
                            st.generation += 1;
                            tracing::info!(file = %path.display(), "token file changed; using the new token");
                        }
                    }
                    // Keep the last good token: a half-written rotation must not log us out.
                    Err(e) => {
                        tracing::warn!(error = %e, "token file unreadable; keeping the previous token")
                    }
                }
            }
        }
        (st.generation, st.token.clone())
    }
}

fn file_id(m: &std::fs::Metadata) -> (u64, i128, u64) {
    (m.ino(), m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128, m.len())
}

fn read_token_file(path: &Path) -> Result<(String, (u64, i128, u64)), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let raw = std::fs::read_to_string(path).map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let token = raw.trim();
    if token.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    if token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!("token file {} holds more than one token-like word", path.display()));
    }
    Ok((token.to_string(), file_id(&meta)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_rotation_bumps_generation_and_debug_hides_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first-secret\n").unwrap();
        let src = TokenSource::file(&path).unwrap();
        let (g1, t1) = src.current();
        assert_eq!(t1.as_deref(), Some("first-secret"));
        // Replace atomically, as a Secret volume update does.
        let tmp = dir.path().join("token.new");
        std::fs::write(&tmp, "second-secret").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let (g2, t2) = src.recheck();
        assert_eq!(t2.as_deref(), Some("second-secret"));
        assert!(g2 > g1);
        assert!(!format!("{src:?}").contains("secret"));
    }

    #[test]
    fn empty_or_missing_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        assert!(TokenSource::file(&path).unwrap_err().contains("cannot read token file"));
        std::fs::write(&path, "  \n").unwrap();
        assert!(TokenSource::file(&path).unwrap_err().contains("is empty"));
    }

    #[test]
    fn unreadable_rotation_keeps_previous_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "good").unwrap();
        let src = TokenSource::file(&path).unwrap();
        std::fs::write(&path, "").unwrap();
        assert_eq!(src.recheck().1.as_deref(), Some("good"));
    }
}
