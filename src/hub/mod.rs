//! The remote layer: the [`Remote`] trait (everything the filesystem may ask of Hugging Face
//! storage) and [`HubRemote`], its implementation on the official `hf-hub` and `hf-xet` clients.
//!
//! Nothing outside this module sees an `hf-hub` or `hf-xet` type.

mod client;
mod client_write;
mod error;
mod remote;
mod retry;
mod source;
mod token;
mod xet_reader;

pub use client::{HubRemote, HubRemoteConfig};
pub use error::RemoteError;
pub use remote::{ByteStream, CommitAdd, ContentId, EntryKind, Remote, RemoteEntry, RemoteFile, SourceInfo, Uploaded};
pub use source::{RepoKind, Source, SourceError, validate_relative_path, validate_revision};
pub use token::TokenSource;

/// `a/b` joined with `c` is `a/b/c`; either side may be empty.
pub fn join_path(a: &str, b: &str) -> String {
    client::join(a, b)
}
