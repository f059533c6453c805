//! Putting it together: loading plugins, bus routes and the proxy into a registry, the axum
//! router, and running it until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, MethodFilter, MethodRouter};
use axum::Router;
use futures::StreamExt;
use serde_json::{json, Value};
use service_framework::AddressesFile;
use tokio_util::sync::CancellationToken;

use crate::bus_services::LiveServices;
use crate::config::Settings;
use crate::envelope::{self, EventType, StreamEvent};
use crate::error::{ApiError, Error, Result};
use crate::oauth::OAuth;
use crate::plugin::{self, Output, Plugin};
use crate::proxy::Proxy;
use crate::registry::{PluginCtx, Registry, Target};
use crate::{bus, API_PREFIX, OPENAPI_PATH};

/// The largest request body a plugin or bus route reads (16 MiB).
const BODY_LIMIT: usize = 16 << 20;

/// Builds and starts a bridge.
///
/// ```no_run
/// # async fn run() -> sf_bridge::Result<()> {
/// use sf_bridge::{config::Settings, Bridge};
/// let mut settings = Settings::default();
/// settings.server.port = 0;
/// settings.load_builtin_plugins = vec!["echo".into()];
/// let running = Bridge::new(settings).start().await?;
/// println!("serving on http://{}", running.addr());
/// running.stop().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Bridge {
    settings: Settings,
    available: Vec<Plugin>,
    addresses: Option<AddressesFile>,
    security: Option<service_framework::security::SecuritySettings>,
}

impl Bridge {
    /// A bridge with the built-in plugins (`echo`) and every `#[plugin]` linked into the
    /// program available.
    pub fn new(settings: Settings) -> Self {
        Bridge {
            settings,
            available: crate::declare::registered_plugins(),
            addresses: None,
            security: None,
        }
    }

    /// Makes a plugin available to `load_plugins` (loaded when named there or with
    /// `--load-plugins`).
    /// A plugin of the same name made available before (one linked in) is replaced.
    pub fn plugin(mut self, p: Plugin) -> Self {
        self.available.retain(|a| a.name() != p.name());
        self.available.push(p);
        self
    }

    /// Makes several plugins available.
    pub fn plugins(mut self, ps: impl IntoIterator<Item = Plugin>) -> Self {
        for p in ps {
            self = self.plugin(p);
        }
        self
    }

    /// addresses.json, for bus routes that name a connection and for automatic routes.
    pub fn addresses(mut self, a: AddressesFile) -> Self {
        self.addresses = Some(a);
        self
    }

    /// Bus security: the bridge becomes a CURVE client of the bus services whose entries the
    /// security file has (see `service_framework::security`).
    pub fn security(mut self, s: service_framework::security::SecuritySettings) -> Self {
        self.security = Some(s);
        self
    }

    /// The plugins to load, by the settings' names; unknown names are an error listing the
    /// available ones.
    fn selected(&self) -> Result<Vec<Plugin>> {
        let builtins = builtin_plugins();
        let mut out: Vec<Plugin> = Vec::new();
        for name in &self.settings.load_builtin_plugins {
            if name == "proxy" {
                continue; // the proxy is turned on by server.enable_proxy
            }
            let p = builtins.iter().find(|p| p.name() == name).ok_or_else(|| {
                Error::Config(format!(
                    "load_builtin_plugins: there is no built-in plugin {name:?}; built-ins: echo, proxy"
                ))
            })?;
            out.push(p.clone());
        }
        for name in &self.settings.load_plugins {
            if self.settings.bus.services.contains_key(name)
                && !self.available.iter().any(|p| p.name() == name)
            {
                continue; // a bus service of that name, mounted from [bus.services]
            }
            let p = self
                .available
                .iter()
                .find(|p| p.name() == name)
                .ok_or_else(|| {
                    let names: Vec<&str> = self.available.iter().map(Plugin::name).collect();
                    Error::Config(format!(
                    "load_plugins: no plugin {name:?} is compiled into this bridge, and [bus.services] has no service of that name; available: {}",
                    if names.is_empty() { "(none)".into() } else { names.join(", ") }
                ))
                })?;
            if !out.iter().any(|o| o.name() == p.name()) {
                out.push(p.clone());
            }
        }
        Ok(out)
    }

    /// Loads everything (plugins, bus routes, upstream documents), resolves
    /// `required_remote_apis` and runs the start hooks; the result is ready to serve.
    pub async fn build(self) -> Result<App> {
        let plugins = self.selected()?;
        let mut reg = Registry::new(self.settings.clone(), &plugins)?;
        let (routes, streams) = bus::build(
            &reg.settings.bus,
            self.addresses.as_ref(),
            self.security.as_ref(),
        )?;
        // The [bus.routes] and [bus.streams] a service names are its own: mounted while it
        // is connected.
        let (live, routes, streams) =
            LiveServices::start(&reg.settings.bus, self.security.as_ref(), routes, streams).await?;
        for r in routes {
            let (path, method) = (r.path.clone(), r.method.clone());
            reg.add_route(&path, method, Target::Bus(Arc::new(r)))?;
        }
        for s in streams {
            let path = s.path.clone();
            reg.add_route(&path, Method::GET, Target::BusStream(Arc::new(s)))?;
        }
        if !live.is_empty() {
            reg.live = Some(live);
        }
        for s in bus::states(&reg.settings.bus, self.security.as_ref()).await? {
            let path = s.path.clone();
            reg.add_route(&path, Method::GET, Target::BusState(Arc::new(s)))?;
        }
        let proxy = if reg.settings.server.enable_proxy {
            Some(Proxy::from_config(reg.settings.plugins.get("proxy"))?)
        } else {
            None
        };
        reg.proxy = proxy.clone();
        reg.resolve()?;
        let openapi = Arc::new(crate::openapi::document(&reg));
        let registry = Arc::new(reg);
        for p in &plugins {
            if let Some(hook) = &p.on_start {
                let info = registry
                    .plugins
                    .iter()
                    .find(|i| i.meta.name == p.meta.name)
                    .cloned()
                    .expect("a loaded plugin");
                if info.remote {
                    continue; // its workers run it
                }
                let ctx = PluginCtx {
                    plugin: info,
                    registry: registry.clone(),
                };
                hook(ctx).await.map_err(|e| {
                    Error::Plugin(format!("{}: on_start failed: {}", p.name(), e.message))
                })?;
            }
        }
        let oauth = match &registry.settings.auth.oauth {
            Some(o) => {
                let o = OAuth::new(o)?;
                for path in [o.callback_path.as_str(), crate::oauth::LOGOUT_PATH] {
                    if registry.http.contains_key(path) {
                        return Err(Error::Config(format!(
                            "auth.oauth: {path} is both a route and the login's"
                        )));
                    }
                }
                Some(Arc::new(o))
            }
            None => None,
        };
        let router = router(registry.clone(), openapi.clone(), oauth);
        // Upstreams are read in the background: everything else is served meanwhile.
        if let Some(p) = &proxy {
            let local = registry
                .http
                .iter()
                .flat_map(|(path, routes)| routes.iter().map(|(m, _)| (path.clone(), m.clone())))
                .collect();
            p.spawn_loaders(local);
        }
        Ok(App {
            registry,
            router,
            openapi,
            proxy,
        })
    }

    /// Builds, binds `server.host:server.port` and serves in the background.
    pub async fn start(self) -> Result<RunningBridge> {
        let app = self.build().await?;
        app.start().await
    }

    /// Serves the plugins `names` as Majordomo workers instead of HTTP (`--serve-plugins`):
    /// each is built here as a bridge builds it, from `plugins.<name>` without its `remote`
    /// key, and registers with the broker that key names (see [`crate::remote`]).
    pub async fn serve_plugins(mut self, names: &[String]) -> Result<crate::remote::PluginWorkers> {
        let configs = crate::remote::worker_settings(&mut self.settings, names)?;
        let app = self.build().await?;
        crate::remote::PluginWorkers::start(app.registry, configs).await
    }
}

/// The built-in plugins.
pub fn builtin_plugins() -> Vec<Plugin> {
    vec![crate::echo::plugin()]
}

/// A built bridge, ready to serve.
#[derive(Debug)]
pub struct App {
    registry: Arc<Registry>,
    router: Router,
    openapi: Arc<Value>,
    proxy: Option<Arc<Proxy>>,
}

impl App {
    /// The axum router (for embedding in a larger server).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The OpenAPI document of the local routes (upstream routes are added to the served
    /// document as each upstream is read).
    pub fn openapi(&self) -> &Value {
        &self.openapi
    }

    /// The served OpenAPI document as it is now, with the upstream routes read so far.
    pub fn current_openapi(&self) -> Arc<Value> {
        let doc = match &self.proxy {
            Some(p) => p.document(&self.openapi),
            None => self.openapi.clone(),
        };
        match &self.registry.live {
            Some(l) => Arc::new(l.document(&doc, &self.registry)),
            None => doc,
        }
    }

    /// Binds `server.host:server.port` and serves in the background.
    pub async fn start(self) -> Result<RunningBridge> {
        let s = &self.registry.settings.server;
        let bind = format!("{}:{}", s.host, s.port);
        let listener = tokio::net::TcpListener::bind(&bind)
            .await
            .map_err(|e| Error::Server(format!("cannot listen on {bind}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Server(e.to_string()))?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let router = self.router.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
                .map_err(|e| Error::Server(e.to_string()))
        });
        tracing::info!("bridge serving on http://{addr} (docs: http://{addr}/docs)");
        Ok(RunningBridge {
            addr,
            stop,
            task,
            proxy: self.proxy.clone(),
        })
    }

    /// Serves until `shutdown` resolves, then finishes the requests in flight.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let running = self.start().await?;
        shutdown.await;
        running.stop().await;
        Ok(())
    }
}

/// A bridge serving in the background; dropping it stops it.
#[derive(Debug)]
pub struct RunningBridge {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<()>>,
    proxy: Option<Arc<Proxy>>,
}

impl RunningBridge {
    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops taking connections and waits (up to 10 s) for the requests in flight.
    /// Open event streams are cut at the deadline.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(p) = &self.proxy {
            p.stop();
        }
        let task = &mut self.task;
        if tokio::time::timeout(std::time::Duration::from_secs(10), &mut *task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for RunningBridge {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(p) = &self.proxy {
            p.stop();
        }
    }
}

fn router(reg: Arc<Registry>, openapi: Arc<Value>, oauth: Option<Arc<OAuth>>) -> Router {
    let bus_metrics = &reg.settings.metrics;
    let metrics = Arc::new(crate::metrics::HttpMetrics::new(
        bus_metrics
            .enabled()
            .then(|| crate::bus_metrics::BusMetrics::new(bus_metrics.clone())),
    ));
    let mut api = Router::new();
    for (path, routes) in &reg.http {
        let mut mr: MethodRouter<()> = MethodRouter::new();
        let mut allowed = Vec::new();
        for (method, target) in routes {
            let Ok(filter) = MethodFilter::try_from(method.clone()) else {
                tracing::warn!(%method, %path, "method not routable; skipped");
                continue;
            };
            allowed.push(method.as_str().to_owned());
            let (reg, target) = (reg.clone(), target.clone());
            mr = mr.on(filter, move |req: Request| {
                dispatch(reg.clone(), target.clone(), req)
            });
        }
        let allow = allowed.join(", ");
        let reg_fb = reg.clone();
        mr = mr.fallback(move |req: Request| {
            let allow = allow.clone();
            let reg = reg_fb.clone();
            async move {
                // An upstream may serve this path with another method.
                if let Some(p) = reg
                    .proxy
                    .as_ref()
                    .filter(|p| p.fits(req.method(), req.uri().path()))
                {
                    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
                    return match p.handle(&reg.auth, req).await {
                        Some(r) => r,
                        None => not_found_response(&path, &method),
                    };
                }
                let mut r = envelope::failure(&ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!(
                        "{} is not allowed on {}; allowed: {allow}",
                        req.method(),
                        req.uri().path()
                    ),
                ));
                if let Ok(v) = HeaderValue::from_str(&allow) {
                    r.headers_mut().insert(header::ALLOW, v);
                }
                r
            }
        });
        api = api.route(path, mr);
    }
    let api = if reg.http.is_empty() {
        api
    } else {
        api.route_layer(middleware::from_fn_with_state(reg.clone(), auth))
    };

    let doc = openapi.clone();
    // No request leaves the machine from the docs pages: Swagger UI's online validator
    // badge is off, and ReDoc's footer logo is inlined.
    let swagger = Arc::new(utoipa_swagger_ui::Config::from(OPENAPI_PATH).validator_url("none"));
    let redoc_html: &'static str = Box::leak(
        aide::redoc::Redoc::new(OPENAPI_PATH)
            .with_title("Bridge ReDoc")
            .html()
            .replace(REDOC_LOGO_URL, REDOC_LOGO_INLINE)
            .into_boxed_str(),
    );
    let health_reg = reg.clone();
    let fallback_reg = reg.clone();
    let doc_reg = reg.clone();
    let offset = reg.settings.server.timestamp_offset;
    let app = Router::new()
        .route(
            "/health",
            get(move || {
                let reg = health_reg.clone();
                async move { health(&reg) }
            }),
        )
        .route("/ping", get(|| async { axum::Json("pong") }))
        // FrameX answers its version as a bare string; the details are on another route.
        .route(
            "/version",
            get(|| async { axum::Json(env!("CARGO_PKG_VERSION")) }),
        )
        .route(
            VERSION_DETAILS_PATH,
            get(|| async {
                axum::Json(
                    json!({"name": "sf-bridge", "version": env!("CARGO_PKG_VERSION"),
                    "framex_surface": "0.4.2",
                    "service_framework": "0.0.18 wire-compatible"}),
                )
            }),
        )
        .route(
            OPENAPI_PATH,
            get(move || {
                let base = doc.clone();
                let reg = doc_reg.clone();
                async move {
                    let doc = match &reg.proxy {
                        Some(p) => p.document(&base),
                        None => base,
                    };
                    let doc = match &reg.live {
                        Some(l) => Arc::new(l.document(&doc, &reg)),
                        None => doc,
                    };
                    envelope::json_response(StatusCode::OK, &*doc)
                }
            }),
        )
        .route("/docs", get(|| async { Redirect::permanent("/docs/") }))
        .route(
            "/docs/",
            get({
                let c = swagger.clone();
                move || swagger_file(String::new(), c.clone())
            }),
        )
        .route(
            "/docs/{*file}",
            get({
                let c = swagger.clone();
                move |axum::extract::Path(file): axum::extract::Path<String>| {
                    swagger_file(file, c.clone())
                }
            }),
        )
        .route("/redoc", get(move || async move { Html(redoc_html) }))
        .route(
            "/metrics",
            get(crate::metrics::serve).with_state(metrics.clone()),
        )
        .merge(api)
        .fallback(move |req: Request| {
            let reg = fallback_reg.clone();
            async move {
                if let Some(live) = &reg.live {
                    if let Some(r) =
                        serve_bus_service(&reg, live, req.method(), req.uri().path(), req.headers())
                    {
                        return match r {
                            Ok(target) => dispatch(reg.clone(), target, req).await,
                            Err((e, true)) => envelope::sse_error(&e),
                            Err((e, false)) => envelope::failure(&e),
                        };
                    }
                }
                if let Some(p) = &reg.proxy {
                    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
                    if let Some(r) = p.handle(&reg.auth, req).await {
                        return r;
                    }
                    return not_found_response(&path, &method);
                }
                not_found(req).await
            }
        })
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            envelope::TIMESTAMP_OFFSET.scope(offset, next.run(req))
        }))
        .layer(middleware::from_fn(crate::trace::layer))
        .layer(middleware::from_fn_with_state(
            metrics,
            crate::metrics::track,
        ));
    match oauth {
        Some(o) => with_login(app, o),
        None => app,
    }
}

/// `auth.oauth`: the callback, `/logout`, and the guard in front of the docs pages.
fn with_login(app: Router, o: Arc<OAuth>) -> Router {
    let (cb, out, guard) = (o.clone(), o.clone(), o);
    app.route(
        &cb.callback_path.clone(),
        get(move |req: Request| {
            let o = cb.clone();
            let query = req.uri().query().map(str::to_owned);
            let headers = req.headers().clone();
            async move { o.callback(query, headers).await }
        }),
    )
    .route(
        crate::oauth::LOGOUT_PATH,
        get({
            let o = out.clone();
            move || {
                let o = o.clone();
                async move { o.logout() }
            }
        })
        .post(move || {
            let o = out.clone();
            async move { o.logout() }
        }),
    )
    .layer(middleware::from_fn(move |req: Request, next: Next| {
        let o = guard.clone();
        async move {
            match o.guard(&req) {
                Some(r) => r,
                None => next.run(req).await,
            }
        }
    }))
}

/// The footer logo ReDoc would fetch from its vendor's CDN.
const REDOC_LOGO_URL: &str = "https://cdn.redoc.ly/redoc/logo-mini.svg";
/// A small inline stand-in.
const REDOC_LOGO_INLINE: &str = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' width='16' height='16'%3E%3Ccircle cx='8' cy='8' r='7' fill='%23c33'/%3E%3C/svg%3E";

/// Where `/version`'s detailed object is served.
pub const VERSION_DETAILS_PATH: &str = "/version/details";

/// `"ok"` as FrameX answers, unless an upstream has not been read yet: then
/// `{"status": "degraded", "missing_upstreams": [{"name", "error"}]}` (still 200: the bridge
/// serves everything else).
fn health(reg: &Registry) -> Response {
    let missing = reg.proxy.as_ref().map(|p| p.missing()).unwrap_or_default();
    let services = reg.live.as_ref().map(|l| l.missing()).unwrap_or_default();
    if missing.is_empty() && services.is_empty() {
        return axum::Json("ok").into_response();
    }
    let mut body = json!({"status": "degraded"});
    if !missing.is_empty() {
        let list: Vec<Value> = missing
            .into_iter()
            .map(|(name, error)| json!({"name": name, "error": error}))
            .collect();
        body["missing_upstreams"] = list.into();
    }
    if !services.is_empty() {
        let list: Vec<Value> = services
            .into_iter()
            .map(|(name, error)| json!({"name": name, "error": error}))
            .collect();
        body["missing_bus_services"] = list.into();
    }
    axum::Json(body).into_response()
}

/// A request for a `[bus.services]` route: its target, or the error to answer (405, 401,
/// 404 or 503 while the service is not answering; `true` for a stream route, answered as an
/// event); `None` when no service serves or covers the path.
fn serve_bus_service(
    reg: &Registry,
    live: &LiveServices,
    method: &Method,
    path: &str,
    headers: &axum::http::HeaderMap,
) -> Option<Result<Target, (ApiError, bool)>> {
    let routes = match live.route(path) {
        Ok(None) => return None,
        Ok(Some(r)) => r,
        Err(e) => return Some(Err((e, false))),
    };
    let Some((_, found)) = routes.iter().find(|(m, _)| m == method) else {
        let allow: Vec<String> = routes.iter().map(|(m, _)| m.to_string()).collect();
        return Some(Err((
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "{method} is not allowed on {path}; allowed: {}",
                    allow.join(", ")
                ),
            ),
            false,
        )));
    };
    let target = match found {
        crate::bus_services::Live::Route(r) => Target::Bus(r.clone()),
        crate::bus_services::Live::Stream(s) => Target::BusStream(s.clone()),
    };
    if let Err(e) = reg.auth.check(path, Some(path), headers) {
        tracing::warn!(%path, "rejected: {}", e.message);
        return Some(Err((e, target.is_stream())));
    }
    Some(Ok(target))
}

async fn swagger_file(file: String, config: Arc<utoipa_swagger_ui::Config<'static>>) -> Response {
    match utoipa_swagger_ui::serve(&file, config) {
        Ok(Some(f)) => {
            let mut r = Response::new(Body::from(f.bytes.into_owned()));
            if let Ok(v) = HeaderValue::from_str(&f.content_type) {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            if f.gzpipped {
                r.headers_mut()
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            r
        }
        Ok(None) => (StatusCode::NOT_FOUND, "not found").into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn not_found(req: Request) -> Response {
    not_found_response(req.uri().path(), req.method())
}

fn not_found_response(path: &str, method: &Method) -> Response {
    if path.is_empty() || path == "/api" || path.starts_with("/api/") {
        envelope::failure(&ApiError::not_found(format!(
            "no route for {method} {path}"
        )))
    } else {
        envelope::json_response(StatusCode::NOT_FOUND, &json!({"detail": "Not Found"}))
    }
}

async fn auth(State(reg): State<Arc<Registry>>, req: Request, next: Next) -> Response {
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    match reg
        .auth
        .check(req.uri().path(), template.as_deref(), req.headers())
    {
        Ok(()) => next.run(req).await,
        Err(e) => {
            tracing::warn!(path = %req.uri().path(), "rejected: {}", e.message);
            let stream = template
                .as_deref()
                .and_then(|t| reg.http.get(t))
                .and_then(|routes| routes.iter().find(|(m, _)| m == req.method()))
                .is_some_and(|(_, t)| t.is_stream());
            if stream {
                envelope::sse_error(&e)
            } else {
                envelope::failure(&e)
            }
        }
    }
}

fn under_api(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/") || path.starts_with(API_PREFIX)
}

async fn dispatch(reg: Arc<Registry>, target: Target, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    // A stream route answers its errors as an `error` event, as FrameX does.
    let is_stream = target.is_stream();
    let fail = |e: &ApiError| {
        if is_stream {
            envelope::sse_error(e)
        } else {
            envelope::failure(e)
        }
    };
    let strict = reg.settings.server.strict_validation;
    let result = match target {
        Target::Local(entry) => {
            let pairs: Vec<(String, String)> = match req.uri().query() {
                Some(q) => match serde_urlencoded_pairs(q) {
                    Ok(p) => p,
                    Err(e) => return fail(&e),
                },
                None => Vec::new(),
            };
            let mut query = plugin::coerce_query(&entry.handler.query_root, pairs);
            let body = if entry.handler.body.is_some() {
                match read_json_body(req).await {
                    Ok(b) => b,
                    Err(e) => return fail(&e),
                }
            } else {
                None
            };
            let body = match body {
                Some(b) if !strict => Some(plugin::lax(&entry.handler.body_root, b)),
                other => other,
            };
            if !strict {
                query = plugin::lax(&entry.handler.query_root, query);
            }
            let ctx = PluginCtx {
                plugin: entry.plugin.clone(),
                registry: reg.clone(),
            };
            match plugin::invoke(&entry.handler.erased, query, body, ctx, entry.what()).await {
                Ok(Output::Value(v)) if entry.api.raw_response || !under_api(&path) => {
                    return envelope::json_response(StatusCode::OK, &v)
                }
                Ok(Output::Value(v)) => Ok(v),
                Ok(Output::Stream(s)) => return sse(s),
                Err(e) => Err(e),
            }
        }
        Target::Bus(route) => {
            let args = if route.method == Method::GET {
                let pairs = match req.uri().query() {
                    Some(q) => match serde_urlencoded_pairs(q) {
                        Ok(p) => p,
                        Err(e) => return fail(&e),
                    },
                    None => Vec::new(),
                };
                let schema = route.args_schema.clone().unwrap_or(Value::Null);
                plugin::coerce_query(&schema, pairs)
            } else {
                match read_json_body(req).await {
                    Ok(b) => b.unwrap_or_else(|| json!({})),
                    Err(e) => return fail(&e),
                }
            };
            match route.call(args).await {
                Ok(v) if route.raw_response => return envelope::json_response(StatusCode::OK, &v),
                other => other,
            }
        }
        Target::BusStream(s) => match s.open().await {
            Ok(stream) => return sse(stream),
            Err(e) => Err(e),
        },
        Target::BusState(s) => Ok(s.current()),
        // Proxied paths are answered by the fallback, never routed here.
        Target::Proxy(..) | Target::BusService(..) => {
            Err(ApiError::not_found(format!("no route for {path}")))
        }
    };
    match result {
        Ok(v) => envelope::success(StatusCode::OK, v),
        Err(e) => {
            if e.status.is_server_error() {
                tracing::error!(%path, "{}", e.message);
            }
            fail(&e)
        }
    }
}

fn serde_urlencoded_pairs(q: &str) -> Result<Vec<(String, String)>, ApiError> {
    let parsed: axum::extract::Query<Vec<(String, String)>> = axum::extract::Query::try_from_uri(
        &format!("/?{q}")
            .parse()
            .map_err(|_| ApiError::bad_request("the query string is not valid"))?,
    )
    .map_err(|e| ApiError::bad_request(format!("the query string is not valid: {e}")))?;
    Ok(parsed.0)
}

async fn read_json_body(req: Request) -> Result<Option<Value>, ApiError> {
    let bytes = axum::body::to_bytes(req.into_body(), BODY_LIMIT)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("cannot read the request body (limit {BODY_LIMIT} bytes): {e}"),
            )
        })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        ApiError::validation(
            vec!["body".into(), e.column().into()],
            format!("JSON decode error: {e}"),
            "json_invalid",
        )
    })
}

/// Events as FrameX sends them; `finish` is added unless the handler sent one, and an error
/// becomes an `error` event that ends the stream.
fn sse(stream: crate::plugin::EventStream) -> Response {
    let body = futures::stream::unfold((stream, false), |(mut s, done)| async move {
        if done {
            return None;
        }
        match s.next().await {
            Some(Ok(ev)) => {
                let finished = ev.kind == EventType::Finish;
                Some((
                    Ok::<_, std::convert::Infallible>(ev.to_bytes()),
                    (s, finished),
                ))
            }
            Some(Err(e)) => {
                tracing::warn!("stream failed midway: {}", e.message);
                Some((Ok(StreamEvent::error(&e).to_bytes()), (s, true)))
            }
            None => Some((Ok(StreamEvent::finish().to_bytes()), (s, true))),
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| envelope::failure(&ApiError::internal(e.to_string())))
}
