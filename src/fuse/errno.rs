//! The one place filesystem errors become errno values.

use fuser::Errno;

use crate::fs::FsError;
use crate::hub::RemoteError;

/// The errno the kernel should see for `e`. Unexpected failures are logged here, once.
pub fn errno(e: &FsError) -> Errno {
    match e {
        FsError::NotFound => Errno::ENOENT,
        FsError::NotDir => Errno::ENOTDIR,
        FsError::IsDir => Errno::EISDIR,
        FsError::NotSymlink => Errno::EINVAL,
        FsError::ReadOnly => Errno::EROFS,
        FsError::NameTooLong => Errno::ENAMETOOLONG,
        FsError::InvalidName => Errno::EINVAL,
        FsError::BadHandle => Errno::EBADF,
        FsError::Unsupported => Errno::ENOTSUP,
        FsError::Exists => Errno::EEXIST,
        FsError::NotEmpty => Errno::ENOTEMPTY,
        FsError::NoSpace => Errno::ENOSPC,
        FsError::NotPermitted => Errno::EPERM,
        FsError::Invalid => Errno::EINVAL,
        FsError::Io(io) => {
            tracing::warn!(error = %io, "local I/O error");
            Errno::from(io.kind())
        }
        FsError::Remote(r) => remote_errno(r),
    }
}

/// 404 → ENOENT, 401/403 → EACCES, 413/507 → ENOSPC, 429 after retries → EAGAIN, else EIO.
fn remote_errno(e: &RemoteError) -> Errno {
    match e {
        RemoteError::NotFound(_) => Errno::ENOENT,
        RemoteError::Unauthorized(_) | RemoteError::Forbidden(_) => {
            tracing::warn!(error = %e, "remote refused access");
            Errno::EACCES
        }
        RemoteError::NoSpace(_) => Errno::ENOSPC,
        RemoteError::RateLimited(_) => {
            tracing::warn!(error = %e, "rate limited after retries");
            Errno::EAGAIN
        }
        RemoteError::Unavailable(_) | RemoteError::Invalid(_) | RemoteError::Other(_) => {
            tracing::warn!(error = %e, "remote failure");
            Errno::EIO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_status_table() {
        let cases = [
            (RemoteError::from_status(404, "x".into()), Errno::ENOENT),
            (RemoteError::from_status(401, "x".into()), Errno::EACCES),
            (RemoteError::from_status(403, "x".into()), Errno::EACCES),
            (RemoteError::from_status(413, "x".into()), Errno::ENOSPC),
            (RemoteError::from_status(507, "x".into()), Errno::ENOSPC),
            (RemoteError::from_status(429, "x".into()), Errno::EAGAIN),
            (RemoteError::from_status(503, "x".into()), Errno::EIO),
            (RemoteError::from_status(500, "x".into()), Errno::EIO),
        ];
        for (err, want) in cases {
            assert_eq!(errno(&FsError::Remote(err.clone())), want, "{err}");
        }
        assert_eq!(errno(&FsError::ReadOnly), Errno::EROFS);
    }
}
