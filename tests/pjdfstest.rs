//! POSIX conformance: the pjdfstest suite (crates.io `pjdfstest`, installed by
//! `scripts/install-deps`) over a read-write bucket mount and over a no-push overlay mount.
//!
//! Every failing or skipped case must be listed, with its reason, in
//! `tests/pjdfstest/exclusions-{bucket,overlay}.txt`. The test fails on a failure or skip that
//! is not listed, and on a listed failure that passes. Needs root, /dev/fuse and the users
//! `tests` and `nobody`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn pjdfstest_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    let candidate = home.join("bin/pjdfstest");
    if candidate.exists() {
        return candidate;
    }
    let on_path = Command::new("sh").arg("-c").arg("command -v pjdfstest").output().unwrap();
    let p = String::from_utf8_lossy(&on_path.stdout).trim().to_string();
    assert!(!p.is_empty(), "pjdfstest is not installed: run scripts/install-deps");
    PathBuf::from(p)
}

/// (expected failures, expected skips) from an exclusion file.
fn exclusions(mode: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/pjdfstest/exclusions-{mode}.txt"));
    let text = std::fs::read_to_string(&path).unwrap();
    let (mut fail, mut skip) = (BTreeSet::new(), BTreeSet::new());
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        match line.split_once(' ') {
            Some(("fail", n)) => fail.insert(n.to_string()),
            Some(("skip", n)) => skip.insert(n.to_string()),
            _ => panic!("{}: bad line {line:?}", path.display()),
        };
    }
    (fail, skip)
}

/// Run the suite at `root`; returns (passed, expected failures, skipped names, other lines).
fn run_suite(
    root: &Path,
    work: &Path,
    expected_failures: &BTreeSet<String>,
) -> (usize, usize, BTreeSet<String>, String) {
    let quoted: Vec<String> = expected_failures.iter().map(|n| format!("{n:?}")).collect();
    let config = format!(
        "[features]\nutimensat = {{}}\nutime_now = {{}}\nrename_ctime = {{}}\nposix_fallocate = {{}}\n\
         [settings]\nnaptime = 0.001\nallow_remount = false\nexpected_failures = [{}]\n\
         [dummy_auth]\nentries = [[\"nobody\", \"nogroup\"], [\"tests\", \"tests\"]]\n",
        quoted.join(", ")
    );
    let cfg = work.join("pjdfstest.toml");
    std::fs::write(&cfg, config).unwrap();
    let secondary = work.join("secondary");
    std::fs::create_dir_all(&secondary).unwrap();
    let out = Command::new(pjdfstest_bin())
        .arg("-c")
        .arg(&cfg)
        .arg("-p")
        .arg(root)
        .arg("-s")
        .arg(&secondary)
        .env("NO_COLOR", "1")
        .current_dir(work)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = text.lines().collect();
    let mut passed = 0;
    let mut expected = 0;
    let mut skipped = BTreeSet::new();
    let mut problems = String::new();
    for (i, l) in lines.iter().enumerate() {
        let mut parts = l.split_whitespace();
        let (Some(name), Some(status)) = (parts.next(), parts.next()) else { continue };
        match status {
            "ok" => passed += 1,
            "failed" => expected += 1,
            "skipped" => {
                skipped.insert(name.to_string());
            }
            "FAILED" | "PASSED" => {
                problems.push_str(&format!("{l}\n    {}\n", lines.get(i + 1).map_or("", |s| s.trim())));
            }
            _ => {}
        }
    }
    (passed, expected, skipped, problems)
}

fn conformance(mode: &str, extra: &[&str]) {
    require_fuse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let hub = rt.block_on(start_hub(|cfg, dir| {
        let src = dir.join("seed");
        write_tree(&src, &[("README", b"pjdfstest runs in a subdirectory".to_vec())]);
        cfg.imports.push(import_bucket("conf/b", &src));
    }));
    let token = hub.dir.path().join("token");
    std::fs::write(&token, "writer").unwrap();
    let mut cmd = MountCmd::bucket(&hub.endpoint(), "conf/b", &hub.path("mnt"), &hub.path("cache"))
        .arg("--token-file")
        .arg(token.display().to_string())
        .arg("--flush-debounce-ms")
        .arg("500");
    for a in extra {
        cmd = cmd.arg(*a);
    }
    let m = cmd.start();
    let (fail, skip) = exclusions(mode);
    let work = hub.path("pjd-work");
    let (passed, expected, skipped, problems) = run_suite(&m.mountpoint, &work, &fail);
    println!(
        "pjdfstest on a {mode} mount: {passed} passed, {expected} expected failures (excluded), {} skipped",
        skipped.len()
    );
    assert_eq!(m.stop(), 0, "unmount after pjdfstest failed");
    assert!(problems.is_empty(), "pjdfstest cases outside tests/pjdfstest/exclusions-{mode}.txt:\n{problems}");
    assert_eq!(expected, fail.len(), "every listed failure must fail (and be reported as expected)");
    let unlisted: Vec<_> = skipped.difference(&skip).collect();
    let gone: Vec<_> = skip.difference(&skipped).collect();
    assert!(
        unlisted.is_empty() && gone.is_empty(),
        "skips not as listed: unlisted {unlisted:?}, no longer skipped {gone:?}"
    );
    assert!(passed > 100, "only {passed} cases passed: the suite did not really run");
}

#[test]
fn pjdfstest_on_a_bucket_mount() {
    conformance("bucket", &[]);
}

#[test]
fn pjdfstest_on_an_overlay_mount() {
    conformance("overlay", &["--no-push"]);
}
