//! Command-line parsing (clap types stay here) and dispatch to the library.

pub mod hub;
mod local;
mod mount;
mod size;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "hf-csi", version, about = "Hugging Face buckets and repos as POSIX volumes")]
struct Cli {
    /// Log filter (tracing syntax), e.g. `hf_csi=debug`; `RUST_LOG` overrides it.
    #[arg(long, global = true, env = "HF_CSI_LOG", default_value = "warn,hf_csi=info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mount a bucket or repo in the foreground (Ctrl-C unmounts).
    Mount(mount::MountArgs),
    /// Run the local Hugging Face Hub emulator (JSON API + Xet CAS).
    Hub(hub::HubArgs),
    /// The embedded default: emulator with demo data, mounted under DIR, until Ctrl-C.
    Local(local::LocalArgs),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    // Never pick up a token the user did not name (`~/.cache/huggingface/token`).
    // SAFETY: no other thread exists yet.
    unsafe { std::env::set_var("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1") };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("hf-csi").build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Mount(args) => mount::run(args).await,
            Command::Hub(args) => hub::run(args).await,
            Command::Local(args) => local::run(args).await,
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_string());
    let filter =
        tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

/// Wait for SIGINT or SIGTERM, or until `finished()` says the work ended by itself.
pub(crate) async fn wait_for_shutdown(finished: impl Fn() -> bool) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); return; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); return; }
            _ = tick.tick() => if finished() { tracing::info!("unmounted externally"); return; },
        }
    }
}
