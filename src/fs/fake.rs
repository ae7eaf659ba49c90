//! An in-memory [`Remote`] for unit tests of the filesystem layer (never the only test of a
//! feature: the same behaviour is exercised against the emulator through real mounts).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use sha2::Digest;

use crate::hub::{
    ByteStream, CommitAdd, ContentId, EntryKind, Remote, RemoteEntry, RemoteError, RemoteFile, SourceInfo, Uploaded,
};

/// Files by path; the content store by hash.
#[derive(Default)]
pub(crate) struct FakeRemote {
    pub files: Mutex<BTreeMap<String, String>>,
    pub blobs: Mutex<BTreeMap<String, Vec<u8>>>,
    pub commits: AtomicUsize,
}

impl FakeRemote {
    pub fn with(files: &[(&str, &[u8])]) -> Self {
        let f = FakeRemote::default();
        for (p, d) in files {
            let h = f.store(d);
            f.files.lock().unwrap().insert(p.to_string(), h);
        }
        f
    }

    fn store(&self, d: &[u8]) -> String {
        let h = hex::encode(sha2::Sha256::digest(d));
        self.blobs.lock().unwrap().insert(h.clone(), d.to_vec());
        h
    }

    pub fn read(&self, path: &str) -> Option<Vec<u8>> {
        let h = self.files.lock().unwrap().get(path)?.clone();
        self.blobs.lock().unwrap().get(&h).cloned()
    }

    fn entry(&self, path: &str, hash: &str) -> RemoteEntry {
        let size = self.blobs.lock().unwrap().get(hash).map_or(0, |b| b.len() as u64);
        RemoteEntry {
            path: path.to_string(),
            kind: EntryKind::File,
            size,
            mtime: None,
            content: Some(ContentId::Xet(hash.to_string())),
        }
    }
}

impl Remote for FakeRemote {
    async fn open(&self) -> Result<SourceInfo, RemoteError> {
        Ok(SourceInfo {
            description: "fake".into(),
            commit: None,
            immutable: false,
            default_mtime: SystemTime::UNIX_EPOCH,
        })
    }

    async fn list_dir(&self, dir: &str) -> Result<Vec<RemoteEntry>, RemoteError> {
        let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        let files = self.files.lock().unwrap().clone();
        let mut out: Vec<RemoteEntry> = Vec::new();
        for (p, h) in files.iter().filter(|(p, _)| p.starts_with(&prefix)) {
            let rest = &p[prefix.len()..];
            match rest.split_once('/') {
                None => out.push(self.entry(p, h)),
                Some((d, _)) => {
                    let path = format!("{prefix}{d}");
                    if !out.iter().any(|e| e.path == path) {
                        out.push(RemoteEntry { path, kind: EntryKind::Dir, size: 0, mtime: None, content: None });
                    }
                }
            }
        }
        Ok(out)
    }

    async fn stat(&self, path: &str) -> Result<Option<RemoteEntry>, RemoteError> {
        if let Some(h) = self.files.lock().unwrap().get(path).cloned() {
            return Ok(Some(self.entry(path, &h)));
        }
        let prefix = format!("{path}/");
        let is_dir = self.files.lock().unwrap().keys().any(|k| k.starts_with(&prefix));
        Ok(is_dir.then(|| RemoteEntry { path: path.into(), kind: EntryKind::Dir, size: 0, mtime: None, content: None }))
    }

    async fn stat_many(&self, paths: &[String]) -> Result<Vec<RemoteEntry>, RemoteError> {
        let mut out = Vec::new();
        for p in paths {
            if let Some(e) = self.stat(p).await? {
                out.push(e);
            }
        }
        Ok(out)
    }

    async fn list_recursive(&self, dir: &str) -> Result<Vec<RemoteEntry>, RemoteError> {
        let prefix = format!("{dir}/");
        let files = self.files.lock().unwrap().clone();
        Ok(files.iter().filter(|(p, _)| p.starts_with(&prefix)).map(|(p, h)| self.entry(p, h)).collect())
    }

    async fn upload(&self, files: &[PathBuf]) -> Result<Vec<Uploaded>, RemoteError> {
        let mut out = Vec::new();
        for f in files {
            let d = std::fs::read(f).map_err(|e| RemoteError::Other(e.to_string()))?;
            let h = self.store(&d);
            out.push(Uploaded { xet_hash: h, size: d.len() as u64, new_bytes: d.len() as u64 });
        }
        Ok(out)
    }

    async fn commit(&self, adds: &[CommitAdd], deletes: &[String]) -> Result<(), RemoteError> {
        let mut files = self.files.lock().unwrap();
        for a in adds {
            files.insert(a.path.clone(), a.xet_hash.clone());
        }
        for d in deletes {
            files.remove(d);
        }
        self.commits.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn read_range(&self, file: &RemoteFile, range: Range<u64>) -> Result<ByteStream, RemoteError> {
        let ContentId::Xet(h) = &file.content else { return Err(RemoteError::NotFound(file.path.clone())) };
        let blob = self.blobs.lock().unwrap().get(h).cloned().ok_or_else(|| RemoteError::NotFound(h.clone()))?;
        let part = Bytes::copy_from_slice(&blob[range.start as usize..range.end as usize]);
        Ok(Box::pin(futures::stream::iter([Ok(part)])))
    }
}
