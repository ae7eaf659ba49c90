//! `hf-csi-bench`: the benchmark harness. Starts the Hub emulator in-process behind a network
//! profile, mounts test data with the real `hf-csi` binary, measures reads, listings, memory
//! and fio jobs next to their baselines, and prints the results (never asserts on them).

mod cleanup;
mod dataset;
mod fio;
mod hubstats;
mod machine;
mod measure;
mod mounts;
mod profile;
mod report;
mod rss;
mod scenarios;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

use hf_csi::emulator::Emulator;

use crate::cleanup::RunDir;
use crate::dataset::Dataset;
use crate::profile::{NetProxy, Profile};
use crate::report::ProfileReport;
use crate::scenarios::Ctx;

#[derive(Debug, Parser)]
#[command(
    name = "hf-csi-bench",
    about = "Benchmarks hf-csi mounts against local disk and whole-file downloads (needs root and /dev/fuse)"
)]
struct Args {
    /// Network profiles to run, in order: local (loopback), lan (1 ms RTT), wan (30 ms RTT,
    /// 200 Mbit/s).
    #[arg(long, value_delimiter = ',', default_value = "local")]
    profile: Vec<String>,
    /// Test file sizes in MiB.
    #[arg(long, value_delimiter = ',', default_value = "50,200,500")]
    sizes: Vec<u64>,
    /// Smoke run: one 16 MiB file, 3 s fio jobs, a 20,000-entry walk instead of a million.
    #[arg(long)]
    quick: bool,
    /// Skip the walk of the million-entry bucket (slow).
    #[arg(long)]
    skip_million: bool,
    /// Entries in the synthetic bucket that `find` walks.
    #[arg(long, default_value_t = 1_000_000)]
    million_entries: u64,
    /// Seconds each time-based (random-read) fio job runs.
    #[arg(long, default_value_t = 10)]
    fio_runtime: u64,
    /// Also write every number, with the machine description, to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Scratch space (a `run-PID` directory inside it is removed at the end).
    #[arg(long, default_value = "/tmp/hf-csi-bench")]
    work_dir: PathBuf,
    /// Leave the run directory in place (mount logs, data) for inspection.
    #[arg(long)]
    keep_work_dir: bool,
    /// The `hf-csi` binary (default: next to this one).
    #[arg(long)]
    hf_csi: Option<PathBuf>,
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.quick {
        args.sizes = vec![16];
        args.fio_runtime = args.fio_runtime.min(3);
        args.million_entries = args.million_entries.min(20_000);
    }
    // SAFETY: no other thread exists yet. hf-xet's chunk cache would let a second download
    // of the same file in this process skip the network; token files must not leak in.
    unsafe {
        std::env::set_var("HF_XET_CHUNK_CACHE_SIZE_BYTES", "0");
        std::env::set_var("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HF_CSI_BENCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(&args) {
        Ok(misses) => {
            eprintln!("done ({misses} targets missed; see the tables)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Refuses to start without what every scenario needs, naming what is missing.
fn preflight(args: &Args) -> Result<(PathBuf, Vec<Profile>), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("hf-csi-bench needs root (it mounts FUSE filesystems and evicts page caches); run it with sudo or scripts/bench".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(
            "/dev/fuse is missing: load the fuse module (modprobe fuse) or give the container the device".into()
        );
    }
    let bin = match &args.hf_csi {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|e| format!("locating this executable: {e}"))?.with_file_name("hf-csi"),
    };
    if !bin.is_file() {
        return Err(format!(
            "{} not found: build it first (cargo build --release --bins) or pass --hf-csi",
            bin.display()
        ));
    }
    if args.sizes.is_empty() || args.sizes.iter().any(|s| *s < 2) {
        return Err("--sizes takes sizes in MiB, each at least 2".into());
    }
    let profiles = args.profile.iter().map(|p| Profile::by_name(p)).collect::<Result<Vec<_>, _>>()?;
    Ok((bin, profiles))
}

/// Runs everything; returns the number of missed targets.
fn run(args: &Args) -> Result<usize, String> {
    let (bin, profiles) = preflight(args)?;
    let run_dir = RunDir::create(&args.work_dir, args.keep_work_dir)
        .map_err(|e| format!("work dir {}: {e}", args.work_dir.display()))?;
    let fio = fio::version();
    let machine = machine::Machine::probe(&run_dir.path, &fio);
    let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    println!("# hf-csi bench\n\nMachine: {}\n", machine.describe());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-rt")
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    cleanup::install_signal_handler(&rt);

    let t = Instant::now();
    eprintln!("generating test files ({} MiB)", args.sizes.iter().map(u64::to_string).collect::<Vec<_>>().join(", "));
    let data = Dataset::generate(&run_dir.sub("src"), &args.sizes)?;
    let million = (!args.skip_million).then_some(args.million_entries);
    let cfg = data.emulator_config(&run_dir.sub("hub"), million);
    eprintln!("starting the emulator and importing");
    let emulator = rt.block_on(Emulator::start(cfg)).map_err(|e| format!("starting the emulator: {e}"))?;
    rt.block_on(dataset::register_many(&emulator.endpoint()))?;
    let token_file = run_dir.path.join("token");
    std::fs::write(&token_file, dataset::READ_TOKEN).map_err(|e| format!("token file: {e}"))?;
    let write_token_file = run_dir.path.join("token-write");
    std::fs::write(&write_token_file, dataset::WRITE_TOKEN).map_err(|e| format!("token file: {e}"))?;
    eprintln!("setup took {:.0} s", t.elapsed().as_secs_f64());

    let mut reports = Vec::new();
    for profile in &profiles {
        let report =
            run_profile(args, &rt, &emulator, profile, &data, &bin, (&token_file, &write_token_file), &run_dir, &fio)?;
        println!("{}", report.markdown());
        reports.push(report);
    }
    rt.block_on(emulator.shutdown());

    let misses = reports.iter().map(|r| r.verdicts().1).sum();
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "started": started,
            "machine": machine,
            "options": {
                "profiles": args.profile,
                "sizes_mib": args.sizes,
                "quick": args.quick,
                "million_entries": million,
                "fio_runtime_secs": args.fio_runtime,
            },
            "units": "MB/s = 10^6 bytes per second; MiB = 2^20 bytes; times in ms unless the unit says s",
            "profiles": reports.iter().map(ProfileReport::to_json).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    drop(run_dir);
    Ok(misses)
}

#[allow(clippy::too_many_arguments)]
fn run_profile(
    args: &Args,
    rt: &tokio::runtime::Runtime,
    emulator: &Emulator,
    profile: &Profile,
    data: &Dataset,
    bin: &Path,
    (token_file, write_token_file): (&Path, &Path),
    run_dir: &RunDir,
    fio: &Result<String, String>,
) -> Result<ProfileReport, String> {
    let t = Instant::now();
    eprintln!("profile {}: {}", profile.name, profile.describe());
    let upstream =
        emulator.endpoint().trim_start_matches("http://").parse().map_err(|e| format!("emulator address: {e}"))?;
    let proxy = if profile.is_direct() {
        None
    } else {
        Some(NetProxy::start(upstream, profile).map_err(|e| format!("network proxy: {e}"))?)
    };
    let endpoint = proxy.as_ref().map_or_else(|| emulator.endpoint(), NetProxy::endpoint);
    let ctx = Ctx::new(
        rt,
        emulator,
        profile,
        endpoint,
        bin,
        token_file,
        write_token_file,
        run_dir.sub(&profile.name),
        fio.clone(),
        args.fio_runtime,
    );

    let mut rows = scenarios::network::run(&ctx);
    for (i, file) in data.files.iter().enumerate() {
        eprintln!("  {}: baselines", file.label());
        let offsets = measure::random_offsets(file.size, 100, 42 + i as u64);
        let base = scenarios::baseline::measure(&ctx, file, &offsets);
        eprintln!("  {}: mount reads", file.label());
        rows.extend(scenarios::reads::run(&ctx, file, &base, &offsets));
        eprintln!("  {}: writes", file.label());
        rows.extend(scenarios::writes::run(&ctx, file));
    }
    if let Some(file) = data.files.last() {
        eprintln!("  fio on the {} file", file.label());
        rows.extend(scenarios::fio_jobs::run(&ctx, file));
    }
    eprintln!("  ls -l of 10,000 entries");
    rows.extend(scenarios::listing::run(&ctx, &data.local_many));
    if args.skip_million {
        ctx.note("the million-entry walk was skipped (--skip-million)");
    } else {
        eprintln!("  find over {} entries", args.million_entries);
        rows.extend(scenarios::million::run(&ctx, args.million_entries));
    }
    let mut details = ctx.details.take();
    if let Some(p) = &proxy {
        let s = p.stats();
        details.insert(
            "proxy".into(),
            serde_json::json!({"connections": s.connections, "bytes_up": s.bytes_up, "bytes_down": s.bytes_down}),
        );
    }
    details.insert(
        "peak_rss_mib_by_scenario".into(),
        serde_json::json!(ctx.rss.borrow().iter().map(|(s, r)| (s.clone(), r.peak_mib)).collect::<Vec<_>>()),
    );
    let mut notes = ctx.notes.take();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    notes.push(format!(
        "load average at the end of this profile: {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    ));
    drop(ctx);
    drop(proxy);
    Ok(ProfileReport {
        name: profile.name.clone(),
        description: profile.describe(),
        rtt_ms: profile.rtt_ms(),
        bandwidth_mbit: profile.bandwidth_mbit(),
        rows,
        notes,
        details,
        seconds: t.elapsed().as_secs_f64(),
    })
}
