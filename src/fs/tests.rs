//! Unit tests of the filesystem over the in-memory remote: staging GC order and eligibility,
//! quota, overlay merging and persistence. Real-mount tests live under `tests/`.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use super::fake::FakeRemote;
use super::*;
use crate::hub::Remote;

struct Setup {
    fs: Arc<Fs<FakeRemote>>,
    _dir: tempfile::TempDir,
}

async fn setup(
    remote: FakeRemote,
    write: WriteMode,
    max_staging: u64,
    quota: u64,
    dir: Option<&std::path::Path>,
) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let layer_dir = dir.map(|d| d.to_path_buf()).unwrap_or_else(|| tmp.path().join("layer"));
    let cache = ContentCache::open(&tmp.path().join("cache"), 0).unwrap();
    let remote = Arc::new(remote);
    let info = remote.open().await.unwrap();
    let cfg = FsConfig {
        uid: 0,
        gid: 0,
        write,
        staging: Some(StagingConfig { dir: layer_dir, max_staging_size: max_staging, staging_quota: quota }),
        metadata_ttl: Duration::from_secs(60),
        poll_interval: None,
        max_inodes: 10_000,
    };
    Setup { fs: Fs::new(remote, info, cfg, cache).unwrap(), _dir: tmp }
}

fn bucket() -> WriteMode {
    WriteMode::Bucket(FlushConfig {
        debounce: Duration::from_millis(0),
        max_window: Duration::from_secs(60),
        unmount_timeout: Duration::from_secs(5),
    })
}

/// Create `name` in the root with `data`, then close it.
async fn put(fs: &Fs<FakeRemote>, name: &str, data: &[u8]) -> Ino {
    let (e, o) = fs.create(ROOT_INO, OsStr::new(name), 0o644, 0, OpenFlags::default(), false, 0, 0).await.unwrap();
    fs.write(e.attr.ino, o.fh, 0, data).await.unwrap();
    fs.flush_handle(e.attr.ino, o.fh).unwrap();
    fs.release(o.fh);
    e.attr.ino
}

async fn get(fs: &Fs<FakeRemote>, name: &str) -> Vec<u8> {
    let e = fs.lookup(ROOT_INO, OsStr::new(name)).await.unwrap();
    let o = fs.open(e.attr.ino, OpenFlags::default()).await.unwrap();
    let d = fs.read(e.attr.ino, o.fh, 0, 1 << 20).await.unwrap();
    fs.release(o.fh);
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_drops_least_recently_used_clean_files_only() {
    let s = setup(FakeRemote::default(), bucket(), 0, 0, None).await;
    let fs = &s.fs;
    for (i, name) in ["old", "mid", "new"].iter().enumerate() {
        put(fs, name, &vec![i as u8; 1000]).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A dirty file is never eligible.
    put(fs, "dirty", &[9; 1000]).await;
    fs.flush_round(&FlushConfig {
        debounce: Duration::ZERO,
        max_window: Duration::ZERO,
        unmount_timeout: Duration::ZERO,
    })
    .await
    .unwrap();
    // Make "dirty" dirty again after the commit, and keep "new" open.
    let e = fs.lookup(ROOT_INO, OsStr::new("dirty")).await.unwrap();
    let o = fs.open(e.attr.ino, OpenFlags { write: true, ..Default::default() }).await.unwrap();
    fs.write(e.attr.ino, o.fh, 0, b"changed").await.unwrap();
    let n = fs.lookup(ROOT_INO, OsStr::new("new")).await.unwrap();
    let held = fs.open(n.attr.ino, OpenFlags::default()).await.unwrap();
    assert_eq!(fs.staging_usage(), 4000);
    // Ask for 1000 bytes: "old" (least recently used, clean, closed) goes first, then "mid".
    let freed = fs.gc_to(2500);
    assert_eq!(freed, 2000);
    let layer = fs.layer.as_ref().unwrap();
    assert!(layer.get("old").is_none() && layer.get("mid").is_none());
    assert!(layer.get("new").is_some(), "an open file was collected");
    assert!(layer.get("dirty").is_some(), "a dirty file was collected");
    // Nothing more is eligible.
    assert_eq!(fs.gc_to(0), 0);
    // Collected files read from the remote.
    assert_eq!(get(fs, "old").await, vec![0u8; 1000]);
    fs.release(held.fh);
    fs.release(o.fh);
}

#[tokio::test(flavor = "multi_thread")]
async fn quota_refuses_and_accounts_every_byte() {
    let s = setup(FakeRemote::with(&[("remote.bin", &[7u8; 3000])]), bucket(), 0, 4000, None).await;
    let fs = &s.fs;
    let (e, o) = fs.create(ROOT_INO, OsStr::new("a"), 0o644, 0, OpenFlags::default(), false, 0, 0).await.unwrap();
    fs.write(e.attr.ino, o.fh, 0, &[1; 3000]).await.unwrap();
    assert!(fs.fits(1000) && !fs.fits(1001));
    // A copy-up counts too: 3000 more bytes do not fit while "a" is open and dirty.
    let r = fs.lookup(ROOT_INO, OsStr::new("remote.bin")).await.unwrap();
    let err = fs.open(r.attr.ino, OpenFlags { write: true, ..Default::default() }).await.unwrap_err();
    assert!(matches!(err, FsError::NoSpace), "{err:?}");
    assert!(matches!(fs.write(e.attr.ino, o.fh, 3000, &[1; 1001]).await, Err(FsError::NoSpace)));
    fs.write(e.attr.ino, o.fh, 3000, &[1; 1000]).await.unwrap();
    assert_eq!(fs.staging_usage(), 4000);
    let st = fs.statfs();
    // statfs reports the quota as the size (whole blocks) and nothing left.
    assert_eq!(st.blocks, 4000 / u64::from(st.block_size));
    assert_eq!(st.blocks_available, 0);
    fs.release(o.fh);
}

#[tokio::test(flavor = "multi_thread")]
async fn overlay_merges_hides_and_persists() {
    let remote = FakeRemote::with(&[("keep.txt", b"remote"), ("gone.txt", b"x"), ("dir/inner.txt", b"i")]);
    let tmp = tempfile::tempdir().unwrap();
    let layer = tmp.path().join("upper");
    {
        let s = setup(remote, WriteMode::Overlay, 0, 0, Some(&layer)).await;
        let fs = &s.fs;
        put(fs, "local.txt", b"mine").await;
        let g = fs.lookup(ROOT_INO, OsStr::new("gone.txt")).await.unwrap();
        fs.forget(g.attr.ino, 1);
        fs.unlink(ROOT_INO, OsStr::new("gone.txt")).await.unwrap();
        fs.rename(ROOT_INO, OsStr::new("dir"), ROOT_INO, OsStr::new("moved"), 0).await.unwrap();
        assert!(matches!(fs.lookup(ROOT_INO, OsStr::new("gone.txt")).await, Err(FsError::NotFound)));
        assert_eq!(fs.remote.commits.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(fs.remote.read("gone.txt").is_some(), "the overlay changed the remote");
    }
    // A new filesystem over the same upper layer shows the same merged view.
    let remote = FakeRemote::with(&[("keep.txt", b"remote"), ("gone.txt", b"x"), ("dir/inner.txt", b"i")]);
    let s = setup(remote, WriteMode::Overlay, 0, 0, Some(&layer)).await;
    let fs = &s.fs;
    let d = fs.opendir(ROOT_INO).await.unwrap();
    let mut names: Vec<String> = fs.readdir(ROOT_INO, d, 0).await.unwrap().iter().map(|e| e.name.clone()).collect();
    names.sort();
    assert_eq!(names, [".", "..", "keep.txt", "local.txt", "moved"]);
    assert_eq!(get(fs, "local.txt").await, b"mine");
    assert_eq!(get(fs, "keep.txt").await, b"remote");
    let moved = fs.lookup(ROOT_INO, OsStr::new("moved")).await.unwrap();
    let inner = fs.lookup(moved.attr.ino, OsStr::new("inner.txt")).await.unwrap();
    let o = fs.open(inner.attr.ino, OpenFlags::default()).await.unwrap();
    assert_eq!(fs.read(inner.attr.ino, o.fh, 0, 100).await.unwrap(), b"i");
    assert!(matches!(fs.lookup(ROOT_INO, OsStr::new("dir")).await, Err(FsError::NotFound)));
}
