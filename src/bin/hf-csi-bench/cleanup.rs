//! Everything the bench must undo, even on panic or Ctrl-C: child processes, FUSE mounts and
//! the run directory. Mounts and children register here while they live; a signal handler
//! and the [`RunDir`] guard tear down whatever is left.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What is alive right now: child pids, and the mountpoints they serve (if any).
static LIVE: Mutex<Vec<(u32, Option<PathBuf>)>> = Mutex::new(Vec::new());
/// The run directory, removed by [`emergency`].
static RUN_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

fn live() -> std::sync::MutexGuard<'static, Vec<(u32, Option<PathBuf>)>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn register(pid: u32, mountpoint: Option<PathBuf>) {
    live().push((pid, mountpoint));
}

pub fn unregister(pid: u32) {
    live().retain(|(p, _)| *p != pid);
}

/// Runs `cmd` to completion, killable by [`emergency`] meanwhile; output is captured.
pub fn run(cmd: &mut Command) -> std::io::Result<Output> {
    use std::process::Stdio;
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let pid = child.id();
    register(pid, None);
    let out = child.wait_with_output();
    unregister(pid);
    out
}

/// SIGTERM, a grace period, then SIGKILL. Returns whether it exited on its own.
pub fn terminate(child: &mut Child, grace: Duration) -> bool {
    // SAFETY: kill(2) on a child we own and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Kills every registered child, detaches every registered mount, removes the run directory.
/// Called from the signal handler; must not wait long.
pub fn emergency() {
    let items: Vec<_> = live().drain(..).collect();
    for (pid, _) in &items {
        // SAFETY: kill(2) on a pid we spawned; at worst it has exited already.
        unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
    }
    std::thread::sleep(Duration::from_millis(500));
    for (pid, mp) in &items {
        // SAFETY: as above.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        if let Some(mp) = mp {
            lazy_unmount(mp);
        }
    }
    if let Some(dir) = RUN_DIR.lock().unwrap_or_else(|e| e.into_inner()).take() {
        remove_dir_safely(&dir);
    }
}

/// Installs SIGINT/SIGTERM handling on `rt`: clean up, then exit 130.
pub fn install_signal_handler(rt: &tokio::runtime::Runtime) {
    rt.spawn(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            eprintln!("warning: cannot install signal handlers; Ctrl-C may leave mounts behind");
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("\ninterrupted: unmounting and cleaning up");
        tokio::task::spawn_blocking(emergency).await.ok();
        std::process::exit(130);
    });
}

/// Whether `path` is a mountpoint right now.
pub fn is_mounted(path: &Path) -> bool {
    mounts_under(path).iter().any(|m| m == path)
}

/// Mountpoints at or below `dir` (from /proc/self/mountinfo), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|mp| PathBuf::from(mp.replace("\\040", " ")))
        .filter(|mp| mp.starts_with(&dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Detaches whatever is mounted at `path`.
pub fn lazy_unmount(path: &Path) {
    let _ = Command::new("umount").arg("-l").arg(path).stderr(std::process::Stdio::null()).status();
}

/// Removes `dir`, after detaching any mount below it so nothing is deleted through a mount.
pub fn remove_dir_safely(dir: &Path) {
    for mp in mounts_under(dir) {
        lazy_unmount(&mp);
    }
    if !mounts_under(dir).is_empty() {
        eprintln!("warning: {} still has mounts below it; left in place", dir.display());
        return;
    }
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("warning: cannot remove {}: {e}", dir.display());
    }
}

/// This run's private directory under `--work-dir`, removed on drop unless kept.
pub struct RunDir {
    pub path: PathBuf,
    keep: bool,
}

impl RunDir {
    /// Creates `WORK/run-PID`, after removing leftovers of earlier runs whose process is gone.
    pub fn create(work: &Path, keep: bool) -> std::io::Result<RunDir> {
        std::fs::create_dir_all(work)?;
        for entry in std::fs::read_dir(work)?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(pid) = name.strip_prefix("run-").and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                eprintln!("removing the leftovers of an earlier run: {}", entry.path().display());
                remove_dir_safely(&entry.path());
            }
        }
        let path = work.join(format!("run-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        let path = std::fs::canonicalize(&path)?;
        if !keep {
            *RUN_DIR.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.clone());
        }
        Ok(RunDir { path, keep })
    }

    /// A subdirectory, created.
    pub fn sub(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        let _ = std::fs::create_dir_all(&p);
        p
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        for mp in mounts_under(&self.path) {
            lazy_unmount(&mp);
        }
        if self.keep {
            eprintln!("kept the work directory {}", self.path.display());
        } else {
            RUN_DIR.lock().unwrap_or_else(|e| e.into_inner()).take();
            remove_dir_safely(&self.path);
        }
    }
}
