//! The Hub emulator driven by the official `hf-hub` client (and raw HTTP where the wire
//! format itself is under test), against an in-process emulator on an ephemeral port.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use hf_csi::emulator::{
    Emulator, EmulatorConfig, FaultScope, Faults, Import, RepoKind, TokenScope,
};
use hf_hub::buckets::{BucketAddFile, BucketTreeEntry};
use hf_hub::repository::{AddSource, RepoTreeEntry};
use hf_hub::{HFClient, HFError};
use sha1::{Digest as _, Sha1};

#[allow(dead_code)]
#[path = "../src/cli/hub.rs"]
mod hub_cli;

const WRITER: &str = "writer-token";
const READER: &str = "reader-token";

fn config(dir: &Path) -> EmulatorConfig {
    let mut cfg = EmulatorConfig::new(dir);
    cfg.tokens = vec![
        (WRITER.into(), TokenScope::Write),
        (READER.into(), TokenScope::Read),
    ];
    cfg
}

fn client(hub: &Emulator, token: Option<&str>, cache: &Path) -> HFClient {
    let mut b = HFClient::builder()
        .endpoint(hub.endpoint())
        .cache_dir(cache)
        .retry_base_delay(Duration::from_millis(20));
    if let Some(t) = token {
        b = b.token(t);
    }
    b.build().expect("client")
}

/// Deterministic pseudo-random bytes (xorshift), so content is incompressible and varied.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn git_oid(content: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", content.len()).as_bytes());
    h.update(content);
    hex::encode(h.finalize())
}

/// The value of a metric line, 0 if absent.
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn status_of<T: std::fmt::Debug>(r: Result<T, HFError>) -> u16 {
    match r {
        Err(HFError::AuthRequired { context })
        | Err(HFError::Forbidden { context })
        | Err(HFError::Http { context }) => context.status.as_u16(),
        Err(HFError::Conflict { context }) => context.status.as_u16(),
        Err(HFError::RateLimited { context, .. }) => context.status.as_u16(),
        Err(HFError::BucketNotFound { .. })
        | Err(HFError::RepoNotFound { .. })
        | Err(HFError::RevisionNotFound { .. })
        | Err(HFError::EntryNotFound { .. }) => 404,
        other => panic!("expected an HTTP error, got {other:?}"),
    }
}

async fn collect_stream(
    mut s: impl futures::Stream<Item = Result<bytes::Bytes, HFError>> + Unpin,
) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.expect("chunk"));
    }
    out
}

async fn bucket_tree(
    c: &HFClient,
    id: (&str, &str),
    prefix: Option<&str>,
    recursive: bool,
) -> Vec<String> {
    let bucket = c.bucket(id.0, id.1);
    let stream = bucket
        .list_tree()
        .maybe_prefix(prefix.map(String::from))
        .recursive(recursive)
        .send()
        .expect("tree");
    futures::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(e) = stream.next().await {
        out.push(match e.expect("entry") {
            BucketTreeEntry::File { path, .. } => path,
            BucketTreeEntry::Directory { path, .. } => format!("{path}/"),
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Emulator::start(config(&dir.path().join("hub")))
        .await
        .unwrap();
    let w = client(&hub, Some(WRITER), &dir.path().join("cache"));
    let r = client(&hub, Some(READER), &dir.path().join("cache"));

    let url = w
        .create_bucket()
        .namespace("team")
        .name("pub")
        .send()
        .await
        .unwrap();
    assert_eq!(url.url, format!("{}/buckets/team/pub", hub.endpoint()));
    w.create_bucket()
        .namespace("team")
        .name("secret")
        .private(true)
        .send()
        .await
        .unwrap();
    assert_eq!(
        status_of(w.create_bucket().namespace("team").name("pub").send().await),
        409
    );
    w.create_bucket()
        .namespace("team")
        .name("pub")
        .exist_ok(true)
        .send()
        .await
        .unwrap();
    assert_eq!(
        status_of(r.create_bucket().namespace("team").name("x").send().await),
        403
    );

    let info = r.bucket("team", "secret").info().send().await.unwrap();
    assert_eq!(
        (info.id.as_str(), info.private, info.size, info.total_files),
        ("team/secret", true, 0, 0)
    );
    assert!(
        info.created_at.ends_with('Z') && info.created_at.len() == 24,
        "{}",
        info.created_at
    );

    let listed: Vec<String> = {
        let s = r.list_buckets().namespace("team").send().unwrap();
        futures::pin_mut!(s);
        let mut ids = Vec::new();
        while let Some(b) = s.next().await {
            ids.push(b.unwrap().id);
        }
        ids
    };
    assert_eq!(listed, vec!["team/pub", "team/secret"]);
    // Anonymous callers do not see private buckets.
    let anon: serde_json::Value = reqwest::get(format!("{}/api/buckets/team", hub.endpoint()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(anon.as_array().unwrap().len(), 1);
    // updatedAt is part of the info as a change token.
    let raw: serde_json::Value = reqwest::get(format!("{}/api/buckets/team/pub", hub.endpoint()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(raw["updatedAt"].as_str().unwrap().ends_with('Z'));

    assert_eq!(
        status_of(r.delete_bucket().bucket_id("team/pub").send().await),
        403
    );
    w.delete_bucket()
        .bucket_id("team/pub")
        .send()
        .await
        .unwrap();
    assert!(matches!(
        w.bucket("team", "pub").info().send().await,
        Err(HFError::BucketNotFound { .. })
    ));
    assert!(matches!(
        w.delete_bucket().bucket_id("team/pub").send().await,
        Err(HFError::BucketNotFound { .. })
    ));
    w.delete_bucket()
        .bucket_id("team/pub")
        .missing_ok(true)
        .send()
        .await
        .unwrap();
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_upload_read_back_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Emulator::start(config(&dir.path().join("hub")))
        .await
        .unwrap();
    let w = client(&hub, Some(WRITER), &dir.path().join("cache"));
    w.create_bucket()
        .namespace("ns")
        .name("data")
        .send()
        .await
        .unwrap();
    let bucket = w.bucket("ns", "data");

    let big = noise(3 * 1024 * 1024 + 17, 7);
    let files = vec![
        (
            "hello.txt".to_string(),
            AddSource::bytes(&b"hello bucket\n"[..]),
        ),
        (
            "nested/deep/big.bin".to_string(),
            AddSource::bytes(big.clone()),
        ),
    ];
    bucket
        .upload_source_files()
        .files(files)
        .send()
        .await
        .unwrap();

    let m = hub.metrics_text();
    assert!(
        metric(&m, "hub_write_requests_total{kind=\"batch\"}") >= 1,
        "{m}"
    );
    assert!(
        metric(&m, "hub_write_requests_total{kind=\"xorb\"}") >= 1,
        "{m}"
    );
    assert!(
        metric(&m, "hub_write_requests_total{kind=\"shard\"}") >= 1,
        "{m}"
    );
    assert!(
        metric(&m, "hub_write_requests_total{kind=\"write-token\"}") >= 1,
        "{m}"
    );
    assert!(
        metric(&m, "hub_cas_bytes_received_total") > 1024 * 1024,
        "{m}"
    );

    let info = bucket.info().send().await.unwrap();
    assert_eq!((info.total_files, info.size), (2, big.len() as u64 + 13));

    let entries = bucket
        .get_paths_info()
        .paths(vec![
            "hello.txt".into(),
            "nested".into(),
            "missing".into(),
            "nested/deep/big.bin".into(),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(entries.len(), 3);
    let big_hash = match &entries[2] {
        BucketTreeEntry::File {
            path,
            size,
            xet_hash,
            mtime,
            ..
        } => {
            assert_eq!(
                (path.as_str(), *size),
                ("nested/deep/big.bin", big.len() as u64)
            );
            assert!(mtime.as_deref().is_some_and(|m| m.ends_with('Z')));
            xet_hash.clone()
        }
        other => panic!("{other:?}"),
    };
    assert!(matches!(&entries[1], BucketTreeEntry::Directory { path, .. } if path == "nested"));

    let meta = bucket
        .get_file_metadata()
        .remote_path("nested/deep/big.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (meta.size, meta.xet_hash.as_str()),
        (big.len() as u64, big_hash.as_str())
    );
    assert!(matches!(
        bucket
            .get_file_metadata()
            .remote_path("nested")
            .send()
            .await,
        Err(HFError::EntryNotFound { .. })
    ));

    let served_before = metric(&hub.metrics_text(), "hub_cas_bytes_served_total");
    let (len, stream) = bucket
        .download_file_stream()
        .remote_path("nested/deep/big.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(len, Some(big.len() as u64));
    assert_eq!(collect_stream(stream).await, big);
    let served = metric(&hub.metrics_text(), "hub_cas_bytes_served_total") - served_before;
    assert!(served > 0, "a download must move CAS bytes");

    // Raw resolve: headers, full and ranged bodies.
    let http = reqwest::Client::new();
    let url = format!(
        "{}/buckets/ns/data/resolve/nested/deep/big.bin",
        hub.endpoint()
    );
    let head = http.head(&url).bearer_auth(WRITER).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let h = head.headers();
    assert_eq!(h["x-xet-hash"], big_hash.as_str());
    assert_eq!(h["x-linked-size"], big.len().to_string().as_str());
    assert_eq!(h["content-length"], big.len().to_string().as_str());
    assert_eq!(h["etag"], format!("\"{big_hash}\"").as_str());
    assert!(h.contains_key("last-modified"));
    let resolve_before = metric(&hub.metrics_text(), "hub_resolve_bytes_served_total");
    let part = http
        .get(&url)
        .bearer_auth(WRITER)
        .header("range", "bytes=1000000-1000099")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 1000000-1000099/{}", big.len()).as_str()
    );
    assert_eq!(part.bytes().await.unwrap(), &big[1_000_000..1_000_100]);
    let full = http
        .get(&url)
        .bearer_auth(WRITER)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(full, big);
    let resolve = metric(&hub.metrics_text(), "hub_resolve_bytes_served_total") - resolve_before;
    assert_eq!(resolve, 100 + big.len() as u64);
    let missing = http
        .head(format!("{}/buckets/ns/data/resolve/nested", hub.endpoint()))
        .bearer_auth(WRITER);
    assert_eq!(missing.send().await.unwrap().status(), 404);
    let unsatisfiable = http
        .get(&url)
        .bearer_auth(WRITER)
        .header("range", format!("bytes={}-", big.len()));
    assert_eq!(unsatisfiable.send().await.unwrap().status(), 416);

    // Rename through batch: add under a new name with the same hash, delete the old one;
    // mtimes in seconds and in milliseconds are both understood.
    let hello = match &entries[0] {
        BucketTreeEntry::File { xet_hash, .. } => xet_hash.clone(),
        other => panic!("{other:?}"),
    };
    bucket
        .batch_operations()
        .add_files(vec![
            BucketAddFile {
                path: "renamed.txt".into(),
                xet_hash: hello.clone(),
                size: 13,
                mtime: Some(1_700_000_000),
                content_type: None,
            },
            BucketAddFile {
                path: "ms.txt".into(),
                xet_hash: hello,
                size: 13,
                mtime: Some(1_700_000_000_123),
                content_type: None,
            },
        ])
        .delete(vec!["hello.txt".into()])
        .send()
        .await
        .unwrap();
    let after = bucket
        .get_paths_info()
        .paths(vec![
            "hello.txt".into(),
            "renamed.txt".into(),
            "ms.txt".into(),
        ])
        .send()
        .await
        .unwrap();
    let mtimes: Vec<_> = after
        .iter()
        .map(|e| match e {
            BucketTreeEntry::File { path, mtime, .. } => (path.clone(), mtime.clone().unwrap()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        mtimes,
        vec![
            (
                "renamed.txt".to_string(),
                "2023-11-14T22:13:20.000Z".to_string()
            ),
            ("ms.txt".to_string(), "2023-11-14T22:13:20.123Z".to_string())
        ]
    );
    let (_, s) = bucket
        .download_file_stream()
        .remote_path("renamed.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(collect_stream(s).await, b"hello bucket\n");
    hub.shutdown().await;
}
