//! [`HubRemote`]: the [`Remote`] trait on the official clients — `hf-hub` for listings,
//! metadata and small git files, `hf-xet` for ranged reads of Xet files.

use std::future::Future;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use futures::StreamExt;
use hf_hub::buckets::BucketTreeEntry;
use hf_hub::repository::RepoTreeEntry;
use hf_hub::{HFClient, HFError, HFRepository, RepoTypeAny};
use xet::xet_session::{XetConfig, XetSession, XetSessionBuilder};

use super::error::RemoteError;
use super::remote::{
    ByteStream, CommitAdd, ContentId, EntryKind, Remote, RemoteEntry, RemoteFile, SourceInfo, Uploaded,
};
use super::retry::{RetryPolicy, from_hf, with_retry};
use super::source::{RepoKind, Source};
use super::token::TokenSource;
use super::xet_reader::XetReader;

/// How to reach the Hub for one source.
#[derive(Debug, Clone)]
pub struct HubRemoteConfig {
    /// Base URL of the Hub, e.g. `https://huggingface.co`.
    pub endpoint: String,
    pub source: Source,
    pub token: Arc<TokenSource>,
    /// Where `hf-xet` keeps its own small state (shard cache for uploads).
    pub xet_dir: PathBuf,
}

/// The [`Remote`] of one bucket prefix or repo subfolder.
pub struct HubRemote {
    pub(super) endpoint: String,
    source: Source,
    pub(super) token: Arc<TokenSource>,
    client: Mutex<(u64, HFClient)>,
    pub(super) session: XetSession,
    /// The commit a repo mount serves, fixed by [`Remote::open`].
    commit: OnceLock<String>,
    xet: OnceLock<Arc<XetReader>>,
    pub(super) policy: RetryPolicy,
}

impl HubRemote {
    /// Build the clients. No network call happens until [`Remote::open`].
    pub fn new(cfg: HubRemoteConfig) -> Result<Self, RemoteError> {
        let endpoint = cfg.endpoint.trim_end_matches('/').to_string();
        url_check(&endpoint)?;
        let (generation, token) = cfg.token.current();
        let client = build_client(&endpoint, token.as_deref())?;
        let session = xet_session(cfg.xet_dir)?;
        let remote = HubRemote {
            endpoint,
            source: cfg.source,
            token: cfg.token,
            client: Mutex::new((generation, client)),
            session,
            commit: OnceLock::new(),
            xet: OnceLock::new(),
            policy: RetryPolicy::default(),
        };
        if let Source::Bucket { namespace, name, .. } = &remote.source {
            let url = format!("{}/api/buckets/{namespace}/{name}/xet-read-token", remote.endpoint);
            let _ = remote.xet.set(Arc::new(XetReader::new(remote.session.clone(), url)));
        }
        Ok(remote)
    }

    /// Start fetching the CAS read token now (see [`XetReader::prewarm`]).
    fn prewarm_xet(&self) {
        if let Some(x) = self.xet.get() {
            let (generation, token) = self.token.current();
            x.prewarm(generation, token);
        }
    }

    /// The source this remote serves.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The `hf-xet` session (shared with the write path).
    pub fn xet_session(&self) -> &XetSession {
        &self.session
    }

    /// A client built with the current token (rebuilt when the token rotates).
    pub fn client(&self) -> HFClient {
        let (generation, token) = self.token.current();
        let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if slot.0 != generation {
            match build_client(&self.endpoint, token.as_deref()) {
                Ok(c) => *slot = (generation, c),
                Err(e) => {
                    tracing::error!(error = %e, "cannot rebuild the Hub client; keeping the previous one")
                }
            }
        }
        slot.1.clone()
    }

    pub(super) fn full_path(&self, rel: &str) -> String {
        join(self.source.root(), rel)
    }

    pub(super) fn relative(&self, full: &str) -> Option<String> {
        let root = self.source.root();
        if root.is_empty() || full == root {
            return Some(if root.is_empty() { full.to_string() } else { String::new() });
        }
        full.strip_prefix(root)?.strip_prefix('/').map(str::to_string)
    }

    fn repo(&self, client: &HFClient) -> Option<HFRepository<RepoTypeAny>> {
        match &self.source {
            Source::Repo { kind, namespace, name, .. } => {
                let any = match kind {
                    RepoKind::Model => RepoTypeAny::Model,
                    RepoKind::Dataset => RepoTypeAny::Dataset,
                    RepoKind::Space => RepoTypeAny::Space,
                };
                Some(client.repository(any, namespace.clone(), name.clone()))
            }
            Source::Bucket { .. } => None,
        }
    }

    fn revision(&self) -> String {
        match (&self.source, self.commit.get()) {
            (_, Some(sha)) => sha.clone(),
            (Source::Repo { revision, .. }, None) => revision.clone(),
            (Source::Bucket { .. }, None) => String::new(),
        }
    }

    /// Run one client call with retries; after an authentication failure, re-read the token
    /// and try once more if it changed.
    pub(super) async fn call<T, F, Fut>(&self, what: &str, op: F) -> Result<T, RemoteError>
    where
        F: Fn(HFClient) -> Fut,
        Fut: Future<Output = Result<T, HFError>>,
    {
        let mut refreshed = false;
        loop {
            let (before, _) = self.token.current();
            let client = self.client();
            let result = with_retry(self.policy, what, || {
                let fut = op(client.clone());
                async move { fut.await.map_err(|e| from_hf(e, what)) }
            })
            .await;
            match result {
                Err(RemoteError::Unauthorized(_) | RemoteError::Forbidden(_)) if !refreshed => {
                    refreshed = true;
                    if self.token.recheck().0 != before {
                        if let Some(x) = self.xet.get() {
                            x.reset().await;
                        }
                        continue;
                    }
                    return result;
                }
                _ => return result,
            }
        }
    }

    async fn list_bucket(&self, full: &str) -> Result<Vec<RemoteEntry>, RemoteError> {
        let Source::Bucket { namespace, name, .. } = &self.source else { unreachable!() };
        let what = format!("listing bucket {namespace}/{name}/{full}");
        let entries = self
            .call(&what, |client| async move {
                let bucket = client.bucket(namespace.clone(), name.clone());
                let prefix = (!full.is_empty()).then(|| full.to_string());
                let stream = bucket.list_tree().maybe_prefix(prefix).recursive(false).send()?;
                let mut stream = std::pin::pin!(stream);
                let mut out = Vec::new();
                while let Some(e) = stream.next().await {
                    out.push(e?);
                }
                Ok(out)
            })
            .await;
        let entries = match entries {
            Ok(e) => e,
            Err(RemoteError::NotFound(_)) if !full.is_empty() => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(entries.into_iter().filter_map(|e| self.bucket_entry(e, Some(full))).collect())
    }

    /// Convert a bucket entry; with `parent`, keep only its direct children (tree prefixes
    /// match raw keys, so `a/1` also returns `a/10`).
    pub(super) fn bucket_entry(&self, e: BucketTreeEntry, parent: Option<&str>) -> Option<RemoteEntry> {
        let (path, kind, size, mtime, content) = match e {
            BucketTreeEntry::File { path, size, xet_hash, mtime, .. } => {
                let content = (!xet_hash.is_empty()).then_some(ContentId::Xet(xet_hash));
                (path, EntryKind::File, size, mtime.as_deref().and_then(parse_time), content)
            }
            BucketTreeEntry::Directory { path, .. } => (path, EntryKind::Dir, 0, None, None),
        };
        let path = path.trim_end_matches('/').to_string();
        if let Some(parent) = parent
            && !is_direct_child(parent, &path)
        {
            return None;
        }
        if kind == EntryKind::File && content.is_none() {
            tracing::warn!(path, "bucket entry without a Xet hash; skipped");
            return None;
        }
        Some(RemoteEntry { path: self.relative(&path)?, kind, size, mtime, content })
    }

    async fn list_repo(&self, full: &str) -> Result<Vec<RemoteEntry>, RemoteError> {
        let rev = self.revision();
        let what = format!("listing {}/{full}", self.source);
        let entries = self
            .call(&what, |client| {
                let rev = rev.clone();
                async move {
                    let Some(repo) = self.repo(&client) else {
                        return Ok(Vec::new());
                    };
                    let path = (!full.is_empty()).then(|| full.to_string());
                    let stream = repo.list_tree().revision(rev).maybe_path_in_repo(path).recursive(false).send()?;
                    let mut stream = std::pin::pin!(stream);
                    let mut out = Vec::new();
                    while let Some(e) = stream.next().await {
                        out.push(e?);
                    }
                    Ok(out)
                }
            })
            .await;
        let entries = match entries {
            Ok(e) => e,
            Err(RemoteError::NotFound(_)) if !full.is_empty() => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(entries.into_iter().filter_map(|e| self.repo_entry(e, Some(full))).collect())
    }

    fn repo_entry(&self, e: RepoTreeEntry, parent: Option<&str>) -> Option<RemoteEntry> {
        let (path, kind, size, content) = match e {
            RepoTreeEntry::File { oid, size, path, xet_hash, .. } => {
                let content = match xet_hash {
                    Some(h) if !h.is_empty() => ContentId::Xet(h),
                    _ => ContentId::Git(oid),
                };
                (path, EntryKind::File, size, Some(content))
            }
            RepoTreeEntry::Directory { path, .. } => (path, EntryKind::Dir, 0, None),
        };
        if let Some(parent) = parent
            && !is_direct_child(parent, &path)
        {
            return None;
        }
        Some(RemoteEntry { path: self.relative(&path)?, kind, size, mtime: None, content })
    }
}

impl Remote for HubRemote {
    async fn open(&self) -> Result<SourceInfo, RemoteError> {
        match &self.source {
            Source::Bucket { namespace, name, .. } => {
                let what = format!("bucket {namespace}/{name}");
                self.call(
                    &what,
                    |client| async move { client.bucket(namespace.clone(), name.clone()).info().send().await },
                )
                .await?;
                if !self.source.root().is_empty() {
                    tracing::info!(prefix = self.source.root(), "serving a bucket prefix");
                }
                self.prewarm_xet();
                Ok(SourceInfo {
                    description: self.source.to_string(),
                    commit: None,
                    immutable: false,
                    default_mtime: SystemTime::now(),
                })
            }
            Source::Repo { kind, namespace, name, revision, .. } => {
                let what = format!("{} {namespace}/{name} at revision {revision}", kind.singular());
                let (sha, modified) = self
                    .call(&what, |client| async move {
                        let (ns, n, rev) = (namespace.clone(), name.clone(), revision.clone());
                        Ok(match kind {
                            RepoKind::Model => {
                                let i = client.model(ns, n).info().revision(rev).send().await?;
                                (i.sha, i.last_modified)
                            }
                            RepoKind::Dataset => {
                                let i = client.dataset(ns, n).info().revision(rev).send().await?;
                                (i.sha, i.last_modified)
                            }
                            RepoKind::Space => {
                                let i = client.space(ns, n).info().revision(rev).send().await?;
                                (i.sha, i.last_modified)
                            }
                        })
                    })
                    .await?;
                let sha = sha.ok_or_else(|| RemoteError::Other(format!("{what}: the Hub returned no commit sha")))?;
                let _ = self.commit.set(sha.clone());
                let url = format!(
                    "{}/api/{}/{namespace}/{name}/xet-read-token/{}",
                    self.endpoint,
                    kind.plural(),
                    percent_encoding::utf8_percent_encode(&sha, percent_encoding::NON_ALPHANUMERIC)
                );
                let _ = self.xet.set(Arc::new(XetReader::new(self.session.clone(), url)));
                let root = self.source.root();
                if !root.is_empty() {
                    match self.stat_full(root).await? {
                        Some(e) if e.kind == EntryKind::Dir => {}
                        _ => return Err(RemoteError::NotFound(format!("folder {root} in {what}"))),
                    }
                }
                self.prewarm_xet();
                Ok(SourceInfo {
                    description: format!("{} {namespace}/{name}@{sha}", kind.singular()),
                    commit: Some(sha),
                    immutable: true,
                    default_mtime: modified.as_deref().and_then(parse_time).unwrap_or(SystemTime::UNIX_EPOCH),
                })
            }
        }
    }

    async fn list_dir(&self, dir: &str) -> Result<Vec<RemoteEntry>, RemoteError> {
        let full = self.full_path(dir);
        match &self.source {
            Source::Bucket { .. } => self.list_bucket(&full).await,
            Source::Repo { .. } => self.list_repo(&full).await,
        }
    }

    async fn stat(&self, path: &str) -> Result<Option<RemoteEntry>, RemoteError> {
        if path.is_empty() {
            return Ok(Some(RemoteEntry {
                path: String::new(),
                kind: EntryKind::Dir,
                size: 0,
                mtime: None,
                content: None,
            }));
        }
        self.stat_full(&self.full_path(path)).await
    }

    async fn stat_many(&self, paths: &[String]) -> Result<Vec<RemoteEntry>, RemoteError> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        let full: Vec<String> = paths.iter().map(|p| self.full_path(p)).collect();
        match &self.source {
            Source::Bucket { namespace, name, .. } => {
                let what = format!("bucket {namespace}/{name}: {} paths", full.len());
                let found = self
                    .call(&what, |client| {
                        let full = full.clone();
                        async move {
                            client.bucket(namespace.clone(), name.clone()).get_paths_info().paths(full).send().await
                        }
                    })
                    .await?;
                Ok(found.into_iter().filter_map(|e| self.bucket_entry(e, None)).collect())
            }
            Source::Repo { .. } => {
                let rev = self.revision();
                let what = format!("{}: {} paths", self.source, full.len());
                let found = self
                    .call(&what, |client| {
                        let (rev, full) = (rev.clone(), full.clone());
                        async move {
                            let Some(repo) = self.repo(&client) else {
                                return Ok(Vec::new());
                            };
                            repo.get_paths_info().paths(full).revision(rev).send().await
                        }
                    })
                    .await?;
                Ok(found.into_iter().filter_map(|e| self.repo_entry(e, None)).collect())
            }
        }
    }

    async fn list_recursive(&self, dir: &str) -> Result<Vec<RemoteEntry>, RemoteError> {
        self.list_recursive_impl(dir).await
    }

    async fn upload(&self, files: &[std::path::PathBuf]) -> Result<Vec<Uploaded>, RemoteError> {
        self.upload_impl(files).await
    }

    async fn commit(&self, adds: &[CommitAdd], deletes: &[String]) -> Result<(), RemoteError> {
        self.commit_impl(adds, deletes).await
    }

    async fn read_range(&self, file: &RemoteFile, range: Range<u64>) -> Result<ByteStream, RemoteError> {
        let what = format!("reading {} of {}", file.path, self.source);
        match &file.content {
            ContentId::Xet(hash) => {
                let Some(reader) = self.xet.get() else {
                    return Err(RemoteError::Other(format!("{what}: source not opened")));
                };
                let mut refreshed = false;
                loop {
                    let (generation, token) = self.token.current();
                    let r = with_retry(self.policy, &what, || {
                        reader.stream(generation, token.as_deref(), hash, file.size, range.clone(), what.clone())
                    })
                    .await;
                    match r {
                        Err(RemoteError::Unauthorized(_) | RemoteError::Forbidden(_)) if !refreshed => {
                            refreshed = true;
                            reader.reset().await;
                            if self.token.recheck().0 != generation {
                                continue;
                            }
                            return r;
                        }
                        _ => return r,
                    }
                }
            }
            ContentId::Git(_) => {
                let rev = self.revision();
                let full = self.full_path(&file.path);
                let (_, stream) = self
                    .call(&what, |client| {
                        let (rev, full, range) = (rev.clone(), full.clone(), range.clone());
                        async move {
                            let Some(repo) = self.repo(&client) else {
                                return Err(HFError::Other("git content in a bucket".into()));
                            };
                            repo.download_file_stream().filename(full).revision(rev).range(range).send().await
                        }
                    })
                    .await?;
                let what2 = what.clone();
                Ok(Box::pin(stream.map(move |r| r.map_err(|e| from_hf(e, &what2).error))))
            }
        }
    }
}

impl HubRemote {
    async fn stat_full(&self, full: &str) -> Result<Option<RemoteEntry>, RemoteError> {
        match &self.source {
            Source::Bucket { namespace, name, .. } => {
                let what = format!("bucket {namespace}/{name}/{full}");
                let found = self
                    .call(&what, |client| async move {
                        client
                            .bucket(namespace.clone(), name.clone())
                            .get_paths_info()
                            .paths(vec![full.to_string()])
                            .send()
                            .await
                    })
                    .await?;
                let path_of = |e: &BucketTreeEntry| match e {
                    BucketTreeEntry::File { path, .. } | BucketTreeEntry::Directory { path, .. } => {
                        path.trim_end_matches('/').to_string()
                    }
                };
                if let Some(e) = found.into_iter().find(|e| path_of(e) == full) {
                    return Ok(self.bucket_entry(e, None));
                }
                // Directories are implicit: a path is a directory while a key lies under it.
                let children = self.list_bucket(full).await?;
                Ok((!children.is_empty()).then(|| RemoteEntry {
                    path: self.relative(full).unwrap_or_default(),
                    kind: EntryKind::Dir,
                    size: 0,
                    mtime: None,
                    content: None,
                }))
            }
            Source::Repo { .. } => {
                let rev = self.revision();
                let what = format!("{}/{full}", self.source);
                let found = self
                    .call(&what, |client| {
                        let rev = rev.clone();
                        async move {
                            let Some(repo) = self.repo(&client) else {
                                return Ok(Vec::new());
                            };
                            repo.get_paths_info().paths(vec![full.to_string()]).revision(rev).send().await
                        }
                    })
                    .await;
                let found = match found {
                    Ok(f) => f,
                    Err(RemoteError::NotFound(_)) => return Ok(None),
                    Err(e) => return Err(e),
                };
                let path_of = |e: &RepoTreeEntry| match e {
                    RepoTreeEntry::File { path, .. } | RepoTreeEntry::Directory { path, .. } => path.clone(),
                };
                Ok(found.into_iter().find(|e| path_of(e) == full).and_then(|e| self.repo_entry(e, None)))
            }
        }
    }
}

fn build_client(endpoint: &str, token: Option<&str>) -> Result<HFClient, RemoteError> {
    let mut b = HFClient::builder().endpoint(endpoint).cache_enabled(false);
    if let Some(t) = token {
        b = b.token(t);
    }
    b.build().map_err(|e| RemoteError::Invalid(format!("Hub client for {endpoint}: {e}")))
}

fn url_check(endpoint: &str) -> Result<(), RemoteError> {
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(RemoteError::Invalid(format!("hub endpoint {endpoint:?} must start with http:// or https://")));
    }
    Ok(())
}

/// One `hf-xet` session per process: it owns connection pools and a thread of bookkeeping.
fn xet_session(dir: PathBuf) -> Result<XetSession, RemoteError> {
    static SESSION: OnceLock<XetSession> = OnceLock::new();
    if let Some(s) = SESSION.get() {
        return Ok(s.clone());
    }
    let mut config = XetConfig::new();
    config.telemetry.enabled = false;
    // Our own content cache holds file bytes; a second chunk cache would double the disk use.
    config.chunk_cache.size_bytes = 0;
    config.client.retry_base_delay = std::time::Duration::from_millis(500);
    let mut builder = XetSessionBuilder::new_with_config(config).with_cache_dir(dir);
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        builder = builder.with_tokio_handle(handle);
    }
    let session = builder.build().map_err(|e| RemoteError::Other(format!("xet session: {e}")))?;
    Ok(SESSION.get_or_init(|| session).clone())
}

/// `a/b` joined with `c` is `a/b/c`; either side may be empty.
pub(crate) fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

/// Whether `path` is directly inside directory `parent` (`""` is the root).
fn is_direct_child(parent: &str, path: &str) -> bool {
    let rest = if parent.is_empty() {
        path
    } else {
        match path.strip_prefix(parent).and_then(|r| r.strip_prefix('/')) {
            Some(r) => r,
            None => return false,
        }
    };
    !rest.is_empty() && !rest.contains('/')
}

fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).ok().or_else(|| humantime::parse_rfc3339(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_children_only() {
        assert!(is_direct_child("", "a"));
        assert!(!is_direct_child("", "a/b"));
        assert!(is_direct_child("a/1", "a/1/x"));
        assert!(!is_direct_child("a/1", "a/10"));
        assert!(!is_direct_child("a/1", "a/10/x"));
        assert!(!is_direct_child("a/1", "a/1/x/y"));
        assert!(!is_direct_child("a/1", "a/1"));
    }

    #[test]
    fn times_parse() {
        assert!(parse_time("2024-05-01T10:00:00.123Z").is_some());
        assert!(parse_time("2024-05-01T10:00:00Z").is_some());
        assert!(parse_time("yesterday").is_none());
    }
}
