//! The proxy for upstream OpenAPI services (`--enable-proxy` with `[plugins.proxy]`).
//!
//! Each upstream's OpenAPI document (`docs_path`, `/api/v1/openapi.json` by default) is read
//! in the background, with retries and a growing pause between them, so the bridge serves its
//! plugins and bus routes at once; an upstream that cannot be read is logged and reported by
//! `/health`, and its routes (and OpenAPI entries) appear when it comes up. Every path and
//! method its document lists, allowed by its enable/disable rules, is forwarded at the same
//! path; a local route of the same path and method wins.
//!
//! # Paths
//! The upstream path is built from the route's template and the request's *decoded* segments,
//! never from the request's text: a segment that decodes to `.` or `..`, or holds `/` or `\`
//! (however it is encoded: `%2e%2e`, `.%2E`, `%2f`, or `../` sent as is) is refused with 400,
//! and a parameter value is encoded again before it is sent. The enable and disable rules, the
//! bridge's `auth.rules` and the keys sent upstream are all checked against that exact path.
//!
//! # Answers
//! As FrameX gives them: the upstream's status, headers and body unchanged, passed on as the
//! bytes arrive (so a route in `force_stream_apis`, or any event stream, streams whatever its
//! content type). A route listed in `wrap_apis` gets the envelope instead (an upstream envelope
//! is not wrapped twice). `timeout` bounds each read from the upstream, and `connect_timeout`
//! the connection; a whole answer may take as long as it keeps arriving. A stream cut by the
//! upstream or by a timeout is logged and, for an event stream, ends with an `error` event.
//! Errors name the upstream by its configured `name`, never by its address.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::auth::AuthRules;
use crate::envelope::{self, StreamEvent};
use crate::error::{ApiError, Error, Result};

/// `[plugins.proxy]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Upstream base URLs: a list, or a table url -> rules.
    #[serde(default)]
    pub proxy_urls: ProxyUrls,
    /// Rules (`*`, exact, `prefix/*`) of paths streamed to the client as the bytes arrive,
    /// whatever their content type, and never wrapped.
    #[serde(default)]
    pub force_stream_apis: Vec<String>,
    /// Seconds one read from an upstream may wait for data (600), FrameX's `timeout`: a
    /// stream that keeps sending is never cut.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Seconds to connect to an upstream (10).
    #[serde(default)]
    pub connect_timeout: Option<f64>,
    /// Rules of paths whose JSON answer is put in the envelope (none: answers pass through
    /// unchanged, as in FrameX).
    #[serde(default)]
    pub wrap_apis: Vec<String>,
    /// The longest pause, in seconds, between two attempts to read an upstream's document
    /// (30); the first pause is 0.2 s and each one doubles.
    #[serde(default)]
    pub retry_max_interval: Option<f64>,
    /// Keys sent upstream: path rules as in `auth.rules`, the first key is sent.
    #[serde(default)]
    pub auth: ProxyAuth,
    /// FrameX's `white_list`: enable rules applied to every upstream given as a list.
    #[serde(default)]
    pub white_list: Option<Vec<String>>,
    /// FrameX's remote functions: not supported (they decode payloads by importing any named
    /// class); only an empty value is accepted.
    #[serde(default)]
    pub proxy_functions: Option<Value>,
}

/// `proxy_urls` in either of FrameX's forms.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ProxyUrls {
    /// `["http://host:port", ...]`.
    List(Vec<String>),
    /// `{"http://host:port" = {enable = ["*"], disable = [], docs_path = "...", name = "..."}}`.
    Map(BTreeMap<String, UpstreamRules>),
}

impl Default for ProxyUrls {
    fn default() -> Self {
        ProxyUrls::List(Vec::new())
    }
}

/// Per-upstream rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamRules {
    /// Rules of paths to publish (`*`, exact, `prefix/*`); default everything.
    #[serde(default = "all")]
    pub enable: Vec<String>,
    /// Rules of paths not to publish; they win over `enable`.
    #[serde(default)]
    pub disable: Vec<String>,
    /// Where the upstream serves its OpenAPI document.
    #[serde(default = "docs_path")]
    pub docs_path: String,
    /// What errors, logs and `/health` call it (`upstream-<n>`, by its place in the config).
    #[serde(default)]
    pub name: Option<String>,
}

fn all() -> Vec<String> {
    vec!["*".into()]
}

fn docs_path() -> String {
    "/api/v1/openapi.json".into()
}

/// `[plugins.proxy.auth]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyAuth {
    /// Path rule -> keys; the first key of the matching rule is sent upstream.
    #[serde(default)]
    pub rules: BTreeMap<String, Vec<String>>,
}

fn rule_matches(rule: &str, path: &str) -> bool {
    if rule == "*" || rule == "/*" {
        return true;
    }
    match rule.strip_suffix("/*") {
        Some(p) => path.starts_with(&format!("{p}/")),
        None => rule == path,
    }
}

fn any_rule(rules: &[String], path: &str) -> bool {
    rules.iter().any(|r| rule_matches(r, path))
}

/// One configured upstream.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub name: String,
    pub base: String,
    rules: UpstreamRules,
}

impl Upstream {
    fn allows(&self, path: &str) -> bool {
        any_rule(&self.rules.enable, path) && !any_rule(&self.rules.disable, path)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Lit(String),
    Param(String),
}

/// One forwarded path and method.
#[derive(Debug)]
pub(crate) struct ProxyRoute {
    upstream: Arc<Upstream>,
    /// The upstream's template (`/api/v1/items/{id}`).
    pub path: String,
    segments: Vec<Seg>,
    pub method: Method,
    operation: Value,
    force_stream: bool,
    wrap: bool,
}

impl ProxyRoute {
    /// The segments' values when `segs` fits the template.
    fn fits(&self, method: &Method, segs: &[String]) -> bool {
        self.method == method
            && self.segments.len() == segs.len()
            && self.segments.iter().zip(segs).all(|(t, s)| match t {
                Seg::Lit(l) => l == s,
                Seg::Param(_) => !s.is_empty(),
            })
    }

    /// Literal segments first: `/a/b` is preferred to `/a/{x}` for `/a/b`.
    fn specificity(&self) -> Vec<bool> {
        self.segments
            .iter()
            .map(|s| matches!(s, Seg::Lit(_)))
            .collect()
    }

    /// The upstream path for these decoded segments, each parameter encoded again.
    fn build(&self, segs: &[String]) -> String {
        let mut out = String::new();
        for (t, s) in self.segments.iter().zip(segs) {
            out.push('/');
            match t {
                Seg::Lit(l) => out.push_str(l),
                Seg::Param(_) => out.push_str(&encode(s)),
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        out
    }
}

fn template_segments(path: &str) -> Vec<Seg> {
    path.strip_prefix('/')
        .unwrap_or(path)
        .split('/')
        .map(
            |s| match s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                Some(name) => Seg::Param(name.to_owned()),
                None => Seg::Lit(s.to_owned()),
            },
        )
        .collect()
}

/// What the background readers found.
#[derive(Default)]
struct State {
    routes: Vec<Arc<ProxyRoute>>,
    loaded: BTreeSet<String>,
    errors: BTreeMap<String, String>,
    /// path -> method -> operation, as the document shows them.
    paths: BTreeMap<String, BTreeMap<String, Value>>,
    schemas: Map<String, Value>,
    tags: Vec<(String, String)>,
    doc: Option<Arc<Value>>,
}

/// The proxy: its upstreams, what has been read of them, and the HTTP client.
pub(crate) struct Proxy {
    upstreams: Vec<Arc<Upstream>>,
    client: reqwest::Client,
    auth: AuthRules,
    force_stream: Vec<String>,
    wrap: Vec<String>,
    read_timeout: Duration,
    retry_max: Duration,
    state: RwLock<State>,
    stop: CancellationToken,
    /// The local routes (template, method): an upstream route of the same path and method
    /// is not published, however a request spells the path.
    local: RwLock<BTreeSet<(String, Method)>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("upstreams", &self.upstreams)
            .finish_non_exhaustive()
    }
}

const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch"];

fn seconds(v: Option<f64>, default: f64, key: &str) -> Result<Duration> {
    let s = v.unwrap_or(default);
    if !(s.is_finite() && s > 0.0) {
        return Err(Error::Config(format!(
            "plugins.proxy.{key}: must be a positive number of seconds, got {s}"
        )));
    }
    Ok(Duration::from_secs_f64(s))
}

impl Proxy {
    /// Checks `[plugins.proxy]`; nothing is read from the upstreams yet.
    pub fn from_config(raw: Option<&Value>) -> Result<Arc<Proxy>> {
        let cfg: ProxyConfig = match raw {
            Some(v) => serde_path_to_error::deserialize(v.clone())
                .map_err(|e| Error::Config(format!("plugins.proxy.{}: {}", e.path(), e.inner())))?,
            None => ProxyConfig::default(),
        };
        if cfg.proxy_functions.as_ref().is_some_and(|v| match v {
            Value::Null => false,
            Value::Object(m) => !m.is_empty(),
            Value::Array(a) => !a.is_empty(),
            _ => true,
        }) {
            return Err(Error::Config(
                "plugins.proxy.proxy_functions: remote functions are not supported by this bridge"
                    .into(),
            ));
        }
        let read_timeout = seconds(cfg.timeout, 600.0, "timeout")?;
        let connect_timeout = seconds(cfg.connect_timeout, 10.0, "connect_timeout")?;
        let retry_max = seconds(cfg.retry_max_interval, 30.0, "retry_max_interval")?;
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .read_timeout(read_timeout)
            .build()
            .map_err(|e| Error::Proxy(format!("cannot build the HTTP client: {e}")))?;
        let configured: Vec<(String, UpstreamRules)> = match &cfg.proxy_urls {
            ProxyUrls::List(urls) => urls
                .iter()
                .map(|u| {
                    (
                        u.clone(),
                        UpstreamRules {
                            enable: cfg.white_list.clone().unwrap_or_else(all),
                            disable: Vec::new(),
                            docs_path: docs_path(),
                            name: None,
                        },
                    )
                })
                .collect(),
            ProxyUrls::Map(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        if configured.is_empty() {
            return Err(Error::Config(
                "plugins.proxy.proxy_urls: the proxy is enabled but no upstream is configured"
                    .into(),
            ));
        }
        let mut upstreams = Vec::new();
        let mut names = BTreeSet::new();
        for (i, (base, rules)) in configured.into_iter().enumerate() {
            let base = base.trim_end_matches('/').to_owned();
            match reqwest::Url::parse(&base) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => {
                    return Err(Error::Config(format!(
                        "plugins.proxy.proxy_urls: {base:?} is not an http(s) URL"
                    )))
                }
            }
            let name = rules
                .name
                .clone()
                .unwrap_or_else(|| format!("upstream-{}", i + 1));
            if !names.insert(name.clone()) {
                return Err(Error::Config(format!(
                    "plugins.proxy.proxy_urls: two upstreams are named {name:?}"
                )));
            }
            upstreams.push(Arc::new(Upstream { name, base, rules }));
        }
        Ok(Arc::new(Proxy {
            upstreams,
            client,
            auth: AuthRules::new(&cfg.auth.rules),
            force_stream: cfg.force_stream_apis,
            wrap: cfg.wrap_apis,
            read_timeout,
            retry_max,
            state: RwLock::new(State::default()),
            stop: CancellationToken::new(),
            local: RwLock::new(BTreeSet::new()),
        }))
    }

    /// Starts reading every upstream's document in the background, until it is read or the
    /// proxy is stopped or dropped. `local` are the bridge's own routes, which win.
    pub fn spawn_loaders(self: &Arc<Self>, local: BTreeSet<(String, Method)>) {
        *self.local.write().unwrap_or_else(|e| e.into_inner()) = local;
        for up in &self.upstreams {
            let weak = Arc::downgrade(self);
            let up = up.clone();
            tokio::spawn(load_upstream(weak, up));
        }
    }

    /// Stops the background readers.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Upstreams whose document has not been read yet, with the last error.
    pub fn missing(&self) -> Vec<(String, Option<String>)> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        self.upstreams
            .iter()
            .filter(|u| !st.loaded.contains(&u.name))
            .map(|u| (u.name.clone(), st.errors.get(&u.name).cloned()))
            .collect()
    }

    async fn fetch_doc(&self, up: &Upstream) -> std::result::Result<Value, String> {
        let url = format!("{}{}", up.base, up.rules.docs_path);
        let r = self
            .client
            .get(&url)
            .timeout(self.read_timeout.min(Duration::from_secs(30)))
            .send()
            .await
            .map_err(|e| describe(&e))?;
        if !r.status().is_success() {
            return Err(format!(
                "its document at {} answered {}",
                up.rules.docs_path,
                r.status()
            ));
        }
        let doc: Value = r.json().await.map_err(|e| describe(&e))?;
        if !doc.get("paths").is_some_and(Value::is_object) {
            return Err(format!(
                "its document at {} has no \"paths\"",
                up.rules.docs_path
            ));
        }
        Ok(doc)
    }

    fn install(&self, up: &Arc<Upstream>, doc: &Value) {
        let local = self.local.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let tag = format!("proxy({})", up.base);
        let mut added = 0;
        if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
            for (path, item) in paths {
                if !path.starts_with('/') || !up.allows(path) {
                    continue;
                }
                for m in METHODS {
                    let Some(op) = item.get(*m) else { continue };
                    let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .expect("a standard method");
                    if local.contains(&(path.clone(), method.clone())) {
                        tracing::warn!(upstream = %up.name, %path, %method, "a local route takes precedence over the upstream's");
                        continue;
                    }
                    let segments = template_segments(path);
                    if st
                        .routes
                        .iter()
                        .any(|r| r.method == method && r.segments == segments)
                    {
                        tracing::warn!(upstream = %up.name, %path, %method, "another upstream already serves this route; skipped");
                        continue;
                    }
                    // As FrameX shows a proxied operation: its `proxy(<url>)` tag and the
                    // operationId of its own handler; the upstream's id is kept beside it.
                    let mut shown = op.clone();
                    shown["tags"] = json!([tag.clone()]);
                    if let Some(id) = op.get("operationId").cloned() {
                        shown["x-upstream-operation-id"] = id;
                    }
                    shown["operationId"] = json!(crate::openapi::operation_id(path, &method));
                    if shown.get("responses").is_none() {
                        shown["responses"] =
                            json!({"default": {"description": "The upstream's answer"}});
                    }
                    if any_rule(&self.wrap, path) && !any_rule(&self.force_stream, path) {
                        wrap_documented(&mut shown);
                    }
                    st.paths
                        .entry(path.clone())
                        .or_default()
                        .insert((*m).to_owned(), shown);
                    st.routes.push(Arc::new(ProxyRoute {
                        upstream: up.clone(),
                        path: path.clone(),
                        segments,
                        method,
                        operation: op.clone(),
                        force_stream: any_rule(&self.force_stream, path),
                        wrap: any_rule(&self.wrap, path),
                    }));
                    added += 1;
                }
            }
        }
        if let Some(s) = doc
            .pointer("/components/schemas")
            .and_then(Value::as_object)
        {
            for (k, v) in s {
                st.schemas.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        st.tags
            .push((tag, format!("Routes forwarded to the upstream {}", up.name)));
        st.loaded.insert(up.name.clone());
        st.errors.remove(&up.name);
        st.doc = None;
        drop(st);
        tracing::info!(upstream = %up.name, routes = added, "proxy read the upstream's OpenAPI document; its routes are served");
    }

    /// The served document: the local one with every upstream's operations added (a local
    /// operation wins), rebuilt when an upstream is read.
    pub fn document(&self, base: &Value) -> Arc<Value> {
        if let Some(d) = self
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .doc
            .clone()
        {
            return d;
        }
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let mut doc = base.clone();
        for (path, ops) in &st.paths {
            for (m, op) in ops {
                if doc["paths"][path].get(m).is_some() {
                    continue;
                }
                doc["paths"][path][m] = op.clone();
            }
        }
        for (k, v) in &st.schemas {
            if doc["components"]["schemas"].get(k).is_none() {
                doc["components"]["schemas"][k] = v.clone();
            }
        }
        if let Some(tags) = doc["tags"].as_array_mut() {
            for (name, description) in &st.tags {
                if !tags.iter().any(|t| t["name"] == name.as_str()) {
                    tags.push(json!({"name": name, "description": description}));
                }
            }
        }
        let doc = Arc::new(doc);
        st.doc = Some(doc.clone());
        doc
    }

    fn find(&self, method: &Method, segs: &[String]) -> Option<Arc<ProxyRoute>> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        st.routes
            .iter()
            .filter(|r| r.fits(method, segs))
            .max_by_key(|r| r.specificity())
            .cloned()
    }

    /// True when an upstream route fits this method and raw path.
    pub fn fits(&self, method: &Method, raw_path: &str) -> bool {
        decode_segments(raw_path).is_ok_and(|segs| self.find(method, &segs).is_some())
    }

    /// The route of a template (`call_plugin_api` by path).
    fn by_template(&self, method: Option<&Method>, path: &str) -> Option<Arc<ProxyRoute>> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        st.routes
            .iter()
            .find(|r| r.path == path && method.is_none_or(|m| *m == r.method))
            .cloned()
    }

    fn upstream_key(&self, path: &str, template: &str) -> Option<String> {
        self.auth
            .keys_for(path, Some(template))
            .and_then(|k| k.first().cloned())
    }

    /// Answers a request no local route took, if an upstream route fits it. A path with a
    /// dot segment, or a segment holding a slash, is refused before anything is matched.
    pub async fn handle(&self, bridge_auth: &AuthRules, req: Request) -> Option<Response> {
        let segs = match decode_segments(req.uri().path()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(path = %req.uri().path(), "refused: {}", e.message);
                return Some(envelope::failure(&e));
            }
        };
        let route = self.find(req.method(), &segs)?;
        let upstream_path = route.build(&segs);
        if !route.upstream.allows(&upstream_path) {
            return Some(envelope::failure(&ApiError::not_found(format!(
                "no route for {} {upstream_path}",
                req.method()
            ))));
        }
        if let Err(e) = bridge_auth.check(&upstream_path, Some(&route.path), req.headers()) {
            tracing::warn!(path = %upstream_path, "rejected: {}", e.message);
            return Some(route.error_response(&e));
        }
        let method = req.method().clone();
        let query = req.uri().query().map(str::to_owned);
        let headers = req.headers().clone();
        let body = match axum::body::to_bytes(req.into_body(), PROXY_BODY_LIMIT).await {
            Ok(b) => b,
            Err(e) => {
                return Some(route.error_response(&ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("cannot read the request body: {e}"),
                )))
            }
        };
        Some(
            self.forward(&route, method, &upstream_path, query, &headers, body)
                .await,
        )
    }

    async fn forward(
        &self,
        route: &ProxyRoute,
        method: Method,
        path: &str,
        query: Option<String>,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Response {
        let up = &route.upstream;
        let mut url = format!("{}{path}", up.base);
        if let Some(q) = query {
            url.push('?');
            url.push_str(&q);
        }
        let mut req = self.client.request(method, &url);
        let key = self.upstream_key(path, &route.path);
        for (name, value) in headers {
            if HOP_BY_HOP.contains(&name.as_str())
                || (key.is_some() && name == header::AUTHORIZATION)
            {
                continue;
            }
            req = req.header(name, value);
        }
        if let Some(key) = key {
            req = req.header(header::AUTHORIZATION, key);
        }
        let resp = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                let err = upstream_error(&up.name, &e);
                tracing::warn!(upstream = %up.name, %path, "{}: {}", err.message, describe(&e));
                return route.error_response(&err);
            }
        };
        let status =
            StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let upstream_headers = resp.headers().clone();
        let is_sse = content_type.starts_with("text/event-stream");
        if route.wrap && !route.force_stream && !is_sse && content_type.contains("json") {
            return match resp.bytes().await {
                Ok(bytes) => wrapped(status, bytes, &upstream_headers),
                Err(e) => {
                    let err = upstream_error(&up.name, &e);
                    tracing::warn!(upstream = %up.name, %path, "{}: {}", err.message, describe(&e));
                    envelope::failure(&err)
                }
            };
        }
        let body = pass_through(
            resp.bytes_stream(),
            is_sse,
            up.name.clone(),
            path.to_owned(),
        );
        let mut r = Response::new(Body::from_stream(body));
        *r.status_mut() = status;
        copy_headers(&upstream_headers, r.headers_mut());
        if route.force_stream || is_sse {
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r.headers_mut()
                .insert("x-accel-buffering", HeaderValue::from_static("no"));
        }
        r
    }

    /// A call from `call_plugin_api` by template (`/api/v1/items/{id}`, or `POST /...`).
    pub async fn call(
        &self,
        method: Option<&Method>,
        template: &str,
        kwargs: Map<String, Value>,
    ) -> Result<Value, ApiError> {
        let route = self.by_template(method, template).ok_or_else(|| {
            let missing: Vec<String> = self.missing().into_iter().map(|(n, _)| n).collect();
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                if missing.is_empty() {
                    format!("no upstream serves {template}")
                } else {
                    format!(
                        "no upstream serves {template} yet (not read yet: {})",
                        missing.join(", ")
                    )
                },
            )
        })?;
        self.call_route(&route, kwargs).await
    }

    async fn call_route(
        &self,
        route: &ProxyRoute,
        mut kwargs: Map<String, Value>,
    ) -> Result<Value, ApiError> {
        let mut segs = Vec::new();
        for s in &route.segments {
            match s {
                Seg::Lit(l) => segs.push(l.clone()),
                Seg::Param(name) => {
                    let v = kwargs.remove(name).ok_or_else(|| {
                        ApiError::validation(
                            vec!["path".into(), name.clone().into()],
                            "Field required",
                            "missing",
                        )
                    })?;
                    let text = scalar_text(v);
                    if text.is_empty() || text == "." || text == ".." {
                        return Err(ApiError::validation(
                            vec!["path".into(), name.clone().into()],
                            "a path parameter cannot be empty, \".\" or \"..\"",
                            "value_error",
                        ));
                    }
                    segs.push(text);
                }
            }
        }
        let path = route.build(&segs);
        let declared_query: Vec<String> = route
            .operation
            .get("parameters")
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["in"] == "query")
                    .filter_map(|p| p["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let all_query = matches!(route.method, Method::GET | Method::DELETE | Method::HEAD)
            || route.operation.get("requestBody").is_none();
        let mut query = Vec::new();
        let mut body = Map::new();
        for (k, v) in kwargs {
            if all_query || declared_query.contains(&k) {
                match v {
                    Value::Array(items) => {
                        for i in items {
                            query.push((k.clone(), scalar_text(i)));
                        }
                    }
                    other => query.push((k, scalar_text(other))),
                }
            } else {
                body.insert(k, v);
            }
        }
        let up = &route.upstream;
        let url = format!("{}{path}", up.base);
        let mut req = self
            .client
            .request(route.method.clone(), &url)
            .query(&query);
        if !body.is_empty() {
            req = req.json(&Value::Object(body));
        }
        if let Some(key) = self.upstream_key(&path, &route.path) {
            req = req.header(header::AUTHORIZATION, key);
        }
        let fail = |e: reqwest::Error| {
            let err = upstream_error(&up.name, &e);
            tracing::warn!(upstream = %up.name, %path, "{}: {}", err.message, describe(&e));
            err
        };
        let resp = req.send().await.map_err(fail)?;
        let status =
            StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let text = resp.text().await.map_err(fail)?;
        let v = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            Ok(unwrap_envelope(v))
        } else {
            let message = v
                .get("message")
                .or_else(|| v.get("detail"))
                .and_then(Value::as_str)
                .map_or_else(
                    || format!("the upstream {} answered {status}", up.name),
                    str::to_owned,
                );
            Err(ApiError::new(status, message).with_data(v))
        }
    }
}

impl ProxyRoute {
    /// An error before the upstream answered: an `error` event on a stream route, else the
    /// error envelope.
    fn error_response(&self, e: &ApiError) -> Response {
        if self.force_stream {
            envelope::sse_error(e)
        } else {
            envelope::failure(e)
        }
    }
}

async fn load_upstream(weak: Weak<Proxy>, up: Arc<Upstream>) {
    let mut pause = Duration::from_millis(200);
    let mut attempts: u64 = 0;
    loop {
        let Some(proxy) = weak.upgrade() else { return };
        let stop = proxy.stop.clone();
        if stop.is_cancelled() {
            return;
        }
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = proxy.fetch_doc(&up) => r,
        };
        match result {
            Ok(doc) => {
                proxy.install(&up, &doc);
                return;
            }
            Err(e) => {
                attempts += 1;
                if attempts == 1 || attempts.is_power_of_two() {
                    tracing::warn!(upstream = %up.name, attempts, "the upstream cannot be read yet: {e}; its routes are served once it can (retrying in the background)");
                } else {
                    tracing::debug!(upstream = %up.name, attempts, "the upstream cannot be read yet: {e}");
                }
                proxy
                    .state
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .errors
                    .insert(up.name.clone(), e);
            }
        }
        let max = proxy.retry_max;
        drop(proxy);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(max);
    }
}

/// A `wrap_apis` operation's 2xx JSON answers are documented inside the envelope.
fn wrap_documented(op: &mut Value) {
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    for (code, r) in responses.iter_mut() {
        if !code.starts_with('2') {
            continue;
        }
        if let Some(content) = r.get_mut("content").and_then(Value::as_object_mut) {
            for (ct, media) in content.iter_mut() {
                if ct.contains("json") {
                    let data = media.get("schema").cloned().unwrap_or(json!({}));
                    media["schema"] = json!({"type": "object",
                        "required": ["status", "message", "timestamp", "data"],
                        "properties": {"status": {"type": "integer"}, "message": {"type": "string"},
                            "timestamp": {"type": "string"}, "data": data}});
                }
            }
        }
    }
}

/// The largest body forwarded to an upstream (256 MiB; uploads).
const PROXY_BODY_LIMIT: usize = 256 << 20;

/// The request path's segments, percent-decoded (without the leading `/`). A segment that
/// decodes to `.` or `..`, or holds `/` or `\`, or is not valid percent-encoded UTF-8, is a
/// 400: such a path could mean another path to the upstream than to the rules.
pub(crate) fn decode_segments(raw: &str) -> Result<Vec<String>, ApiError> {
    let rest = raw.strip_prefix('/').unwrap_or(raw);
    let mut out = Vec::new();
    for seg in rest.split('/') {
        let decoded = percent_decode(seg).ok_or_else(|| {
            ApiError::bad_request(format!(
                "the path segment {seg:?} is not valid percent-encoded UTF-8"
            ))
        })?;
        if decoded == "." || decoded == ".." {
            return Err(ApiError::bad_request(format!(
                "the path segment {seg:?} is a relative segment ({decoded:?}); such paths are refused"
            )));
        }
        if decoded.contains(['/', '\\']) {
            return Err(ApiError::bad_request(format!(
                "the path segment {seg:?} holds a slash once decoded; such paths are refused"
            )));
        }
        out.push(decoded);
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let h = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The body as it arrives; a failure midway is logged and, on an event stream, becomes a
/// final `error` event (after a blank line if the cut fell inside an event).
fn pass_through(
    upstream: impl futures::Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    sse: bool,
    name: String,
    path: String,
) -> impl futures::Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send + 'static {
    struct S<U> {
        up: U,
        tail: [u8; 4],
        done: bool,
    }
    fn at_boundary(t: &[u8; 4]) -> bool {
        t.ends_with(b"\n\n") || t.ends_with(b"\r\r") || t == b"\r\n\r\n"
    }
    fn error_event(err: &ApiError, tail: &[u8; 4]) -> Bytes {
        let mut text = Vec::new();
        if !at_boundary(tail) {
            text.extend_from_slice(b"\n\n");
        }
        text.extend_from_slice(&StreamEvent::error(err).to_bytes());
        Bytes::from(text)
    }
    futures::stream::unfold(
        S {
            up: Box::pin(upstream),
            tail: *b"\n\n\n\n",
            done: false,
        },
        move |mut s| {
            let (name, path) = (name.clone(), path.clone());
            async move {
                if s.done {
                    return None;
                }
                match s.up.next().await {
                    Some(Ok(b)) => {
                        for &c in b.iter().rev().take(4).rev() {
                            s.tail = [s.tail[1], s.tail[2], s.tail[3], c];
                        }
                        Some((Ok(b), s))
                    }
                    Some(Err(e)) => {
                        s.done = true;
                        let err = if e.is_timeout() {
                            ApiError::new(
                                StatusCode::GATEWAY_TIMEOUT,
                                format!("the upstream {name} sent nothing within the timeout"),
                            )
                        } else {
                            ApiError::new(
                                StatusCode::BAD_GATEWAY,
                                format!("the upstream {name} cut the answer"),
                            )
                        };
                        tracing::warn!(upstream = %name, %path, "{}: {}", err.message, describe(&e));
                        if sse {
                            let ev = error_event(&err, &s.tail);
                            Some((Ok(ev), s))
                        } else {
                            Some((Err(std::io::Error::other(err.message)), s))
                        }
                    }
                    // An event stream that ends inside an event was cut.
                    None if sse && !at_boundary(&s.tail) => {
                        s.done = true;
                        let err = ApiError::new(
                            StatusCode::BAD_GATEWAY,
                            format!("the upstream {name} cut the answer inside an event"),
                        );
                        tracing::warn!(upstream = %name, %path, "{}", err.message);
                        let ev = error_event(&err, &s.tail);
                        Some((Ok(ev), s))
                    }
                    None => None,
                }
            }
        },
    )
}

/// A `wrap_apis` route's JSON answer in the envelope, `data` byte for byte as the upstream
/// sent it (an upstream envelope is unwrapped, not wrapped twice).
fn wrapped(status: StatusCode, bytes: Bytes, headers: &reqwest::header::HeaderMap) -> Response {
    let Ok(raw) = serde_json::from_slice::<Box<RawValue>>(&bytes) else {
        let mut r = Response::new(Body::from(bytes));
        *r.status_mut() = status;
        copy_headers(headers, r.headers_mut());
        return r;
    };
    let fields = serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(raw.get()).ok();
    let is_env = fields.as_ref().is_some_and(|f| {
        f.get("status")
            .is_some_and(|s| s.get().parse::<u16>().is_ok())
            && f.get("message").is_some_and(|m| m.get().starts_with('"'))
    });
    if status.is_success() {
        match fields.filter(|f| is_env && f.contains_key("timestamp")) {
            Some(mut f) => match f.remove("data") {
                Some(d) => envelope::success_raw(status, &d),
                None => envelope::success(status, Value::Null),
            },
            None => envelope::success_raw(status, &raw),
        }
    } else if is_env {
        envelope::raw_json_response(status, bytes)
    } else {
        let v: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
        let message = v
            .get("detail")
            .or_else(|| v.get("message"))
            .and_then(Value::as_str)
            .map_or_else(|| format!("the upstream answered {status}"), str::to_owned);
        envelope::failure(&ApiError::new(status, message).with_data(v))
    }
}

const HOP_BY_HOP: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

fn scalar_text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn is_envelope(v: &Value) -> bool {
    v.get("status").is_some_and(Value::is_u64) && v.get("message").is_some_and(Value::is_string)
}

fn unwrap_envelope(v: Value) -> Value {
    if is_envelope(&v) && v.get("timestamp").is_some() {
        v.get("data").cloned().unwrap_or(Value::Null)
    } else {
        v
    }
}

/// A reqwest error for the logs, with its causes (and the URL: logs only).
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// What the client is told: the upstream by name, never its address.
fn upstream_error(name: &str, e: &reqwest::Error) -> ApiError {
    if e.is_timeout() {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the upstream {name} did not answer in time"),
        )
    } else if e.is_connect() {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("the upstream {name} cannot be reached"),
        )
    } else {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("the upstream {name} failed to answer"),
        )
    }
}

fn copy_headers(from: &reqwest::header::HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            to.append(n, v);
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        envelope::failure(&self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert!(rule_matches("*", "/x"));
        assert!(rule_matches("/api/v1/a/*", "/api/v1/a/b"));
        assert!(!rule_matches("/api/v1/a/*", "/api/v1/ab"));
        assert!(rule_matches("/api/v1/a", "/api/v1/a"));
    }

    #[test]
    fn envelopes_are_unwrapped_once() {
        let v = serde_json::json!({"status": 200, "message": "success", "timestamp": "t", "data": {"x": 1}});
        assert_eq!(unwrap_envelope(v), serde_json::json!({"x": 1}));
        let plain = serde_json::json!({"status": "ok"});
        assert_eq!(unwrap_envelope(plain.clone()), plain);
    }

    #[test]
    fn dot_and_slash_segments_are_refused_in_every_spelling() {
        for bad in [
            "/api/v1/files/../admin",
            "/api/v1/files/./admin",
            "/api/v1/files/%2e%2e/admin",
            "/api/v1/files/%2E%2E/admin",
            "/api/v1/files/.%2e/admin",
            "/api/v1/files/%2e./admin",
            "/api/v1/files/%2E./admin",
            "/api/v1/files/.%2E/admin",
            "/api/v1/files/%2e/admin",
            "/api/v1/files/..%2fadmin",
            "/api/v1/files/..%2Fadmin",
            "/api/v1/files/%2e%2e%2fadmin",
            "/api/v1/files/a%5cb",
            "/api/v1/items/%2e%2e",
            "/api/v1/files/%zz",
            "/api/v1/files/%ff",
        ] {
            assert_eq!(
                decode_segments(bad).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        assert_eq!(
            decode_segments("/api/v1/files/a%20b...c").unwrap(),
            ["api", "v1", "files", "a b...c"]
        );
    }

    #[test]
    fn upstream_paths_are_built_from_decoded_segments() {
        let up = Arc::new(Upstream {
            name: "u".into(),
            base: "http://x".into(),
            rules: UpstreamRules {
                enable: all(),
                disable: vec![],
                docs_path: docs_path(),
                name: None,
            },
        });
        let r = ProxyRoute {
            upstream: up,
            path: "/api/v1/files/{name}".into(),
            segments: template_segments("/api/v1/files/{name}"),
            method: Method::GET,
            operation: Value::Null,
            force_stream: false,
            wrap: false,
        };
        let segs = decode_segments("/api/v1/files/a%20b%3F").unwrap();
        assert!(r.fits(&Method::GET, &segs));
        assert_eq!(r.build(&segs), "/api/v1/files/a%20b%3F");
        assert!(!r.fits(&Method::GET, &decode_segments("/api/v1/files/").unwrap()));
        assert!(!r.fits(&Method::GET, &decode_segments("/api/v1/files/a/b").unwrap()));
    }
}
