//! `hf-csi hub`: the local Hugging Face Hub emulator as a standalone server.
//!
//! Prints exactly one line on stdout, `hf-csi hub listening on http://ADDR`, once imports
//! are done and requests are served; logs go to stderr. Runs until SIGINT or SIGTERM.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use hf_csi::emulator::config::{
    self, DEFAULT_PAGE_SIZE, parse_bucket_import, parse_fail_rate, parse_page_size, parse_synthetic_bucket,
    parse_token_spec,
};
use hf_csi::emulator::{Emulator, EmulatorConfig, Import, RepoKind, TokenScope};

#[derive(Debug, Clone, Args)]
pub struct HubArgs {
    /// Directory holding all state (metadata, blobs, CAS data); reused across restarts.
    #[arg(long, env = "HF_CSI_HUB_DATA_DIR", value_name = "DIR")]
    pub data_dir: PathBuf,

    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "HF_CSI_HUB_LISTEN", default_value = "127.0.0.1:7860", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Accept bearer token NAME with the given scope (repeatable).
    #[arg(long = "token", value_name = "NAME:read|write", value_parser = parse_token_spec)]
    pub tokens: Vec<(String, TokenScope)>,

    /// Upload every file under DIR into bucket NS/NAME (repeatable).
    #[arg(long = "import-bucket", value_name = "NS/NAME=DIR", value_parser = parse_bucket_import)]
    pub import_buckets: Vec<Import>,

    /// Commit DIR as the new `main` of model NS/NAME, optionally tagged (repeatable, in order).
    #[arg(long = "import-model", value_name = "NS/NAME=DIR[@TAG]", value_parser = parse_model_import)]
    pub import_models: Vec<Import>,

    /// Commit DIR as the new `main` of dataset NS/NAME, optionally tagged (repeatable, in order).
    #[arg(long = "import-dataset", value_name = "NS/NAME=DIR[@TAG]", value_parser = parse_dataset_import)]
    pub import_datasets: Vec<Import>,

    /// Commit DIR as the new `main` of space NS/NAME, optionally tagged (repeatable, in order).
    #[arg(long = "import-space", value_name = "NS/NAME=DIR[@TAG]", value_parser = parse_space_import)]
    pub import_spaces: Vec<Import>,

    /// Make a bucket (NS/NAME) or repo (models|datasets|spaces/NS/NAME) private (repeatable).
    #[arg(long = "private", value_name = "ID", value_parser = parse_private)]
    pub private: Vec<String>,

    /// Delay every answer (API and CAS) by this many milliseconds.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub latency_ms: u64,

    /// Answer this fraction of requests with 429 (Retry-After: 1) or 503, half each.
    #[arg(long, default_value = "0", value_name = "P", value_parser = parse_fail_rate)]
    pub fail_rate: f64,

    /// Largest page of tree and list responses.
    #[arg(long, default_value_t = DEFAULT_PAGE_SIZE, value_name = "N", value_parser = parse_page_size)]
    pub page_size: usize,

    /// Serve a read-only public bucket of COUNT synthesized files (repeatable).
    #[arg(long = "synthetic-bucket", value_name = "NS/NAME=COUNT", value_parser = parse_synthetic_bucket)]
    pub synthetic_buckets: Vec<(String, u64)>,
}

fn parse_model_import(s: &str) -> Result<Import, String> {
    config::parse_repo_import(RepoKind::Model, s)
}

fn parse_dataset_import(s: &str) -> Result<Import, String> {
    config::parse_repo_import(RepoKind::Dataset, s)
}

fn parse_space_import(s: &str) -> Result<Import, String> {
    config::parse_repo_import(RepoKind::Space, s)
}

fn parse_private(s: &str) -> Result<String, String> {
    config::parse_private_id(s).map(|_| s.to_string())
}

impl HubArgs {
    /// The emulator configuration these flags describe.
    pub fn into_config(self) -> Result<EmulatorConfig, String> {
        let mut cfg = EmulatorConfig::new(self.data_dir);
        cfg.listen = self.listen;
        cfg.tokens = self.tokens;
        cfg.imports = [self.import_buckets, self.import_models, self.import_datasets, self.import_spaces].concat();
        cfg.private = self.private;
        cfg.latency_ms = self.latency_ms;
        cfg.fail_rate = self.fail_rate;
        cfg.page_size = self.page_size;
        cfg.synthetic_buckets = self.synthetic_buckets;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Starts the emulator, announces it on stdout and serves until SIGINT or SIGTERM.
pub async fn run(args: HubArgs) -> Result<(), String> {
    let cfg = args.into_config()?;
    let hub = Emulator::start(cfg).await.map_err(|e| format!("starting the Hub emulator: {e}"))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "hf-csi hub listening on {}", hub.endpoint()).map_err(|e| format!("stdout: {e}"))?;
        out.flush().map_err(|e| format!("stdout: {e}"))?;
    }
    let signal = wait_for_signal().await;
    tracing::info!(signal, "shutting down the Hub emulator");
    hub.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            tracing::warn!("cannot install signal handlers; waiting for Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        hub: HubArgs,
    }

    fn parse(args: &[&str]) -> Result<HubArgs, String> {
        let argv = std::iter::once("hub").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|c| c.hub).map_err(|e| e.to_string())
    }

    #[test]
    fn full_command_line() {
        let args = parse(&[
            "--data-dir=/tmp/d",
            "--listen=127.0.0.1:0",
            "--token=alice:write",
            "--token=bob:read",
            "--import-bucket=ns/b=/src/b",
            "--import-model=ns/m=/src/v1@v1",
            "--import-model=ns/m=/src/v2",
            "--import-dataset=ns/d=/src/d",
            "--private=ns/b",
            "--private=models/ns/m",
            "--latency-ms=5",
            "--fail-rate=0.25",
            "--page-size=3",
            "--synthetic-bucket=big/one=2500",
        ])
        .unwrap();
        let cfg = args.into_config().unwrap();
        assert_eq!(cfg.tokens, vec![("alice".into(), TokenScope::Write), ("bob".into(), TokenScope::Read)]);
        assert_eq!(cfg.imports.len(), 4);
        assert_eq!(
            cfg.imports[1],
            Import::Repo { kind: RepoKind::Model, id: "ns/m".into(), dir: "/src/v1".into(), tag: Some("v1".into()) }
        );
        assert_eq!((cfg.latency_ms, cfg.fail_rate, cfg.page_size), (5, 0.25, 3));
        assert_eq!(cfg.synthetic_buckets, vec![("big/one".into(), 2500)]);
        assert_eq!(cfg.private, vec!["ns/b".to_string(), "models/ns/m".to_string()]);
    }

    #[test]
    fn defaults() {
        let cfg = parse(&["--data-dir", "/tmp/d"]).unwrap().into_config().unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:7860".parse().unwrap());
        assert_eq!(cfg.page_size, DEFAULT_PAGE_SIZE);
        assert!(cfg.tokens.is_empty() && cfg.imports.is_empty());
    }

    #[test]
    fn bad_values_name_the_flag_and_the_value() {
        for (flag, value) in [
            ("--token", "alice"),
            ("--token", "alice:admin"),
            ("--import-bucket", "nobucket"),
            ("--import-model", "ns/m"),
            ("--private", "things/a/b"),
            ("--fail-rate", "2"),
            ("--page-size", "0"),
            ("--synthetic-bucket", "s/b=lots"),
            ("--listen", "nowhere"),
        ] {
            let err = parse(&["--data-dir=/tmp/d", &format!("{flag}={value}")]).unwrap_err();
            assert!(err.contains(flag) && err.contains(value), "{flag}={value}: {err}");
        }
    }

    #[test]
    fn cross_flag_conflicts_are_rejected() {
        let args = parse(&["--data-dir=/tmp/d", "--token=a:read", "--token=a:write"]).unwrap();
        assert!(args.into_config().unwrap_err().contains("twice"));
        let args = parse(&["--data-dir=/tmp/d", "--import-bucket=s/b=/x", "--synthetic-bucket=s/b=5"]).unwrap();
        assert!(args.into_config().unwrap_err().contains("synthetic"));
    }
}
