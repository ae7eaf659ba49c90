//! Real `hf-csi mount` processes: start, wait until the kernel shows the mount, and always
//! clean up (SIGTERM, then SIGKILL and a lazy unmount) when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Builder for a mount command line.
pub struct MountCmd {
    args: Vec<String>,
    mountpoint: PathBuf,
    envs: Vec<(String, String)>,
}

impl MountCmd {
    /// `hf-csi mount bucket SOURCE MOUNTPOINT --hub-endpoint E --cache-dir C`.
    pub fn bucket(endpoint: &str, source: &str, mountpoint: &Path, cache: &Path) -> Self {
        Self::new("bucket", endpoint, source, mountpoint, cache)
    }

    /// `hf-csi mount repo SOURCE MOUNTPOINT ...`.
    pub fn repo(endpoint: &str, source: &str, mountpoint: &Path, cache: &Path) -> Self {
        Self::new("repo", endpoint, source, mountpoint, cache)
    }

    fn new(kind: &str, endpoint: &str, source: &str, mountpoint: &Path, cache: &Path) -> Self {
        std::fs::create_dir_all(mountpoint).unwrap();
        let args = vec![
            "mount".into(),
            kind.into(),
            source.into(),
            mountpoint.display().to_string(),
            "--hub-endpoint".into(),
            endpoint.into(),
            "--cache-dir".into(),
            cache.display().to_string(),
        ];
        MountCmd { args, mountpoint: mountpoint.to_path_buf(), envs: vec![("HF_TOKEN".into(), String::new())] }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }

    fn command(&self) -> Command {
        let mut c = Command::new(super::bin());
        c.args(&self.args).env("HF_CSI_LOG", "info,hf_csi=debug");
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        c
    }

    /// Start and wait until mounted; panics with the process output if it fails.
    pub fn start(self) -> Mount {
        let mut child = self.command().stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn hf-csi");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !is_mounted(&self.mountpoint) {
            if let Ok(Some(status)) = child.try_wait() {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "hf-csi mount exited with {status} before mounting:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(Instant::now() < deadline, "timed out waiting for the mount at {}", self.mountpoint.display());
            std::thread::sleep(Duration::from_millis(50));
        }
        // Drain stderr in the background so the child never blocks on a full pipe.
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Mount { child: Some(child), mountpoint: self.mountpoint, log }
    }

    /// Run expecting failure; returns (exit code, stderr).
    pub fn fail(self) -> (i32, String) {
        let out = self.command().output().expect("spawn hf-csi");
        assert!(!out.status.success(), "mount unexpectedly succeeded");
        assert!(!is_mounted(&self.mountpoint), "a failed mount left something mounted");
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// A running mount process.
pub struct Mount {
    child: Option<Child>,
    pub mountpoint: PathBuf,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Mount {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The process's stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn stop(mut self) -> i32 {
        let code = self.terminate();
        assert!(!is_mounted(&self.mountpoint), "still mounted after SIGTERM");
        code
    }

    /// Wait (up to 30 s) for the process to exit by itself, for example after an external
    /// `umount`; returns its exit code. The mountpoint is left alone afterwards: something else
    /// may be mounted there by then.
    pub fn wait_exit(mut self) -> i32 {
        let mut c = self.child.take().expect("a running mount");
        let Some(code) = exit_code_within(&mut c, Duration::from_secs(30)) else {
            let _ = c.kill();
            let _ = c.wait();
            panic!("hf-csi did not exit within 30 s; log:\n{}", self.log());
        };
        // Drop must not unmount: the mount there now is not this process's.
        self.mountpoint = PathBuf::new();
        code
    }

    /// SIGKILL (no cleanup by the process), then a lazy unmount of the dead mount.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        lazy_unmount(&self.mountpoint);
    }

    fn terminate(&mut self) -> i32 {
        let Some(mut c) = self.child.take() else {
            return 0;
        };
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        if let Some(code) = exit_code_within(&mut c, Duration::from_secs(30)) {
            return code;
        }
        let _ = c.kill();
        let _ = c.wait();
        lazy_unmount(&self.mountpoint);
        panic!("hf-csi did not exit within 30 s of SIGTERM; log:\n{}", self.log());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = exit_code_within(&mut c, Duration::from_secs(10));
            let _ = c.kill();
            let _ = c.wait();
        }
        lazy_unmount(&self.mountpoint);
    }
}

/// The exit code of `c` once it exits (-1 for a signal), or `None` if it is still running
/// after `within`.
fn exit_code_within(c: &mut Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(s)) = c.try_wait() {
            return Some(s.code().unwrap_or(-1));
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `path` is a mountpoint right now (from /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(path.parent().unwrap_or(path)) else {
        return false;
    };
    let target = canon.join(path.file_name().unwrap_or_default());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().any(|l| l.split(' ').nth(4).is_some_and(|mp| Path::new(mp) == target))
}

/// Detach whatever is mounted at `path` (no-op when nothing is).
pub fn lazy_unmount(path: &Path) {
    if is_mounted(path) {
        let _ = Command::new("umount").arg("-l").arg(path).status();
    }
}
