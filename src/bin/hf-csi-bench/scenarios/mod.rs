//! The measurements, one module per kind, sharing a [`Ctx`]: where the Hub is (through the
//! profile's proxy), how to start a fresh mount, and where results and side notes go.

pub mod baseline;
pub mod fio_jobs;
pub mod listing;
pub mod million;
pub mod network;
pub mod reads;
pub mod writes;

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};

use hf_csi::emulator::Emulator;

use crate::hubstats::HubStats;
use crate::mounts::{Mount, MountSpec};
use crate::profile::Profile;
use crate::rss::{self, Rss};

/// Everything a scenario needs, for one profile.
pub struct Ctx<'a> {
    pub rt: &'a tokio::runtime::Runtime,
    pub emulator: &'a Emulator,
    pub profile: &'a Profile,
    /// The Hub as clients see it: the proxy's address, or the emulator's for `local`.
    pub endpoint: String,
    pub bin: &'a Path,
    pub token_file: &'a Path,
    /// A token file with write access (for the write scenarios).
    pub write_token_file: &'a Path,
    /// Scratch directory of this profile.
    pub dir: PathBuf,
    pub fio: Result<String, String>,
    pub fio_runtime: u64,
    counter: Cell<u32>,
    /// Peak RSS of every mount, by scenario.
    pub rss: RefCell<Vec<(String, Rss)>>,
    pub details: RefCell<serde_json::Map<String, serde_json::Value>>,
    pub notes: RefCell<Vec<String>>,
}

impl<'a> Ctx<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rt: &'a tokio::runtime::Runtime,
        emulator: &'a Emulator,
        profile: &'a Profile,
        endpoint: String,
        bin: &'a Path,
        token_file: &'a Path,
        write_token_file: &'a Path,
        dir: PathBuf,
        fio: Result<String, String>,
        fio_runtime: u64,
    ) -> Ctx<'a> {
        Ctx {
            rt,
            emulator,
            profile,
            endpoint,
            bin,
            token_file,
            write_token_file,
            dir,
            fio,
            fio_runtime,
            counter: Cell::new(0),
            rss: RefCell::new(Vec::new()),
            details: RefCell::new(serde_json::Map::new()),
            notes: RefCell::new(Vec::new()),
        }
    }

    /// A new numbered scratch directory for `scenario`.
    pub fn fresh_dir(&self, scenario: &str) -> PathBuf {
        let n = self.counter.get() + 1;
        self.counter.set(n);
        let slug: String = scenario.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        let p = self.dir.join(format!("{n:03}-{slug}"));
        let _ = std::fs::create_dir_all(&p);
        p
    }

    /// Mounts `bucket` with the read token and a fresh cache directory, or with `cache` when
    /// given.
    pub fn mount(&self, bucket: &str, scenario: &str, cache: Option<&Path>) -> Result<Mount, String> {
        self.mount_with(bucket, scenario, cache, self.token_file, Vec::new())
    }

    /// Mounts `bucket` read-write: the write token, a fresh cache directory and
    /// `--flush-debounce-ms` [`writes::DEBOUNCE_MS`].
    pub fn mount_rw(&self, bucket: &str, scenario: &str) -> Result<Mount, String> {
        let debounce = vec!["--flush-debounce-ms".into(), writes::DEBOUNCE_MS.to_string()];
        self.mount_with(bucket, scenario, None, self.write_token_file, debounce)
    }

    fn mount_with(
        &self,
        bucket: &str,
        scenario: &str,
        cache: Option<&Path>,
        token_file: &Path,
        extra_args: Vec<String>,
    ) -> Result<Mount, String> {
        let base = self.fresh_dir(scenario);
        Mount::start(MountSpec {
            bin: self.bin,
            endpoint: &self.endpoint,
            bucket,
            mountpoint: base.join("mnt"),
            cache_dir: cache.map_or_else(|| base.join("cache"), Path::to_path_buf),
            token_file,
            log: base.join("mount.log"),
            extra_args,
        })
    }

    /// Records the mount's peak RSS under `scenario`, then unmounts it. Fails if the mount
    /// process died during the scenario (with its last log lines).
    pub fn finish(&self, mut mount: Mount, scenario: &str) -> Result<Rss, String> {
        if let Some(died) = mount.exited() {
            return Err(died);
        }
        let r = rss::read(mount.pid());
        if let Ok(r) = r {
            self.rss.borrow_mut().push((scenario.to_string(), r));
        }
        mount.stop()?;
        r
    }

    /// Runs `f` in a fresh mount of `bucket`; returns its result and what it cost the Hub
    /// (requests made while mounting are not counted).
    pub fn in_fresh_mount<T>(
        &self,
        bucket: &str,
        scenario: &str,
        f: impl FnOnce(&Mount) -> Result<T, String>,
    ) -> Result<(T, HubStats), String> {
        let m = self.mount(bucket, scenario, None)?;
        let before = self.hub();
        let cpu = self.cpu_start(&m);
        let out = f(&m);
        self.cpu_end(&m, scenario, cpu);
        let cost = self.hub().since(&before);
        let finished = self.finish(m, scenario);
        let out = out.map_err(|e| match &finished {
            Err(f) => format!("{e}; then: {f}"),
            Ok(_) => e,
        })?;
        finished?;
        Ok((out, cost))
    }

    /// CPU clocks at the start of a measurement: (mount process, this process, wall).
    pub fn cpu_start(&self, m: &Mount) -> (f64, f64, std::time::Instant) {
        (rss::cpu_secs(m.pid()).unwrap_or(f64::NAN), rss::own_cpu_secs(), std::time::Instant::now())
    }

    /// Records where the CPU went during a measurement: the mount process, and this process
    /// (the emulator, the network proxy and the reading thread).
    pub fn cpu_end(&self, m: &Mount, scenario: &str, start: (f64, f64, std::time::Instant)) {
        let mount = rss::cpu_secs(m.pid()).unwrap_or(f64::NAN) - start.0;
        let bench = rss::own_cpu_secs() - start.1;
        self.detail(
            format!("cpu/{scenario}"),
            serde_json::json!({
                "wall_s": start.2.elapsed().as_secs_f64(),
                "mount_cpu_s": mount,
                "bench_cpu_s": bench,
            }),
        );
    }

    pub fn hub(&self) -> HubStats {
        HubStats::snapshot(self.emulator)
    }

    pub fn detail(&self, key: impl Into<String>, value: serde_json::Value) {
        self.details.borrow_mut().insert(key.into(), value);
    }

    pub fn note(&self, text: impl Into<String>) {
        self.notes.borrow_mut().push(text.into());
    }

    /// Profile RTT in ms.
    pub fn rtt_ms(&self) -> f64 {
        self.profile.rtt_ms()
    }

    /// Highest peak RSS recorded for the scenarios `names`.
    pub fn peak_rss(&self, names: &[String]) -> Result<f64, String> {
        self.rss
            .borrow()
            .iter()
            .filter(|(s, _)| names.contains(s))
            .map(|(_, r)| r.peak_mib)
            .reduce(f64::max)
            .ok_or_else(|| "no mount of this kind ran".to_string())
    }
}
