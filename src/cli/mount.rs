//! `hf-csi mount bucket|repo SOURCE MOUNTPOINT`: the filesystem as a foreground command.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use hf_csi::hub::Source;
use hf_csi::mount::{self, MountSpec};

use super::size::parse_size;

#[derive(Debug, Args)]
pub struct MountArgs {
    #[command(subcommand)]
    pub target: MountTarget,
}

#[derive(Debug, Subcommand)]
pub enum MountTarget {
    /// Mount a bucket (or a prefix inside it): NS/NAME[/PREFIX].
    Bucket {
        /// The bucket, e.g. `acme/datasets` or `acme/datasets/runs/7`.
        source: String,
        mountpoint: PathBuf,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Mount a repo at a revision: [models/|datasets/|spaces/]NS/NAME[/SUBDIR].
    Repo {
        /// The repo, e.g. `acme/llama` (a model), `datasets/acme/corpus/train`.
        source: String,
        mountpoint: PathBuf,
        /// Branch, tag or commit sha; resolved to a commit once, at mount time.
        #[arg(long, default_value = "main")]
        revision: String,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Hub base URL.
    #[arg(long, env = "HF_ENDPOINT", default_value = "https://huggingface.co")]
    pub hub_endpoint: String,
    /// File holding the Hub token; re-read when it changes. Without it, `HF_TOKEN` or anonymous.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Local state: content cache and transfer state.
    #[arg(long, env = "HF_CSI_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Content cache limit (LRU beyond it), e.g. 10G; 0 = unlimited.
    #[arg(long, default_value = "10G", value_parser = parse_size)]
    pub cache_size: u64,
    /// Owner of every file (default: the caller).
    #[arg(long)]
    pub uid: Option<u32>,
    /// Group of every file (default: the caller's).
    #[arg(long)]
    pub gid: Option<u32>,
    /// Refuse every change (repos are always read-only).
    #[arg(long)]
    pub read_only: bool,
    /// How long metadata is trusted before the Hub is asked again.
    #[arg(long, default_value_t = 10_000)]
    pub metadata_ttl_ms: u64,
    /// How often cached directories are re-listed to show remote changes (0 = never).
    #[arg(long, default_value_t = 30)]
    pub poll_interval_secs: u64,
    /// Only the mounting user may access the mount (default: everyone, as in a pod).
    #[arg(long)]
    pub no_allow_other: bool,
    /// Keep every change in a local upper layer over the bucket or repo; never upload.
    #[arg(long)]
    pub no_push: bool,
    /// Where a --no-push mount keeps its upper layer (default: <cache-dir>/overlay/<source>).
    #[arg(long, requires = "no_push")]
    pub overlay_dir: Option<PathBuf>,
    /// Where a bucket mount stages changes (default: <cache-dir>/staging/<source>). Two
    /// read-write mounts of one source at the same time need different staging directories.
    #[arg(long, conflicts_with = "no_push")]
    pub staging_dir: Option<PathBuf>,
    /// Quiet time after a close before a file is committed (batches bursts).
    #[arg(long, default_value_t = 2000)]
    pub flush_debounce_ms: u64,
    /// A file dirty this long is committed even while it keeps changing.
    #[arg(long, default_value_t = 60)]
    pub flush_max_window_secs: u64,
    /// How long unmount waits for staged changes to be committed.
    #[arg(long, default_value_t = 60)]
    pub flush_timeout_secs: u64,
    /// Garbage-collect clean staged files above this size, e.g. 5G (0 = keep them).
    #[arg(long, default_value = "0", value_parser = parse_size)]
    pub max_staging_size: u64,
    /// Hard cap on the staging area; writes beyond it fail with ENOSPC (0 = none).
    #[arg(long, default_value = "0", value_parser = parse_size)]
    pub staging_quota: u64,
}

/// Where local state goes by default.
fn default_cache_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/cache/hf-csi");
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(x).join("hf-csi");
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hf-csi")).unwrap_or_else(|| "/tmp/hf-csi".into())
}

impl MountTarget {
    /// Validate everything into a [`MountSpec`].
    pub fn into_spec(self) -> Result<MountSpec, String> {
        let (source, mountpoint, common) = match self {
            MountTarget::Bucket { source, mountpoint, common } => {
                (Source::parse_bucket(&source).map_err(|e| e.to_string())?, mountpoint, common)
            }
            MountTarget::Repo { source, mountpoint, revision, common } => {
                (Source::parse_repo(&source, &revision).map_err(|e| e.to_string())?, mountpoint, common)
            }
        };
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Ok(MountSpec {
            source,
            mountpoint,
            endpoint: common.hub_endpoint,
            token_file: common.token_file,
            cache_dir: common.cache_dir.unwrap_or_else(default_cache_dir),
            cache_size: common.cache_size,
            uid: common.uid.unwrap_or(uid),
            gid: common.gid.unwrap_or(gid),
            read_only: common.read_only,
            metadata_ttl: Duration::from_millis(common.metadata_ttl_ms),
            poll_interval: (common.poll_interval_secs > 0).then(|| Duration::from_secs(common.poll_interval_secs)),
            allow_other: !common.no_allow_other,
            no_push: common.no_push,
            overlay_dir: common.overlay_dir.or(common.staging_dir),
            flush_debounce: Duration::from_millis(common.flush_debounce_ms),
            flush_max_window: Duration::from_secs(common.flush_max_window_secs),
            flush_timeout: Duration::from_secs(common.flush_timeout_secs),
            max_staging_size: common.max_staging_size,
            staging_quota: common.staging_quota,
        })
    }
}

/// Mount in the foreground until SIGINT/SIGTERM or an external unmount.
pub async fn run(args: MountArgs) -> Result<(), String> {
    let spec = args.target.into_spec()?;
    let mounted = mount::start(&spec, None).await.map_err(|e| e.to_string())?;
    println!("hf-csi: mounted {} at {}", mounted.description, spec.mountpoint.display());
    super::wait_for_shutdown(|| mounted.is_finished()).await;
    let mp = spec.mountpoint.display().to_string();
    let left = mounted.unmount().await.map_err(|e| format!("unmounting {mp}: {e}"))?;
    if left > 0 {
        return Err(format!(
            "unmounted {mp}, but {left} staged change(s) could not be committed in time; they are kept in {} and committed on the next mount",
            spec.layer_dir().display()
        ));
    }
    eprintln!("hf-csi: unmounted {mp}");
    Ok(())
}
