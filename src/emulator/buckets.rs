//! The bucket JSON API: create, info, delete, list, tree, paths-info and CAS tokens.
//! (`batch` lives in [`super::batch`], downloads in [`super::resolve`].)

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Principal;
use super::config::{TokenScope, validate_id, validate_name};
use super::error::{EmulatorError, Result};
use super::listing::{Item, KeySpace, ListParams, Scope, lookup, page};
use super::metrics::WriteKind;
use super::paths::{encode_path, validate_path};
use super::server::{AppState, Shared};
use super::store::{Bucket, BucketFile};
use super::synthetic::SyntheticBucket;
use super::timefmt::{now_ms, rfc3339_ms};

/// Paths-info requests may name at most this many paths.
const MAX_PATHS_INFO: usize = 10_000;

/// A bucket as handlers see it, stored or synthetic.
pub enum View<'a> {
    Stored(&'a Bucket),
    Synthetic(&'a SyntheticBucket),
}

impl View<'_> {
    pub fn info_json(&self) -> Value {
        let (id, private, created, updated, size, files) = match self {
            View::Stored(b) => (&b.id, b.private, b.created_ms, b.updated_ms, b.total_size, b.files.len() as u64),
            View::Synthetic(b) => (&b.id, b.private, b.created_ms, b.created_ms, b.total_size(), b.count),
        };
        json!({
            "id": id,
            "private": private,
            "createdAt": rfc3339_ms(created),
            "updatedAt": rfc3339_ms(updated),
            "size": size,
            "totalFiles": files,
        })
    }

    /// A page of the tree, or the entry at one path.
    fn page(&self, scope: &Scope, params: &ListParams) -> (Vec<Item<BucketFile>>, Option<super::listing::Cursor>) {
        match self {
            View::Stored(b) => page(&b.files, scope, params.recursive, params.cursor.as_ref(), params.limit),
            View::Synthetic(b) => page(*b, scope, params.recursive, params.cursor.as_ref(), params.limit),
        }
    }

    pub fn lookup(&self, path: &str) -> Option<Item<BucketFile>> {
        match self {
            View::Stored(b) => lookup(&b.files, path),
            View::Synthetic(b) => lookup(*b, path),
        }
    }

    pub fn get(&self, path: &str) -> Option<BucketFile> {
        match self {
            View::Stored(b) => b.files.get(path).cloned(),
            View::Synthetic(b) => KeySpace::get(*b, path),
        }
    }
}

/// `{ns}/{name}` after validating both parts (400 otherwise).
pub fn bucket_id(ns: &str, name: &str) -> Result<String> {
    validate_name(ns).map_err(|e| EmulatorError::BadRequest(format!("bucket namespace: {e}")))?;
    validate_name(name).map_err(|e| EmulatorError::BadRequest(format!("bucket name: {e}")))?;
    Ok(format!("{ns}/{name}"))
}

/// Runs `f` on bucket `id` after checking that `who` may read it.
pub fn with_bucket<T>(s: &Shared, id: &str, who: Principal, f: impl FnOnce(View<'_>) -> Result<T>) -> Result<T> {
    if let Some(b) = s.synthetic.get(id) {
        who.check_read(b.private, &format!("bucket {id}"))?;
        return f(View::Synthetic(b));
    }
    let state = s.store.read();
    let b = state.buckets.get(id).ok_or_else(|| EmulatorError::bucket_not_found(id))?;
    who.check_read(b.private, &format!("bucket {id}"))?;
    f(View::Stored(b))
}

/// JSON of one tree entry.
pub fn entry_json(item: &Item<BucketFile>) -> Value {
    match item {
        Item::File { path, value } => json!({
            "type": "file",
            "path": path,
            "size": value.size,
            "xetHash": value.xet_hash,
            "mtime": rfc3339_ms(value.mtime_ms),
            "uploadedAt": rfc3339_ms(value.uploaded_ms),
        }),
        Item::Dir { path } => json!({ "type": "directory", "path": path }),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateBody {
    #[serde(default)]
    private: bool,
}

/// `POST /api/buckets/{ns}/{name}`.
pub async fn create(
    State(s): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let who = s.principal(&headers)?;
    who.check_write("create a bucket")?;
    let id = bucket_id(&ns, &name)?;
    let body: CreateBody = if body.iter().all(u8::is_ascii_whitespace) {
        CreateBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| EmulatorError::BadRequest(format!("invalid body: {e}")))?
    };
    if s.synthetic.contains_key(&id) {
        return Err(EmulatorError::Conflict(format!("bucket {id} already exists")));
    }
    {
        let mut state = s.store.write();
        if state.buckets.contains_key(&id) {
            return Err(EmulatorError::Conflict(format!("bucket {id} already exists")));
        }
        let bucket = Bucket::new(&id, body.private, now_ms());
        s.store.save_bucket(&bucket)?;
        state.buckets.insert(id.clone(), bucket);
    }
    let url = format!("{}/buckets/{id}", s.public_base(&headers));
    Ok(Json(json!({ "url": url, "id": id, "name": name })).into_response())
}

/// `GET /api/buckets/{ns}/{name}`.
pub async fn info(
    State(s): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let who = s.principal(&headers)?;
    let id = bucket_id(&ns, &name)?;
    let info = with_bucket(&s, &id, who, |b| Ok(b.info_json()))?;
    Ok(Json(info).into_response())
}

/// `DELETE /api/buckets/{ns}/{name}`.
pub async fn remove(
    State(s): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let who = s.principal(&headers)?;
    who.check_write("delete a bucket")?;
    let id = bucket_id(&ns, &name)?;
    if s.synthetic.contains_key(&id) {
        return Err(EmulatorError::Forbidden(format!("bucket {id} is synthetic and read-only")));
    }
    let mut state = s.store.write();
    if !state.buckets.contains_key(&id) {
        return Err(EmulatorError::bucket_not_found(&id));
    }
    s.store.remove_bucket(&id)?;
    state.buckets.remove(&id);
    Ok(Json(json!({})).into_response())
}

/// `GET /api/buckets/{ns}`: the buckets of a namespace the caller may see, paginated.
pub async fn list(
    State(s): State<AppState>,
    Path(ns): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response> {
    let who = s.principal(&headers)?;
    validate_name(&ns).map_err(|e| EmulatorError::BadRequest(format!("namespace: {e}")))?;
    let params = ListParams::parse(&query, s.page_size)?;
    let after = match &params.cursor {
        None => None,
        Some(super::listing::Cursor::After(id)) => Some(id.clone()),
        Some(_) => {
            return Err(EmulatorError::BadRequest("invalid cursor for a bucket list".to_string()));
        }
    };
    let visible = |private: bool| !private || who.is_authenticated();
    let prefix = format!("{ns}/");
    let mut infos: Vec<(String, Value)> = {
        let state = s.store.read();
        let stored =
            state.buckets.values().filter(|b| visible(b.private)).map(|b| (b.id.clone(), View::Stored(b).info_json()));
        let synthetic =
            s.synthetic.values().filter(|b| visible(b.private)).map(|b| (b.id.clone(), View::Synthetic(b).info_json()));
        stored
            .chain(synthetic)
            .filter(|(id, _)| id.starts_with(&prefix) && after.as_ref().is_none_or(|a| id > a))
            .collect()
    };
    infos.sort_by(|a, b| a.0.cmp(&b.0));
    let more = infos.len() > params.limit;
    infos.truncate(params.limit);
    let mut resp = Json(infos.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>()).into_response();
    if let (true, Some((last, _))) = (more, infos.last()) {
        let url = format!("{}/api/buckets/{ns}", s.public_base(&headers));
        let link = params.next_link(&url, &super::listing::Cursor::After(last.clone()));
        set_link(&mut resp, &link);
    }
    Ok(resp)
}

#[derive(Debug, Deserialize)]
pub struct TreePath {
    ns: String,
    name: String,
    prefix: Option<String>,
}

/// `GET /api/buckets/{ns}/{name}/tree[/{prefix}]`: one page of entries; the prefix matches
/// raw key prefixes (see [`Scope::raw_prefix`]).
pub async fn tree(
    State(s): State<AppState>,
    Path(p): Path<TreePath>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response> {
    let who = s.principal(&headers)?;
    let id = bucket_id(&p.ns, &p.name)?;
    let params = ListParams::parse(&query, s.page_size)?;
    let scope = match &p.prefix {
        Some(prefix) => {
            validate_path(prefix, "tree prefix")?;
            Scope::raw_prefix(prefix)
        }
        None => Scope::root(),
    };
    let (items, next) = with_bucket(&s, &id, who, |b| Ok(b.page(&scope, &params)))?;
    let body: Vec<Value> = items.iter().map(entry_json).collect();
    let mut resp = Json(body).into_response();
    if let Some(next) = next {
        let mut url = format!("{}/api/buckets/{id}/tree", s.public_base(&headers));
        if let Some(prefix) = &p.prefix {
            url = format!("{url}/{}", encode_path(prefix));
        }
        set_link(&mut resp, &params.next_link(&url, &next));
    }
    Ok(resp)
}

#[derive(Debug, Deserialize)]
pub struct PathsBody {
    pub paths: Vec<String>,
}

/// Parses a paths-info body (`{"paths": [...]}`), checking every path.
pub fn parse_paths_body(body: &[u8]) -> Result<Vec<String>> {
    let body: PathsBody = serde_json::from_slice(body)
        .map_err(|e| EmulatorError::BadRequest(format!("expected a JSON body {{\"paths\": [...]}}: {e}")))?;
    if body.paths.len() > MAX_PATHS_INFO {
        return Err(EmulatorError::BadRequest(format!("at most {MAX_PATHS_INFO} paths per request")));
    }
    for p in &body.paths {
        validate_path(p, "path")?;
    }
    Ok(body.paths)
}

/// `POST /api/buckets/{ns}/{name}/paths-info`: entries for the named paths; missing ones
/// are omitted, implicit directories come back as directories.
pub async fn paths_info(
    State(s): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let who = s.principal(&headers)?;
    let id = bucket_id(&ns, &name)?;
    let paths = parse_paths_body(&body)?;
    let entries = with_bucket(&s, &id, who, |b| {
        Ok(paths.iter().filter_map(|p| b.lookup(p)).map(|i| entry_json(&i)).collect::<Vec<_>>())
    })?;
    Ok(Json(entries).into_response())
}

/// `POST /api/buckets/{ns}/{name}/batch`.
pub async fn batch(
    State(s): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let who = s.principal(&headers)?;
    who.check_write("change a bucket")?;
    let id = bucket_id(&ns, &name)?;
    s.metrics.write(WriteKind::Batch);
    let applied = super::batch::apply(&s, who, &id, &body).await?;
    Ok(Json(json!({ "success": true, "processed": applied })).into_response())
}

/// `GET /api/buckets/{ns}/{name}/xet-read-token`.
pub async fn read_token(
    State(s): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let who = s.principal(&headers)?;
    let id = bucket_id(&ns, &name)?;
    with_bucket(&s, &id, who, |_| Ok(()))?;
    Ok(cas_token_response(&s, &headers, TokenScope::Read))
}

/// `GET /api/buckets/{ns}/{name}/xet-write-token`.
pub async fn write_token(
    State(s): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let who = s.principal(&headers)?;
    who.check_write("upload to a bucket")?;
    let id = bucket_id(&ns, &name)?;
    if s.synthetic.contains_key(&id) {
        return Err(EmulatorError::Forbidden(format!("bucket {id} is synthetic and read-only")));
    }
    with_bucket(&s, &id, who, |_| Ok(()))?;
    s.metrics.write(WriteKind::WriteToken);
    Ok(cas_token_response(&s, &headers, TokenScope::Write))
}

/// `{casUrl, accessToken, exp}` with a fresh CAS token; the CAS is reached through us.
pub fn cas_token_response(s: &Shared, headers: &HeaderMap, scope: TokenScope) -> Response {
    let (token, exp) = s.auth.issue_cas_token(scope);
    Json(json!({ "casUrl": s.public_base(headers), "accessToken": token, "exp": exp })).into_response()
}

/// Sets the `Link` header of a paginated response.
pub fn set_link(resp: &mut Response, link: &str) {
    if let Ok(v) = HeaderValue::from_str(link) {
        resp.headers_mut().insert(header::LINK, v);
    }
}

/// Checks an id given as `ns/name` (used by batch copy sources).
pub fn check_id(id: &str) -> Result<()> {
    validate_id(id).map_err(|e| EmulatorError::BadRequest(format!("id {id:?}: {e}")))
}
