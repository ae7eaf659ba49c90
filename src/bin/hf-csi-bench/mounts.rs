//! Real `hf-csi mount` processes: started with the flags a user would pass, waited for until
//! the kernel shows the mount, and always stopped (SIGTERM, then SIGKILL and a lazy unmount).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cleanup;

/// How long a mount may take to appear.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything one `hf-csi mount bucket` needs.
pub struct MountSpec<'a> {
    pub bin: &'a Path,
    pub endpoint: &'a str,
    pub bucket: &'a str,
    pub mountpoint: PathBuf,
    pub cache_dir: PathBuf,
    pub token_file: &'a Path,
    pub log: PathBuf,
    /// More `hf-csi mount` flags (e.g. `--flush-debounce-ms 200`).
    pub extra_args: Vec<String>,
}

/// A running mount; stopped when dropped.
pub struct Mount {
    child: Option<Child>,
    pub mountpoint: PathBuf,
    pub cache_dir: PathBuf,
    log: PathBuf,
    /// From spawn to the mount showing in /proc/self/mountinfo.
    pub startup: Duration,
}

impl Mount {
    pub fn start(spec: MountSpec<'_>) -> Result<Mount, String> {
        std::fs::create_dir_all(&spec.mountpoint)
            .and_then(|_| std::fs::create_dir_all(&spec.cache_dir))
            .map_err(|e| format!("preparing {}: {e}", spec.mountpoint.display()))?;
        let log = std::fs::File::create(&spec.log).map_err(|e| format!("creating {}: {e}", spec.log.display()))?;
        let log2 = log.try_clone().map_err(|e| format!("creating {}: {e}", spec.log.display()))?;
        let started = Instant::now();
        let child = Command::new(spec.bin)
            .arg("mount")
            .arg("bucket")
            .arg(spec.bucket)
            .arg(&spec.mountpoint)
            .arg("--hub-endpoint")
            .arg(spec.endpoint)
            .arg("--cache-dir")
            .arg(&spec.cache_dir)
            .arg("--token-file")
            .arg(spec.token_file)
            .args(&spec.extra_args)
            .env("HF_CSI_LOG", "warn")
            .env_remove("HF_TOKEN")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", spec.bin.display()))?;
        cleanup::register(child.id(), Some(spec.mountpoint.clone()));
        let mut mount = Mount {
            child: Some(child),
            mountpoint: spec.mountpoint,
            cache_dir: spec.cache_dir,
            log: spec.log,
            startup: Duration::ZERO,
        };
        while !cleanup::is_mounted(&mount.mountpoint) {
            let exited = mount.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Err(format!("hf-csi mount exited with {status} before mounting:\n{}", mount.log_tail()));
            }
            if started.elapsed() > MOUNT_TIMEOUT {
                return Err(format!("hf-csi mount did not appear within {MOUNT_TIMEOUT:?}:\n{}", mount.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        mount.startup = started.elapsed();
        Ok(mount)
    }

    /// `Some(description)` if the process has exited on its own (it should run until stopped).
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        Some(format!("hf-csi mount exited by itself ({status}); last log lines:\n{}", self.log_tail()))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// The last lines the process logged.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Clean unmount; an error says what went wrong (the mount is gone either way).
    pub fn stop(mut self) -> Result<(), String> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id();
        let clean = cleanup::terminate(&mut child, Duration::from_secs(30));
        cleanup::unregister(pid);
        let still = cleanup::is_mounted(&self.mountpoint);
        if still {
            cleanup::lazy_unmount(&self.mountpoint);
        }
        match (clean, still) {
            (true, false) => Ok(()),
            _ => Err(format!(
                "hf-csi mount at {} did not stop cleanly (killed: {}, left mounted: {still}):\n{}",
                self.mountpoint.display(),
                !clean,
                self.log_tail()
            )),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("warning: {e}");
        }
    }
}
