//! Mounting: builds the `fuser` session for an [`Fs`], connects kernel invalidation, and owns
//! the background session until unmount.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

use super::FuseAdapter;
use super::invalidate::KernelInvalidator;
use crate::fs::Fs;
use crate::hub::Remote;

/// Kernel-facing mount options.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Shown as the device in `/proc/mounts`.
    pub fs_name: String,
    pub read_only: bool,
    /// Let users other than the mounter in (needs root or `user_allow_other`).
    pub allow_other: bool,
    /// Threads reading kernel requests.
    pub threads: usize,
}

/// A live mount; dropping it unmounts.
pub struct MountHandle {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
}

impl MountHandle {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmount and wait for the request loop to end. A busy mountpoint (open files, a shell
    /// inside it) is detached lazily instead: it disappears from the namespace at once, and the
    /// processes still using it see errors once this process exits.
    pub fn unmount(mut self) -> std::io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        if session.guard.is_finished() {
            // Unmounted from outside already. Unmounting the path again could take down a
            // new mount made there since (kubelet republishing a volume at the same path).
            return join_without_unmount(session);
        }
        match unmount_path(&self.mountpoint, 0) {
            Ok(()) => join_without_unmount(session),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                tracing::warn!(
                    mountpoint = %self.mountpoint.display(),
                    "mountpoint busy; detached lazily (open files fail once this process exits)"
                );
                unmount_path(&self.mountpoint, libc::MNT_DETACH)?;
                // The kernel keeps the connection until the last open file closes; don't wait,
                // and don't let fuser unmount the (now free) path again either.
                std::mem::forget(session);
                Ok(())
            }
            // Already unmounted (e.g. by `umount`): the request loop ends by itself.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) => {
                join_without_unmount(session)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the request loop has ended (for example after an external `umount`).
    pub fn is_finished(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if self.session.is_some() {
            let handle = MountHandle { session: self.session.take(), mountpoint: self.mountpoint.clone() };
            if let Err(e) = handle.unmount() {
                tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "unmount failed");
            }
        }
    }
}

/// Wait for the request loop to end, then let go of the session without fuser unmounting the
/// path once more: fuser 0.18 takes a dead connection (POLLERR on the device) for a live
/// mount and unmounts by path, which would take down whatever is mounted there now. What is
/// leaked is the session's handle on the already dead `/dev/fuse` connection.
fn join_without_unmount(session: BackgroundSession) -> std::io::Result<()> {
    let session = std::mem::ManuallyDrop::new(session);
    // SAFETY: the guard is moved out exactly once, and `session` is never used or dropped after.
    let guard = unsafe { std::ptr::read(&session.guard) };
    guard.join().map_err(|_| std::io::Error::other("the FUSE request loop panicked"))?
}

/// `umount2(path, flags)`.
fn unmount_path(path: &Path, flags: i32) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in mountpoint"))?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Mount `fs` at `mountpoint`, serving requests on the current tokio runtime.
pub fn mount<R: Remote>(fs: Arc<Fs<R>>, mountpoint: &Path, opts: &MountOptions) -> std::io::Result<MountHandle> {
    let fs_name: String =
        opts.fs_name.chars().map(|c| if c.is_ascii_graphic() && c != ',' { c } else { '_' }).collect();
    let mut options = vec![
        MountOption::FSName(fs_name),
        MountOption::Subtype("hf-csi".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if opts.read_only {
        options.push(MountOption::RO);
    }
    let mut config = Config::default();
    config.mount_options = options;
    config.acl = if opts.allow_other { SessionACL::All } else { SessionACL::Owner };
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = opts.threads > 1;
    let rt = tokio::runtime::Handle::current();
    let adapter = FuseAdapter::new(fs.clone(), rt);
    let session = fuser::Session::new(adapter, mountpoint, &config)?;
    fs.set_invalidator(Arc::new(KernelInvalidator::start(session.notifier())));
    let bg = session.spawn()?;
    let mountpoint = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    Ok(MountHandle { session: Some(bg), mountpoint })
}
