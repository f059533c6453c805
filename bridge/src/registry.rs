//! The running registry: every route (plugin, bus, proxy), every function API, and each
//! plugin's resolved `required_remote_apis`, which is what [`PluginCtx::call_plugin_api`] uses.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::http::Method;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::auth::AuthRules;
use crate::bus::{BusRoute, BusState, BusStream};
use crate::config::Settings;
use crate::envelope::EventType;
use crate::error::{ApiError, Error, Result};
use crate::plugin::{self, Api, CallType, HandlerSpec, Output, Plugin, PluginMetadata};
use crate::proxy::Proxy;

/// A loaded plugin.
pub(crate) struct PluginInfo {
    pub meta: PluginMetadata,
    pub type_name: String,
    pub config: Value,
    /// What [`Plugin::state`] made at start.
    pub state: Option<plugin::State>,
    /// It runs on workers behind a broker (`plugins.<name>.remote`): its handlers call them,
    /// and its state and start hook are theirs.
    pub remote: bool,
}

impl std::fmt::Debug for PluginInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginInfo")
            .field("meta", &self.meta)
            .field("type_name", &self.type_name)
            .field("config", &self.config)
            .field("state", &self.state.is_some())
            .field("remote", &self.remote)
            .finish()
    }
}

/// One API of a loaded plugin.
pub(crate) struct ApiEntry {
    pub plugin: Arc<PluginInfo>,
    pub api: Api,
    pub handler: HandlerSpec,
    pub func_name: String,
}

impl ApiEntry {
    /// `<plugin>.<Type>.<method>`, what errors and logs call it.
    pub fn what(&self) -> &str {
        &self.func_name
    }
}

/// What a route or a required API leads to.
#[derive(Clone)]
pub(crate) enum Target {
    Local(Arc<ApiEntry>),
    Bus(Arc<BusRoute>),
    BusStream(Arc<BusStream>),
    BusState(Arc<BusState>),
    /// A path under a `[bus.services]` prefix, looked up among the service's replyers when
    /// it is called (the service may come and go).
    BusService(Option<Method>, String),
    /// An HTTP path no local route serves, looked up among the upstreams' routes when it
    /// is called (FrameX's fallback to the proxy; upstreams are read in the background).
    Proxy(Option<Method>, String),
}

impl Target {
    /// True for routes that answer `text/event-stream`.
    pub fn is_stream(&self) -> bool {
        match self {
            Target::Local(e) => e.handler.stream,
            Target::BusStream(_) => true,
            _ => false,
        }
    }

    fn describe(&self) -> String {
        match self {
            Target::Local(e) => format!("plugin API {}", e.func_name),
            Target::Bus(r) => format!("bus route {}", r.path),
            Target::BusService(_, p) => format!("bus service route {p}"),
            Target::BusStream(s) => format!("bus stream {}", s.path),
            Target::BusState(s) => format!("bus state {}", s.path),
            Target::Proxy(m, p) => match m {
                Some(m) => format!("proxied {m} {p}"),
                None => format!("proxied {p}"),
            },
        }
    }
}

/// Everything the server and the contexts need.
pub(crate) struct Registry {
    pub settings: Settings,
    pub plugins: Vec<Arc<PluginInfo>>,
    pub entries: Vec<Arc<ApiEntry>>,
    pub funcs: BTreeMap<String, Arc<ApiEntry>>,
    /// path -> (method, target), in declaration order.
    pub http: BTreeMap<String, Vec<(Method, Target)>>,
    pub resolved: HashMap<String, HashMap<String, Target>>,
    pub auth: AuthRules,
    /// The proxy, when enabled.
    pub proxy: Option<Arc<Proxy>>,
    /// `[bus.services]`, mounted while they answer.
    pub live: Option<Arc<crate::bus_services::LiveServices>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("plugins", &self.plugins)
            .field("routes", &self.http.keys().collect::<Vec<_>>())
            .field("funcs", &self.funcs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Registers the loaded plugins (config checked, paths and names unique).
    pub fn new(settings: Settings, plugins: &[Plugin]) -> Result<Registry> {
        let mut reg = Registry {
            auth: AuthRules::new(&settings.auth.rules),
            settings,
            plugins: Vec::new(),
            entries: Vec::new(),
            funcs: BTreeMap::new(),
            http: BTreeMap::new(),
            resolved: HashMap::new(),
            proxy: None,
            live: None,
        };
        for p in plugins {
            reg.add_plugin(p)?;
        }
        Ok(reg)
    }

    fn add_plugin(&mut self, p: &Plugin) -> Result<()> {
        let name = &p.meta.name;
        if self.plugins.iter().any(|i| &i.meta.name == name) {
            return Err(Error::Plugin(format!("plugin {name:?} is loaded twice")));
        }
        let config = self.plugin_config(p)?;
        let remote = match crate::remote::RemoteConfig::of(&self.settings, name)? {
            Some(c) => Some(crate::remote::RemoteClient::connect(name, &c)?),
            None => None,
        };
        let state = match &p.state {
            // A remote plugin's state is made by its workers.
            _ if remote.is_some() => None,
            Some(make) => Some(make(config.clone()).map_err(|e| {
                Error::Plugin(format!(
                    "plugin {name:?}: its state cannot be made: {}",
                    e.message
                ))
            })?),
            None => None,
        };
        let info = Arc::new(PluginInfo {
            meta: p.meta.clone(),
            type_name: p.type_name.clone(),
            config,
            state,
            remote: remote.is_some(),
        });
        self.plugins.push(info.clone());
        for api in &p.apis {
            let Some(mut handler) = api.handler.clone() else {
                return Err(Error::Plugin(format!(
                    "{}.{}: the API has no handler (call .handle(...))",
                    p.deployment(),
                    api.name
                )));
            };
            let call_type = api.effective_call_type();
            let http = matches!(call_type, CallType::Http | CallType::All);
            let path = if http { api.full_path() } else { None };
            if http && path.is_none() {
                return Err(Error::Plugin(format!(
                    "{}.{}: an http API needs a path",
                    p.deployment(),
                    api.name
                )));
            }
            let func_name = format!("{}.{}", p.deployment(), api.name);
            if let Some(client) = &remote {
                handler.erased = client.handler(&api.name, api.idempotent, &func_name);
            }
            let entry = Arc::new(ApiEntry {
                plugin: info.clone(),
                api: api.clone(),
                handler,
                func_name,
            });
            if matches!(call_type, CallType::Func | CallType::All)
                && self
                    .funcs
                    .insert(entry.func_name.clone(), entry.clone())
                    .is_some()
            {
                return Err(Error::Plugin(format!(
                    "function API {} is declared twice",
                    entry.func_name
                )));
            }
            if let Some(path) = path {
                if !api.bad_methods.is_empty() || api.methods.is_empty() {
                    return Err(Error::Plugin(format!(
                        "{}: the methods must be HTTP methods (got {:?} that are not, and {} that are)",
                        entry.func_name,
                        api.bad_methods,
                        api.methods.len()
                    )));
                }
                for m in &api.methods {
                    self.add_route(&path, m.clone(), Target::Local(entry.clone()))?;
                }
            }
            self.entries.push(entry);
        }
        Ok(())
    }

    /// Adds a route; a path and method already taken is an error naming both owners.
    pub fn add_route(&mut self, path: &str, method: Method, target: Target) -> Result<()> {
        let slot = self.http.entry(path.to_owned()).or_default();
        if let Some((_, existing)) = slot.iter().find(|(m, _)| *m == method) {
            return Err(Error::Plugin(format!(
                "{method} {path} is declared by both {} and {}",
                existing.describe(),
                target.describe()
            )));
        }
        slot.push((method, target));
        Ok(())
    }

    fn plugin_config(&self, p: &Plugin) -> Result<Value> {
        let name = &p.meta.name;
        let given = self
            .settings
            .plugins
            .get(name)
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new()));
        // `remote` is the bridge's (where the plugin runs), not the plugin's.
        let has_remote = given.get(crate::remote::REMOTE_KEY).is_some();
        let given = crate::remote::plugin_part(&given);
        let Value::Object(map) = &given else {
            return Err(Error::Config(format!(
                "plugins.{name} must be a table of keys, got {given}"
            )));
        };
        let Some(spec) = &p.config else {
            if map.is_empty() {
                return Ok(given);
            }
            return Err(Error::Config(format!(
                "plugins.{name}: plugin {name:?} takes no config, but got key(s) {}",
                names(map.keys())
            )));
        };
        let allowed = plugin::declared_properties(&spec.schema);
        if has_remote && allowed.iter().any(|k| k == crate::remote::REMOTE_KEY) {
            return Err(Error::Config(format!(
                "plugins.{name}.{}: the key says where the plugin runs, but plugin {name:?}'s config model declares a key of that name too; rename the plugin's key",
                crate::remote::REMOTE_KEY
            )));
        }
        let unknown: Vec<&String> = map.keys().filter(|k| !allowed.contains(k)).collect();
        if !unknown.is_empty() {
            return Err(Error::Config(format!(
                "plugins.{name}: unknown key(s) {}; allowed: {}",
                names(unknown),
                names(allowed.iter())
            )));
        }
        (spec.check)(given.clone()).map_err(|e| {
            let detail = e.data.as_ref().and_then(|d| d["detail"].get(0)).cloned();
            match detail {
                Some(d) => {
                    let loc: Vec<String> = d["loc"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .skip(1)
                                .map(|v| v.as_str().map_or(v.to_string(), str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    let key = std::iter::once(format!("plugins.{name}"))
                        .chain(loc)
                        .collect::<Vec<_>>()
                        .join(".");
                    Error::Config(format!("{key}: {}", d["msg"].as_str().unwrap_or("invalid")))
                }
                None => Error::Config(format!("plugins.{name}: {}", e.message)),
            }
        })?;
        Ok(given)
    }

    /// Resolves every plugin's `required_remote_apis`; a missing one is an error naming the
    /// plugin and the API.
    pub fn resolve(&mut self) -> Result<()> {
        let mut resolved = HashMap::new();
        for info in &self.plugins {
            let mut mine = HashMap::new();
            for name in &info.meta.required_remote_apis {
                if let Some(methods) = self.ambiguous(name) {
                    return Err(Error::Plugin(format!(
                        "plugin {:?} requires {name:?} (required_remote_apis), but that path has several methods ({}): name one, e.g. \"{} {name}\"",
                        info.meta.name,
                        methods.join(", "),
                        methods[0],
                    )));
                }
                let target = self
                    .lookup(name)
                    .or_else(|| self.bus_service(name))
                    .or_else(|| self.proxied(name))
                    .ok_or_else(|| {
                    let hint = if name.starts_with('/') && !name.starts_with(crate::API_PREFIX) {
                        format!(" (HTTP APIs are named by their full path, e.g. {})", plugin::prefixed(name))
                    } else {
                        String::new()
                    };
                    Error::Plugin(format!(
                        "plugin {:?} requires {name:?} (required_remote_apis), but no loaded plugin, bus route or proxied upstream provides it{hint}; HTTP paths: {}; function APIs: {}",
                        info.meta.name,
                        names(self.http.keys()),
                        names(self.funcs.keys()),
                    ))
                })?;
                mine.insert(name.clone(), target);
            }
            resolved.insert(info.meta.name.clone(), mine);
        }
        self.resolved = resolved;
        Ok(())
    }

    /// `METHOD /path` or `/path` served by, or under the prefix of, a `[bus.services]` entry.
    fn bus_service(&self, name: &str) -> Option<Target> {
        let live = self.live.as_ref()?;
        let (method, path) = match name.split_once(' ') {
            Some((m, p)) if p.trim().starts_with('/') => (
                Some(Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()).ok()?),
                p.trim(),
            ),
            _ => (None, name),
        };
        live.covers(path)
            .then(|| Target::BusService(method, path.to_owned()))
    }

    /// With the proxy enabled, an HTTP path no local route serves is left to the upstreams.
    fn proxied(&self, name: &str) -> Option<Target> {
        self.proxy.as_ref()?;
        let (method, path) = match name.split_once(' ') {
            Some((m, p)) if p.starts_with('/') => (Some(Method::from_bytes(m.as_bytes()).ok()?), p),
            _ => (None, name),
        };
        path.starts_with('/')
            .then(|| Target::Proxy(method, path.to_owned()))
    }

    /// The methods of a path named without one, when it has several (which one is meant
    /// cannot be told).
    fn ambiguous(&self, name: &str) -> Option<Vec<String>> {
        let routes = self.http.get(name)?;
        (routes.len() > 1).then(|| routes.iter().map(|(m, _)| m.to_string()).collect())
    }

    /// `"/api/v1/x"` (a path with one method), `"POST /api/v1/x"` or a function name.
    fn lookup(&self, name: &str) -> Option<Target> {
        let (method, path) = match name.split_once(' ') {
            Some((m, p)) if p.starts_with('/') => (
                Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()).ok(),
                p.trim(),
            ),
            _ => (None, name),
        };
        if path.starts_with('/') {
            let routes = self.http.get(path)?;
            let found = match method {
                Some(m) => routes.iter().find(|(rm, _)| *rm == m),
                None => routes.first(),
            };
            found.map(|(_, t)| t.clone())
        } else {
            self.funcs.get(name).map(|e| Target::Local(e.clone()))
        }
    }
}

fn names<I, S>(it: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let v: Vec<String> = it
        .into_iter()
        .map(|s| format!("`{}`", s.as_ref()))
        .collect();
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join(", ")
    }
}

/// What a handler or start hook gets: its plugin's config, and `call_plugin_api`.
#[derive(Clone)]
pub struct PluginCtx {
    pub(crate) plugin: Arc<PluginInfo>,
    pub(crate) registry: Arc<Registry>,
}

impl std::fmt::Debug for PluginCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginCtx")
            .field("plugin", &self.plugin.meta.name)
            .finish_non_exhaustive()
    }
}

impl PluginCtx {
    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.plugin.meta.name
    }

    /// The plugin's config, `plugins.<name>`, as its declared model (checked at start).
    pub fn config<C: DeserializeOwned>(&self) -> Result<C, ApiError> {
        plugin::from_json(self.plugin.config.clone(), "config")
    }

    /// The state [`Plugin::state`](crate::Plugin::state) made at start (a 500 naming the
    /// type if the plugin has none of that type).
    pub fn state<S: Send + Sync + 'static>(&self) -> Result<Arc<S>, ApiError> {
        self.plugin
            .state
            .clone()
            .and_then(|s| s.downcast::<S>().ok())
            .ok_or_else(|| {
                ApiError::internal(format!(
                    "plugin {:?} has no state of type {}",
                    self.plugin.meta.name,
                    std::any::type_name::<S>()
                ))
            })
    }

    /// [`call_plugin_api`](Self::call_plugin_api) with Rust types: `args` is the API's
    /// keyword arguments as a [`RemoteApi`](crate::RemoteApi) (`#[plugin]` makes one per
    /// API, `inventory_api::Stock::new(..)`), and the answer is its `Output`. `A::NAME` must
    /// be in this plugin's `required_remote_apis`, as for the JSON form.
    pub async fn call_api<A: crate::plugin::RemoteApi>(
        &self,
        args: A,
    ) -> Result<A::Output, ApiError> {
        let kwargs = serde_json::to_value(&args).map_err(|e| {
            ApiError::internal(format!(
                "{}: the arguments cannot be serialized: {e}",
                A::NAME
            ))
        })?;
        let answer = self.call_plugin_api(A::NAME, kwargs).await?;
        serde_json::from_value(answer).map_err(|e| {
            ApiError::internal(format!(
                "{}: the answer is not a {}: {e}",
                A::NAME,
                std::any::type_name::<A::Output>()
            ))
        })
    }

    /// Calls an API this plugin declared in `required_remote_apis`: an HTTP path or a
    /// function name, with keyword arguments as a JSON object (query parameters by name, the
    /// body under its body name). Local APIs answer with the handler's value (no envelope);
    /// a stream is collected into a list of its `message_chunk` payloads.
    pub async fn call_plugin_api(&self, name: &str, kwargs: Value) -> Result<Value, ApiError> {
        let target = self
            .registry
            .resolved
            .get(&self.plugin.meta.name)
            .and_then(|m| m.get(name))
            .cloned()
            .ok_or_else(|| {
                ApiError::internal(format!(
                    "plugin {:?} called {name:?}, which is not in its required_remote_apis: add it there to call it",
                    self.plugin.meta.name
                ))
            })?;
        let kwargs = match kwargs {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                return Err(ApiError::bad_request(format!(
                "call_plugin_api({name:?}) takes a JSON object of keyword arguments, got {other}"
            )))
            }
        };
        match target {
            Target::Local(entry) => call_local(&self.registry, &entry, kwargs).await,
            Target::Bus(route) => route.call(Value::Object(kwargs)).await,
            Target::BusService(method, path) => {
                let live =
                    self.registry.live.as_ref().ok_or_else(|| {
                        ApiError::not_found(format!("no bus service serves {path}"))
                    })?;
                match live.route_for(method.as_ref(), &path)? {
                    crate::bus_services::Live::Route(r) => r.call(Value::Object(kwargs)).await,
                    crate::bus_services::Live::Stream(s) => Err(ApiError::bad_request(format!(
                        "{} is an endless stream of bus messages and cannot be collected",
                        s.path
                    ))),
                }
            }
            Target::BusStream(s) => Err(ApiError::bad_request(format!(
                "{} is an endless stream of bus messages and cannot be collected",
                s.path
            ))),
            Target::BusState(s) => Ok(s.current()),
            Target::Proxy(m, p) => match &self.registry.proxy {
                Some(proxy) => proxy.call(m.as_ref(), &p, kwargs).await,
                None => Err(ApiError::internal(format!("{p}: the proxy is not enabled"))),
            },
        }
    }
}

/// Calls a local API with kwargs: the body under its name, the rest as query parameters.
pub(crate) async fn call_local(
    registry: &Arc<Registry>,
    entry: &Arc<ApiEntry>,
    mut kwargs: Map<String, Value>,
) -> Result<Value, ApiError> {
    let mut body = match &entry.handler.body {
        Some((body_name, _)) => kwargs.remove(body_name),
        None => None,
    };
    let mut query = Value::Object(kwargs);
    if !registry.settings.server.strict_validation {
        body = body.map(|b| plugin::lax(&entry.handler.body_root, b));
        query = plugin::lax(&entry.handler.query_root, query);
    }
    let ctx = PluginCtx {
        plugin: entry.plugin.clone(),
        registry: registry.clone(),
    };
    let out = plugin::invoke(&entry.handler.erased, query, body, ctx, entry.what()).await?;
    match out {
        Output::Value(v) => Ok(v),
        Output::Stream(mut s) => {
            let mut items = Vec::new();
            while let Some(ev) = s.next().await {
                let ev = ev?;
                match ev.kind {
                    EventType::MessageChunk => items.push(ev.data),
                    EventType::Error => {
                        return Err(ApiError::internal(
                            ev.data["message"]
                                .as_str()
                                .unwrap_or("stream failed")
                                .to_owned(),
                        ))
                    }
                    EventType::Finish => break,
                    EventType::Debug => {}
                }
            }
            Ok(Value::Array(items))
        }
    }
}
