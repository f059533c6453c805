//! Interoperability with libzmq 4.3 (pyzmq from the project's test venv), pairing by pairing.
//!
//! Every scenario runs four times at once: over TCP (127.0.0.1, ephemeral ports) and IPC
//! (socket files under the temp directory, removed afterwards), with our socket binding and
//! libzmq connecting, and the other way round. A scenario's failures name the variant.
//!
//! Nothing waits for things "to settle": every wait is for an event (a message, a
//! subscription passed up, a peer count, a monitor event) under a deadline. Where only a
//! retry can tell (a PUB cannot know when its subscriber's subscription arrived), the retry
//! is bounded.

mod support;

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use sf_zmtp::{
    DealerSocket, Error, Event, Heartbeat, Message, PubSocket, PullSocket, PushSocket,
    RouterSocket, SocketOptions, SocketStats, SubSocket, XPubSocket, XSubSocket,
};
use support::PyPeer;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// How long any one expected thing may take.
const WAIT: Duration = Duration::from_secs(5);
/// How long one variant of a scenario may take.
const CASE_LIMIT: Duration = Duration::from_secs(25);
/// How long a PUB-side retry waits for each attempt to arrive.
const RETRY_WAIT: Duration = Duration::from_millis(50);
/// Bounded retries (x [`RETRY_WAIT`]): 5 s.
const RETRIES: usize = 100;

// ------------------------------------------------------------------------------------------
// The matrix: transports x who binds.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Tcp,
    Ipc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Binder {
    /// Our socket binds, libzmq connects.
    Ours,
    /// libzmq binds, our socket connects.
    Theirs,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    transport: Transport,
    binder: Binder,
}

const CASES: [Case; 4] = [
    Case {
        transport: Transport::Tcp,
        binder: Binder::Ours,
    },
    Case {
        transport: Transport::Tcp,
        binder: Binder::Theirs,
    },
    Case {
        transport: Transport::Ipc,
        binder: Binder::Ours,
    },
    Case {
        transport: Transport::Ipc,
        binder: Binder::Theirs,
    },
];

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = match self.transport {
            Transport::Tcp => "tcp",
            Transport::Ipc => "ipc",
        };
        let b = match self.binder {
            Binder::Ours => "ours binds, libzmq connects",
            Binder::Theirs => "libzmq binds, ours connects",
        };
        write!(f, "{t} ({b})")
    }
}

/// Runs `scenario` for every case at once; fails with the list of variants that failed.
async fn matrix<F, Fut>(name: &str, scenario: F)
where
    F: Fn(Case) -> Fut,
    Fut: Future<Output = ()>,
{
    let runs = CASES.iter().map(|&c| {
        let run = scenario(c);
        async move {
            match AssertUnwindSafe(timeout(CASE_LIMIT, run))
                .catch_unwind()
                .await
            {
                Ok(Ok(())) => None,
                Ok(Err(_)) => Some(format!("{c}: did not finish within {CASE_LIMIT:?}")),
                Err(p) => {
                    let why = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panicked".into());
                    Some(format!("{c}: {why}"))
                }
            }
        }
    });
    let failed: Vec<String> = futures::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(
        failed.is_empty(),
        "{name}: {} of {} variants failed:\n  {}",
        failed.len(),
        CASES.len(),
        failed.join("\n  ")
    );
}

/// One `#[tokio::test]` per scenario, each running the whole matrix.
macro_rules! scenarios {
    ($($name:ident => $run:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            matrix(stringify!($name), $run).await
        }
    )*};
}

/// Endpoints for one variant. IPC socket files are unique and removed when this goes.
struct Endpoints {
    transport: Transport,
    paths: Mutex<Vec<PathBuf>>,
}

impl Endpoints {
    fn new(transport: Transport) -> Endpoints {
        Endpoints {
            transport,
            paths: Mutex::default(),
        }
    }

    fn ipc(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "sf-zmtp-interop-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let ep = format!("ipc://{}", path.display());
        self.paths.lock().unwrap().push(path);
        ep
    }

    /// What our socket binds.
    fn for_ours(&self) -> String {
        match self.transport {
            Transport::Tcp => "tcp://127.0.0.1:0".into(),
            Transport::Ipc => self.ipc(),
        }
    }

    /// What the libzmq peer binds.
    fn for_theirs(&self) -> String {
        match self.transport {
            Transport::Tcp => "tcp://127.0.0.1:*".into(),
            Transport::Ipc => self.ipc(),
        }
    }
}

impl Drop for Endpoints {
    fn drop(&mut self) {
        for p in self.paths.lock().unwrap().drain(..) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What every one of our socket kinds has.
trait Ours {
    async fn bind(&self, ep: &str) -> sf_zmtp::Result<String>;
    fn connect(&self, ep: &str) -> sf_zmtp::Result<()>;
    async fn wait_for_peers(&self, n: usize);
    fn peer_count(&self) -> usize;
    fn stats(&self) -> SocketStats;
    fn monitor(&self) -> mpsc::Receiver<Event>;
}

macro_rules! ours {
    ($($t:ty),*) => {$(
        impl Ours for $t {
            async fn bind(&self, ep: &str) -> sf_zmtp::Result<String> {
                <$t>::bind(self, ep).await
            }
            fn connect(&self, ep: &str) -> sf_zmtp::Result<()> {
                <$t>::connect(self, ep)
            }
            async fn wait_for_peers(&self, n: usize) {
                <$t>::wait_for_peers(self, n).await
            }
            fn peer_count(&self) -> usize {
                <$t>::peer_count(self)
            }
            fn stats(&self) -> SocketStats {
                <$t>::stats(self)
            }
            fn monitor(&self) -> mpsc::Receiver<Event> {
                <$t>::monitor(self)
            }
        }
    )*};
}
ours!(
    RouterSocket,
    DealerSocket,
    PubSocket,
    XPubSocket,
    SubSocket,
    XSubSocket,
    PushSocket,
    PullSocket
);

/// Connects our socket and a libzmq peer over a fresh endpoint, whoever binds in this case.
async fn link(c: Case, eps: &Endpoints, ours: &impl Ours, peer: &mut PyPeer) {
    match c.binder {
        Binder::Ours => {
            let ep = ours.bind(&eps.for_ours()).await.expect("our bind");
            if c.transport == Transport::Tcp {
                assert!(!ep.ends_with(":0"), "bind reports the port it got: {ep}");
            }
            peer.connect(&ep).await;
        }
        Binder::Theirs => {
            let ep = peer.bind(&eps.for_theirs()).await;
            ours.connect(&ep).expect("our connect");
        }
    }
}

/// Waits until our socket has exactly `n` handshaken peers.
async fn ready(ours: &impl Ours, n: usize) {
    within(&format!("{n} peer(s) connected"), ours.wait_for_peers(n)).await;
    assert_eq!(ours.peer_count(), n, "peers connected");
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for: {what}"))
}

// ------------------------------------------------------------------------------------------
// Messages, written as text so failures read well (bytes outside ASCII are escaped).

fn msg(frames: &[&[u8]]) -> Message {
    frames.iter().map(|f| Bytes::copy_from_slice(f)).collect()
}

fn txt(frames: &[Bytes]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f.escape_ascii().to_string())
        .collect()
}

fn m(frames: &[&str]) -> Vec<String> {
    frames.iter().map(|f| f.to_string()).collect()
}

/// A subscription message: 0x01 (0x00 to cancel) and the topic, as [`txt`] writes it.
fn sub_msg(on: bool, topic: &str) -> Vec<String> {
    vec![format!("\\x0{}{topic}", u8::from(on))]
}

fn sub_bytes(on: bool, topic: &[u8]) -> Vec<u8> {
    let mut v = vec![u8::from(on)];
    v.extend_from_slice(topic);
    v
}

/// Something messages can be read from with a deadline: a libzmq peer or one of ours.
trait Inbox {
    async fn next_within(&mut self, d: Duration) -> Option<Vec<String>>;

    async fn next(&mut self, what: &str) -> Vec<String> {
        self.next_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("timed out after {WAIT:?} waiting for: {what}"))
    }

    /// Every message up to and including the one whose first frame is `last`, leaving out
    /// those whose first frame is in `skip` (repeats of a retried send).
    async fn until(&mut self, last: &str, skip: &[&str]) -> Vec<Vec<String>> {
        let mut got = Vec::new();
        loop {
            let one = self.next(&format!("{last:?} (after {got:?})")).await;
            if skip.contains(&one[0].as_str()) {
                continue;
            }
            let done = one[0] == last;
            got.push(one);
            if done {
                return got;
            }
        }
    }
}

impl Inbox for PyPeer {
    async fn next_within(&mut self, d: Duration) -> Option<Vec<String>> {
        self.recv(d.as_millis() as u64).await.map(|f| txt(&f))
    }
}

macro_rules! inbox {
    ($($t:ty),*) => {$(
        impl Inbox for $t {
            async fn next_within(&mut self, d: Duration) -> Option<Vec<String>> {
                let got = timeout(d, self.recv()).await.ok()?;
                Some(txt(got.expect("our socket is open").frames()))
            }
        }
    )*};
}
inbox!(RouterSocket, DealerSocket, XPubSocket, PullSocket);

/// `names` numbered `from..=to`: `seq("A-", 2, 4)` is `[["A-2"], ["A-3"], ["A-4"]]`.
fn seq(prefix: &str, from: usize, to: usize) -> Vec<Vec<String>> {
    (from..=to).map(|i| vec![format!("{prefix}{i}")]).collect()
}

/// The number after `prefix` in a message's first frame.
fn number(prefix: &str, one: &[String]) -> usize {
    one[0]
        .strip_prefix(prefix)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("expected {prefix}<n>, got {one:?}"))
}

/// Waits for the next Disconnected (or HandshakeFailed) event for up to `d`.
async fn drop_within(mon: &mut mpsc::Receiver<Event>, d: Duration) -> Option<Event> {
    timeout(d, async {
        loop {
            match mon.recv().await {
                Some(e @ (Event::Disconnected { .. } | Event::HandshakeFailed { .. })) => return e,
                Some(_) => {}
                None => std::future::pending::<()>().await,
            }
        }
    })
    .await
    .ok()
}

// ------------------------------------------------------------------------------------------
// Our ROUTER with libzmq REQ and DEALER.

async fn router_with_req(c: Case) {
    let eps = Endpoints::new(c.transport);
    let mut router = RouterSocket::new();
    let mut reqs = [PyPeer::new("REQ").await, PyPeer::new("REQ").await];
    for r in reqs.iter_mut() {
        link(c, &eps, &router, r).await;
    }
    ready(&router, 2).await;
    let mut ids: [Option<Bytes>; 2] = [None, None];
    for round in 0..3 {
        for (i, r) in reqs.iter_mut().enumerate() {
            r.send(&[format!("q{round}-{i}").as_bytes()]).await;
        }
        for _ in 0..2 {
            let got = within("ROUTER gets a request", router.recv())
                .await
                .unwrap();
            let f = got.frames();
            assert_eq!(f.len(), 3, "[routing id, delimiter, body]: {:?}", txt(f));
            assert!(!f[0].is_empty(), "the routing id comes first");
            assert!(f[1].is_empty(), "then REQ's empty delimiter: {:?}", txt(f));
            let body = String::from_utf8(f[2].to_vec()).unwrap();
            let i: usize = body.rsplit('-').next().unwrap().parse().unwrap();
            assert_eq!(body, format!("q{round}-{i}"));
            // Each REQ keeps its routing id for the connection's life.
            let known = ids[i].get_or_insert_with(|| f[0].clone());
            assert_eq!(*known, f[0], "REQ {i}'s routing id changed");
            router
                .send(msg(&[&f[0], b"", format!("re:{body}").as_bytes()]))
                .unwrap();
        }
        for (i, r) in reqs.iter_mut().enumerate() {
            // Each gets its own reply (REQ itself checks and strips the delimiter).
            assert_eq!(r.next("a reply").await, m(&[&format!("re:q{round}-{i}")]));
        }
    }
    assert_ne!(ids[0], ids[1], "two peers, two routing ids");
}

async fn router_with_dealer(c: Case) {
    let eps = Endpoints::new(c.transport);
    let mut router = RouterSocket::new();
    let mut named = PyPeer::new("DEALER").await;
    named.opt_bytes("ROUTING_ID", b"alice").await;
    let mut anon = PyPeer::new("DEALER").await;
    link(c, &eps, &router, &mut named).await;
    link(c, &eps, &router, &mut anon).await;
    ready(&router, 2).await;

    named.send(&[b"hello", b"world"]).await;
    anon.send(&[b"x"]).await;
    let mut anon_id = None;
    for _ in 0..2 {
        let got = within("ROUTER gets a message", router.recv())
            .await
            .unwrap();
        let f = got.frames();
        if f[0].as_ref() == b"alice" {
            assert_eq!(txt(f), m(&["alice", "hello", "world"]));
        } else {
            assert_eq!(f.len(), 2, "[id, x]: {:?}", txt(f));
            assert_eq!(f[1].as_ref(), b"x", "{:?}", txt(f));
            assert!(!f[0].is_empty(), "an anonymous peer gets an id");
            anon_id = Some(f[0].clone());
        }
    }
    let anon_id = anon_id.expect("the anonymous DEALER's message");
    router.send(msg(&[b"alice", b"r1", b"more"])).unwrap();
    router.send(msg(&[&anon_id, b"r2"])).unwrap();
    assert_eq!(named.next("alice's reply").await, m(&["r1", "more"]));
    assert_eq!(anon.next("the anonymous reply").await, m(&["r2"]));
    assert!(
        matches!(router.send(msg(&[b"nobody", b"x"])), Err(Error::Unroutable)),
        "an unknown routing id is unroutable"
    );
    // Many messages each way, interleaved, keep their order per peer.
    for i in 0..50 {
        named.send(&[format!("n{i}").as_bytes()]).await;
        router
            .send(msg(&[b"alice", format!("to-alice-{i}").as_bytes()]))
            .unwrap();
    }
    for i in 0..50 {
        assert_eq!(
            router.next("alice's stream").await,
            m(&["alice", &format!("n{i}")])
        );
    }
    let got = named.recv_n(50, 5000).await;
    let got: Vec<Vec<String>> = got.iter().map(|f| txt(f)).collect();
    assert_eq!(got, seq("to-alice-", 0, 49));
}

// ------------------------------------------------------------------------------------------
// Our DEALER with libzmq REP and ROUTER.

async fn dealer_with_rep(c: Case) {
    let eps = Endpoints::new(c.transport);
    let mut dealer = DealerSocket::new();
    let mut reps = [PyPeer::new("REP").await, PyPeer::new("REP").await];
    for r in reps.iter_mut() {
        link(c, &eps, &dealer, r).await;
    }
    ready(&dealer, 2).await;
    for round in 0..3 {
        for x in ["a", "b"] {
            let body = format!("q{round}{x}");
            within("send", dealer.send(msg(&[b"", body.as_bytes()])))
                .await
                .unwrap();
        }
        // Round-robin: one request each. REP strips the delimiter.
        let mut bodies = Vec::new();
        for r in reps.iter_mut() {
            let got = r.next("a request").await;
            assert_eq!(got.len(), 1, "{got:?}");
            r.send(&[format!("re:{}", got[0]).as_bytes()]).await;
            bodies.push(got[0].clone());
        }
        bodies.sort();
        assert_eq!(bodies, m(&[&format!("q{round}a"), &format!("q{round}b")]));
        let mut replies = vec![dealer.next("a reply").await, dealer.next("a reply").await];
        replies.sort();
        assert_eq!(
            replies,
            vec![
                m(&["", &format!("re:q{round}a")]),
                m(&["", &format!("re:q{round}b")])
            ],
            "REP puts the delimiter back"
        );
    }
}

async fn dealer_with_router(c: Case) {
    let eps = Endpoints::new(c.transport);
    let mut named =
        DealerSocket::with_options(SocketOptions::default().identity(&b"our-dealer"[..]));
    let mut anon = DealerSocket::new();
    let mut router = PyPeer::new("ROUTER").await;
    link(c, &eps, &named, &mut router).await;
    link(c, &eps, &anon, &mut router).await;
    ready(&named, 1).await;
    ready(&anon, 1).await;

    within("send", named.send(msg(&[b"ping", b"2"])))
        .await
        .unwrap();
    within("send", anon.send(msg(&[b"anon"]))).await.unwrap();
    let mut anon_id = None;
    for _ in 0..2 {
        let raw = router
            .recv(5000)
            .await
            .expect("a message at libzmq's ROUTER");
        let got = txt(&raw);
        if got[0] == "our-dealer" {
            assert_eq!(
                got,
                m(&["our-dealer", "ping", "2"]),
                "seen under our identity"
            );
        } else {
            assert_eq!(got.len(), 2, "{got:?}");
            assert_eq!(got[1], "anon");
            anon_id = Some(raw[0].clone());
        }
    }
    let anon_id = anon_id.expect("the anonymous DEALER's message");
    router.send(&[b"our-dealer", b"pong", b"two"]).await;
    assert_eq!(named.next("the reply").await, m(&["pong", "two"]));
    // libzmq picked the anonymous one's id: replies to it reach it.
    router.send(&[&anon_id, b"pong-anon"]).await;
    assert_eq!(anon.next("the anonymous reply").await, m(&["pong-anon"]));
}

// ------------------------------------------------------------------------------------------
// Our PUB and XPUB with libzmq SUB and XSUB.

enum OurPub {
    Pub(PubSocket),
    XPub(XPubSocket),
}

macro_rules! each_pub {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            OurPub::Pub($s) => $e,
            OurPub::XPub($s) => $e,
        }
    };
}

impl Ours for OurPub {
    async fn bind(&self, ep: &str) -> sf_zmtp::Result<String> {
        each_pub!(self, s => s.bind(ep).await)
    }
    fn connect(&self, ep: &str) -> sf_zmtp::Result<()> {
        each_pub!(self, s => s.connect(ep))
    }
    async fn wait_for_peers(&self, n: usize) {
        each_pub!(self, s => s.wait_for_peers(n).await)
    }
    fn peer_count(&self) -> usize {
        each_pub!(self, s => s.peer_count())
    }
    fn stats(&self) -> SocketStats {
        each_pub!(self, s => s.stats())
    }
    fn monitor(&self) -> mpsc::Receiver<Event> {
        each_pub!(self, s => s.monitor())
    }
}

impl OurPub {
    fn send(&self, frames: &[&[u8]]) {
        each_pub!(self, s => s.send(msg(frames)).unwrap())
    }

    fn xpub(&mut self) -> Option<&mut XPubSocket> {
        match self {
            OurPub::XPub(s) => Some(s),
            OurPub::Pub(_) => None,
        }
    }
}

/// A libzmq SUB subscribes with the option, an XSUB by sending the subscription message.
async fn their_subscribe(p: &mut PyPeer, kind: &str, on: bool, topic: &[u8]) {
    match (kind, on) {
        ("XSUB", _) => p.send(&[&sub_bytes(on, topic)]).await,
        (_, true) => p.subscribe(topic).await,
        (_, false) => p.unsubscribe(topic).await,
    }
}

/// Publishes `[prefix, k]` (k = 0, 1, ...) until `peer` gets one (only a bounded retry can
/// tell when a PUB's subscriber has subscribed); returns the k sent last and the one got.
async fn publish_until(ours: &OurPub, peer: &mut PyPeer, prefix: &str) -> (usize, usize) {
    for k in 0..RETRIES {
        ours.send(&[format!("{prefix}{k}").as_bytes()]);
        if let Some(got) = peer.next_within(RETRY_WAIT).await {
            return (k, number(prefix, &got));
        }
    }
    panic!("nothing published as {prefix}<n> arrived in {RETRIES} tries");
}

async fn our_pub(c: Case, xpub: bool, their: &'static str) {
    let eps = Endpoints::new(c.transport);
    let mut ours = if xpub {
        OurPub::XPub(XPubSocket::new())
    } else {
        OurPub::Pub(PubSocket::new())
    };
    let mut mon = ours.monitor();
    let mut s1 = PyPeer::new(their).await;
    link(c, &eps, &ours, &mut s1).await;
    ready(&ours, 1).await;

    // Subscribe; an XPUB says when the subscription arrived, a PUB cannot.
    their_subscribe(&mut s1, their, true, b"A").await;
    if let Some(x) = ours.xpub() {
        assert_eq!(x.next("0x01 A").await, sub_msg(true, "A"));
        // Passed up once applied: the very first message gets through.
        ours.send(&[b"A-sync-0"]);
        assert_eq!(s1.next("the first message").await, m(&["A-sync-0"]));
    } else {
        publish_until(&ours, &mut s1, "A-sync-").await;
    }

    // Prefix filtering (a libzmq XSUB does not filter: what it gets, we sent) and multipart.
    for i in 0..10 {
        ours.send(&[format!("B{i}").as_bytes()]);
        ours.send(&[format!("A{i}").as_bytes()]);
    }
    ours.send(&[b"A-multi", b"two", b"three"]);
    ours.send(&[b"A-end"]);
    let got = until_skipping(&mut s1, "A-end", "A-sync-").await;
    let mut want = seq("A", 0, 9);
    want.push(m(&["A-multi", "two", "three"]));
    want.push(m(&["A-end"]));
    assert_eq!(got, want, "only topic A, in order, multipart intact");

    // A late joiner, while messages flow to the first subscriber.
    let mut s2 = PyPeer::new(their).await;
    link(c, &eps, &ours, &mut s2).await;
    ready(&ours, 2).await;
    their_subscribe(&mut s2, their, true, b"A").await;
    let (k, first) = if let Some(x) = ours.xpub() {
        // A already has a subscriber: not passed up again. Q is new, and comes after A.
        their_subscribe(&mut s2, their, true, b"Q").await;
        assert_eq!(
            x.next("0x01 Q").await,
            sub_msg(true, "Q"),
            "a topic is passed up only for its first subscriber"
        );
        ours.send(&[b"A-late-0"]);
        assert_eq!(s2.next("the late joiner's first").await, m(&["A-late-0"]));
        (0, 0)
    } else {
        publish_until(&ours, &mut s2, "A-late-").await
    };
    for n in k + 1..=k + 5 {
        ours.send(&[format!("A-late-{n}").as_bytes()]);
    }
    let last = format!("A-late-{}", k + 5);
    assert_eq!(
        s2.until(&last, &[]).await,
        seq("A-late-", first + 1, k + 5),
        "the late joiner gets everything after its first"
    );
    assert_eq!(
        s1.until(&last, &[]).await,
        seq("A-late-", 0, k + 5),
        "the first subscriber misses nothing meanwhile"
    );

    // Unsubscribing stops delivery. M, subscribed after the cancel on the same connection,
    // shows when the cancel has been applied.
    their_subscribe(&mut s1, their, false, b"A").await;
    their_subscribe(&mut s1, their, true, b"M").await;
    if let Some(x) = ours.xpub() {
        assert_eq!(
            x.next("0x01 M").await,
            sub_msg(true, "M"),
            "A still has a subscriber: no cancel passed up"
        );
    } else {
        loop_until_marker(&ours, &mut s1).await;
    }
    ours.send(&[b"A-gone"]);
    ours.send(&[b"M-end"]);
    assert_eq!(
        s1.until("M-end", &["M-mark"]).await,
        vec![m(&["M-end"])],
        "nothing on a cancelled topic"
    );
    assert_eq!(
        s2.until("A-gone", &["A-mark"]).await.last(),
        Some(&m(&["A-gone"])),
        "the other subscriber still gets A"
    );

    if let Some(x) = ours.xpub() {
        if their == "XSUB" {
            // Anything else an XSUB sends upstream reaches the XPUB's reader.
            s1.send(&[b"hello-up", b"2"]).await;
            assert_eq!(x.next("the upstream message").await, m(&["hello-up", "2"]));
        }
        // A subscriber that goes cancels what it had, once nobody else has it.
        s2.close().await;
        let mut cancels = vec![x.next("a cancel").await, x.next("a cancel").await];
        cancels.sort();
        assert_eq!(cancels, vec![sub_msg(false, "A"), sub_msg(false, "Q")]);
        their_subscribe(&mut s1, their, false, b"M").await;
        assert_eq!(x.next("0x00 M").await, sub_msg(false, "M"));
    } else {
        s2.close().await;
    }
    let gone = drop_within(&mut mon, WAIT).await;
    assert!(
        matches!(gone, Some(Event::Disconnected { .. })),
        "the closed subscriber's disconnection is seen: {gone:?}"
    );
    assert_eq!(ours.peer_count(), 1);
    assert_eq!(ours.stats().handshake_failures, 0);
}

/// [`Inbox::until`], dropping any message whose first frame starts with `skip_prefix`.
async fn until_skipping(p: &mut PyPeer, last: &str, skip_prefix: &str) -> Vec<Vec<String>> {
    let mut got = Vec::new();
    loop {
        let one = p.next(&format!("{last:?} (after {got:?})")).await;
        if one[0].starts_with(skip_prefix) {
            continue;
        }
        let done = one[0] == last;
        got.push(one);
        if done {
            return got;
        }
    }
}

/// PUB after a subscriber cancelled A and subscribed M: publishes A and M until M arrives.
/// An A may come before the first M (sent before the cancel was applied), never after.
async fn loop_until_marker(ours: &OurPub, s: &mut PyPeer) {
    for _ in 0..RETRIES {
        ours.send(&[b"A-mark"]);
        ours.send(&[b"M-mark"]);
        while let Some(got) = s.next_within(RETRY_WAIT).await {
            if got[0] == "M-mark" {
                return;
            }
            assert_eq!(got, m(&["A-mark"]), "only A (before the cancel) or M");
        }
    }
    panic!("M never arrived in {RETRIES} tries");
}

/// A libzmq SUB that subscribes to a topic twice sends both subscribes but only the last
/// of its two cancels (it counts its own). Our PUB and XPUB keep a set per peer, as libzmq
/// does, so that one cancel lets the topic go: nothing more of it reaches that subscriber.
async fn our_pub_repeated_subscribe(c: Case, xpub: bool) {
    let eps = Endpoints::new(c.transport);
    let mut ours = if xpub {
        OurPub::XPub(XPubSocket::new())
    } else {
        OurPub::Pub(PubSocket::new())
    };
    let mut s1 = PyPeer::new("SUB").await;
    link(c, &eps, &ours, &mut s1).await;
    ready(&ours, 1).await;
    s1.subscribe(b"A").await;
    s1.subscribe(b"A").await;
    if let Some(x) = ours.xpub() {
        assert_eq!(x.next("0x01 A").await, sub_msg(true, "A"));
    }
    publish_until(&ours, &mut s1, "A-sync-").await;
    s1.unsubscribe(b"A").await;
    s1.unsubscribe(b"A").await;
    s1.subscribe(b"M").await;
    if let Some(x) = ours.xpub() {
        // Not passed up again: the same peer's repeat changes nothing.
        assert_eq!(x.next("0x00 A").await, sub_msg(false, "A"));
        assert_eq!(x.next("0x01 M").await, sub_msg(true, "M"));
    } else {
        loop_until_marker(&ours, &mut s1).await;
    }
    ours.send(&[b"A-gone"]);
    ours.send(&[b"M-end"]);
    assert_eq!(
        s1.until("M-end", &["M-mark", "A-sync-"]).await,
        vec![m(&["M-end"])],
        "A was let go after the one cancel libzmq sends"
    );
}

/// A verbose XPUB (what the bus proxy runs) passes every subscriber's subscribe up, and
/// every one's cancel when it goes, so the counts above it stay balanced.
async fn verbose_xpub_with_two_libzmq_subs(c: Case) {
    let eps = Endpoints::new(c.transport);
    let mut ours = OurPub::XPub(XPubSocket::with_options(
        SocketOptions::default().xpub_verbose(true),
    ));
    let mut s1 = PyPeer::new("SUB").await;
    link(c, &eps, &ours, &mut s1).await;
    let mut s2 = PyPeer::new("SUB").await;
    link(c, &eps, &ours, &mut s2).await;
    ready(&ours, 2).await;
    let x = ours.xpub().expect("an XPUB");
    s1.subscribe(b"A").await;
    assert_eq!(x.next("the first 0x01 A").await, sub_msg(true, "A"));
    s2.subscribe(b"A").await;
    assert_eq!(
        x.next("the second 0x01 A").await,
        sub_msg(true, "A"),
        "verbose: the second subscriber is announced too"
    );
    s1.close().await;
    assert_eq!(x.next("the first 0x00 A").await, sub_msg(false, "A"));
    s2.close().await;
    assert_eq!(x.next("the second 0x00 A").await, sub_msg(false, "A"));
}

// ------------------------------------------------------------------------------------------
// libzmq PUB and XPUB with our SUB and XSUB.

enum OurSub {
    Sub(SubSocket),
    XSub(XSubSocket),
}

macro_rules! each_sub {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            OurSub::Sub($s) => $e,
            OurSub::XSub($s) => $e,
        }
    };
}

impl Ours for OurSub {
    async fn bind(&self, ep: &str) -> sf_zmtp::Result<String> {
        each_sub!(self, s => s.bind(ep).await)
    }
    fn connect(&self, ep: &str) -> sf_zmtp::Result<()> {
        each_sub!(self, s => s.connect(ep))
    }
    async fn wait_for_peers(&self, n: usize) {
        each_sub!(self, s => s.wait_for_peers(n).await)
    }
    fn peer_count(&self) -> usize {
        each_sub!(self, s => s.peer_count())
    }
    fn stats(&self) -> SocketStats {
        each_sub!(self, s => s.stats())
    }
    fn monitor(&self) -> mpsc::Receiver<Event> {
        each_sub!(self, s => s.monitor())
    }
}

impl Inbox for OurSub {
    async fn next_within(&mut self, d: Duration) -> Option<Vec<String>> {
        let got = each_sub!(self, s => timeout(d, s.recv()).await.ok()?);
        Some(txt(got.expect("our socket is open").frames()))
    }
}

impl OurSub {
    /// SUB by the call, XSUB by sending the subscription message.
    async fn subscribe(&self, on: bool, topic: &[u8]) {
        match (self, on) {
            (OurSub::Sub(s), true) => s.subscribe(topic).await,
            (OurSub::Sub(s), false) => s.unsubscribe(topic).await,
            (OurSub::XSub(s), _) => within("XSUB send", s.send(msg(&[&sub_bytes(on, topic)])))
                .await
                .unwrap(),
        }
    }

    async fn close(self) {
        each_sub!(self, s => s.close().await)
    }
}

/// libzmq publishes `[prefix, k]` until we get one; returns the k sent last and the one got.
async fn their_publish_until(p: &mut PyPeer, ours: &mut OurSub, prefix: &str) -> (usize, usize) {
    for k in 0..RETRIES {
        p.send(&[b"B-noise"]).await;
        p.send(&[format!("{prefix}{k}").as_bytes()]).await;
        if let Some(got) = ours.next_within(RETRY_WAIT).await {
            return (k, number(prefix, &got));
        }
    }
    panic!("nothing published as {prefix}<n> arrived in {RETRIES} tries");
}

async fn their_pub(c: Case, their: &'static str, xsub: bool) {
    let eps = Endpoints::new(c.transport);
    let xpub = their == "XPUB";
    let mut ours = if xsub {
        OurSub::XSub(XSubSocket::new())
    } else {
        OurSub::Sub(SubSocket::new())
    };
    let mut p = PyPeer::new(their).await;
    p.monitor().await;
    link(c, &eps, &ours, &mut p).await;
    ready(&ours, 1).await;

    ours.subscribe(true, b"A").await;
    if xpub {
        assert_eq!(p.next("0x01 A at libzmq's XPUB").await, sub_msg(true, "A"));
        p.send(&[b"A-sync-0"]).await;
        assert_eq!(ours.next("the first message").await, m(&["A-sync-0"]));
    } else {
        their_publish_until(&mut p, &mut ours, "A-sync-").await;
    }

    for i in 0..10 {
        p.send(&[format!("B{i}").as_bytes()]).await;
        p.send(&[format!("A{i}").as_bytes()]).await;
    }
    p.send(&[b"A-multi", b"two", b"three"]).await;
    p.send(&[b"A-end"]).await;
    let mut got = Vec::new();
    loop {
        let one = ours.next("A-end").await;
        if one[0].starts_with("A-sync-") {
            continue;
        }
        let done = one[0] == "A-end";
        got.push(one);
        if done {
            break;
        }
    }
    let mut want = seq("A", 0, 9);
    want.push(m(&["A-multi", "two", "three"]));
    want.push(m(&["A-end"]));
    assert_eq!(got, want, "only topic A, in order, multipart intact");

    // A late subscription, while A flows.
    ours.subscribe(true, b"L").await;
    let (k, first) = if xpub {
        assert_eq!(p.next("0x01 L").await, sub_msg(true, "L"));
        p.send(&[b"L-0"]).await;
        assert_eq!(ours.next("L-0").await, m(&["L-0"]));
        (0, 0)
    } else {
        their_publish_until(&mut p, &mut ours, "L-").await
    };
    for n in k + 1..=k + 5 {
        p.send(&[b"A-between"]).await;
        p.send(&[format!("L-{n}").as_bytes()]).await;
    }
    assert_eq!(
        ours.until(&format!("L-{}", k + 5), &["A-between"]).await,
        seq("L-", first + 1, k + 5),
        "everything on the late topic after its first"
    );

    // Unsubscribing stops delivery.
    ours.subscribe(false, b"A").await;
    if xpub {
        assert_eq!(p.next("0x00 A at libzmq's XPUB").await, sub_msg(false, "A"));
    }
    p.send(&[b"A-gone"]).await;
    p.send(&[b"L-end"]).await;
    assert_eq!(
        ours.until("L-end", &[]).await,
        vec![m(&["L-end"])],
        "nothing on a cancelled topic"
    );

    if xpub {
        if let OurSub::XSub(s) = &ours {
            // Anything else an XSUB sends goes upstream.
            within("XSUB send", s.send(msg(&[b"hello-up", b"2"])))
                .await
                .unwrap();
            assert_eq!(p.next("the upstream message").await, m(&["hello-up", "2"]));
        }
        ours.close().await;
        match c.binder {
            // A subscriber that goes: libzmq cancels what it had.
            Binder::Theirs => {
                assert_eq!(p.next("0x00 L after we closed").await, sub_msg(false, "L"))
            }
            // libzmq's connecting side keeps the pipe, and what was subscribed through it,
            // across reconnects (as between two libzmq sockets): it sees the disconnection.
            Binder::Ours => assert!(
                p.wait_event("disconnected", 1, 5000).await,
                "libzmq sees us go: {}",
                p.events().await
            ),
        }
    } else {
        assert_eq!(ours.stats().handshake_failures, 0);
        assert_eq!(ours.stats().disconnects, 0);
    }
}

// ------------------------------------------------------------------------------------------
// PUSH and PULL.

async fn push_to_their_pull(c: Case) {
    const N: usize = 2000;
    let eps = Endpoints::new(c.transport);
    let push = PushSocket::new();
    let mut pull = PyPeer::new("PULL").await;
    link(c, &eps, &push, &mut pull).await;
    ready(&push, 1).await;
    let send = async {
        for i in 0..N {
            within("push", push.send(msg(&[format!("m{i}").as_bytes()])))
                .await
                .unwrap();
        }
    };
    let ((), got) = tokio::join!(send, pull.recv_n(N, 5000));
    let got: Vec<Vec<String>> = got.iter().map(|f| txt(f)).collect();
    assert_eq!(got.len(), N, "none lost");
    assert!(got == seq("m", 0, N - 1), "in order");
}

async fn push_round_robin(c: Case) {
    let eps = Endpoints::new(c.transport);
    let push = PushSocket::new();
    let mut pulls = [PyPeer::new("PULL").await, PyPeer::new("PULL").await];
    for p in pulls.iter_mut() {
        link(c, &eps, &push, p).await;
    }
    ready(&push, 2).await;
    for i in 0..100 {
        within("push", push.send(msg(&[format!("rr{i}").as_bytes()])))
            .await
            .unwrap();
    }
    let mut parities = Vec::new();
    for p in pulls.iter_mut() {
        let got = p.recv_n(50, 5000).await;
        assert_eq!(got.len(), 50, "half each");
        let nums: Vec<usize> = got.iter().map(|f| number("rr", &txt(f))).collect();
        let parity = nums[0] % 2;
        let want: Vec<usize> = (0..50).map(|j| 2 * j + parity).collect();
        assert_eq!(nums, want, "strict alternation, in order");
        parities.push(parity);
    }
    parities.sort();
    assert_eq!(parities, [0, 1]);
}

async fn their_push_to_pull(c: Case) {
    const N: usize = 1000;
    let eps = Endpoints::new(c.transport);
    let mut pull = PullSocket::new();
    let mut p1 = PyPeer::new("PUSH").await;
    let mut p2 = PyPeer::new("PUSH").await;
    link(c, &eps, &pull, &mut p1).await;
    link(c, &eps, &pull, &mut p2).await;
    ready(&pull, 2).await;
    let recv = async {
        let mut got = Vec::with_capacity(2 * N);
        for _ in 0..2 * N {
            got.push(pull.next("a pushed message").await);
        }
        got
    };
    let ((), (), got) = tokio::join!(p1.send_seq(b"x", N), p2.send_seq(b"y", N), recv);
    for prefix in ["x", "y"] {
        let mine: Vec<usize> = got
            .iter()
            .filter(|f| f[0].starts_with(prefix))
            .map(|f| number(prefix, f))
            .collect();
        assert!(
            mine == (0..N).collect::<Vec<_>>(),
            "pusher {prefix}: all {N}, in order (got {})",
            mine.len()
        );
    }
    assert!(
        pull.next_within(Duration::from_millis(100)).await.is_none(),
        "nothing extra"
    );
}

// ------------------------------------------------------------------------------------------
// Heartbeats: PINGs answered both ways.

fn fast_heartbeat() -> SocketOptions {
    SocketOptions::default().heartbeat(Some(Heartbeat {
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(300),
        ttl: Duration::from_millis(300),
    }))
}

/// How long the connection must stay up without application traffic.
const QUIET: Duration = Duration::from_millis(1500);

/// After [`QUIET`] without traffic, our side has dropped nothing.
async fn stayed_up(ours: &impl Ours, mon: &mut mpsc::Receiver<Event>) {
    let dropped = drop_within(mon, QUIET).await;
    assert!(dropped.is_none(), "connection dropped: {dropped:?}");
    let st = ours.stats();
    assert_eq!(st.heartbeat_timeouts, 0, "{st:?}");
    assert_eq!(st.disconnects, 0, "{st:?}");
    assert_eq!(st.handshakes, 1, "{st:?}");
    assert_eq!(ours.peer_count(), 1);
}

/// libzmq's side saw one handshake and no disconnection.
async fn they_stayed_up(p: &mut PyPeer) {
    let ev = p.events().await;
    assert_eq!(ev["disconnected"], 0, "libzmq events: {ev}");
    assert_eq!(ev["handshake_ok"], 1, "libzmq events: {ev}");
}

/// Our DEALER pings a libzmq ROUTER (libzmq's own heartbeats off): libzmq must answer.
async fn our_ping_dealer(c: Case) {
    let eps = Endpoints::new(c.transport);
    let mut d = DealerSocket::with_options(fast_heartbeat().identity(&b"hb"[..]));
    let mut mon = d.monitor();
    let mut r = PyPeer::new("ROUTER").await;
    r.monitor().await;
    link(c, &eps, &d, &mut r).await;
    ready(&d, 1).await;
    stayed_up(&d, &mut mon).await;
    within("send", d.send(msg(&[b"after"]))).await.unwrap();
    assert_eq!(r.next("the message after").await, m(&["hb", "after"]));
    r.send(&[b"hb", b"back"]).await;
    assert_eq!(d.next("the reply").await, m(&["back"]));
    they_stayed_up(&mut r).await;
}

/// Our SUB pings a libzmq PUB: nothing but PING and PONG crosses for 1.5 s.
async fn our_ping_sub(c: Case) {
    let eps = Endpoints::new(c.transport);
    let s = SubSocket::with_options(fast_heartbeat());
    let mut mon = s.monitor();
    s.subscribe(b"T").await;
    let mut ours = OurSub::Sub(s);
    let mut p = PyPeer::new("PUB").await;
    p.monitor().await;
    link(c, &eps, &ours, &mut p).await;
    ready(&ours, 1).await;
    stayed_up(&ours, &mut mon).await;
    their_publish_until(&mut p, &mut ours, "T").await;
    they_stayed_up(&mut p).await;
}

fn libzmq_heartbeat() -> [(&'static str, i64); 3] {
    [
        ("HEARTBEAT_IVL", 50),
        ("HEARTBEAT_TIMEOUT", 300),
        ("HEARTBEAT_TTL", 500),
    ]
}

/// A libzmq DEALER pings our ROUTER (our heartbeats off): only our PONGs keep it up.
async fn their_ping_dealer(c: Case) {
    let eps = Endpoints::new(c.transport);
    let mut router = RouterSocket::with_options(SocketOptions::default().heartbeat(None));
    let mut mon = router.monitor();
    let mut d = PyPeer::new("DEALER").await;
    for (name, v) in libzmq_heartbeat() {
        d.opt(name, v).await;
    }
    d.opt_bytes("ROUTING_ID", b"hb").await;
    d.monitor().await;
    link(c, &eps, &router, &mut d).await;
    ready(&router, 1).await;
    stayed_up(&router, &mut mon).await;
    they_stayed_up(&mut d).await;
    d.send(&[b"still"]).await;
    assert_eq!(router.next("the message after").await, m(&["hb", "still"]));
    router.send(msg(&[b"hb", b"here"])).unwrap();
    assert_eq!(d.next("the reply").await, m(&["here"]));
}

/// A libzmq SUB pings our PUB (our heartbeats off).
async fn their_ping_sub(c: Case) {
    let eps = Endpoints::new(c.transport);
    let ours = OurPub::Pub(PubSocket::with_options(
        SocketOptions::default().heartbeat(None),
    ));
    let mut mon = ours.monitor();
    let mut s = PyPeer::new("SUB").await;
    for (name, v) in libzmq_heartbeat() {
        s.opt(name, v).await;
    }
    s.subscribe(b"T").await;
    s.monitor().await;
    link(c, &eps, &ours, &mut s).await;
    ready(&ours, 1).await;
    stayed_up(&ours, &mut mon).await;
    they_stayed_up(&mut s).await;
    publish_until(&ours, &mut s, "T").await;
}

// ------------------------------------------------------------------------------------------
// Socket-type mismatch: refused by both sides, nothing flows.

/// Links `ours` to a libzmq `their` socket that cannot talk to it, and checks the refusal.
async fn refused(c: Case, eps: &Endpoints, ours: &impl Ours, their: &str) -> PyPeer {
    let mut mon = ours.monitor();
    let mut p = PyPeer::new(their).await;
    p.monitor().await;
    if their == "SUB" {
        p.subscribe(b"").await;
    }
    link(c, eps, ours, &mut p).await;
    let ev = drop_within(&mut mon, WAIT).await;
    assert!(
        matches!(ev, Some(Event::HandshakeFailed { .. })),
        "the handshake fails: {ev:?}"
    );
    let st = ours.stats();
    assert!(st.handshake_failures >= 1, "{st:?}");
    assert_eq!(st.handshakes, 0, "{st:?}");
    assert_eq!(ours.peer_count(), 0);
    let ev = p.events().await;
    assert_eq!(ev["handshake_ok"], 0, "libzmq refuses too: {ev}");
    p
}

async fn mismatch_push_sub(c: Case) {
    let eps = Endpoints::new(c.transport);
    let push = PushSocket::new();
    let mut p = refused(c, &eps, &push, "SUB").await;
    assert!(
        timeout(Duration::from_millis(300), push.send(msg(&[b"lost"])))
            .await
            .is_err(),
        "a PUSH with no peer waits"
    );
    assert!(p.next_within(Duration::from_millis(100)).await.is_none());
}

async fn mismatch_pull_pub(c: Case) {
    let eps = Endpoints::new(c.transport);
    let mut pull = PullSocket::new();
    let mut p = refused(c, &eps, &pull, "PUB").await;
    for _ in 0..5 {
        p.send(&[b"lost"]).await;
    }
    assert!(pull.next_within(Duration::from_millis(300)).await.is_none());
    assert_eq!(pull.peer_count(), 0);
}

async fn mismatch_dealer_sub(c: Case) {
    let eps = Endpoints::new(c.transport);
    let mut dealer = DealerSocket::new();
    let mut p = refused(c, &eps, &dealer, "SUB").await;
    // Were it accepted, the SUB's subscription would arrive as a message.
    assert!(dealer
        .next_within(Duration::from_millis(300))
        .await
        .is_none());
    assert!(
        timeout(Duration::from_millis(100), dealer.send(msg(&[b"lost"])))
            .await
            .is_err(),
        "a DEALER with no peer waits"
    );
    assert!(p.next_within(Duration::from_millis(100)).await.is_none());
}

// ------------------------------------------------------------------------------------------

scenarios! {
    router_with_libzmq_req => router_with_req;
    router_with_libzmq_dealer => router_with_dealer;
    dealer_with_libzmq_rep => dealer_with_rep;
    dealer_with_libzmq_router => dealer_with_router;

    pub_with_libzmq_sub => |c| our_pub(c, false, "SUB");
    pub_with_libzmq_xsub => |c| our_pub(c, false, "XSUB");
    xpub_with_libzmq_sub => |c| our_pub(c, true, "SUB");
    xpub_with_libzmq_xsub => |c| our_pub(c, true, "XSUB");
    pub_lets_go_of_a_libzmq_sub_that_subscribed_twice => |c| our_pub_repeated_subscribe(c, false);
    xpub_lets_go_of_a_libzmq_sub_that_subscribed_twice => |c| our_pub_repeated_subscribe(c, true);
    verbose_xpub_announces_every_libzmq_sub => verbose_xpub_with_two_libzmq_subs;

    sub_with_libzmq_pub => |c| their_pub(c, "PUB", false);
    xsub_with_libzmq_pub => |c| their_pub(c, "PUB", true);
    sub_with_libzmq_xpub => |c| their_pub(c, "XPUB", false);
    xsub_with_libzmq_xpub => |c| their_pub(c, "XPUB", true);

    push_with_libzmq_pull => push_to_their_pull;
    push_round_robin_over_two_libzmq_pulls => push_round_robin;
    pull_with_two_libzmq_pushes => their_push_to_pull;

    heartbeat_dealer_pings_libzmq_router => our_ping_dealer;
    heartbeat_sub_pings_libzmq_pub => our_ping_sub;
    heartbeat_libzmq_dealer_pings_router => their_ping_dealer;
    heartbeat_libzmq_sub_pings_pub => their_ping_sub;

    mismatch_push_vs_libzmq_sub => mismatch_push_sub;
    mismatch_pull_vs_libzmq_pub => mismatch_pull_pub;
    mismatch_dealer_vs_libzmq_sub => mismatch_dealer_sub;
}
