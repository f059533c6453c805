//! The context handed to handlers, hooks and `main`: the original's `to_send`, `states` and
//! `config`, as typed methods.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use sf_connections::{ExternalTarget, Publisher, Pusher, Requester, TraceParent, WorkflowId};
use tokio_util::sync::CancellationToken;

use crate::error::ServiceError;
use crate::handle::{self, Calls, ReadsState};

/// An out-connection as the context holds it.
#[derive(Debug, Clone)]
pub(crate) enum Outbound {
    Requester(Requester),
    Publisher(Publisher),
    Pusher(Pusher),
    External(ExternalTarget),
}

/// An out-state as the context holds it.
#[derive(Debug, Clone)]
pub(crate) enum OutState {
    Full(sf_states::FullUpdateOut),
    Delta(sf_states::DeltaUpdateOut),
}

pub(crate) struct Shared {
    pub service: String,
    pub states_in: HashMap<String, tokio::sync::watch::Receiver<sf_states::StateView>>,
    pub states_out: HashMap<String, OutState>,
    pub config: Map<String, Value>,
    /// The config parsed at start into the declared type.
    pub typed_config: Option<crate::config::TypedConfig>,
    /// Other types `try_config` was asked for, parsed once each.
    pub typed_cache: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    pub outbound: HashMap<String, Outbound>,
    pub stop: CancellationToken,
}

/// What a handler, hook or `main` works with. Cheap to clone.
#[derive(Clone)]
pub struct Ctx {
    shared: Arc<Shared>,
    incoming: WorkflowId,
    /// The span serving the incoming message (`None` in `main` and hooks).
    trace: Option<TraceParent>,
    sends: Arc<AtomicU64>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("service", &self.shared.service)
            .field("workflow_id", &self.incoming)
            .field("trace", &self.trace)
            .finish()
    }
}

impl Ctx {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Ctx {
            shared,
            incoming: WorkflowId::None,
            trace: None,
            sends: Arc::default(),
        }
    }

    /// A context for one inbound message served in the span `trace`: its sends continue that
    /// message's workflow and trace.
    pub(crate) fn for_message(&self, workflow_id: WorkflowId, trace: TraceParent) -> Self {
        Ctx {
            shared: self.shared.clone(),
            incoming: workflow_id,
            trace: Some(trace),
            sends: Arc::default(),
        }
    }

    /// The W3C trace context of the span serving the message being handled: the incoming
    /// message's trace id (a new trace when it carried none) with a span id of this hop.
    /// `None` in `main` and hooks, where every send starts a trace of its own.
    pub fn trace(&self) -> Option<TraceParent> {
        self.trace
    }

    /// The trace id of the message being handled, as 32 hex characters (what its log lines
    /// print as `trace_id=...`); `None` in `main` and hooks.
    pub fn trace_id(&self) -> Option<String> {
        self.trace.map(|t| t.trace_id_hex().to_string())
    }

    /// The `traceparent` the next send carries: the handler's span as the parent, or, in
    /// `main` and hooks, the root of a new trace.
    pub fn next_traceparent(&self) -> TraceParent {
        self.trace.unwrap_or_else(TraceParent::new_root)
    }

    /// The service's name.
    pub fn service_name(&self) -> &str {
        &self.shared.service
    }

    /// The workflow id of the message being handled (`None` in `main` and hooks).
    pub fn workflow_id(&self) -> &WorkflowId {
        &self.incoming
    }

    /// The id the next send carries, as the original numbers them: inside a handler the first
    /// send reuses the incoming id and later ones are `{id}_1`, `{id}_2`...; in `main` (no
    /// incoming id) every send gets a fresh UUID.
    pub fn next_workflow_id(&self) -> WorkflowId {
        if self.incoming.is_none() {
            return WorkflowId::new_random();
        }
        let n = self.sends.fetch_add(1, Ordering::Relaxed);
        self.incoming.derived(n)
    }

    /// The config as the type declared with `ServiceDef::config::<C>()`, parsed and checked
    /// once when the service started.
    ///
    /// # Panics
    /// If `C` is not the declared type (a bug in the service, found by its first test): use
    /// [`try_config`](Self::try_config) to read the config as some other type.
    pub fn config<C: Send + Sync + 'static>(&self) -> Arc<C> {
        match self.shared.typed_config.clone().map(|c| c.downcast::<C>()) {
            Some(Ok(c)) => c,
            _ => panic!(
                "ctx.config::<{}>(): the service declared no config of this type \
                 (ServiceDef::config::<{0}>())",
                std::any::type_name::<C>()
            ),
        }
    }

    /// The config as any type its keys deserialize into (parsed once per type).
    pub fn try_config<C: DeserializeOwned + Send + Sync + 'static>(
        &self,
    ) -> Result<Arc<C>, ServiceError> {
        if let Some(Ok(c)) = self.shared.typed_config.clone().map(|c| c.downcast::<C>()) {
            return Ok(c);
        }
        let mut cache = self.shared.typed_cache.lock().expect("config cache lock");
        if let Some(hit) = cache.get(&TypeId::of::<C>()) {
            return Ok(hit
                .clone()
                .downcast::<C>()
                .expect("cached under its own TypeId"));
        }
        let parsed: Arc<C> = Arc::new(
            serde_json::from_value(Value::Object(self.shared.config.clone())).map_err(|e| {
                ServiceError::internal(format!("config does not fit the requested type: {e}"))
            })?,
        );
        cache.insert(TypeId::of::<C>(), parsed.clone());
        Ok(parsed)
    }

    /// The config as JSON.
    pub fn config_value(&self) -> &Map<String, Value> {
        &self.shared.config
    }

    /// True once the service is stopping: long-running work should wind down.
    pub fn is_stopping(&self) -> bool {
        self.shared.stop.is_cancelled()
    }

    /// Resolves when the service starts stopping.
    pub async fn stopping(&self) {
        self.shared.stop.cancelled().await
    }

    /// Asks the service to stop gracefully (as a signal would).
    pub fn request_stop(&self) {
        self.shared.stop.cancel();
    }

    fn outbound(&self, name: &str) -> Result<&Outbound, ServiceError> {
        lookup(&self.shared.outbound, "out-connection", name)
    }

    /// An in-state as a typed value (a consistent snapshot of it). Readable from every
    /// handler, hook and `main`.
    pub fn state<T: DeserializeOwned>(
        &self,
        state: &impl ReadsState<T>,
    ) -> Result<T, ServiceError> {
        let name = state.state_name();
        let view = self.state_value(name)?;
        sf_states::from_state_map(&view.state)
            .map_err(|e| ServiceError::internal(format!("state {name:?}: {e}")))
    }

    /// An in-state as its map and number.
    pub fn state_view<T>(
        &self,
        state: &impl ReadsState<T>,
    ) -> Result<sf_states::StateView, ServiceError> {
        self.state_value(state.state_name())
    }

    /// A receiver that wakes on every change of an in-state.
    pub fn state_watch<T>(
        &self,
        state: &impl ReadsState<T>,
    ) -> Result<tokio::sync::watch::Receiver<sf_states::StateView>, ServiceError> {
        self.state_watch_named(state.state_name())
    }

    /// In-state `name` (known only at run time) as its map and number.
    pub fn state_value(&self, name: &str) -> Result<sf_states::StateView, ServiceError> {
        Ok(self.state_watch_named(name)?.borrow().clone())
    }

    fn state_watch_named(
        &self,
        name: &str,
    ) -> Result<tokio::sync::watch::Receiver<sf_states::StateView>, ServiceError> {
        lookup(&self.shared.states_in, "in-state", name).cloned()
    }

    fn out_state(&self, name: &str) -> Result<&OutState, ServiceError> {
        lookup(&self.shared.states_out, "out-state", name)
    }

    /// Replaces a whole-state out-state and publishes it.
    pub async fn set_state<T: Serialize>(
        &self,
        state: &handle::FullStateOut<T>,
        value: &T,
    ) -> Result<(), ServiceError> {
        self.write_state(state.name(), value, false)
            .await
            .map(|_| ())
    }

    /// Updates a delta out-state: `changes` holds the changed top-level keys (a null/nil
    /// value deletes the key). Returns the new `current_num`.
    pub async fn update_state<T, C: Serialize + ?Sized>(
        &self,
        state: &handle::DeltaStateOut<T>,
        changes: &C,
    ) -> Result<i64, ServiceError> {
        self.write_state(state.name(), changes, false).await
    }

    /// Replaces a delta out-state whole (a snapshot). Returns the new `current_num`.
    pub async fn snapshot_state<T: Serialize>(
        &self,
        state: &handle::DeltaStateOut<T>,
        whole: &T,
    ) -> Result<i64, ServiceError> {
        self.write_state(state.name(), whole, true).await
    }

    async fn write_state<A: Serialize + ?Sized>(
        &self,
        name: &str,
        value: &A,
        whole: bool,
    ) -> Result<i64, ServiceError> {
        let map = sf_states::to_state_map(value)
            .map_err(|e| ServiceError::internal(format!("state {name:?}: {e}")))?;
        let id = self.next_workflow_id();
        // State publishes go out without a trace context (the states layer carries none).
        let written = match self.out_state(name)? {
            OutState::Delta(d) if whole => d.snapshot(map, &id).await,
            OutState::Delta(d) => d.delta(map, &id).await,
            OutState::Full(f) => f.set(map, &id).await.map(|_| 0),
        };
        written.map_err(|e| ServiceError::internal(format!("state {name:?}: {e}")))
    }

    /// The original's `to_send("state", name, args)`: for a delta state `args` is
    /// `{"is_snapshot": bool, "state": {...}}` (a `current_num` given is ignored: the out
    /// side owns the numbering); for a full state `args` is the whole state.
    pub async fn send_state(&self, name: &str, args: &Value) -> Result<Value, ServiceError> {
        match self.out_state(name)? {
            OutState::Full(_) => self
                .write_state(name, args, false)
                .await
                .map(|_| Value::Null),
            OutState::Delta(_) => {
                let snapshot = args
                    .get("is_snapshot")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let state = args.get("state").ok_or_else(|| {
                    ServiceError::internal(format!(
                        "state {name:?}: args need \"state\" (and \"is_snapshot\")"
                    ))
                })?;
                let n = self.write_state(name, state, snapshot).await?;
                Ok(Value::from(n))
            }
        }
    }

    /// Sends a request on a requester (or calls an external target) and returns the typed
    /// reply. Timeouts and error replies come back as errors.
    pub async fn request<A: Serialize, R: DeserializeOwned>(
        &self,
        conn: &impl Calls<A, R>,
        args: &A,
    ) -> Result<R, ServiceError> {
        self.request_named(conn.conn_name(), args).await
    }

    async fn request_named<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        conn: &str,
        args: &A,
    ) -> Result<R, ServiceError> {
        let id = self.next_workflow_id();
        let trace = Some(self.next_traceparent());
        match self.outbound(conn)? {
            Outbound::Requester(r) => r
                .request_traced(args, id, trace)
                .await
                .map_err(|e| ServiceError::from_call(conn, e)),
            Outbound::External(t) => t
                .call_traced(args, id, trace)
                .await
                .map_err(|e| ServiceError::from_call(conn, e)),
            other => Err(wrong_kind(conn, other, "request")),
        }
    }

    /// Publishes on a publisher.
    pub async fn publish<A: Serialize>(
        &self,
        conn: &handle::Publisher<A>,
        args: &A,
    ) -> Result<(), ServiceError> {
        self.publish_named(conn.name(), args).await
    }

    async fn publish_named<A: Serialize + ?Sized>(
        &self,
        conn: &str,
        args: &A,
    ) -> Result<(), ServiceError> {
        let id = self.next_workflow_id();
        match self.outbound(conn)? {
            Outbound::Publisher(p) => p
                .publish_traced(args, &id, Some(self.next_traceparent()))
                .await
                .map_err(|e| ServiceError::from_call(conn, e)),
            other => Err(wrong_kind(conn, other, "publish")),
        }
    }

    /// Pushes on a pusher (waits while every puller is full, up to its send timeout). On an
    /// acked pusher it returns once a puller's handler finished with the message (an error if
    /// that handler failed), so a handler that pushes on acks its own message after that.
    pub async fn push<A: Serialize>(
        &self,
        conn: &handle::Pusher<A>,
        args: &A,
    ) -> Result<(), ServiceError> {
        self.push_named(conn.name(), args).await
    }

    async fn push_named<A: Serialize + ?Sized>(
        &self,
        conn: &str,
        args: &A,
    ) -> Result<(), ServiceError> {
        let id = self.next_workflow_id();
        match self.outbound(conn)? {
            Outbound::Pusher(p) => p
                .push_traced(args, id, Some(self.next_traceparent()))
                .await
                .map_err(|e| ServiceError::from_call(conn, e)),
            other => Err(wrong_kind(conn, other, "push")),
        }
    }

    /// The original's `to_send("connection", name, args)`, the dynamic escape hatch: whatever
    /// out-connection `conn` is, send `args` on it; returns the reply for requesters and
    /// external targets, null else.
    pub async fn send(&self, conn: &str, args: &Value) -> Result<Value, ServiceError> {
        match self.outbound(conn)? {
            Outbound::Requester(_) | Outbound::External(_) => self.request_named(conn, args).await,
            Outbound::Publisher(_) => self.publish_named(conn, args).await.map(|_| Value::Null),
            Outbound::Pusher(_) => self.push_named(conn, args).await.map(|_| Value::Null),
        }
    }
}

impl Ctx {
    /// The publisher behind out-connection `name`, if it is one (for the testkit).
    pub(crate) fn publisher(&self, name: &str) -> Option<Publisher> {
        match self.shared.outbound.get(name) {
            Some(Outbound::Publisher(p)) => Some(p.clone()),
            _ => None,
        }
    }
}

/// `map[name]`, or an `internal` error naming what is declared (a name known only at run
/// time, through the dynamic forms: typed handles are checked at start).
fn lookup<'a, V>(
    map: &'a HashMap<String, V>,
    what: &str,
    name: &str,
) -> Result<&'a V, ServiceError> {
    map.get(name).ok_or_else(|| {
        let mut names: Vec<&str> = map.keys().map(String::as_str).collect();
        names.sort_unstable();
        ServiceError::internal(format!(
            "no {what} named {name:?} (declared: {})",
            names.join(", ")
        ))
    })
}

fn wrong_kind(name: &str, conn: &Outbound, verb: &str) -> ServiceError {
    let kind = match conn {
        Outbound::Requester(_) => "a requester",
        Outbound::Publisher(_) => "a publisher",
        Outbound::Pusher(_) => "a pusher",
        Outbound::External(_) => "an external target",
    };
    ServiceError::internal(format!("cannot {verb} on {name:?}: it is {kind}"))
}

/// An external target whose handler gets this service's context (held weakly: the context
/// owns the target).
pub(crate) fn external_target(
    name: &str,
    make: crate::model::MakeRequestHandler,
    shared: std::sync::Weak<Shared>,
) -> ExternalTarget {
    let raw: sf_connections::RawHandler = Arc::new(move |body| {
        let shared = shared.upgrade();
        let make = make.clone();
        Box::pin(async move {
            match shared {
                Some(shared) => make(Ctx::new(shared))(body).await,
                None => sf_connections::Outcome::err(
                    WorkflowId::None,
                    sf_connections::WireError::new(
                        sf_connections::ErrorCode::Unavailable,
                        "the service has stopped",
                    ),
                ),
            }
        })
    });
    ExternalTarget::from_raw(name, raw)
}
