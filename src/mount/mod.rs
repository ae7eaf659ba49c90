//! One mount, end to end: a typed [`MountSpec`] (built from CLI flags or CSI volume attributes)
//! turned into an opened remote, a filesystem, a change poll and a FUSE session.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::fs::{ContentCache, Fs, FsConfig};
use crate::fuse::{MountHandle, MountOptions};
use crate::hub::{HubRemote, HubRemoteConfig, Remote, RemoteError, Source, TokenSource};

/// Everything one mount needs, validated.
#[derive(Debug, Clone)]
pub struct MountSpec {
    pub source: Source,
    pub mountpoint: PathBuf,
    /// Hub base URL.
    pub endpoint: String,
    /// Token file (re-read on change); `None` uses `HF_TOKEN` or goes anonymous.
    pub token_file: Option<PathBuf>,
    /// Root of local state: content cache, xet state.
    pub cache_dir: PathBuf,
    /// Content cache limit in bytes (0 = unlimited).
    pub cache_size: u64,
    pub uid: u32,
    pub gid: u32,
    pub read_only: bool,
    pub metadata_ttl: Duration,
    pub poll_interval: Option<Duration>,
    pub allow_other: bool,
}

/// Why a mount could not start. Each message names the problem in one line.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{0}")]
    Token(String),
    #[error("mountpoint {path}: {why}")]
    Mountpoint { path: PathBuf, why: String },
    #[error("cache directory {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{source} (hub {endpoint})")]
    Remote {
        endpoint: String,
        source: RemoteError,
    },
    #[error("mounting {path}: {source}")]
    Fuse {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A running mount.
pub struct Mounted {
    pub fs: Arc<Fs<HubRemote>>,
    handle: Option<MountHandle>,
    poll: Option<tokio::task::JoinHandle<()>>,
    pub description: String,
}

impl Mounted {
    /// Whether the kernel side has gone away (external unmount).
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Unmount and stop the poll.
    pub fn unmount(mut self) -> std::io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> std::io::Result<()> {
        if let Some(p) = self.poll.take() {
            p.abort();
        }
        match self.handle.take() {
            Some(h) => h.unmount(),
            None => Ok(()),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// The token source a spec asks for.
pub fn token_source(token_file: Option<&Path>) -> Result<Arc<TokenSource>, MountError> {
    if let Some(p) = token_file {
        return TokenSource::file(p)
            .map(Arc::new)
            .map_err(MountError::Token);
    }
    Ok(Arc::new(match std::env::var("HF_TOKEN") {
        Ok(t) if !t.trim().is_empty() => TokenSource::fixed(t),
        _ => TokenSource::anonymous(),
    }))
}

/// Check the mountpoint before touching the remote, with a precise message.
fn check_mountpoint(path: &Path) -> Result<(), MountError> {
    let err = |why: String| MountError::Mountpoint {
        path: path.to_path_buf(),
        why,
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(err("not a directory".into())),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Err(err(
            "a previous FUSE mount here is dead (transport endpoint not connected); run `umount -l` on it first".into(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(err("does not exist".into())),
        Err(e) => Err(err(e.to_string())),
    }
}

/// Open the source, mount it and start the change poll. Must run inside a tokio runtime.
pub async fn start(
    spec: &MountSpec,
    cache: Option<Arc<ContentCache>>,
) -> Result<Mounted, MountError> {
    check_mountpoint(&spec.mountpoint)?;
    let token = token_source(spec.token_file.as_deref())?;
    let cache = match cache {
        Some(c) => c,
        None => {
            let dir = spec.cache_dir.join("content");
            ContentCache::open(&dir, spec.cache_size)
                .map_err(|source| MountError::Cache { path: dir, source })?
        }
    };
    let remote_err = |source| MountError::Remote {
        endpoint: spec.endpoint.clone(),
        source,
    };
    let remote = HubRemote::new(HubRemoteConfig {
        endpoint: spec.endpoint.clone(),
        source: spec.source.clone(),
        token,
        xet_dir: spec.cache_dir.join("xet"),
    })
    .map_err(remote_err)?;
    let remote = Arc::new(remote);
    let info = remote.open().await.map_err(remote_err)?;
    // Repos are immutable; bucket writes arrive with the write path.
    let read_only = spec.read_only
        || matches!(spec.source, Source::Repo { .. })
        || !crate::fs::WRITES_SUPPORTED;
    let poll_interval = if info.immutable {
        None
    } else {
        spec.poll_interval
    };
    let cfg = FsConfig {
        uid: spec.uid,
        gid: spec.gid,
        read_only,
        metadata_ttl: spec.metadata_ttl,
        poll_interval,
        max_inodes: 100_000,
    };
    let description = info.description.clone();
    let fs = Fs::new(remote, info, cfg, cache);
    let opts = MountOptions {
        fs_name: format!("hf-csi:{}", spec.source.id()),
        read_only,
        allow_other: spec.allow_other,
        threads: 1,
    };
    let handle = crate::fuse::mount(fs.clone(), &spec.mountpoint, &opts).map_err(|source| {
        MountError::Fuse {
            path: spec.mountpoint.clone(),
            source,
        }
    })?;
    let poll =
        poll_interval.map(|every| tokio::spawn(crate::fs::run_poll(Arc::downgrade(&fs), every)));
    tracing::info!(source = %description, mountpoint = %spec.mountpoint.display(), read_only, "mounted");
    Ok(Mounted {
        fs,
        handle: Some(handle),
        poll,
        description,
    })
}
