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
//!
//! A service without a control endpoint (a Python 0.0.18 service) cannot be asked for
//! `info`: `[bus.services.<name>] routes = ["/path", ..]` names its `[bus.routes]` and
//! `[bus.streams]` entries instead. Its liveness is the bridge's connection to each of those
//! replyers and publishers: the bridge holds one connection per route (a requester) and one
//! per stream (a probe that subscribes to nothing, so nothing is sent on it), each up from
//! the handshake until the peer's socket closes, as it does when the service's process
//! stops, and back when a process binds the address again. No request is sent to find out
//! (a 0.0.18 replyer would run its handler on a probe, and dies on args it does not
//! expect). While every one of them is connected its routes and streams are served and in
//! the OpenAPI document; when one is not, all answer 503 naming the service, leave the
//! document, and `/health` lists it. A service that is running but stuck keeps its
//! connections, so it stays mounted (its requests then time out, 504).

use std::collections::{BTreeMap, BTreeSet};
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
use sf_connections::PublisherProbe;

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
    /// Every path under it is the service's (a service read through its control endpoint).
    prefix: Option<String>,
    /// The `[bus.routes]` of a service without a control endpoint, mounted while their
    /// requesters are connected.
    configured: Vec<Arc<BusRoute>>,
    /// Its `[bus.streams]`, mounted while each probe is connected to its publisher.
    streams: Vec<(Arc<BusStream>, PublisherProbe)>,
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
    /// request), then watches them in the background. `routes` are the configured
    /// `[bus.routes]` and `[bus.streams]`: those a service names are its own; the others are
    /// returned.
    pub async fn start(
        settings: &BusSettings,
        sec: Option<&SecuritySettings>,
        routes: Vec<BusRoute>,
        streams: Vec<BusStream>,
    ) -> Result<(Arc<LiveServices>, Vec<BusRoute>, Vec<BusStream>)> {
        let owners = Owners::of(settings)?;
        let (mut owned, others) = owners.split(routes, |r| (&r.path, &mut r.tags));
        let (mut owned_streams, other_streams) = owners.split(streams, |s| (&s.path, &mut s.tags));
        let mut services = Vec::new();
        for (name, cfg) in &settings.services {
            let what = format!("bus.services.{name}");
            if cfg.control.is_none() {
                let configured = owned.remove(name).unwrap_or_default();
                let streams = owned_streams
                    .remove(name)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|s| {
                        let probe = PublisherProbe::start(&s.address, s.security.clone())
                            .map_err(|e| Error::Config(format!("{what}: {}: {e}", s.path)))?;
                        Ok((s, probe))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let known = configured
                    .iter()
                    .map(|r| r.path.clone())
                    .chain(streams.iter().map(|(s, _)| s.path.clone()))
                    .collect();
                let w = Arc::new(Watched {
                    name: name.clone(),
                    cfg: cfg.clone(),
                    prefix: None,
                    known: RwLock::new(known),
                    configured,
                    streams,
                    state: RwLock::new(Err("not connected yet".into())),
                });
                // A service already running is served from the first request: its
                // connections are given a moment (bounded) to come up.
                let _ = tokio::time::timeout(CONNECT_AT_START, w.connected()).await;
                w.update_connected();
                if let Err(e) = &*read(&w.state) {
                    tracing::warn!("{what}: not mounted yet: {e}");
                }
                services.push(w);
                continue;
            }
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
                prefix: Some(prefix),
                configured: Vec::new(),
                streams: Vec::new(),
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
            if w.cfg.control.is_none() {
                tokio::spawn(async move {
                    // Watched from before the first look, so no change falls between them.
                    let mut watches: Vec<_> = w
                        .configured
                        .iter()
                        .map(|r| r.requester.replicas_up())
                        .chain(w.streams.iter().map(|(_, p)| p.up()))
                        .collect();
                    w.update_connected();
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            gone = any_change(&mut watches) => {
                                if gone {
                                    return; // the requesters are closed: the bridge is stopping
                                }
                                w.update_connected();
                            }
                        }
                    }
                });
                continue;
            }
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
        Ok((live, others, other_streams))
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
            let ours = w.covers(path) || read(&w.known).iter().any(|k| k == path);
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

    /// True when `path` is under a service's prefix, served by a mounted service, or one of
    /// the routes a service is given by config (for `required_remote_apis`).
    pub fn covers(&self, path: &str) -> bool {
        matches!(self.route(path), Ok(Some(_)))
            || self.services.iter().any(|w| {
                w.covers(path)
                    || w.configured.iter().any(|r| r.path == path)
                    || w.streams.iter().any(|(s, _)| s.path == path)
            })
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
            } else if w.cfg.control.is_none() {
                description = "A service on the bus without a control endpoint (routes from the \
                               bridge's config, served while it is connected)"
                    .to_owned();
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

/// Resolves when one of `watches` changes (`false`), or with `true` when one's requester is
/// gone; never when there are none.
async fn any_change(watches: &mut [tokio::sync::watch::Receiver<usize>]) -> bool {
    if watches.is_empty() {
        return std::future::pending().await;
    }
    let changes = watches.iter_mut().map(|w| Box::pin(w.changed()));
    let (r, _, _) = futures::future::select_all(changes).await;
    r.is_err()
}

/// How long the start waits for the connections of a service without a control endpoint.
const CONNECT_AT_START: Duration = Duration::from_secs(1);

/// The `[bus.routes]` and `[bus.streams]` paths named by services without a control
/// endpoint: which service owns each, and which entries give their own tags.
struct Owners {
    owner: BTreeMap<String, String>,
    tagged: BTreeSet<String>,
}

impl Owners {
    /// Checks every service entry; a name that is not a `[bus.routes]` or `[bus.streams]`
    /// entry, or one named twice, is an error.
    fn of(settings: &BusSettings) -> Result<Owners> {
        let mut owner: BTreeMap<String, String> = BTreeMap::new();
        for (name, cfg) in &settings.services {
            let what = format!("bus.services.{name}");
            match (&cfg.control, cfg.routes.is_empty()) {
                (Some(_), true) => continue,
                (Some(_), false) => {
                    return Err(Error::Config(format!(
                        "{what}: give control (a service that answers info) or routes (for a \
                         service without a control endpoint), not both"
                    )))
                }
                (None, true) => {
                    return Err(Error::Config(format!(
                        "{what}: needs control = \"host:port\" (its control endpoint), or \
                         routes = [\"/path\", ..] naming its [bus.routes] entries (a service \
                         without one, such as a Python 0.0.18 service)"
                    )))
                }
                (None, false) => {}
            }
            let set = [
                ("prefix", cfg.prefix.is_some()),
                ("timeout_s", cfg.timeout_s.is_some()),
                ("refresh_s", cfg.refresh_s.is_some()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, s)| *s) {
                return Err(Error::Config(format!(
                    "{what}.{key} applies to a service read through its control endpoint; a \
                     service given by routes takes its paths and timeouts from [bus.routes]"
                )));
            }
            for p in &cfg.routes {
                let path = prefixed(p);
                let known = settings.routes.keys().any(|k| prefixed(k) == path)
                    || settings.streams.keys().any(|k| prefixed(k) == path);
                if !known {
                    return Err(Error::Config(format!(
                        "{what}.routes: {p:?} is not a [bus.routes] or [bus.streams] entry"
                    )));
                }
                if let Some(other) = owner.insert(path, name.clone()) {
                    return Err(Error::Config(format!(
                        "{what}.routes: {p:?} is named by bus.services.{other} too"
                    )));
                }
            }
        }
        let routes = settings.routes.iter().map(|(k, c)| (k, c.tags.is_some()));
        let streams = settings.streams.iter().map(|(k, c)| (k, c.tags.is_some()));
        let tagged = routes
            .chain(streams)
            .filter(|(_, t)| *t)
            .map(|(k, _)| prefixed(k))
            .collect();
        Ok(Owners { owner, tagged })
    }

    /// Each item a service names goes to that service, tagged as the service's unless its
    /// entry gives tags; the others are returned as they are. `at` gives an item's path and
    /// tags.
    fn split<T>(
        &self,
        items: Vec<T>,
        at: impl Fn(&mut T) -> (&String, &mut Vec<String>),
    ) -> (BTreeMap<String, Vec<Arc<T>>>, Vec<T>) {
        let mut owned: BTreeMap<String, Vec<Arc<T>>> = BTreeMap::new();
        let mut others = Vec::new();
        for mut item in items {
            let (path, tags) = at(&mut item);
            let Some(name) = self.owner.get(path) else {
                others.push(item);
                continue;
            };
            if !self.tagged.contains(path) {
                *tags = vec![name.clone()];
            }
            owned.entry(name.clone()).or_default().push(Arc::new(item));
        }
        (owned, others)
    }
}

impl Watched {
    /// True when `path` is under the service's prefix.
    fn covers(&self, path: &str) -> bool {
        self.prefix
            .as_ref()
            .is_some_and(|p| path.starts_with(&format!("{p}/")))
    }

    /// Resolves when every configured route's requester and stream's probe is connected.
    async fn connected(&self) {
        for r in &self.configured {
            let mut up = r.requester.replicas_up();
            let _ = up.wait_for(|n| *n > 0).await;
        }
        for (_, p) in &self.streams {
            let _ = p.up().wait_for(|n| *n > 0).await;
        }
    }

    /// Mounts or unmounts a service without a control endpoint by its connections.
    fn update_connected(&self) {
        let away: Vec<String> = self
            .configured
            .iter()
            .filter(|r| *r.requester.replicas_up().borrow() == 0)
            .map(|r| format!("{} (its replyer at {})", r.path, r.target))
            .chain(
                self.streams
                    .iter()
                    .filter(|(_, p)| *p.up().borrow() == 0)
                    .map(|(s, _)| format!("{} (its publisher at {})", s.path, s.address)),
            )
            .collect();
        let next = if away.is_empty() {
            let mut routes: BTreeMap<String, Vec<(Method, Live)>> = BTreeMap::new();
            for r in &self.configured {
                routes
                    .entry(r.path.clone())
                    .or_default()
                    .push((r.method.clone(), Live::Route(r.clone())));
            }
            for (s, _) in &self.streams {
                routes
                    .entry(s.path.clone())
                    .or_default()
                    .push((Method::GET, Live::Stream(s.clone())));
            }
            Ok(Mounted {
                info: json!({"name": self.name, "routes": self.cfg.routes}),
                basis: Value::Null,
                routes,
            })
        } else {
            Err(format!("not connected: {}", away.join(", ")))
        };
        match (&next, &*read(&self.state)) {
            (Ok(_), Err(_)) => tracing::info!("bus service {:?} connected, mounted", self.name),
            (Err(e), Ok(_)) => tracing::warn!("bus service {:?} unmounted: {e}", self.name),
            _ => {}
        }
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = next;
    }

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
        let Some(address) = &self.cfg.control else {
            return Err("no control endpoint".into());
        };
        let control = bus::connect(
            address,
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
            .map_err(|e| format!("its control endpoint {address} did not answer info: {e}"))
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
                None => format!("{}/{conn}", self.prefix.as_deref().unwrap_or_default()),
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
