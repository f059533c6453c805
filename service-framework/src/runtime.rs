//! The lifecycle: hooks in the original's order, sockets, main mode or the service loop,
//! signals and the graceful stop.
//!
//! Order (the original's `entrance_point`): `setup_config` -> validate config ->
//! `setup_addresses` -> `setup_connection_models` -> build connections (out first, so
//! handlers can send from their first message) -> signal handlers -> `init_function` ->
//! `main` (main mode, inbound connections still served) or the service loop until a signal.
//!
//! Stopping: the user's `sigint_handler` / `sigterm_handler` runs first, then inbound
//! connections stop taking work, in-flight handlers finish within the drain deadline,
//! publishers and pushers get their linger to flush, and [`run`] returns `Ok` (exit code 0).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use sf_connections::logline::{escape, WARNINGS};
use sf_connections::{
    Ack, Address, CreditOptions, PipelineOptions, Publisher, PublisherOptions, Puller, Pusher,
    Replyer, ReplyerOptions, Requester, RequesterOptions, Subscriber, SubscriberOptions,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::addresses::{binds, AddressesFile};
use crate::context::{Ctx, OutState, Outbound, Shared};
use crate::error::{Error, Result};
use crate::model::{
    ConnectionKind, ConnectionModel, CtxHook, Handler, MessageHandler, ServiceDef, StateHandler,
    StateKind,
};
use crate::security::{SecuritySettings, Side};

/// Why the service is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// SIGINT (Ctrl-C).
    Sigint,
    /// SIGTERM.
    Sigterm,
    /// `stop()` on a handle, or `ctx.request_stop()`.
    Requested,
}

/// Everything [`run`] needs besides the definition: what the command line or the
/// [`Service`](crate::Service) builder gathered.
#[derive(Debug, Clone)]
pub(crate) struct RunOptions {
    /// The merged config (file, environment, CLI extras), not yet validated.
    pub config: Map<String, Value>,
    /// Names the config's origin in error messages (e.g. the file path).
    pub config_origin: String,
    /// Keys that came from elsewhere than `config_origin`, with where (`command line
    /// --key`, `environment SF_CONFIG_KEY`), for error messages.
    pub config_sources: BTreeMap<String, String>,
    /// The addresses.
    pub addresses: AddressesFile,
    /// Names the addresses' origin in error messages.
    pub addresses_origin: String,
    /// Run `main` (the `-m` flag).
    pub main_mode: bool,
    /// How long in-flight handlers (and `main`, once told to stop) get to finish.
    pub drain_timeout: Duration,
    /// The most publishers, pushers and replies get to leave the sockets at the end (each
    /// close returns as soon as its queue is out).
    pub linger: Duration,
    /// Bus security (`--security FILE` or `SF_SECURITY`): `None` leaves every connection NULL.
    pub security: Option<crate::security::SecuritySettings>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            config: Map::new(),
            config_origin: "config".into(),
            config_sources: BTreeMap::new(),
            addresses: AddressesFile::default(),
            addresses_origin: "addresses".into(),
            main_mode: false,
            drain_timeout: Duration::from_secs(5),
            linger: Duration::from_secs(1),
            security: None,
        }
    }
}

/// What a started service reports once its sockets are up.
#[derive(Debug, Clone, Default)]
pub struct Ready {
    /// `"in.<name>"` / `"out.<name>"` -> the endpoint bound or connected to.
    pub endpoints: BTreeMap<String, String>,
    /// The running service's context (the testkit reads its connections).
    pub(crate) ctx: Option<Ctx>,
    /// The control endpoint (`ping`, `info`, `stats`, `health`), unless it is off.
    pub control: Option<String>,
}

impl Ready {
    /// The control endpoint (`tcp://127.0.0.1:PORT`), unless it is turned off.
    pub fn control(&self) -> Option<&str> {
        self.control.as_deref()
    }

    /// The endpoint of connection `name` on either side.
    pub fn endpoint(&self, name: &str) -> Option<&str> {
        self.endpoints
            .get(&format!("in.{name}"))
            .or_else(|| self.endpoints.get(&format!("out.{name}")))
            .map(String::as_str)
    }
}

/// Runs a service until `main` returns (main mode) or `stop` resolves, then stops it
/// gracefully. `on_ready` is called once every socket is bound or connecting.
///
/// The steps, in the original's order: [`prepare`] (the declaration, config, addresses and
/// models, all checked before any socket), the out-connections and states, the shared
/// context, [`serve_inbound`] (in-connections and state handlers), `init_function` then
/// `main` or the service loop ([`drive`]), and [`drain`].
pub async fn run(
    mut def: ServiceDef,
    options: RunOptions,
    stop: impl Future<Output = StopReason> + Send,
    on_ready: impl FnOnce(&Ready) + Send,
) -> Result<()> {
    let Prepared {
        config,
        typed_config,
        addresses,
    } = prepare(&mut def, &options)?;
    let started = std::time::SystemTime::now();
    let control_at = crate::control::control_address(&addresses);

    // Out-connections, then states (after connections, as in the original).
    let mut ready = Ready::default();
    let mut outbound = HashMap::new();
    let mut externals = Vec::new();
    for m in &def.connections.outbound {
        let built = match m.kind {
            ConnectionKind::ExternalTarget => {
                externals.push(m.clone());
                continue;
            }
            _ => {
                build_outbound(
                    m,
                    &addresses,
                    &options.addresses_origin,
                    options.security.as_ref(),
                )
                .await?
            }
        };
        ready
            .endpoints
            .insert(format!("out.{}", m.name), endpoint_of(&built));
        outbound.insert(m.name.clone(), built);
    }
    let built = build_states(
        &def,
        &addresses,
        &options.addresses_origin,
        &mut ready,
        options.security.as_ref(),
    )
    .await?;
    let stop_token = CancellationToken::new();
    // External targets call back into the context, so they are built from it.
    let shared = Arc::new_cyclic(|weak: &std::sync::Weak<Shared>| {
        for m in &externals {
            if let Some(Handler::Request(make)) = &m.handler {
                let target = crate::context::external_target(&m.name, make.clone(), weak.clone());
                outbound.insert(m.name.clone(), Outbound::External(target));
            }
        }
        Shared {
            service: def.name.clone(),
            states_in: built.watches,
            states_out: built.outs,
            config,
            typed_config,
            typed_cache: Mutex::default(),
            outbound,
            stop: stop_token.clone(),
        }
    });
    let ctx = Ctx::new(shared.clone());

    let mut probes = Vec::new();
    let (replyers, tracker) = serve_inbound(
        &def,
        &options,
        &addresses,
        &ctx,
        &shared,
        &stop_token,
        &mut ready,
        &mut probes,
    )
    .await?;
    let control = match control_at {
        Some(at) => {
            let intro = introspect(
                &def,
                &shared,
                built.in_stats,
                probes,
                started,
                &ready,
                &stop_token,
            );
            let intro = Arc::new(intro);
            let r = crate::control::bind(&at, intro.clone()).await?;
            tracing::info!("control: {}", r.endpoint());
            let _ = intro.control.set(r.endpoint().to_owned());
            ready.control = Some(r.endpoint().to_owned());
            Some((r, intro))
        }
        None => None,
    };
    ready.ctx = Some(ctx.clone());
    on_ready(&ready);
    if let Some((_, intro)) = &control {
        intro
            .ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    let mut incomplete = Vec::new();
    let outcome = drive(&def, &options, &ctx, stop, &stop_token, &mut incomplete).await;

    stop_token.cancel();
    incomplete.extend(drain(&options, replyers, tracker, &shared).await);
    drop(built.ins);
    // Last: `health` answers `stopping` until every other socket closed.
    if let Some((r, _)) = control {
        r.shutdown().await;
    }
    tracing::info!(service = %def.name, "stopped");
    match outcome {
        Ok(()) if !incomplete.is_empty() => Err(Error::DrainIncomplete(format!(
            "stopped after the drain deadline of {:?}: {}",
            options.drain_timeout,
            incomplete.join("; ")
        ))),
        other => other,
    }
}

/// What the control endpoint reads: the declaration, the endpoints, and each connection's and
/// state's counters (outbound from the context, inbound from `serve_inbound`).
fn introspect(
    def: &ServiceDef,
    shared: &Shared,
    in_stats: HashMap<String, Arc<sf_connections::Stats>>,
    mut conns: Vec<crate::control::Conn>,
    started: std::time::SystemTime,
    ready: &Ready,
    stop: &CancellationToken,
) -> crate::control::Introspect {
    use crate::control::{Conn, Probe, StateProbe};
    for m in &def.connections.outbound {
        let probe = match shared.outbound.get(&m.name) {
            Some(Outbound::Requester(r)) => Probe::Requester(r.clone()),
            Some(Outbound::Publisher(p)) => Probe::Publisher(p.clone()),
            Some(Outbound::Pusher(p)) => Probe::Pusher(p.clone()),
            Some(Outbound::External(_)) | None => Probe::External,
        };
        conns.push(Conn {
            name: m.name.clone(),
            side: "out",
            kind: m.kind.name(),
            probe,
        });
    }
    let mut states = Vec::new();
    for m in def.states.all() {
        if let Some(view) = shared.states_in.get(&m.name) {
            states.push(StateProbe::In {
                name: m.name.clone(),
                kind: m.kind.name(),
                view: view.clone(),
                stats: in_stats.get(&m.name).cloned().unwrap_or_default(),
            });
        } else if let Some(state) = shared.states_out.get(&m.name) {
            states.push(StateProbe::Out {
                name: m.name.clone(),
                kind: m.kind.name(),
                state: state.clone(),
            });
        }
    }
    crate::control::Introspect {
        name: def.name.clone(),
        id: crate::control::new_id(),
        version: def
            .version
            .clone()
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned()),
        description: def.description.clone(),
        metadata: def.metadata.clone(),
        describe: def.describe(),
        started,
        endpoints: ready.endpoints.clone(),
        conns,
        states,
        data: def.stats_data.clone(),
        ready: std::sync::atomic::AtomicBool::new(false),
        stop: stop.clone(),
        control: std::sync::OnceLock::new(),
    }
}

/// What [`prepare`] settles before any socket exists.
struct Prepared {
    config: Map<String, Value>,
    typed_config: Option<crate::config::TypedConfig>,
    addresses: AddressesFile,
}

/// The declaration, then config (`setup_config`, validated and parsed into its type), then
/// addresses (`setup_addresses`), then the models (`setup_connection_models`,
/// `setup_state_models`, the addresses file's options), each creation argument checked, the
/// addresses checked against the models. Every mistake is an error here, never later.
fn prepare(def: &mut ServiceDef, options: &RunOptions) -> Result<Prepared> {
    if !def.problems.is_empty() {
        return Err(Error::Definition(def.problems.join("; ")));
    }
    let mut config = options.config.clone();
    if let Some(hook) = def.hooks.setup_config.take() {
        config = hook(config).map_err(|error| Error::Hook {
            hook: "setup_config",
            error,
        })?;
    }
    def.config
        .validate_sourced(&config, &options.config_origin, &options.config_sources)?;
    let typed_config = match &def.config_parser {
        Some(parser) => Some(crate::config::parse_typed(
            parser,
            &config,
            &options.config_origin,
            &options.config_sources,
        )?),
        None => None,
    };

    let mut addresses = options.addresses.clone();
    if let Some(hook) = def.hooks.setup_addresses.take() {
        addresses = hook(addresses, &config).map_err(|error| Error::Hook {
            hook: "setup_addresses",
            error,
        })?;
    }

    if let Some(hook) = def.hooks.setup_connection_models.take() {
        hook(&mut def.connections, &config).map_err(|error| Error::Hook {
            hook: "setup_connection_models",
            error,
        })?;
    }
    if let Some(hook) = def.hooks.setup_state_models.take() {
        hook(&mut def.states, &config).map_err(|error| Error::Hook {
            hook: "setup_state_models",
            error,
        })?;
    }
    // After both hooks, so models they add take the file's options too.
    apply_options(def, &addresses, &options.addresses_origin)?;
    for m in def.connections.all() {
        check_creation(m.kind.creation_keys(), &m.creation, &m.name, m.kind.name())?;
    }
    for s in def.states.all() {
        check_creation(s.kind.creation_keys(), &s.creation, &s.name, s.kind.name())?;
    }
    addresses.validate(&def.connections, &def.states, &options.addresses_origin)?;
    if options.main_mode && def.main.is_none() {
        return Err(Error::Definition(format!(
            "service {:?} has no main, so it cannot run in main mode (-m)",
            def.name
        )));
    }
    Ok(Prepared {
        config,
        typed_config,
        addresses,
    })
}

/// Binds the replyers and starts the subscribers, pullers and in-state handlers, every one
/// under the one stop token. Returns the replyers (drained at the end) and the tracker of
/// the message tasks.
#[allow(clippy::too_many_arguments)]
async fn serve_inbound(
    def: &ServiceDef,
    options: &RunOptions,
    addresses: &AddressesFile,
    ctx: &Ctx,
    shared: &Shared,
    stop_token: &CancellationToken,
    ready: &mut Ready,
    probes: &mut Vec<crate::control::Conn>,
) -> Result<(Vec<Replyer>, TaskTracker)> {
    use crate::control::{Conn, Probe};
    let tracker = TaskTracker::new();
    for m in &def.states.inbound {
        if let (Some(h), Some(rx)) = (&m.on_change, shared.states_in.get(&m.name)) {
            tracker.spawn(watch_state(
                m.name.clone(),
                rx.clone(),
                h.clone(),
                ctx.clone(),
                stop_token.clone(),
            ));
        }
    }
    let mut replyers = Vec::new();
    for m in &def.connections.inbound {
        let brokered = addresses.broker_for(m, &options.addresses_origin)?;
        let address = match &brokered {
            Some((broker, _)) => broker.clone(),
            None => addresses.address_for(m, &options.addresses_origin)?,
        };
        let conn_err = |source| Error::Connection {
            name: m.name.clone(),
            source,
        };
        match (&m.kind, &m.handler) {
            (ConnectionKind::Replyer, Some(Handler::Request(make))) => {
                let mut opts = ReplyerOptions {
                    drain_timeout: options.drain_timeout,
                    linger: options.linger,
                    // One stop for the whole service: every replyer stops taking work at once.
                    stop: Some(stop_token.clone()),
                    // Through a broker it connects (a CURVE client of the broker), else binds.
                    security: security_of(options, Side::In, &m.name, brokered.is_none())?,
                    ..Default::default()
                };
                if let Some(v) = m.creation_u64("max_message_bytes") {
                    opts.max_message_bytes = v as usize;
                }
                if let Some(v) = m.creation_u64("max_concurrency") {
                    opts.max_concurrency = v as usize;
                }
                let r = match brokered {
                    // As MDP workers of a Majordomo broker (`service-framework -s broker`):
                    // one per `max_concurrency` (default 1), each serving one request at once.
                    Some((broker, service)) => {
                        let mut worker = sf_connections::mdp::WorkerOptions::default();
                        if let Some(s) = m.creation_f64("heartbeat_interval_s") {
                            worker.heartbeat_interval =
                                std::time::Duration::from_secs_f64(s.max(0.001));
                        }
                        if let Some(n) = m.creation_u64("heartbeat_liveness") {
                            worker.liveness = n.clamp(1, 1000) as u32;
                        }
                        worker.workers = m.creation_u64("max_concurrency").unwrap_or(1) as usize;
                        let service = service.unwrap_or_else(|| format!("{}.{}", def.name, m.name));
                        sf_connections::mdp::worker::serve(
                            &broker,
                            &service,
                            make(ctx.clone()),
                            opts,
                            worker,
                        )
                        .await
                    }
                    None => Replyer::bind(&address, make(ctx.clone()), opts).await,
                }
                .map_err(conn_err)?;
                ready
                    .endpoints
                    .insert(format!("in.{}", m.name), r.endpoint().to_owned());
                tracing::info!(connection = %m.name, endpoint = r.endpoint(), "replyer serving");
                probes.push(Conn {
                    name: m.name.clone(),
                    side: "in",
                    kind: m.kind.name(),
                    probe: Probe::Replyer(r.stats().clone(), r.peer_gauge()),
                });
                replyers.push(r);
            }
            (ConnectionKind::Subscriber, Some(Handler::Message(h))) => {
                let mut opts = SubscriberOptions {
                    topic: m.creation_str("topic"),
                    is_binder: m.creation_bool("is_binder"),
                    security: security_of(
                        options,
                        Side::In,
                        &m.name,
                        m.creation_bool("is_binder"),
                    )?,
                    ..Default::default()
                };
                opts.credit_window = m.creation_u64("credit_window");
                if let Some(v) = m.creation_u64("max_message_bytes") {
                    opts.max_message_bytes = v as usize;
                }
                let sub = Subscriber::start(&address, opts).await.map_err(conn_err)?;
                ready
                    .endpoints
                    .insert(format!("in.{}", m.name), sub.endpoint().to_owned());
                let handled = Arc::new(sf_connections::Stats::default());
                probes.push(Conn {
                    name: m.name.clone(),
                    side: "in",
                    kind: m.kind.name(),
                    probe: Probe::Subscriber(
                        sub.stats().clone(),
                        handled.clone(),
                        sub.peer_gauge(),
                    ),
                });
                tracker.spawn(
                    consume(
                        "subscriber handler",
                        m.name.clone(),
                        sub,
                        h.clone(),
                        ctx.clone(),
                        stop_token.clone(),
                        handled,
                    )
                    .run(),
                );
            }
            (ConnectionKind::Puller, Some(Handler::Message(h))) => {
                let mut opts = PipelineOptions {
                    is_binder: m.creation_bool("is_binder"),
                    security: security_of(
                        options,
                        Side::In,
                        &m.name,
                        m.creation_bool("is_binder"),
                    )?,
                    ..Default::default()
                };
                if let Some(v) = m.creation_u64("max_message_bytes") {
                    opts.max_message_bytes = v as usize;
                }
                opts.acked = m.creation_bool("acked");
                let concurrency = m.creation_u64("concurrency").unwrap_or(1).max(1) as usize;
                let puller = Puller::start(&address, opts).await.map_err(conn_err)?;
                ready
                    .endpoints
                    .insert(format!("in.{}", m.name), puller.endpoint().to_owned());
                let handled = Arc::new(sf_connections::Stats::default());
                probes.push(Conn {
                    name: m.name.clone(),
                    side: "in",
                    kind: m.kind.name(),
                    probe: Probe::Puller(
                        puller.stats().clone(),
                        handled.clone(),
                        puller.peer_gauge(),
                    ),
                });
                let consumer = consume(
                    "puller handler",
                    m.name.clone(),
                    puller,
                    h.clone(),
                    ctx.clone(),
                    stop_token.clone(),
                    handled,
                );
                if concurrency > 1 {
                    tracker.spawn(consume_concurrently(consumer, concurrency));
                } else {
                    tracker.spawn(consumer.run());
                }
            }
            _ => {
                return Err(Error::Definition(format!(
                    "in-connection {:?} has no handler",
                    m.name
                )))
            }
        }
    }
    Ok((replyers, tracker))
}

/// The graceful stop, once the token is cancelled: every inbound connection has stopped
/// taking work; replyers and message tasks drain side by side under the one deadline, then
/// publishers, pushers and out-states flush (each returns as soon as its queue is out, or
/// after the linger: no fixed pause). Returns what was still running at the deadline.
async fn drain(
    options: &RunOptions,
    replyers: Vec<Replyer>,
    tracker: TaskTracker,
    shared: &Shared,
) -> Vec<String> {
    let mut incomplete = Vec::new();
    let drains: Vec<_> = replyers
        .into_iter()
        .map(|r| tokio::spawn(r.shutdown()))
        .collect();
    tracker.close();
    if tokio::time::timeout(options.drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "in-flight messages did not finish within {:?}",
            options.drain_timeout
        );
        incomplete.push(format!(
            "{} message handler(s) still running at the deadline",
            tracker.len()
        ));
    }
    for d in drains {
        if let Ok(d) = d.await {
            if !d.is_complete() {
                incomplete.push(format!(
                    "{} request(s) still running at the deadline, answered `unavailable`",
                    d.abandoned
                ));
            }
        }
    }
    let mut flushes = Vec::new();
    for conn in shared.outbound.values() {
        if let Outbound::Publisher(p) = conn {
            flushes.push(p.clone());
        }
    }
    // Each returns as soon as its queue is out, or after the linger: no fixed pause.
    for p in &flushes {
        p.shutdown(options.linger).await;
    }
    for conn in shared.outbound.values() {
        if let Outbound::Pusher(p) = conn {
            p.shutdown(options.linger).await;
        }
    }
    for st in shared.states_out.values() {
        match st {
            OutState::Full(f) => f.shutdown(options.linger).await,
            OutState::Delta(d) => d.shutdown(options.linger).await,
        }
    }
    incomplete
}

async fn drive(
    def: &ServiceDef,
    options: &RunOptions,
    ctx: &Ctx,
    stop: impl Future<Output = StopReason> + Send,
    stop_token: &CancellationToken,
    incomplete: &mut Vec<String>,
) -> Result<()> {
    tokio::pin!(stop);
    let stopped = async {
        tokio::select! {
            r = &mut stop => r,
            _ = stop_token.cancelled() => StopReason::Requested,
        }
    };
    if let Some(init) = &def.hooks.init_function {
        init(ctx.clone()).await.map_err(|error| Error::Hook {
            hook: "init_function",
            error,
        })?;
    }
    if options.main_mode {
        let main = def.main.clone().expect("checked before start");
        let main_fut = main(ctx.clone());
        tokio::pin!(main_fut);
        tokio::select! {
            r = &mut main_fut => return r.map_err(|error| Error::Hook { hook: "main", error }),
            reason = stopped => {
                on_signal(def, ctx, reason, options.drain_timeout).await;
                stop_token.cancel();
                // main sees ctx.is_stopping(); give it the drain deadline to wind down.
                match tokio::time::timeout(options.drain_timeout, main_fut).await {
                    Ok(r) => return r.map_err(|error| Error::Hook { hook: "main", error }),
                    Err(_) => {
                        tracing::warn!("main did not finish within {:?} of the stop; abandoning it", options.drain_timeout);
                        incomplete.push("main still running at the deadline".into());
                        return Ok(());
                    }
                }
            }
        }
    }
    let reason = stopped.await;
    on_signal(def, ctx, reason, options.drain_timeout).await;
    Ok(())
}

async fn on_signal(def: &ServiceDef, ctx: &Ctx, reason: StopReason, deadline: Duration) {
    tracing::info!(?reason, "stopping");
    let hook: Option<&CtxHook> = match reason {
        StopReason::Sigint => def.hooks.sigint_handler.as_ref(),
        StopReason::Sigterm => def.hooks.sigterm_handler.as_ref(),
        StopReason::Requested => None,
    };
    if let Some(hook) = hook {
        match tokio::time::timeout(deadline, hook(ctx.clone())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("signal handler failed: {e}"),
            Err(_) => tracing::error!("signal handler did not finish within {deadline:?}"),
        }
    }
}

/// The security of in-connection or out-connection `name`: NULL without a security file.
fn security_of(
    options: &RunOptions,
    side: Side,
    name: &str,
    binds: bool,
) -> Result<sf_connections::Security> {
    match &options.security {
        Some(s) => s.connection(side, name, binds),
        None => Ok(sf_connections::Security::Null),
    }
}

fn check_creation(
    allowed: &[&str],
    creation: &Map<String, Value>,
    name: &str,
    kind: &str,
) -> Result<()> {
    check_values(
        allowed,
        creation,
        &format!("{kind} {name:?}"),
        "creation argument",
    )
    .map_err(Error::Definition)
}

/// Each key is one `allowed` names, with a value of the type that option takes.
fn check_values(
    allowed: &[&str],
    values: &Map<String, Value>,
    what: &str,
    noun: &str,
) -> std::result::Result<(), String> {
    for (key, value) in values {
        if !allowed.contains(&key.as_str()) {
            return Err(format!(
                "{what}: unknown {noun} {key:?} (allowed: {})",
                allowed.join(", ")
            ));
        }
        let (fits, expected) = match key.as_str() {
            "topic" => (value.is_string(), "a string"),
            "is_binder" | "is_x_pub" | "acked" => (value.is_boolean(), "true or false"),
            "retries" | "max_message_bytes" | "max_concurrency" | "credit_window" => {
                (value.is_u64(), "a whole number")
            }
            "window" | "concurrency" | "heartbeat_liveness" => (
                value.as_u64().is_some_and(|n| n >= 1),
                "a whole number (1 or more)",
            ),
            // Seconds.
            _ => (
                value.as_f64().is_some_and(|s| s.is_finite() && s >= 0.0),
                "a number of seconds (0 or more)",
            ),
        };
        if !fits {
            return Err(format!(
                "{what}: {noun} {key:?} must be {expected}, found {value}"
            ));
        }
    }
    Ok(())
}

/// Merges the addresses file's `options` into the declared creation arguments: the file is
/// the deployment's word, so it wins over what the code declared. Options for connections
/// or states the service does not declare are ignored (several services may share one
/// file); an unknown option, or a value of the wrong type, stops the start naming it.
fn apply_options(def: &mut ServiceDef, addresses: &AddressesFile, origin: &str) -> Result<()> {
    let opts = &addresses.options;
    for m in def
        .connections
        .inbound
        .iter_mut()
        .chain(def.connections.outbound.iter_mut())
    {
        let inbound = m.kind.is_inbound();
        let given = opts.connections.get(inbound, &m.name);
        let (keys, kind) = (m.kind.creation_keys(), m.kind.name());
        merge_options(
            origin,
            "connections",
            inbound,
            &m.name,
            keys,
            kind,
            given,
            &mut m.creation,
        )?;
    }
    for s in def
        .states
        .inbound
        .iter_mut()
        .chain(def.states.outbound.iter_mut())
    {
        let inbound = s.kind.is_inbound();
        let given = opts.states.get(inbound, &s.name);
        let (keys, kind) = (s.kind.creation_keys(), s.kind.name());
        merge_options(
            origin,
            "states",
            inbound,
            &s.name,
            keys,
            kind,
            given,
            &mut s.creation,
        )?;
    }
    Ok(())
}

/// Checks the options `given` for one connection or state and merges them over its
/// creation arguments.
#[allow(clippy::too_many_arguments)]
fn merge_options(
    origin: &str,
    section: &str,
    inbound: bool,
    name: &str,
    allowed: &[&str],
    kind: &str,
    given: Option<&Map<String, Value>>,
    creation: &mut Map<String, Value>,
) -> Result<()> {
    let Some(given) = given else {
        return Ok(());
    };
    let side = if inbound { "in" } else { "out" };
    let what = format!("{origin}: options.{section}.{side}.{name}");
    check_values(allowed, given, &what, &format!("{kind} option")).map_err(Error::Addresses)?;
    creation.extend(given.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(())
}

/// The states a running service holds: in-state objects (kept alive until the end), their
/// views, and the out-states.
struct BuiltStates {
    ins: Vec<Box<dyn std::any::Any + Send>>,
    watches: HashMap<String, tokio::sync::watch::Receiver<sf_states::StateView>>,
    outs: HashMap<String, OutState>,
    /// The in-states' counters, for the control endpoint.
    in_stats: HashMap<String, Arc<sf_connections::Stats>>,
}

async fn build_states(
    def: &ServiceDef,
    addresses: &AddressesFile,
    origin: &str,
    ready: &mut Ready,
    security: Option<&SecuritySettings>,
) -> Result<BuiltStates> {
    let mut built = BuiltStates {
        ins: Vec::new(),
        watches: HashMap::new(),
        outs: HashMap::new(),
        in_stats: HashMap::new(),
    };
    for m in def.states.all() {
        let addrs = addresses.state_addresses(m, origin)?;
        let mut opts = m.state_options();
        if let Some(sec) = security {
            // Which of the state's sockets bind: an out side's replyer always, its publisher
            // unless it goes through a bus; an in side's subscriber with is_binder.
            let (side, delta) = match m.kind {
                StateKind::FullUpdateIn => (Side::In, false),
                StateKind::DeltaUpdateIn => (Side::In, true),
                StateKind::FullUpdateOut => (Side::Out, false),
                StateKind::DeltaUpdateOut => (Side::Out, true),
            };
            let (binds, connects) = match side {
                Side::Out => (delta || !opts.is_x_pub, opts.is_x_pub),
                Side::In => (opts.is_binder, delta || !opts.is_binder),
            };
            if binds {
                opts.bind_security = sec.state(side, &m.name, true)?;
            }
            if connects {
                opts.connect_security = sec.state(side, &m.name, false)?;
            }
        }
        let err = |e: sf_states::Error| Error::Other(format!("state {:?}: {e}", m.name));
        match m.kind {
            StateKind::FullUpdateIn => {
                let s = sf_states::FullUpdateIn::start(&addrs[0], &opts)
                    .await
                    .map_err(err)?;
                built.in_stats.insert(m.name.clone(), s.stats().clone());
                built.watches.insert(m.name.clone(), s.watch());
                built.ins.push(Box::new(s));
            }
            StateKind::DeltaUpdateIn => {
                let s = sf_states::DeltaUpdateIn::start(&addrs[0], &addrs[1], &opts)
                    .await
                    .map_err(err)?;
                built.in_stats.insert(m.name.clone(), s.stats().clone());
                built.watches.insert(m.name.clone(), s.watch());
                built.ins.push(Box::new(s));
            }
            StateKind::FullUpdateOut => {
                let s = sf_states::FullUpdateOut::start(&addrs[0], &opts)
                    .await
                    .map_err(err)?;
                ready.endpoints.insert(
                    format!("state.out.{}.publisher", m.name),
                    s.endpoint().to_owned(),
                );
                built.outs.insert(m.name.clone(), OutState::Full(s));
            }
            StateKind::DeltaUpdateOut => {
                let s = sf_states::DeltaUpdateOut::start(&addrs[0], &addrs[1], &opts)
                    .await
                    .map_err(err)?;
                ready.endpoints.insert(
                    format!("state.out.{}.publisher", m.name),
                    s.publisher_endpoint().to_owned(),
                );
                ready.endpoints.insert(
                    format!("state.out.{}.replyer", m.name),
                    s.replyer_endpoint().to_owned(),
                );
                built.outs.insert(m.name.clone(), OutState::Delta(s));
            }
        }
    }
    Ok(built)
}

async fn watch_state(
    name: String,
    mut rx: tokio::sync::watch::Receiver<sf_states::StateView>,
    handler: StateHandler,
    ctx: Ctx,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
        let view = rx.borrow_and_update().clone();
        if let Err(e) = handler(view, ctx.clone()).await {
            if let Some(suppressed) = WARNINGS.allow("state_handler", &name) {
                tracing::warn!(state = %name, suppressed, "state change handler failed: {}", escape(&e.message));
            }
        }
    }
}

fn endpoint_of(o: &Outbound) -> String {
    match o {
        Outbound::Requester(r) => r.endpoint().to_owned(),
        Outbound::Publisher(p) => p.endpoint().to_owned(),
        Outbound::Pusher(p) => p.endpoint().to_owned(),
        Outbound::External(t) => format!("local:{}", t.name()),
    }
}

async fn build_outbound(
    m: &ConnectionModel,
    addresses: &AddressesFile,
    origin: &str,
    security: Option<&SecuritySettings>,
) -> Result<Outbound> {
    let security_for = |binds: bool| match security {
        Some(s) => s.connection(Side::Out, &m.name, binds),
        None => Ok(sf_connections::Security::Null),
    };
    let brokered = addresses.broker_for(m, origin)?;
    let address: Address = match &brokered {
        Some((broker, _)) => broker.clone(),
        None => addresses.address_for(m, origin)?,
    };
    let conn_err = |source| Error::Connection {
        name: m.name.clone(),
        source,
    };
    Ok(match m.kind {
        ConnectionKind::Requester => {
            let mut opts = RequesterOptions {
                security: security_for(false)?,
                ..Default::default()
            };
            if let Some(t) = m.creation_f64("timeout_s") {
                opts.timeout = Duration::from_secs_f64(t.max(0.001));
            }
            if let Some(r) = m.creation_u64("retries") {
                opts.retries = r as u32;
            }
            if let Some(v) = m.creation_u64("max_message_bytes") {
                opts.max_message_bytes = v as usize;
            }
            Outbound::Requester(
                match &brokered {
                    Some((broker, Some(service))) => {
                        Requester::through_broker(broker, service, opts)
                    }
                    _ => Requester::connect(&address, opts),
                }
                .map_err(conn_err)?,
            )
        }
        ConnectionKind::Publisher => {
            let credit = m.creation_u64("credit_window").map(|window| CreditOptions {
                window,
                stall_timeout: m.creation_f64("credit_stall_timeout_s").map_or(
                    CreditOptions::default().stall_timeout,
                    Duration::from_secs_f64,
                ),
            });
            let opts = PublisherOptions {
                topic: m.creation_str("topic"),
                is_x_pub: !binds(m),
                credit,
                security: security_for(binds(m))?,
                ..Default::default()
            };
            let p = Publisher::start(&address, opts).await.map_err(conn_err)?;
            if let Some(wait) = m.creation_f64("wait_after_creation_s") {
                // The original's guard against slow joiners, honoured when asked for.
                tokio::time::sleep(Duration::from_secs_f64(wait.clamp(0.0, 60.0))).await;
            }
            Outbound::Publisher(p)
        }
        ConnectionKind::Pusher => {
            let mut opts = PipelineOptions {
                is_binder: binds(m),
                security: security_for(binds(m))?,
                ..Default::default()
            };
            if let Some(t) = m.creation_f64("send_timeout_s") {
                opts.send_timeout = Duration::from_secs_f64(t.max(0.001));
            }
            opts.acked = m.creation_bool("acked");
            if let Some(t) = m.creation_f64("ack_timeout_s") {
                opts.ack_timeout = Duration::from_secs_f64(t.max(0.001));
            }
            if let Some(w) = m.creation_u64("window") {
                opts.window = (w as usize).max(1);
            }
            Outbound::Pusher(Pusher::start(&address, opts).await.map_err(conn_err)?)
        }
        _ => {
            return Err(Error::Definition(format!(
                "{:?} is not an out-connection",
                m.name
            )))
        }
    })
}

/// An inbound stream of message bodies: a subscriber's deliveries, a puller's pushes, each
/// with the ack an acked puller owes for it.
trait Inbound: Send {
    /// The next body; `None` once the stream has ended.
    fn next_body(
        &mut self,
    ) -> impl std::future::Future<Output = Option<(bytes::Bytes, Option<Ack>)>> + Send;
}

impl Inbound for Subscriber {
    async fn next_body(&mut self) -> Option<(bytes::Bytes, Option<Ack>)> {
        self.next().await.map(|d| (d.body, None))
    }
}

impl Inbound for Puller {
    async fn next_body(&mut self) -> Option<(bytes::Bytes, Option<Ack>)> {
        self.next_pushed().await.map(|p| (p.body, p.ack))
    }
}

/// Runs a message handler on each message of an inbound stream, until the stop token or the
/// end of the stream.
struct Consumer<S> {
    kind: &'static str,
    name: String,
    source: S,
    handler: MessageHandler,
    ctx: Ctx,
    stop: CancellationToken,
    /// The handler's figures (runs, failures, time, in flight) for the control endpoint.
    stats: Arc<sf_connections::Stats>,
}

fn consume<S: Inbound>(
    kind: &'static str,
    name: String,
    source: S,
    handler: MessageHandler,
    ctx: Ctx,
    stop: CancellationToken,
    stats: Arc<sf_connections::Stats>,
) -> Consumer<S> {
    Consumer {
        kind,
        name,
        source,
        handler,
        ctx,
        stop,
        stats,
    }
}

/// Runs `handler` on one message, then acknowledges it (an acked puller): after the handler
/// returned, so a push it made downstream was acknowledged first. A failed handler is logged
/// (rate-limited, escaped) and its message acknowledged as failed all the same: a poison
/// message is not redelivered for ever (the pusher's push returns the error).
async fn handle_one(
    kind: &'static str,
    name: &str,
    handler: &MessageHandler,
    ctx: Ctx,
    body: bytes::Bytes,
    ack: Option<Ack>,
    stats: &sf_connections::Stats,
) {
    let started = std::time::Instant::now();
    stats.begin_in_flight();
    let outcome = handler(body, ctx).await;
    stats.end_in_flight();
    stats.record_processing(started.elapsed());
    stats.bump(sf_connections::Counter::Received);
    if let Err(e) = &outcome {
        stats.bump(sf_connections::Counter::HandlerFailed);
        stats.set_last_error(format!("{}: {}", e.code, e.message));
    }
    match outcome {
        Ok(()) => {
            if let Some(ack) = ack {
                ack.send();
            }
        }
        Err(e) => {
            if let Some(ack) = ack {
                ack.fail();
            }
            if let Some(suppressed) = WARNINGS.allow(kind, name) {
                tracing::warn!(
                    connection = %name,
                    code = %e.code,
                    suppressed,
                    "{kind} failed: {}",
                    escape(&e.message)
                );
            }
        }
    }
}

impl<S: Inbound> Consumer<S> {
    /// One message at a time, in order.
    async fn run(mut self) {
        loop {
            let (body, ack) = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return,
                d = self.source.next_body() => match d { Some(d) => d, None => return },
            };
            handle_one(
                self.kind,
                &self.name,
                &self.handler,
                self.ctx.clone(),
                body,
                ack,
                &self.stats,
            )
            .await;
        }
    }
}

/// Up to `n` handlers at once (a puller's `concurrency`): a transform whose handler waits for
/// its downstream acks still keeps several messages moving. Order is not kept. At the stop
/// it takes no more messages and waits for the handlers running (the drain deadline bounds
/// that); a message it never took stays unacknowledged and is redelivered upstream.
async fn consume_concurrently<S: Inbound + 'static>(mut c: Consumer<S>, n: usize) {
    let slots = Arc::new(tokio::sync::Semaphore::new(n));
    let mut running = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            biased;
            _ = c.stop.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        // Reap the finished ones so the set does not grow.
        while running.try_join_next().is_some() {}
        let (body, ack) = tokio::select! {
            biased;
            _ = c.stop.cancelled() => break,
            d = c.source.next_body() => match d { Some(d) => d, None => break },
        };
        let (kind, name, handler, ctx) = (c.kind, c.name.clone(), c.handler.clone(), c.ctx.clone());
        let stats = c.stats.clone();
        running.spawn(async move {
            handle_one(kind, &name, &handler, ctx, body, ack, &stats).await;
            drop(permit);
        });
    }
    while running.join_next().await.is_some() {}
}
