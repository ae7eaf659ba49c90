//! A local Hugging Face Hub: the bucket and repo JSON API, resolve downloads and the Xet CAS,
//! persistent on disk, with fault injection and Prometheus metrics. Every other test of
//! the project runs against it; its own contract is the official `hf-hub` / `hf-xet` clients.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hf_csi::emulator::EmulatorError> {
//! use hf_csi::emulator::{Emulator, EmulatorConfig, TokenScope};
//! let mut cfg = EmulatorConfig::new("/tmp/hub-data");
//! cfg.tokens.push(("writer".into(), TokenScope::Write));
//! let hub = Emulator::start(cfg).await?;
//! let client = hf_hub::HFClient::builder().endpoint(hub.endpoint()).token("writer").build();
//! # drop(client);
//! hub.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! HTTP surface (one port; see `/work/shared/HUB_API.md` for the Hub's own):
//! - buckets: `POST|GET|DELETE /api/buckets/{ns}/{name}`, `GET /api/buckets/{ns}`,
//!   `GET .../tree[/{prefix}]`, `POST .../paths-info`, `POST .../batch` (NDJSON),
//!   `GET .../xet-read-token|xet-write-token`, `HEAD|GET /buckets/{ns}/{name}/resolve/{path}`;
//! - repos (`models|datasets|spaces`): `GET /api/{type}/{ns}/{name}[/revision/{rev}]`,
//!   `.../tree/{rev}[/{path}]`, `POST .../paths-info/{rev}`, `.../refs`, `.../commits/{rev}`,
//!   `.../xet-read-token/{rev}`, `HEAD|GET /{|datasets/|spaces/}{ns}/{name}/resolve/{rev}/{path}`;
//! - the CAS (`/v1/*`, `/v2/*`, upload grant URLs), proxied to xet's `LocalServer`;
//! - `GET /metrics` (Prometheus text), `GET|POST /admin/faults` ([`Faults`] as JSON).
//!
//! Module map: [`config`] (typed settings and flag parsers), `server` (routes, middleware),
//! `buckets`/`batch`/`repos`/`resolve` (API handlers), `cas`/`cas_proxy` (the CAS and its
//! public proxy), `store` (state and persistence), `auth`, `listing` (pagination),
//! `synthetic`, `import`, `faults`, `metrics`, `error`.

mod auth;
mod batch;
mod buckets;
mod cas;
mod cas_proxy;
pub mod config;
mod error;
mod faults;
mod import;
mod listing;
mod metrics;
mod paths;
mod repos;
mod resolve;
mod server;
mod store;
mod synthetic;
mod timefmt;
mod xorb_reads;

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::{EmulatorConfig, Import, RepoKind, TokenScope};
pub use error::EmulatorError;
pub use faults::{FaultScope, Faults};

use auth::Auth;
use cas::Cas;
use server::{AppState, Parts};
use store::Store;
use synthetic::SyntheticBucket;

/// How long shutdown waits for in-flight requests before cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running emulator. Dropping it stops serving; [`Emulator::shutdown`] also waits.
pub struct Emulator {
    endpoint: String,
    state: AppState,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl Emulator {
    /// Binds the listener, opens the data directory, starts the CAS, runs the imports and
    /// then serves in background tasks. Everything imported is visible once this returns.
    pub async fn start(cfg: EmulatorConfig) -> Result<Emulator, EmulatorError> {
        cfg.validate().map_err(EmulatorError::Config)?;
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| EmulatorError::io(format!("creating {}", cfg.data_dir.display()), e))?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| EmulatorError::io(format!("binding {}", cfg.listen), e))?;
        let addr = listener.local_addr().map_err(|e| EmulatorError::io("reading the bound address", e))?;
        let endpoint = format!("http://{}", reachable(addr));

        let store = Store::open(&cfg.data_dir)?;
        let auth = Auth::load(&cfg.data_dir, &cfg.tokens)?;
        let cas = Cas::start(&cfg.data_dir).await?;
        let synthetic = match prepare(&cfg, &store, &cas).await {
            Ok(s) => s,
            Err(e) => {
                cas.stop().await;
                return Err(e);
            }
        };

        let (router, state) = server::build(Parts {
            store,
            auth,
            cas,
            faults: cfg.initial_faults(),
            synthetic,
            page_size: cfg.page_size,
            endpoint: endpoint.clone(),
        })?;
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let served = axum::serve(listener, router).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            if let Err(e) = served.await {
                tracing::error!(error = %e, "emulator server stopped");
            }
        });
        tracing::info!(endpoint = endpoint.as_str(), data_dir = %cfg.data_dir.display(), "hub emulator listening");
        Ok(Emulator { endpoint, state, stop: Some(tx), server: Some(server) })
    }

    /// `http://127.0.0.1:PORT`: the Hub endpoint (and CAS URL) clients use.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// The same text as `GET /metrics`.
    pub fn metrics_text(&self) -> String {
        self.state.metrics.render()
    }

    /// Replaces the fault settings (as `POST /admin/faults` does).
    pub fn set_faults(&self, f: Faults) {
        if let Err(e) = f.validate() {
            tracing::warn!(error = e.as_str(), "applying questionable fault settings");
        }
        self.state.faults.set(f);
    }

    /// The fault settings in force.
    pub fn faults(&self) -> Faults {
        self.state.faults.get()
    }

    /// Stops accepting requests, lets in-flight ones finish (for a few seconds at most),
    /// then stops the CAS. All state is already on disk.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(mut server) = self.server.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await.is_err()
        {
            server.abort();
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, self.state.cas.stop()).await.is_err() {
            tracing::warn!("the internal CAS did not stop in time");
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Imports, privacy flags and synthetic buckets, in that order.
async fn prepare(
    cfg: &EmulatorConfig,
    store: &Store,
    cas: &Cas,
) -> Result<BTreeMap<String, SyntheticBucket>, EmulatorError> {
    let mut private_buckets = HashSet::new();
    let mut private_repos = HashSet::new();
    for id in &cfg.private {
        match config::parse_private_id(id).map_err(EmulatorError::Config)? {
            (None, id) => private_buckets.insert(id),
            (Some(kind), id) => private_repos.insert((kind, id)),
        };
    }
    import::run_all(store, cas, &cfg.imports, |import| match import {
        Import::Bucket { id, .. } => private_buckets.contains(id),
        Import::Repo { kind, id, .. } => private_repos.contains(&(*kind, id.clone())),
    })
    .await?;
    {
        let mut state = store.write();
        for id in &private_buckets {
            if let Some(b) = state.buckets.get_mut(id).filter(|b| !b.private) {
                b.private = true;
                store.save_bucket(b)?;
            }
        }
        for key in &private_repos {
            if let Some(r) = state.repos.get_mut(key).filter(|r| !r.private) {
                r.private = true;
                store.save_repo(r)?;
            }
        }
        let synthetic_ids: HashSet<&String> = cfg.synthetic_buckets.iter().map(|(id, _)| id).collect();
        for id in private_buckets.iter().filter(|id| !state.buckets.contains_key(*id) && !synthetic_ids.contains(id)) {
            tracing::warn!(bucket = id.as_str(), "--private names a bucket that does not exist");
        }
        for (kind, id) in private_repos.iter().filter(|key| !state.repos.contains_key(*key)) {
            tracing::warn!(repo = id.as_str(), kind = kind.plural(), "--private names a repo that does not exist");
        }
    }
    let mut synthetic = BTreeMap::new();
    if !cfg.synthetic_buckets.is_empty() {
        let blob = cas.upload_bytes(synthetic::CONTENT.to_vec(), "synthetic").await?;
        let now = timefmt::now_ms();
        for (id, count) in &cfg.synthetic_buckets {
            if store.read().buckets.contains_key(id) {
                return Err(EmulatorError::Config(format!("synthetic bucket {id} clashes with a stored bucket")));
            }
            let b = SyntheticBucket::new(id, *count, private_buckets.contains(id), now, blob.hash.clone());
            synthetic.insert(id.clone(), b);
        }
    }
    Ok(synthetic)
}

/// An address clients can connect to: wildcard binds are reached over loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port()),
        _ => addr,
    }
}
