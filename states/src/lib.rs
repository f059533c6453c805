//! Full and delta state replication on top of `sf-connections`, wire-compatible with Python
//! `service_framework` 0.0.18 and without its defects.
//!
//! # Layout
//! - [`FullUpdateOut`] / [`FullUpdateIn`]: the out side publishes the whole state as `args`;
//!   the in side replaces its copy and notifies.
//! - [`DeltaUpdateOut`] / [`DeltaUpdateIn`]: the out side publishes
//!   `{current_num, is_snapshot, state}` and answers snapshot requests on a replyer with
//!   `{state, current_num}`; deltas are shallow (top-level keys, nil deletes a key).
//!
//! What differs from the original, on purpose:
//! - the out side owns `current_num` and records it, so its snapshot replies carry the true
//!   number (the original's always said 0, making every later delta look like a gap);
//! - the in side asks for a snapshot as soon as it starts (a late joiner converges without
//!   waiting for the next change), ignores old and duplicate numbers, and resyncs after a gap
//!   with a bounded, retried request in its own task while newer deltas are buffered, so the
//!   service loop never blocks;
//! - deleting an absent key is not an error; a message that is not a valid state update is a
//!   logged, counted rejection.
//!
//! Every in side exposes a consistent view ([`StateView`]: the map and its number, behind an
//! `Arc`) through a `watch` channel, so readers never see a half-applied update and handlers
//! can wait for changes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sf_connections::stats::{Counter, Stats};
use sf_connections::wire::WorkflowId;
use sf_connections::Security;
use sf_connections::{
    typed, Address, Delivery, Publisher, PublisherOptions, Replyer, ReplyerOptions, Requester,
    RequesterOptions, Subscriber, SubscriberOptions, WireError,
};
use tokio::sync::{mpsc, watch, Mutex};
use tokio_util::sync::CancellationToken;

pub use rmpv::Value;

/// A state: top-level keys to msgpack values.
pub type StateMap = BTreeMap<String, Value>;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket could not be set up or used.
    #[error(transparent)]
    Connection(#[from] sf_connections::Error),
}

/// The crate's result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The args of a delta publish, as 0.0.18 sends them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeltaArgs {
    /// Position in the out side's sequence.
    pub current_num: i64,
    /// True: `state` replaces everything. False: `state` holds changed keys (nil deletes).
    pub is_snapshot: bool,
    /// The snapshot or the changed keys.
    pub state: StateMap,
}

/// The out side's answer to a snapshot request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotReply {
    /// The whole state.
    pub state: StateMap,
    /// Its number.
    pub current_num: i64,
}

/// A consistent view of an in-state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateView {
    /// The state.
    pub state: Arc<StateMap>,
    /// Its number (`-1` before anything arrived; full-update states count updates).
    pub current_num: i64,
}

/// Applies a shallow delta: nil deletes (an absent key is fine), anything else sets.
pub fn apply_delta(state: &mut StateMap, delta: &StateMap) {
    for (k, v) in delta {
        if v.is_nil() {
            state.remove(k);
        } else {
            state.insert(k.clone(), v.clone());
        }
    }
}

/// Topic and bus settings shared by every state kind.
#[derive(Debug, Clone, Default)]
pub struct StateOptions {
    /// Topic for the publishes (empty: none).
    pub topic: String,
    /// Out side: connect the publisher to a bus proxy instead of binding.
    pub is_x_pub: bool,
    /// In side: bind the subscriber instead of connecting.
    pub is_binder: bool,
    /// In side (delta): how long one snapshot request may take (default 2 s).
    pub resync_timeout: Option<Duration>,
    /// Out side (delta): look this often whether the state changed since the last snapshot,
    /// or a subscriber missed messages at its queue's limit, and if so re-publish the state as
    /// a snapshot once the stream is quiet (default 1 s; `Some(Duration::ZERO)` turns it
    /// off). Without it, a lost final delta would go unnoticed until the next change.
    pub snapshot_interval: Option<Duration>,
    /// Out side: how long `start` waits after binding or connecting, as the original's
    /// `wait_after_creation_s` (default 0.15 s), so subscribers already trying to connect
    /// are in place before the first publish.
    pub wait_after_creation: Option<Duration>,
    /// Security of the state's sockets that bind: a CURVE server's (default NULL).
    pub bind_security: Security,
    /// Security of the state's sockets that connect: a CURVE client's (default NULL).
    pub connect_security: Security,
}

/// The original's `wait_after_creation_s` default.
pub const DEFAULT_WAIT_AFTER_CREATION: Duration = Duration::from_millis(150);

/// How long the out side must have published nothing before it publishes an unsolicited
/// snapshot (for a new subscriber, or the periodic one). A snapshot sent after a quiet spell
/// holds the newest state, so a follower that applies every snapshot whatever its number
/// (Python 0.0.18 does) can never be taken back by it: everything published before it is
/// older, everything after it follows on from it.
pub const QUIET_SPELL: Duration = Duration::from_millis(100);

impl StateOptions {
    /// Waits `wait_after_creation` (the out sides, after their sockets are up).
    async fn wait_after_creation(&self) {
        let wait = self
            .wait_after_creation
            .unwrap_or(DEFAULT_WAIT_AFTER_CREATION);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// The security of a socket that binds (`true`) or connects.
    fn security_of(&self, binds: bool) -> Security {
        if binds {
            self.bind_security.clone()
        } else {
            self.connect_security.clone()
        }
    }

    /// The out side's publisher settings.
    fn publisher(&self) -> PublisherOptions {
        PublisherOptions {
            topic: self.topic.clone(),
            is_x_pub: self.is_x_pub,
            credit: None,
            security: self.security_of(!self.is_x_pub),
            ..Default::default()
        }
    }

    /// The in side's subscriber settings.
    fn subscriber(&self) -> SubscriberOptions {
        SubscriberOptions {
            topic: self.topic.clone(),
            is_binder: self.is_binder,
            security: self.security_of(self.is_binder),
            ..Default::default()
        }
    }
}

// ---------------------------------------------------------------------------------------
// Out sides
// ---------------------------------------------------------------------------------------

/// `full_update_out`: publishes the whole state on every change, and again (after a quiet
/// spell) when a subscriber arrives.
#[derive(Debug, Clone)]
pub struct FullUpdateOut {
    publisher: Publisher,
    /// The state, once set, and when it was last published.
    state: Arc<Mutex<(Option<StateMap>, tokio::time::Instant)>>,
}

impl FullUpdateOut {
    /// Binds (or connects, `is_x_pub`) the publisher, then waits `wait_after_creation`.
    pub async fn start(publisher: &Address, options: &StateOptions) -> Result<Self> {
        let opts = options.publisher();
        let out = FullUpdateOut {
            publisher: Publisher::start(publisher, opts).await?,
            state: Arc::new(Mutex::new((None, tokio::time::Instant::now()))),
        };
        tokio::spawn(answer_newcomers(
            out.publisher.subscriber_changes(),
            None::<(Duration, fn() -> BoxFut<bool>)>,
            {
                let out = out.clone();
                move || {
                    let out = out.clone();
                    Box::pin(async move {
                        let guard = out.state.lock().await;
                        match &guard.0 {
                            Some(state) => Some(
                                out.publisher
                                    .publish(state, &WorkflowId::None)
                                    .await
                                    .is_ok(),
                            ),
                            None => Some(true),
                        }
                    })
                }
            },
            {
                let out = out.clone();
                move || {
                    let out = out.clone();
                    Box::pin(async move { out.state.lock().await.1 })
                }
            },
        ));
        options.wait_after_creation().await;
        Ok(out)
    }

    /// The publisher's endpoint.
    pub fn endpoint(&self) -> &str {
        self.publisher.endpoint()
    }

    /// Replaces the state and publishes it.
    pub async fn set(&self, state: StateMap, workflow_id: &WorkflowId) -> Result<()> {
        let mut guard = self.state.lock().await;
        self.publisher.publish(&state, workflow_id).await?;
        *guard = (Some(state), tokio::time::Instant::now());
        Ok(())
    }

    /// The current state.
    pub async fn current(&self) -> StateMap {
        self.state.lock().await.0.clone().unwrap_or_default()
    }

    /// Flushes and closes.
    pub async fn shutdown(&self, linger: Duration) {
        self.publisher.shutdown(linger).await;
    }
}

/// `delta_update_out`: owns the sequence number, publishes snapshots and deltas, answers
/// snapshot requests.
#[derive(Debug, Clone)]
pub struct DeltaUpdateOut {
    publisher: Publisher,
    inner: Arc<Mutex<OutInner>>,
    replyer: Arc<std::sync::Mutex<Option<Replyer>>>,
    replyer_endpoint: String,
}

/// A delta out side's state, its number, and when it last published.
#[derive(Debug)]
struct OutInner {
    state: StateMap,
    num: i64,
    published: tokio::time::Instant,
}

impl DeltaUpdateOut {
    /// Binds the publisher (or connects it, `is_x_pub`) and the snapshot replyer, then waits
    /// `wait_after_creation`. From then on a subscriber's arrival is answered with a snapshot
    /// (after a quiet spell), so a follower that never asks (Python 0.0.18's) converges too.
    pub async fn start(
        publisher: &Address,
        replyer: &Address,
        options: &StateOptions,
    ) -> Result<Self> {
        let inner = Arc::new(Mutex::new(OutInner {
            state: StateMap::new(),
            num: 0,
            published: tokio::time::Instant::now(),
        }));
        let for_replies = inner.clone();
        // Any request gets the snapshot: the original's in side sends `{"args": {}}`.
        let handler = typed(move |_args: Value, _meta| {
            let inner = for_replies.clone();
            async move {
                let guard = inner.lock().await;
                Ok::<_, WireError>(SnapshotReply {
                    state: guard.state.clone(),
                    current_num: guard.num,
                })
            }
        });
        let rep = Replyer::bind(
            replyer,
            handler,
            ReplyerOptions {
                security: options.bind_security.clone(),
                ..Default::default()
            },
        )
        .await?;
        let replyer_endpoint = rep.endpoint().to_owned();
        let opts = options.publisher();
        let publisher = Publisher::start(publisher, opts).await?;
        let out = DeltaUpdateOut {
            publisher,
            inner,
            replyer: Arc::new(std::sync::Mutex::new(Some(rep))),
            replyer_endpoint,
        };
        let every = options.snapshot_interval.unwrap_or(Duration::from_secs(1));
        let periodic = (!every.is_zero()).then(|| {
            let out = out.clone();
            // (number, drops) at the last check.
            let last = Arc::new(std::sync::Mutex::new((0i64, 0u64)));
            let check = move || {
                let out = out.clone();
                let last = last.clone();
                let fut: BoxFut<bool> = Box::pin(async move {
                    // Owed when the state moved on since the last look, or when a
                    // subscriber missed messages (the last snapshot among them, perhaps).
                    let now = (
                        out.inner.lock().await.num,
                        out.publisher.stats().get(Counter::Dropped),
                    );
                    let before = std::mem::replace(&mut *last.lock().expect("last lock"), now);
                    before != now
                });
                fut
            };
            (every, check)
        });
        tokio::spawn(answer_newcomers(
            out.publisher.subscriber_changes(),
            periodic,
            {
                let out = out.clone();
                move || {
                    let out = out.clone();
                    Box::pin(
                        async move { Some(out.publish_snapshot(&WorkflowId::None).await.is_ok()) },
                    )
                }
            },
            {
                let out = out.clone();
                move || {
                    let out = out.clone();
                    Box::pin(async move { out.inner.lock().await.published })
                }
            },
        ));
        options.wait_after_creation().await;
        Ok(out)
    }

    /// The publisher's endpoint.
    pub fn publisher_endpoint(&self) -> &str {
        self.publisher.endpoint()
    }

    /// The snapshot replyer's endpoint.
    pub fn replyer_endpoint(&self) -> &str {
        &self.replyer_endpoint
    }

    /// Replaces the whole state; publishes it as a snapshot with the next number.
    pub async fn snapshot(&self, state: StateMap, workflow_id: &WorkflowId) -> Result<i64> {
        let mut guard = self.inner.lock().await;
        guard.state = state;
        guard.num += 1;
        let args = DeltaArgs {
            current_num: guard.num,
            is_snapshot: true,
            state: guard.state.clone(),
        };
        self.publisher.publish(&args, workflow_id).await?;
        guard.published = tokio::time::Instant::now();
        Ok(guard.num)
    }

    /// Applies a shallow delta (nil deletes); publishes it with the next number. Deletes of
    /// keys the state does not hold are left out of what is published (Python 0.0.18's
    /// follower raises on them); a delta left with nothing to say is not published and keeps
    /// the number.
    pub async fn delta(&self, mut delta: StateMap, workflow_id: &WorkflowId) -> Result<i64> {
        let mut guard = self.inner.lock().await;
        delta.retain(|k, v| !v.is_nil() || guard.state.contains_key(k));
        if delta.is_empty() {
            return Ok(guard.num);
        }
        apply_delta(&mut guard.state, &delta);
        guard.num += 1;
        let args = DeltaArgs {
            current_num: guard.num,
            is_snapshot: false,
            state: delta,
        };
        self.publisher.publish(&args, workflow_id).await?;
        guard.published = tokio::time::Instant::now();
        Ok(guard.num)
    }

    /// Publishes the current state as a snapshot (same number: nothing changed), e.g. when
    /// subscribers are known to have joined.
    pub async fn publish_snapshot(&self, workflow_id: &WorkflowId) -> Result<i64> {
        let mut guard = self.inner.lock().await;
        let args = DeltaArgs {
            current_num: guard.num,
            is_snapshot: true,
            state: guard.state.clone(),
        };
        self.publisher.publish(&args, workflow_id).await?;
        guard.published = tokio::time::Instant::now();
        Ok(guard.num)
    }

    /// Peers refused by security (CURVE) on the publisher and the snapshot replyer together.
    pub fn auth_failures(&self) -> u64 {
        let replyer = self
            .replyer
            .lock()
            .expect("replyer lock")
            .as_ref()
            .map_or(0, |r| r.stats().get(Counter::AuthFailures));
        self.publisher.stats().get(Counter::AuthFailures) + replyer
    }

    /// The current state and number.
    pub async fn current(&self) -> (StateMap, i64) {
        let guard = self.inner.lock().await;
        (guard.state.clone(), guard.num)
    }

    /// Closes the replyer, flushes the publisher.
    pub async fn shutdown(&self, linger: Duration) {
        let rep = self.replyer.lock().expect("replyer lock").take();
        if let Some(rep) = rep {
            rep.shutdown().await;
        }
        self.publisher.shutdown(linger).await;
    }
}

type BoxFut<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Publishes unsolicited snapshots for an out side: when a subscriber arrives (or leaves:
/// one that reconnects does both), and when the periodic `check` says one is owed; always
/// once `last_published()` is a quiet spell old, never in the middle of a stream. `publish`
/// returns `Some(false)` once the publisher is closed, which ends the task.
///
/// The first periodic check comes one period after the start, not at once: a burst of
/// changes made right after start-up (before subscribers finished connecting, the
/// slow-joiner window) must be followed by a snapshot that has a chance to reach them, not by
/// one sent in the same instant and lost the same way.
async fn answer_newcomers<P, L, C>(
    mut subscribers: watch::Receiver<usize>,
    periodic: Option<(Duration, C)>,
    mut publish: P,
    mut last_published: L,
) where
    P: FnMut() -> BoxFut<Option<bool>> + Send,
    L: FnMut() -> BoxFut<tokio::time::Instant> + Send,
    C: FnMut() -> BoxFut<bool> + Send,
{
    let (every, mut check) = match periodic {
        Some((every, check)) => (every, Some(check)),
        None => (Duration::from_secs(3600), None),
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watching = true;
    let mut owed = false;
    let mut quiet_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            changed = subscribers.changed(), if watching => match changed {
                Ok(()) => owed = true,
                // No count kept for this publisher kind (or it closed): ticks only.
                Err(_) => watching = false,
            },
            _ = tick.tick(), if check.is_some() => {
                if let Some(check) = check.as_mut() {
                    owed |= check().await;
                }
            }
            _ = tokio::time::sleep_until(quiet_at), if owed => {}
        }
        if !owed {
            continue;
        }
        let quiet = last_published().await + QUIET_SPELL;
        if tokio::time::Instant::now() < quiet {
            quiet_at = quiet;
            continue;
        }
        match publish().await {
            Some(false) => return,
            _ => owed = false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// In sides
// ---------------------------------------------------------------------------------------

/// `full_update_in`: keeps the last whole state published.
#[derive(Debug)]
pub struct FullUpdateIn {
    view: watch::Receiver<StateView>,
    stats: Arc<Stats>,
    _stop: DropCancel,
}

#[derive(Debug)]
struct DropCancel(CancellationToken);

impl Drop for DropCancel {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The view of an in-state before anything arrived: empty, number -1.
fn empty_view() -> (watch::Sender<StateView>, watch::Receiver<StateView>) {
    watch::channel(StateView {
        state: Arc::default(),
        current_num: -1,
    })
}

impl FullUpdateIn {
    /// Subscribes to `subscriber`.
    pub async fn start(subscriber: &Address, options: &StateOptions) -> Result<Self> {
        let sub = Subscriber::start(subscriber, options.subscriber()).await?;
        let (tx, view) = empty_view();
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        tokio::spawn(full_in_loop(sub, tx, stats.clone(), stop.clone()));
        Ok(FullUpdateIn {
            view,
            stats,
            _stop: DropCancel(stop),
        })
    }

    /// A receiver of the view: `borrow()` reads, `changed()` waits.
    pub fn watch(&self) -> watch::Receiver<StateView> {
        self.view.clone()
    }

    /// Counters (`received`, `malformed`).
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}

async fn full_in_loop(
    mut sub: Subscriber,
    tx: watch::Sender<StateView>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let mut n = -1;
    loop {
        let d = tokio::select! {
            _ = stop.cancelled() => return,
            d = sub.next() => match d { Some(d) => d, None => return },
        };
        match d.args::<StateMap>() {
            Ok(state) => {
                stats.bump(Counter::Received);
                n += 1;
                tx.send_replace(StateView {
                    state: Arc::new(state),
                    current_num: n,
                });
            }
            Err(e) => {
                stats.bump(Counter::Malformed);
                tracing::warn!("full_update_in rejected a message that is not a state map: {e}");
            }
        }
    }
}

/// `delta_update_in`: follows a `delta_update_out`, resyncing by snapshot when needed.
#[derive(Debug)]
pub struct DeltaUpdateIn {
    view: watch::Receiver<StateView>,
    stats: Arc<Stats>,
    _stop: DropCancel,
}

/// What a [`DeltaUpdateIn`] counts beyond the connection counters: `received` (updates
/// applied), `duplicates` (old or repeated numbers ignored), `lost` (gaps seen), `retries`
/// (snapshot requests), `malformed` (rejected messages).
impl DeltaUpdateIn {
    /// Subscribes to `subscriber` and asks `requester` (the out side's replyer) for a snapshot
    /// at once.
    pub async fn start(
        subscriber: &Address,
        requester: &Address,
        options: &StateOptions,
    ) -> Result<Self> {
        let sub = Subscriber::start(subscriber, options.subscriber()).await?;
        let timeout = options.resync_timeout.unwrap_or(Duration::from_secs(2));
        let req = Requester::connect(
            requester,
            RequesterOptions {
                timeout,
                security: options.connect_security.clone(),
                ..Default::default()
            },
        )?;
        let (tx, view) = empty_view();
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let follower = Follower::new(tx, stats.clone());
        tokio::spawn(follower.run(sub, req, stop.clone()));
        Ok(DeltaUpdateIn {
            view,
            stats,
            _stop: DropCancel(stop),
        })
    }

    /// A receiver of the view: `borrow()` reads, `changed()` waits.
    pub fn watch(&self) -> watch::Receiver<StateView> {
        self.view.clone()
    }

    /// Counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}

/// Deltas kept while a snapshot is on its way (beyond this the oldest go: the snapshot
/// covers them).
const MAX_BUFFERED: usize = 100_000;

struct Follower {
    tx: watch::Sender<StateView>,
    stats: Arc<Stats>,
    buffered: VecDeque<DeltaArgs>,
    state: StateMap,
    num: i64,
    /// The publisher instance followed (framework out sides only): a new one means the out
    /// side restarted and its numbering started again.
    source: Option<u64>,
    /// The next snapshot reply is taken whatever its number: it was asked for after the
    /// connection to the out side was re-established, and the out side may have restarted
    /// (its numbers starting again) while we were cut off.
    force: bool,
    /// A reconnection happened while a resync was on its way: ask again once it lands.
    again: bool,
    /// Updates applied since the view was last published.
    dirty: bool,
    /// When the view was last published, and how long copying the state for it took.
    published: tokio::time::Instant,
    copy_cost: Duration,
}

/// A view is a copy of the whole state (at 10,000 keys a copy costs as much as hundreds of
/// deltas). While updates keep coming, a view is published at most once per this many times
/// the last copy's cost, so copies take at most about a fifth of the follower's time; an
/// update that arrives after a quiet spell is published at once, and the last one of a
/// stream within that interval.
const VIEW_COPY_FACTOR: u32 = 4;

/// The longest a view may lag behind applied updates, whatever one slow copy measured.
const MAX_VIEW_INTERVAL: Duration = Duration::from_millis(50);

impl Follower {
    /// An empty follower, before its first snapshot.
    fn new(tx: watch::Sender<StateView>, stats: Arc<Stats>) -> Follower {
        Follower {
            tx,
            stats,
            buffered: VecDeque::new(),
            state: StateMap::new(),
            num: -1,
            source: None,
            force: false,
            again: false,
            dirty: false,
            published: tokio::time::Instant::now(),
            copy_cost: Duration::ZERO,
        }
    }

    async fn run(mut self, mut sub: Subscriber, req: Requester, stop: CancellationToken) {
        let (snap_tx, mut snap_rx) = mpsc::channel::<SnapshotReply>(1);
        // Ask at once: a late joiner converges without waiting for the next change.
        let mut resync = Some(spawn_resync(
            req.clone(),
            snap_tx.clone(),
            self.stats.clone(),
            stop.clone(),
        ));
        // Armed when a view is owed but the last one is too recent; reset only when armed, so
        // a steady stream registers one timer per interval, not one per delta.
        let later = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(later);
        let mut owed = false;
        let mut connections = sub.connections();
        let mut watching = true;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                c = connections.changed(), if watching => {
                    if c.is_err() {
                        watching = false;
                        continue;
                    }
                    // Re-established (or first established): whatever was published while
                    // we were cut off is lost to us, and the out side may be a new instance.
                    tracing::debug!("delta_update_in connected to its out side; asking for a snapshot");
                    if resync.is_some() {
                        self.again = true;
                    } else {
                        self.force = true;
                        resync = Some(spawn_resync(req.clone(), snap_tx.clone(), self.stats.clone(), stop.clone()));
                    }
                }
                _ = &mut later, if owed => {
                    owed = false;
                    self.flush();
                }
                snap = snap_rx.recv() => {
                    resync = None;
                    if let Some(snap) = snap {
                        self.adopt(snap);
                        if self.again {
                            self.again = false;
                            self.force = true;
                        }
                        if self.has_gap() || self.force {
                            resync = Some(spawn_resync(req.clone(), snap_tx.clone(), self.stats.clone(), stop.clone()));
                        }
                    }
                }
                d = sub.next() => {
                    let Some(d) = d else { return };
                    let Some(args) = self.parse(&d) else { continue };
                    if let Some((_, pub_id)) = d.seq {
                        if self.source.is_some_and(|s| s != pub_id) && !args.is_snapshot {
                            // The out side restarted: its numbers mean nothing against ours.
                            tracing::info!("delta_update_out restarted; resyncing by snapshot");
                            self.num = -1;
                            self.buffered.clear();
                            self.source = Some(pub_id);
                            self.buffer(args);
                            if resync.is_none() {
                                resync = Some(spawn_resync(req.clone(), snap_tx.clone(), self.stats.clone(), stop.clone()));
                            }
                            continue;
                        }
                        if self.source != Some(pub_id) && args.is_snapshot {
                            self.num = -1;
                        }
                        self.source = Some(pub_id);
                    }
                    if resync.is_some() {
                        self.buffer(args);
                        continue;
                    }
                    if !self.apply(args) {
                        resync = Some(spawn_resync(req.clone(), snap_tx.clone(), self.stats.clone(), stop.clone()));
                    }
                    if self.dirty && !owed {
                        let interval = (self.copy_cost * VIEW_COPY_FACTOR).min(MAX_VIEW_INTERVAL);
                        let due = self.published + interval;
                        if !sub.has_pending() && tokio::time::Instant::now() >= due {
                            self.flush();
                        } else {
                            // Also while a backlog lasts: a stream that never pauses still
                            // gets a fresh view every interval.
                            later.as_mut().reset(due);
                            owed = true;
                        }
                    }
                }
            }
        }
    }

    fn parse(&self, d: &Delivery) -> Option<DeltaArgs> {
        match d.args::<DeltaArgs>() {
            Ok(a) => Some(a),
            Err(e) => {
                self.stats.bump(Counter::Malformed);
                tracing::warn!("delta_update_in rejected a message that is not {{current_num, is_snapshot, state}}: {e}");
                None
            }
        }
    }

    fn buffer(&mut self, args: DeltaArgs) {
        if self.buffered.len() >= MAX_BUFFERED {
            self.buffered.pop_front();
        }
        self.buffered.push_back(args);
    }

    /// Applies one update; false means a gap was found (the update is buffered).
    fn apply(&mut self, args: DeltaArgs) -> bool {
        if args.is_snapshot {
            if args.current_num < self.num {
                self.stats.bump(Counter::Duplicates);
                return true;
            }
            self.state = args.state;
            self.num = args.current_num;
            self.dirty = true;
            return true;
        }
        if args.current_num <= self.num {
            self.stats.bump(Counter::Duplicates);
            return true;
        }
        if args.current_num != self.num + 1 {
            self.stats.bump(Counter::Lost);
            tracing::warn!(
                expected = self.num + 1,
                got = args.current_num,
                "delta_update_in found a gap; resyncing by snapshot"
            );
            self.buffer(args);
            return false;
        }
        apply_delta(&mut self.state, &args.state);
        self.num = args.current_num;
        self.stats.bump(Counter::Received);
        self.dirty = true;
        true
    }

    fn adopt(&mut self, snap: SnapshotReply) {
        // Kept only for a Python out side (see below); framework out sides number truly.
        let python_state = self.source.is_none().then(|| snap.state.clone());
        if std::mem::take(&mut self.force) || snap.current_num >= self.num {
            self.state = snap.state;
            self.num = snap.current_num;
        }
        // Replay what arrived meanwhile, in number order; stale ones are skipped.
        let mut pending: Vec<DeltaArgs> = self.buffered.drain(..).collect();
        pending.sort_by_key(|a| a.current_num);
        let mut rest = Vec::new();
        for a in pending {
            if a.current_num <= self.num && !a.is_snapshot {
                continue;
            }
            if a.is_snapshot || a.current_num == self.num + 1 {
                if a.is_snapshot && a.current_num < self.num {
                    continue;
                }
                if a.is_snapshot {
                    self.state = a.state;
                } else {
                    apply_delta(&mut self.state, &a.state);
                    self.stats.bump(Counter::Received);
                }
                self.num = a.current_num;
            } else {
                rest.push(a);
            }
        }
        if !rest.is_empty() && self.source.is_none() {
            // No framework pub_id seen: a Python 0.0.18 out side, whose snapshot replies always
            // say 0. It updates its state before publishing, so the snapshot (asked for after
            // the first of these deltas arrived) already contains that one; later ones may or
            // may not be in it (one published just after the reply can arrive before it).
            // Take the snapshot and re-apply these deltas on top, in order: a shallow
            // set/delete repeated in order lands on the same values, and one missing from the
            // snapshot is not lost. Then continue from the newest number seen instead of
            // resyncing forever.
            let newest = rest.iter().map(|a| a.current_num).max().unwrap_or(self.num);
            tracing::debug!(newest, "snapshot number is behind the deltas of a Python out side; adopting it at {newest}");
            self.num = newest.max(self.num);
            if let Some(state) = python_state {
                self.state = state;
                for a in &rest {
                    apply_delta(&mut self.state, &a.state);
                }
            }
            rest.clear();
        }
        self.buffered = rest.into();
        self.publish();
    }

    fn has_gap(&self) -> bool {
        !self.buffered.is_empty()
    }

    fn publish(&mut self) {
        self.dirty = false;
        let start = tokio::time::Instant::now();
        self.tx.send_replace(StateView {
            state: Arc::new(self.state.clone()),
            current_num: self.num,
        });
        self.published = tokio::time::Instant::now();
        self.copy_cost = self.published - start;
    }

    /// Publishes the view if updates were applied since the last one. The view is a copy of
    /// the whole state, so the run loop calls this only once no further update is waiting:
    /// a burst costs one copy, not one per delta.
    fn flush(&mut self) {
        if self.dirty {
            self.publish();
        }
    }
}

/// Requests a snapshot in its own task: bounded per attempt, retried with backoff until it
/// succeeds or the state stops. The service loop never waits on it.
fn spawn_resync(
    req: Requester,
    out: mpsc::Sender<SnapshotReply>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(20);
        let empty = StateMap::new();
        loop {
            stats.bump(Counter::Retries);
            let got = tokio::select! {
                _ = stop.cancelled() => return,
                r = req.request::<_, SnapshotReply>(&empty, WorkflowId::None) => r,
            };
            match got {
                Ok(snap) => {
                    let _ = out.send(snap).await;
                    return;
                }
                Err(e) => tracing::debug!("snapshot request failed, retrying: {e}"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    })
}

/// Converts a typed value (a struct or map) into a state map.
pub fn to_state_map<T: Serialize + ?Sized>(value: &T) -> Result<StateMap, String> {
    let bytes = sf_connections::wire::encode(value).map_err(|e| e.to_string())?;
    sf_connections::wire::decode::<StateMap>(&bytes)
        .map_err(|_| "a state must be a map with string keys".to_owned())
}

/// Reads a state map as a typed value.
pub fn from_state_map<T: serde::de::DeserializeOwned>(state: &StateMap) -> Result<T, String> {
    let bytes = sf_connections::wire::encode(state).map_err(|e| e.to_string())?;
    sf_connections::wire::decode_with_path::<T>(&bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, Value)]) -> StateMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn deltas_set_and_delete_and_absent_delete_is_fine() {
        let mut s = m(&[("a", Value::from(1)), ("b", Value::from(2))]);
        apply_delta(
            &mut s,
            &m(&[
                ("a", Value::Nil),
                ("c", Value::from(3)),
                ("zzz", Value::Nil),
            ]),
        );
        assert_eq!(s, m(&[("b", Value::from(2)), ("c", Value::from(3))]));
    }

    fn follower() -> (Follower, watch::Receiver<StateView>) {
        let (tx, rx) = watch::channel(StateView::default());
        (Follower::new(tx, Arc::default()), rx)
    }

    impl Follower {
        /// What the run loop does for one update with nothing else waiting.
        fn apply_now(&mut self, args: DeltaArgs) -> bool {
            let applied = self.apply(args);
            self.flush();
            applied
        }
    }

    fn delta(n: i64, snap: bool, pairs: &[(&str, Value)]) -> DeltaArgs {
        DeltaArgs {
            current_num: n,
            is_snapshot: snap,
            state: m(pairs),
        }
    }

    #[test]
    fn the_originals_scenarios() {
        let (mut f, rx) = follower();
        // Reset snapshot, full snapshot, deltas with deletes.
        assert!(f.apply_now(delta(0, true, &[])));
        assert!(f.apply_now(delta(
            1,
            true,
            &[("x", Value::from(1)), ("y", Value::from(2))]
        )));
        assert!(f.apply_now(delta(2, false, &[("x", Value::Nil), ("z", Value::from(3))])));
        assert_eq!(
            *rx.borrow().state,
            m(&[("y", Value::from(2)), ("z", Value::from(3))])
        );
        // Old number ignored, duplicate ignored (not a gap).
        assert!(f.apply_now(delta(1, false, &[("y", Value::from(99))])));
        assert!(f.apply_now(delta(2, false, &[("y", Value::from(99))])));
        assert_eq!(f.stats.get(Counter::Duplicates), 2);
        assert_eq!(rx.borrow().current_num, 2);
        // A future number is a gap: buffered, then the snapshot plus replay converges.
        assert!(!f.apply_now(delta(4, false, &[("w", Value::from(4))])));
        f.buffer(delta(5, false, &[("z", Value::Nil)]));
        f.adopt(SnapshotReply {
            state: m(&[
                ("y", Value::from(2)),
                ("z", Value::from(3)),
                ("v", Value::from(3)),
            ]),
            current_num: 3,
        });
        assert_eq!(rx.borrow().current_num, 5);
        assert_eq!(
            *rx.borrow().state,
            m(&[
                ("y", Value::from(2)),
                ("v", Value::from(3)),
                ("w", Value::from(4))
            ])
        );
        assert!(!f.has_gap());
    }

    #[test]
    fn a_python_out_side_whose_snapshots_say_zero_still_converges() {
        let (mut f, rx) = follower();
        assert!(f.apply_now(delta(1, true, &[("a", Value::from(1))])));
        assert!(!f.apply_now(delta(3, false, &[("c", Value::from(3))])));
        // 0.0.18's replyer answers with the right state but current_num 0.
        f.adopt(SnapshotReply {
            state: m(&[
                ("a", Value::from(1)),
                ("b", Value::from(2)),
                ("c", Value::from(3)),
            ]),
            current_num: 0,
        });
        assert!(!f.has_gap(), "no endless resync");
        assert_eq!(rx.borrow().current_num, 3);
        assert_eq!(rx.borrow().state.len(), 3);
        assert!(
            f.apply_now(delta(4, false, &[("d", Value::from(4))])),
            "follows on from there"
        );
        assert_eq!(rx.borrow().state.len(), 4);
    }

    #[test]
    fn a_python_snapshot_older_than_a_buffered_delta_loses_nothing() {
        let (mut f, rx) = follower();
        assert!(f.apply_now(delta(1, true, &[("a", Value::from(1))])));
        // Gap: 3 arrives; the resync is asked for; 4 is published just after the Python out
        // side answered, yet reaches us before the answer does.
        assert!(!f.apply_now(delta(3, false, &[("c", Value::from(3))])));
        f.buffer(delta(4, false, &[("a", Value::Nil), ("d", Value::from(4))]));
        f.adopt(SnapshotReply {
            state: m(&[
                ("a", Value::from(1)),
                ("b", Value::from(2)),
                ("c", Value::from(3)),
            ]),
            current_num: 0,
        });
        assert!(!f.has_gap());
        assert_eq!(rx.borrow().current_num, 4);
        assert_eq!(
            *rx.borrow().state,
            m(&[
                ("b", Value::from(2)),
                ("c", Value::from(3)),
                ("d", Value::from(4))
            ]),
            "delta 4, missing from the snapshot, is applied on top of it"
        );
    }

    #[test]
    fn a_stale_snapshot_reply_does_not_go_back() {
        let (mut f, rx) = follower();
        assert!(f.apply_now(delta(7, true, &[("a", Value::from(1))])));
        f.adopt(SnapshotReply {
            state: StateMap::new(),
            current_num: 3,
        });
        assert_eq!(rx.borrow().current_num, 7);
        assert_eq!(*rx.borrow().state, m(&[("a", Value::from(1))]));
    }
}
