//! One mount, end to end: a typed [`MountSpec`] (built from CLI flags or CSI volume attributes)
//! turned into an opened remote, a filesystem, a change poll and a FUSE session.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::fs::{ContentCache, FlushConfig, Fs, FsConfig, StagingConfig, WriteMode};
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
    /// Keep every change in a local upper layer, never upload.
    pub no_push: bool,
    /// Location of the local layer: the upper layer of a `no_push` mount (default
    /// `<cache-dir>/overlay/<source>`) or the staging area of a bucket mount (default
    /// `<cache-dir>/staging/<source>`).
    pub overlay_dir: Option<PathBuf>,
    /// Quiet time after a close before a bucket file is committed.
    pub flush_debounce: Duration,
    /// A file dirty this long is committed even while it keeps changing.
    pub flush_max_window: Duration,
    /// How long unmount waits for staged changes to be committed.
    pub flush_timeout: Duration,
    /// Clean staged files above this many bytes are garbage-collected (0 = never).
    pub max_staging_size: u64,
    /// Hard cap on staging bytes; writes beyond it fail with ENOSPC (0 = none).
    pub staging_quota: u64,
}

impl MountSpec {
    /// A spec with the defaults of `hf-csi mount` for everything but the essentials.
    pub fn new(source: Source, mountpoint: PathBuf, endpoint: String, cache_dir: PathBuf) -> Self {
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        MountSpec {
            source,
            mountpoint,
            endpoint,
            token_file: None,
            cache_dir,
            cache_size: 10 << 30,
            uid,
            gid,
            read_only: false,
            metadata_ttl: Duration::from_secs(10),
            poll_interval: Some(Duration::from_secs(30)),
            allow_other: true,
            no_push: false,
            overlay_dir: None,
            flush_debounce: Duration::from_secs(2),
            flush_max_window: Duration::from_secs(60),
            flush_timeout: Duration::from_secs(60),
            max_staging_size: 0,
            staging_quota: 0,
        }
    }

    /// How this mount treats changes.
    pub fn write_mode(&self) -> Result<WriteMode, MountError> {
        if self.no_push && self.read_only {
            return Err(MountError::Conflict(
                "--no-push and --read-only cannot be combined: a no-push mount exists to take local writes".into(),
            ));
        }
        Ok(match (&self.source, self.no_push, self.read_only) {
            (_, true, _) => WriteMode::Overlay,
            (Source::Repo { .. }, false, _) | (_, false, true) => WriteMode::ReadOnly,
            (Source::Bucket { .. }, false, false) => WriteMode::Bucket(FlushConfig {
                debounce: self.flush_debounce,
                max_window: self.flush_max_window.max(self.flush_debounce),
                unmount_timeout: self.flush_timeout,
            }),
        })
    }

    /// Where this mount keeps its local layer.
    pub fn layer_dir(&self) -> PathBuf {
        if let Some(d) = &self.overlay_dir {
            return d.clone();
        }
        let kind = if self.no_push { "overlay" } else { "staging" };
        self.cache_dir.join(kind).join(self.source.state_key())
    }
}

/// Why a mount could not start. Each message names the problem in one line.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{0}")]
    Token(String),
    #[error("mountpoint {path}: {why}")]
    Mountpoint { path: PathBuf, why: String },
    #[error("cache directory {path}: {source}")]
    Cache { path: PathBuf, source: std::io::Error },
    #[error("{source} (hub {endpoint})")]
    Remote { endpoint: String, source: RemoteError },
    #[error("mounting {path}: {source}")]
    Fuse { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Conflict(String),
    #[error("local layer {path}: {source}")]
    Layer { path: PathBuf, source: crate::fs::FsError },
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

    /// Commit what is staged (bounded by the flush timeout), then unmount. Returns how many
    /// staged entries could not be committed (they stay on disk for the next mount).
    pub async fn unmount(mut self) -> std::io::Result<usize> {
        let left = match self.fs.config().write {
            WriteMode::Bucket(fc) => self.fs.flush_all(fc.unmount_timeout).await,
            _ => 0,
        };
        tokio::task::block_in_place(|| self.shutdown())?;
        Ok(left)
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
        return TokenSource::file(p).map(Arc::new).map_err(MountError::Token);
    }
    Ok(Arc::new(match std::env::var("HF_TOKEN") {
        Ok(t) if !t.trim().is_empty() => TokenSource::fixed(t),
        _ => TokenSource::anonymous(),
    }))
}

/// Check the mountpoint before touching the remote, with a precise message.
fn check_mountpoint(path: &Path) -> Result<(), MountError> {
    let err = |why: String| MountError::Mountpoint { path: path.to_path_buf(), why };
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
pub async fn start(spec: &MountSpec, cache: Option<Arc<ContentCache>>) -> Result<Mounted, MountError> {
    check_mountpoint(&spec.mountpoint)?;
    let token = token_source(spec.token_file.as_deref())?;
    let cache = match cache {
        Some(c) => c,
        None => {
            let dir = spec.cache_dir.join("content");
            ContentCache::open(&dir, spec.cache_size).map_err(|source| MountError::Cache { path: dir, source })?
        }
    };
    let remote_err = |source| MountError::Remote { endpoint: spec.endpoint.clone(), source };
    let remote = HubRemote::new(HubRemoteConfig {
        endpoint: spec.endpoint.clone(),
        source: spec.source.clone(),
        token,
        xet_dir: spec.cache_dir.join("xet"),
    })
    .map_err(remote_err)?;
    let remote = Arc::new(remote);
    let info = remote.open().await.map_err(remote_err)?;
    let write = spec.write_mode()?;
    let read_only = matches!(write, WriteMode::ReadOnly);
    let poll_interval = if info.immutable { None } else { spec.poll_interval };
    let staging = (!read_only).then(|| StagingConfig {
        dir: spec.layer_dir(),
        max_staging_size: spec.max_staging_size,
        staging_quota: spec.staging_quota,
    });
    let cfg = FsConfig {
        uid: spec.uid,
        gid: spec.gid,
        write,
        staging,
        metadata_ttl: spec.metadata_ttl,
        poll_interval,
        max_inodes: 100_000,
    };
    let description = info.description.clone();
    let fs =
        Fs::new(remote, info, cfg, cache).map_err(|source| MountError::Layer { path: spec.layer_dir(), source })?;
    fs.start_background();
    let opts = MountOptions {
        fs_name: format!("hf-csi:{}", spec.source.id()),
        read_only,
        allow_other: spec.allow_other,
        threads: 1,
    };
    let handle = crate::fuse::mount(fs.clone(), &spec.mountpoint, &opts)
        .map_err(|source| MountError::Fuse { path: spec.mountpoint.clone(), source })?;
    let poll = poll_interval.map(|every| tokio::spawn(crate::fs::run_poll(Arc::downgrade(&fs), every)));
    tracing::info!(source = %description, mountpoint = %spec.mountpoint.display(), read_only, "mounted");
    Ok(Mounted { fs, handle: Some(handle), poll, description })
}
