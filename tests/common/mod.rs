//! Shared test harness: an in-process Hub emulator on loopback and real `hf-csi mount`
//! processes, cleaned up (unmounted, killed) even when a test fails.
#![allow(dead_code)]

pub mod metrics;
pub mod mounts;

use std::path::{Path, PathBuf};

use hf_csi::emulator::{Emulator, EmulatorConfig, Import, TokenScope};

pub use metrics::Metrics;
pub use mounts::MountCmd;

/// The `hf-csi` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hf-csi"))
}

/// Tests that mount need root and /dev/fuse; without them they must fail loudly, not pass.
pub fn require_fuse() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root && Path::new("/dev/fuse").exists(),
        "FUSE tests need root and /dev/fuse (run them via .ci/run as root)"
    );
}

/// A running emulator plus its scratch directory.
pub struct Hub {
    pub emu: Emulator,
    pub dir: tempfile::TempDir,
}

impl Hub {
    pub fn endpoint(&self) -> String {
        self.emu.endpoint()
    }

    pub fn metrics(&self) -> Metrics {
        Metrics::parse(&self.emu.metrics_text())
    }

    /// A fresh directory inside the scratch area.
    pub fn path(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

/// Emulator settings for a test; `tweak` adjusts the defaults.
pub async fn start_hub(tweak: impl FnOnce(&mut EmulatorConfig, &Path)) -> Hub {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EmulatorConfig::new(dir.path().join("hub"));
    cfg.tokens = vec![("reader".into(), TokenScope::Read), ("writer".into(), TokenScope::Write)];
    tweak(&mut cfg, dir.path());
    let emu = Emulator::start(cfg).await.expect("emulator starts");
    Hub { emu, dir }
}

/// Write `files` (path, bytes) under `root`.
pub fn write_tree(root: &Path, files: &[(&str, Vec<u8>)]) {
    for (p, data) in files {
        let full = root.join(p);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, data).unwrap();
    }
}

/// Deterministic pseudo-random bytes (xorshift), so large test files need no fixtures.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
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

/// Shorthand for an import.
pub fn import_bucket(id: &str, dir: &Path) -> Import {
    Import::Bucket { id: id.into(), dir: dir.to_path_buf() }
}

/// Shorthand for a repo import with an optional tag.
pub fn import_repo(kind: hf_csi::emulator::RepoKind, id: &str, dir: &Path, tag: Option<&str>) -> Import {
    Import::Repo { kind, id: id.into(), dir: dir.to_path_buf(), tag: tag.map(str::to_string) }
}
