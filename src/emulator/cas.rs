//! The emulator's Xet CAS: xet's `LocalServer` on an internal loopback port, plus the
//! emulator's own hf-xet session that uploads imports and reads content for resolve.
//!
//! The emulator talks to the internal port directly (no auth, faults or metrics there);
//! clients reach the same server through the public CAS proxy.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::Stream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use xet::xet_session::{Sha256Policy, XetConfig, XetDownloadStreamGroup, XetFileInfo, XetSession, XetSessionBuilder};
use xet_client::ClientError;
use xet_client::cas_client::{DirectAccessClient, LocalClient, LocalServer};
use xet_core_structures::merklehash::MerkleHash;
use xet_runtime::core::XetContext;

use super::error::{EmulatorError, Result};
use super::xorb_reads::RangedXorbReads;

/// The internal server ignores credentials; this token only satisfies the client API.
const INTERNAL_TOKEN: &str = "emulator-internal";
const INTERNAL_TOKEN_EXP: u64 = 4_102_444_800; // 2100-01-01

/// A file stored in the CAS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub hash: String,
    pub size: u64,
    pub sha256: String,
}

/// The running CAS and the emulator's client of it.
pub struct Cas {
    internal_url: String,
    client: Arc<dyn DirectAccessClient>,
    session: XetSession,
    downloads: XetDownloadStreamGroup,
    stop: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

/// hf-xet configuration for the emulator's own sessions: defaults, with telemetry off and no
/// chunk cache (the CAS is local, a cache would only duplicate it on disk).
fn xet_config() -> XetConfig {
    let mut config = XetConfig::new();
    config.telemetry.enabled = false;
    config.chunk_cache.size_bytes = 0;
    config
}

fn xet_err(what: &str) -> impl Fn(xet::XetError) -> EmulatorError + '_ {
    move |e| EmulatorError::Cas(format!("{what}: {e}"))
}

impl Cas {
    /// Starts the CAS server with its data in `data_dir/cas` and a client session.
    pub async fn start(data_dir: &Path) -> Result<Self> {
        let ctx = XetContext::with_config(xet_config()).map_err(|e| EmulatorError::Cas(format!("runtime: {e}")))?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| EmulatorError::io("binding the internal CAS port", e))?;
        let port = listener.local_addr().map_err(|e| EmulatorError::io("reading the CAS address", e))?.port();
        let cas_dir = data_dir.join("cas");
        let local = LocalClient::new(ctx, &cas_dir)
            .await
            .map_err(|e| EmulatorError::Cas(format!("opening {}: {e}", cas_dir.display())))?;
        let store = Arc::new(RangedXorbReads::new(local.clone(), cas_dir));
        let server = LocalServer::from_client(store, Some(local), "127.0.0.1".to_string(), port);
        let client = server.client();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            if let Err(e) = server.serve_until_stopped(listener, rx).await {
                tracing::error!(error = %e, "internal CAS server stopped");
            }
        });
        let internal_url = format!("http://127.0.0.1:{port}");

        let session = XetSessionBuilder::new_with_config(xet_config())
            .with_cache_dir(data_dir.join("xet-client"))
            .build()
            .map_err(|e| EmulatorError::Cas(format!("creating the xet session: {e}")))?;
        let downloads = session
            .new_download_stream_group()
            .map_err(xet_err("creating a download group"))?
            .with_endpoint(internal_url.clone())
            .with_token_info(INTERNAL_TOKEN, INTERNAL_TOKEN_EXP)
            .build()
            .await
            .map_err(xet_err("creating a download group"))?;
        Ok(Self { internal_url, client, session, downloads, stop: Mutex::new(Some((tx, task))) })
    }

    /// The size of a stored file, `None` if the CAS does not know the hash.
    pub async fn file_size(&self, xet_hash: &str) -> Result<Option<u64>> {
        let hash = parse_hash(xet_hash)?;
        match self.client.get_file_size(&hash).await {
            Ok(size) => Ok(Some(size)),
            Err(ClientError::FileNotFound(_)) | Err(ClientError::XORBNotFound(_)) => Ok(None),
            Err(e) => Err(EmulatorError::Cas(format!("looking up {xet_hash}: {e}"))),
        }
    }

    /// Uploads files through an hf-xet upload commit, as any client would.
    pub async fn upload_paths(&self, paths: &[PathBuf]) -> Result<Vec<Stored>> {
        let commit = self.new_commit().await?;
        let mut handles = Vec::with_capacity(paths.len());
        for path in paths {
            let h = commit
                .upload_from_path(path.clone(), Sha256Policy::Compute)
                .await
                .map_err(|e| EmulatorError::Cas(format!("uploading {}: {e}", path.display())))?;
            handles.push(h.task_id());
        }
        let report = commit.commit().await.map_err(xet_err("committing an upload"))?;
        handles
            .iter()
            .zip(paths)
            .map(|(id, path)| {
                let meta = report
                    .uploads
                    .get(id)
                    .ok_or_else(|| EmulatorError::Cas(format!("no upload result for {}", path.display())))?;
                stored(&meta.xet_info, &path.display().to_string())
            })
            .collect()
    }

    /// Uploads one in-memory buffer.
    pub async fn upload_bytes(&self, bytes: Vec<u8>, name: &str) -> Result<Stored> {
        let commit = self.new_commit().await?;
        let h = commit
            .upload_bytes(bytes, Sha256Policy::Compute, Some(name.to_string()))
            .await
            .map_err(xet_err("uploading bytes"))?;
        let report = commit.commit().await.map_err(xet_err("committing an upload"))?;
        let meta = report
            .uploads
            .get(&h.task_id())
            .ok_or_else(|| EmulatorError::Cas(format!("no upload result for {name}")))?;
        stored(&meta.xet_info, name)
    }

    /// Streams `range` (all of it if `None`) of a stored file of `size` bytes.
    pub async fn read(
        &self,
        xet_hash: &str,
        size: u64,
        range: Option<Range<u64>>,
    ) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Send + 'static> {
        let info = XetFileInfo::new(xet_hash.to_string(), size);
        let mut stream = self.downloads.download_stream(info, range).await.map_err(xet_err("starting a download"))?;
        stream.start();
        Ok(futures::stream::unfold(Some(stream), |state| async move {
            let mut stream = state?;
            match stream.next().await {
                Ok(Some(bytes)) => Some((Ok(bytes), Some(stream))),
                Ok(None) => None,
                Err(e) => Some((Err(std::io::Error::other(format!("CAS read failed: {e}"))), None)),
            }
        }))
    }

    /// `http://127.0.0.1:PORT` of the internal server (for the proxy).
    pub fn internal_url(&self) -> &str {
        &self.internal_url
    }

    /// Stops the internal server and waits for it.
    pub async fn stop(&self) {
        let stop = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((tx, task)) = stop {
            let _ = tx.send(());
            let _ = task.await;
        }
    }

    async fn new_commit(&self) -> Result<xet::xet_session::XetUploadCommit> {
        self.session
            .new_upload_commit()
            .map_err(xet_err("creating an upload commit"))?
            .with_endpoint(self.internal_url.clone())
            .with_token_info(INTERNAL_TOKEN, INTERNAL_TOKEN_EXP)
            .build()
            .await
            .map_err(xet_err("creating an upload commit"))
    }
}

/// Checks that `s` is a Xet hash (64 hex digits).
pub fn parse_hash(s: &str) -> Result<MerkleHash> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(EmulatorError::BadRequest(format!("{s:?} is not a Xet hash (64 hex digits)")));
    }
    MerkleHash::from_hex(s).map_err(|e| EmulatorError::BadRequest(format!("{s:?} is not a Xet hash: {e}")))
}

fn stored(info: &XetFileInfo, name: &str) -> Result<Stored> {
    let missing = |what: &str| EmulatorError::Cas(format!("upload of {name} reported no {what}"));
    Ok(Stored {
        hash: info.hash.clone(),
        size: info.file_size.ok_or_else(|| missing("size"))?,
        sha256: info.sha256.clone().ok_or_else(|| missing("SHA-256"))?,
    })
}
