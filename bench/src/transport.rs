//! Transport: the project's own ZMTP transport (`sf-zmtp`) as raw sockets, beside the `zeromq`
//! crate it replaces and (with the `libzmq` cargo feature) libzmq itself, same sizes, same run.
//!
//! Every figure is the socket library alone, no framework: frames of 100 B and 1 KB (the
//! first 8 bytes a sequence number) through
//! - DEALER -> ROUTER echo, 1 and 16 requests in flight: round trips/s, p50, p99;
//! - PUB -> SUB, lossless: the hand-written credit window of the `pubsub` pattern (the
//!   subscriber acknowledges every `window / 4` messages over PUSH -> PULL, the publisher
//!   never runs more than `window` ahead), with a send high-water mark above the window
//!   where the library has one, so nothing is dropped; delivered msg/s;
//! - PUSH -> PULL, one hop, default high-water marks: msg/s.
//!
//! The two tokio libraries run the very same loops (written once over [`Lib`]), both ends in
//! one multi-thread runtime as the `pubsub` and `pipeline` patterns run. libzmq runs as a
//! blocking program does: each end on its own thread, one context (one I/O thread) for both.
//! Diagnostic rows (`ends on own threads`, no targets) run the tokio request/reply cases in
//! that layout too, each end on its own thread and current-thread runtime: what is left
//! between those and libzmq is the libraries, not where their ends run.
//!
//! Targets: sf-zmtp at least zeromq on every row (ratio >= 1.0 for rates, <= 1.0 for
//! latencies), at least 0.8 of libzmq's rates and at most 1.25x its p50.
//!
//! `sf-zmtp CURVE` rows (no targets) run the same loops with every connection under CURVE
//! (binders the servers, one client key on an allow-list): new/base is what CURVE costs
//! against NULL, in the same run. libzmq has no such row: the `zmq` crate's zmq-sys builds
//! libzmq without libsodium unless its `libsodium` feature is on, and without libsodium
//! libzmq has no CURVE.

#[cfg(feature = "libzmq")]
mod libzmq;

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;

use crate::pubsub::Delivered;
use crate::report::{PatternReport, Row, Target};
use crate::reqrep::RoundTrips;
use crate::util::{block_on, count, count_granting, count_until, median_run, rate, Flavor};
use crate::util::{Credit, Inbox, Latency};
use crate::Config;

/// Message sizes, bytes (the sequence number included).
pub const SIZES: [usize; 2] = [100, 1024];
/// Requests in flight of the request/reply cases.
pub const IN_FLIGHT: [usize; 2] = [1, 16];
/// The credit window of the lossless pub/sub case (the `pubsub` pattern's).
pub const CREDIT_WINDOW: u64 = crate::pubsub::CREDIT_WINDOW;
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
const WARMUP_LIMIT: Duration = Duration::from_secs(5);
const STREAM_WARMUP: u64 = 10;

/// The libraries compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Library {
    /// The project's own transport.
    Zmtp,
    /// The `zeromq` 0.7 crate.
    Zeromq,
    /// The project's own transport with CURVE on every connection.
    ZmtpCurve,
    /// libzmq through the `zmq` crate (`libzmq` feature).
    Libzmq,
}

impl Library {
    /// As printed.
    pub fn label(self) -> &'static str {
        match self {
            Library::Zmtp => "sf-zmtp",
            Library::Zeromq => "zeromq",
            Library::ZmtpCurve => "sf-zmtp CURVE",
            Library::Libzmq => "libzmq",
        }
    }

    /// The libraries this build can measure.
    pub fn built() -> Vec<Library> {
        let mut v = vec![Library::Zmtp, Library::Zeromq, Library::ZmtpCurve];
        if cfg!(feature = "libzmq") {
            v.push(Library::Libzmq);
        }
        v
    }
}

/// The libzmq version linked, when the feature is on.
pub fn libzmq_version() -> Option<String> {
    #[cfg(feature = "libzmq")]
    {
        Some(libzmq::version())
    }
    #[cfg(not(feature = "libzmq"))]
    {
        None
    }
}

/// One measured case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// DEALER -> ROUTER echo with `window` requests in flight.
    ReqRep {
        /// Bytes per request (and reply).
        size: usize,
        /// Requests in flight.
        window: usize,
        /// Each end on its own thread (a current-thread runtime each, for the tokio
        /// libraries): the layout libzmq always has, as two services in two processes run.
        threads: bool,
    },
    /// PUB -> SUB under a credit window.
    PubSub {
        /// Bytes per message.
        size: usize,
    },
    /// PUSH -> PULL.
    PushPull {
        /// Bytes per message.
        size: usize,
    },
}

impl Case {
    fn label(self) -> String {
        match self {
            Case::ReqRep {
                size,
                window,
                threads: false,
            } => format!("req/rep {window} in flight, {}", bytes(size)),
            Case::ReqRep {
                size,
                window,
                threads: true,
            } => format!(
                "req/rep {window} in flight, {}, ends on own threads",
                bytes(size)
            ),
            Case::PubSub { size } => format!("pub/sub, {}", bytes(size)),
            Case::PushPull { size } => format!("push/pull, {}", bytes(size)),
        }
    }
}

fn bytes(size: usize) -> String {
    if size % 1024 == 0 {
        format!("{} KB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// What one run of a case measured.
#[derive(Debug, Clone, Copy)]
pub enum Figures {
    /// Request/reply.
    RoundTrips(RoundTrips),
    /// A stream (pub/sub, push/pull).
    Stream(Delivered),
}

impl Figures {
    /// The rate (round trips/s or messages/s): what medians are taken by.
    pub fn per_s(&self) -> f64 {
        match self {
            Figures::RoundTrips(r) => r.per_s,
            Figures::Stream(d) => d.per_s,
        }
    }

    fn latency(&self) -> Option<Latency> {
        match self {
            Figures::RoundTrips(r) => Some(r.latency),
            Figures::Stream(_) => None,
        }
    }

    fn stream(&self) -> Option<&Delivered> {
        match self {
            Figures::Stream(d) => Some(d),
            Figures::RoundTrips(_) => None,
        }
    }
}

/// Message counts of one mode.
#[derive(Debug, Clone, Copy)]
struct Counts {
    rr_one: usize,
    rr_many: usize,
    rr_warmup: usize,
    pubsub: u64,
    pushpull: u64,
    quiet: Duration,
    limit: Duration,
}

impl Counts {
    fn of(config: &Config) -> Counts {
        let c = config.counts();
        Counts {
            rr_one: c.rr_one,
            rr_many: c.rr_many,
            rr_warmup: c.rr_warmup,
            pubsub: c.pubsub,
            pushpull: c.pipeline,
            quiet: c.quiet,
            limit: Duration::from_secs(if config.short { 20 } else { 120 }),
        }
    }
}

/// Runs `case` once through `lib`.
fn measure(lib: Library, case: Case, c: &Counts) -> anyhow::Result<Figures> {
    match lib {
        Library::Zmtp => on_tokio::<Zmtp>(case, c),
        Library::Zeromq => on_tokio::<Zeromq>(case, c),
        Library::ZmtpCurve => on_tokio::<ZmtpCurve>(case, c),
        Library::Libzmq => on_libzmq(case, c),
    }
}

fn on_tokio<L: Lib>(case: Case, c: &Counts) -> anyhow::Result<Figures> {
    let c = *c;
    let total = move |window: usize| if window == 1 { c.rr_one } else { c.rr_many };
    if let Case::ReqRep {
        size,
        window,
        threads: true,
    } = case
    {
        let (ep, _stop) = echo_thread::<L>()?;
        let n = total(window);
        return block_on(Flavor::Current, c.limit, async move {
            Ok(Figures::RoundTrips(
                calls::<L>(ep, size, window, n, c.rr_warmup).await?,
            ))
        });
    }
    block_on(Flavor::Multi, c.limit, async move {
        Ok(match case {
            Case::ReqRep { size, window, .. } => Figures::RoundTrips(
                round_trips::<L>(size, window, total(window), c.rr_warmup).await?,
            ),
            Case::PubSub { size } => {
                Figures::Stream(credit_stream::<L>(c.pubsub, size, CREDIT_WINDOW, c.quiet).await?)
            }
            Case::PushPull { size } => {
                Figures::Stream(push_pull::<L>(c.pushpull, size, c.quiet).await?)
            }
        })
    })
}

/// `L`'s ROUTER echo on its own thread and current-thread runtime; stops when the returned
/// sender is dropped.
fn echo_thread<L: Lib>() -> anyhow::Result<(String, std::sync::mpsc::Sender<()>)> {
    let (ep_tx, ep_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("transport-echo".into())
        .spawn(move || {
            let rt = crate::util::runtime(Flavor::Current);
            rt.block_on(async move {
                let _ = ep_tx.send(L::router_echo().await.map_err(|e| format!("{e:#}")));
                // The echo task runs while this polls the stop channel.
                while let Err(std::sync::mpsc::TryRecvError::Empty) = stop_rx.try_recv() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            rt.shutdown_timeout(Duration::from_secs(1));
        })?;
    let ep = ep_rx
        .recv_timeout(WARMUP_LIMIT)
        .context("the echo thread did not start")?
        .map_err(anyhow::Error::msg)?;
    Ok((ep, stop_tx))
}

#[cfg(feature = "libzmq")]
fn on_libzmq(case: Case, c: &Counts) -> anyhow::Result<Figures> {
    Ok(match case {
        Case::ReqRep { size, window, .. } => {
            let total = if window == 1 { c.rr_one } else { c.rr_many };
            Figures::RoundTrips(libzmq::round_trips(size, window, total, c.rr_warmup)?)
        }
        Case::PubSub { size } => Figures::Stream(libzmq::credit_stream(
            c.pubsub,
            size,
            CREDIT_WINDOW,
            c.quiet,
        )?),
        Case::PushPull { size } => Figures::Stream(libzmq::push_pull(c.pushpull, size, c.quiet)?),
    })
}

#[cfg(not(feature = "libzmq"))]
fn on_libzmq(_case: Case, _c: &Counts) -> anyhow::Result<Figures> {
    anyhow::bail!("built without the libzmq feature")
}

// ---------------------------------------------------------------------------------------
// The frames
// ---------------------------------------------------------------------------------------

/// A frame of `size` bytes (at least 8) whose first 8 bytes are `seq`.
pub fn frame(size: usize, seq: u64) -> Bytes {
    let mut v = vec![b'x'; size.max(8)];
    v[..8].copy_from_slice(&seq.to_be_bytes());
    Bytes::from(v)
}

/// The sequence number a frame starts with.
pub fn seq_of(frame: &[u8]) -> anyhow::Result<u64> {
    frame
        .get(..8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
        .context("a frame shorter than its sequence number")
}

/// Request slots: requests carry their slot (`seq % SLOTS`) and replies come back in order
/// over the one connection, so a slot is free again long before it is reused; the frames are
/// prepared before the clock starts and every library sends the same prepared bytes.
const SLOTS: usize = 1024;

fn request_frames(size: usize) -> Vec<Bytes> {
    (0..SLOTS as u64).map(|i| frame(size, i)).collect()
}

// ---------------------------------------------------------------------------------------
// The two tokio libraries behind one interface
// ---------------------------------------------------------------------------------------

/// Sends single-frame messages.
pub trait Send1: Send + 'static {
    /// Sends `frame` (waiting where the library waits).
    fn send1(&mut self, frame: Bytes) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Receives messages; yields the last frame.
pub trait Recv1: Send + 'static {
    /// The next message's last frame.
    fn recv1(&mut self) -> impl Future<Output = anyhow::Result<Bytes>> + Send;
}

/// A tokio socket library: the sockets each case needs, set up the same way.
pub trait Lib: 'static {
    /// DEALER.
    type Dealer: Send1 + Recv1;
    /// PUB.
    type Pub: Send1;
    /// SUB, subscribed to everything.
    type Sub: Recv1 + Inbox;
    /// PUSH.
    type Push: Send1;
    /// PULL.
    type Pull: Recv1 + Inbox;

    /// A ROUTER on 127.0.0.1 echoing every message, on its own task; its endpoint.
    fn router_echo() -> impl Future<Output = anyhow::Result<String>> + Send;
    /// A DEALER connected to `endpoint`.
    fn dealer(endpoint: &str) -> impl Future<Output = anyhow::Result<Self::Dealer>> + Send;
    /// A PUB bound on 127.0.0.1 queueing up to `hwm` messages per subscriber (where the
    /// library lets it be set); its endpoint.
    fn publisher(hwm: usize) -> impl Future<Output = anyhow::Result<(Self::Pub, String)>> + Send;
    /// A SUB connected to `endpoint`, subscribed to everything.
    fn subscriber(endpoint: &str) -> impl Future<Output = anyhow::Result<Self::Sub>> + Send;
    /// A PULL bound on 127.0.0.1; its endpoint.
    fn puller() -> impl Future<Output = anyhow::Result<(Self::Pull, String)>> + Send;
    /// A PUSH connected to `endpoint`.
    fn pusher(endpoint: &str) -> impl Future<Output = anyhow::Result<Self::Push>> + Send;
}

/// `sf-zmtp`, default options (but the PUB's send high-water mark).
#[derive(Debug)]
pub struct Zmtp;

/// The `zeromq` 0.7 crate, default options.
#[derive(Debug)]
pub struct Zeromq;

/// `sf-zmtp` as [`Zmtp`], every connection under CURVE.
#[derive(Debug)]
pub struct ZmtpCurve;

mod zmtp_impl {
    use super::*;
    use sf_zmtp::{
        Authorizer, DealerSocket, KeyPair, Message, PubSocket, PullSocket, PushSocket,
        RouterSocket, Security, SocketOptions, SubSocket,
    };

    const ANY: &str = "tcp://127.0.0.1:0";

    fn last(m: Message) -> anyhow::Result<Bytes> {
        m.into_iter().last().context("an empty message")
    }

    impl Send1 for DealerSocket {
        async fn send1(&mut self, frame: Bytes) -> anyhow::Result<()> {
            Ok(self.send(frame).await?)
        }
    }
    impl Recv1 for DealerSocket {
        async fn recv1(&mut self) -> anyhow::Result<Bytes> {
            last(self.recv().await?)
        }
    }
    impl Send1 for PubSocket {
        async fn send1(&mut self, frame: Bytes) -> anyhow::Result<()> {
            Ok(self.send(frame)?)
        }
    }
    impl Recv1 for SubSocket {
        async fn recv1(&mut self) -> anyhow::Result<Bytes> {
            last(self.recv().await?)
        }
    }
    impl Inbox for SubSocket {
        async fn next_message(&mut self) -> bool {
            self.recv().await.is_ok()
        }
    }
    impl Send1 for PushSocket {
        async fn send1(&mut self, frame: Bytes) -> anyhow::Result<()> {
            Ok(self.send(frame).await?)
        }
    }
    impl Recv1 for PullSocket {
        async fn recv1(&mut self) -> anyhow::Result<Bytes> {
            last(self.recv().await?)
        }
    }
    impl Inbox for PullSocket {
        async fn next_message(&mut self) -> bool {
            self.recv().await.is_ok()
        }
    }

    /// The keys of the CURVE rows: one server pair, one client pair, made once.
    fn keys() -> &'static (KeyPair, KeyPair) {
        static KEYS: std::sync::OnceLock<(KeyPair, KeyPair)> = std::sync::OnceLock::new();
        KEYS.get_or_init(|| (KeyPair::generate(), KeyPair::generate()))
    }

    /// Options of a binding (server) and a connecting (client) socket.
    fn server(curve: bool) -> SocketOptions {
        let o = SocketOptions::default();
        if !curve {
            return o;
        }
        let (server, client) = keys();
        o.security(Security::curve_server(
            server.secret.clone(),
            Authorizer::allow_list([client.public]),
        ))
    }

    fn client(curve: bool) -> SocketOptions {
        let o = SocketOptions::default();
        if !curve {
            return o;
        }
        let (server, client) = keys();
        o.security(Security::curve_client(server.public, client.clone()))
    }

    async fn router_echo(curve: bool) -> anyhow::Result<String> {
        let mut router = RouterSocket::with_options(server(curve));
        let ep = router.bind(ANY).await?;
        tokio::spawn(async move {
            while let Ok(m) = router.recv().await {
                if router.send(m).is_err() {
                    break;
                }
            }
        });
        Ok(ep)
    }

    async fn dealer(endpoint: &str, curve: bool) -> anyhow::Result<DealerSocket> {
        let d = DealerSocket::with_options(client(curve));
        d.connect(endpoint)?;
        Ok(d)
    }

    async fn publisher(hwm: usize, curve: bool) -> anyhow::Result<(PubSocket, String)> {
        let p = PubSocket::with_options(server(curve).send_hwm(hwm));
        let ep = p.bind(ANY).await?;
        Ok((p, ep))
    }

    async fn subscriber(endpoint: &str, curve: bool) -> anyhow::Result<SubSocket> {
        let s = SubSocket::with_options(client(curve));
        s.connect(endpoint)?;
        s.subscribe(b"").await;
        Ok(s)
    }

    async fn puller(curve: bool) -> anyhow::Result<(PullSocket, String)> {
        let p = PullSocket::with_options(server(curve));
        let ep = p.bind(ANY).await?;
        Ok((p, ep))
    }

    async fn pusher(endpoint: &str, curve: bool) -> anyhow::Result<PushSocket> {
        let p = PushSocket::with_options(client(curve));
        p.connect(endpoint)?;
        Ok(p)
    }

    macro_rules! zmtp_lib {
        ($name:ident, $curve:expr) => {
            impl Lib for $name {
                type Dealer = DealerSocket;
                type Pub = PubSocket;
                type Sub = SubSocket;
                type Push = PushSocket;
                type Pull = PullSocket;

                async fn router_echo() -> anyhow::Result<String> {
                    router_echo($curve).await
                }
                async fn dealer(endpoint: &str) -> anyhow::Result<DealerSocket> {
                    dealer(endpoint, $curve).await
                }
                async fn publisher(hwm: usize) -> anyhow::Result<(PubSocket, String)> {
                    publisher(hwm, $curve).await
                }
                async fn subscriber(endpoint: &str) -> anyhow::Result<SubSocket> {
                    subscriber(endpoint, $curve).await
                }
                async fn puller() -> anyhow::Result<(PullSocket, String)> {
                    puller($curve).await
                }
                async fn pusher(endpoint: &str) -> anyhow::Result<PushSocket> {
                    pusher(endpoint, $curve).await
                }
            }
        };
    }
    zmtp_lib!(Zmtp, false);
    zmtp_lib!(ZmtpCurve, true);
}

mod zeromq_impl {
    use super::*;
    use zeromq::{
        DealerSocket, PubSocket, PullSocket, PushSocket, Socket, SocketRecv, SocketSend, SubSocket,
        ZmqMessage,
    };

    const ANY: &str = "tcp://127.0.0.1:0";

    fn last(m: ZmqMessage) -> anyhow::Result<Bytes> {
        m.into_vec().pop().context("an empty message")
    }

    impl Send1 for DealerSocket {
        async fn send1(&mut self, frame: Bytes) -> anyhow::Result<()> {
            Ok(self.send(ZmqMessage::from(frame)).await?)
        }
    }
    impl Recv1 for DealerSocket {
        async fn recv1(&mut self) -> anyhow::Result<Bytes> {
            last(self.recv().await?)
        }
    }
    impl Send1 for PubSocket {
        async fn send1(&mut self, frame: Bytes) -> anyhow::Result<()> {
            Ok(self.send(ZmqMessage::from(frame)).await?)
        }
    }
    impl Recv1 for SubSocket {
        async fn recv1(&mut self) -> anyhow::Result<Bytes> {
            last(self.recv().await?)
        }
    }
    impl Send1 for PushSocket {
        async fn send1(&mut self, frame: Bytes) -> anyhow::Result<()> {
            Ok(self.send(ZmqMessage::from(frame)).await?)
        }
    }
    impl Recv1 for PullSocket {
        async fn recv1(&mut self) -> anyhow::Result<Bytes> {
            last(self.recv().await?)
        }
    }

    impl Lib for Zeromq {
        type Dealer = DealerSocket;
        type Pub = PubSocket;
        type Sub = SubSocket;
        type Push = PushSocket;
        type Pull = PullSocket;

        async fn router_echo() -> anyhow::Result<String> {
            crate::reqrep::raw_router_echo().await
        }

        async fn dealer(endpoint: &str) -> anyhow::Result<DealerSocket> {
            let mut d = DealerSocket::new();
            d.connect(endpoint).await?;
            Ok(d)
        }

        async fn publisher(_hwm: usize) -> anyhow::Result<(PubSocket, String)> {
            let mut p = PubSocket::new();
            let ep = p.bind(ANY).await?.to_string();
            Ok((p, ep))
        }

        async fn subscriber(endpoint: &str) -> anyhow::Result<SubSocket> {
            let mut s = SubSocket::new();
            s.connect(endpoint).await?;
            s.subscribe("").await?;
            Ok(s)
        }

        async fn puller() -> anyhow::Result<(PullSocket, String)> {
            let mut p = PullSocket::new();
            let ep = p.bind(ANY).await?.to_string();
            Ok((p, ep))
        }

        async fn pusher(endpoint: &str) -> anyhow::Result<PushSocket> {
            let mut p = PushSocket::new();
            p.connect(endpoint).await?;
            Ok(p)
        }
    }
}

// ---------------------------------------------------------------------------------------
// The measurements, once for both tokio libraries
// ---------------------------------------------------------------------------------------

/// DEALER -> ROUTER echo keeping `window` requests of `size` bytes in flight (1: lock-step).
pub async fn round_trips<L: Lib>(
    size: usize,
    window: usize,
    total: usize,
    warmup: usize,
) -> anyhow::Result<RoundTrips> {
    let ep = L::router_echo().await?;
    calls::<L>(ep, size, window, total, warmup).await
}

/// A DEALER to the echo at `endpoint` keeping `window` requests in flight.
pub async fn calls<L: Lib>(
    endpoint: String,
    size: usize,
    window: usize,
    total: usize,
    warmup: usize,
) -> anyhow::Result<RoundTrips> {
    anyhow::ensure!(window <= SLOTS, "at most {SLOTS} requests in flight");
    let mut dealer = L::dealer(&endpoint).await?;
    let frames = request_frames(size);
    for i in 0..warmup {
        dealer.send1(frames[i % SLOTS].clone()).await?;
        tokio::time::timeout(REPLY_TIMEOUT, dealer.recv1())
            .await
            .context("warm-up reply timed out")??;
    }
    let mut starts = [Instant::now(); SLOTS];
    let mut lat = Vec::with_capacity(total);
    let start = Instant::now();
    let mut sent = 0;
    while sent < window.min(total) {
        starts[sent % SLOTS] = Instant::now();
        dealer.send1(frames[sent % SLOTS].clone()).await?;
        sent += 1;
    }
    while lat.len() < total {
        let reply = tokio::time::timeout(REPLY_TIMEOUT, dealer.recv1())
            .await
            .context("reply timed out")??;
        anyhow::ensure!(reply.len() == size, "a reply of {} bytes", reply.len());
        let slot = seq_of(&reply)? as usize;
        lat.push(
            starts
                .get(slot)
                .context("reply to an unknown slot")?
                .elapsed(),
        );
        if sent < total {
            starts[sent % SLOTS] = Instant::now();
            dealer.send1(frames[sent % SLOTS].clone()).await?;
            sent += 1;
        }
    }
    let elapsed = start.elapsed();
    Ok(RoundTrips {
        per_s: rate(total as u64, elapsed),
        latency: Latency::of(&mut lat),
    })
}

/// The subscriber's credit: the count received, as 8 bytes over PUSH.
struct Acks<S: Send1>(S);

impl<S: Send1> Credit for Acks<S> {
    async fn grant(&mut self, received: u64) -> bool {
        self.0.send1(frame(8, received)).await.is_ok()
    }
}

/// Sends `frame` until `sub` receives one (the subscription is in place), then drains.
async fn subscribed<P: Send1, S: Recv1>(
    publ: &mut P,
    sub: &mut S,
    frame: Bytes,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + WARMUP_LIMIT;
    loop {
        publ.send1(frame.clone()).await?;
        if tokio::time::timeout(Duration::from_millis(20), sub.recv1())
            .await
            .is_ok()
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the subscriber received no warm-up message within {WARMUP_LIMIT:?}"
        );
    }
    while tokio::time::timeout(Duration::from_millis(100), sub.recv1())
        .await
        .is_ok()
    {}
    Ok(())
}

/// PUB -> SUB of `n` messages of `size` bytes, the publisher never more than `window` ahead
/// of the subscriber's last acknowledgement (every `window / 4`, over PUSH -> PULL).
pub async fn credit_stream<L: Lib>(
    n: u64,
    size: usize,
    window: u64,
    quiet: Duration,
) -> anyhow::Result<Delivered> {
    let (mut publ, ep) = L::publisher(2 * window as usize).await?;
    let (mut acks, ack_ep) = L::puller().await?;
    let mut sub = L::subscriber(&ep).await?;
    let ack_tx = L::pusher(&ack_ep).await?;
    let body = frame(size, 0);
    subscribed(&mut publ, &mut sub, body.clone()).await?;
    let every = (window / 4).max(1);
    let consumer = tokio::spawn(async move {
        let mut credit = Acks(ack_tx);
        count_granting(&mut sub, n, quiet, every, &mut credit).await
    });
    let start = Instant::now();
    let mut acked = 0u64;
    for seq in 1..=n {
        while seq > acked + window {
            let ack = tokio::time::timeout(quiet, acks.recv1())
                .await
                .context("no credit from the subscriber")??;
            acked = acked.max(seq_of(&ack)?);
        }
        publ.send1(body.clone()).await?;
    }
    let published = start.elapsed();
    let counted = consumer.await?;
    Ok(Delivered {
        sent: n,
        received: counted.received,
        per_s: counted.per_s(start, published),
        publish_per_s: rate(n, published),
        lost_counter: None,
    })
}

/// PUSH -> PULL of `n` messages of `size` bytes, one hop.
pub async fn push_pull<L: Lib>(n: u64, size: usize, quiet: Duration) -> anyhow::Result<Delivered> {
    let (mut sink, ep) = L::puller().await?;
    let mut source = L::pusher(&ep).await?;
    let body = frame(size, 0);
    for _ in 0..STREAM_WARMUP {
        source.send1(body.clone()).await?;
    }
    let warm = count_until(&mut sink, STREAM_WARMUP, WARMUP_LIMIT).await;
    anyhow::ensure!(
        warm.received == STREAM_WARMUP,
        "warm-up: the sink got {} of {STREAM_WARMUP}",
        warm.received
    );
    let consumer = tokio::spawn(async move { count_until(&mut sink, n, quiet).await });
    let start = Instant::now();
    for _ in 0..n {
        source.send1(body.clone()).await?;
    }
    let published = start.elapsed();
    let counted = consumer.await?;
    Ok(Delivered {
        sent: n,
        received: counted.received,
        per_s: counted.per_s(start, published),
        publish_per_s: rate(n, published),
        lost_counter: None,
    })
}

// ---------------------------------------------------------------------------------------
// The pattern
// ---------------------------------------------------------------------------------------

/// The cases, in table order.
pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for size in SIZES {
        for window in IN_FLIGHT {
            v.push(Case::ReqRep {
                size,
                window,
                threads: false,
            });
        }
        v.push(Case::PubSub { size });
        v.push(Case::PushPull { size });
    }
    // Diagnostic: the tokio libraries in libzmq's thread layout.
    for window in IN_FLIGHT {
        v.push(Case::ReqRep {
            size: SIZES[0],
            window,
            threads: true,
        });
    }
    v
}

/// The targets of a row against `baseline`: sf-zmtp at least zeromq everywhere; at least
/// 0.8 of libzmq's rates and at most 1.25x its p50.
fn targets(baseline: Library, metric: &str) -> Vec<Target> {
    let latency = metric.contains("latency");
    match baseline {
        Library::Zeromq if latency => vec![Target::RatioAtMost(1.0)],
        Library::Zeromq => vec![Target::RatioAtLeast(1.0)],
        Library::Libzmq if metric.starts_with("p50") => vec![Target::RatioAtMost(1.25)],
        Library::Libzmq if latency => Vec::new(),
        Library::Libzmq => vec![Target::RatioAtLeast(0.8)],
        // What CURVE costs: measured, not a target.
        Library::Zmtp | Library::ZmtpCurve => Vec::new(),
    }
}

fn stream_note(lib: Library, r: &anyhow::Result<Figures>) -> String {
    match r {
        Ok(f) => match f.stream() {
            Some(d) => format!(
                "{} {} of {} received, send loop {} msg/s",
                lib.label(),
                count(d.received),
                count(d.sent),
                count(d.publish_per_s as u64)
            ),
            None => format!("{} measured", lib.label()),
        },
        Err(e) => format!("{} failed: {e:#}", lib.label()),
    }
}

/// Runs the transport pattern.
pub fn run(config: &Config) -> PatternReport {
    let c = Counts::of(config);
    let libs = Library::built();
    let mut p = PatternReport::new(
        "transport",
        "raw sockets: sf-zmtp vs the zeromq crate vs libzmq, and sf-zmtp NULL vs CURVE, same frames, same run",
    )
    .columns("sf-zmtp", "baseline", "new/base");
    // Single runs move by up to 1.5x on this kind of VM: each case runs several times, the
    // libraries alternating, and the median run (by rate) of each is reported. Lock-step
    // round trips move most and cost least (about 0.5 s a run): they run 7 times.
    let runs = if config.short { 1 } else { 3 };
    let lock_step_runs = if config.short { 1 } else { 7 };
    for case in cases() {
        let mut results: Vec<Vec<anyhow::Result<Figures>>> =
            libs.iter().map(|_| Vec::new()).collect();
        let n = match case {
            Case::ReqRep { window: 1, .. } => lock_step_runs,
            _ => runs,
        };
        for _ in 0..n {
            for (i, &lib) in libs.iter().enumerate() {
                results[i].push(measure(lib, case, &c));
            }
        }
        let medians: Vec<anyhow::Result<Figures>> = results
            .into_iter()
            .map(|r| median_run(r, Figures::per_s))
            .collect();
        push_rows(&mut p, case, &libs, &medians);
    }
    p.note(format!(
        "frames of {} (the first 8 bytes a sequence number); request/reply {} round trips with 1 in flight, {} with 16; pub/sub {} messages under a credit window of {} (acks every window/4 over PUSH->PULL; PUB send high-water mark 2x the window where settable); push/pull {} messages, one hop, default high-water marks",
        SIZES.map(bytes).join(" and "),
        count(c.rr_one as u64),
        count(c.rr_many as u64),
        count(c.pubsub),
        count(CREDIT_WINDOW),
        count(c.pushpull),
    ));
    p.note(format!(
        "sf-zmtp and zeromq run the same loops, both ends in one multi-thread tokio runtime (rows `ends on own threads`, diagnostic: each end on its own thread and current-thread runtime, libzmq's layout); median run of {runs} per library ({lock_step_runs} with 1 request in flight), alternating"
    ));
    p.note(
        "`vs sf-zmtp CURVE` rows: the sf-column is sf-zmtp NULL, the baseline the same loops with every connection under CURVE (no target; new/base above 1 is what CURVE costs); libzmq has no CURVE row: the zmq crate builds libzmq without libsodium, hence without CURVE",
    );
    match libzmq_version() {
        Some(v) => p.note(format!(
            "libzmq {v} through the zmq crate: each end on its own thread, one context (1 I/O thread), default options but the PUB's send high-water mark"
        )),
        None => p.note(
            "libzmq rows: build with `--features libzmq` (cargo build --release -p sf-bench --features libzmq)",
        ),
    }
    p
}

type Pick = fn(&Figures) -> Option<f64>;

fn push_rows(
    p: &mut PatternReport,
    case: Case,
    libs: &[Library],
    medians: &[anyhow::Result<Figures>],
) {
    let zmtp = &medians[0];
    let diagnostic = matches!(case, Case::ReqRep { threads: true, .. });
    let mut metrics: Vec<(&str, &str, Pick)> = Vec::new();
    match case {
        Case::ReqRep { .. } => {
            metrics.push(("round trips/s", "rt/s", |f| Some(f.per_s())));
            metrics.push(("p50 latency", "us", |f| f.latency().map(|l| l.p50_us)));
            if !diagnostic {
                metrics.push(("p99 latency", "us", |f| f.latency().map(|l| l.p99_us)));
            }
        }
        Case::PubSub { .. } => metrics.push(("delivered", "msg/s", |f| Some(f.per_s()))),
        Case::PushPull { .. } => metrics.push(("through one hop", "msg/s", |f| Some(f.per_s()))),
    }
    for (m, (metric, unit, pick)) in metrics.into_iter().enumerate() {
        for (&baseline, base) in libs.iter().zip(medians).skip(1) {
            let mut row = Row::new(
                format!("{} vs {}", case.label(), baseline.label()),
                metric,
                unit,
            )
            .fw(zmtp.as_ref().ok().and_then(pick))
            .raw(base.as_ref().ok().and_then(pick));
            if !diagnostic {
                for t in targets(baseline, metric) {
                    row = row.target(t);
                }
            }
            let failed = zmtp.is_err() || base.is_err();
            let streams = matches!(case, Case::PubSub { .. } | Case::PushPull { .. });
            if m == 0 && (failed || streams) {
                row = row.note(format!(
                    "{}; {}",
                    stream_note(Library::Zmtp, zmtp),
                    stream_note(baseline, base)
                ));
            }
            p.push(row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_sequence_number() {
        let f = frame(100, 42);
        assert_eq!(f.len(), 100);
        assert_eq!(seq_of(&f).unwrap(), 42);
        assert!(seq_of(b"short").is_err());
        assert_eq!(bytes(1024), "1 KB");
        assert_eq!(bytes(100), "100 B");
    }

    #[test]
    fn targets_follow_the_brief() {
        assert_eq!(
            targets(Library::Zeromq, "p99 latency"),
            vec![Target::RatioAtMost(1.0)]
        );
        assert_eq!(
            targets(Library::Zeromq, "delivered"),
            vec![Target::RatioAtLeast(1.0)]
        );
        assert_eq!(
            targets(Library::Libzmq, "p50 latency"),
            vec![Target::RatioAtMost(1.25)]
        );
        assert!(targets(Library::Libzmq, "p99 latency").is_empty());
        assert_eq!(
            targets(Library::Libzmq, "round trips/s"),
            vec![Target::RatioAtLeast(0.8)]
        );
    }
}
