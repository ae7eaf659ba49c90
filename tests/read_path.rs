//! Read path over real FUSE mounts against the emulator: byte-exact reads, laziness, listings,
//! pinning, change polling, errors and faults. Needs root and /dev/fuse.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::*;
use hf_csi::emulator::{FaultScope, Faults, RepoKind};

const MIB: usize = 1 << 20;

fn sha(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_reads_are_byte_exact_and_lazy() {
    require_fuse();
    let big = pattern(200 * MIB, 7);
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("empty.txt", vec![]),
        ("one.bin", vec![0x5a]),
        ("mib.bin", pattern(MIB, 1)),
        ("big.bin", big.clone()),
        ("nested/a/b/deep.txt", b"deep\n".to_vec()),
        ("nested/a/sibling.txt", b"sib\n".to_vec()),
    ];
    let hub = start_hub(|cfg, dir| {
        let src = dir.join("src");
        write_tree(&src, &files);
        cfg.imports.push(import_bucket("acme/data", &src));
    })
    .await;
    let cache = hub.path("cache");
    let m = MountCmd::bucket(&hub.endpoint(), "acme/data", &hub.path("mnt"), &cache).start();

    // Laziness first, on a cold cache: 1 MiB at 25 MiB of the 200 MiB file.
    let before = hub.metrics().cas_bytes_served();
    let f = std::fs::File::open(m.path("big.bin")).unwrap();
    let mut buf = vec![0u8; MIB];
    f.read_exact_at(&mut buf, 25 * MIB as u64).unwrap();
    assert_eq!(buf, big[25 * MIB..26 * MIB]);
    let served = hub.metrics().cas_bytes_served() - before;
    println!("lazy read: CAS served {served} bytes for a 1 MiB read at 25 MiB of 200 MiB");
    assert!(served > 0.0 && served < 16.0 * MIB as f64, "CAS served {served} bytes");

    // Random ranges compared with the source.
    let mut seed = 42u64;
    for _ in 0..64 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let off = (seed % big.len() as u64) as usize;
        let len = ((seed >> 20) % (300 * 1024) as u64) as usize + 1;
        let len = len.min(big.len() - off);
        let mut got = vec![0u8; len];
        f.read_exact_at(&mut got, off as u64).unwrap();
        assert!(got == big[off..off + len], "mismatch at {off}+{len}");
    }
    // A read past the end returns nothing.
    assert_eq!(f.read_at(&mut buf, big.len() as u64 + 10).unwrap(), 0);

    // Whole files, byte-exact.
    for (p, data) in &files {
        let got = std::fs::read(m.path(p)).unwrap();
        assert_eq!(got.len(), data.len(), "{p}");
        assert!(sha(&got) == sha(data), "{p} differs");
        assert_eq!(std::fs::metadata(m.path(p)).unwrap().len(), data.len() as u64);
    }
    // Sequential read with small buffers through a seek.
    let mut f2 = std::fs::File::open(m.path("mib.bin")).unwrap();
    f2.seek(SeekFrom::Start(1000)).unwrap();
    let mut rest = Vec::new();
    f2.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, files[2].1[1000..]);

    // Nested directories and listings.
    let mut top: Vec<String> =
        std::fs::read_dir(m.path("")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    top.sort();
    assert_eq!(top, ["big.bin", "empty.txt", "mib.bin", "nested", "one.bin"]);
    assert!(std::fs::metadata(m.path("nested/a")).unwrap().is_dir());
    assert_eq!(std::fs::read(m.path("nested/a/b/deep.txt")).unwrap(), b"deep\n");
    assert_eq!(errno_of(std::fs::metadata(m.path("nested/nope"))), libc::ENOENT);
    assert_eq!(errno_of(std::fs::read_dir(m.path("one.bin"))), libc::ENOTDIR);
    m.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_cache_fetches_once_and_warm_reads_stay_local() {
    require_fuse();
    let data = pattern(24 * MIB, 3);
    let hub = start_hub(|cfg, dir| {
        let src = dir.join("src");
        write_tree(&src, &[("w.bin", data.clone())]);
        cfg.imports.push(import_bucket("acme/w", &src));
    })
    .await;
    let cache = hub.path("cache");
    let a = MountCmd::bucket(&hub.endpoint(), "acme/w", &hub.path("a"), &cache).arg("--read-only").start();
    let b = MountCmd::bucket(&hub.endpoint(), "acme/w", &hub.path("b"), &cache).arg("--read-only").start();
    let before = hub.metrics().cas_bytes_served();
    assert!(std::fs::read(a.path("w.bin")).unwrap() == data);
    let first = hub.metrics().cas_bytes_served() - before;
    assert!(first >= data.len() as f64 * 0.9, "first read served {first}");
    // The second mount shares the cache directory: no more CAS bytes.
    assert!(std::fs::read(b.path("w.bin")).unwrap() == data);
    let second = hub.metrics().cas_bytes_served() - before - first;
    assert_eq!(second, 0.0, "second mount fetched {second} bytes again");
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_directory_lists_in_one_pass() {
    require_fuse();
    let hub = start_hub(|cfg, dir| {
        let src = dir.join("src");
        write_tree(&src, &[("seed.txt", b"x".to_vec())]);
        cfg.imports.push(import_bucket("acme/many", &src));
    })
    .await;
    // Register 10,000 entries sharing one Xet hash, as a client that already uploaded would.
    let client = hf_hub::HFClient::builder().endpoint(hub.endpoint()).token("writer").build().unwrap();
    let bucket = client.bucket("acme", "many");
    let seed = bucket.get_paths_info().paths(vec!["seed.txt".into()]).send().await.unwrap();
    let hash = match &seed[0] {
        hf_hub::buckets::BucketTreeEntry::File { xet_hash, .. } => xet_hash.clone(),
        other => panic!("unexpected {other:?}"),
    };
    let adds = (0..10_000)
        .map(|i| hf_hub::buckets::BucketAddFile {
            path: format!("big/f{i:05}"),
            xet_hash: hash.clone(),
            size: 1,
            mtime: None,
            content_type: None,
        })
        .collect();
    bucket.batch_operations().add_files(adds).send().await.unwrap();

    let m = MountCmd::bucket(&hub.endpoint(), "acme/many", &hub.path("mnt"), &hub.path("cache")).start();
    let before = hub.metrics();
    let out = std::process::Command::new("ls").arg("-l").arg(m.path("big")).output().unwrap();
    assert!(out.status.success());
    let lines = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(" f")).count();
    assert_eq!(lines, 10_000);
    let after = hub.metrics();
    let requests = after.sum("hub_requests_total", &[]) - before.sum("hub_requests_total", &[]);
    println!("ls -l of 10,000 entries: {requests} Hub requests");
    assert!(requests <= 30.0, "ls -l made {requests} requests (expected one paginated listing)");
    m.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repo_revisions_are_pinned() {
    require_fuse();
    let weights = pattern(11 * MIB, 9);
    let hub = start_hub(|cfg, dir| {
        let v1 = dir.join("v1");
        let v2 = dir.join("v2");
        write_tree(&v1, &[("config.json", b"{\"v\":1}".to_vec()), ("w.bin", weights.clone())]);
        write_tree(
            &v2,
            &[("config.json", b"{\"v\":2}".to_vec()), ("w.bin", weights.clone()), ("sub/new.txt", b"n".to_vec())],
        );
        cfg.imports.push(import_repo(RepoKind::Model, "acme/m", &v1, Some("v1")));
        cfg.imports.push(import_repo(RepoKind::Model, "acme/m", &v2, None));
    })
    .await;
    let cache = hub.path("cache");
    let main = MountCmd::repo(&hub.endpoint(), "acme/m", &hub.path("main"), &cache).start();
    let v1 = MountCmd::repo(&hub.endpoint(), "acme/m", &hub.path("v1"), &cache).arg("--revision").arg("v1").start();
    assert_eq!(std::fs::read(main.path("config.json")).unwrap(), b"{\"v\":2}");
    assert_eq!(std::fs::read(v1.path("config.json")).unwrap(), b"{\"v\":1}");
    assert!(std::fs::read(main.path("w.bin")).unwrap() == weights);
    assert!(std::fs::read(v1.path("w.bin")).unwrap() == weights);
    assert_eq!(std::fs::read(main.path("sub/new.txt")).unwrap(), b"n");
    assert_eq!(errno_of(std::fs::metadata(v1.path("sub"))), libc::ENOENT);
    // Read-only: every mutation is refused with EROFS.
    assert_eq!(errno_of(std::fs::write(main.path("x"), b"1")), libc::EROFS);
    assert_eq!(errno_of(std::fs::create_dir(main.path("d"))), libc::EROFS);
    assert_eq!(errno_of(std::fs::remove_file(main.path("config.json"))), libc::EROFS);
    assert_eq!(errno_of(std::fs::rename(main.path("config.json"), main.path("c2"))), libc::EROFS);
    assert_eq!(errno_of(std::fs::OpenOptions::new().write(true).open(main.path("config.json"))), libc::EROFS);

    // Pinning by sha: the v1 mount's commit, taken from the process banner.
    let client = hf_hub::HFClient::builder().endpoint(hub.endpoint()).build().unwrap();
    let sha = client.model("acme", "m").info().revision("v1".to_string()).send().await.unwrap().sha.unwrap();
    let by_sha =
        MountCmd::repo(&hub.endpoint(), "acme/m", &hub.path("sha"), &cache).arg("--revision").arg(sha.as_str()).start();
    assert_eq!(std::fs::read(by_sha.path("config.json")).unwrap(), b"{\"v\":1}");
    // A subfolder mount.
    let sub = MountCmd::repo(&hub.endpoint(), "acme/m/sub", &hub.path("sub"), &cache).start();
    assert_eq!(std::fs::read(sub.path("new.txt")).unwrap(), b"n");
    for m in [main, v1, by_sha, sub] {
        m.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_changes_show_up_after_the_poll() {
    require_fuse();
    let hub = start_hub(|cfg, dir| {
        let src = dir.join("src");
        write_tree(&src, &[("keep.txt", b"old".to_vec()), ("gone.txt", b"bye".to_vec())]);
        cfg.imports.push(import_bucket("acme/live", &src));
    })
    .await;
    let m = MountCmd::bucket(&hub.endpoint(), "acme/live", &hub.path("mnt"), &hub.path("cache"))
        .arg("--poll-interval-secs")
        .arg("1")
        .arg("--metadata-ttl-ms")
        .arg("60000")
        .start();
    assert_eq!(std::fs::read(m.path("keep.txt")).unwrap(), b"old");
    assert!(m.path("gone.txt").exists());
    assert!(!m.path("new.txt").exists());

    let client = hf_hub::HFClient::builder().endpoint(hub.endpoint()).token("writer").build().unwrap();
    let bucket = client.bucket("acme", "live");
    bucket
        .upload_source_files()
        .files(vec![
            ("keep.txt".to_string(), hf_hub::repository::AddSource::bytes(b"new content".to_vec())),
            ("new.txt".to_string(), hf_hub::repository::AddSource::bytes(b"fresh".to_vec())),
        ])
        .send()
        .await
        .unwrap();
    bucket.delete_files().paths(vec!["gone.txt".into()]).send().await.unwrap();

    // The metadata TTL is a minute: only the poll can make these visible this fast.
    wait_until("the poll to apply remote changes", Duration::from_secs(15), || {
        m.path("new.txt").exists() && !m.path("gone.txt").exists()
    });
    assert_eq!(std::fs::read(m.path("new.txt")).unwrap(), b"fresh");
    wait_until("the changed file to read new bytes", Duration::from_secs(15), || {
        std::fs::read(m.path("keep.txt")).unwrap() == b"new content"
    });
    m.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_unmount_ends_the_process_and_spares_a_new_mount_at_the_same_path() {
    require_fuse();
    let hub = start_hub(|cfg, dir| {
        let src = dir.join("src");
        write_tree(&src, &[("a.txt", b"a".to_vec())]);
        cfg.imports.push(import_bucket("acme/b", &src));
    })
    .await;
    let mnt = hub.path("mnt");
    let old = MountCmd::bucket(&hub.endpoint(), "acme/b", &mnt, &hub.path("cache-old")).start();
    assert_eq!(std::fs::read(old.path("a.txt")).unwrap(), b"a");
    // kubelet unmounts a volume and publishes it again at the same path before the old
    // server has noticed: the old one is stopped meanwhile, so the order is certain.
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(old.pid() as i32, libc::SIGSTOP) };
    // umount(2) itself, not umount(8): that one stats the path first and would wait for the
    // stopped server.
    let c = std::ffi::CString::new(mnt.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let st = unsafe { libc::umount2(c.as_ptr(), 0) };
    let umount_error = std::io::Error::last_os_error();
    let new = MountCmd::bucket(&hub.endpoint(), "acme/b", &mnt, &hub.path("cache-new")).start();
    // SAFETY: as above.
    unsafe { libc::kill(old.pid() as i32, libc::SIGCONT) };
    assert_eq!(st, 0, "umount: {umount_error}");
    assert_eq!(old.wait_exit(), 0);
    assert!(common::mounts::is_mounted(&mnt), "the old server's exit took down the new mount");
    assert_eq!(std::fs::read(new.path("a.txt")).unwrap(), b"a");
    assert_eq!(new.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_with_one_clear_line() {
    require_fuse();
    let hub = start_hub(|cfg, dir| {
        let src = dir.join("src");
        write_tree(&src, &[("a.txt", b"a".to_vec())]);
        cfg.imports.push(import_bucket("acme/secret", &src));
        cfg.imports.push(import_repo(RepoKind::Model, "acme/m", &src, None));
        cfg.private.push("acme/secret".into());
    })
    .await;
    let e = hub.endpoint();
    let cache = hub.path("cache");
    let cases: Vec<(MountCmd, &str)> = vec![
        (MountCmd::bucket(&e, "acme/nope", &hub.path("m1"), &cache), "not found"),
        (MountCmd::bucket(&e, "acme/secret", &hub.path("m2"), &cache), "authentication required"),
        (
            MountCmd::bucket(&e, "acme/secret", &hub.path("m3"), &cache).env("HF_TOKEN", "not-a-real-token"),
            "authentication required",
        ),
        (MountCmd::repo(&e, "acme/m", &hub.path("m4"), &cache).arg("--revision").arg("nope"), "not found"),
        (MountCmd::repo(&e, "acme/m", &hub.path("m5"), &cache).arg("--revision").arg("../../etc"), "revision"),
        (MountCmd::repo(&e, "acme/m/missing-dir", &hub.path("m6"), &cache), "not found"),
        (MountCmd::bucket(&e, "acme", &hub.path("m7"), &cache), "NAMESPACE/NAME"),
    ];
    for (cmd, want) in cases {
        let (code, stderr) = cmd.fail();
        assert_ne!(code, 0);
        let last = stderr.lines().filter(|l| l.starts_with("error:")).collect::<Vec<_>>();
        assert_eq!(last.len(), 1, "expected one error line, got:\n{stderr}");
        assert!(last[0].contains(want), "{want:?} not in {:?}", last[0]);
        assert!(!stderr.contains("not-a-real-token"), "the token leaked into the output");
    }
    // A missing mountpoint.
    let missing = hub.dir.path().join("does-not-exist");
    let out = std::process::Command::new(bin())
        .args(["mount", "bucket", "acme/secret"])
        .arg(&missing)
        .args(["--hub-endpoint", &e])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    // With the right token the private bucket mounts.
    let tok = hub.dir.path().join("token");
    std::fs::write(&tok, "reader").unwrap();
    let ok = MountCmd::bucket(&e, "acme/secret", &hub.path("m8"), &cache)
        .arg("--token-file")
        .arg(tok.display().to_string())
        .start();
    assert_eq!(std::fs::read(ok.path("a.txt")).unwrap(), b"a");
    ok.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_are_survived_and_permanent_ones_give_eio() {
    require_fuse();
    let data = pattern(3 * MIB, 11);
    let other = pattern(3 * MIB, 13);
    let hub = start_hub(|cfg, dir| {
        let src = dir.join("src");
        write_tree(&src, &[("f.bin", data.clone()), ("g.bin", other.clone()), ("h.bin", pattern(MIB, 12))]);
        cfg.imports.push(import_bucket("acme/faulty", &src));
    })
    .await;
    let m = MountCmd::bucket(&hub.endpoint(), "acme/faulty", &hub.path("mnt"), &hub.path("cache")).start();
    assert!(m.path("f.bin").exists());

    // One 429 on the next CAS request: the read still succeeds.
    let before = hub.metrics().with_status(429);
    hub.emu.set_faults(Faults { fail_next: 1, fail_status: 429, scope: FaultScope::Cas, ..Faults::default() });
    assert!(std::fs::read(m.path("f.bin")).unwrap() == data);
    assert_eq!(hub.metrics().with_status(429) - before, 1.0, "the injected 429 was not hit");

    // One 429 on the next API request (a listing): the lookup still succeeds.
    hub.emu.set_faults(Faults { fail_next: 1, fail_status: 429, scope: FaultScope::Api, ..Faults::default() });
    assert!(std::fs::metadata(m.path("h.bin")).is_ok());

    // A permanent failure of CAS: EIO for that read, and the mount stays alive.
    hub.emu.set_faults(Faults { fail_next: 10_000, fail_status: 500, scope: FaultScope::Cas, ..Faults::default() });
    assert_eq!(errno_of(std::fs::read(m.path("g.bin"))), libc::EIO);
    hub.emu.set_faults(Faults::default());
    assert!(std::fs::read(m.path("g.bin")).unwrap() == other);
    m.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_token_file_is_used_without_remount() {
    use hf_csi::emulator::{Emulator, EmulatorConfig, TokenScope};
    use std::os::unix::fs::MetadataExt;
    require_fuse();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_tree(&src, &[("a.txt", b"a".to_vec()), ("b.txt", b"b".to_vec())]);
    let config = |token: &str, listen: std::net::SocketAddr| {
        let mut cfg = EmulatorConfig::new(dir.path().join("hub"));
        cfg.listen = listen;
        cfg.tokens = vec![(token.to_string(), TokenScope::Read)];
        cfg.imports = vec![import_bucket("acme/private", &src)];
        cfg.private = vec!["acme/private".into()];
        cfg
    };
    let first = Emulator::start(config("old-token", "127.0.0.1:0".parse().unwrap())).await.unwrap();
    let endpoint = first.endpoint();
    let addr: std::net::SocketAddr = endpoint.trim_start_matches("http://").parse().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "old-token\n").unwrap();
    let mnt = dir.path().join("mnt");
    let m = MountCmd::bucket(&endpoint, "acme/private", &mnt, &dir.path().join("cache"))
        .arg("--token-file")
        .arg(token.display().to_string())
        .arg("--uid")
        .arg("1234")
        .arg("--gid")
        .arg("4321")
        .start();
    assert_eq!(std::fs::read(m.path("a.txt")).unwrap(), b"a");
    let meta = std::fs::metadata(m.path("a.txt")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 4321));

    // The Hub now only accepts a new token; the Secret volume is updated in place.
    first.shutdown().await;
    let second = Emulator::start(config("new-token", addr)).await.unwrap();
    let tmp = dir.path().join("token.tmp");
    std::fs::write(&tmp, "new-token\n").unwrap();
    std::fs::rename(&tmp, &token).unwrap();
    // b.txt was never looked up: the mount must ask the Hub, with the new token.
    assert_eq!(std::fs::read(m.path("b.txt")).unwrap(), b"b");
    assert!(!m.log().contains("new-token") && !m.log().contains("old-token"), "a token reached the log");
    m.stop();
    second.shutdown().await;
}
