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

/// Per-handle sequential-access detector and prefetch scheduler.
#[derive(Debug)]
pub(crate) struct ReadAhead {
    /// Where the last read ended.
    next: u64,
    window: u64,
    /// End of the last prefetch scheduled for this handle.
    requested_end: u64,
}

impl Default for ReadAhead {
    fn default() -> Self {
        ReadAhead { next: 0, window: MIN_WINDOW, requested_end: 0 }
    }
}

impl ReadAhead {
    /// Record a read of `offset..end`; returns the range to prefetch beyond what the read
    /// needs, if any. Prefetch is scheduled in large batches — only when less than half a
    /// window is already requested ahead of the reader — so a long sequential read costs a
    /// few large remote streams, not one small fetch per kernel read.
    fn observe(&mut self, offset: u64, end: u64) -> Option<Range<u64>> {
        // The kernel may reorder or overlap a little; anything starting within one window of
        // where the last read ended counts as sequential.
        let sequential = (offset <= self.next && self.next <= offset.saturating_add(self.window) && offset > 0)
            || (offset == 0 && self.next == 0);
        self.next = end;
        if !sequential {
            self.window = MIN_WINDOW;
            self.requested_end = end;
            return None;
        }
        self.window = (self.window * 2).min(MAX_WINDOW);
        if self.requested_end >= end + self.window / 2 {
            return None;
        }
        let start = self.requested_end.max(end);
        self.requested_end = end + self.window;
        Some(start..self.requested_end)
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
    if let ContentId::Git(_) = file.content {
        // Small git files come whole: one request, and no doubt about range support.
        let all = blob.blocks_of(0..file.size);
        if !blob.has_all(need.clone()) {
            blob.refresh(all.clone())?;
        }
        if !blob.has_all(all.clone()) {
            start_fetches(remote, file, blob, all);
        }
    } else {
        // What the read needs, and the prefetch batch (one contiguous run when it continues
        // straight after the read).
        let ahead = ahead.map(|r| blob.blocks_of(r)).filter(|r| !r.is_empty());
        let want = match &ahead {
            Some(a) if a.start <= need.end => need.start..a.end.max(need.end),
            _ => need.clone(),
        };
        if !blob.has_all(need.clone()) {
            blob.refresh(want.clone())?;
        }
        if !blob.has_all(want.clone()) {
            start_fetches(remote, file, blob, want.clone());
        }
        if let Some(a) = ahead
            && a.start > want.end
            && !blob.has_all(a.clone())
        {
            start_fetches(remote, file, blob, a);
        }
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
    fn prefetch_comes_in_large_batches_and_resets_on_seek() {
        let mut ra = ReadAhead::default();
        let k = 128 * 1024;
        assert_eq!(ra.observe(0, k), Some(k..k + 2 * MIN_WINDOW));
        // A sequential reader of 1 GiB in 128 KiB reads schedules few, large batches.
        let mut batches = Vec::new();
        let mut off = k;
        while off < (1 << 30) {
            if let Some(r) = ra.observe(off, off + k) {
                batches.push(r);
            }
            off += k;
        }
        assert!(batches.len() < 50, "{} prefetch batches", batches.len());
        assert!(batches.iter().skip(8).all(|r| r.end - r.start >= MAX_WINDOW / 2), "small batches: {batches:?}");
        // Batches never overlap and leave no gap.
        for w in batches.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert_eq!(ra.observe(25 << 20, (25 << 20) + 4096), None, "a seek is random access");
    }
}
