//! The Hub emulator driven by the official `hf-hub` client (and raw HTTP where the wire
//! format itself is under test), against an in-process emulator on an ephemeral port.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use hf_csi::emulator::{Emulator, EmulatorConfig, FaultScope, Faults, Import, RepoKind, TokenScope};
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
    cfg.tokens = vec![(WRITER.into(), TokenScope::Write), (READER.into(), TokenScope::Read)];
    cfg
}

fn client(hub: &Emulator, token: Option<&str>, cache: &Path) -> HFClient {
    let mut b =
        HFClient::builder().endpoint(hub.endpoint()).cache_dir(cache).retry_base_delay(Duration::from_millis(20));
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
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0)
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

async fn collect_stream(mut s: impl futures::Stream<Item = Result<bytes::Bytes, HFError>> + Unpin) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.expect("chunk"));
    }
    out
}

async fn bucket_tree(c: &HFClient, id: (&str, &str), prefix: Option<&str>, recursive: bool) -> Vec<String> {
    let bucket = c.bucket(id.0, id.1);
    let stream = bucket.list_tree().maybe_prefix(prefix.map(String::from)).recursive(recursive).send().expect("tree");
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
    let hub = Emulator::start(config(&dir.path().join("hub"))).await.unwrap();
    let w = client(&hub, Some(WRITER), &dir.path().join("cache"));
    let r = client(&hub, Some(READER), &dir.path().join("cache"));

    let url = w.create_bucket().namespace("team").name("pub").send().await.unwrap();
    assert_eq!(url.url, format!("{}/buckets/team/pub", hub.endpoint()));
    w.create_bucket().namespace("team").name("secret").private(true).send().await.unwrap();
    assert_eq!(status_of(w.create_bucket().namespace("team").name("pub").send().await), 409);
    w.create_bucket().namespace("team").name("pub").exist_ok(true).send().await.unwrap();
    assert_eq!(status_of(r.create_bucket().namespace("team").name("x").send().await), 403);

    let info = r.bucket("team", "secret").info().send().await.unwrap();
    assert_eq!((info.id.as_str(), info.private, info.size, info.total_files), ("team/secret", true, 0, 0));
    assert!(info.created_at.ends_with('Z') && info.created_at.len() == 24, "{}", info.created_at);

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
    let anon: serde_json::Value =
        reqwest::get(format!("{}/api/buckets/team", hub.endpoint())).await.unwrap().json().await.unwrap();
    assert_eq!(anon.as_array().unwrap().len(), 1);
    // updatedAt is part of the info as a change token.
    let raw: serde_json::Value =
        reqwest::get(format!("{}/api/buckets/team/pub", hub.endpoint())).await.unwrap().json().await.unwrap();
    assert!(raw["updatedAt"].as_str().unwrap().ends_with('Z'));

    assert_eq!(status_of(r.delete_bucket().bucket_id("team/pub").send().await), 403);
    w.delete_bucket().bucket_id("team/pub").send().await.unwrap();
    assert!(matches!(w.bucket("team", "pub").info().send().await, Err(HFError::BucketNotFound { .. })));
    assert!(matches!(w.delete_bucket().bucket_id("team/pub").send().await, Err(HFError::BucketNotFound { .. })));
    w.delete_bucket().bucket_id("team/pub").missing_ok(true).send().await.unwrap();
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_upload_read_back_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Emulator::start(config(&dir.path().join("hub"))).await.unwrap();
    let w = client(&hub, Some(WRITER), &dir.path().join("cache"));
    w.create_bucket().namespace("ns").name("data").send().await.unwrap();
    let bucket = w.bucket("ns", "data");

    let big = noise(3 * 1024 * 1024 + 17, 7);
    let files = vec![
        ("hello.txt".to_string(), AddSource::bytes(&b"hello bucket\n"[..])),
        ("nested/deep/big.bin".to_string(), AddSource::bytes(big.clone())),
    ];
    bucket.upload_source_files().files(files).send().await.unwrap();

    let m = hub.metrics_text();
    assert!(metric(&m, "hub_write_requests_total{kind=\"batch\"}") >= 1, "{m}");
    assert!(metric(&m, "hub_write_requests_total{kind=\"xorb\"}") >= 1, "{m}");
    assert!(metric(&m, "hub_write_requests_total{kind=\"shard\"}") >= 1, "{m}");
    assert!(metric(&m, "hub_write_requests_total{kind=\"write-token\"}") >= 1, "{m}");
    assert!(metric(&m, "hub_cas_bytes_received_total") > 1024 * 1024, "{m}");

    let info = bucket.info().send().await.unwrap();
    assert_eq!((info.total_files, info.size), (2, big.len() as u64 + 13));

    let entries = bucket
        .get_paths_info()
        .paths(vec!["hello.txt".into(), "nested".into(), "missing".into(), "nested/deep/big.bin".into()])
        .send()
        .await
        .unwrap();
    assert_eq!(entries.len(), 3);
    let big_hash = match &entries[2] {
        BucketTreeEntry::File { path, size, xet_hash, mtime, .. } => {
            assert_eq!((path.as_str(), *size), ("nested/deep/big.bin", big.len() as u64));
            assert!(mtime.as_deref().is_some_and(|m| m.ends_with('Z')));
            xet_hash.clone()
        }
        other => panic!("{other:?}"),
    };
    assert!(matches!(&entries[1], BucketTreeEntry::Directory { path, .. } if path == "nested"));

    let meta = bucket.get_file_metadata().remote_path("nested/deep/big.bin").send().await.unwrap();
    assert_eq!((meta.size, meta.xet_hash.as_str()), (big.len() as u64, big_hash.as_str()));
    assert!(matches!(
        bucket.get_file_metadata().remote_path("nested").send().await,
        Err(HFError::EntryNotFound { .. })
    ));

    let served_before = metric(&hub.metrics_text(), "hub_cas_bytes_served_total");
    let (len, stream) = bucket.download_file_stream().remote_path("nested/deep/big.bin").send().await.unwrap();
    assert_eq!(len, Some(big.len() as u64));
    assert_eq!(collect_stream(stream).await, big);
    let served = metric(&hub.metrics_text(), "hub_cas_bytes_served_total") - served_before;
    assert!(served > 0, "a download must move CAS bytes");

    // Raw resolve: headers, full and ranged bodies.
    let http = reqwest::Client::new();
    let url = format!("{}/buckets/ns/data/resolve/nested/deep/big.bin", hub.endpoint());
    let head = http.head(&url).bearer_auth(WRITER).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let h = head.headers();
    assert_eq!(h["x-xet-hash"], big_hash.as_str());
    assert_eq!(h["x-linked-size"], big.len().to_string().as_str());
    assert_eq!(h["content-length"], big.len().to_string().as_str());
    assert_eq!(h["etag"], format!("\"{big_hash}\"").as_str());
    assert!(h.contains_key("last-modified"));
    let resolve_before = metric(&hub.metrics_text(), "hub_resolve_bytes_served_total");
    let part = http.get(&url).bearer_auth(WRITER).header("range", "bytes=1000000-1000099").send().await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], format!("bytes 1000000-1000099/{}", big.len()).as_str());
    assert_eq!(part.bytes().await.unwrap(), &big[1_000_000..1_000_100]);
    let full = http.get(&url).bearer_auth(WRITER).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(full, big);
    let resolve = metric(&hub.metrics_text(), "hub_resolve_bytes_served_total") - resolve_before;
    assert_eq!(resolve, 100 + big.len() as u64);
    let missing = http.head(format!("{}/buckets/ns/data/resolve/nested", hub.endpoint())).bearer_auth(WRITER);
    assert_eq!(missing.send().await.unwrap().status(), 404);
    let unsatisfiable = http.get(&url).bearer_auth(WRITER).header("range", format!("bytes={}-", big.len()));
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
        .paths(vec!["hello.txt".into(), "renamed.txt".into(), "ms.txt".into()])
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
            ("renamed.txt".to_string(), "2023-11-14T22:13:20.000Z".to_string()),
            ("ms.txt".to_string(), "2023-11-14T22:13:20.123Z".to_string())
        ]
    );
    let (_, s) = bucket.download_file_stream().remote_path("renamed.txt").send().await.unwrap();
    assert_eq!(collect_stream(s).await, b"hello bucket\n");
    // Batch download to local files (xet download group).
    let out = dir.path().join("out");
    bucket
        .download_files()
        .files(vec![
            hf_hub::buckets::BucketDownload::new("ms.txt", out.join("ms.txt")),
            hf_hub::buckets::BucketDownload::new("nested/deep/big.bin", out.join("big.bin")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(std::fs::read(out.join("ms.txt")).unwrap(), b"hello bucket\n");
    assert!(std::fs::read(out.join("big.bin")).unwrap() == big);
    hub.shutdown().await;
}

/// Uploads one small blob and returns its Xet hash, for batches that only need a hash.
async fn one_hash(bucket: &hf_hub::HFBucket) -> String {
    bucket.upload_source_files().files(vec![("seed".to_string(), AddSource::bytes(&b"x"[..]))]).send().await.unwrap();
    match bucket.get_paths_info().paths(vec!["seed".into()]).send().await.unwrap().remove(0) {
        BucketTreeEntry::File { xet_hash, .. } => xet_hash,
        other => panic!("{other:?}"),
    }
}

fn add(path: &str, hash: &str) -> BucketAddFile {
    BucketAddFile { path: path.into(), xet_hash: hash.into(), size: 1, mtime: None, content_type: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_tree_pagination_and_raw_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("hub"));
    cfg.page_size = 3;
    let hub = Emulator::start(cfg).await.unwrap();
    let w = client(&hub, Some(WRITER), &dir.path().join("cache"));
    w.create_bucket().namespace("ns").name("t").send().await.unwrap();
    let bucket = w.bucket("ns", "t");
    let h = one_hash(&bucket).await;
    let paths = ["a/1/x", "a/1/y/z", "a/10", "a/10b/q", "a/2", "b", "c/d/e"];
    bucket
        .batch_operations()
        .add_files(paths.iter().map(|p| add(p, &h)).collect())
        .delete(vec!["seed".into()])
        .send()
        .await
        .unwrap();

    let ns = ("ns", "t");
    assert_eq!(bucket_tree(&w, ns, None, false).await, vec!["a/", "b", "c/"]);
    assert_eq!(bucket_tree(&w, ns, Some("a"), false).await, vec!["a/1/", "a/10", "a/10b/", "a/2"]);
    // The raw-prefix quirk: `a/1` also matches `a/10` and `a/10b/...`.
    assert_eq!(bucket_tree(&w, ns, Some("a/1"), false).await, vec!["a/1/x", "a/1/y/", "a/10", "a/10b/"]);
    assert_eq!(
        bucket_tree(&w, ns, Some("a/1"), true).await,
        vec!["a/1/x", "a/1/y/", "a/1/y/z", "a/10", "a/10b/", "a/10b/q"]
    );
    let all = bucket_tree(&w, ns, None, true).await;
    assert_eq!(
        all,
        vec![
            "a/", "a/1/", "a/1/x", "a/1/y/", "a/1/y/z", "a/10", "a/10b/", "a/10b/q", "a/2", "b", "c/", "c/d/", "c/d/e"
        ]
    );

    // The wire format: 3 entries a page and an absolute `Link` to the next one.
    let http = reqwest::Client::new();
    let first = http
        .get(format!("{}/api/buckets/ns/t/tree?recursive=true", hub.endpoint()))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    let link = first.headers()["link"].to_str().unwrap().to_string();
    assert!(
        link.starts_with(&format!("<{}/api/buckets/ns/t/tree?", hub.endpoint())) && link.ends_with(">; rel=\"next\""),
        "{link}"
    );
    let page: Vec<serde_json::Value> = first.json().await.unwrap();
    assert_eq!(page.len(), 3);
    assert_eq!(page[2]["type"], "file");
    assert_eq!(page[2]["xetHash"], h.as_str());
    let limited =
        http.get(format!("{}/api/buckets/ns/t/tree?limit=2", hub.endpoint())).bearer_auth(READER).send().await.unwrap();
    assert_eq!(limited.json::<Vec<serde_json::Value>>().await.unwrap().len(), 2);
    for bad in ["tree/a//b", "tree/a%2F..%2Fb", "tree?recursive=maybe", "tree?limit=0", "tree?cursor=zz"] {
        let r =
            http.get(format!("{}/api/buckets/ns/t/{bad}", hub.endpoint())).bearer_auth(READER).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_is_atomic_and_names_the_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Emulator::start(config(&dir.path().join("hub"))).await.unwrap();
    let w = client(&hub, Some(WRITER), &dir.path().join("cache"));
    w.create_bucket().namespace("ns").name("b").send().await.unwrap();
    let bucket = w.bucket("ns", "b");
    let h = one_hash(&bucket).await;
    bucket.batch_operations().add_files(vec![add("dir/f", &h)]).send().await.unwrap();
    let before = bucket_tree(&w, ("ns", "b"), None, true).await;

    let unknown = "0".repeat(64);
    let http = reqwest::Client::new();
    let url = format!("{}/api/buckets/ns/b/batch", hub.endpoint());
    let cases = [
        // (body, status, message fragment)
        (
            format!(
                "{{\"type\":\"addFile\",\"path\":\"new\",\"xetHash\":\"{h}\"}}\n{{\"type\":\"addFile\",\"path\":\"other\",\"xetHash\":\"{unknown}\"}}\n"
            ),
            422,
            "line 2",
        ),
        ("{\"type\":\"deleteFile\",\"path\":\"seed\"}\nnot json\n".to_string(), 400, "line 2"),
        (format!("{{\"type\":\"addFile\",\"path\":\"a/../b\",\"xetHash\":\"{h}\"}}\n"), 400, "line 1"),
        (
            format!(
                "{{\"type\":\"deleteFile\",\"path\":\"seed\"}}\n{{\"type\":\"addFile\",\"path\":\"dir\",\"xetHash\":\"{h}\"}}\n"
            ),
            400,
            "line 2",
        ),
        (format!("{{\"type\":\"addFile\",\"path\":\"x\",\"xetHash\":\"{h}\",\"size\":99}}\n"), 422, "size 99"),
        ("{\"type\":\"addFile\",\"path\":\"x\",\"xetHash\":\"nothex\"}\n".to_string(), 400, "line 1"),
        (
            format!(
                "{{\"type\":\"copyFile\",\"path\":\"x\",\"xetHash\":\"{h}\",\"sourceRepoType\":\"bucket\",\"sourceRepoId\":\"ns/nope\"}}\n"
            ),
            400,
            "line 1",
        ),
    ];
    for (body, status, fragment) in cases {
        let r = http
            .post(&url)
            .bearer_auth(WRITER)
            .header("content-type", "application/x-ndjson")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{body}");
        let msg: serde_json::Value = r.json().await.unwrap();
        assert!(msg["error"].as_str().unwrap().contains(fragment), "{body} -> {msg}");
        assert_eq!(bucket_tree(&w, ("ns", "b"), None, true).await, before, "nothing applied for {body}");
    }
    // Through the client: an unknown hash fails the call and changes nothing.
    let r = bucket.batch_operations().add_files(vec![add("ok", &h), add("bad", &unknown)]).send().await;
    assert_eq!(status_of(r), 422);
    assert_eq!(bucket_tree(&w, ("ns", "b"), None, true).await, before);
    // A valid copy from this bucket, then deletes that apply after adds.
    let copy = format!(
        "{{\"type\":\"copyFile\",\"path\":\"copy\",\"xetHash\":\"{h}\",\"sourceRepoType\":\"bucket\",\"sourceRepoId\":\"ns/b\"}}\n{{\"type\":\"deleteFile\",\"path\":\"seed\"}}\n"
    );
    assert_eq!(http.post(&url).bearer_auth(WRITER).body(copy).send().await.unwrap().status(), 200);
    assert_eq!(bucket_tree(&w, ("ns", "b"), None, true).await, vec!["copy", "dir/", "dir/f"]);
    hub.shutdown().await;
}

/// Writes `files` (path, content) under `root`.
fn write_tree(root: &Path, files: &[(&str, &[u8])]) {
    for (p, content) in files {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_rules() {
    let dir = tempfile::tempdir().unwrap();
    write_tree(&dir.path().join("m"), &[("f.txt", b"private model\n")]);
    let mut cfg = config(&dir.path().join("hub"));
    cfg.imports =
        vec![Import::Repo { kind: RepoKind::Model, id: "org/secret".into(), dir: dir.path().join("m"), tag: None }];
    cfg.private = vec!["models/org/secret".into()];
    let hub = Emulator::start(cfg).await.unwrap();
    let cache = dir.path().join("cache");
    let (w, r, bogus) =
        (client(&hub, Some(WRITER), &cache), client(&hub, Some(READER), &cache), client(&hub, Some("bogus"), &cache));
    w.create_bucket().namespace("ns").name("private").private(true).send().await.unwrap();
    w.create_bucket().namespace("ns").name("public").send().await.unwrap();
    let http = reqwest::Client::new();
    let get = |path: &str, token: Option<&str>| {
        let mut req = http.get(format!("{}{path}", hub.endpoint()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };

    // Reads: private needs a token (either scope); an unknown token is always 401.
    assert_eq!(get("/api/buckets/ns/private", None).await, 401);
    assert_eq!(get("/api/buckets/ns/private", Some(READER)).await, 200);
    assert_eq!(get("/api/buckets/ns/public", None).await, 200);
    assert_eq!(get("/api/buckets/ns/public", Some("bogus")).await, 401);
    assert!(matches!(bogus.bucket("ns", "public").info().send().await, Err(HFError::AuthRequired { .. })));
    assert_eq!(get("/api/models/org/secret", None).await, 401);
    assert_eq!(get("/org/secret/resolve/main/f.txt", None).await, 401);
    assert_eq!(r.model("org", "secret").info().send().await.unwrap().private, Some(true));
    // Writes: anonymous 401, read token 403.
    let anon = client(&hub, None, &cache);
    assert_eq!(status_of(anon.create_bucket().namespace("ns").name("x").send().await), 401);
    assert_eq!(status_of(r.bucket("ns", "public").delete_files().paths(vec!["a".into()]).send().await), 403);
    assert_eq!(get("/api/buckets/ns/public/xet-write-token", Some(READER)).await, 403);
    assert_eq!(get("/api/buckets/ns/public/xet-write-token", None).await, 401);
    // Not found, with the error codes hf-hub maps.
    assert!(matches!(r.bucket("ns", "nope").info().send().await, Err(HFError::BucketNotFound { .. })));
    assert!(matches!(r.model("org", "nope").info().send().await, Err(HFError::RepoNotFound { .. })));
    assert!(matches!(
        r.model("org", "secret").info().revision("nope").send().await,
        Err(HFError::RevisionNotFound { .. })
    ));
    let miss = http
        .head(format!("{}/org/secret/resolve/main/nope.txt", hub.endpoint()))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(miss.status(), 404);
    assert_eq!(miss.headers()["x-error-code"], "EntryNotFound");
    assert_eq!(miss.headers()["x-repo-commit"].len(), 40);

    // The CAS: a CAS token is required, and uploads need a write-scoped one.
    let token = |path: &'static str, t: &'static str| {
        let http = http.clone();
        let endpoint = hub.endpoint();
        async move {
            let url = format!("{endpoint}/api/buckets/ns/public/{path}");
            let v: serde_json::Value = http.get(url).bearer_auth(t).send().await.unwrap().json().await.unwrap();
            assert_eq!(v["casUrl"], endpoint.as_str());
            assert!(v["exp"].as_u64().unwrap() > 1_700_000_000);
            v["accessToken"].as_str().unwrap().to_string()
        }
    };
    let (read_cas, write_cas) = (token("xet-read-token", READER).await, token("xet-write-token", WRITER).await);
    let cas = |method: reqwest::Method, path: &str, t: Option<&str>| {
        let mut req = http.request(method, format!("{}{path}", hub.endpoint()));
        if let Some(t) = t {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let file = format!("/v1/files/{}", "0".repeat(64));
    assert_eq!(cas(reqwest::Method::HEAD, &file, None).await, 401);
    assert_eq!(cas(reqwest::Method::HEAD, &file, Some(READER)).await, 401, "API tokens are not CAS tokens");
    assert_eq!(cas(reqwest::Method::HEAD, &file, Some(&read_cas)).await, 404);
    assert_eq!(cas(reqwest::Method::POST, "/v1/shards", Some(&read_cas)).await, 403);
    assert_ne!(cas(reqwest::Method::POST, "/v1/shards", Some(&write_cas)).await, 403);
    // URLs meant for credential-less use only work as signed by the emulator.
    let term = "/v1/fetch_term?term=YWJj";
    assert_eq!(cas(reqwest::Method::GET, term, Some(&read_cas)).await, 403);
    let forged = format!("{term}&x-emulator-expires=9999999999&x-emulator-signature=00");
    assert_eq!(cas(reqwest::Method::GET, &forged, None).await, 403);
    let grant = "/simulation/xorb-uploads/some-grant";
    assert_eq!(cas(reqwest::Method::PUT, grant, None).await, 403);
    assert_eq!(cas(reqwest::Method::GET, "/simulation/ping", Some(&read_cas)).await, 404);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repo_revisions_and_downloads() {
    let dir = tempfile::tempdir().unwrap();
    let big = noise(10 * 1024 * 1024 + 4321, 42);
    let (v1, v2, ds) = (dir.path().join("v1"), dir.path().join("v2"), dir.path().join("ds"));
    write_tree(&v1, &[("config.json", b"{\"v\":1}\n"), ("weights/big.bin", &big)]);
    write_tree(&v2, &[("config.json", b"{\"v\":2}\n"), ("weights/big.bin", &big), ("README.md", b"# hi\n")]);
    write_tree(&ds, &[("data/train.csv", b"a,b\n1,2\n")]);
    let mut cfg = config(&dir.path().join("hub"));
    cfg.page_size = 2;
    cfg.imports = vec![
        Import::Repo { kind: RepoKind::Model, id: "org/m".into(), dir: v1, tag: Some("v1".into()) },
        Import::Repo { kind: RepoKind::Model, id: "org/m".into(), dir: v2, tag: None },
        Import::Repo { kind: RepoKind::Dataset, id: "org/d".into(), dir: ds, tag: None },
    ];
    let hub = Emulator::start(cfg).await.unwrap();
    let c = client(&hub, Some(READER), &dir.path().join("cache"));
    let model = c.model("org", "m");

    let main = model.info().send().await.unwrap();
    let tagged = model.info().revision("v1").send().await.unwrap();
    let (main_sha, v1_sha) = (main.sha.clone().unwrap(), tagged.sha.clone().unwrap());
    assert_ne!(main_sha, v1_sha);
    assert_eq!(main_sha.len(), 40);
    let names: Vec<_> = main.siblings.unwrap().into_iter().map(|s| s.rfilename).collect();
    assert_eq!(names, vec!["README.md", "config.json", "weights/big.bin"]);
    assert_eq!(model.info().revision(v1_sha.clone()).send().await.unwrap().sha.unwrap(), v1_sha);
    assert!(model.revision_exists().revision("v1").send().await.unwrap());
    assert!(model.revision_exists().revision(&v1_sha).send().await.unwrap());
    assert!(!model.revision_exists().revision("refs/pr/1").send().await.unwrap());
    let refs = model.list_refs().send().await.unwrap();
    assert_eq!((refs.branches[0].name.as_str(), refs.branches[0].target_commit.as_str()), ("main", main_sha.as_str()));
    assert_eq!((refs.tags[0].name.as_str(), refs.tags[0].target_commit.as_str()), ("v1", v1_sha.as_str()));
    let history: Vec<_> = {
        let s = model.list_commits().send().unwrap();
        futures::pin_mut!(s);
        let mut ids = Vec::new();
        while let Some(c) = s.next().await {
            ids.push(c.unwrap().id);
        }
        ids
    };
    assert_eq!(history, vec![main_sha.clone(), v1_sha.clone()]);

    // Tree, paginated 2 per page, small files as git blobs, large ones as Xet files.
    let tree: Vec<RepoTreeEntry> = {
        let s = model.list_tree().recursive(true).send().unwrap();
        futures::pin_mut!(s);
        let mut all = Vec::new();
        while let Some(e) = s.next().await {
            all.push(e.unwrap());
        }
        all
    };
    assert_eq!(tree.len(), 4);
    let mut big_xet = None;
    for e in &tree {
        match e {
            RepoTreeEntry::File { path, oid, size, lfs, xet_hash, .. } if path == "config.json" => {
                assert_eq!((oid.as_str(), *size), (git_oid(b"{\"v\":2}\n").as_str(), 8));
                assert!(lfs.is_none() && xet_hash.is_none());
            }
            RepoTreeEntry::File { path, size, lfs, xet_hash, .. } if path == "weights/big.bin" => {
                assert_eq!(*size, big.len() as u64);
                let sha256 = hex::encode(sha2::Sha256::digest(&big));
                assert_eq!(lfs.as_ref().unwrap().sha256.as_deref(), Some(sha256.as_str()));
                big_xet = xet_hash.clone();
            }
            RepoTreeEntry::Directory { path, oid, .. } => {
                assert_eq!((path.as_str(), oid.len()), ("weights", 40))
            }
            _ => {}
        }
    }
    assert!(big_xet.is_some());

    // Downloads at main, at a tag and at a commit, byte-exact.
    for (rev, expected) in [("main", &b"{\"v\":2}\n"[..]), ("v1", b"{\"v\":1}\n"), (v1_sha.as_str(), b"{\"v\":1}\n")] {
        let bytes = model.download_file_to_bytes().filename("config.json").revision(rev).send().await.unwrap();
        assert_eq!(&bytes[..], expected, "config.json at {rev}");
    }
    let got = model.download_file_to_bytes().filename("weights/big.bin").revision("v1").send().await.unwrap();
    assert!(got == big, "big.bin at v1 differs");
    let part =
        model.download_file_to_bytes().filename("weights/big.bin").range(5_000_000..5_000_300).send().await.unwrap();
    assert_eq!(&part[..], &big[5_000_000..5_000_300]);
    let small_part = model.download_file_to_bytes().filename("config.json").range(1..4).send().await.unwrap();
    assert_eq!(&small_part[..], b"\"v\"");
    // Through the on-disk cache (HEAD with ETag and commit, then GET or xet).
    let cached = model.download_file().filename("weights/big.bin").revision(&v1_sha).send().await.unwrap();
    assert!(std::fs::read(&cached).unwrap() == big);
    let cached = model.download_file().filename("config.json").send().await.unwrap();
    assert_eq!(std::fs::read(&cached).unwrap(), b"{\"v\":2}\n");
    // A second cached download revalidates with If-None-Match and gets a 304.
    let again = model.download_file().filename("config.json").send().await.unwrap();
    assert_eq!(again, cached);
    let m = hub.metrics_text();
    assert_eq!(metric(&m, "hub_requests_total{endpoint=\"repo_resolve\",status=\"304\"}"), 1, "{m}");
    // A whole snapshot at the tag, into a plain directory.
    let snap = dir.path().join("snap");
    model.snapshot_download().revision("v1").local_dir(snap.clone()).send().await.unwrap();
    assert_eq!(std::fs::read(snap.join("config.json")).unwrap(), b"{\"v\":1}\n");
    assert!(std::fs::read(snap.join("weights/big.bin")).unwrap() == big);
    assert!(!snap.join("README.md").exists());
    let meta = model.get_file_metadata().filepath("weights/big.bin").send().await.unwrap();
    assert_eq!(
        (meta.commit_hash.as_str(), meta.file_size, meta.xet_hash),
        (main_sha.as_str(), big.len() as u64, big_xet)
    );
    assert_eq!(meta.etag, hex::encode(sha2::Sha256::digest(&big)));
    let meta = model.get_file_metadata().filepath("config.json").revision("v1").send().await.unwrap();
    assert_eq!((meta.etag, meta.commit_hash), (git_oid(b"{\"v\":1}\n"), v1_sha.clone()));
    assert!(matches!(
        model.download_file_to_bytes().filename("README.md").revision("v1").send().await,
        Err(HFError::EntryNotFound { .. })
    ));

    // Paths-info, datasets (prefixed resolve URLs) and an encoded revision.
    let info =
        model.get_paths_info().paths(vec!["weights".into(), "nope".into(), "README.md".into()]).send().await.unwrap();
    assert_eq!(info.len(), 2);
    let data = c.dataset("org", "d");
    let csv = data.download_file_to_bytes().filename("data/train.csv").send().await.unwrap();
    assert_eq!(&csv[..], b"a,b\n1,2\n");
    let http = reqwest::Client::new();
    let pr = http
        .get(format!("{}/api/models/org/m/tree/refs%2Fpr%2F1", hub.endpoint()))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!((pr.status().as_u16(), pr.headers()["x-error-code"].to_str().unwrap()), (404, "RevisionNotFound"));
    let bad = http
        .get(format!("{}/api/models/org/m/tree/main/a%2F..%2Fb", hub.endpoint()))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    hub.shutdown().await;
}

async fn commit_count(model: &hf_hub::repository::HFRepository<hf_hub::repository::RepoTypeModel>) -> usize {
    let s = model.list_commits().send().unwrap();
    futures::pin_mut!(s);
    let mut n = 0;
    while let Some(c) = s.next().await {
        c.unwrap();
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_state_and_reimport_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2, files) = (dir.path().join("v1"), dir.path().join("v2"), dir.path().join("files"));
    write_tree(&v1, &[("a.txt", b"one\n")]);
    write_tree(&v2, &[("a.txt", b"two\n")]);
    write_tree(&files, &[("x/y.txt", b"imported\n")]);
    let imports = vec![
        Import::Bucket { id: "ns/imported".into(), dir: files.clone() },
        Import::Repo { kind: RepoKind::Model, id: "org/m".into(), dir: v1.clone(), tag: Some("v1".into()) },
        Import::Repo { kind: RepoKind::Model, id: "org/m".into(), dir: v2.clone(), tag: None },
    ];
    let data = dir.path().join("hub");
    let cache = dir.path().join("cache");
    let mut cfg = config(&data);
    cfg.imports = imports.clone();
    let hub = Emulator::start(cfg).await.unwrap();
    let w = client(&hub, Some(WRITER), &cache);
    w.create_bucket().namespace("ns").name("live").private(true).send().await.unwrap();
    let payload = noise(200_000, 3);
    w.bucket("ns", "live")
        .upload_source_files()
        .files(vec![("p/q.bin".to_string(), AddSource::bytes(payload.clone()))])
        .send()
        .await
        .unwrap();
    let before_info = w.bucket("ns", "live").info().send().await.unwrap();
    let model = w.model("org", "m");
    let (main_sha, v1_sha) = (
        model.info().send().await.unwrap().sha.unwrap(),
        model.info().revision("v1").send().await.unwrap().sha.unwrap(),
    );
    assert_eq!(commit_count(&model).await, 2);
    hub.shutdown().await;

    // Same data dir, same imports: nothing new, everything still there.
    let mut cfg = config(&data);
    cfg.imports = imports.clone();
    let hub = Emulator::start(cfg).await.unwrap();
    let w = client(&hub, Some(WRITER), &cache);
    let model = w.model("org", "m");
    assert_eq!(model.info().send().await.unwrap().sha.unwrap(), main_sha);
    assert_eq!(model.info().revision("v1").send().await.unwrap().sha.unwrap(), v1_sha);
    assert_eq!(commit_count(&model).await, 2);
    let info = w.bucket("ns", "live").info().send().await.unwrap();
    assert_eq!((info.private, info.total_files, info.size), (true, 1, payload.len() as u64));
    assert_eq!(info.created_at, before_info.created_at);
    let (_, s) = w.bucket("ns", "live").download_file_stream().remote_path("p/q.bin").send().await.unwrap();
    assert!(collect_stream(s).await == payload, "CAS content survives a restart");
    let (_, s) = w.bucket("ns", "imported").download_file_stream().remote_path("x/y.txt").send().await.unwrap();
    assert_eq!(collect_stream(s).await, b"imported\n");
    assert_eq!(w.bucket("ns", "imported").info().send().await.unwrap().total_files, 1);
    hub.shutdown().await;

    // New content for the model stacks one commit; the old ones stay reachable.
    write_tree(&v2, &[("a.txt", b"three\n")]);
    let mut cfg = config(&data);
    cfg.imports = vec![Import::Repo { kind: RepoKind::Model, id: "org/m".into(), dir: v2, tag: Some("v3".into()) }];
    let hub = Emulator::start(cfg).await.unwrap();
    let r = client(&hub, Some(READER), &cache);
    let model = r.model("org", "m");
    assert_eq!(commit_count(&model).await, 3);
    let new_main = model.info().send().await.unwrap().sha.unwrap();
    assert_ne!(new_main, main_sha);
    assert_eq!(model.info().revision("v3").send().await.unwrap().sha.unwrap(), new_main);
    let old = model.download_file_to_bytes().filename("a.txt").revision(&main_sha).send().await.unwrap();
    assert_eq!(&old[..], b"two\n");
    let old = model.download_file_to_bytes().filename("a.txt").revision("v1").send().await.unwrap();
    assert_eq!(&old[..], b"one\n");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_injected_retried_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Emulator::start(config(&dir.path().join("hub"))).await.unwrap();
    let w = client(&hub, Some(WRITER), &dir.path().join("cache"));
    w.create_bucket().namespace("ns").name("f").send().await.unwrap();
    let bucket = w.bucket("ns", "f");
    bucket
        .upload_source_files()
        .files(vec![("a".to_string(), AddSource::bytes(noise(50_000, 9)))])
        .send()
        .await
        .unwrap();

    // One 429 on the API: hf-hub retries and the call succeeds; metrics show both answers.
    hub.set_faults(Faults { fail_next: 1, fail_status: 429, scope: FaultScope::Api, ..Faults::default() });
    assert_eq!(bucket.info().send().await.unwrap().total_files, 1);
    let m = hub.metrics_text();
    assert_eq!(metric(&m, "hub_requests_total{endpoint=\"bucket_info\",status=\"429\"}"), 1, "{m}");
    assert!(metric(&m, "hub_requests_total{endpoint=\"bucket_info\",status=\"200\"}") >= 1, "{m}");

    // The same through the admin endpoint, on the CAS only: the xet download retries.
    let http = reqwest::Client::new();
    let set = http
        .post(format!("{}/admin/faults", hub.endpoint()))
        .json(&serde_json::json!({ "fail_next": 1, "fail_status": 503, "scope": "cas" }))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    assert_eq!(hub.faults().fail_next, 1);
    let (_, s) = bucket.download_file_stream().remote_path("a").send().await.unwrap();
    assert_eq!(collect_stream(s).await, noise(50_000, 9));
    assert_eq!(hub.faults().fail_next, 0);
    let m = hub.metrics_text();
    let cas_503: u64 = m
        .lines()
        .filter(|l| l.starts_with("hub_requests_total{endpoint=\"cas_") && l.contains("status=\"503\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(cas_503, 1, "{m}");

    // Every request fails at rate 1 (429 with Retry-After, or 503); metrics stay reachable.
    hub.set_faults(Faults { fail_rate: 1.0, ..Faults::default() });
    for _ in 0..8 {
        let r = http.get(format!("{}/api/buckets/ns/f", hub.endpoint())).send().await.unwrap();
        match r.status().as_u16() {
            429 => assert_eq!(r.headers()["retry-after"], "1"),
            503 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(http.get(format!("{}/metrics", hub.endpoint())).send().await.unwrap().status(), 200);
    // Latency applies before answering.
    hub.set_faults(Faults { latency_ms: 300, ..Faults::default() });
    let t = std::time::Instant::now();
    assert_eq!(http.get(format!("{}/api/buckets/ns/f", hub.endpoint())).send().await.unwrap().status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    // Bad settings are refused.
    let bad = http
        .post(format!("{}/admin/faults", hub.endpoint()))
        .json(&serde_json::json!({ "fail_status": 200 }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthetic_bucket_paginates() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("hub"));
    cfg.synthetic_buckets = vec![("big/synth".into(), 2500)];
    cfg.page_size = 700;
    let hub = Emulator::start(cfg).await.unwrap();
    let c = client(&hub, Some(READER), &dir.path().join("cache"));
    let ns = ("big", "synth");
    assert_eq!(bucket_tree(&c, ns, None, false).await, vec!["d0000/", "d0001/", "d0002/"]);
    let d1 = bucket_tree(&c, ns, Some("d0001"), false).await;
    assert_eq!(d1.len(), 1000);
    assert_eq!((d1[0].as_str(), d1[999].as_str()), ("d0001/f001000", "d0001/f001999"));
    let all = bucket_tree(&c, ns, None, true).await;
    assert_eq!(all.len(), 2503);
    assert_eq!(all.iter().filter(|p| !p.ends_with('/')).count(), 2500);
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), all.len(), "no entry listed twice across pages");

    let bucket = c.bucket("big", "synth");
    let info = bucket.info().send().await.unwrap();
    assert_eq!(info.total_files, 2500);
    let entries = bucket
        .get_paths_info()
        .paths(vec!["d0002/f002499".into(), "d0002/f002500".into(), "d0001".into()])
        .send()
        .await
        .unwrap();
    assert_eq!(entries.len(), 2);
    let (_, s) = bucket.download_file_stream().remote_path("d0002/f002499").send().await.unwrap();
    assert_eq!(collect_stream(s).await, b"hf-csi synthetic file\n");
    let w = client(&hub, Some(WRITER), &dir.path().join("cache"));
    assert_eq!(
        status_of(w.bucket("big", "synth").delete_files().paths(vec!["d0000/f000000".into()]).send().await),
        403
    );
    // Anonymous readers may list it: synthetic buckets are public.
    let anon = reqwest::get(format!("{}/api/buckets/big/synth/tree/d0000?limit=5", hub.endpoint())).await.unwrap();
    assert_eq!(anon.status(), 200);
    assert!(anon.headers().contains_key("link"));
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_xorb_and_v1_shard_uploads_through_the_proxy() {
    use xet::xet_session::{Sha256Policy, XetConfig, XetSessionBuilder};
    let dir = tempfile::tempdir().unwrap();
    let hub = Emulator::start(config(&dir.path().join("hub"))).await.unwrap();
    let w = client(&hub, Some(WRITER), &dir.path().join("cache"));
    w.create_bucket().namespace("ns").name("legacy").send().await.unwrap();
    let grant: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/buckets/ns/legacy/xet-write-token", hub.endpoint()))
        .bearer_auth(WRITER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let mut cfg = XetConfig::new();
    cfg.telemetry.enabled = false;
    cfg.client.legacy_direct_xorb_upload = true;
    cfg.client.shard_api_version = Some(1);
    let session = XetSessionBuilder::new_with_config(cfg).with_cache_dir(dir.path().join("xet")).build().unwrap();
    let commit = session
        .new_upload_commit()
        .unwrap()
        .with_endpoint(grant["casUrl"].as_str().unwrap())
        .with_token_info(grant["accessToken"].as_str().unwrap(), grant["exp"].as_u64().unwrap())
        .build()
        .await
        .unwrap();
    let content = noise(300_000, 11);
    let handle = commit.upload_bytes(content.clone(), Sha256Policy::Compute, Some("f".into())).await.unwrap();
    let report = commit.commit().await.unwrap();
    let info = report.uploads[&handle.task_id()].xet_info.clone();

    let bucket = w.bucket("ns", "legacy");
    bucket
        .batch_operations()
        .add_files(vec![BucketAddFile {
            path: "f".into(),
            xet_hash: info.hash.clone(),
            size: content.len() as u64,
            mtime: None,
            content_type: None,
        }])
        .send()
        .await
        .unwrap();
    let (_, s) = bucket.download_file_stream().remote_path("f").send().await.unwrap();
    assert!(collect_stream(s).await == content);
    let m = hub.metrics_text();
    assert!(metric(&m, "hub_requests_total{endpoint=\"cas_xorb\",status=\"200\"}") >= 1, "{m}");
    assert!(metric(&m, "hub_requests_total{endpoint=\"cas_shard\",status=\"200\"}") >= 1, "{m}");
    assert_eq!(metric(&m, "hub_requests_total{endpoint=\"cas_xorb_grant\",status=\"201\"}"), 0, "{m}");
    assert!(!m.contains("endpoint=\"unknown\"") && !m.contains("endpoint=\"cas_other\""), "{m}");
    hub.shutdown().await;
}
