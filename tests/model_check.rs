//! Random-operation model check (in the spirit of fsx): a seeded sequence of create, write at
//! random offsets, truncate, rename, unlink, mkdir, rmdir, read and fsync is applied to a
//! bucket mount and to a reference directory on local disk; results (including errno) and the
//! whole tree (names, types, sizes, bytes, permissions) are compared after every step, and the
//! mount is unmounted and mounted again in the middle (commits and recovery included).
//!
//! `cargo test --release --test model_check` runs a few thousand operations;
//! `cargo test --release --test model_check -- --ignored` is the long mode
//! (`FSX_OPS`, `FSX_SEED` override). On a mismatch the test prints the seed and the shortest
//! failing prefix of the sequence.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;

const DIRS: [&str; 4] = ["", "d0", "d1", "d0/e"];
const FILES: [&str; 5] = ["f0", "f1", "f2", "f3", "f4"];
const MAX_SIZE: u64 = 300 * 1024;

#[derive(Debug, Clone)]
enum Op {
    Create(String),
    Write(String, u64, usize, u64),
    Truncate(String, u64),
    Rename(String, String),
    Unlink(String),
    Mkdir(String),
    Rmdir(String),
    Read(String, u64, usize),
    Fsync(String),
    Remount,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.below(v.len() as u64) as usize]
    }
}

fn path(rng: &mut Rng) -> String {
    let d = rng.pick(&DIRS);
    let f = rng.pick(&FILES);
    if d.is_empty() { f.to_string() } else { format!("{d}/{f}") }
}

fn dir_path(rng: &mut Rng) -> String {
    let d = rng.pick(&DIRS[1..]);
    d.to_string()
}

/// The operation sequence for a seed.
fn ops(seed: u64, n: usize) -> Vec<Op> {
    let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if i == n / 2 {
            out.push(Op::Remount);
        }
        let op = match rng.below(100) {
            0..=14 => Op::Create(path(&mut rng)),
            15..=39 => {
                let off = rng.below(MAX_SIZE);
                let len = rng.below(64 * 1024) as usize + 1;
                Op::Write(path(&mut rng), off, len, rng.next())
            }
            40..=47 => Op::Truncate(path(&mut rng), rng.below(MAX_SIZE)),
            48..=57 => {
                if rng.below(4) == 0 {
                    Op::Rename(dir_path(&mut rng), dir_path(&mut rng))
                } else {
                    Op::Rename(path(&mut rng), path(&mut rng))
                }
            }
            58..=65 => Op::Unlink(path(&mut rng)),
            66..=73 => Op::Mkdir(dir_path(&mut rng)),
            74..=78 => Op::Rmdir(dir_path(&mut rng)),
            79..=94 => Op::Read(path(&mut rng), rng.below(MAX_SIZE), rng.below(128 * 1024) as usize + 1),
            _ => Op::Fsync(path(&mut rng)),
        };
        out.push(op);
    }
    out
}

/// The outcome of one operation: bytes read, or the errno.
type Outcome = Result<Vec<u8>, i32>;

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn apply(root: &Path, op: &Op) -> Outcome {
    let p = |s: &str| root.join(s);
    let r: std::io::Result<Vec<u8>> = (|| match op {
        Op::Create(f) => {
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(p(f))?;
            Ok(vec![])
        }
        Op::Write(f, off, len, seed) => {
            let fh = std::fs::OpenOptions::new().write(true).open(p(f))?;
            fh.write_all_at(&pattern(*len, *seed), *off)?;
            Ok(vec![])
        }
        Op::Truncate(f, size) => {
            std::fs::OpenOptions::new().write(true).open(p(f))?.set_len(*size)?;
            Ok(vec![])
        }
        Op::Rename(a, b) => std::fs::rename(p(a), p(b)).map(|_| vec![]),
        Op::Unlink(f) => std::fs::remove_file(p(f)).map(|_| vec![]),
        Op::Mkdir(d) => std::fs::create_dir(p(d)).map(|_| vec![]),
        Op::Rmdir(d) => std::fs::remove_dir(p(d)).map(|_| vec![]),
        Op::Read(f, off, len) => {
            let fh = std::fs::File::open(p(f))?;
            let mut buf = vec![0u8; *len];
            let n = fh.read_at(&mut buf, *off)?;
            buf.truncate(n);
            Ok(buf)
        }
        Op::Fsync(f) => {
            let mut fh = std::fs::OpenOptions::new().write(true).open(p(f))?;
            fh.flush()?;
            fh.sync_all()?;
            Ok(vec![])
        }
        Op::Remount => Ok(vec![]),
    })();
    r.map_err(errno)
}

use std::os::unix::fs::OpenOptionsExt;

/// Everything observable about a tree: path -> (kind, perm, bytes).
fn snapshot(root: &Path) -> BTreeMap<String, (char, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(root.join(&rel)) else { continue };
        for e in rd {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let perm = m.permissions().mode() & 0o777;
            let key = r.display().to_string();
            if m.is_dir() {
                out.insert(key, ('d', perm, vec![]));
                stack.push(r);
            } else {
                match std::fs::read(e.path()) {
                    Ok(b) => out.insert(key, ('f', perm, b)),
                    // An unreadable file is a finding, reported as a difference.
                    Err(err) => out.insert(key, ('!', errno(err) as u32, vec![])),
                };
            }
        }
    }
    out
}

fn describe_diff(a: &BTreeMap<String, (char, u32, Vec<u8>)>, b: &BTreeMap<String, (char, u32, Vec<u8>)>) -> String {
    let mut lines = Vec::new();
    for k in a.keys().chain(b.keys()).collect::<std::collections::BTreeSet<_>>() {
        match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => lines.push(format!(
                "{k}: mount {}{:o} {} bytes, reference {}{:o} {} bytes",
                x.0,
                x.1,
                x.2.len(),
                y.0,
                y.1,
                y.2.len()
            )),
            (Some(_), None) => lines.push(format!("{k}: only in the mount")),
            (None, Some(_)) => lines.push(format!("{k}: only in the reference")),
            (None, None) => {}
        }
    }
    lines.join("\n")
}

/// Run `ops` against a fresh bucket mount and a fresh reference; the index and description of
/// the first mismatch, if any.
async fn run(ops: &[Op]) -> Option<(usize, String)> {
    let hub = start_hub(|_, _| {}).await;
    let client = hf_hub::HFClient::builder().endpoint(hub.endpoint()).token("writer").build().unwrap();
    client.create_bucket().namespace("fsx").name("b").send().await.unwrap();
    let token = hub.dir.path().join("token");
    std::fs::write(&token, "writer").unwrap();
    let cache = hub.path("cache");
    let start = || {
        MountCmd::bucket(&hub.endpoint(), "fsx/b", &hub.path("mnt"), &cache)
            .arg("--token-file")
            .arg(token.display().to_string())
            .arg("--flush-debounce-ms")
            .arg("50")
            .arg("--poll-interval-secs")
            .arg("1")
            .arg("--metadata-ttl-ms")
            .arg("1000")
            .start()
    };
    let reference = hub.path("reference");
    let mut m = Some(start());
    for (i, op) in ops.iter().enumerate() {
        if matches!(op, Op::Remount) {
            let code = m.take().unwrap().stop();
            if code != 0 {
                return Some((i, format!("unmount exited with {code}")));
            }
            m = Some(start());
        }
        let root = m.as_ref().unwrap().mountpoint.clone();
        let got = apply(&root, op);
        let want = apply(&reference, op);
        if got != want {
            let show = |o: &Outcome| match o {
                Ok(b) => format!("ok ({} bytes)", b.len()),
                Err(e) => format!("errno {e}"),
            };
            return Some((i, format!("{op:?}: mount {} vs reference {}", show(&got), show(&want))));
        }
        let (a, b) = (snapshot(&root), snapshot(&reference));
        if a != b {
            let log = m.as_ref().unwrap().log();
            let tail: Vec<&str> =
                log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).rev().take(8).collect();
            return Some((
                i,
                format!(
                    "after {op:?} the trees differ:\n{}\nmount warnings:\n{}",
                    describe_diff(&a, &b),
                    tail.join("\n")
                ),
            ));
        }
    }
    m.take().unwrap().stop();
    None
}

async fn check(seed: u64, n: usize) {
    require_fuse();
    let all = ops(seed, n);
    let Some((at, what)) = run(&all).await else {
        println!("model check: seed {seed}, {} operations, no mismatch", all.len());
        return;
    };
    // Shortest failing prefix: the failure shows at `at`; look for an earlier one by bisection
    // over prefix lengths (each probe replays on fresh mounts).
    let (mut lo, mut hi) = (0usize, at + 1);
    let mut best = (at, what.clone());
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        match run(&all[..mid]).await {
            Some(f) => {
                best = f;
                hi = mid;
            }
            None => lo = mid,
        }
    }
    panic!(
        "model check failed: seed {seed}, shortest failing prefix {} operations (FSX_SEED={seed}):\n{}\nops:\n{}",
        hi.min(at + 1),
        best.1,
        all[..=best.0.min(all.len() - 1)]
            .iter()
            .enumerate()
            .map(|(i, o)| format!("{i:5} {o:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_match_a_local_reference() {
    check(env_or("FSX_SEED", 20261121), env_or("FSX_OPS", 3000) as usize).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long mode: run with --ignored"]
async fn random_operations_long() {
    let seed = env_or("FSX_SEED", 7);
    for s in seed..seed + 5 {
        check(s, env_or("FSX_OPS", 20_000) as usize).await;
    }
}
