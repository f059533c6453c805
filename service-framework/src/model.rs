//! What a service declares: its config model, connection models, hooks and `main`.
//!
//! Typed Rust values are the schema. A handler is an async fn taking its typed args and a
//! [`Ctx`]; from the same types come validation of every inbound message (a missing or
//! mistyped argument is an error reply naming the field) and the JSON Schema that
//! `describe` prints. `serde_json::Value` as the args type is the dynamic escape hatch.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use schemars::{JsonSchema, Schema};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
use sf_connections::handler::BoxFuture;
use sf_connections::spans::{self, FinishedSpan, SpanKind};
use sf_connections::wire::{self, Request, TraceParent};
use sf_connections::{RawHandler, RequestMeta, WireError};

use crate::addresses::AddressesFile;
use crate::config::ConfigModel;
use crate::context::Ctx;
use crate::error::ServiceError;
use crate::handle;

/// The kinds of connection, with the original's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ConnectionKind {
    /// In: answers requests (ROUTER; Python REQ peers welcome).
    Replyer,
    /// In: receives publishes.
    Subscriber,
    /// In: receives pushed work (PUSH/PULL, beyond the original).
    Puller,
    /// Out: sends requests and waits for replies.
    Requester,
    /// Out: publishes.
    Publisher,
    /// Out: pushes work to pullers.
    Pusher,
    /// Out: calls a local async function (the original's `external_request`).
    ExternalTarget,
}

impl ConnectionKind {
    /// True for in-connections.
    pub fn is_inbound(self) -> bool {
        matches!(
            self,
            ConnectionKind::Replyer | ConnectionKind::Subscriber | ConnectionKind::Puller
        )
    }

    /// The key its address has in addresses.json (`None`: needs no address).
    pub fn address_key(self) -> Option<&'static str> {
        match self {
            ConnectionKind::Replyer => Some("replyer"),
            ConnectionKind::Subscriber => Some("subscriber"),
            ConnectionKind::Puller => Some("puller"),
            ConnectionKind::Requester => Some("requester"),
            ConnectionKind::Publisher => Some("publisher"),
            ConnectionKind::Pusher => Some("pusher"),
            ConnectionKind::ExternalTarget => None,
        }
    }

    /// Creation arguments this kind understands.
    pub fn creation_keys(self) -> &'static [&'static str] {
        match self {
            ConnectionKind::Replyer => &[
                "max_message_bytes",
                "max_concurrency",
                // Served through a broker only: the MDP heartbeat (the broker's own).
                "heartbeat_interval_s",
                "heartbeat_liveness",
            ],
            ConnectionKind::Subscriber => {
                &["topic", "is_binder", "credit_window", "max_message_bytes"]
            }
            ConnectionKind::Puller => &["is_binder", "max_message_bytes", "acked", "concurrency"],
            ConnectionKind::Requester => &["timeout_s", "retries", "max_message_bytes"],
            ConnectionKind::Publisher => &[
                "topic",
                "is_x_pub",
                "credit_window",
                "credit_stall_timeout_s",
                "wait_after_creation_s",
            ],
            ConnectionKind::Pusher => &[
                "is_binder",
                "send_timeout_s",
                "acked",
                "ack_timeout_s",
                "window",
            ],
            ConnectionKind::ExternalTarget => &[],
        }
    }

    /// The snake_case name (`"replyer"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ConnectionKind::Replyer => "replyer",
            ConnectionKind::Subscriber => "subscriber",
            ConnectionKind::Puller => "puller",
            ConnectionKind::Requester => "requester",
            ConnectionKind::Publisher => "publisher",
            ConnectionKind::Pusher => "pusher",
            ConnectionKind::ExternalTarget => "external_target",
        }
    }
}

/// Builds the raw request handler of a replyer or external target from the service's context.
pub(crate) type MakeRequestHandler = Arc<dyn Fn(Ctx) -> RawHandler + Send + Sync>;

/// Handles one message (subscriber, puller): the envelope bytes and the service's context.
pub(crate) type MessageHandler =
    Arc<dyn Fn(Bytes, Ctx) -> BoxFuture<Result<(), ServiceError>> + Send + Sync>;

#[derive(Clone)]
pub(crate) enum Handler {
    Request(MakeRequestHandler),
    Message(MessageHandler),
}

/// One declared connection.
#[derive(Clone)]
pub struct ConnectionModel {
    /// Its name (the key in addresses.json and in `ctx.request(name, ...)`).
    pub name: String,
    /// Its kind.
    pub kind: ConnectionKind,
    /// Creation arguments (`topic`, `is_x_pub`, `timeout_s`, ...); `setup_connection_models`
    /// may change them.
    pub creation: Map<String, Value>,
    /// JSON Schema of the args.
    pub args_schema: Schema,
    /// JSON Schema of the return args (replyers, requesters, external targets).
    pub return_schema: Option<Schema>,
    pub(crate) handler: Option<Handler>,
}

impl std::fmt::Debug for ConnectionModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionModel")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("creation", &self.creation)
            .finish_non_exhaustive()
    }
}

impl ConnectionModel {
    pub(crate) fn creation_f64(&self, key: &str) -> Option<f64> {
        self.creation.get(key).and_then(Value::as_f64)
    }
    pub(crate) fn creation_u64(&self, key: &str) -> Option<u64> {
        self.creation.get(key).and_then(Value::as_u64)
    }
    pub(crate) fn creation_bool(&self, key: &str) -> bool {
        self.creation
            .get(key)
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
    pub(crate) fn creation_str(&self, key: &str) -> String {
        self.creation
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }
}

/// A declared connection or state: what [`Models`] needs to file and find it.
pub trait Model {
    /// Its name.
    fn name(&self) -> &str;
    /// True for the in side.
    fn is_inbound(&self) -> bool;
}

impl Model for ConnectionModel {
    fn name(&self) -> &str {
        &self.name
    }
    fn is_inbound(&self) -> bool {
        self.kind.is_inbound()
    }
}

/// Declared models (connections or states), by side.
#[derive(Debug, Clone)]
pub struct Models<M> {
    /// The in side (replyers, subscribers, pullers; in-states).
    pub inbound: Vec<M>,
    /// The out side (requesters, publishers, pushers, external targets; out-states).
    pub outbound: Vec<M>,
}

impl<M> Default for Models<M> {
    fn default() -> Self {
        Models {
            inbound: Vec::new(),
            outbound: Vec::new(),
        }
    }
}

impl<M: Model> Models<M> {
    /// Looks a model up by name on either side.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut M> {
        self.inbound
            .iter_mut()
            .chain(self.outbound.iter_mut())
            .find(|m| m.name() == name)
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &M> {
        self.inbound.iter().chain(self.outbound.iter())
    }

    fn push(&mut self, model: M) {
        if model.is_inbound() {
            self.inbound.push(model);
        } else {
            self.outbound.push(model);
        }
    }
}

/// All declared connections, by side.
pub type ConnectionModels = Models<ConnectionModel>;

/// The kinds of state, with the original's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StateKind {
    /// In: the last whole state a `full_update_out` published.
    FullUpdateIn,
    /// In: follows a `delta_update_out` (snapshot at start, deltas, resync after gaps).
    DeltaUpdateIn,
    /// Out: publishes the whole state on every change.
    FullUpdateOut,
    /// Out: publishes numbered snapshots and deltas, answers snapshot requests.
    DeltaUpdateOut,
}

impl StateKind {
    /// True for in-states.
    pub fn is_inbound(self) -> bool {
        matches!(self, StateKind::FullUpdateIn | StateKind::DeltaUpdateIn)
    }

    /// The socket names its addresses.json entry needs.
    pub fn address_keys(self) -> &'static [&'static str] {
        match self {
            StateKind::FullUpdateIn => &["subscriber"],
            StateKind::DeltaUpdateIn => &["subscriber", "requester"],
            StateKind::FullUpdateOut => &["publisher"],
            StateKind::DeltaUpdateOut => &["publisher", "replyer"],
        }
    }

    /// Creation arguments it understands.
    pub fn creation_keys(self) -> &'static [&'static str] {
        if self.is_inbound() {
            &["topic", "is_binder", "resync_timeout_s"]
        } else {
            &[
                "topic",
                "is_x_pub",
                "wait_after_creation_s",
                "snapshot_interval_s",
            ]
        }
    }

    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            StateKind::FullUpdateIn => "full_update_in",
            StateKind::DeltaUpdateIn => "delta_update_in",
            StateKind::FullUpdateOut => "full_update_out",
            StateKind::DeltaUpdateOut => "delta_update_out",
        }
    }
}

/// Called with an in-state's new value (changes may be coalesced: the handler always sees
/// the latest consistent state).
pub(crate) type StateHandler =
    Arc<dyn Fn(sf_states::StateView, Ctx) -> BoxFuture<Result<(), ServiceError>> + Send + Sync>;

/// One declared state.
#[derive(Clone)]
pub struct StateModel {
    /// Its name (the key in addresses.json `states`).
    pub name: String,
    /// Its kind.
    pub kind: StateKind,
    /// Creation arguments (`topic`, `is_x_pub`, `is_binder`, `resync_timeout_s`).
    pub creation: Map<String, Value>,
    /// JSON Schema of the state's value.
    pub schema: Schema,
    pub(crate) on_change: Option<StateHandler>,
}

impl StateModel {
    /// The state's creation arguments as the states crate's options (security apart): the
    /// one place they are read.
    pub(crate) fn state_options(&self) -> sf_states::StateOptions {
        let f64_of = |k: &str| self.creation.get(k).and_then(Value::as_f64);
        let bool_of = |k: &str| self.creation.get(k).and_then(Value::as_bool) == Some(true);
        sf_states::StateOptions {
            topic: self
                .creation
                .get("topic")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            is_x_pub: bool_of("is_x_pub"),
            is_binder: bool_of("is_binder"),
            resync_timeout: f64_of("resync_timeout_s")
                .map(|s| std::time::Duration::from_secs_f64(s.max(0.001))),
            snapshot_interval: f64_of("snapshot_interval_s")
                .map(|s| std::time::Duration::from_secs_f64(s.max(0.0))),
            wait_after_creation: f64_of("wait_after_creation_s")
                .map(|s| std::time::Duration::from_secs_f64(s.clamp(0.0, 60.0))),
            ..Default::default()
        }
    }
}

impl std::fmt::Debug for StateModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateModel")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("creation", &self.creation)
            .finish_non_exhaustive()
    }
}

impl Model for StateModel {
    fn name(&self) -> &str {
        &self.name
    }
    fn is_inbound(&self) -> bool {
        self.kind.is_inbound()
    }
}

/// All declared states, by side.
pub type StateModels = Models<StateModel>;

type SetupStates = Box<
    dyn FnOnce(&mut StateModels, &Map<String, Value>) -> Result<(), ServiceError> + Send + Sync,
>;
type SetupConfig =
    Box<dyn FnOnce(Map<String, Value>) -> Result<Map<String, Value>, ServiceError> + Send + Sync>;
type SetupAddresses = Box<
    dyn FnOnce(AddressesFile, &Map<String, Value>) -> Result<AddressesFile, ServiceError>
        + Send
        + Sync,
>;
type SetupConnections = Box<
    dyn FnOnce(&mut ConnectionModels, &Map<String, Value>) -> Result<(), ServiceError>
        + Send
        + Sync,
>;
pub(crate) type CtxHook = Arc<dyn Fn(Ctx) -> BoxFuture<Result<(), ServiceError>> + Send + Sync>;

/// The optional hooks, run in the original's order (see the runtime).
#[derive(Default)]
pub(crate) struct Hooks {
    pub setup_config: Option<SetupConfig>,
    pub setup_addresses: Option<SetupAddresses>,
    pub setup_connection_models: Option<SetupConnections>,
    pub setup_state_models: Option<SetupStates>,
    pub init_function: Option<CtxHook>,
    pub sigint_handler: Option<CtxHook>,
    pub sigterm_handler: Option<CtxHook>,
}

/// A service: what it is called, what it reads, what it listens to and sends to.
pub struct ServiceDef {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) config: ConfigModel,
    pub(crate) connections: ConnectionModels,
    pub(crate) states: StateModels,
    pub(crate) hooks: Hooks,
    pub(crate) main: Option<CtxHook>,
    /// Declaration mistakes (an option for an undeclared name, a name declared twice),
    /// reported when the service starts, before any socket is made.
    pub(crate) problems: Vec<String>,
    /// Parses the checked config into the declared type, once, at start.
    pub(crate) config_parser: Option<crate::config::TypedParser>,
    /// Free key/value pairs shown by the control endpoint's `info` (team, repository...).
    pub(crate) metadata: std::collections::BTreeMap<String, String>,
    /// The service's own version, shown by `ping` and `info`.
    pub(crate) version: Option<String>,
    /// The service's own figures, shown under `data` by the control endpoint's `stats`.
    pub(crate) stats_data: Option<StatsData>,
}

/// A service's own figures for `stats` (see [`ServiceDef::stats_data`]).
pub(crate) type StatsData = Arc<dyn Fn() -> Map<String, Value> + Send + Sync>;

impl std::fmt::Debug for ServiceDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceDef")
            .field("name", &self.name)
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

fn boxed<F, Fut, T>(f: F) -> Arc<dyn Fn(Ctx) -> BoxFuture<T> + Send + Sync>
where
    F: Fn(Ctx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    Arc::new(move |ctx| Box::pin(f(ctx)))
}

impl ServiceDef {
    /// A service called `name`, declaring nothing yet.
    pub fn new(name: impl Into<String>) -> Self {
        ServiceDef {
            name: name.into(),
            description: String::new(),
            config: ConfigModel::default(),
            connections: ConnectionModels::default(),
            states: StateModels::default(),
            hooks: Hooks::default(),
            main: None,
            problems: Vec::new(),
            config_parser: None,
            metadata: std::collections::BTreeMap::new(),
            version: None,
            stats_data: None,
        }
    }

    /// A metadata pair shown by the control endpoint's `info` (e.g. `("team", "pricing")`).
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The service's version, shown by `ping`, `info` and `service-framework ls` (default:
    /// the framework's version).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// The service's own figures, asked for by each `stats` request and shown under its
    /// `data` key: a closure reading the service's counters (an `Arc` of atomics it shares
    /// with its handlers, say). It runs on the control endpoint's task, so keep it quick.
    pub fn stats_data<F>(mut self, f: F) -> Self
    where
        F: Fn() -> Map<String, Value> + Send + Sync + 'static,
    {
        self.stats_data = Some(Arc::new(f));
        self
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A one-line description for `describe`.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = text.into();
        self
    }

    /// Declares the config model: non-`Option` fields are required keys, `Option` (or
    /// `#[serde(default)]`) fields optional. The config is parsed into `C` once, at start (a
    /// value that does not fit stops the start with exit code 2, naming the key and its
    /// source); handlers read it with `ctx.config::<C>()`, which cannot fail.
    pub fn config<C: JsonSchema + DeserializeOwned + Send + Sync + 'static>(mut self) -> Self {
        self.config = ConfigModel::from_schema(schemars::schema_for!(C));
        self.config_parser = Some(crate::config::typed_parser::<C>());
        self
    }

    /// In-connection: a replyer calling `f` for each request; its result is the reply.
    pub fn replyer<A, R, F, Fut>(self, conn: impl Into<handle::Replyer<A, R>>, f: F) -> Self
    where
        A: DeserializeOwned + JsonSchema + Send + 'static,
        R: Serialize + JsonSchema + Send + 'static,
        F: Fn(A, Ctx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, ServiceError>> + Send + 'static,
    {
        let conn = conn.into();
        let make = request_handler(conn.name(), f);
        self.push(
            conn.name(),
            conn.creation(),
            ConnectionKind::Replyer,
            schemars::schema_for!(A),
            Some(schemars::schema_for!(R)),
            Some(Handler::Request(make)),
        )
    }

    /// In-connection: a subscriber calling `f` for each message, in arrival order (the topic
    /// and the other options come with the handle).
    pub fn subscriber<A, F, Fut>(self, conn: impl Into<handle::Subscriber<A>>, f: F) -> Self
    where
        A: DeserializeOwned + JsonSchema + Send + 'static,
        F: Fn(A, Ctx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ServiceError>> + Send + 'static,
    {
        let conn = conn.into();
        self.push(
            conn.name(),
            conn.creation(),
            ConnectionKind::Subscriber,
            schemars::schema_for!(A),
            None,
            Some(Handler::Message(message_handler(conn.name(), f))),
        )
    }

    /// In-connection: a puller calling `f` for each pushed message.
    pub fn puller<A, F, Fut>(self, conn: impl Into<handle::Puller<A>>, f: F) -> Self
    where
        A: DeserializeOwned + JsonSchema + Send + 'static,
        F: Fn(A, Ctx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ServiceError>> + Send + 'static,
    {
        let conn = conn.into();
        self.push(
            conn.name(),
            conn.creation(),
            ConnectionKind::Puller,
            schemars::schema_for!(A),
            None,
            Some(Handler::Message(message_handler(conn.name(), f))),
        )
    }

    /// Out-connection: a requester sending `A` and expecting `R`.
    pub fn requester<A: JsonSchema, R: JsonSchema>(
        self,
        conn: impl Into<handle::Requester<A, R>>,
    ) -> Self {
        let conn = conn.into();
        self.push(
            conn.name(),
            conn.creation(),
            ConnectionKind::Requester,
            schemars::schema_for!(A),
            Some(schemars::schema_for!(R)),
            None,
        )
    }

    /// Out-connection: a publisher of `A` (its topic and options come with the handle).
    pub fn publisher<A: JsonSchema>(self, conn: impl Into<handle::Publisher<A>>) -> Self {
        let conn = conn.into();
        self.push(
            conn.name(),
            conn.creation(),
            ConnectionKind::Publisher,
            schemars::schema_for!(A),
            None,
            None,
        )
    }

    /// Out-connection: a pusher of `A`.
    pub fn pusher<A: JsonSchema>(self, conn: impl Into<handle::Pusher<A>>) -> Self {
        let conn = conn.into();
        self.push(
            conn.name(),
            conn.creation(),
            ConnectionKind::Pusher,
            schemars::schema_for!(A),
            None,
            None,
        )
    }

    /// Out-connection: an external target, a local async fn called with validated args.
    pub fn external_target<A, R, F, Fut>(
        self,
        conn: impl Into<handle::ExternalTarget<A, R>>,
        f: F,
    ) -> Self
    where
        A: DeserializeOwned + JsonSchema + Send + 'static,
        R: Serialize + JsonSchema + Send + 'static,
        F: Fn(A, Ctx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, ServiceError>> + Send + 'static,
    {
        let conn = conn.into();
        let make = request_handler(conn.name(), f);
        self.push(
            conn.name(),
            conn.creation(),
            ConnectionKind::ExternalTarget,
            schemars::schema_for!(A),
            Some(schemars::schema_for!(R)),
            Some(Handler::Request(make)),
        )
    }

    /// Sets a creation argument of connection `conn` by name (the dynamic form of the
    /// handle's options). An undeclared connection or a key its kind does not know stops the
    /// start with an error naming what is allowed.
    pub fn option(mut self, conn: &str, key: &str, value: impl Into<Value>) -> Self {
        match self.connections.get_mut(conn) {
            Some(c) => {
                c.creation.insert(key.to_owned(), value.into());
            }
            None => {
                let names = names_of(self.connections.all().map(|c| c.name.as_str()));
                self.problems.push(format!(
                    "option {key:?} set for connection {conn:?}, which is not declared \
                     (declared: {names})"
                ));
            }
        }
        self
    }

    fn push(
        mut self,
        name: &str,
        creation: Map<String, Value>,
        kind: ConnectionKind,
        args: Schema,
        ret: Option<Schema>,
        handler: Option<Handler>,
    ) -> Self {
        if self.connections.all().any(|c| c.name == name) {
            self.problems
                .push(format!("connection {name:?} is declared twice"));
        }
        let model = ConnectionModel {
            name: name.to_owned(),
            kind,
            creation,
            args_schema: args,
            return_schema: ret,
            handler,
        };
        self.connections.push(model);
        self
    }

    /// In-state fed by a `full_update_out`: `ctx.state(&handle)` reads it.
    pub fn full_update_in<T: JsonSchema>(self, state: impl Into<handle::FullStateIn<T>>) -> Self {
        let s = state.into();
        self.push_state(
            s.name(),
            s.creation(),
            StateKind::FullUpdateIn,
            schemars::schema_for!(T),
        )
    }

    /// In-state following a `delta_update_out`: `ctx.state(&handle)` reads it.
    pub fn delta_update_in<T: JsonSchema>(self, state: impl Into<handle::DeltaStateIn<T>>) -> Self {
        let s = state.into();
        self.push_state(
            s.name(),
            s.creation(),
            StateKind::DeltaUpdateIn,
            schemars::schema_for!(T),
        )
    }

    /// Out-state published whole: `ctx.set_state(&handle, &value)` replaces and publishes it.
    pub fn full_update_out<T: JsonSchema>(self, state: impl Into<handle::FullStateOut<T>>) -> Self {
        let s = state.into();
        self.push_state(
            s.name(),
            s.creation(),
            StateKind::FullUpdateOut,
            schemars::schema_for!(T),
        )
    }

    /// Out-state published as numbered deltas: `ctx.update_state(&handle, &changes)` (nil
    /// deletes a key) and `ctx.snapshot_state(&handle, &whole)`.
    pub fn delta_update_out<T: JsonSchema>(
        self,
        state: impl Into<handle::DeltaStateOut<T>>,
    ) -> Self {
        let s = state.into();
        self.push_state(
            s.name(),
            s.creation(),
            StateKind::DeltaUpdateOut,
            schemars::schema_for!(T),
        )
    }

    /// Calls `f` with the in-state's new value whenever it changes (changes may be
    /// coalesced; `f` always sees the latest consistent state).
    pub fn on_state_change<T, F, Fut>(mut self, state: &impl handle::ReadsState<T>, f: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(T, Ctx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ServiceError>> + Send + 'static,
    {
        let name = state.state_name().to_owned();
        let f = Arc::new(f);
        let state_name = name.clone();
        let handler: StateHandler = Arc::new(move |view: sf_states::StateView, ctx: Ctx| {
            let f = f.clone();
            let state_name = state_name.clone();
            Box::pin(async move {
                let value: T = sf_states::from_state_map(&view.state)
                    .map_err(|e| ServiceError::internal(format!("state {state_name:?}: {e}")))?;
                f(value, ctx).await
            })
        });
        match self.states.get_mut(&name) {
            Some(s) if s.kind.is_inbound() => s.on_change = Some(handler),
            _ => {
                let names = names_of(self.states.inbound.iter().map(|s| s.name.as_str()));
                self.problems.push(format!(
                    "on_state_change for {name:?}, which is not a declared in-state \
                     (declared: {names})"
                ));
            }
        }
        self
    }

    /// Sets a creation argument of state `state` by name (the dynamic form of the handle's
    /// options); an undeclared state stops the start with an error.
    pub fn state_option(mut self, state: &str, key: &str, value: impl Into<Value>) -> Self {
        match self.states.get_mut(state) {
            Some(s) => {
                s.creation.insert(key.to_owned(), value.into());
            }
            None => {
                let names = names_of(self.states.all().map(|s| s.name.as_str()));
                self.problems.push(format!(
                    "option {key:?} set for state {state:?}, which is not declared \
                     (declared: {names})"
                ));
            }
        }
        self
    }

    fn push_state(
        mut self,
        name: &str,
        creation: Map<String, Value>,
        kind: StateKind,
        schema: Schema,
    ) -> Self {
        if self.states.all().any(|s| s.name == name) {
            self.problems
                .push(format!("state {name:?} is declared twice"));
        }
        let model = StateModel {
            name: name.to_owned(),
            kind,
            creation,
            schema,
            on_change: None,
        };
        self.states.push(model);
        self
    }

    /// Hook: adjusts state models (creation arguments) before the states are built.
    pub fn setup_state_models<F>(mut self, f: F) -> Self
    where
        F: FnOnce(&mut StateModels, &Map<String, Value>) -> Result<(), ServiceError>
            + Send
            + Sync
            + 'static,
    {
        self.hooks.setup_state_models = Some(Box::new(f));
        self
    }

    /// `main`: makes this a leading-edge service in main mode (`-m`). Inbound connections
    /// keep being served while it runs; the service stops when it returns.
    pub fn main<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Ctx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ServiceError>> + Send + 'static,
    {
        self.main = Some(boxed(f));
        self
    }

    /// Hook: adjusts the merged config before it is validated; its return replaces it.
    pub fn setup_config<F>(mut self, f: F) -> Self
    where
        F: FnOnce(Map<String, Value>) -> Result<Map<String, Value>, ServiceError>
            + Send
            + Sync
            + 'static,
    {
        self.hooks.setup_config = Some(Box::new(f));
        self
    }

    /// Hook: adjusts the addresses (given the validated config).
    pub fn setup_addresses<F>(mut self, f: F) -> Self
    where
        F: FnOnce(AddressesFile, &Map<String, Value>) -> Result<AddressesFile, ServiceError>
            + Send
            + Sync
            + 'static,
    {
        self.hooks.setup_addresses = Some(Box::new(f));
        self
    }

    /// Hook: adjusts connection models (creation arguments) before the sockets are built.
    pub fn setup_connection_models<F>(mut self, f: F) -> Self
    where
        F: FnOnce(&mut ConnectionModels, &Map<String, Value>) -> Result<(), ServiceError>
            + Send
            + Sync
            + 'static,
    {
        self.hooks.setup_connection_models = Some(Box::new(f));
        self
    }

    /// Hook: runs once the connections are up, before `main` or the service loop.
    pub fn init_function<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Ctx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ServiceError>> + Send + 'static,
    {
        self.hooks.init_function = Some(boxed(f));
        self
    }

    /// Hook: runs on SIGINT, before the graceful stop.
    pub fn sigint_handler<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Ctx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ServiceError>> + Send + 'static,
    {
        self.hooks.sigint_handler = Some(boxed(f));
        self
    }

    /// Hook: runs on SIGTERM, before the graceful stop.
    pub fn sigterm_handler<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Ctx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ServiceError>> + Send + 'static,
    {
        self.hooks.sigterm_handler = Some(boxed(f));
        self
    }

    /// The models as JSON: config schema, every connection with its kind, creation
    /// arguments, args and return schemas. What `describe` prints.
    pub fn describe(&self) -> Value {
        let side = |conns: &[ConnectionModel]| -> Value {
            let mut m = Map::new();
            for c in conns {
                m.insert(
                    c.name.clone(),
                    json!({
                        "connection_type": c.kind,
                        "address_key": c.kind.address_key(),
                        "creation_arguments": c.creation,
                        "args": c.args_schema,
                        "return_args": c.return_schema,
                    }),
                );
            }
            Value::Object(m)
        };
        let states = |list: &[StateModel]| -> Value {
            let mut m = Map::new();
            for s in list {
                m.insert(
                    s.name.clone(),
                    json!({
                        "state_type": s.kind,
                        "address_keys": s.kind.address_keys(),
                        "creation_arguments": s.creation,
                        "state": s.schema,
                    }),
                );
            }
            Value::Object(m)
        };
        json!({
            "name": self.name,
            "description": self.description,
            "main_mode": self.main.is_some(),
            "config": self.config.schema(),
            "connections": {"in": side(&self.connections.inbound), "out": side(&self.connections.outbound)},
            "states": {"in": states(&self.states.inbound), "out": states(&self.states.outbound)},
        })
    }
}

fn names_of<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let mut v: Vec<&str> = names.collect();
    v.sort_unstable();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn request_handler<A, R, F, Fut>(name: &str, f: F) -> MakeRequestHandler
where
    A: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(A, Ctx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, ServiceError>> + Send + 'static,
{
    let f = Arc::new(f);
    let name: Arc<str> = name.into();
    Arc::new(move |base: Ctx| {
        let (f, name) = (f.clone(), name.clone());
        sf_connections::typed(move |args: A, meta: RequestMeta| {
            let ctx = base.for_message(meta.workflow_id, meta.trace);
            let id = ctx.workflow_id().clone();
            let span = spans::enabled().then(|| {
                let service = ctx.service_name().to_owned();
                (service, name.clone(), SystemTime::now())
            });
            let fut =
                crate::logging::in_workflow(id, crate::logging::in_trace(meta.trace, f(args, ctx)));
            async move {
                let result = fut.await;
                if let Some((service, name, start)) = span {
                    let error = result.as_ref().err().map(|e| e.to_string());
                    spans::record(finished(
                        service,
                        &name,
                        SpanKind::Server,
                        (meta.trace, meta.parent),
                        start,
                        error,
                    ));
                }
                result.map_err(WireError::from)
            }
        })
    })
}

/// A handler's span, ended now.
fn finished(
    service: String,
    connection: &str,
    kind: SpanKind,
    (trace, parent): (TraceParent, Option<TraceParent>),
    start: SystemTime,
    error: Option<String>,
) -> FinishedSpan {
    FinishedSpan {
        name: format!("{service}.{connection}"),
        kind,
        trace,
        parent,
        service,
        start,
        end: SystemTime::now(),
        error,
        attributes: vec![("messaging.destination.name", connection.to_owned())],
    }
}

fn message_handler<A, F, Fut>(name: &str, f: F) -> MessageHandler
where
    A: DeserializeOwned + Send + 'static,
    F: Fn(A, Ctx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), ServiceError>> + Send + 'static,
{
    let f = Arc::new(f);
    let name: Arc<str> = name.into();
    Arc::new(move |body: Bytes, base: Ctx| {
        let (f, name) = (f.clone(), name.clone());
        Box::pin(async move {
            let msg: Request<A> = wire::decode_with_path(&body).map_err(|e| {
                let (_, err) = sf_connections::handler::decode_failure(&body, e.to_string());
                ServiceError::with_code(err.code, err.message)
            })?;
            // The message's span: a child of its trace context, or a new trace.
            let trace = msg
                .traceparent
                .map_or_else(TraceParent::new_root, |parent| parent.child());
            let ctx = base.for_message(msg.workflow_id, trace);
            let id = ctx.workflow_id().clone();
            let span = spans::enabled().then(|| (ctx.service_name().to_owned(), SystemTime::now()));
            let result =
                crate::logging::in_workflow(id, crate::logging::in_trace(trace, f(msg.args, ctx)))
                    .await;
            if let Some((service, start)) = span {
                let error = result.as_ref().err().map(|e| e.to_string());
                spans::record(finished(
                    service,
                    &name,
                    SpanKind::Consumer,
                    (trace, msg.traceparent),
                    start,
                    error,
                ));
            }
            result
        })
    })
}
