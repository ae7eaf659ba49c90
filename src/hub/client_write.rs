//! The write side of [`HubRemote`]: uploads through an `hf-xet` upload commit (chunking and
//! deduplication are the client's), one `hf-hub` batch per commit, and recursive listings for
//! directory renames. Only buckets are writable.

use std::path::PathBuf;

use futures::StreamExt;
use hf_hub::buckets::{BucketAddFile, BucketTreeEntry};
use xet::xet_session::{HeaderMap, HeaderValue, Sha256Policy, header};

use super::client::HubRemote;
use super::error::RemoteError;
use super::remote::{CommitAdd, EntryKind, RemoteEntry, Uploaded};
use super::retry::{from_xet, with_retry};
use super::source::Source;

impl HubRemote {
    fn bucket_ids(&self) -> Result<(String, String), RemoteError> {
        match self.source() {
            Source::Bucket { namespace, name, .. } => Ok((namespace.clone(), name.clone())),
            s => Err(RemoteError::Invalid(format!("{s} is read-only: only buckets accept writes"))),
        }
    }

    pub(super) async fn list_recursive_impl(&self, dir: &str) -> Result<Vec<RemoteEntry>, RemoteError> {
        let (namespace, name) = self.bucket_ids()?;
        let full = self.full_path(dir);
        let what = format!("listing bucket {namespace}/{name}/{full} recursively");
        let entries = self
            .call(&what, |client| {
                let (namespace, name, full) = (namespace.clone(), name.clone(), full.clone());
                async move {
                    let bucket = client.bucket(namespace, name);
                    let prefix = (!full.is_empty()).then(|| full.clone());
                    let stream = bucket.list_tree().maybe_prefix(prefix).recursive(true).send()?;
                    let mut stream = std::pin::pin!(stream);
                    let mut out = Vec::new();
                    while let Some(e) = stream.next().await {
                        out.push(e?);
                    }
                    Ok(out)
                }
            })
            .await?;
        let under = if full.is_empty() { String::new() } else { format!("{full}/") };
        Ok(entries
            .into_iter()
            .filter(|e| matches!(e, BucketTreeEntry::File { path, .. } if path.starts_with(&under)))
            .filter_map(|e| self.bucket_entry(e, None))
            .filter(|e| e.kind == EntryKind::File)
            .collect())
    }

    pub(super) async fn upload_impl(&self, files: &[PathBuf]) -> Result<Vec<Uploaded>, RemoteError> {
        let (namespace, name) = self.bucket_ids()?;
        if files.is_empty() {
            return Ok(Vec::new());
        }
        let url = format!("{}/api/buckets/{namespace}/{name}/xet-write-token", self.endpoint);
        let what = format!("uploading {} file(s) to bucket {namespace}/{name}", files.len());
        let mut refreshed = false;
        loop {
            let (generation, token) = self.token.current();
            let result = with_retry(self.policy, &what, || async {
                let mut headers = HeaderMap::new();
                if let Some(t) = token.as_deref() {
                    let v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| super::retry::Failure {
                        error: RemoteError::Invalid("the token is not a valid HTTP header value".into()),
                        retry_after: None,
                    })?;
                    headers.insert(header::AUTHORIZATION, v);
                }
                let commit = self
                    .session
                    .new_upload_commit()
                    .map_err(|e| from_xet(e, &what))?
                    .with_token_refresh_url(url.clone(), headers)
                    .build()
                    .await
                    .map_err(|e| from_xet(e, &what))?;
                let mut ids = Vec::with_capacity(files.len());
                for f in files {
                    let h =
                        commit.upload_from_path(f.clone(), Sha256Policy::Skip).await.map_err(|e| from_xet(e, &what))?;
                    ids.push(h.task_id());
                }
                let report = commit.commit().await.map_err(|e| from_xet(e, &what))?;
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    let meta = report.uploads.get(&id).ok_or_else(|| super::retry::Failure {
                        error: RemoteError::Other(format!("{what}: the upload report misses a file")),
                        retry_after: None,
                    })?;
                    out.push(Uploaded {
                        xet_hash: meta.xet_info.hash.clone(),
                        size: meta.xet_info.file_size.unwrap_or(0),
                        new_bytes: meta.dedup_metrics.new_bytes,
                    });
                }
                Ok(out)
            })
            .await;
            match result {
                Err(RemoteError::Unauthorized(_) | RemoteError::Forbidden(_)) if !refreshed => {
                    refreshed = true;
                    if self.token.recheck().0 != generation {
                        continue;
                    }
                    return result;
                }
                _ => return result,
            }
        }
    }

    pub(super) async fn commit_impl(&self, adds: &[CommitAdd], deletes: &[String]) -> Result<(), RemoteError> {
        let (namespace, name) = self.bucket_ids()?;
        if adds.is_empty() && deletes.is_empty() {
            return Ok(());
        }
        let add_files: Vec<BucketAddFile> = adds
            .iter()
            .map(|a| BucketAddFile {
                path: self.full_path(&a.path),
                xet_hash: a.xet_hash.clone(),
                size: a.size,
                mtime: Some(a.mtime_ms),
                content_type: None,
            })
            .collect();
        let delete: Vec<String> = deletes.iter().map(|d| self.full_path(d)).collect();
        let what =
            format!("committing {} add(s) and {} delete(s) to bucket {namespace}/{name}", adds.len(), deletes.len());
        self.call(&what, |client| {
            let (add_files, delete) = (add_files.clone(), delete.clone());
            let (namespace, name) = (namespace.clone(), name.clone());
            async move { client.bucket(namespace, name).batch_operations().add_files(add_files).delete(delete).send().await }
        })
        .await
    }
}
