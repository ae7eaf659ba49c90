//! Bucket writes over real FUSE mounts against the emulator: commits seen through the official
//! client, POSIX patterns, fsync durability, dedup, staging GC and quota, crash safety, faults
//! and permission errors. Needs root and /dev/fuse.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use hf_csi::emulator::Faults;

const MIB: usize = 1 << 20;

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// The bytes of `path` in bucket `ns/name` as the official client downloads them.
async fn hub_read(hub: &Hub, bucket: &str, path: &str) -> Option<Vec<u8>> {
    let (ns, name) = bucket.split_once('/').unwrap();
    let client = hf_hub::HFClient::builder().endpoint(hub.endpoint()).token("writer").build().unwrap();
    let b = client.bucket(ns, name);
    let (_, mut stream) = b.download_file_stream().remote_path(path).send().await.ok()?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.ok()?);
    }
    Some(out)
}

/// Every file path in the bucket.
async fn hub_paths(hub: &Hub, bucket: &str) -> Vec<String> {
    let (ns, name) = bucket.split_once('/').unwrap();
    let client = hf_hub::HFClient::builder().endpoint(hub.endpoint()).token("writer").build().unwrap();
    let b = client.bucket(ns, name);
    let stream = b.list_tree().recursive(true).send().unwrap();
    let mut stream = std::pin::pin!(stream);
    let mut out = Vec::new();
    while let Some(e) = stream.next().await {
        if let hf_hub::buckets::BucketTreeEntry::File { path, .. } = e.unwrap() {
            out.push(path);
        }
    }
    out.sort();
    out
}

async fn wait_hub(hub: &Hub, bucket: &str, path: &str, want: &[u8], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if hub_read(hub, bucket, path).await.as_deref() == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{path} did not reach the Hub with the expected bytes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn token_file(dir: &Path, token: &str) -> String {
    let p = dir.join(format!("token-{token}"));
    std::fs::write(&p, token).unwrap();
    p.display().to_string()
}

/// A read-write mount with a write token and a short debounce.
fn rw_mount(hub: &Hub, bucket: &str, mnt: &str, cache: &Path) -> MountCmd {
    rw_mount_debounce(hub, bucket, mnt, cache, 200)
}

fn rw_mount_debounce(hub: &Hub, bucket: &str, mnt: &str, cache: &Path, debounce_ms: u64) -> MountCmd {
    MountCmd::bucket(&hub.endpoint(), bucket, &hub.path(mnt), cache)
        .arg("--token-file")
        .arg(token_file(hub.dir.path(), "writer"))
        .arg("--flush-debounce-ms")
        .arg(debounce_ms.to_string())
}

fn seed(hub_dir: &Path, files: &[(&str, Vec<u8>)]) -> std::path::PathBuf {
    let src = hub_dir.join("seed");
    write_tree(&src, files);
    src
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_commit_and_show_everywhere() {
    require_fuse();
    let hub = start_hub(|cfg, dir| {
        cfg.imports.push(import_bucket("acme/rw", &seed(dir, &[("existing.txt", b"old".to_vec())])));
    })
    .await;
    let m = rw_mount(&hub, "acme/rw", "mnt", &hub.path("cache")).start();

    // fsync is durable: when it returns, the Hub has the bytes.
    let data = pattern(3 * MIB + 17, 5);
    let mut f = std::fs::File::create(m.path("synced.bin")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    assert!(hub_read(&hub, "acme/rw", "synced.bin").await.unwrap() == data, "fsync returned before the commit");
    drop(f);

    // close enqueues a debounced commit.
    std::fs::write(m.path("closed.txt"), b"closed").unwrap();
    assert_eq!(std::fs::read(m.path("closed.txt")).unwrap(), b"closed");
    wait_hub(&hub, "acme/rw", "closed.txt", b"closed", Duration::from_secs(15)).await;

    // Another mount of the bucket sees the file after its poll, same bytes, size and mtime.
    let other = MountCmd::bucket(&hub.endpoint(), "acme/rw", &hub.path("other"), &hub.path("cache2"))
        .arg("--read-only")
        .arg("--poll-interval-secs")
        .arg("1")
        .start();
    wait_until("the other mount to see synced.bin", Duration::from_secs(15), || other.path("synced.bin").exists());
    assert!(std::fs::read(other.path("synced.bin")).unwrap() == data);
    let a = std::fs::metadata(m.path("synced.bin")).unwrap();
    let b = std::fs::metadata(other.path("synced.bin")).unwrap();
    assert_eq!(a.len(), b.len());
    assert!((a.mtime() - b.mtime()).abs() <= 1, "mtime not carried: {} vs {}", a.mtime(), b.mtime());
    other.stop();
    assert_eq!(m.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posix_patterns_on_a_bucket() {
    require_fuse();
    let hub = start_hub(|cfg, dir| {
        let src = seed(
            dir,
            &[
                ("existing.txt", b"old content".to_vec()),
                ("doomed.txt", b"x".to_vec()),
                ("moveme.txt", b"payload".to_vec()),
                ("tree/a.txt", b"A".to_vec()),
                ("tree/sub/b.txt", b"B".to_vec()),
            ],
        );
        cfg.imports.push(import_bucket("acme/posix", &src));
    })
    .await;
    let m = rw_mount(&hub, "acme/posix", "mnt", &hub.path("cache")).start();

    // O_APPEND, truncate, extend, writes past the end.
    std::fs::write(m.path("log.txt"), b"a").unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(m.path("log.txt")).unwrap();
    f.write_all(b"b").unwrap();
    f.write_all(b"c").unwrap();
    drop(f);
    assert_eq!(std::fs::read(m.path("log.txt")).unwrap(), b"abc");
    let f = std::fs::OpenOptions::new().write(true).open(m.path("log.txt")).unwrap();
    f.set_len(1).unwrap();
    f.set_len(4).unwrap();
    f.write_all_at(b"Z", 6).unwrap();
    drop(f);
    assert_eq!(std::fs::read(m.path("log.txt")).unwrap(), b"a\0\0\0\0\0Z");

    // Overwrite part of a remote file: its bytes are fetched into staging first.
    let f = std::fs::OpenOptions::new().write(true).open(m.path("existing.txt")).unwrap();
    f.write_all_at(b"NEW", 0).unwrap();
    drop(f);
    assert_eq!(std::fs::read(m.path("existing.txt")).unwrap(), b"NEW content");
    // O_TRUNC replaces without fetching.
    std::fs::write(m.path("existing.txt"), b"replaced").unwrap();
    assert_eq!(std::fs::read(m.path("existing.txt")).unwrap(), b"replaced");

    // unlink, rename of a remote file, rename over an existing file.
    std::fs::remove_file(m.path("doomed.txt")).unwrap();
    assert!(!m.path("doomed.txt").exists());
    std::fs::rename(m.path("moveme.txt"), m.path("moved.txt")).unwrap();
    assert_eq!(std::fs::read(m.path("moved.txt")).unwrap(), b"payload");
    assert_eq!(errno_of(std::fs::metadata(m.path("moveme.txt"))), libc::ENOENT);
    std::fs::write(m.path("victim.txt"), b"v").unwrap();
    std::fs::rename(m.path("log.txt"), m.path("victim.txt")).unwrap();
    assert_eq!(std::fs::read(m.path("victim.txt")).unwrap(), b"a\0\0\0\0\0Z");

    // Directories: rename a remote tree, implicit empty dirs, rmdir rules.
    std::fs::rename(m.path("tree"), m.path("forest")).unwrap();
    assert_eq!(std::fs::read(m.path("forest/sub/b.txt")).unwrap(), b"B");
    assert_eq!(errno_of(std::fs::metadata(m.path("tree"))), libc::ENOENT);
    std::fs::create_dir(m.path("empty")).unwrap();
    assert!(m.path("empty").is_dir());
    assert_eq!(errno_of(std::fs::create_dir(m.path("empty"))), libc::EEXIST);
    assert_eq!(errno_of(std::fs::remove_dir(m.path("forest"))), libc::ENOTEMPTY);
    std::fs::create_dir_all(m.path("gone/deeper")).unwrap();
    std::fs::remove_dir(m.path("gone/deeper")).unwrap();
    std::fs::remove_dir(m.path("gone")).unwrap();
    assert!(!m.path("gone").exists());

    // Attributes kept locally; links refused (a bucket cannot store them).
    std::fs::set_permissions(m.path("moved.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(std::fs::metadata(m.path("moved.txt")).unwrap().mode() & 0o777, 0o600);
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options().write(true).open(m.path("victim.txt")).unwrap().set_modified(old).unwrap();
    assert_eq!(std::fs::metadata(m.path("victim.txt")).unwrap().mtime(), 1_000_000_000);
    assert_eq!(errno_of(std::fs::hard_link(m.path("moved.txt"), m.path("hard"))), libc::EPERM);
    assert_eq!(errno_of(std::os::unix::fs::symlink("moved.txt", m.path("sym"))), libc::EPERM);

    // Unmount commits everything; the Hub then holds exactly the merged view.
    assert_eq!(m.stop(), 0);
    assert_eq!(
        hub_paths(&hub, "acme/posix").await,
        ["existing.txt", "forest/a.txt", "forest/sub/b.txt", "moved.txt", "victim.txt"]
    );
    assert_eq!(hub_read(&hub, "acme/posix", "existing.txt").await.unwrap(), b"replaced");
    assert_eq!(hub_read(&hub, "acme/posix", "victim.txt").await.unwrap(), b"a\0\0\0\0\0Z");
    assert_eq!(hub_read(&hub, "acme/posix", "forest/a.txt").await.unwrap(), b"A");
    // The empty directory stayed local: a bucket has no directories of its own.
    let again = rw_mount(&hub, "acme/posix", "mnt2", &hub.path("cache")).start();
    assert!(again.path("empty").is_dir(), "the empty local directory did not persist");
    again.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_writes_into_a_large_remote_file_and_dedup() {
    require_fuse();
    let big = pattern(100 * MIB, 21);
    let hub = start_hub(|cfg, dir| {
        cfg.imports.push(import_bucket("acme/big", &seed(dir, &[("big.bin", big.clone())])));
    })
    .await;
    let m = rw_mount(&hub, "acme/big", "mnt", &hub.path("cache")).start();
    let mut model = big.clone();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(m.path("big.bin")).unwrap();
    let mut x = 7u64;
    for i in 0..40 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x % (model.len() as u64 - 5000)) as usize;
        let chunk = pattern(4096 + i, x);
        f.write_all_at(&chunk, off as u64).unwrap();
        model[off..off + chunk.len()].copy_from_slice(&chunk);
    }
    let before = hub.metrics().sum("hub_cas_bytes_received_total", &[]);
    f.sync_all().unwrap();
    let uploaded = hub.metrics().sum("hub_cas_bytes_received_total", &[]) - before;
    drop(f);
    let got = std::fs::read(m.path("big.bin")).unwrap();
    assert!(got == model, "the mount's view differs from the model");
    assert!(hub_read(&hub, "acme/big", "big.bin").await.unwrap() == model, "the Hub's copy differs");
    println!("40 random writes into 100 MiB: {uploaded} CAS bytes uploaded");
    assert!(uploaded < 40.0 * MIB as f64, "random writes re-uploaded {uploaded} bytes");

    // An identical rewrite (a second file with the same bytes) uploads almost nothing.
    let before = hub.metrics().sum("hub_cas_bytes_received_total", &[]);
    let mut f = std::fs::File::create(m.path("copy.bin")).unwrap();
    f.write_all(&model).unwrap();
    f.sync_all().unwrap();
    let dup = hub.metrics().sum("hub_cas_bytes_received_total", &[]) - before;
    println!("identical 100 MiB rewrite: {dup} CAS bytes uploaded");
    assert!(dup < 0.01 * model.len() as f64, "identical rewrite uploaded {dup} bytes");
    assert_eq!(m.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_gc_and_quota() {
    require_fuse();
    let hub = start_hub(|_, _| {}).await;
    let client = hf_hub::HFClient::builder().endpoint(hub.endpoint()).token("writer").build().unwrap();
    client.create_bucket().namespace("acme").name("q").send().await.unwrap();
    let staging = hub.path("staging");
    let m = rw_mount(&hub, "acme/q", "mnt", &hub.path("cache"))
        .arg("--staging-dir")
        .arg(staging.display().to_string())
        .arg("--max-staging-size")
        .arg("4M")
        .arg("--staging-quota")
        .arg("8M")
        .start();
    let staged = || -> u64 {
        std::fs::read_dir(staging.join("data")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
    };

    // GC: five 2 MiB files, committed; clean ones are dropped down to the 4 MiB threshold.
    let files: Vec<Vec<u8>> = (0..5).map(|i| pattern(2 * MIB, 100 + i)).collect();
    for (i, d) in files.iter().enumerate() {
        let mut f = std::fs::File::create(m.path(&format!("f{i}"))).unwrap();
        f.write_all(d).unwrap();
        f.sync_all().unwrap();
    }
    wait_until("the staging GC", Duration::from_secs(10), || staged() <= 4 * MIB as u64);
    for (i, d) in files.iter().enumerate() {
        assert!(std::fs::read(m.path(&format!("f{i}"))).unwrap() == *d, "f{i} wrong after GC");
    }

    // df tells the truth about the quota.
    let vfs = nix_statvfs(&m.mountpoint);
    assert_eq!(vfs.0, 8 * MIB as u64, "statfs total is not the quota");

    // Quota: a writer that keeps a 6 MiB file open cannot get 4 MiB more.
    let mut a = std::fs::File::create(m.path("a.bin")).unwrap();
    let da = pattern(6 * MIB, 7);
    a.write_all(&da).unwrap();
    let mut b = std::fs::File::create(m.path("b.bin")).unwrap();
    let err = b.write_all(&pattern(4 * MIB, 8)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(b);
    // Nothing lost: the open file is intact, and once it is closed and flushed there is room.
    a.seek(SeekFrom::Start(0)).unwrap();
    assert!(std::fs::read(m.path("a.bin")).unwrap() == da);
    drop(a);
    let mut b = std::fs::File::create(m.path("b.bin")).unwrap();
    b.write_all(&pattern(4 * MIB, 8)).unwrap();
    b.sync_all().unwrap();
    drop(b);
    assert!(staged() <= 8 * MIB as u64);
    assert_eq!(m.stop(), 0);
    assert!(hub_read(&hub, "acme/q", "a.bin").await.unwrap() == da);
}

fn nix_statvfs(p: &Path) -> (u64, u64) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: zeroed statvfs is a valid out-parameter; `c` is a valid path.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    (s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_close_loses_nothing() {
    require_fuse();
    let hub = start_hub(|_, _| {}).await;
    let client = hf_hub::HFClient::builder().endpoint(hub.endpoint()).token("writer").build().unwrap();
    client.create_bucket().namespace("acme").name("crash").send().await.unwrap();
    let cache = hub.path("cache");
    let data = pattern(5 * MIB + 3, 77);
    // A debounce of ten minutes: nothing is committed before the kill.
    let m = rw_mount_debounce(&hub, "acme/crash", "mnt", &cache, 600_000).start();
    std::fs::write(m.path("precious.bin"), &data).unwrap();
    std::fs::create_dir(m.path("d")).unwrap();
    std::fs::write(m.path("d/small.txt"), b"small").unwrap();
    std::fs::rename(m.path("d/small.txt"), m.path("d/renamed.txt")).unwrap();
    m.kill();
    assert!(hub_read(&hub, "acme/crash", "precious.bin").await.is_none(), "committed before the kill?");

    // The next mount with the same cache dir and source finds and commits the staged files.
    let again = rw_mount(&hub, "acme/crash", "mnt", &cache).start();
    assert!(std::fs::read(again.path("precious.bin")).unwrap() == data);
    wait_hub(&hub, "acme/crash", "precious.bin", &data, Duration::from_secs(20)).await;
    wait_hub(&hub, "acme/crash", "d/renamed.txt", b"small", Duration::from_secs(20)).await;
    assert_eq!(hub_paths(&hub, "acme/crash").await, ["d/renamed.txt", "precious.bin"]);
    assert_eq!(again.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_survives_injected_faults() {
    require_fuse();
    let hub = start_hub(|_, _| {}).await;
    let client = hf_hub::HFClient::builder().endpoint(hub.endpoint()).token("writer").build().unwrap();
    client.create_bucket().namespace("acme").name("flaky").send().await.unwrap();
    let m = rw_mount(&hub, "acme/flaky", "mnt", &hub.path("cache")).start();
    hub.emu.set_faults(Faults { fail_rate: 0.3, ..Faults::default() });
    let files: Vec<(String, Vec<u8>)> =
        (0..20).map(|i| (format!("f{i:02}.bin"), pattern(64 * 1024 + i, i as u64))).collect();
    for (name, data) in &files {
        std::fs::write(m.path(name), data).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let have = hub_paths(&hub, "acme/flaky").await;
        if have.len() == files.len() {
            break;
        }
        assert!(Instant::now() < deadline, "only {} of {} files committed under faults", have.len(), files.len());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    hub.emu.set_faults(Faults::default());
    assert!(hub.metrics().with_status(429) + hub.metrics().with_status(503) > 0.0, "no fault was injected");
    let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(hub_paths(&hub, "acme/flaky").await, names, "missing or extra files");
    for (name, data) in &files {
        assert!(hub_read(&hub, "acme/flaky", name).await.unwrap() == *data, "{name} differs");
    }
    assert_eq!(m.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_token_gets_eacces_and_keeps_the_data() {
    require_fuse();
    let hub = start_hub(|_, _| {}).await;
    let client = hf_hub::HFClient::builder().endpoint(hub.endpoint()).token("writer").build().unwrap();
    client.create_bucket().namespace("acme").name("ro").send().await.unwrap();
    let cache = hub.path("cache");
    let tok = hub.dir.path().join("token");
    std::fs::write(&tok, "reader").unwrap();
    let m = MountCmd::bucket(&hub.endpoint(), "acme/ro", &hub.path("mnt"), &cache)
        .arg("--token-file")
        .arg(tok.display().to_string())
        .arg("--flush-timeout-secs")
        .arg("2")
        .start();
    let mut f =
        std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o644).open(m.path("w.txt")).unwrap();
    f.write_all(b"keep me").unwrap();
    let err = f.sync_all().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    drop(f);
    // Unmount cannot commit: it says so (non-zero exit) and keeps the file staged.
    assert_ne!(m.stop(), 0);
    assert!(hub_read(&hub, "acme/ro", "w.txt").await.is_none());
    // With a write token, the next mount commits it.
    std::fs::write(&tok, "writer").unwrap();
    let again = MountCmd::bucket(&hub.endpoint(), "acme/ro", &hub.path("mnt"), &cache)
        .arg("--token-file")
        .arg(tok.display().to_string())
        .arg("--flush-debounce-ms")
        .arg("100")
        .start();
    wait_hub(&hub, "acme/ro", "w.txt", b"keep me", Duration::from_secs(20)).await;
    assert_eq!(again.stop(), 0);
}
