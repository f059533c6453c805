//! The proxy for upstream OpenAPI services (`--enable-proxy` with `[plugins.proxy]`).
//!
//! At start each upstream's OpenAPI document is read (`docs_path`, `/api/v1/openapi.json` by
//! default) and every path and method it lists, allowed by its enable/disable rules, becomes a
//! local route at the same path. A request is forwarded with its method, concrete path (so
//! path parameters are already substituted), query string, body bytes (JSON, forms and
//! multipart uploads alike) and headers (all but hop-by-hop ones and `Host`; `Authorization`
//! is replaced when `plugins.proxy.auth.rules` gives a key for the path).
//!
//! The upstream's answer keeps its status. A JSON success is put in the envelope (an upstream
//! envelope is unwrapped first, so it is not wrapped twice); an event stream is passed through
//! as it arrives; any other body is passed through as is. A JSON failure that already is an
//! envelope passes through; another failure gets the error envelope with the upstream body as
//! `data`. FrameX turns every upstream failure into HTTP 200 with `"error proxy"`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::auth::AuthRules;
use crate::envelope;
use crate::error::{ApiError, Error, Result};

/// `[plugins.proxy]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Upstream base URLs: a list, or a table url -> rules.
    #[serde(default)]
    pub proxy_urls: ProxyUrls,
    /// Paths always answered as event streams (accepted; streams are recognised by their
    /// content type anyway).
    #[serde(default)]
    pub force_stream_apis: Vec<String>,
    /// Seconds an upstream request may take (600).
    #[serde(default)]
    pub timeout: Option<f64>,
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
    /// `{"http://host:port" = {enable = ["*"], disable = [], docs_path = "..."}}`.
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

/// One forwarded path and method.
#[derive(Debug)]
pub(crate) struct ProxyRoute {
    pub upstream: String,
    pub path: String,
    pub method: Method,
    pub operation: Value,
    client: reqwest::Client,
    auth: AuthRules,
}

/// What the proxy found upstream.
pub(crate) struct Upstreams {
    pub routes: Vec<ProxyRoute>,
    pub schemas: Map<String, Value>,
}

const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch"];

/// Reads every upstream's document and builds the routes.
pub(crate) async fn load(raw: Option<&Value>) -> Result<Upstreams> {
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
    let timeout = Duration::from_secs_f64(cfg.timeout.unwrap_or(600.0).max(0.001));
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| Error::Proxy(format!("cannot build the HTTP client: {e}")))?;
    let upstreams: Vec<(String, UpstreamRules)> = match &cfg.proxy_urls {
        ProxyUrls::List(urls) => urls
            .iter()
            .map(|u| {
                (
                    u.clone(),
                    UpstreamRules {
                        enable: cfg.white_list.clone().unwrap_or_else(all),
                        disable: Vec::new(),
                        docs_path: docs_path(),
                    },
                )
            })
            .collect(),
        ProxyUrls::Map(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    };
    if upstreams.is_empty() {
        return Err(Error::Config(
            "plugins.proxy.proxy_urls: the proxy is enabled but no upstream is configured".into(),
        ));
    }
    let auth = AuthRules::new(&cfg.auth.rules);
    let mut out = Upstreams {
        routes: Vec::new(),
        schemas: Map::new(),
    };
    for (base, rules) in upstreams {
        let base = base.trim_end_matches('/').to_owned();
        let url = format!("{base}{}", rules.docs_path);
        let doc: Value = async {
            let r = client
                .get(&url)
                .timeout(timeout.min(Duration::from_secs(30)))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(format!("it answered {}", r.status()));
            }
            r.json::<Value>().await.map_err(|e| e.to_string())
        }
        .await
        .map_err(|e| Error::Proxy(format!("cannot read the OpenAPI document of {url}: {e}")))?;
        let paths = doc
            .get("paths")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::Proxy(format!("{url} has no \"paths\"")))?;
        for (path, item) in paths {
            let enabled = rules.enable.iter().any(|r| rule_matches(r, path))
                && !rules.disable.iter().any(|r| rule_matches(r, path));
            if !enabled {
                continue;
            }
            for m in METHODS {
                let Some(op) = item.get(*m) else { continue };
                let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .expect("a standard method");
                out.routes.push(ProxyRoute {
                    upstream: base.clone(),
                    path: path.clone(),
                    method,
                    operation: op.clone(),
                    client: client.clone(),
                    auth: auth.clone(),
                });
            }
        }
        if let Some(s) = doc
            .pointer("/components/schemas")
            .and_then(Value::as_object)
        {
            for (k, v) in s {
                out.schemas.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        tracing::info!(upstream = %base, routes = out.routes.len(), "proxy read the upstream's OpenAPI document");
    }
    Ok(out)
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

impl ProxyRoute {
    fn upstream_key(&self, path: &str) -> Option<String> {
        self.auth
            .keys_for(path, Some(&self.path))
            .and_then(|k| k.first().cloned())
    }

    /// Forwards one HTTP request.
    pub async fn forward(
        &self,
        method: Method,
        path_and_query: &str,
        path: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Response {
        let url = format!("{}{path_and_query}", self.upstream);
        let mut req = self.client.request(method, &url);
        let key = self.upstream_key(path);
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
            Err(e) => return envelope::failure(&upstream_error(&e, &url)),
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
        if content_type.starts_with("text/event-stream") {
            let mut r = Response::new(Body::from_stream(resp.bytes_stream()));
            *r.status_mut() = status;
            copy_headers(&upstream_headers, r.headers_mut());
            return r;
        }
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return envelope::failure(&upstream_error(&e, &url)),
        };
        let json = if content_type.contains("json") {
            serde_json::from_slice::<Value>(&bytes).ok()
        } else {
            None
        };
        match (status.is_success(), json) {
            (true, Some(v)) => envelope::success(status, unwrap_envelope(v)),
            (false, Some(v)) if is_envelope(&v) => envelope::json_response(status, &v),
            (false, Some(v)) => {
                let message = v
                    .get("detail")
                    .or_else(|| v.get("message"))
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("the upstream answered {status}"), str::to_owned);
                envelope::failure(&ApiError::new(status, message).with_data(v))
            }
            (_, None) => {
                let mut r = Response::new(Body::from(bytes));
                *r.status_mut() = status;
                copy_headers(&upstream_headers, r.headers_mut());
                r
            }
        }
    }

    /// A call from `call_plugin_api`: path parameters from the kwargs, then the query (GET,
    /// DELETE, HEAD, or declared query parameters) or a JSON body with the rest.
    pub async fn call(&self, mut kwargs: Map<String, Value>) -> Result<Value, ApiError> {
        let mut path = self.path.clone();
        while let (Some(s), Some(e)) = (path.find('{'), path.find('}')) {
            if e < s {
                break;
            }
            let name = path[s + 1..e].to_owned();
            let v = kwargs.remove(&name).ok_or_else(|| {
                ApiError::validation(
                    vec!["path".into(), name.clone().into()],
                    "Field required",
                    "missing",
                )
            })?;
            let text = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            path.replace_range(s..=e, &encode(&text));
        }
        let declared_query: Vec<String> = self
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
        let all_query = matches!(self.method, Method::GET | Method::DELETE | Method::HEAD)
            || self.operation.get("requestBody").is_none();
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
        let url = format!("{}{path}", self.upstream);
        let mut req = self.client.request(self.method.clone(), &url).query(&query);
        if !body.is_empty() {
            req = req.json(&Value::Object(body));
        }
        if let Some(key) = self.upstream_key(&path) {
            req = req.header(header::AUTHORIZATION, key);
        }
        let resp = req.send().await.map_err(|e| upstream_error(&e, &url))?;
        let status =
            StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let text = resp.text().await.map_err(|e| upstream_error(&e, &url))?;
        let v = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            Ok(unwrap_envelope(v))
        } else {
            let message = v
                .get("message")
                .or_else(|| v.get("detail"))
                .and_then(Value::as_str)
                .map_or_else(|| format!("{url} answered {status}"), str::to_owned);
            Err(ApiError::new(status, message).with_data(v))
        }
    }
}

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

fn upstream_error(e: &reqwest::Error, url: &str) -> ApiError {
    if e.is_timeout() {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("{url} did not answer in time"),
        )
    } else {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("{url} cannot be reached: {e}"),
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
}
