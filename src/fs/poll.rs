//! The change poll: every interval, re-list the directories whose listings are cached so remote
//! additions, deletions and changes become visible without a remount (kernel caches are
//! invalidated through the [`super::Invalidator`]).

use std::time::Duration;

use super::Fs;
use crate::hub::Remote;

/// At most this many directories are re-listed per round.
const MAX_DIRS_PER_ROUND: usize = 2000;

/// Run the poll until the filesystem is dropped elsewhere (holds only a weak reference).
pub async fn run_poll<R: Remote>(fs: std::sync::Weak<Fs<R>>, interval: Duration) {
    let weak = fs;
    loop {
        tokio::time::sleep(interval).await;
        let Some(fs) = weak.upgrade() else { return };
        let changes = fs.refresh_listed(MAX_DIRS_PER_ROUND).await;
        if changes > 0 {
            tracing::debug!(changes, "poll round applied remote changes");
        }
    }
}
