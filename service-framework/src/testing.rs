//! A testkit for services' own tests, async throughout (`#[tokio::test]`).
//!
//! [`TestService`] starts a [`ServiceDef`] on ephemeral ports on the current runtime and gives
//! a typed client for each of its in-connections, a capture of everything it publishes and
//! pushes, a follower of each of its out-states ([`TestService::wait_state`]), stubs for its requesters (Nameko's `replace_dependencies`), and a wait until a
//! handler has run (Nameko's `entrypoint_waiter`). Everything is real: sockets on 127.0.0.1,
//! the service's own runtime code, nothing mocked.
//!
//! ```
//! use service_framework::prelude::*;
//! use service_framework::testing::TestService;
//!
//! #[derive(Serialize, Deserialize, JsonSchema)]
//! struct Add { a: i64, b: i64 }
//! #[derive(Serialize, Deserialize, JsonSchema, Debug, PartialEq)]
//! struct Sum { total: i64 }
//!
//! const ADD: Replyer<Add, Sum> = Replyer::new("add");
//! const SUMS: Publisher<Sum> = Publisher::new("sums_out").topic("sums");
//!
//! fn service() -> ServiceDef {
//!     ServiceDef::new("adder").publisher(SUMS).replyer(ADD, |args, ctx| async move {
//!         let sum = Sum { total: args.a + args.b };
//!         ctx.publish(&SUMS, &sum).await?;
//!         Ok(sum)
//!     })
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = TestService::start(service()).await.unwrap();
//! assert_eq!(svc.call(&ADD, &Add { a: 2, b: 3 }).await.unwrap(), Sum { total: 5 });
//! assert_eq!(svc.next_published(&SUMS).await.unwrap(), Sum { total: 5 });
//! svc.stop().await.unwrap();
//! # }
//! ```
//!
//! Connections are wired as their defaults are: replyers, publishers and out-states bind an
//! ephemeral port; subscribers and pullers connect to a publisher or pusher the testkit binds;
//! requesters connect to a stub ([`TestBuilder::stub`]) or to an address you give
//! ([`TestBuilder::address`]); pushers connect to a puller the testkit binds. A connection
//! whose options change that (`is_binder`, `is_x_pub`), and in-states, need an address given
//! with [`TestBuilder::address`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
use sf_connections::{
    Address, PipelineOptions, Publisher as PubConn, PublisherOptions, Puller as PullConn,
    Pusher as PushConn, Replyer as ReplyConn, ReplyerOptions, Requester as ReqConn,
    RequesterOptions, Subscriber as SubConn, SubscriberOptions, WireError, WorkflowId,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::addresses::AddressesFile;
use crate::error::{Error, Result, ServiceError};
use crate::handle;
use crate::model::{ConnectionKind, Handler, ServiceDef};
use crate::runtime::{Ready, StopReason};
use crate::service::Service;

/// How long the testkit waits for anything (start, a reply, a capture, a handler).
pub const WAIT: Duration = Duration::from_secs(5);

/// Sets up a [`TestService`]: config, stubs, addresses.
pub struct TestBuilder {
    def: ServiceDef,
    config: Value,
    addresses: Vec<(bool, String, String, String)>,
    stubs: HashMap<String, sf_connections::RawHandler>,
    drain_timeout: Duration,
    main_mode: bool,
}

impl std::fmt::Debug for TestBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestBuilder")
            .field("service", &self.def.name)
            .finish_non_exhaustive()
    }
}

/// A running service under test. Stop it with [`stop`](Self::stop) to see how it ended;
/// dropping it stops it too.
pub struct TestService {
    name: String,
    ready: Ready,
    stop: CancellationToken,
    done: Option<tokio::task::JoinHandle<Result<()>>>,
    clients: tokio::sync::Mutex<HashMap<String, ReqConn>>,
    feeds: HashMap<String, PubConn>,
    pushers: HashMap<String, PushConn>,
    captures: HashMap<String, tokio::sync::Mutex<mpsc::UnboundedReceiver<Bytes>>>,
    runs: HashMap<String, watch::Receiver<u64>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// A follower of each out-state, as a subscriber elsewhere would see it.
    state_views: HashMap<String, watch::Receiver<sf_states::StateView>>,
    _followers: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for TestService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestService")
            .field("service", &self.name)
            .field("endpoints", &self.ready.endpoints)
            .finish_non_exhaustive()
    }
}

/// Why a testkit step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestError {
    /// The service could not start, or stopped with an error.
    #[error("service: {0}")]
    Service(#[from] Error),
    /// A connection failed (an error reply is [`sf_connections::Error::Remote`]).
    #[error("connection: {0}")]
    Connection(#[from] sf_connections::Error),
    /// Nothing happened within [`WAIT`].
    #[error("timed out after {0:?}: {1}")]
    Timeout(Duration, String),
    /// A name the service does not declare, or of another kind.
    #[error("{0}")]
    Usage(String),
    /// A captured message did not decode as the handle's type.
    #[error("decode: {0}")]
    Decode(String),
}

impl TestService {
    /// Starts `def` with no config (see [`builder`](Self::builder) for more).
    pub async fn start(def: ServiceDef) -> std::result::Result<TestService, TestError> {
        Self::builder(def).start().await
    }

    /// A builder for config, stubs and addresses.
    pub fn builder(def: ServiceDef) -> TestBuilder {
        TestBuilder {
            def,
            config: json!({}),
            addresses: Vec::new(),
            stubs: HashMap::new(),
            drain_timeout: Duration::from_secs(5),
            main_mode: false,
        }
    }

    /// The endpoint connection `name` bound or connected to.
    pub fn endpoint(&self, name: &str) -> Option<&str> {
        self.ready.endpoint(name)
    }

    /// The service's control endpoint (`ping`, `info`, `stats`, `health`; an ephemeral
    /// loopback port), unless it was turned off.
    pub fn control(&self) -> Option<&str> {
        self.ready.control()
    }

    /// Calls replyer `conn` and returns its typed reply (an error reply is
    /// `TestError::Connection(Remote(..))`).
    pub async fn call<A: Serialize, R: DeserializeOwned>(
        &self,
        conn: &handle::Replyer<A, R>,
        args: &A,
    ) -> std::result::Result<R, TestError> {
        self.call_named(conn.name(), args).await
    }

    /// Calls replyer `name` with any args (the dynamic form).
    pub async fn call_named<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        name: &str,
        args: &A,
    ) -> std::result::Result<R, TestError> {
        let mut clients = self.clients.lock().await;
        if !clients.contains_key(name) {
            let endpoint = self
                .ready
                .endpoints
                .get(&format!("in.{name}"))
                .ok_or_else(|| TestError::Usage(format!("no replyer named {name:?}")))?;
            let r = ReqConn::connect(
                &Address::from(endpoint.as_str()),
                RequesterOptions {
                    timeout: WAIT,
                    ..Default::default()
                },
            )?;
            clients.insert(name.to_owned(), r);
        }
        let r = clients[name].clone();
        drop(clients);
        Ok(r.request(args, WorkflowId::new_random()).await?)
    }

    /// Publishes `args` to subscriber `conn` (its subscription was in place before `start`
    /// returned).
    pub async fn publish<A: Serialize>(
        &self,
        conn: &handle::Subscriber<A>,
        args: &A,
    ) -> std::result::Result<(), TestError> {
        let p = self
            .feeds
            .get(conn.name())
            .ok_or_else(|| TestError::Usage(format!("no subscriber named {:?}", conn.name())))?;
        Ok(p.publish(args, &WorkflowId::new_random()).await?)
    }

    /// Pushes `args` to puller `conn`.
    pub async fn push<A: Serialize>(
        &self,
        conn: &handle::Puller<A>,
        args: &A,
    ) -> std::result::Result<(), TestError> {
        let p = self
            .pushers
            .get(conn.name())
            .ok_or_else(|| TestError::Usage(format!("no puller named {:?}", conn.name())))?;
        Ok(p.push(args, WorkflowId::new_random()).await?)
    }

    /// The next message the service published on `conn`, waiting up to [`WAIT`].
    pub async fn next_published<A: DeserializeOwned>(
        &self,
        conn: &handle::Publisher<A>,
    ) -> std::result::Result<A, TestError> {
        self.next_captured(conn.name()).await
    }

    /// The next message the service pushed on `conn`, waiting up to [`WAIT`].
    pub async fn next_pushed<A: DeserializeOwned>(
        &self,
        conn: &handle::Pusher<A>,
    ) -> std::result::Result<A, TestError> {
        self.next_captured(conn.name()).await
    }

    /// Waits until out-state `state`, as a follower of it sees it (a `full_update_in` or
    /// `delta_update_in` the testkit runs, over the real sockets), decodes as `T` and `ok`
    /// holds for it; returns that value. Bounded by [`WAIT`].
    pub async fn wait_state<T: DeserializeOwned>(
        &self,
        state: &impl handle::WritesState<T>,
        ok: impl Fn(&T) -> bool,
    ) -> std::result::Result<T, TestError> {
        let name = state.state_name();
        let mut rx =
            self.state_views.get(name).cloned().ok_or_else(|| {
                TestError::Usage(format!("no out-state named {name:?} is followed"))
            })?;
        let seen = |v: &sf_states::StateView| {
            sf_states::from_state_map::<T>(&v.state)
                .ok()
                .filter(|t| ok(t))
        };
        let got = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(t) = seen(&rx.borrow_and_update()) {
                    return Some(t);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match got {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(TestError::Usage(format!("the follower of {name:?} ended"))),
            Err(_) => Err(TestError::Timeout(
                WAIT,
                format!(
                    "out-state {name:?} never reached the expected value; last seen: {:?}",
                    rx.borrow().state
                ),
            )),
        }
    }

    /// Everything captured on out-connection `name` so far, without waiting, as JSON.
    pub async fn captured(&self, name: &str) -> std::result::Result<Vec<Value>, TestError> {
        let cap = self
            .captures
            .get(name)
            .ok_or_else(|| TestError::Usage(format!("nothing is captured for {name:?}")))?;
        let mut rx = cap.lock().await;
        let mut out = Vec::new();
        while let Ok(body) = rx.try_recv() {
            out.push(decode_args(&body)?);
        }
        Ok(out)
    }

    async fn next_captured<A: DeserializeOwned>(
        &self,
        name: &str,
    ) -> std::result::Result<A, TestError> {
        let cap = self
            .captures
            .get(name)
            .ok_or_else(|| TestError::Usage(format!("nothing is captured for {name:?}")))?;
        let mut rx = cap.lock().await;
        let body = tokio::time::timeout(WAIT, rx.recv())
            .await
            .map_err(|_| TestError::Timeout(WAIT, format!("nothing arrived on {name:?}")))?
            .ok_or_else(|| TestError::Usage(format!("the capture of {name:?} ended")))?;
        let args = decode_args(&body)?;
        serde_json::from_value(args).map_err(|e| TestError::Decode(format!("{name:?}: {e}")))
    }

    /// Waits until the handler of in-connection (or external target) `name` has finished
    /// `n` times in all since the start.
    pub async fn wait_for_handler(&self, name: &str, n: u64) -> std::result::Result<(), TestError> {
        let mut rx = self
            .runs
            .get(name)
            .ok_or_else(|| TestError::Usage(format!("no handler named {name:?}")))?
            .clone();
        tokio::time::timeout(WAIT, rx.wait_for(|&c| c >= n))
            .await
            .map_err(|_| {
                TestError::Timeout(WAIT, format!("handler {name:?} did not run {n} time(s)"))
            })?
            .map_err(|_| TestError::Usage("the service has stopped".into()))?;
        Ok(())
    }

    /// How many times the handler of `name` has finished.
    pub fn handler_runs(&self, name: &str) -> u64 {
        self.runs.get(name).map_or(0, |r| *r.borrow())
    }

    /// Stops the service gracefully and returns how it ended (bounded by the drain deadline).
    pub async fn stop(mut self) -> std::result::Result<(), TestError> {
        self.stop.cancel();
        let done = self.done.take().expect("stopped once");
        let r = done
            .await
            .map_err(|e| TestError::Usage(format!("the service task failed: {e}")))?;
        Ok(r?)
    }
}

impl Drop for TestService {
    fn drop(&mut self) {
        self.stop.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One request to the replyer at `address` (`host:port` or an endpoint) on a requester of
/// its own, waiting up to `timeout`: what `service-framework call` does, for tests and tools
/// that talk to a service in another process. An error reply is `Error::Remote`.
pub async fn call_once<A: Serialize + ?Sized, R: DeserializeOwned>(
    address: &str,
    args: &A,
    workflow_id: WorkflowId,
    timeout: Duration,
) -> std::result::Result<R, sf_connections::Error> {
    let requester = ReqConn::connect(
        &Address::from(address),
        RequesterOptions {
            timeout,
            ..Default::default()
        },
    )?;
    requester.request(args, workflow_id).await
}

/// [`call_once`] from synchronous code (a plain `#[test]`), on a runtime of its own in a
/// thread of its own, so it may be called from inside another runtime as well.
pub fn call_once_blocking<A: Serialize + ?Sized + Sync, R: DeserializeOwned + Send>(
    address: &str,
    args: &A,
    workflow_id: WorkflowId,
    timeout: Duration,
) -> std::result::Result<R, sf_connections::Error> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| sf_connections::Error::Socket(e.to_string()))?;
                rt.block_on(call_once(address, args, workflow_id, timeout))
            })
            .join()
            .unwrap_or_else(|_| Err(sf_connections::Error::Socket("the call panicked".into())))
    })
}

fn decode_args(body: &[u8]) -> std::result::Result<Value, TestError> {
    let msg: sf_connections::wire::Request<Value> =
        sf_connections::wire::decode(body).map_err(|e| TestError::Decode(e.to_string()))?;
    Ok(msg.args)
}

impl TestBuilder {
    /// The config (a JSON object), checked as at any start.
    pub fn config(mut self, config: Value) -> Self {
        self.config = config;
        self
    }

    /// Replaces out-connection `conn` (a requester) by `f`: the service's requests reach a
    /// real replyer the testkit binds, which calls `f`.
    pub fn stub<A, R, F, Fut>(mut self, conn: &handle::Requester<A, R>, f: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R, ServiceError>> + Send + 'static,
    {
        let f = Arc::new(f);
        let raw = sf_connections::typed(move |args: A, _meta| {
            let f = f.clone();
            async move { f(args).await.map_err(WireError::from) }
        });
        self.stubs.insert(conn.name().to_owned(), raw);
        self
    }

    /// Gives connection `name` (on side `inbound`) the address `address` for socket
    /// `socket` (`replyer`, `requester`, `publisher`, `subscriber`, ...), as addresses.json
    /// would.
    pub fn address(mut self, inbound: bool, name: &str, socket: &str, address: &str) -> Self {
        self.addresses.push((
            inbound,
            name.to_owned(),
            socket.to_owned(),
            address.to_owned(),
        ));
        self
    }

    /// The deadline in-flight work gets at the stop (default 5 s).
    pub fn drain_timeout(mut self, deadline: Duration) -> Self {
        self.drain_timeout = deadline;
        self
    }

    /// Runs `main` (main mode); the service stops when it returns.
    pub fn main_mode(mut self) -> Self {
        self.main_mode = true;
        self
    }

    /// Starts the service and waits (up to [`WAIT`]) until it serves and every subscription
    /// the testkit makes is in place.
    pub async fn start(mut self) -> std::result::Result<TestService, TestError> {
        let given: HashMap<(bool, String), Vec<(String, String)>> =
            self.addresses
                .iter()
                .fold(HashMap::new(), |mut m, (inbound, name, socket, addr)| {
                    m.entry((*inbound, name.clone()))
                        .or_default()
                        .push((socket.clone(), addr.clone()));
                    m
                });
        let mut ins = Map::new();
        let mut outs = Map::new();
        let mut feeds = HashMap::new();
        let mut pushers = HashMap::new();
        let mut captures = HashMap::new();
        let mut stub_replyers = Vec::new();
        let mut capture_pubs = Vec::new();
        let mut runs = HashMap::new();
        let mut tasks = Vec::new();
        let any = Address::from("127.0.0.1:0");

        for m in self
            .def
            .connections
            .inbound
            .iter_mut()
            .chain(self.def.connections.outbound.iter_mut())
        {
            let inbound = m.kind.is_inbound();
            if let Some(list) = given.get(&(inbound, m.name.clone())) {
                let entry: Map<String, Value> = list
                    .iter()
                    .map(|(s, a)| (s.clone(), Value::from(a.clone())))
                    .collect();
                (if inbound { &mut ins } else { &mut outs }).insert(m.name.clone(), entry.into());
            }
            let binder = m.creation_bool("is_binder") || m.creation_bool("is_x_pub");
            let unusual = |what: &str| {
                TestError::Usage(format!(
                    "{} {:?} {what}: give its address with TestBuilder::address",
                    m.kind.name(),
                    m.name
                ))
            };
            let preset = given.contains_key(&(inbound, m.name.clone()));
            match m.kind {
                ConnectionKind::Replyer if !preset => {
                    ins.insert(m.name.clone(), json!({"replyer": "127.0.0.1:0"}));
                }
                ConnectionKind::Subscriber if !preset => {
                    if binder {
                        return Err(unusual("binds"));
                    }
                    // The feed speaks as the service's publisher would: its topic, and
                    // credits when the subscriber asks for a lossless stream.
                    let opts = PublisherOptions {
                        topic: m.creation_str("topic"),
                        credit: m.creation_u64("credit_window").map(|window| {
                            sf_connections::CreditOptions {
                                window,
                                ..Default::default()
                            }
                        }),
                        ..Default::default()
                    };
                    let p = PubConn::start(&any, opts).await?;
                    ins.insert(m.name.clone(), json!({"subscriber": p.endpoint()}));
                    feeds.insert(m.name.clone(), p);
                }
                ConnectionKind::Puller if !preset => {
                    if binder {
                        return Err(unusual("binds"));
                    }
                    let p = PushConn::start(
                        &any,
                        PipelineOptions {
                            is_binder: true,
                            // The peer speaks the service's protocol: acked or plain.
                            acked: m.creation_bool("acked"),
                            ..Default::default()
                        },
                    )
                    .await?;
                    ins.insert(m.name.clone(), json!({"puller": p.endpoint()}));
                    pushers.insert(m.name.clone(), p);
                }
                ConnectionKind::Requester if !preset => {
                    let Some(raw) = self.stubs.remove(&m.name) else {
                        return Err(TestError::Usage(format!(
                            "requester {:?} needs a stub (TestBuilder::stub) or an address",
                            m.name
                        )));
                    };
                    let r = ReplyConn::bind(&any, raw, ReplyerOptions::default()).await?;
                    outs.insert(m.name.clone(), json!({"requester": r.endpoint()}));
                    stub_replyers.push(r);
                }
                ConnectionKind::Publisher if !preset => {
                    if binder {
                        return Err(unusual("connects to a bus"));
                    }
                    outs.insert(m.name.clone(), json!({"publisher": "127.0.0.1:0"}));
                    capture_pubs.push((m.name.clone(), m.creation_str("topic")));
                }
                ConnectionKind::Pusher if !preset => {
                    if binder {
                        return Err(unusual("binds"));
                    }
                    let mut p = PullConn::start(
                        &any,
                        PipelineOptions {
                            is_binder: true,
                            // The peer speaks the service's protocol: acked or plain.
                            acked: m.creation_bool("acked"),
                            ..Default::default()
                        },
                    )
                    .await?;
                    outs.insert(m.name.clone(), json!({"pusher": p.endpoint()}));
                    let (tx, rx) = mpsc::unbounded_channel();
                    tasks.push(tokio::spawn(async move {
                        while let Some(body) = p.next_raw().await {
                            if tx.send(body).is_err() {
                                return;
                            }
                        }
                    }));
                    captures.insert(m.name.clone(), tokio::sync::Mutex::new(rx));
                }
                _ => {}
            }
            // Count the handler's runs.
            if let Some(h) = m.handler.take() {
                let (tx, rx) = watch::channel(0u64);
                runs.insert(m.name.clone(), rx);
                m.handler = Some(counting(h, Arc::new(tx)));
            }
        }
        if let Some(name) = self.stubs.keys().next() {
            return Err(TestError::Usage(format!(
                "stub for {name:?}, which is not a declared requester"
            )));
        }
        let mut state_ins = Map::new();
        let mut state_outs = Map::new();
        // The out-states the testkit binds, to follow once the service is up.
        let mut followed = Vec::new();
        for s in self.def.states.all() {
            let inbound = s.kind.is_inbound();
            if let Some(list) = given.get(&(inbound, s.name.clone())) {
                let entry: Map<String, Value> = list
                    .iter()
                    .map(|(k, a)| (k.clone(), Value::from(a.clone())))
                    .collect();
                (if inbound {
                    &mut state_ins
                } else {
                    &mut state_outs
                })
                .insert(s.name.clone(), entry.into());
                continue;
            }
            if inbound || s.creation.get("is_x_pub").and_then(Value::as_bool) == Some(true) {
                return Err(TestError::Usage(format!(
                    "state {:?}: give its address with TestBuilder::address",
                    s.name
                )));
            }
            let entry: Map<String, Value> = s
                .kind
                .address_keys()
                .iter()
                .map(|k| ((*k).to_owned(), Value::from("127.0.0.1:0")))
                .collect();
            state_outs.insert(s.name.clone(), entry.into());
            followed.push((s.name.clone(), s.kind, s.state_options().topic));
        }
        let addresses = AddressesFile::from_value(json!({
            "connections": {"in": ins, "out": outs},
            "states": {"in": state_ins, "out": state_outs},
        }))?;

        let name = self.def.name.clone();
        let stop = CancellationToken::new();
        let (ready_tx, ready_rx) = oneshot::channel();
        let mut service = Service::new(self.def)
            .config(self.config)
            .addresses(addresses)
            .drain_timeout(self.drain_timeout);
        if self.main_mode {
            service = service.main_mode();
        }
        let stopping = stop.clone();
        let mut done = tokio::spawn(async move {
            let r = service
                .run(
                    async move {
                        stopping.cancelled().await;
                        StopReason::Requested
                    },
                    move |ready: &Ready| {
                        let _ = ready_tx.send(ready.clone());
                    },
                )
                .await;
            drop(stub_replyers);
            r
        });
        let ended =
            |r: std::result::Result<crate::error::Result<()>, tokio::task::JoinError>| match r {
                Ok(Err(e)) => TestError::Service(e),
                Ok(Ok(())) => TestError::Usage("the service ended before it was ready".into()),
                Err(e) => TestError::Usage(format!("the service task failed: {e}")),
            };
        let deadline = tokio::time::sleep(WAIT);
        tokio::pin!(deadline);
        let ready = tokio::select! {
            r = ready_rx => match r {
                Ok(ready) => Some(ready),
                // The ready callback went without being called: the run ended, say how.
                Err(_) => tokio::select! {
                    r = &mut done => return Err(ended(r)),
                    _ = &mut deadline => None,
                },
            },
            r = &mut done => return Err(ended(r)),
            _ = &mut deadline => None,
        };
        let Some(ready) = ready else {
            stop.cancel();
            return Err(TestError::Timeout(
                WAIT,
                format!("service {name:?} never got ready"),
            ));
        };

        // Captures of the service's publishers, each subscription in place before we return.
        let ctx = ready.ctx.clone();
        for (conn, topic) in capture_pubs {
            let endpoint = ready
                .endpoints
                .get(&format!("out.{conn}"))
                .cloned()
                .unwrap_or_default();
            let mut sub = SubConn::start(
                &Address::from(endpoint.as_str()),
                SubscriberOptions {
                    topic,
                    ..Default::default()
                },
            )
            .await?;
            if let Some(p) = ctx.as_ref().and_then(|c| c.publisher(&conn)) {
                p.wait_for_subscribers(1, WAIT).await?;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            tasks.push(tokio::spawn(async move {
                while let Some(d) = sub.next().await {
                    if tx.send(d.body).is_err() {
                        return;
                    }
                }
            }));
            captures.insert(conn, tokio::sync::Mutex::new(rx));
        }
        // A follower of each out-state the testkit bound, as a subscriber elsewhere would be.
        let mut state_views = HashMap::new();
        let mut followers: Vec<Box<dyn std::any::Any + Send + Sync>> = Vec::new();
        for (state, kind, topic) in followed {
            let at = |socket: &str| {
                Address::from(
                    ready
                        .endpoints
                        .get(&format!("state.out.{state}.{socket}"))
                        .map(String::as_str)
                        .unwrap_or_default(),
                )
            };
            let opts = sf_states::StateOptions {
                topic,
                ..Default::default()
            };
            let err = |e: sf_states::Error| TestError::Usage(format!("following {state:?}: {e}"));
            match kind {
                crate::model::StateKind::FullUpdateOut => {
                    let f = sf_states::FullUpdateIn::start(&at("publisher"), &opts)
                        .await
                        .map_err(err)?;
                    state_views.insert(state, f.watch());
                    followers.push(Box::new(f));
                }
                crate::model::StateKind::DeltaUpdateOut => {
                    let f =
                        sf_states::DeltaUpdateIn::start(&at("publisher"), &at("replyer"), &opts)
                            .await
                            .map_err(err)?;
                    state_views.insert(state, f.watch());
                    followers.push(Box::new(f));
                }
                _ => {}
            }
        }
        // The service's subscribers: their subscriptions in place on our feeds.
        let mut feed_pubs = HashMap::new();
        for (conn, p) in feeds {
            p.wait_for_subscribers(1, WAIT).await?;
            feed_pubs.insert(conn, p);
        }
        Ok(TestService {
            name,
            ready,
            stop,
            done: Some(done),
            clients: tokio::sync::Mutex::default(),
            feeds: feed_pubs,
            pushers,
            captures,
            runs,
            tasks,
            state_views,
            _followers: followers,
        })
    }
}

/// Wraps a handler so each finished run bumps `runs`.
fn counting(h: Handler, runs: Arc<watch::Sender<u64>>) -> Handler {
    match h {
        Handler::Request(make) => Handler::Request(Arc::new(move |ctx| {
            let raw = make(ctx);
            let runs = runs.clone();
            Arc::new(move |body: Bytes| {
                let fut = raw(body);
                let runs = runs.clone();
                Box::pin(async move {
                    let out = fut.await;
                    runs.send_modify(|n| *n += 1);
                    out
                })
            })
        })),
        Handler::Message(f) => Handler::Message(Arc::new(move |body, ctx| {
            let fut = f(body, ctx);
            let runs = runs.clone();
            Box::pin(async move {
                let out = fut.await;
                runs.send_modify(|n| *n += 1);
                out
            })
        })),
    }
}
