//! `hf-csi local [DIR]`: the embedded default. Starts the Hub emulator in this process with a
//! demo bucket and a small demo model (two commits, the first tagged `v1`), mounts both under
//! DIR, prints what to try, and runs until Ctrl-C.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use hf_csi::emulator::{Emulator, EmulatorConfig, Import, RepoKind, TokenScope};
use hf_csi::fs::ContentCache;
use hf_csi::hub::Source;
use hf_csi::mount::{self, MountSpec, Mounted};

const BUCKET: &str = "demo/scratch";
const MODEL: &str = "demo/tiny-model";
const TOKEN_NAME: &str = "hf-csi-local-dev";

#[derive(Debug, Args)]
pub struct LocalArgs {
    /// Where to put the mounts and their state.
    #[arg(default_value = "hf-local")]
    pub dir: PathBuf,
    /// Address of the emulator (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
}

pub async fn run(args: LocalArgs) -> Result<(), String> {
    let dir = absolute(&args.dir)?;
    let state = dir.join(".state");
    let (bucket_src, model_v1, model_v2) =
        write_demo_data(&state.join("demo")).map_err(|e| format!("demo data: {e}"))?;
    let token_file = state.join("token");
    write_private(&token_file, TOKEN_NAME).map_err(|e| format!("{}: {e}", token_file.display()))?;

    let mut cfg = EmulatorConfig::new(state.join("hub"));
    cfg.listen = args.listen;
    cfg.tokens = vec![(TOKEN_NAME.to_string(), TokenScope::Write)];
    cfg.imports = vec![
        Import::Bucket { id: BUCKET.into(), dir: bucket_src },
        Import::Repo { kind: RepoKind::Model, id: MODEL.into(), dir: model_v1, tag: Some("v1".into()) },
        Import::Repo { kind: RepoKind::Model, id: MODEL.into(), dir: model_v2, tag: None },
    ];
    eprintln!("hf-csi local: starting the Hub emulator (first run uploads the demo data)...");
    let hub = Emulator::start(cfg).await.map_err(|e| format!("starting the Hub emulator: {e}"))?;
    let endpoint = hub.endpoint();

    let cache_dir = state.join("cache");
    let cache =
        ContentCache::open(&cache_dir.join("content"), 1 << 30).map_err(|e| format!("{}: {e}", cache_dir.display()))?;
    let spec = |source: Source, mp: &str| -> Result<MountSpec, String> {
        let mountpoint = dir.join(mp);
        release_stale_mount(&mountpoint);
        std::fs::create_dir_all(&mountpoint).map_err(|e| format!("{}: {e}", mountpoint.display()))?;
        let mut spec = MountSpec::new(source, mountpoint, endpoint.clone(), cache_dir.clone());
        spec.token_file = Some(token_file.clone());
        spec.cache_size = 1 << 30;
        spec.metadata_ttl = Duration::from_secs(2);
        spec.poll_interval = Some(Duration::from_secs(5));
        spec.flush_debounce = Duration::from_millis(500);
        spec.max_staging_size = 256 << 20;
        Ok(spec)
    };
    let bucket_spec = spec(Source::parse_bucket(BUCKET).map_err(|e| e.to_string())?, "bucket")?;
    let model_spec = spec(Source::parse_repo(MODEL, "main").map_err(|e| e.to_string())?, "model")?;
    let bucket = mount::start(&bucket_spec, Some(cache.clone())).await.map_err(|e| e.to_string())?;
    let model = match mount::start(&model_spec, Some(cache.clone())).await {
        Ok(m) => m,
        Err(e) => {
            unmount_all(vec![bucket]).await;
            return Err(e.to_string());
        }
    };
    print_banner(&dir, &endpoint, &token_file, &bucket, &model);
    super::wait_for_shutdown(|| bucket.is_finished() || model.is_finished()).await;
    unmount_all(vec![bucket, model]).await;
    hub.shutdown().await;
    eprintln!("hf-csi local: stopped (state kept in {})", state.display());
    Ok(())
}

fn print_banner(dir: &Path, endpoint: &str, token: &Path, bucket: &Mounted, model: &Mounted) {
    let d = dir.display();
    let rw = if bucket.fs.config().read_only() { "read-only for now" } else { "read-write" };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\nhf-csi local is running.\n\
         \n  Hub emulator   {endpoint}   (token in {tok})\
         \n  {b:<14} -> {d}/bucket   ({rw})\
         \n  {m:<14} -> {d}/model    (read-only, {md})\
         \n\nTry:\
         \n  ls -l {d}/bucket {d}/model\
         \n  cat {d}/model/config.json\
         \n  sha256sum {d}/model/model.safetensors\
         \n  hf-csi mount repo {MODEL} /some/dir --revision v1 --hub-endpoint {endpoint}\
         \n\nPress Ctrl-C to unmount and stop.",
        tok = token.display(),
        b = BUCKET,
        m = MODEL,
        md = model.description,
    );
}

async fn unmount_all(mounts: Vec<Mounted>) {
    for m in mounts {
        match m.unmount().await {
            Ok(0) => {}
            Ok(left) => eprintln!("hf-csi local: {left} staged change(s) not committed; kept for the next run"),
            Err(e) => eprintln!("hf-csi local: unmount failed: {e}"),
        }
    }
}

fn absolute(p: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))?;
    std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// A mount left behind by a killed run answers ENOTCONN; detach it so we can mount again.
fn release_stale_mount(p: &Path) {
    if let Err(e) = std::fs::metadata(p)
        && e.raw_os_error() == Some(libc::ENOTCONN)
        && let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
    {
        // SAFETY: valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        eprintln!("hf-csi local: detached a stale mount at {}", p.display());
    }
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, content)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Deterministic demo content: (bucket dir, model v1 dir, model v2 dir).
fn write_demo_data(root: &Path) -> std::io::Result<(PathBuf, PathBuf, PathBuf)> {
    let bucket = root.join("bucket");
    let v1 = root.join("model-v1");
    let v2 = root.join("model-v2");
    let files: Vec<(PathBuf, Vec<u8>)> = vec![
        (
            bucket.join("README.md"),
            b"# demo/scratch\n\nA read-write bucket served by the local Hub emulator.\n".to_vec(),
        ),
        (bucket.join("notes/hello.txt"), b"hello from a Hugging Face bucket\n".to_vec()),
        (
            bucket.join("data/numbers.csv"),
            (0..1000).map(|i| format!("{i},{}\n", i * i)).collect::<String>().into_bytes(),
        ),
        (bucket.join("data/sample.bin"), noise(3 << 20, 1)),
        (v1.join("config.json"), br#"{"model_type": "tiny", "hidden_size": 64, "version": 1}"#.to_vec()),
        (v1.join("README.md"), b"# tiny-model\n\nFirst release.\n".to_vec()),
        (v1.join("model.safetensors"), noise(12 << 20, 2)),
        (v2.join("config.json"), br#"{"model_type": "tiny", "hidden_size": 64, "version": 2}"#.to_vec()),
        (v2.join("README.md"), b"# tiny-model\n\nSecond release: same weights, new config.\n".to_vec()),
        (v2.join("tokenizer.json"), br#"{"vocab": {"<pad>": 0, "hello": 1, "world": 2}}"#.to_vec()),
        (v2.join("model.safetensors"), noise(12 << 20, 2)),
    ];
    for (p, data) in files {
        if std::fs::read(&p).ok().as_deref() == Some(&data[..]) {
            continue;
        }
        std::fs::create_dir_all(p.parent().unwrap_or(root))?;
        std::fs::write(&p, data)?;
    }
    Ok((bucket, v1, v2))
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}
