//! [`FsError`]: why a filesystem operation failed. The adapter maps each variant to an errno
//! in one place (`fuse::errno`).

use crate::hub::RemoteError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("not a symbolic link")]
    NotSymlink,
    #[error("read-only file system")]
    ReadOnly,
    #[error("file name too long")]
    NameTooLong,
    #[error("invalid file name")]
    InvalidName,
    #[error("stale file handle")]
    BadHandle,
    #[error("operation not supported")]
    Unsupported,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("no space left in the staging area")]
    NoSpace,
    #[error("operation not permitted")]
    NotPermitted,
    #[error("invalid argument")]
    Invalid,
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("local I/O error: {0}")]
    Io(#[from] std::io::Error),
}

pub type FsResult<T> = Result<T, FsError>;
