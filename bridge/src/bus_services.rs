//! Plugins shipped as services on the bus (`[bus.services.<name>] control = "host:port"`):
//! each service's control `info` is read at start and then every `refresh_s`, and its
//! replyers are served as `POST /api/v1/<name>/<connection>` while it answers. A service
//! that stops answering loses its routes and OpenAPI entries (its paths answer 503 naming
//! it, and `/health` lists it); when it answers again, on the same endpoints or new ones,
//! they come back.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::Method;
use serde_json::{json, Map, Value};
use service_framework::security::SecuritySettings;
use tokio_util::sync::CancellationToken;

use crate::bus::{self, BusRoute};
use crate::config::{BusServiceConfig, BusSettings};
use crate::error::{ApiError, Error, Result};
use crate::plugin::prefixed;

/// What a service answered last.
struct Mounted {
    info: Value,
    /// The replyers' endpoints the routes were made for (a change remakes them).
    endpoints: Vec<(String, String)>,
    routes: BTreeMap<String, Arc<BusRoute>>,
}

/// One configured service.
struct Watched {
    name: String,
    cfg: BusServiceConfig,
    prefix: String,
    state: RwLock<std::result::Result<Mounted, String>>,
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

    /// The route serving `path`: `Ok(None)` when no service's prefix covers it, `Err` (503)
    /// when the service that would serve it is not answering or has no such replyer.
    pub fn route(&self, path: &str) -> std::result::Result<Option<Arc<BusRoute>>, ApiError> {
        for w in &self.services {
            if !(path.starts_with(&format!("{}/", w.prefix))) {
                continue;
            }
            return match &*read(&w.state) {
                Ok(m) => match m.routes.get(path) {
                    Some(r) => Ok(Some(r.clone())),
                    None => Err(ApiError::not_found(format!(
                        "bus service {:?} has no replyer at {path}; it serves {}",
                        w.name,
                        m.routes.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))),
                },
                Err(e) => Err(ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    format!("bus service {:?} is not answering: {e}", w.name),
                )),
            };
        }
        Ok(None)
    }

    /// True when `path` is under a service's prefix (for `required_remote_apis`).
    pub fn covers(&self, path: &str) -> bool {
        self.services
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
            for (path, r) in &m.routes {
                let protected = reg.auth.keys_for(path, Some(path)).is_some();
                let op = crate::openapi::bus_operation(r, &Method::POST, protected, &mut extra);
                doc["paths"][path] = json!({"post": op});
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
                let endpoints = replyers(&info);
                let same = matches!(&*read(&self.state), Ok(m) if m.endpoints == endpoints);
                if same {
                    if let Ok(m) = &mut *self.state.write().unwrap_or_else(|p| p.into_inner()) {
                        m.info = info;
                    }
                    return;
                }
                self.mount(info, endpoints, sec)
            }
        };
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
        endpoints: Vec<(String, String)>,
        sec: Option<&SecuritySettings>,
    ) -> std::result::Result<Mounted, String> {
        let timeout = self.cfg.timeout_s.unwrap_or(10.0);
        let mut routes = BTreeMap::new();
        for c in info["connections"].as_array().into_iter().flatten() {
            let (Some(conn), Some(endpoint)) = (c["name"].as_str(), c["endpoint"].as_str()) else {
                continue;
            };
            if c["side"] != "in" || c["kind"] != "replyer" {
                continue;
            }
            let path = format!("{}/{conn}", self.prefix);
            let requester = bus::connect(endpoint, timeout, sec, conn, &path)
                .map_err(|e| format!("{conn}: {e}"))?;
            let schema = |v: &Value| v.is_object().then(|| v.clone());
            routes.insert(
                path.clone(),
                Arc::new(BusRoute {
                    target: endpoint.to_owned(),
                    path,
                    method: Method::POST,
                    requester,
                    raw_response: false,
                    description: Some(format!("Replyer {conn:?} of bus service {:?}", self.name)),
                    tags: vec![self.name.clone()],
                    args_schema: schema(&c["args"]),
                    return_schema: schema(&c["returns"]),
                }),
            );
        }
        Ok(Mounted {
            info,
            endpoints,
            routes,
        })
    }
}

/// The (name, endpoint) of each replyer in an `info`.
fn replyers(info: &Value) -> Vec<(String, String)> {
    info["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["side"] == "in" && c["kind"] == "replyer")
        .filter_map(|c| {
            Some((
                c["name"].as_str()?.to_owned(),
                c["endpoint"].as_str()?.to_owned(),
            ))
        })
        .collect()
}
