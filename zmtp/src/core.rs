//! The state one socket shares between its handle and its connections: the peers, each with
//! its own bounded send queue, the inbox all peers feed, subscriptions, and the routing rules
//! of each socket kind (RFC 28, 29, 30).
//!
//! Every queue is bounded. A send that may drop (PUB, XPUB, ROUTER) never waits; one that must
//! not (DEALER, PUSH, subscriptions) waits for room on *some* peer, never on one in particular,
//! so one slow peer costs only its own queue.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::select_all;
use futures::task::AtomicWaker;
use futures::FutureExt;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ending::{Ending, CLOSING, DROPPED};
use crate::error::{Error, Result};
use crate::handshake::PeerInfo;
use crate::message::Message;
use crate::monitor::{Counters, Event, PeerId, RateLimit};
use crate::options::{SocketOptions, SocketType};
use crate::wire::Command;

/// What a peer's writer sends: a message, or an encoded command body (a 3.1 subscription).
#[derive(Debug)]
pub(crate) enum Out {
    Msg(Message),
    Cmd(Bytes),
}

/// A multiset of topic prefixes.
#[derive(Debug, Default, Clone)]
pub(crate) struct Subscriptions {
    list: Vec<(Bytes, usize)>,
}

impl Subscriptions {
    /// Adds one; true if the topic is new.
    pub(crate) fn add(&mut self, topic: &[u8]) -> bool {
        if let Some(e) = self.list.iter_mut().find(|(t, _)| t[..] == *topic) {
            e.1 += 1;
            false
        } else {
            self.list.push((Bytes::copy_from_slice(topic), 1));
            true
        }
    }

    /// Removes one; true if that was the last of the topic. False if it was not there.
    pub(crate) fn remove(&mut self, topic: &[u8]) -> bool {
        if let Some(i) = self.list.iter().position(|(t, _)| t[..] == *topic) {
            self.list[i].1 -= 1;
            if self.list[i].1 == 0 {
                self.list.swap_remove(i);
                return true;
            }
        }
        false
    }

    pub(crate) fn contains(&self, topic: &[u8]) -> bool {
        self.list.iter().any(|(t, _)| t[..] == *topic)
    }

    /// Whether a message whose first frame is `first` matches a prefix.
    pub(crate) fn matches(&self, first: &[u8]) -> bool {
        self.list.iter().any(|(t, _)| first.starts_with(t))
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = (&Bytes, usize)> {
        self.list.iter().map(|(t, n)| (t, *n))
    }
}

/// A subscription as a 3.0 message: `0x01` (or `0x00` to cancel) then the prefix.
pub(crate) fn subscription_message(subscribe: bool, topic: &[u8]) -> Message {
    let mut b = BytesMut::with_capacity(topic.len() + 1);
    b.put_u8(u8::from(subscribe));
    b.put_slice(topic);
    Message::single(b.freeze())
}

/// A subscription rendered for one peer: a command for 3.1 peers, a message for 3.0 ones.
fn render_subscription(v31: bool, subscribe: bool, topic: &[u8]) -> Out {
    if v31 {
        let topic = Bytes::copy_from_slice(topic);
        let c = if subscribe {
            Command::Subscribe(topic)
        } else {
            Command::Cancel(topic)
        };
        Out::Cmd(c.encode().freeze())
    } else {
        Out::Msg(subscription_message(subscribe, topic))
    }
}

/// Splits a subscription message (`0x01 topic` / `0x00 topic`).
pub(crate) fn parse_subscription(msg: &Message) -> Option<(bool, &[u8])> {
    if msg.len() != 1 {
        return None;
    }
    let f = msg.first()?;
    match f.first() {
        Some(1) => Some((true, &f[1..])),
        Some(0) => Some((false, &f[1..])),
        _ => None,
    }
}

pub(crate) struct Peer {
    pub identity: Bytes,
    pub tx: mpsc::Sender<Out>,
    pub ending: Arc<Ending>,
    pub v31: bool,
    /// What this peer subscribed to (PUB, XPUB).
    pub subs: Subscriptions,
    /// DEALER, PUSH: no longer given balanced sends (it said it is stopping); still read
    /// from until it goes.
    pub retired: bool,
}

/// Hashes the socket's own peer ids (a counter, nothing a peer chooses) with one multiply;
/// the default SipHash, kept for identities, which peers do choose, costs several times as
/// much on every send.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: consecutive ids spread over the high bits, and stay distinct in
        // the low ones.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[derive(Default)]
struct State {
    peers: HashMap<PeerId, Peer, BuildHasherDefault<IdHasher>>,
    /// Peers in the order they came, for round-robin.
    order: Vec<PeerId>,
    rr: usize,
    by_identity: HashMap<Bytes, PeerId>,
    /// Our own subscriptions (SUB, XSUB): sent to every new peer, and the receive filter.
    own: Subscriptions,
    /// Subscribers per topic over all peers (XPUB), to pass each topic up once.
    xpub_counts: HashMap<Bytes, usize>,
    next_routing_id: u32,
}

/// What a session gets when its peer is registered.
pub(crate) struct Registration {
    pub id: PeerId,
    pub identity: Bytes,
    pub rx: mpsc::Receiver<Out>,
    pub ending: Arc<Ending>,
    /// Sent before anything else (our subscriptions, for SUB and XSUB).
    pub initial: Vec<Out>,
}

pub(crate) struct Core {
    pub kind: SocketType,
    pub options: SocketOptions,
    state: Mutex<State>,
    pub inbox: mpsc::Sender<Message>,
    pub peers_changed: Notify,
    /// Set by [`Core::shut`] only; for the waits that are not on the per-message path.
    pub stop: CancellationToken,
    /// `stop` as a flag, read on every send and receive (a token's check takes a lock).
    stopped: AtomicBool,
    /// The socket's receiver while it waits for the inbox (one receiver: `recv` takes
    /// `&mut`), woken when the socket shuts.
    pub recv_waker: AtomicWaker,
    /// Stops the accept loops only (a child of `stop`): a closing server frees its ports at
    /// once while its connections drain.
    pub listening: CancellationToken,
    pub tasks: TaskTracker,
    pub counters: Counters,
    monitors: Mutex<Vec<mpsc::Sender<Event>>>,
    next_peer: AtomicU64,
    pub warn: RateLimit,
    /// Permits for accepted connections (the connection limit).
    pub conn_limit: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("kind", &self.kind).finish()
    }
}

impl Core {
    pub(crate) fn new(
        kind: SocketType,
        options: SocketOptions,
    ) -> (Arc<Core>, mpsc::Receiver<Message>) {
        let (inbox, rx) = mpsc::channel(options.recv_hwm.max(1));
        let conn_limit = Arc::new(tokio::sync::Semaphore::new(options.max_connections.max(1)));
        let stop = CancellationToken::new();
        let core = Core {
            kind,
            options,
            state: Mutex::default(),
            inbox,
            peers_changed: Notify::new(),
            listening: stop.child_token(),
            stop,
            stopped: AtomicBool::new(false),
            recv_waker: AtomicWaker::new(),
            tasks: TaskTracker::new(),
            counters: Counters::default(),
            monitors: Mutex::default(),
            next_peer: AtomicU64::new(1),
            warn: RateLimit::new(10, std::time::Duration::from_secs(10)),
            conn_limit,
        };
        (Arc::new(core), rx)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("socket state lock")
    }

    /// Closes the socket: every wait on `stop` ends, no task is added, each connection's
    /// reader stops and its writer flushes within the linger, a waiting receiver wakes.
    pub(crate) fn shut(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.stop.cancel();
        self.tasks.close();
        self.recv_waker.wake();
        for p in self.state().peers.values() {
            p.ending.set(CLOSING);
        }
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    pub(crate) fn monitor(&self, capacity: usize) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.monitors.lock().expect("monitor lock").push(tx);
        rx
    }

    pub(crate) fn emit(&self, ev: Event) {
        let mut mons = self.monitors.lock().expect("monitor lock");
        mons.retain(|m| !m.is_closed());
        for m in mons.iter() {
            if m.try_send(ev.clone()).is_err() {
                Counters::bump(&self.counters.events_missed);
            }
        }
    }

    pub(crate) fn peer_count(&self) -> usize {
        self.state().peers.len()
    }

    /// Balanced sends skip `peer` from now on (DEALER, PUSH: the peer said it is stopping, so
    /// new work must go elsewhere or wait for its successor). Replies from it still arrive.
    /// Returns false when the peer is already gone.
    pub(crate) fn retire(&self, peer: PeerId) -> bool {
        match self.state().peers.get_mut(&peer) {
            Some(p) => {
                p.retired = true;
                true
            }
            None => false,
        }
    }

    /// Adds a peer that finished its handshake.
    pub(crate) fn register(&self, info: &PeerInfo) -> Registration {
        let id = PeerId(self.next_peer.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(self.options.send_hwm.max(1));
        // Closing the socket leaves the writer its linger; a dropped connection (handover,
        // a failed peer) ends at once.
        let ending = Arc::new(Ending::default());
        let v31 = info.greeting.is_31();
        let mut st = self.state();
        let identity = if self.kind == SocketType::Router {
            if info.identity.is_empty() {
                st.next_routing_id = st.next_routing_id.wrapping_add(1);
                let mut b = BytesMut::with_capacity(5);
                b.put_u8(0);
                b.put_u32(st.next_routing_id);
                b.freeze()
            } else {
                // Handover: a peer that reconnects with its id takes over at once, instead of
                // being refused until the old connection's heartbeat runs out.
                if let Some(old) = st.by_identity.get(&info.identity).copied() {
                    if let Some(p) = st.peers.get(&old) {
                        p.ending.set(DROPPED);
                    }
                }
                info.identity.clone()
            }
        } else {
            info.identity.clone()
        };
        if self.kind == SocketType::Router {
            st.by_identity.insert(identity.clone(), id);
        }
        let mut initial = Vec::new();
        if matches!(self.kind, SocketType::Sub | SocketType::XSub) {
            for (topic, n) in st.own.entries() {
                for _ in 0..n {
                    initial.push(render_subscription(v31, true, topic));
                }
            }
        }
        st.peers.insert(
            id,
            Peer {
                identity: identity.clone(),
                tx,
                ending: ending.clone(),
                v31,
                subs: Subscriptions::default(),
                retired: false,
            },
        );
        st.order.push(id);
        // Under the lock `shut` takes to reach every peer: a socket that shut before this
        // peer was in the map is seen here.
        if self.is_stopped() {
            ending.set(CLOSING);
        }
        drop(st);
        self.peers_changed.notify_waiters();
        Registration {
            id,
            identity,
            rx,
            ending,
            initial,
        }
    }

    /// Removes a peer whose session ended. For XPUB, the topics nobody subscribes to any more
    /// are passed up as cancels.
    pub(crate) async fn unregister(&self, id: PeerId) {
        let cancels = {
            let mut st = self.state();
            let Some(peer) = st.peers.remove(&id) else {
                return;
            };
            st.order.retain(|p| *p != id);
            if st.by_identity.get(&peer.identity) == Some(&id) {
                st.by_identity.remove(&peer.identity);
            }
            let mut cancels = Vec::new();
            if self.kind == SocketType::XPub {
                let verbose = self.options.xpub_verbose;
                for (topic, n) in peer.subs.entries() {
                    if let Some(c) = st.xpub_counts.get_mut(topic) {
                        *c = c.saturating_sub(n);
                        let last = *c == 0;
                        if last {
                            st.xpub_counts.remove(topic);
                        }
                        // Verbose: every peer's subscribes went up, so its cancels do too.
                        if last || verbose {
                            cancels.push(subscription_message(false, topic));
                        }
                    }
                }
            }
            cancels
        };
        self.peers_changed.notify_waiters();
        for c in cancels {
            let _ = self.inbox.send(c).await;
        }
    }

    /// Handles a message from a peer. `Some` goes to the inbox.
    pub(crate) fn inbound(
        &self,
        peer: PeerId,
        identity: &Bytes,
        mut msg: Message,
    ) -> Option<Message> {
        match self.kind {
            SocketType::Router => {
                msg.push_front(identity.clone());
                Some(msg)
            }
            SocketType::Dealer
            | SocketType::Pull
            | SocketType::Pair
            | SocketType::Rep
            | SocketType::Req => Some(msg),
            SocketType::Sub | SocketType::XSub => {
                let first = msg.first().map(|f| &f[..]).unwrap_or(&[]);
                self.state().own.matches(first).then_some(msg)
            }
            SocketType::Pub | SocketType::XPub => match parse_subscription(&msg) {
                Some((sub, topic)) => self.subscription(peer, sub, topic),
                // XPUB hands other upstream messages to its reader, as libzmq does.
                None if self.kind == SocketType::XPub => Some(msg),
                None => None,
            },
            SocketType::Push => None,
        }
    }

    /// A peer subscribed or cancelled (as a message or a command). For XPUB, returns the
    /// message to pass up when the topic's first subscriber came or its last one left.
    pub(crate) fn subscription(
        &self,
        peer: PeerId,
        subscribe: bool,
        topic: &[u8],
    ) -> Option<Message> {
        if !matches!(self.kind, SocketType::Pub | SocketType::XPub) {
            return None;
        }
        let out = self.subscription_locked(peer, subscribe, topic);
        if subscribe {
            // After the filter is in place: a message sent from now on reaches this peer.
            self.emit(Event::Subscribed {
                peer,
                topic: Bytes::copy_from_slice(topic),
            });
        }
        out
    }

    /// A peer's subscriptions are a set, as libzmq's are: subscribing again to a topic it
    /// has changes nothing, one cancel removes it. (A libzmq SUB or XSUB sends every
    /// subscribe but only its last cancel, so counting per peer would never let go.)
    fn subscription_locked(&self, peer: PeerId, subscribe: bool, topic: &[u8]) -> Option<Message> {
        let verbose = self.options.xpub_verbose;
        let mut st = self.state();
        let p = st.peers.get_mut(&peer)?;
        let changed = if subscribe {
            !p.subs.contains(topic) && p.subs.add(topic)
        } else {
            p.subs.contains(topic) && p.subs.remove(topic)
        };
        if self.kind != SocketType::XPub {
            return None;
        }
        if !changed {
            // Verbose: a repeated subscribe goes up too (a newcomer behind a bus announces
            // itself to the publishers, which may answer it with a snapshot).
            return (verbose && subscribe).then(|| subscription_message(true, topic));
        }
        if subscribe {
            let c = st
                .xpub_counts
                .entry(Bytes::copy_from_slice(topic))
                .or_insert(0);
            *c += 1;
            (*c == 1 || verbose).then(|| subscription_message(true, topic))
        } else {
            let c = st.xpub_counts.get_mut(topic)?;
            *c -= 1;
            let last = *c == 0;
            if last {
                st.xpub_counts.remove(topic);
            }
            (last || verbose).then(|| subscription_message(false, topic))
        }
    }

    /// PUB and XPUB: to every peer whose subscriptions match; a full peer misses it (counted).
    pub(crate) fn send_fanout(&self, msg: Message) {
        let st = self.state();
        let first = msg.first().map(|f| &f[..]).unwrap_or(&[]);
        for p in st.peers.values() {
            if p.subs.matches(first) && p.tx.try_send(Out::Msg(msg.clone())).is_err() {
                Counters::bump(&self.counters.dropped);
            }
        }
    }

    /// ROUTER: to the peer the first frame names. Never waits.
    pub(crate) fn send_routed(&self, mut msg: Message) -> Result<()> {
        let id = msg.pop_front().ok_or(Error::InvalidMessage(
            "a ROUTER message needs a routing id frame",
        ))?;
        if msg.is_empty() {
            return Err(Error::InvalidMessage(
                "a ROUTER message needs a body after the routing id",
            ));
        }
        let st = self.state();
        let peer = st
            .by_identity
            .get(&id)
            .and_then(|p| st.peers.get(p))
            .ok_or(Error::Unroutable)?;
        match peer.tx.try_send(Out::Msg(msg)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Counters::bump(&self.counters.dropped);
                Err(Error::Full(self.options.send_hwm))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Error::Unroutable),
        }
    }

    /// DEALER and PUSH: to the next peer in turn that has room; waits while none has (or no
    /// peer is connected), so back-pressure reaches the caller.
    /// One round-robin pass of non-blocking sends under one lock: the peer that took the
    /// message, or the message back when every peer is full (or there is none).
    fn try_balanced(&self, msg: Message) -> std::result::Result<PeerId, Message> {
        let mut st = self.state();
        let n = st.order.len();
        let mut out = Out::Msg(msg);
        for i in 0..n {
            let idx = (st.rr + i) % n;
            let id = st.order[idx];
            let Some(p) = st.peers.get(&id) else { continue };
            if p.retired {
                continue;
            }
            match p.tx.try_send(out) {
                Ok(()) => {
                    st.rr = (idx + 1) % n;
                    return Ok(id);
                }
                Err(mpsc::error::TrySendError::Full(o))
                | Err(mpsc::error::TrySendError::Closed(o)) => out = o,
            }
        }
        let Out::Msg(m) = out else {
            unreachable!("only messages are balanced")
        };
        Err(m)
    }

    pub(crate) async fn send_balanced(&self, msg: Message) -> Result<PeerId> {
        if self.is_stopped() {
            return Err(Error::Closed);
        }
        // Fast path: some peer has room. No waiter is registered, nothing is cloned.
        let mut msg = match self.try_balanced(msg) {
            Ok(id) => return Ok(id),
            Err(m) => m,
        };
        loop {
            if self.is_stopped() {
                return Err(Error::Closed);
            }
            // Register for a change of the peer set before trying again, so a peer that
            // arrives between the try and the wait is not missed.
            let changed = self.peers_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            msg = match self.try_balanced(msg) {
                Ok(id) => return Ok(id),
                Err(m) => m,
            };
            // Peers whose connection has ended (channel closed) are about to be unregistered,
            // which notifies `changed`: waiting on them would spin.
            let senders: Vec<(PeerId, mpsc::Sender<Out>)> = {
                let st = self.state();
                st.order
                    .iter()
                    .filter_map(|id| {
                        st.peers
                            .get(id)
                            .filter(|p| !p.retired)
                            .map(|p| (*id, p.tx.clone()))
                    })
                    .filter(|(_, tx)| !tx.is_closed())
                    .collect()
            };
            if senders.is_empty() {
                tokio::select! {
                    _ = &mut changed => continue,
                    _ = self.stop.cancelled() => return Err(Error::Closed),
                }
            }
            // Every peer is full: wait for room on any of them, or for the set to change.
            let ids: Vec<PeerId> = senders.iter().map(|(id, _)| *id).collect();
            let room = select_all(senders.into_iter().map(|(_, s)| s.reserve_owned().boxed()));
            tokio::select! {
                (permit, i, _) = room => match permit {
                    Ok(permit) => {
                        permit.send(Out::Msg(msg));
                        return Ok(ids[i]);
                    }
                    // That peer's connection ended meanwhile: wait for its removal.
                    Err(_) => tokio::select! {
                        _ = &mut changed => {}
                        _ = self.stop.cancelled() => return Err(Error::Closed),
                    },
                },
                _ = &mut changed => {}
                _ = self.stop.cancelled() => return Err(Error::Closed),
            }
        }
    }

    /// To every peer, waiting for room on each (subscriptions must not be lost).
    async fn send_all(&self, make: impl Fn(bool) -> Out) {
        let senders: Vec<(mpsc::Sender<Out>, bool)> = {
            let st = self.state();
            st.order
                .iter()
                .filter_map(|id| st.peers.get(id).map(|p| (p.tx.clone(), p.v31)))
                .collect()
        };
        for (tx, v31) in senders {
            let _ = tx.send(make(v31)).await;
        }
    }

    /// SUB and XSUB: adds or removes one of our subscriptions and tells every peer.
    pub(crate) async fn set_subscription(&self, subscribe: bool, topic: &[u8]) {
        // Updated under the lock that `register` takes: a peer arriving now gets the topic
        // either in its initial set or from the send below, never both, never neither.
        let senders: Vec<(mpsc::Sender<Out>, bool)> = {
            let mut st = self.state();
            if subscribe {
                // Every subscribe goes to the peers (as libzmq's SUB and XSUB do: a peer
                // keeps a set, so a repeat is harmless there)...
                st.own.add(topic);
            } else if !st.own.remove(topic) {
                // ...but a cancel only once the last of ours for the topic is gone.
                return;
            }
            st.order
                .iter()
                .filter_map(|id| st.peers.get(id).map(|p| (p.tx.clone(), p.v31)))
                .collect()
        };
        for (tx, v31) in senders {
            let _ = tx.send(render_subscription(v31, subscribe, topic)).await;
        }
    }

    /// XSUB: a subscription message updates ours; anything else goes to every peer.
    pub(crate) async fn send_upstream(&self, msg: Message) {
        match parse_subscription(&msg) {
            Some((sub, topic)) => self.set_subscription(sub, topic).await,
            None => self.send_all(|_| Out::Msg(msg.clone())).await,
        }
    }
}
