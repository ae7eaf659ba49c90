//! Sidecar files: one small JSON document per layer entry, written atomically (temporary file
//! and rename), so a crash at any moment leaves either the old or the new description.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{LocalKind, LocalState};
use crate::hub::ContentId;

/// The persisted part of an entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Sidecar {
    pub id: u64,
    pub path: String,
    pub kind: LocalKind,
    pub size: u64,
    pub mtime_ns: u128,
    #[serde(default)]
    pub atime_ns: Option<u128>,
    #[serde(default)]
    pub ctime_ns: Option<u128>,
    pub mode: u16,
    #[serde(default)]
    pub rdev: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub xet: Option<String>,
    #[serde(default)]
    pub git: Option<String>,
    #[serde(default)]
    pub has_data: bool,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub opaque: bool,
    /// Local bytes not yet committed.
    #[serde(default)]
    pub dirty: bool,
    /// The remote must still learn about this entry.
    #[serde(default)]
    pub pending: bool,
    #[serde(default)]
    pub remote_exists: bool,
    #[serde(default)]
    pub origin: Option<String>,
}

fn ns(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
}

impl Sidecar {
    pub fn from_state(id: u64, st: &LocalState) -> Self {
        let (xet, git) = match &st.content {
            Some(ContentId::Xet(h)) => (Some(h.clone()), None),
            Some(ContentId::Git(h)) => (None, Some(h.clone())),
            None => (None, None),
        };
        Sidecar {
            id,
            path: st.path.clone(),
            kind: st.kind,
            size: st.size,
            mtime_ns: ns(st.mtime),
            atime_ns: Some(ns(st.atime)),
            ctime_ns: Some(ns(st.ctime)),
            mode: st.mode,
            rdev: st.rdev,
            uid: st.uid,
            gid: st.gid,
            xet,
            git,
            has_data: st.data.is_some(),
            target: st.target.clone(),
            opaque: st.opaque,
            dirty: st.is_dirty(),
            pending: st.pending,
            remote_exists: st.remote_exists,
            origin: st.origin.clone(),
        }
    }

    pub fn into_state(self, data: Option<std::sync::Arc<File>>) -> LocalState {
        let time = |n: u128| UNIX_EPOCH + Duration::from_nanos(n.min(u64::MAX as u128) as u64);
        let mtime = time(self.mtime_ns);
        let atime = self.atime_ns.map(time).unwrap_or(mtime);
        let ctime = self.ctime_ns.map(time).unwrap_or(mtime);
        let content = match (self.xet, self.git) {
            (Some(h), _) => Some(ContentId::Xet(h)),
            (None, Some(h)) => Some(ContentId::Git(h)),
            _ => None,
        };
        LocalState {
            path: self.path,
            kind: self.kind,
            size: self.size,
            mtime,
            ctime,
            atime,
            mode: self.mode,
            rdev: self.rdev,
            uid: self.uid,
            gid: self.gid,
            content,
            data,
            target: self.target,
            opaque: self.opaque,
            // A dirty entry restarts one generation ahead of what was committed.
            generation: u64::from(self.dirty),
            committed: 0,
            pending: self.pending || self.dirty,
            open_handles: 0,
            open_writers: 0,
            last_close: self.dirty.then(Instant::now),
            dirty_since: self.dirty.then(Instant::now),
            last_used: Instant::now(),
            error: None,
            accounted: 0,
            orphan: false,
            removed: false,
            remote_exists: self.remote_exists,
            origin: self.origin,
        }
    }
}

/// Write `side` to `path` atomically.
pub(crate) fn write_sidecar(path: &Path, side: &Sidecar) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let json = serde_json::to_vec(side).map_err(std::io::Error::other)?;
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
    f.write_all(&json)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Every sidecar in `dir/meta`, with its data file opened when it has one. Unreadable sidecars
/// are skipped with a warning (their data files stay on disk for inspection).
pub(crate) fn load_all(dir: &Path) -> std::io::Result<Vec<(Sidecar, Option<File>)>> {
    let mut out = Vec::new();
    for f in std::fs::read_dir(dir.join("meta"))? {
        let f = f?;
        let name = f.file_name().to_string_lossy().to_string();
        if name.ends_with(".tmp") {
            let _ = std::fs::remove_file(f.path());
            continue;
        }
        if !name.ends_with(".json") {
            continue;
        }
        let side: Sidecar = match std::fs::read(f.path())
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(file = %f.path().display(), error = %e, "skipping an unreadable staging sidecar");
                continue;
            }
        };
        let data = if side.has_data {
            match OpenOptions::new().read(true).write(true).open(dir.join("data").join(side.id.to_string())) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(path = %side.path, error = %e, "staged data missing; the entry falls back to its remote content");
                    None
                }
            }
        } else {
            None
        };
        out.push((side, data));
    }
    Ok(out)
}
