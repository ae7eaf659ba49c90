//! The public HTTP surface: shared state, the route table, and the per-route middleware
//! that applies faults and counts requests under stable route names.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, delete, get, head, post};

use super::auth::Auth;
use super::cas::Cas;
use super::error::{EmulatorError, Result};
use super::faults::{FaultInjector, Faults, RequestClass};
use super::metrics::Metrics;
use super::store::Store;
use super::synthetic::SyntheticBucket;
use super::{buckets, cas_proxy, repos, resolve};

/// Largest JSON / NDJSON request body (batches of thousands of lines).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Everything request handlers share.
pub struct Shared {
    pub store: Store,
    pub auth: Auth,
    pub cas: Cas,
    pub faults: FaultInjector,
    pub metrics: Metrics,
    pub synthetic: BTreeMap<String, SyntheticBucket>,
    pub page_size: usize,
    /// Used when a request carries no `Host` header.
    pub endpoint: String,
    pub proxy: reqwest::Client,
    route_names: HashMap<(String, &'static str), &'static str>,
}

pub type AppState = Arc<Shared>;

impl Shared {
    /// The base URL clients used to reach us (`http://{Host}`), for links and `casUrl`.
    pub fn public_base(&self, headers: &HeaderMap) -> String {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
            .map(|h| format!("http://{h}"))
            .unwrap_or_else(|| self.endpoint.clone())
    }

    /// Checks the `Authorization` header of an API request.
    pub fn principal(&self, headers: &HeaderMap) -> Result<super::auth::Principal> {
        self.auth.principal(headers)
    }

    fn route_name(&self, template: &str, method: &Method) -> &'static str {
        let key = |m: &'static str| (template.to_string(), m);
        let method_key: &'static str = match *method {
            Method::GET => "GET",
            Method::HEAD => "HEAD",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            _ => "*",
        };
        self.route_names
            .get(&key(method_key))
            .or_else(|| (method == Method::HEAD).then(|| self.route_names.get(&key("GET"))).flatten())
            .or_else(|| self.route_names.get(&key("*")))
            .copied()
            .unwrap_or("unknown")
    }
}

/// Parts needed to build [`Shared`], minus the route names this module adds.
pub struct Parts {
    pub store: Store,
    pub auth: Auth,
    pub cas: Cas,
    pub faults: Faults,
    pub synthetic: BTreeMap<String, SyntheticBucket>,
    pub page_size: usize,
    pub endpoint: String,
}

/// Builds the router and the shared state it runs on.
pub fn build(parts: Parts) -> Result<(Router, AppState)> {
    let routes = route_table();
    let proxy = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| EmulatorError::Internal(format!("building the CAS proxy client: {e}")))?;
    let state = Arc::new(Shared {
        store: parts.store,
        auth: parts.auth,
        cas: parts.cas,
        faults: FaultInjector::new(parts.faults),
        metrics: Metrics::default(),
        synthetic: parts.synthetic,
        page_size: parts.page_size,
        endpoint: parts.endpoint,
        proxy,
        route_names: routes.names,
    });
    let router = routes
        .router
        .route_layer(from_fn_with_state(state.clone(), per_route))
        .fallback(not_found)
        .with_state(state.clone());
    Ok((router, state))
}

/// Routes with the names they are counted under.
struct Routes {
    router: Router<AppState>,
    names: HashMap<(String, &'static str), &'static str>,
}

impl Routes {
    /// Adds `method_router` at `path`, counted as `name` for `method` (`*`: every method).
    fn add(mut self, path: &str, method: &'static str, name: &'static str, mr: MethodRouter<AppState>) -> Self {
        self.names.insert((path.to_string(), method), name);
        self.router = self.router.route(path, mr);
        self
    }
}

fn route_table() -> Routes {
    let mut r = Routes { router: Router::new(), names: HashMap::new() }
        .add("/metrics", "GET", "metrics", get(metrics))
        .add("/admin/faults", "GET", "admin_faults", get(get_faults))
        .add("/admin/faults", "POST", "admin_faults", post(set_faults))
        // Buckets.
        .add("/api/buckets/{ns}", "GET", "bucket_list", get(buckets::list))
        .add("/api/buckets/{ns}/{name}", "POST", "bucket_create", post(buckets::create))
        .add("/api/buckets/{ns}/{name}", "GET", "bucket_info", get(buckets::info))
        .add("/api/buckets/{ns}/{name}", "DELETE", "bucket_delete", delete(buckets::remove))
        .add("/api/buckets/{ns}/{name}/tree", "GET", "bucket_tree", get(buckets::tree))
        .add("/api/buckets/{ns}/{name}/tree/{*prefix}", "GET", "bucket_tree", get(buckets::tree))
        .add(
            "/api/buckets/{ns}/{name}/paths-info",
            "POST",
            "bucket_paths_info",
            post(buckets::paths_info).layer(DefaultBodyLimit::max(MAX_BODY)),
        )
        .add(
            "/api/buckets/{ns}/{name}/batch",
            "POST",
            "bucket_batch",
            post(buckets::batch).layer(DefaultBodyLimit::max(MAX_BODY)),
        )
        .add("/api/buckets/{ns}/{name}/xet-read-token", "GET", "bucket_xet_read_token", get(buckets::read_token))
        .add("/api/buckets/{ns}/{name}/xet-write-token", "GET", "bucket_xet_write_token", get(buckets::write_token))
        .add("/buckets/{ns}/{name}/resolve/{*path}", "GET", "bucket_resolve", get(resolve::bucket))
        .add("/buckets/{ns}/{name}/resolve/{*path}", "HEAD", "bucket_resolve", head(resolve::bucket));
    // Repos: the same handlers under each type; `repos::Kind` reads the type from the URL.
    for plural in ["models", "datasets", "spaces"] {
        let api = format!("/api/{plural}/{{ns}}/{{name}}");
        r = r
            .add(&api, "GET", "repo_info", get(repos::info))
            .add(&format!("{api}/revision/{{rev}}"), "GET", "repo_revision", get(repos::info_at))
            .add(&format!("{api}/tree/{{rev}}"), "GET", "repo_tree", get(repos::tree))
            .add(&format!("{api}/tree/{{rev}}/{{*path}}"), "GET", "repo_tree", get(repos::tree))
            .add(
                &format!("{api}/paths-info/{{rev}}"),
                "POST",
                "repo_paths_info",
                post(repos::paths_info).layer(DefaultBodyLimit::max(MAX_BODY)),
            )
            .add(&format!("{api}/refs"), "GET", "repo_refs", get(repos::refs))
            .add(&format!("{api}/commits/{{rev}}"), "GET", "repo_commits", get(repos::commits))
            .add(&format!("{api}/xet-read-token/{{rev}}"), "GET", "repo_xet_read_token", get(repos::read_token));
        let prefix = if plural == "models" { String::new() } else { format!("/{plural}") };
        let resolve = format!("{prefix}/{{ns}}/{{name}}/resolve/{{rev}}/{{*path}}");
        r = r.add(&resolve, "GET", "repo_resolve", get(resolve::repo)).add(
            &resolve,
            "HEAD",
            "repo_resolve",
            head(resolve::repo),
        );
    }
    // The CAS, reverse-proxied; names are refined per request by `cas_proxy::route_name`.
    r.add("/v1/{*rest}", "*", "cas", any(cas_proxy::proxy)).add("/v2/{*rest}", "*", "cas", any(cas_proxy::proxy)).add(
        "/simulation/xorb-uploads/{grant}",
        "*",
        "cas",
        any(cas_proxy::proxy),
    )
}

/// Applies faults and counts the request under its route name.
async fn per_route(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let template = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_default();
    let mut name = s.route_name(&template, req.method());
    if name == "cas" {
        name = cas_proxy::route_name(req.method(), req.uri().path());
    }
    let class = if name.starts_with("cas_") { RequestClass::Cas } else { RequestClass::Api };
    let exempt = matches!(name, "metrics" | "admin_faults");
    let injected = if exempt { None } else { s.faults.before(class).await };
    let resp = match injected {
        Some(r) => r,
        None => next.run(req).await,
    };
    s.metrics.request(name, resp.status().as_u16());
    resp
}

async fn not_found(State(s): State<AppState>, method: Method, uri: axum::http::Uri) -> Response {
    s.metrics.request("not_found", 404);
    let body = serde_json::json!({ "error": format!("no route for {method} {}", uri.path()) }).to_string();
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

async fn get_faults(State(s): State<AppState>) -> Response {
    axum::Json(s.faults.get()).into_response()
}

async fn set_faults(State(s): State<AppState>, body: axum::body::Bytes) -> Result<Response> {
    let faults: Faults =
        serde_json::from_slice(&body).map_err(|e| EmulatorError::BadRequest(format!("invalid fault settings: {e}")))?;
    faults.validate().map_err(EmulatorError::BadRequest)?;
    s.faults.set(faults.clone());
    Ok(axum::Json(faults).into_response())
}
