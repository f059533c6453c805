//! Plugins: metadata, a typed config, start hooks and APIs declared with FrameX's options.
//!
//! ```
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//! use sf_bridge::{Api, ApiError, Plugin, PluginCtx, PluginMetadata};
//!
//! #[derive(Deserialize, JsonSchema)]
//! struct Greet {
//!     name: String,
//!     #[serde(default = "hello")]
//!     greeting: String,
//! }
//! fn hello() -> String { "hello".into() }
//!
//! #[derive(Serialize, JsonSchema)]
//! struct Greeting { text: String }
//!
//! fn plugin() -> Plugin {
//!     Plugin::new(PluginMetadata::new("greeter").version("1.0.0").author("me"))
//!         .api(Api::new("greet").path("/greet").get().handle(
//!             |q: Greet, _ctx: PluginCtx| async move {
//!                 Ok::<_, ApiError>(Greeting { text: format!("{}, {}", q.greeting, q.name) })
//!             },
//!         ))
//! }
//! ```
//!
//! `GET /api/v1/greet?name=bob` answers `{"status": 200, "message": "success", "timestamp":
//! ..., "data": {"text": "hello, bob"}}`, and `greeting` defaults to `"hello"` (FrameX makes
//! every parameter required).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use axum::http::Method;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::envelope::StreamEvent;
use crate::error::ApiError;
use crate::registry::PluginCtx;

/// Where a handler is reachable (FrameX's `ApiType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallType {
    /// An HTTP route only.
    Http,
    /// A function API only, callable by name with `call_plugin_api`.
    Func,
    /// Both.
    All,
}

/// What a plugin says about itself; shown as its tag in the OpenAPI document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginMetadata {
    /// The plugin id: `plugins.<name>` is its config, `<name>.<Type>.<method>` its function APIs.
    pub name: String,
    /// Its version.
    pub version: String,
    /// What it does.
    pub description: String,
    /// Who wrote it.
    pub author: String,
    /// Where to read more.
    pub url: String,
    /// HTTP paths (`/api/v1/echo`, or `POST /api/v1/x` to pick a method) and function names
    /// (`echo.EchoPlugin.confess`) this plugin calls with `call_plugin_api`. Resolved at start.
    pub required_remote_apis: Vec<String>,
}

impl PluginMetadata {
    /// Metadata with just a name.
    pub fn new(name: impl Into<String>) -> Self {
        PluginMetadata {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Sets the version.
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.version = v.into();
        self
    }

    /// Sets the description.
    pub fn description(mut self, v: impl Into<String>) -> Self {
        self.description = v.into();
        self
    }

    /// Sets the author.
    pub fn author(mut self, v: impl Into<String>) -> Self {
        self.author = v.into();
        self
    }

    /// Sets the url.
    pub fn url(mut self, v: impl Into<String>) -> Self {
        self.url = v.into();
        self
    }

    /// Declares the APIs this plugin calls.
    pub fn required_remote_apis<I, S>(mut self, apis: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.required_remote_apis = apis.into_iter().map(Into::into).collect();
        self
    }
}

/// The payload of a `message_chunk` event made from a string (`StreamEvent::chunk("a")` is
/// `{"content": "a"}`, as in FrameX).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, Serialize, JsonSchema)]
pub struct TextChunk {
    /// The text.
    pub content: String,
}

/// A query model for handlers that take no query parameters.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize, Serialize, JsonSchema)]
pub struct NoParams {}

/// The stream a streaming handler returns.
pub type EventStream = BoxStream<'static, Result<StreamEvent, ApiError>>;

/// What a type-erased handler produced.
pub(crate) enum Output {
    Value(Value),
    Stream(EventStream),
}

pub(crate) type Erased = Arc<
    dyn Fn(Value, Option<Value>, PluginCtx) -> BoxFuture<'static, Result<Output, ApiError>>
        + Send
        + Sync,
>;

pub(crate) type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// The typed parts of a handler, captured when it is given.
#[derive(Clone)]
pub(crate) struct HandlerSpec {
    /// The query model's schema (standalone, for coercing query strings and listing
    /// parameters).
    pub query_root: Value,
    /// The body's parameter name (for `call_plugin_api` kwargs) and schema.
    pub body: Option<(String, SchemaFn)>,
    /// The body model's standalone schema (for lax validation; null without a body).
    pub body_root: Value,
    /// The response model's schema (a stream's chunk model for streams).
    pub response: SchemaFn,
    pub stream: bool,
    pub erased: Erased,
}

/// One API of a plugin: FrameX's `@on_request(path, methods, call_type, stream,
/// raw_response, tags)` on a method.
#[derive(Clone)]
pub struct Api {
    pub(crate) name: String,
    pub(crate) path: Option<String>,
    pub(crate) prefix: bool,
    pub(crate) methods: Vec<Method>,
    pub(crate) bad_methods: Vec<String>,
    pub(crate) call_type: Option<CallType>,
    pub(crate) raw_response: bool,
    pub(crate) tags: Vec<String>,
    pub(crate) summary: Option<String>,
    pub(crate) handler: Option<HandlerSpec>,
    /// A stream's `message_chunk` payload model, for the OpenAPI document.
    pub(crate) event: Option<SchemaFn>,
    /// Calling it twice does no more than calling it once (see [`Api::idempotent`]).
    pub(crate) idempotent: bool,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("methods", &self.methods)
            .field("call_type", &self.call_type)
            .finish_non_exhaustive()
    }
}

/// The `/api/v1` prefix rule: a path gets it unless it already starts with it.
pub fn prefixed(path: &str) -> String {
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    if path == crate::API_PREFIX || path.starts_with(&format!("{}/", crate::API_PREFIX)) {
        path
    } else {
        format!("{}{path}", crate::API_PREFIX)
    }
}

impl Api {
    /// An API named `name` (its function name is `<plugin>.<Type>.<name>`). Without a path it
    /// is a function API; with one it is an HTTP route (GET unless told otherwise).
    pub fn new(name: impl Into<String>) -> Self {
        Api {
            name: name.into(),
            path: None,
            prefix: true,
            methods: vec![Method::GET],
            bad_methods: Vec::new(),
            call_type: None,
            raw_response: false,
            tags: Vec::new(),
            summary: None,
            handler: None,
            event: None,
            idempotent: false,
        }
    }

    /// The HTTP path; `/api/v1` is put before it unless it already starts with it.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Keeps the path exactly as given (no `/api/v1` prefix, and no envelope outside `/api`).
    pub fn no_prefix(mut self) -> Self {
        self.prefix = false;
        self
    }

    /// The HTTP methods (several on one path are fine, as are several APIs on one path).
    pub fn methods<I, M>(mut self, methods: I) -> Self
    where
        I: IntoIterator<Item = M>,
        M: AsRef<str>,
    {
        self.methods.clear();
        self.bad_methods.clear();
        for m in methods {
            let m = m.as_ref().trim().to_ascii_uppercase();
            match Method::from_bytes(m.as_bytes()) {
                Ok(method)
                    if matches!(
                        m.as_str(),
                        "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS" | "TRACE"
                    ) =>
                {
                    self.methods.push(method)
                }
                _ => self.bad_methods.push(m),
            }
        }
        self
    }

    /// GET only.
    pub fn get(self) -> Self {
        self.methods(["GET"])
    }

    /// POST only.
    pub fn post(self) -> Self {
        self.methods(["POST"])
    }

    /// `http`, `func` or `all` (default: `http` with a path, `func` without).
    pub fn call_type(mut self, t: CallType) -> Self {
        self.call_type = Some(t);
        self
    }

    /// Answers with the handler's JSON as is, without the envelope.
    pub fn raw_response(mut self) -> Self {
        self.raw_response = true;
        self
    }

    /// OpenAPI tags (default: the plugin's name).
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// A stream's `message_chunk` payload model `T`, shown in the OpenAPI document
    /// ([`TextChunk`] for the events of a stream of strings).
    pub fn event_type<T: JsonSchema>(mut self) -> Self {
        self.event = Some(SchemaGenerator::subschema_for::<T>);
        self
    }

    /// Marks the API idempotent: calling it twice with the same arguments does no more than
    /// calling it once. Where its plugin runs on workers behind a broker
    /// ([`remote`](crate::remote)), a call whose worker died is given to another worker; a
    /// call of an API not marked so is never repeated: it fails (503) instead.
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// Whether [`idempotent`](Self::idempotent) was given.
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }

    /// A one-line summary for the OpenAPI document.
    pub fn summary(mut self, s: impl Into<String>) -> Self {
        self.summary = Some(s.into());
        self
    }

    /// The handler: query parameters `Q` (a struct; defaults via `#[serde(default)]` are
    /// honoured), a JSON result `R`.
    pub fn handle<Q, R, F, Fut>(mut self, f: F) -> Self
    where
        Q: DeserializeOwned + JsonSchema + Send + 'static,
        R: Serialize + JsonSchema + 'static,
        F: Fn(Q, PluginCtx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, ApiError>> + Send + 'static,
    {
        let f = Arc::new(f);
        let erased: Erased = Arc::new(move |query, _body, ctx| {
            let f = f.clone();
            Box::pin(async move {
                let q: Q = from_json(query, "query")?;
                let r = f(q, ctx).await?;
                to_json(&r).map(Output::Value)
            })
        });
        self.handler = Some(HandlerSpec {
            query_root: root_schema::<Q>(),
            body: None,
            body_root: Value::Null,
            response: SchemaGenerator::subschema_for::<R>,
            stream: false,
            erased,
        });
        self
    }

    /// The handler with a JSON body `B` (at most one body model, as in FrameX). `body_name`
    /// is the key that carries the body in `call_plugin_api` kwargs.
    pub fn handle_with_body<Q, B, R, F, Fut>(mut self, body_name: &str, f: F) -> Self
    where
        Q: DeserializeOwned + JsonSchema + Send + 'static,
        B: DeserializeOwned + JsonSchema + Send + 'static,
        R: Serialize + JsonSchema + 'static,
        F: Fn(Q, B, PluginCtx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, ApiError>> + Send + 'static,
    {
        let f = Arc::new(f);
        let erased: Erased = Arc::new(move |query, body, ctx| {
            let f = f.clone();
            Box::pin(async move {
                let q: Q = from_json(query, "query")?;
                let Some(body) = body else {
                    return Err(ApiError::validation(
                        vec!["body".into()],
                        "Field required",
                        "missing",
                    ));
                };
                let b: B = from_json(body, "body")?;
                let r = f(q, b, ctx).await?;
                to_json(&r).map(Output::Value)
            })
        });
        self.handler = Some(HandlerSpec {
            query_root: root_schema::<Q>(),
            body: Some((body_name.to_owned(), SchemaGenerator::subschema_for::<B>)),
            body_root: root_schema::<B>(),
            response: SchemaGenerator::subschema_for::<R>,
            stream: false,
            erased,
        });
        self
    }

    /// A streaming handler: answered as `text/event-stream`, each item an event; `finish` is
    /// added at the end, and an error item becomes an `error` event that ends the stream.
    pub fn handle_stream<Q, F, Fut, S>(mut self, f: F) -> Self
    where
        Q: DeserializeOwned + JsonSchema + Send + 'static,
        F: Fn(Q, PluginCtx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S, ApiError>> + Send + 'static,
        S: Stream<Item = Result<StreamEvent, ApiError>> + Send + 'static,
    {
        let f = Arc::new(f);
        let erased: Erased = Arc::new(move |query, _body, ctx| {
            let f = f.clone();
            Box::pin(async move {
                let q: Q = from_json(query, "query")?;
                let s = f(q, ctx).await?;
                Ok(Output::Stream(s.boxed()))
            })
        });
        self.handler = Some(HandlerSpec {
            query_root: root_schema::<Q>(),
            body: None,
            body_root: Value::Null,
            response: SchemaGenerator::subschema_for::<String>,
            stream: true,
            erased,
        });
        self
    }

    /// The effective call type.
    pub(crate) fn effective_call_type(&self) -> CallType {
        match (self.call_type, &self.path) {
            (Some(CallType::Func), _) | (None, None) => CallType::Func,
            (Some(t), Some(_)) => t,
            (Some(_), None) => CallType::Func,
            (None, Some(_)) => CallType::Http,
        }
    }

    /// The full HTTP path, if it has one.
    pub(crate) fn full_path(&self) -> Option<String> {
        let p = self.path.as_deref()?;
        Some(if self.prefix {
            prefixed(p)
        } else if p.starts_with('/') {
            p.to_owned()
        } else {
            format!("/{p}")
        })
    }
}

/// Runs an erased handler, turning a panic into a 500 with a safe message.
pub(crate) async fn invoke(
    h: &Erased,
    query: Value,
    body: Option<Value>,
    ctx: PluginCtx,
    what: &str,
) -> Result<Output, ApiError> {
    match AssertUnwindSafe(h(query, body, ctx)).catch_unwind().await {
        Ok(r) => r,
        Err(_) => {
            tracing::error!("{what} panicked");
            Err(ApiError::internal(format!("internal error in {what}")))
        }
    }
}

fn root_schema<T: JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null)
}

/// Deserializes with the path of the offending field, as a 422. The path is tracked only to
/// explain a failure: valid input takes the plain deserializer (path tracking allocates for
/// every key it passes).
pub(crate) fn from_json<T: DeserializeOwned>(v: Value, place: &str) -> Result<T, ApiError> {
    if let Ok(t) = T::deserialize(&v) {
        return Ok(t);
    }
    serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
        let mut loc: Vec<Value> = vec![place.into()];
        let inner = e.inner().to_string();
        for seg in e.path().iter() {
            match seg {
                serde_path_to_error::Segment::Map { key } => loc.push(key.clone().into()),
                serde_path_to_error::Segment::Seq { index } => loc.push((*index).into()),
                serde_path_to_error::Segment::Enum { variant } => loc.push(variant.clone().into()),
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        // serde reports a missing field at the parent: name the field itself.
        let (msg, kind) = match inner
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
        {
            Some(field) => {
                loc.push(field.to_owned().into());
                ("Field required".to_owned(), "missing")
            }
            None => (inner, "value_error"),
        };
        ApiError::validation(loc, msg, kind)
    })
}

fn to_json<R: Serialize>(r: &R) -> Result<Value, ApiError> {
    serde_json::to_value(r)
        .map_err(|e| ApiError::internal(format!("the handler's result cannot be serialized: {e}")))
}

/// A config model checked when the bridge starts.
#[derive(Clone)]
pub(crate) struct ConfigSpec {
    pub schema: Value,
    pub check: fn(Value) -> Result<(), ApiError>,
}

type StartHook = Arc<dyn Fn(PluginCtx) -> BoxFuture<'static, Result<(), ApiError>> + Send + Sync>;

/// A plugin's state, made once at start from its config.
pub(crate) type State = Arc<dyn std::any::Any + Send + Sync>;

pub(crate) type StateFactory = Arc<dyn Fn(Value) -> Result<State, ApiError> + Send + Sync>;

/// An API whose argument and result types are known in Rust, for
/// [`PluginCtx::call_api`](crate::PluginCtx::call_api): `Self` holds the keyword arguments
/// (query parameters by name, the body under its parameter's name) and serializes to them.
/// `#[plugin]` implements it for each API (`<plugin>_api::<Method>`); write it by hand for
/// a builder API.
pub trait RemoteApi: Serialize {
    /// What `required_remote_apis` names: `"GET /api/v1/path"` (the method picks one of a
    /// path's APIs) or a function name `plugin.Type.method`.
    const NAME: &'static str;
    /// The handler's result (for a stream, a `Vec` of its `message_chunk` payloads).
    type Output: DeserializeOwned;
}

/// A plugin: metadata, an optional typed config, APIs and an optional start hook.
#[derive(Clone)]
pub struct Plugin {
    pub(crate) meta: PluginMetadata,
    pub(crate) type_name: String,
    pub(crate) config: Option<ConfigSpec>,
    pub(crate) apis: Vec<Api>,
    pub(crate) on_start: Option<StartHook>,
    pub(crate) state: Option<StateFactory>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("meta", &self.meta)
            .field("type_name", &self.type_name)
            .field("apis", &self.apis)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// A plugin; its type name (the middle of its function API names) defaults to the
    /// CamelCase name plus `Plugin` (`echo` -> `EchoPlugin`).
    pub fn new(meta: PluginMetadata) -> Self {
        let type_name = format!("{}Plugin", camel(&meta.name));
        Plugin {
            meta,
            type_name,
            config: None,
            apis: Vec::new(),
            on_start: None,
            state: None,
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// Its metadata.
    pub fn metadata(&self) -> &PluginMetadata {
        &self.meta
    }

    /// Overrides the type name (FrameX's deployment class name).
    pub fn type_name(mut self, name: impl Into<String>) -> Self {
        self.type_name = name.into();
        self
    }

    /// The config model read from `plugins.<name>`. Keys it does not declare are an error
    /// that names them and the allowed ones; read it with [`PluginCtx::config`].
    pub fn config<C: DeserializeOwned + JsonSchema + 'static>(mut self) -> Self {
        self.config = Some(ConfigSpec {
            schema: root_schema::<C>(),
            check: |v| from_json::<C>(v, "config").map(|_| ()),
        });
        self
    }

    /// Adds an API.
    pub fn api(mut self, api: Api) -> Self {
        self.apis.push(api);
        self
    }

    /// Runs once when the bridge starts, after every API is resolved (so it may call
    /// `call_plugin_api`) and before the first request is served. An error stops the start.
    pub fn on_start<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(PluginCtx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ApiError>> + Send + 'static,
    {
        self.on_start = Some(Arc::new(move |ctx| Box::pin(f(ctx))));
        self
    }

    /// The plugin's state `S`, made once when the bridge starts from its config `C`
    /// (`plugins.<name>` as given to [`Plugin::config`]; [`NoParams`] when it has none),
    /// before the start hooks run. Handlers read it with [`PluginCtx::state`] (shared by
    /// every request, so it holds its own locks where it changes). An error stops the start.
    pub fn state<C, S, F>(mut self, make: F) -> Self
    where
        C: DeserializeOwned + 'static,
        S: Send + Sync + 'static,
        F: Fn(C) -> Result<S, ApiError> + Send + Sync + 'static,
    {
        self.state = Some(Arc::new(move |config| {
            let c: C = from_json(config, "config")?;
            make(c).map(|s| Arc::new(s) as State)
        }));
        self
    }

    /// `<name>.<Type>`, FrameX's deployment name.
    pub fn deployment(&self) -> String {
        format!("{}.{}", self.meta.name, self.type_name)
    }
}

fn camel(name: &str) -> String {
    name.split(['_', '-', ' '])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            match c.next() {
                Some(f) => f.to_uppercase().chain(c).collect::<String>(),
                None => String::new(),
            }
        })
        .collect()
}

/// The property names a root schema declares (for rejecting unknown keys by name).
pub(crate) fn declared_properties(root: &Value) -> Vec<String> {
    root.get("properties")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Converts query strings to the JSON types the query model declares, so that one
/// deserialization path (JSON) serves HTTP and `call_plugin_api` alike.
pub(crate) fn coerce_query(root: &Value, pairs: Vec<(String, String)>) -> Value {
    let props = root.get("properties").and_then(Value::as_object);
    let mut out = Map::new();
    for (k, v) in pairs {
        let schema = props.and_then(|p| p.get(&k)).map(|s| resolve(root, s));
        let types = schema.map(|s| types_of(root, s)).unwrap_or_default();
        if types.iter().any(|t| t == "array") {
            let items = schema
                .and_then(|s| s.get("items"))
                .map(|i| types_of(root, resolve(root, i)))
                .unwrap_or_default();
            let entry = out.entry(k).or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(a) = entry {
                a.push(scalar(&items, v));
            }
        } else {
            out.insert(k, scalar(&types, v));
        }
    }
    Value::Object(out)
}

/// Pydantic's lax mode for the types FrameX users send: where the schema wants an integer,
/// a numeric string (`"7"`) or an integral float (`7.0`) is taken as the integer; a number
/// may come as a numeric string; a boolean as `"true"`/`"false"`/`"1"`/`"0"`/`"yes"`/`"no"`/
/// `"on"`/`"off"` or 0/1. Anything else is left for the model to accept or refuse.
pub(crate) fn lax(root: &Value, v: Value) -> Value {
    lax_at(root, root, v, 0)
}

fn lax_at(root: &Value, schema: &Value, v: Value, depth: usize) -> Value {
    if depth > 32 {
        return v;
    }
    let schema = resolve(root, schema);
    match v {
        Value::Object(mut m) => {
            for s in subschemas(root, schema) {
                if let Some(props) = s.get("properties").and_then(Value::as_object) {
                    for (k, sub) in props {
                        if let Some(slot) = m.get_mut(k) {
                            *slot = lax_at(root, sub, slot.take(), depth + 1);
                        }
                    }
                }
            }
            Value::Object(m)
        }
        Value::Array(items) => {
            let item_schema = subschemas(root, schema)
                .into_iter()
                .find_map(|s| s.get("items"));
            match item_schema {
                Some(i) => Value::Array(
                    items
                        .into_iter()
                        .map(|x| lax_at(root, i, x, depth + 1))
                        .collect(),
                ),
                None => Value::Array(items),
            }
        }
        Value::String(text) => {
            let types = types_of(root, schema);
            let has = |t: &str| types.iter().any(|x| x == t);
            if has("string") {
                return Value::String(text);
            }
            let t = text.trim();
            if has("integer") {
                if let Ok(i) = t.parse::<i64>() {
                    return i.into();
                }
                if let Some(i) = t.parse::<f64>().ok().and_then(integral) {
                    return i.into();
                }
            }
            if has("number") {
                if let Some(n) = t
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .and_then(serde_json::Number::from_f64)
                {
                    return Value::Number(n);
                }
            }
            if has("boolean") {
                match t.to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" | "on" | "t" | "y" => return Value::Bool(true),
                    "false" | "0" | "no" | "off" | "f" | "n" => return Value::Bool(false),
                    _ => {}
                }
            }
            Value::String(text)
        }
        Value::Number(n) => {
            let types = types_of(root, schema);
            let has = |t: &str| types.iter().any(|x| x == t);
            if has("integer") && !has("number") && !n.is_i64() && !n.is_u64() {
                if let Some(i) = n.as_f64().and_then(integral) {
                    return i.into();
                }
            }
            if has("boolean") && !has("integer") && !has("number") {
                match n.as_u64() {
                    Some(0) => return Value::Bool(false),
                    Some(1) => return Value::Bool(true),
                    _ => {}
                }
            }
            Value::Number(n)
        }
        other => other,
    }
}

fn integral(f: f64) -> Option<i64> {
    (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15).then_some(f as i64)
}

/// The schema and the alternatives it is made of (`anyOf`, `oneOf`, `allOf`), resolved.
fn subschemas<'a>(root: &'a Value, s: &'a Value) -> Vec<&'a Value> {
    let mut out = vec![s];
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(alts)) = s.get(key) {
            out.extend(alts.iter().map(|a| resolve(root, a)));
        }
    }
    out
}

fn resolve<'a>(root: &'a Value, s: &'a Value) -> &'a Value {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .strip_prefix('#')
            .and_then(|p| root.pointer(p))
            .unwrap_or(s),
        None => s,
    }
}

fn types_of(root: &Value, s: &Value) -> Vec<String> {
    let mut out = Vec::new();
    match s.get("type") {
        Some(Value::String(t)) => out.push(t.clone()),
        Some(Value::Array(ts)) => {
            out.extend(ts.iter().filter_map(|t| t.as_str().map(str::to_owned)))
        }
        _ => {}
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(alts)) = s.get(key) {
            for a in alts {
                out.extend(types_of(root, resolve(root, a)));
            }
        }
    }
    out
}

fn scalar(types: &[String], v: String) -> Value {
    let has = |t: &str| types.iter().any(|x| x == t);
    if has("integer") {
        if let Ok(i) = v.parse::<i64>() {
            return i.into();
        }
    }
    if has("number") {
        if let Ok(f) = v.parse::<f64>() {
            if let Some(n) = serde_json::Number::from_f64(f) {
                return Value::Number(n);
            }
        }
    }
    if has("boolean") {
        match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => return Value::Bool(true),
            "false" | "0" | "no" | "off" => return Value::Bool(false),
            _ => {}
        }
    }
    if has("object") && !has("string") {
        if let Ok(j) = serde_json::from_str::<Value>(&v) {
            return j;
        }
    }
    Value::String(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prefix_rule() {
        assert_eq!(prefixed("noslash"), "/api/v1/noslash");
        assert_eq!(prefixed("/echo"), "/api/v1/echo");
        assert_eq!(prefixed("/api/v1/echo_stream"), "/api/v1/echo_stream");
        assert_eq!(prefixed("/api/v10"), "/api/v1/api/v10");
    }

    #[derive(serde::Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Q {
        n: i64,
        f: Option<f64>,
        b: bool,
        s: String,
        v: Vec<u8>,
    }

    #[test]
    fn query_strings_become_typed_json() {
        let root = root_schema::<Q>();
        let pairs = [
            ("n", "5"),
            ("f", "1.5"),
            ("b", "true"),
            ("s", "7"),
            ("v", "1"),
            ("v", "2"),
            ("x", "y"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .to_vec();
        assert_eq!(
            coerce_query(&root, pairs),
            json!({"n": 5, "f": 1.5, "b": true, "s": "7", "v": [1, 2], "x": "y"})
        );
    }

    #[derive(serde::Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Body {
        id: i64,
        ratio: f64,
        on: bool,
        name: String,
        inner: Option<Inner>,
        list: Vec<i32>,
    }

    #[derive(serde::Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    #[test]
    fn lax_mode_takes_what_pydantic_takes() {
        let root = root_schema::<Body>();
        let v = lax(
            &root,
            json!({"id": "7", "ratio": "1.5", "on": "yes", "name": 5, "inner": {"n": 95335.0}, "list": ["1", 2.0]}),
        );
        assert_eq!(
            v,
            json!({"id": 7, "ratio": 1.5, "on": true, "name": 5, "inner": {"n": 95335}, "list": [1, 2]})
        );
        // Not integral, not numeric: left for the model to refuse.
        assert_eq!(lax(&root, json!({"id": 7.5}))["id"], 7.5);
        assert_eq!(lax(&root, json!({"id": "x"}))["id"], "x");
    }

    #[test]
    fn camel_type_names() {
        assert_eq!(camel("echo"), "Echo");
        assert_eq!(camel("my_cool-plugin"), "MyCoolPlugin");
    }
}
