//! The read path: answer a read from the content cache, fetching missing blocks from the
//! remote. Only the blocks a read needs are waited for; a read-ahead window that doubles on
//! sequential access (and resets on a seek) keeps fetching beyond them in the background.
//!
//! Fetches are single-flight per block within a process; two processes sharing a cache may
//! occasionally fetch the same block twice (identical bytes), never serve a half-written one.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use futures::StreamExt;

use super::content_cache::{BLOCK_SIZE, Blob};
use super::error::{FsError, FsResult};
use crate::hub::{ContentId, Remote, RemoteError, RemoteFile};

/// Read-ahead starts at this many bytes after a seek...
pub const MIN_WINDOW: u64 = 4 * BLOCK_SIZE;
/// ...and doubles on each sequential read up to this.
pub const MAX_WINDOW: u64 = 64 * 1024 * 1024;

/// Per-handle sequential-access detector.
#[derive(Debug)]
pub(crate) struct ReadAhead {
    next: u64,
    window: u64,
}

impl Default for ReadAhead {
    fn default() -> Self {
        ReadAhead { next: 0, window: MIN_WINDOW }
    }
}

impl ReadAhead {
    /// Record a read of `offset..end`; returns the read-ahead to schedule past `end`
    /// (0 when the access looks random).
    fn observe(&mut self, offset: u64, end: u64) -> u64 {
        // The kernel may reorder or overlap a little; anything starting within one window of
        // where the last read ended counts as sequential.
        let sequential = offset <= self.next && self.next <= offset.saturating_add(self.window) && offset > 0
            || (offset == 0 && self.next == 0);
        self.window = if sequential { (self.window * 2).min(MAX_WINDOW) } else { MIN_WINDOW };
        self.next = end;
        if sequential { self.window } else { 0 }
    }
}

/// Read `size` bytes at `offset` of `file`, whose bytes live in `blob`.
pub(crate) async fn read<R: Remote>(
    remote: &Arc<R>,
    file: &RemoteFile,
    blob: &Arc<Blob>,
    ra: &Mutex<ReadAhead>,
    offset: u64,
    size: u32,
) -> FsResult<Vec<u8>> {
    let end = offset.saturating_add(size as u64).min(file.size);
    if offset >= end {
        return Ok(Vec::new());
    }
    let need = blob.blocks_of(offset..end);
    let ahead = ra.lock().unwrap_or_else(|p| p.into_inner()).observe(offset, end);
    let want = match file.content {
        // Small git files come whole: one request, and no doubt about range support.
        ContentId::Git(_) => blob.blocks_of(0..file.size),
        ContentId::Xet(_) => blob.blocks_of(offset..end.saturating_add(ahead)),
    };
    if !blob.has_all(need.clone()) {
        blob.refresh(want.clone())?;
    }
    if !blob.has_all(want.clone()) {
        start_fetches(remote, file, blob, want);
    }
    wait_for(remote, file, blob, need).await?;
    Ok(blob.read(offset, (end - offset) as usize)?)
}

/// Wait until every block of `need` is present, restarting fetches that vanished.
async fn wait_for<R: Remote>(remote: &Arc<R>, file: &RemoteFile, blob: &Arc<Blob>, need: Range<u64>) -> FsResult<()> {
    loop {
        let notified = blob.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if blob.has_all(need.clone()) {
            return Ok(());
        }
        let mut restart = false;
        {
            let mut st = blob.fetch.lock().unwrap_or_else(|p| p.into_inner());
            for b in need.clone() {
                if blob.has(b) {
                    continue;
                }
                if let Some(e) = st.failed.remove(&b) {
                    return Err(FsError::Remote(e));
                }
                if !st.inflight.contains(&b) {
                    restart = true;
                }
            }
        }
        if restart {
            start_fetches(remote, file, blob, need.clone());
            continue;
        }
        notified.await;
    }
}

/// Start background fetches for the blocks of `want` that are neither present nor in flight.
fn start_fetches<R: Remote>(remote: &Arc<R>, file: &RemoteFile, blob: &Arc<Blob>, want: Range<u64>) {
    let runs = {
        let mut st = blob.fetch.lock().unwrap_or_else(|p| p.into_inner());
        let mut runs: Vec<Range<u64>> = Vec::new();
        for b in want {
            if blob.has(b) || st.inflight.contains(&b) {
                continue;
            }
            st.inflight.insert(b);
            st.failed.remove(&b);
            match runs.last_mut() {
                Some(r) if r.end == b => r.end = b + 1,
                _ => runs.push(b..b + 1),
            }
        }
        runs
    };
    for run in runs {
        let (remote, file, blob) = (remote.clone(), file.clone(), blob.clone());
        tokio::spawn(async move { fetch_run(&*remote, &file, &blob, run).await });
    }
}

/// Fetch one run of consecutive blocks, storing each as soon as it is complete.
async fn fetch_run<R: Remote>(remote: &R, file: &RemoteFile, blob: &Blob, run: Range<u64>) {
    let bytes = blob.block_bytes(run.start).start..blob.block_bytes(run.end - 1).end;
    let mut next = run.start;
    let outcome: Result<(), RemoteError> = async {
        let mut stream = remote.read_range(file, bytes.clone()).await?;
        let mut buf = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk?);
            while next < run.end {
                let len = (blob.block_bytes(next).end - blob.block_bytes(next).start) as usize;
                if buf.len() < len {
                    break;
                }
                let block = buf.split_to(len);
                blob.write_block(next, &block)
                    .map_err(|e| RemoteError::Other(format!("writing the content cache: {e}")))?;
                blob.fetch.lock().unwrap_or_else(|p| p.into_inner()).inflight.remove(&next);
                next += 1;
            }
        }
        if next < run.end {
            return Err(RemoteError::Unavailable(format!(
                "{}: the remote sent {} fewer bytes than asked",
                file.path,
                bytes.end - bytes.start - (blob.block_bytes(next).start - bytes.start) - buf.len() as u64
            )));
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        tracing::warn!(path = %file.path, range = ?bytes, error = %e, "fetch failed");
        let mut st = blob.fetch.lock().unwrap_or_else(|p| p.into_inner());
        for b in next..run.end {
            st.inflight.remove(&b);
            st.failed.insert(b, e.clone());
        }
    }
    blob.notify.notify_waiters();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_grows_on_sequential_and_resets_on_seek() {
        let mut ra = ReadAhead::default();
        assert_eq!(ra.observe(0, 131072), 2 * MIN_WINDOW);
        assert_eq!(ra.observe(131072, 262144), 4 * MIN_WINDOW);
        let mut w = 0;
        let mut off = 262144;
        for _ in 0..20 {
            w = ra.observe(off, off + 131072);
            off += 131072;
        }
        assert_eq!(w, MAX_WINDOW);
        assert_eq!(ra.observe(25 << 20, (25 << 20) + 4096), 0, "a seek is random access");
    }
}
