//! Ranged reads of Xet files through one `hf-xet` download-stream group per token generation.
//!
//! The group fetches its own CAS access tokens from the Hub's `xet-read-token` route (with the
//! Hub token in the request headers) and refreshes them before they expire; when the Hub token
//! itself rotates, the next read builds a new group with the new headers.

use std::ops::Range;
use std::sync::Arc;

use tokio::sync::Mutex;
use xet::xet_session::{HeaderMap, HeaderValue, XetDownloadStreamGroup, XetFileInfo, XetSession, header};

use super::remote::ByteStream;
use super::retry::{Failure, from_xet};
use crate::hub::RemoteError;

pub(crate) struct XetReader {
    session: XetSession,
    token_url: String,
    group: Mutex<Option<(u64, XetDownloadStreamGroup)>>,
}

impl XetReader {
    pub(crate) fn new(session: XetSession, token_url: String) -> Self {
        XetReader { session, token_url, group: Mutex::new(None) }
    }

    async fn group(&self, generation: u64, token: Option<&str>) -> Result<XetDownloadStreamGroup, Failure> {
        let mut slot = self.group.lock().await;
        if let Some((g, group)) = slot.as_ref()
            && *g == generation
        {
            return Ok(group.clone());
        }
        let mut headers = HeaderMap::new();
        if let Some(t) = token {
            let value = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| Failure {
                error: RemoteError::Invalid("the token contains characters not allowed in an HTTP header".into()),
                retry_after: None,
            })?;
            headers.insert(header::AUTHORIZATION, value);
        }
        let builder = self.session.new_download_stream_group().map_err(|e| from_xet(e, "xet session"))?;
        let group = builder
            .with_token_refresh_url(self.token_url.clone(), headers)
            .build()
            .await
            .map_err(|e| from_xet(e, "xet read token"))?;
        *slot = Some((generation, group.clone()));
        Ok(group)
    }

    /// Build the group in the background, so the first read does not wait for the CAS token.
    /// A failure is only logged: the first read builds the group again and reports its error.
    pub(crate) fn prewarm(self: &Arc<Self>, generation: u64, token: Option<String>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let reader = self.clone();
        rt.spawn(async move {
            if let Err(f) = reader.group(generation, token.as_deref()).await {
                tracing::debug!(error = %f.error, "fetching the CAS read token ahead of the first read failed");
            }
        });
    }

    /// Forget the group (after an authentication failure) so the next read builds a new one.
    pub(crate) async fn reset(&self) {
        *self.group.lock().await = None;
    }

    /// Stream `range` of the Xet file `hash` of `size` bytes.
    pub(crate) async fn stream(
        &self,
        generation: u64,
        token: Option<&str>,
        hash: &str,
        size: u64,
        range: Range<u64>,
        what: String,
    ) -> Result<ByteStream, Failure> {
        let group = self.group(generation, token).await?;
        let info = XetFileInfo::new(hash.to_string(), size);
        let mut stream = group.download_stream(info, Some(range)).await.map_err(|e| from_xet(e, &what))?;
        stream.start();
        // Ends after the first error: a failed reconstruction is not resumed mid-stream.
        let s = futures::stream::unfold(Some((stream, what)), |state| async move {
            let (mut stream, what) = state?;
            match stream.next().await {
                Ok(Some(bytes)) => Some((Ok(bytes), Some((stream, what)))),
                Ok(None) => None,
                Err(e) => Some((Err(from_xet(e, &what).error), None)),
            }
        });
        Ok(Box::pin(s))
    }
}
