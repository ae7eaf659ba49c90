//! The repo JSON API (models, datasets, spaces): info, tree, paths-info, refs, commits and
//! CAS read tokens, all at a branch, tag or commit. Downloads live in [`super::resolve`].

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sha1::{Digest as _, Sha1};

use super::auth::Principal;
use super::buckets::{cas_token_response, parse_paths_body, set_link};
use super::config::{RepoKind, TokenScope, validate_name};
use super::error::{EmulatorError, Result};
use super::listing::{Cursor, Item, ListParams, Scope, lookup, page};
use super::paths::{encode_component, encode_path, validate_path, validate_revision};
use super::server::{AppState, Shared};
use super::store::{Commit, Repo, RepoFile};
use super::timefmt::rfc3339_ms;

/// The repo type named by the URL: `/api/{plural}/...`, `/datasets/...`, `/spaces/...`, or
/// (for resolve URLs without a prefix) a model.
pub struct Kind(pub RepoKind);

impl<S: Send + Sync> FromRequestParts<S> for Kind {
    type Rejection = EmulatorError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self> {
        let mut segments = parts.uri.path().trim_start_matches('/').split('/');
        let first = segments.next().unwrap_or_default();
        let kind = if first == "api" {
            segments.next().and_then(RepoKind::from_plural)
        } else {
            Some(RepoKind::from_plural(first).unwrap_or(RepoKind::Model))
        };
        kind.map(Kind).ok_or_else(|| EmulatorError::BadRequest(format!("no repo type in {}", parts.uri.path())))
    }
}

/// `{ns}/{name}` after validating both parts.
pub fn repo_id(ns: &str, name: &str) -> Result<String> {
    validate_name(ns).map_err(|e| EmulatorError::BadRequest(format!("repo namespace: {e}")))?;
    validate_name(name).map_err(|e| EmulatorError::BadRequest(format!("repo name: {e}")))?;
    Ok(format!("{ns}/{name}"))
}

/// Runs `f` on the commit `rev` of repo `id` after checking that `who` may read the repo.
pub fn with_commit<T>(
    s: &Shared,
    kind: RepoKind,
    id: &str,
    rev: &str,
    who: Principal,
    f: impl FnOnce(&Repo, &Commit) -> Result<T>,
) -> Result<T> {
    validate_revision(rev)?;
    with_repo(s, kind, id, who, |repo| {
        let commit = repo.resolve(rev).ok_or_else(|| EmulatorError::revision_not_found(id, rev))?;
        f(repo, commit)
    })
}

fn with_repo<T>(s: &Shared, kind: RepoKind, id: &str, who: Principal, f: impl FnOnce(&Repo) -> Result<T>) -> Result<T> {
    let state = s.store.read();
    let repo = state.repos.get(&(kind, id.to_string())).ok_or_else(|| EmulatorError::repo_not_found(id))?;
    who.check_read(repo.private, &format!("repository {id}"))?;
    f(repo)
}

fn info_json(repo: &Repo, commit: &Commit) -> Value {
    let (ns, _) = repo.id.split_once('/').unwrap_or(("", &repo.id));
    let siblings: Vec<Value> = commit.files.iter().map(|(p, f)| json!({ "rfilename": p, "size": f.size })).collect();
    let mut v = json!({
        "_id": format!("{:x}", Sha1::digest(format!("{:?}/{}", repo.kind, repo.id).as_bytes())),
        "id": repo.id,
        "author": ns,
        "sha": commit.id,
        "lastModified": rfc3339_ms(commit.created_ms),
        "createdAt": rfc3339_ms(repo.created_ms),
        "private": repo.private,
        "disabled": false,
        "gated": false,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": siblings,
        "usedStorage": commit.files.values().map(|f| f.size).sum::<u64>(),
    });
    if repo.kind == RepoKind::Space {
        v["sdk"] = json!("static");
    }
    v
}

/// `GET /api/{type}/{ns}/{name}`: info at `main`.
pub async fn info(
    State(s): State<AppState>,
    Kind(kind): Kind,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let who = s.principal(&headers)?;
    let id = repo_id(&ns, &name)?;
    let v = with_repo(&s, kind, &id, who, |repo| {
        // A repo always has `main`, but be explicit rather than panic if the file was edited.
        let commit = repo.resolve("main").ok_or_else(|| EmulatorError::revision_not_found(&id, "main"))?;
        Ok(info_json(repo, commit))
    })?;
    Ok(Json(v).into_response())
}

/// `GET /api/{type}/{ns}/{name}/revision/{rev}`.
pub async fn info_at(
    State(s): State<AppState>,
    Kind(kind): Kind,
    Path((ns, name, rev)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let who = s.principal(&headers)?;
    let id = repo_id(&ns, &name)?;
    let v = with_commit(&s, kind, &id, &rev, who, |repo, c| Ok(info_json(repo, c)))?;
    Ok(Json(v).into_response())
}

#[derive(Debug, Deserialize)]
pub struct TreePath {
    ns: String,
    name: String,
    rev: String,
    path: Option<String>,
}

/// `GET /api/{type}/{ns}/{name}/tree/{rev}[/{path}]`: one page of a directory of a commit.
/// Next-page links name the resolved commit, so a branch moving mid-listing cannot mix trees.
pub async fn tree(
    State(s): State<AppState>,
    Kind(kind): Kind,
    Path(p): Path<TreePath>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response> {
    let who = s.principal(&headers)?;
    let id = repo_id(&p.ns, &p.name)?;
    let params = ListParams::parse(&query, s.page_size)?;
    let expand = matches!(query.get("expand").map(String::as_str), Some("true" | "1"));
    if let Some(path) = &p.path {
        validate_path(path, "tree path")?;
    }
    let (body, next, sha) = with_commit(&s, kind, &id, &p.rev, who, |repo, commit| {
        let scope = match &p.path {
            None => Scope::root(),
            Some(path) => match lookup(&commit.files, path) {
                Some(Item::Dir { .. }) => Scope::dir(path),
                _ => {
                    return Err(EmulatorError::entry_not_found(path, Some(commit.id.clone())));
                }
            },
        };
        let (items, next) = page(&commit.files, &scope, params.recursive, params.cursor.as_ref(), params.limit);
        let body: Vec<Value> = items.iter().map(|i| entry_json(repo, commit, i, expand)).collect();
        Ok((body, next, commit.id.clone()))
    })?;
    let mut resp = Json(body).into_response();
    if let Some(next) = next {
        let mut url = format!("{}/api/{}/{id}/tree/{sha}", s.public_base(&headers), kind.plural());
        if let Some(path) = &p.path {
            url = format!("{url}/{}", encode_path(path));
        }
        let link = params.next_link(&url, &next);
        set_link(&mut resp, &if expand { link.replacen("?", "?expand=true&", 1) } else { link });
    }
    Ok(resp)
}

/// `POST /api/{type}/{ns}/{name}/paths-info/{rev}`.
pub async fn paths_info(
    State(s): State<AppState>,
    Kind(kind): Kind,
    Path((ns, name, rev)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let who = s.principal(&headers)?;
    let id = repo_id(&ns, &name)?;
    let paths = parse_paths_body(&body)?;
    let expand = matches!(query.get("expand").map(String::as_str), Some("true" | "1"))
        || serde_json::from_slice::<Value>(&body).ok().and_then(|v| v.get("expand")?.as_bool()).unwrap_or(false);
    let entries = with_commit(&s, kind, &id, &rev, who, |repo, commit| {
        Ok(paths
            .iter()
            .filter_map(|p| lookup(&commit.files, p))
            .map(|i| entry_json(repo, commit, &i, expand))
            .collect::<Vec<_>>())
    })?;
    Ok(Json(entries).into_response())
}

/// `GET /api/{type}/{ns}/{name}/refs`.
pub async fn refs(
    State(s): State<AppState>,
    Kind(kind): Kind,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let who = s.principal(&headers)?;
    let id = repo_id(&ns, &name)?;
    let v = with_repo(&s, kind, &id, who, |repo| {
        let refs = |m: &std::collections::BTreeMap<String, String>, prefix: &str| -> Vec<Value> {
            m.iter()
                .map(|(n, sha)| json!({ "name": n, "ref": format!("refs/{prefix}/{n}"), "targetCommit": sha }))
                .collect()
        };
        Ok(json!({
            "branches": refs(&repo.branches, "heads"),
            "tags": refs(&repo.tags, "tags"),
            "converts": [],
            "pullRequests": [],
        }))
    })?;
    Ok(Json(v).into_response())
}

/// `GET /api/{type}/{ns}/{name}/commits/{rev}`: history from `rev`, newest first, paginated.
pub async fn commits(
    State(s): State<AppState>,
    Kind(kind): Kind,
    Path((ns, name, rev)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response> {
    let who = s.principal(&headers)?;
    let id = repo_id(&ns, &name)?;
    let params = ListParams::parse(&query, s.page_size)?;
    let (items, next) = with_commit(&s, kind, &id, &rev, who, |repo, head| {
        let mut at = match &params.cursor {
            None => Some(head),
            Some(Cursor::From(sha)) => repo.commits.get(sha),
            Some(_) => {
                return Err(EmulatorError::BadRequest("invalid cursor for a commit list".to_string()));
            }
        };
        let mut items = Vec::new();
        while let Some(c) = at {
            if items.len() == params.limit {
                return Ok((items, Some(c.id.clone())));
            }
            items.push(json!({
                "id": c.id,
                "title": c.title,
                "message": c.title,
                "date": rfc3339_ms(c.created_ms),
                "authors": [{ "user": "hf-csi-emulator" }],
                "parents": c.parent.iter().collect::<Vec<_>>(),
            }));
            at = c.parent.as_ref().and_then(|p| repo.commits.get(p));
        }
        Ok((items, None))
    })?;
    let mut resp = Json(items).into_response();
    if let Some(sha) = next {
        let url = format!("{}/api/{}/{id}/commits/{}", s.public_base(&headers), kind.plural(), encode_component(&rev));
        set_link(&mut resp, &params.next_link(&url, &Cursor::From(sha)));
    }
    Ok(resp)
}

/// `GET /api/{type}/{ns}/{name}/xet-read-token/{rev}`.
pub async fn read_token(
    State(s): State<AppState>,
    Kind(kind): Kind,
    Path((ns, name, rev)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let who = s.principal(&headers)?;
    let id = repo_id(&ns, &name)?;
    with_commit(&s, kind, &id, &rev, who, |_, _| Ok(()))?;
    Ok(cas_token_response(&s, &headers, TokenScope::Read))
}

/// JSON of one tree entry of `commit`.
fn entry_json(repo: &Repo, commit: &Commit, item: &Item<RepoFile>, expand: bool) -> Value {
    match item {
        Item::File { path, value } => {
            let mut v = json!({ "type": "file", "oid": value.oid, "size": value.size, "path": path });
            if let Some(xet) = &value.xet {
                v["xetHash"] = json!(xet.hash);
                v["lfs"] = json!({
                    "oid": xet.sha256,
                    "sha256": xet.sha256,
                    "size": value.size,
                    "pointerSize": lfs_pointer(&xet.sha256, value.size).len(),
                });
            }
            if expand {
                let c = last_change(repo, commit, path, value);
                v["lastCommit"] = json!({ "id": c.id, "title": c.title, "date": rfc3339_ms(c.created_ms) });
            }
            v
        }
        Item::Dir { path } => {
            json!({ "type": "directory", "oid": dir_oid(commit, path), "path": path })
        }
    }
}

/// The oldest commit in the first-parent chain from `commit` that already had `file` at `path`.
fn last_change<'a>(repo: &'a Repo, commit: &'a Commit, path: &str, file: &RepoFile) -> &'a Commit {
    let mut at = commit;
    while let Some(parent) = at.parent.as_ref().and_then(|p| repo.commits.get(p)) {
        if parent.files.get(path) != Some(file) {
            break;
        }
        at = parent;
    }
    at
}

/// A content id for a directory: equal for directories with identical contents.
fn dir_oid(commit: &Commit, dir: &str) -> String {
    let under = format!("{dir}/");
    let mut h = Sha1::new();
    h.update(b"tree\0");
    for (k, f) in commit
        .files
        .range::<str, _>((std::ops::Bound::Included(under.as_str()), std::ops::Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(&under))
    {
        h.update(&k.as_bytes()[under.len()..]);
        h.update(b"\0");
        h.update(f.oid.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// The git-lfs pointer file that stands for a large file in git.
pub fn lfs_pointer(sha256: &str, size: u64) -> String {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n")
}
