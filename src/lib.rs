//! hf-csi: Hugging Face buckets and repos as POSIX volumes.
//!
//! Layers (data flows down, nothing calls upward):
//! - [`hub`]: the `Remote` trait the filesystem reads through, and its implementation on the
//!   official `hf-hub` and `hf-xet` clients;
//! - [`fs`]: the filesystem itself, independent of FUSE;
//! - [`fuse`]: the thin `fuser` adapter (errno mapping, kernel cache hints);
//! - [`emulator`]: a local Hugging Face Hub (JSON API + Xet CAS) for development and tests;
//! - [`mount`]: wiring of one mount from a typed `MountSpec`.

pub mod emulator;
pub mod fs;
pub mod fuse;
pub mod hub;
pub mod mount;
