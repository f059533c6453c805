//! Plugins shipped as services on the bus (`[bus.services.<name>] control = "host:port"`):
//! each service's control `info` is read at start and then every `refresh_s`, and while it
//! answers its replyers are routes (`POST /api/v1/<name>/<connection>`, or the path and
//! methods the service declares in its metadata under `http.<connection>`) and its
//! declared publishers event streams. A service that stops answering loses its routes and
//! OpenAPI entries (its paths answer 503 naming it, and `/health` lists it); when it
//! answers again, on the same endpoints or new ones, they come back.
//!
//! A declaration is the metadata value `http.<connection>` = a JSON object:
//! `{"path": "/calc/sum", "methods": ["GET", "POST"], "summary": "..", "tags": [".."],
//! "raw_response": false}` for a replyer (GET takes the args from the query string), or
//! `{"path": "/calc/sums", "stream": true}` for a publisher (each message an event);
//! `{"hidden": true}` keeps a replyer off HTTP.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::Method;
use serde_json::{json, Map, Value};
use service_framework::security::SecuritySettings;
use tokio_util::sync::CancellationToken;

use crate::bus::{self, BusRoute, BusStream};
use crate::config::{BusServiceConfig, BusSettings};
use crate::error::{ApiError, Error, Result};
use crate::plugin::prefixed;

/// One mounted route.
#[derive(Clone)]
pub(crate) enum Live {
    Route(Arc<BusRoute>),
    Stream(Arc<BusStream>),
}

/// What a service answered last.
struct Mounted {
    info: Value,
    /// What the routes were made from (a change remakes them).
    basis: Value,
    routes: BTreeMap<String, Vec<(Method, Live)>>,
}

/// One configured service.
struct Watched {
    name: String,
    cfg: BusServiceConfig,
    prefix: String,
    state: RwLock<std::result::Result<Mounted, String>>,
    /// The paths it served last, answered 503 while it is away.
    known: RwLock<Vec<String>>,
}

/// Every `[bus.services]` entry, kept current by a watcher task each.
pub(crate) struct LiveServices {
    services: Vec<Arc<Watched>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for LiveServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveServices")
            .field(
                "services",
                &self.services.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// The watchers end with the registry that holds this.
impl Drop for LiveServices {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl LiveServices {
    /// Reads every service once (so those already running are served from the first
    /// request), then watches them in the background.
    pub async fn start(
        settings: &BusSettings,
        sec: Option<&SecuritySettings>,
    ) -> Result<Arc<LiveServices>> {
        let mut services = Vec::new();
        for (name, cfg) in &settings.services {
            let what = format!("bus.services.{name}");
            for (key, v) in [("timeout_s", cfg.timeout_s), ("refresh_s", cfg.refresh_s)] {
                if v.is_some_and(|t| !(t > 0.0 && t.is_finite())) {
                    return Err(Error::Config(format!(
                        "{what}.{key} must be a positive number of seconds"
                    )));
                }
            }
            let prefix = prefixed(
                cfg.prefix
                    .clone()
                    .unwrap_or_else(|| format!("/{name}"))
                    .trim_end_matches('/'),
            );
            let w = Arc::new(Watched {
                name: name.clone(),
                cfg: cfg.clone(),
                prefix,
                state: RwLock::new(Err("not read yet".into())),
                known: RwLock::new(Vec::new()),
            });
            w.refresh(sec).await;
            if let Err(e) = &*read(&w.state) {
                tracing::warn!("{what}: not mounted yet: {e}");
            }
            services.push(w);
        }
        let live = Arc::new(LiveServices {
            services,
            stop: CancellationToken::new(),
        });
        for w in &live.services {
            let (w, stop, sec) = (w.clone(), live.stop.clone(), sec.cloned());
            let every = Duration::from_secs_f64(w.cfg.refresh_s.unwrap_or(1.0));
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                    w.refresh(sec.as_ref()).await;
                }
            });
        }
        Ok(live)
    }

    /// True when some service is configured.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The routes serving `path` (by method): `Ok(None)` when no service serves or served
    /// it and no service's prefix covers it, `Err` (503) when the service that would serve it
    /// is not answering.
    pub fn route(&self, path: &str) -> std::result::Result<Option<Vec<(Method, Live)>>, ApiError> {
        for w in &self.services {
            if let Ok(m) = &*read(&w.state) {
                if let Some(r) = m.routes.get(path) {
                    return Ok(Some(r.clone()));
                }
            }
        }
        for w in &self.services {
            let ours = path.starts_with(&format!("{}/", w.prefix))
                || read(&w.known).iter().any(|k| k == path);
            if !ours {
                continue;
            }
            return match &*read(&w.state) {
                Ok(m) => Err(ApiError::not_found(format!(
                    "bus service {:?} serves no {path}; it serves {}",
                    w.name,
                    m.routes.keys().cloned().collect::<Vec<_>>().join(", ")
                ))),
                Err(e) => Err(ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    format!("bus service {:?} is not answering: {e}", w.name),
                )),
            };
        }
        Ok(None)
    }

    /// The route of `method` on `path`, for `call_plugin_api` (`None` method: the only one).
    pub fn route_for(
        &self,
        method: Option<&Method>,
        path: &str,
    ) -> std::result::Result<Live, ApiError> {
        let routes = self
            .route(path)?
            .ok_or_else(|| ApiError::not_found(format!("no bus service serves {path}")))?;
        let found = match method {
            Some(m) => routes.iter().find(|(rm, _)| rm == m),
            None if routes.len() == 1 => routes.first(),
            None => None,
        };
        found.map(|(_, l)| l.clone()).ok_or_else(|| {
            ApiError::not_found(format!(
                "{path} is served with {}; name the method",
                routes
                    .iter()
                    .map(|(m, _)| m.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// True when `path` is under a service's prefix or served by a mounted service (for
    /// `required_remote_apis`).
    pub fn covers(&self, path: &str) -> bool {
        matches!(self.route(path), Ok(Some(_)))
            || self
                .services
                .iter()
                .any(|w| path.starts_with(&format!("{}/", w.prefix)))
    }

    /// Services not answering: (name, why).
    pub fn missing(&self) -> Vec<(String, String)> {
        self.services
            .iter()
            .filter_map(|w| match &*read(&w.state) {
                Ok(_) => None,
                Err(e) => Some((w.name.clone(), e.clone())),
            })
            .collect()
    }

    /// `doc` with the mounted services' routes and tags added.
    pub fn document(&self, doc: &Value, reg: &crate::registry::Registry) -> Value {
        let mut doc = doc.clone();
        let mut extra = Map::new();
        for w in &self.services {
            let state = read(&w.state);
            let Ok(m) = &*state else { continue };
            for (path, routes) in &m.routes {
                let protected = reg.auth.keys_for(path, Some(path)).is_some();
                let mut item = Map::new();
                for (method, live) in routes {
                    let op = match live {
                        Live::Route(r) => {
                            crate::openapi::bus_operation(r, method, protected, &mut extra)
                        }
                        Live::Stream(s) => {
                            crate::openapi::bus_stream_operation(s, method, protected, &mut extra)
                        }
                    };
                    item.insert(method.as_str().to_ascii_lowercase(), op);
                }
                doc["paths"][path] = Value::Object(item);
            }
            let info = &m.info;
            let version = info["version"].as_str().unwrap_or_default();
            let mut description = info["description"].as_str().unwrap_or_default().to_owned();
            if !version.is_empty() {
                description = format!("{description}\n\nversion {version}, a service on the bus");
            }
            if let Some(tags) = doc["tags"].as_array_mut() {
                tags.push(json!({
                    "name": w.name,
                    "description": description.trim(),
                    "x-bus-service": {"control": w.cfg.control, "name": info["name"],
                        "id": info["id"], "version": info["version"],
                        "metadata": info["metadata"]},
                }));
            }
        }
        if let Some(schemas) = doc["components"]["schemas"].as_object_mut() {
            for (k, v) in extra {
                schemas.entry(k).or_insert(v);
            }
        }
        doc
    }
}

impl Watched {
    /// Reads `info` and remakes the routes when the replyers' endpoints changed.
    async fn refresh(&self, sec: Option<&SecuritySettings>) {
        let r = self.read_info(sec).await;
        let next = match r {
            Err(e) => Err(e),
            Ok(info) => {
                let basis = json!([info["connections"], info["metadata"]]);
                let same = matches!(&*read(&self.state), Ok(m) if m.basis == basis);
                if same {
                    if let Ok(m) = &mut *self.state.write().unwrap_or_else(|p| p.into_inner()) {
                        m.info = info;
                    }
                    return;
                }
                self.mount(info, basis, sec)
            }
        };
        if let Ok(m) = &next {
            *self.known.write().unwrap_or_else(|p| p.into_inner()) =
                m.routes.keys().cloned().collect();
        }
        match (&next, &*read(&self.state)) {
            (Ok(_), Err(_)) => tracing::info!("bus service {:?} mounted", self.name),
            (Err(e), Ok(_)) => {
                tracing::warn!("bus service {:?} not answering, unmounted: {e}", self.name)
            }
            _ => {}
        }
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = next;
    }

    async fn read_info(
        &self,
        sec: Option<&SecuritySettings>,
    ) -> std::result::Result<Value, String> {
        let timeout = self.cfg.timeout_s.unwrap_or(10.0).min(5.0);
        let control = bus::connect(
            &self.cfg.control,
            timeout,
            sec,
            &format!("{}.control", self.name),
            &self.name,
        )
        .map_err(|e| e.to_string())?;
        control
            .request::<_, rmpv::Value>(
                &json!({"verb": "info"}),
                sf_connections::WorkflowId::new_random(),
            )
            .await
            .map(bus::msgpack_to_json)
            .map_err(|e| {
                format!(
                    "its control endpoint {} did not answer info: {e}",
                    self.cfg.control
                )
            })
    }

    fn mount(
        &self,
        info: Value,
        basis: Value,
        sec: Option<&SecuritySettings>,
    ) -> std::result::Result<Mounted, String> {
        let timeout = self.cfg.timeout_s.unwrap_or(10.0);
        let mut routes: BTreeMap<String, Vec<(Method, Live)>> = BTreeMap::new();
        for c in info["connections"].as_array().into_iter().flatten() {
            let (Some(conn), Some(endpoint)) = (c["name"].as_str(), c["endpoint"].as_str()) else {
                continue;
            };
            let declared = match info["metadata"][format!("http.{conn}")].as_str() {
                Some(text) => Some(serde_json::from_str::<Declared>(text).map_err(|e| {
                    format!("its metadata http.{conn} is not a route declaration: {e}")
                })?),
                None => None,
            };
            let d = declared.clone().unwrap_or_default();
            if d.hidden {
                continue;
            }
            let path = match &d.path {
                Some(p) => prefixed(p),
                None => format!("{}/{conn}", self.prefix),
            };
            let tags = d.tags.clone().unwrap_or_else(|| vec![self.name.clone()]);
            let summary = d.summary.clone();
            let schema = |v: &Value| v.is_object().then(|| v.clone());
            let mut add = |method: Method, live: Live| -> std::result::Result<(), String> {
                let slot = routes.entry(path.clone()).or_default();
                if slot.iter().any(|(m, _)| *m == method) {
                    return Err(format!("{method} {path} is declared twice"));
                }
                slot.push((method, live));
                Ok(())
            };
            match (c["side"].as_str(), c["kind"].as_str()) {
                (Some("in"), Some("replyer")) => {
                    if d.stream {
                        return Err(format!("http.{conn}: a replyer is not a stream"));
                    }
                    let methods = d.methods.clone().unwrap_or_else(|| vec!["POST".into()]);
                    let requester = bus::connect(endpoint, timeout, sec, conn, &path)
                        .map_err(|e| format!("{conn}: {e}"))?;
                    for m in methods {
                        let method = Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
                            .ok()
                            .filter(|m| *m == Method::GET || *m == Method::POST || *m == Method::PUT || *m == Method::DELETE || *m == Method::PATCH)
                            .ok_or_else(|| format!("http.{conn}: {m:?} is not a method a replyer can serve (GET, POST, PUT, PATCH, DELETE)"))?;
                        add(
                            method.clone(),
                            Live::Route(Arc::new(BusRoute {
                                target: endpoint.to_owned(),
                                path: path.clone(),
                                method,
                                requester: requester.clone(),
                                raw_response: d.raw_response,
                                description: summary.clone().or_else(|| {
                                    Some(format!("Replyer {conn:?} of bus service {:?}", self.name))
                                }),
                                tags: tags.clone(),
                                args_schema: schema(&c["args"]),
                                return_schema: schema(&c["returns"]),
                            })),
                        )?;
                    }
                }
                (Some("out"), Some("publisher")) if d.stream => {
                    let address = sf_connections::Address::from(endpoint);
                    add(
                        Method::GET,
                        Live::Stream(Arc::new(BusStream {
                            path: path.clone(),
                            address,
                            topic: c["options"]["topic"].as_str().unwrap_or_default().to_owned(),
                            description: summary.clone().or_else(|| {
                                Some(format!("Publisher {conn:?} of bus service {:?}", self.name))
                            }),
                            tags: tags.clone(),
                            args_schema: schema(&c["args"]),
                            security: bus::client_security_for(sec, conn, &path)
                                .map_err(|e| format!("{conn}: {e}"))?,
                        })),
                    )?;
                }
                _ if declared.is_some() => {
                    return Err(format!(
                        "http.{conn}: only a replyer, or a publisher with \"stream\": true, becomes a route"
                    ))
                }
                _ => {}
            }
        }
        Ok(Mounted {
            info,
            basis,
            routes,
        })
    }
}

/// A connection's `http.<connection>` metadata.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Declared {
    path: Option<String>,
    methods: Option<Vec<String>>,
    stream: bool,
    raw_response: bool,
    summary: Option<String>,
    tags: Option<Vec<String>>,
    hidden: bool,
}
