//! The socket handles users hold: one type per kind, each exposing only what its kind does.
//!
//! Every socket can bind and connect any number of endpoints, both at once. `connect` returns
//! at once and keeps the connection up in the background (reconnecting, re-subscribing);
//! sends made before a peer is there wait (DEALER, PUSH) or go nowhere (PUB, as in libzmq).
//! Sockets must be created and used inside a tokio runtime.
//!
//! Dropping a socket closes it: connections stop reading at once and flush what is queued for
//! up to the linger in the background. [`close`](DealerSocket::close) does the same and waits
//! for the flush, so a process can exit right after it without losing its last messages.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::core::Core;
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::link;
use crate::message::Message;
use crate::monitor::{Event, PeerId, SocketStats};
use crate::options::{SocketOptions, SocketType};
use crate::transport::Listener;

/// Stops the socket when the last handle (or half) is dropped.
#[derive(Debug)]
struct Guard(Arc<Core>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.shut();
    }
}

/// A socket's number of connected peers (handshake finished), readable from anywhere; 0 once
/// the socket is gone. It does not keep the socket alive.
#[derive(Debug, Clone)]
pub struct PeerGauge(std::sync::Weak<Core>);

impl PeerGauge {
    /// Peers connected now.
    pub fn count(&self) -> usize {
        self.0.upgrade().map_or(0, |core| {
            if core.is_stopped() {
                0
            } else {
                core.peer_count()
            }
        })
    }
}

/// What every kind has: the shared core, the inbox, the guard.
#[derive(Debug)]
struct Socket {
    core: Arc<Core>,
    inbox: mpsc::Receiver<Message>,
    guard: Arc<Guard>,
}

impl Socket {
    fn new(kind: SocketType, options: SocketOptions) -> Socket {
        let (core, inbox) = Core::new(kind, options);
        let guard = Arc::new(Guard(core.clone()));
        Socket { core, inbox, guard }
    }
}

async fn bind(core: &Arc<Core>, endpoint: &str) -> Result<String> {
    let ep: Endpoint = endpoint.parse()?;
    let (listener, bound) = Listener::bind(&ep).await?;
    let bound = bound.to_string();
    core.emit(Event::Listening {
        endpoint: bound.clone(),
    });
    core.tasks.spawn(link::accept_loop(core.clone(), listener));
    Ok(bound)
}

fn connect(core: &Arc<Core>, endpoint: &str) -> Result<()> {
    let ep: Endpoint = endpoint.parse()?;
    if core.is_stopped() {
        return Err(Error::Closed);
    }
    core.tasks.spawn(link::connect_loop(core.clone(), ep));
    Ok(())
}

async fn recv(core: &Core, inbox: &mut mpsc::Receiver<Message>) -> Result<Message> {
    // Fast path: a message is waiting. (`try_recv` takes nothing of the task's budget, so a
    // receiver that keeps up is not made to yield every 128 messages.)
    if let Ok(m) = inbox.try_recv() {
        return Ok(m);
    }
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(m) = inbox.poll_recv(cx) {
            return std::task::Poll::Ready(m.ok_or(Error::Closed));
        }
        // `shut` sets the flag, then wakes: a shut between the two looks is not missed.
        core.recv_waker.register(cx.waker());
        if core.is_stopped() {
            return std::task::Poll::Ready(inbox.try_recv().map_err(|_| Error::Closed));
        }
        std::task::Poll::Pending
    })
    .await
}

async fn send_balanced(core: &Core, msg: Message) -> Result<PeerId> {
    if msg.is_empty() {
        return Err(Error::InvalidMessage("a message needs at least one frame"));
    }
    core.send_balanced(msg).await
}

async fn wait_for_peers(core: &Core, n: usize) {
    loop {
        let changed = core.peers_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if core.peer_count() >= n || core.is_stopped() {
            return;
        }
        tokio::select! {
            _ = changed => {}
            _ = core.stop.cancelled() => return,
        }
    }
}

async fn close(core: Arc<Core>) {
    core.shut();
    let grace = core.options.linger + std::time::Duration::from_millis(100);
    let _ = tokio::time::timeout(grace, core.tasks.wait()).await;
}

macro_rules! common {
    ($name:ident, $kind:expr) => {
        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl $name {
            /// A socket with the default options.
            pub fn new() -> Self {
                Self::with_options(SocketOptions::default())
            }

            /// A socket with these options.
            pub fn with_options(options: SocketOptions) -> Self {
                $name {
                    s: Socket::new($kind, options),
                }
            }

            /// Binds `endpoint` (`tcp://host:port`, port 0 for an ephemeral one, or
            /// `ipc://path`) and accepts in the background. Returns the endpoint bound.
            pub async fn bind(&self, endpoint: &str) -> Result<String> {
                bind(&self.s.core, endpoint).await
            }

            /// Connects to `endpoint` in the background, and keeps reconnecting.
            pub fn connect(&self, endpoint: &str) -> Result<()> {
                connect(&self.s.core, endpoint)
            }

            /// Connection events from now on (a bounded queue: a slow reader misses some).
            pub fn monitor(&self) -> mpsc::Receiver<Event> {
                self.s.core.monitor(256)
            }

            /// The socket's counters.
            pub fn stats(&self) -> SocketStats {
                self.s.core.counters.snapshot()
            }

            /// Peers connected now (handshake finished).
            pub fn peer_count(&self) -> usize {
                self.s.core.peer_count()
            }

            /// A count of connected peers that can be read after the socket has moved into
            /// a task (for health reports).
            pub fn peer_gauge(&self) -> PeerGauge {
                PeerGauge(Arc::downgrade(&self.s.core))
            }

            /// Waits until at least `n` peers are connected (or the socket closes).
            pub async fn wait_for_peers(&self, n: usize) {
                wait_for_peers(&self.s.core, n).await
            }

            /// Stops accepting new connections on every bound endpoint (their ports are freed);
            /// the connections already made carry on.
            pub fn stop_listening(&self) {
                self.s.core.listening.cancel()
            }

            /// The options the socket was made with.
            pub fn options(&self) -> &SocketOptions {
                &self.s.core.options
            }

            /// Closes the socket: stops accepting and reading, flushes what is queued for up
            /// to the linger, and returns when that is done.
            pub async fn close(self) {
                let core = self.s.core.clone();
                drop(self);
                close(core).await
            }

            /// As [`close`](Self::close), through a shared reference (a socket held in an
            /// `Arc`): every later operation fails with [`Error::Closed`].
            pub async fn shutdown(&self) {
                close(self.s.core.clone()).await
            }
        }
    };
}

macro_rules! receives {
    ($name:ident) => {
        impl $name {
            /// The next message. Fails only once the socket is closed.
            pub async fn recv(&mut self) -> Result<Message> {
                recv(&self.s.core, &mut self.s.inbox).await
            }

            /// The next message if one is waiting.
            pub fn try_recv(&mut self) -> Option<Message> {
                self.s.inbox.try_recv().ok()
            }
        }
    };
}

/// DEALER: sends round-robin to its peers, waiting while all are at their high-water mark or
/// none is connected; receives from all, fair-queued. Reaches REP, DEALER and ROUTER peers.
#[derive(Debug)]
pub struct DealerSocket {
    s: Socket,
}
common!(DealerSocket, SocketType::Dealer);
receives!(DealerSocket);

impl DealerSocket {
    /// Sends a message (waits for a peer with room; wrap in a timeout to bound the wait).
    pub async fn send(&self, msg: impl Into<Message>) -> Result<()> {
        send_balanced(&self.s.core, msg.into()).await.map(|_| ())
    }

    /// As [`send`](Self::send), and says which connection took the message (see
    /// [`Event::Disconnected`]: a message queued on a connection that is lost is lost too).
    pub async fn send_tracked(&self, msg: impl Into<Message>) -> Result<PeerId> {
        send_balanced(&self.s.core, msg.into()).await
    }

    /// Sends nothing more to `peer` (a replyer that answered it is stopping): later sends go
    /// to the other peers, or wait for a new connection (its successor). Its replies still
    /// arrive. False when it is already gone.
    pub fn retire(&self, peer: PeerId) -> bool {
        self.s.core.retire(peer)
    }

    /// Splits into a cloneable send half and a receive half.
    pub fn split(self) -> (DealerSender, Receiver) {
        let Socket { core, inbox, guard } = self.s;
        (
            DealerSender {
                core: core.clone(),
                _guard: guard.clone(),
            },
            Receiver {
                core,
                inbox,
                _guard: guard,
            },
        )
    }
}

/// The send half of a [`DealerSocket`].
#[derive(Debug, Clone)]
pub struct DealerSender {
    core: Arc<Core>,
    _guard: Arc<Guard>,
}

impl DealerSender {
    /// Stops accepting new connections (ports freed); existing connections carry on.
    pub fn stop_listening(&self) {
        self.core.listening.cancel()
    }

    /// Closes the whole socket (both halves): stops reading, flushes what is queued for up
    /// to the linger, and returns when that is done. The other half fails from then on.
    pub async fn close(self) {
        let core = self.core.clone();
        drop(self);
        close(core).await
    }
    /// As [`DealerSocket::send`].
    pub async fn send(&self, msg: impl Into<Message>) -> Result<()> {
        send_balanced(&self.core, msg.into()).await.map(|_| ())
    }

    /// As [`DealerSocket::send_tracked`].
    pub async fn send_tracked(&self, msg: impl Into<Message>) -> Result<PeerId> {
        send_balanced(&self.core, msg.into()).await
    }

    /// As [`DealerSocket::retire`].
    pub fn retire(&self, peer: PeerId) -> bool {
        self.core.retire(peer)
    }

    /// Peers connected now.
    pub fn peer_count(&self) -> usize {
        self.core.peer_count()
    }

    /// As [`DealerSocket::peer_gauge`].
    pub fn peer_gauge(&self) -> PeerGauge {
        PeerGauge(Arc::downgrade(&self.core))
    }
}

/// The receive half of a split socket.
#[derive(Debug)]
pub struct Receiver {
    core: Arc<Core>,
    inbox: mpsc::Receiver<Message>,
    _guard: Arc<Guard>,
}

impl Receiver {
    /// Stops accepting new connections (ports freed); existing connections carry on.
    pub fn stop_listening(&self) {
        self.core.listening.cancel()
    }

    /// Closes the whole socket (both halves): stops reading, flushes what is queued for up
    /// to the linger, and returns when that is done. The other half fails from then on.
    pub async fn close(self) {
        let core = self.core.clone();
        drop(self);
        close(core).await
    }
    /// The next message. Fails only once the socket is closed.
    pub async fn recv(&mut self) -> Result<Message> {
        recv(&self.core, &mut self.inbox).await
    }

    /// Connection events from now on.
    pub fn monitor(&self) -> mpsc::Receiver<Event> {
        self.core.monitor(256)
    }

    /// The socket's counters.
    pub fn stats(&self) -> SocketStats {
        self.core.counters.snapshot()
    }
}

/// ROUTER: every inbound message starts with the sending peer's routing id; a message sent
/// goes to the peer its first frame names. Serves REQ, DEALER and ROUTER peers. Sending never
/// waits: a peer at its high-water mark misses the message ([`Error::Full`], counted).
#[derive(Debug)]
pub struct RouterSocket {
    s: Socket,
}
common!(RouterSocket, SocketType::Router);
receives!(RouterSocket);

impl RouterSocket {
    /// Sends `[routing id, frames...]` to that peer.
    pub fn send(&self, msg: impl Into<Message>) -> Result<()> {
        self.s.core.send_routed(msg.into())
    }

    /// Splits into a cloneable send half and a receive half.
    pub fn split(self) -> (RouterSender, Receiver) {
        let Socket { core, inbox, guard } = self.s;
        (
            RouterSender {
                core: core.clone(),
                _guard: guard.clone(),
            },
            Receiver {
                core,
                inbox,
                _guard: guard,
            },
        )
    }
}

/// The send half of a [`RouterSocket`].
#[derive(Debug, Clone)]
pub struct RouterSender {
    core: Arc<Core>,
    _guard: Arc<Guard>,
}

impl RouterSender {
    /// Stops accepting new connections (ports freed); existing connections carry on.
    pub fn stop_listening(&self) {
        self.core.listening.cancel()
    }

    /// Closes the whole socket (both halves): stops reading, flushes what is queued for up
    /// to the linger, and returns when that is done. The other half fails from then on.
    pub async fn close(self) {
        let core = self.core.clone();
        drop(self);
        close(core).await
    }
    /// As [`RouterSocket::send`].
    pub fn send(&self, msg: impl Into<Message>) -> Result<()> {
        self.core.send_routed(msg.into())
    }

    /// As [`RouterSocket::peer_gauge`].
    pub fn peer_gauge(&self) -> PeerGauge {
        PeerGauge(Arc::downgrade(&self.core))
    }
}

/// PUB: each message goes to every subscriber whose subscriptions match its first frame.
/// Never waits: a subscriber at its high-water mark misses messages (counted in `dropped`),
/// and no other subscriber notices.
#[derive(Debug)]
pub struct PubSocket {
    s: Socket,
}
common!(PubSocket, SocketType::Pub);

impl PubSocket {
    /// Publishes a message.
    pub fn send(&self, msg: impl Into<Message>) -> Result<()> {
        let msg = msg.into();
        if msg.is_empty() {
            return Err(Error::InvalidMessage("a message needs at least one frame"));
        }
        self.s.core.send_fanout(msg);
        Ok(())
    }
}

/// XPUB: a PUB whose subscriptions can be read: `0x01 topic` when a topic gains its first
/// subscriber, `0x00 topic` when it loses its last (a subscriber that disconnects cancels
/// what it had), and any other message a subscriber sends.
#[derive(Debug)]
pub struct XPubSocket {
    s: Socket,
}
common!(XPubSocket, SocketType::XPub);
receives!(XPubSocket);

impl XPubSocket {
    /// Publishes a message.
    pub fn send(&self, msg: impl Into<Message>) -> Result<()> {
        let msg = msg.into();
        if msg.is_empty() {
            return Err(Error::InvalidMessage("a message needs at least one frame"));
        }
        self.s.core.send_fanout(msg);
        Ok(())
    }
}

/// SUB: receives what its publishers send on the topics it subscribed to (prefix match on the
/// first frame; the empty topic matches everything). Subscriptions are sent to every
/// publisher, and again after each reconnect.
#[derive(Debug)]
pub struct SubSocket {
    s: Socket,
}
common!(SubSocket, SocketType::Sub);
receives!(SubSocket);

impl SubSocket {
    /// Subscribes to a topic prefix (any bytes).
    pub async fn subscribe(&self, topic: &[u8]) {
        self.s.core.set_subscription(true, topic).await
    }

    /// Removes one subscription to a topic prefix.
    pub async fn unsubscribe(&self, topic: &[u8]) {
        self.s.core.set_subscription(false, topic).await
    }
}

/// XSUB: a SUB whose subscriptions are written as messages (`0x01 topic`, `0x00 topic`); any
/// other message sent goes to every publisher.
#[derive(Debug)]
pub struct XSubSocket {
    s: Socket,
}
common!(XSubSocket, SocketType::XSub);
receives!(XSubSocket);

impl XSubSocket {
    /// Sends a subscription message, or any other message upstream.
    pub async fn send(&self, msg: impl Into<Message>) -> Result<()> {
        let msg = msg.into();
        if msg.is_empty() {
            return Err(Error::InvalidMessage("a message needs at least one frame"));
        }
        self.s.core.send_upstream(msg).await;
        Ok(())
    }

    /// Subscribes to a topic prefix.
    pub async fn subscribe(&self, topic: &[u8]) {
        self.s.core.set_subscription(true, topic).await
    }

    /// Removes one subscription.
    pub async fn unsubscribe(&self, topic: &[u8]) {
        self.s.core.set_subscription(false, topic).await
    }
}

/// PUSH: sends round-robin to its pullers, waiting while all are at their high-water mark or
/// none is connected.
#[derive(Debug)]
pub struct PushSocket {
    s: Socket,
}
common!(PushSocket, SocketType::Push);

impl PushSocket {
    /// Sends a message (waits for a puller with room; wrap in a timeout to bound the wait).
    pub async fn send(&self, msg: impl Into<Message>) -> Result<()> {
        send_balanced(&self.s.core, msg.into()).await.map(|_| ())
    }
}

/// PULL: receives from all its pushers, fair-queued.
#[derive(Debug)]
pub struct PullSocket {
    s: Socket,
}
common!(PullSocket, SocketType::Pull);
receives!(PullSocket);
