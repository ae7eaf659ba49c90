//! The test data: incompressible files of the chosen sizes (imported into one bucket), a
//! bucket whose directory gets 10,000 entries, a local twin of that directory, and the
//! emulator configuration that loads them.

use std::path::{Path, PathBuf};

use hf_csi::emulator::{EmulatorConfig, Import, TokenScope};

use crate::measure::{MIB, write_pattern};

pub const DATA_BUCKET: &str = "bench/data";
pub const MANY_BUCKET: &str = "bench/many";
pub const MILLION_BUCKET: &str = "bench/million";
/// The bucket the write scenarios write into (every write goes to a new path).
pub const WRITE_BUCKET: &str = "bench/writes";
/// The directory of [`MANY_BUCKET`] that holds [`MANY_ENTRIES`] files.
pub const MANY_DIR: &str = "big";
pub const MANY_ENTRIES: usize = 10_000;
pub const READ_TOKEN: &str = "bench-reader";
pub const WRITE_TOKEN: &str = "bench-writer";

/// One test file, present both locally and in [`DATA_BUCKET`].
#[derive(Debug, Clone)]
pub struct DataFile {
    pub size: u64,
    /// Path inside the bucket (and inside a mount of it).
    pub remote: String,
    /// The local copy, on the same disk as everything else: the local-disk baseline.
    pub local: PathBuf,
}

impl DataFile {
    pub fn label(&self) -> String {
        format!("{} MiB", self.size / MIB)
    }
}

pub struct Dataset {
    pub files: Vec<DataFile>,
    data_dir: PathBuf,
    seed_dir: PathBuf,
    /// A local directory with [`MANY_ENTRIES`] empty files (the `ls -l` baseline).
    pub local_many: PathBuf,
}

impl Dataset {
    /// Writes the files under `root`.
    pub fn generate(root: &Path, sizes_mib: &[u64]) -> Result<Dataset, String> {
        let data_dir = root.join("data");
        let seed_dir = root.join("seed");
        let local_many = root.join("local-many");
        for d in [&data_dir, &seed_dir, &local_many] {
            std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        }
        let mut files = Vec::new();
        for (i, mib) in sizes_mib.iter().enumerate() {
            let remote = format!("f{mib}M.bin");
            let local = data_dir.join(&remote);
            write_pattern(&local, mib * MIB, 1000 + i as u64)?;
            files.push(DataFile { size: mib * MIB, remote, local });
        }
        std::fs::write(seed_dir.join("seed.txt"), b"x").map_err(|e| format!("writing the seed file: {e}"))?;
        for i in 0..MANY_ENTRIES {
            let p = local_many.join(format!("f{i:05}"));
            std::fs::File::create(&p).map_err(|e| format!("creating {}: {e}", p.display()))?;
        }
        Ok(Dataset { files, data_dir, seed_dir, local_many })
    }

    /// Emulator settings that import the data and, if asked, add the synthetic bucket.
    pub fn emulator_config(&self, hub_dir: &Path, million: Option<u64>) -> EmulatorConfig {
        let mut cfg = EmulatorConfig::new(hub_dir);
        cfg.tokens = vec![(READ_TOKEN.into(), TokenScope::Read), (WRITE_TOKEN.into(), TokenScope::Write)];
        cfg.imports = vec![
            Import::Bucket { id: DATA_BUCKET.into(), dir: self.data_dir.clone() },
            Import::Bucket { id: MANY_BUCKET.into(), dir: self.seed_dir.clone() },
            Import::Bucket { id: WRITE_BUCKET.into(), dir: self.seed_dir.clone() },
        ];
        if let Some(n) = million {
            cfg.synthetic_buckets = vec![(MILLION_BUCKET.into(), n)];
        }
        cfg
    }
}

/// Adds [`MANY_ENTRIES`] entries under [`MANY_DIR`] in one batch, all pointing at the Xet
/// hash of the already uploaded seed file (as a client that uploaded once would).
pub async fn register_many(endpoint: &str) -> Result<(), String> {
    let client = hf_hub::HFClient::builder()
        .endpoint(endpoint)
        .token(WRITE_TOKEN)
        .cache_enabled(false)
        .build()
        .map_err(|e| format!("hf-hub client: {e}"))?;
    let (ns, name) = MANY_BUCKET.split_once('/').unwrap_or_default();
    let bucket = client.bucket(ns, name);
    let seed = bucket
        .get_paths_info()
        .paths(vec!["seed.txt".into()])
        .send()
        .await
        .map_err(|e| format!("paths-info of the seed: {e}"))?;
    let hash = match seed.first() {
        Some(hf_hub::buckets::BucketTreeEntry::File { xet_hash, .. }) => xet_hash.clone(),
        other => return Err(format!("unexpected seed entry {other:?}")),
    };
    let adds = (0..MANY_ENTRIES)
        .map(|i| hf_hub::buckets::BucketAddFile {
            path: format!("{MANY_DIR}/f{i:05}"),
            xet_hash: hash.clone(),
            size: 1,
            mtime: None,
            content_type: None,
        })
        .collect();
    bucket
        .batch_operations()
        .add_files(adds)
        .send()
        .await
        .map_err(|e| format!("registering {MANY_ENTRIES} entries: {e}"))
}
