//! No-push overlay mounts over real FUSE mounts against the emulator: the merged view, zero
//! remote writes (from the emulator's metrics), persistence across remount and SIGKILL,
//! whiteouts under the poll, remote changes for unshadowed paths, quota, and a repo overlay.
//! Needs root and /dev/fuse.

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use hf_csi::emulator::RepoKind;

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

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

fn read_token(hub: &Hub) -> String {
    let p = hub.dir.path().join("token-reader");
    std::fs::write(&p, "reader").unwrap();
    p.display().to_string()
}

fn overlay(hub: &Hub, source: &str, mnt: &str, upper: &Path, repo: bool) -> MountCmd {
    let cmd = if repo {
        MountCmd::repo(&hub.endpoint(), source, &hub.path(mnt), &hub.path("cache"))
    } else {
        MountCmd::bucket(&hub.endpoint(), source, &hub.path(mnt), &hub.path("cache"))
    };
    cmd.arg("--no-push")
        .arg("--overlay-dir")
        .arg(upper.display().to_string())
        .arg("--token-file")
        .arg(read_token(hub))
        .arg("--poll-interval-secs")
        .arg("1")
}

/// The merged view the test expects after its changes.
fn check_view(root: &Path) {
    assert_eq!(names(root), ["a.txt", "dir2", "e", "new.txt", "s", "u.txt"]);
    assert_eq!(std::fs::read(root.join("a.txt")).unwrap(), b"AAAremote a");
    assert_eq!(std::fs::read(root.join("new.txt")).unwrap(), b"new");
    assert_eq!(std::fs::read(root.join("dir2/b.txt")).unwrap(), b"b");
    assert_eq!(std::fs::read(root.join("dir2/sub/c.txt")).unwrap(), b"c");
    assert_eq!(std::fs::read_link(root.join("s")).unwrap(), Path::new("a.txt"));
    assert_eq!(std::fs::read(root.join("s")).unwrap(), b"AAAremote a");
    let m = std::fs::metadata(root.join("a.txt")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (1000, 1000, 0o640));
    assert_eq!(std::fs::metadata(root.join("new.txt")).unwrap().mtime(), 1_500_000_000);
    assert!(root.join("e").is_dir());
    assert_eq!(errno_of(std::fs::metadata(root.join("del.txt"))), libc::ENOENT);
    assert_eq!(errno_of(std::fs::metadata(root.join("dir"))), libc::ENOENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_overlay_merges_persists_and_never_writes() {
    require_fuse();
    let hub = start_hub(|cfg, dir| {
        let src = dir.join("seed");
        write_tree(
            &src,
            &[
                ("a.txt", b"remote a".to_vec()),
                ("del.txt", b"d".to_vec()),
                ("u.txt", b"untouched".to_vec()),
                ("dir/b.txt", b"b".to_vec()),
                ("dir/sub/c.txt", b"c".to_vec()),
            ],
        );
        cfg.imports.push(import_bucket("acme/shared", &src));
    })
    .await;
    let upper = hub.path("upper");
    let m = overlay(&hub, "acme/shared", "mnt", &upper, false).start();
    let root = m.mountpoint.clone();

    // Every kind of change, on remote-only, upper-only and shadowed entries.
    std::fs::write(root.join("new.txt"), b"new").unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(root.join("a.txt")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"AAA", 0).unwrap();
    drop(f);
    let mut f = std::fs::OpenOptions::new().append(true).open(root.join("a.txt")).unwrap();
    f.write_all(b"").unwrap();
    drop(f);
    assert_eq!(std::fs::read(root.join("a.txt")).unwrap(), b"AAAote a");
    std::fs::write(root.join("a.txt"), b"AAAremote a").unwrap();
    std::fs::remove_file(root.join("del.txt")).unwrap();
    std::fs::rename(root.join("dir"), root.join("dir2")).unwrap();
    std::fs::create_dir(root.join("e")).unwrap();
    std::os::unix::fs::symlink("a.txt", root.join("s")).unwrap();
    std::fs::set_permissions(root.join("a.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(root.join("a.txt"), Some(1000), Some(1000)).unwrap();
    let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    std::fs::File::options().write(true).open(root.join("new.txt")).unwrap().set_modified(t).unwrap();
    // Upper-only entries can be changed and removed again.
    std::fs::write(root.join("tmp.txt"), b"t").unwrap();
    std::fs::rename(root.join("tmp.txt"), root.join("tmp2.txt")).unwrap();
    std::fs::remove_file(root.join("tmp2.txt")).unwrap();
    check_view(&root);

    // Whiteouts survive poll rounds.
    std::thread::sleep(Duration::from_millis(2500));
    check_view(&root);

    // A remote change shows through an unshadowed path, not through a shadowed one.
    let client = hf_hub::HFClient::builder().endpoint(hub.endpoint()).token("writer").build().unwrap();
    client
        .bucket("acme", "shared")
        .upload_source_files()
        .files(vec![
            ("u.txt".to_string(), hf_hub::repository::AddSource::bytes(b"changed upstream".to_vec())),
            ("a.txt".to_string(), hf_hub::repository::AddSource::bytes(b"upstream a".to_vec())),
        ])
        .send()
        .await
        .unwrap();
    let writes_before = hub.metrics().writes();
    wait_until("the upstream change of u.txt", Duration::from_secs(15), || {
        std::fs::read(root.join("u.txt")).unwrap() == b"changed upstream"
    });
    assert_eq!(std::fs::read(root.join("a.txt")).unwrap(), b"AAAremote a", "a shadowed path showed the remote");

    // Unmount and mount again over the same upper layer: the same view.
    assert_eq!(m.stop(), 0);
    let again = overlay(&hub, "acme/shared", "mnt", &upper, false).start();
    let root = again.mountpoint.clone();
    assert_eq!(std::fs::read(root.join("u.txt")).unwrap(), b"changed upstream");
    std::fs::write(root.join("u.txt"), b"untouched").unwrap();
    check_view(&root);
    std::fs::write(root.join("after-kill.txt"), b"survives").unwrap();
    // kill -9, then mount again: closed files and whiteouts are all there.
    again.kill();
    let third = overlay(&hub, "acme/shared", "mnt", &upper, false).start();
    let root = third.mountpoint.clone();
    assert_eq!(std::fs::read(root.join("after-kill.txt")).unwrap(), b"survives");
    std::fs::remove_file(root.join("after-kill.txt")).unwrap();
    check_view(&root);
    assert_eq!(third.stop(), 0);

    // Nothing remote ever changed because of the overlay: no write requests at all beyond the
    // test's own upload, and the remote still has the original files.
    assert_eq!(hub.metrics().writes(), writes_before, "the overlay sent write requests");
    assert_eq!(hub.metrics().sum("hub_requests_total", &["endpoint=\"bucket_xet_write_token\""]), 1.0);
    let b = client.bucket("acme", "shared");
    let info =
        b.get_paths_info().paths(vec!["del.txt".into(), "dir/b.txt".into(), "new.txt".into()]).send().await.unwrap();
    assert_eq!(info.len(), 2, "remote files were deleted or added");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repo_overlay_reads_remote_and_writes_locally() {
    require_fuse();
    let weights = pattern(11 * MIB, 3);
    let hub = start_hub(|cfg, dir| {
        let src = dir.join("model");
        write_tree(&src, &[("config.json", b"{\"v\":1}".to_vec()), ("model.safetensors", weights.clone())]);
        cfg.imports.push(import_repo(RepoKind::Model, "acme/llm", &src, None));
    })
    .await;
    let upper = hub.path("upper");
    let m = overlay(&hub, "acme/llm", "mnt", &upper, true).start();
    let root = m.mountpoint.clone();
    assert!(std::fs::read(root.join("model.safetensors")).unwrap() == weights);
    // A generated cache next to the model, and a local edit of a remote file.
    std::fs::create_dir_all(root.join("compile-cache/kernels")).unwrap();
    let artifact = pattern(3 * MIB, 4);
    std::fs::write(root.join("compile-cache/kernels/k1.bin"), &artifact).unwrap();
    std::fs::write(root.join("config.json"), b"{\"v\":1,\"local\":true}").unwrap();
    std::fs::rename(root.join("model.safetensors"), root.join("weights.safetensors")).unwrap();
    assert!(std::fs::read(root.join("weights.safetensors")).unwrap() == weights);
    assert_eq!(m.stop(), 0);

    let again = overlay(&hub, "acme/llm", "mnt2", &upper, true).start();
    let root = again.mountpoint.clone();
    assert_eq!(names(&root), ["compile-cache", "config.json", "weights.safetensors"]);
    assert!(std::fs::read(root.join("compile-cache/kernels/k1.bin")).unwrap() == artifact);
    assert_eq!(std::fs::read(root.join("config.json")).unwrap(), b"{\"v\":1,\"local\":true}");
    assert!(std::fs::read(root.join("weights.safetensors")).unwrap() == weights);
    assert_eq!(again.stop(), 0);
    assert_eq!(hub.metrics().writes(), 0.0, "a repo overlay sent write requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_quota_and_flag_conflicts() {
    require_fuse();
    let hub = start_hub(|cfg, dir| {
        let src = dir.join("seed");
        write_tree(&src, &[("a.txt", b"a".to_vec())]);
        cfg.imports.push(import_bucket("acme/q", &src));
    })
    .await;
    let upper = hub.path("upper");
    let m = overlay(&hub, "acme/q", "mnt", &upper, false)
        .arg("--staging-quota")
        .arg("1M")
        .arg("--max-staging-size")
        .arg("1")
        .start();
    let mut f = std::fs::File::create(m.path("big")).unwrap();
    let err = f.write_all(&pattern(2 * MIB, 1)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    drop(f);
    // What was written before the quota stayed (and still counts); removing it frees the room.
    assert!(std::fs::metadata(m.path("big")).unwrap().len() <= MIB as u64);
    std::fs::remove_file(m.path("big")).unwrap();
    // The GC threshold never deletes upper-layer files: they are the only copy.
    std::fs::write(m.path("small"), b"only copy").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::read(m.path("small")).unwrap(), b"only copy");
    assert_eq!(m.stop(), 0);

    let (code, err) = overlay(&hub, "acme/q", "mnt2", &hub.path("upper2"), false).arg("--read-only").fail();
    assert_ne!(code, 0);
    assert!(err.contains("--no-push") && err.contains("--read-only"), "{err}");
}
