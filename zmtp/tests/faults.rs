//! Limits and faults, against real sockets on 127.0.0.1 (and one partition between two network
//! namespaces): hostile frame headers, stalled handshakes, a subscriber that never reads, a
//! frozen libzmq peer, a network partition, descriptor exhaustion, the connection limit and
//! silent peers. Most are defects of the `zeromq` 0.7 crate this transport replaces
//! (/work/shared/reference/zeromq-crate-0.7.md); each test asserts what it measured and
//! prints it (`cargo test -p sf-zmtp --test faults -- --nocapture`).
//!
//! Some tests run parts of themselves in child processes: this test binary again, selected by
//! `--exact <test>` with the part in `SF_FAULTS_ROLE`. A child reports on stdout in lines that
//! start with `@@ `, which the parent reads as they come; it exits when its stdin closes.

mod support;

use std::ffi::OsString;
use std::future::Future;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use sf_zmtp::{
    DealerSocket, Event, Heartbeat, Message, PubSocket, RouterSocket, SocketOptions, SocketStats,
    SubSocket, XPubSocket,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, Instant};

use support::raw::{self, NoFrame, RawPeer, COMMAND};
use support::PyPeer;

const LOCAL: &str = "tcp://127.0.0.1:0";
/// How long anything that should happen at once may take on a loaded machine.
const SOON: Duration = Duration::from_secs(5);
/// Selects a child process's part.
const ROLE: &str = "SF_FAULTS_ROLE";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Heartbeats every `interval_ms`, a peer silent for `timeout_ms` dropped, `ttl_ms` announced.
fn heartbeat(interval_ms: u64, timeout_ms: u64, ttl_ms: u64) -> Option<Heartbeat> {
    Some(Heartbeat {
        interval: ms(interval_ms),
        timeout: ms(timeout_ms),
        ttl: ms(ttl_ms),
    })
}

/// The heartbeats of the dead-peer tests: PING every 100 ms, dropped after 500 ms of silence.
fn fast_heartbeat() -> SocketOptions {
    SocketOptions::default().heartbeat(heartbeat(100, 500, 500))
}

/// `f`'s output, or a panic saying `what` did not happen within `limit`.
async fn within<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

/// The first event `pick` takes, within `limit` (the others are skipped).
async fn event<T>(
    mon: &mut mpsc::Receiver<Event>,
    limit: Duration,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    within(limit, what, async {
        loop {
            let ev = mon.recv().await.expect("the monitor is open");
            if let Some(t) = pick(&ev) {
                return t;
            }
        }
    })
    .await
}

fn accepted(ev: &Event) -> Option<()> {
    matches!(ev, Event::Accepted { .. }).then_some(())
}

fn connected(ev: &Event) -> Option<()> {
    matches!(ev, Event::Connected { .. }).then_some(())
}

fn disconnected(ev: &Event) -> Option<String> {
    match ev {
        Event::Disconnected { reason, .. } => Some(reason.clone()),
        _ => None,
    }
}

fn dealer_to(ep: &str) -> DealerSocket {
    let d = DealerSocket::new();
    d.connect(ep).expect("connect");
    d
}

/// One request from `dealer`, echoed by `router`, checked both ways.
async fn round_trip(router: &mut RouterSocket, dealer: &mut DealerSocket, body: &'static [u8]) {
    let body = Bytes::from_static(body);
    within(SOON, "the DEALER sends", dealer.send(body.clone()))
        .await
        .expect("send");
    let req = within(SOON, "the ROUTER gets the request", router.recv())
        .await
        .expect("recv");
    assert_eq!(req.frames()[1..], *std::slice::from_ref(&body), "request");
    router.send(req).expect("the reply is routed");
    let rep = within(SOON, "the DEALER gets the reply", dealer.recv())
        .await
        .expect("recv");
    assert_eq!(rep.frames(), [body], "reply");
}

// ---------------------------------------------------------------------------------------------
// Child processes.

/// This process's part when it is a child of a test; `None` in the test run itself.
fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// A child report line.
fn say(line: impl std::fmt::Display) {
    println!("@@ {line}");
}

/// Resolves when the parent is gone (our stdin closed).
async fn parent_gone() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut b = [0u8; 64];
        while matches!(std::io::stdin().read(&mut b), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    let _ = rx.await;
}

/// A part of a test in a child process: this test binary, `--exact test`, `SF_FAULTS_ROLE` set
/// to `role`, run behind `prefix` (`ip netns exec NS`, `prlimit ...`). Killed when dropped.
struct Part {
    name: String,
    child: tokio::process::Child,
    /// `@@ ` lines, each with when it arrived.
    lines: mpsc::UnboundedReceiver<(Instant, String)>,
}

impl Part {
    fn spawn(prefix: &[&str], test: &str, role: &str, env: &[(&str, &str)]) -> Part {
        let exe = std::env::current_exe().expect("the test binary");
        let mut argv: Vec<OsString> = prefix.iter().map(OsString::from).collect();
        argv.push(exe.into());
        argv.extend(["--exact", test, "--nocapture", "--test-threads", "1"].map(OsString::from));
        let mut child = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env(ROLE, role)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {argv:?}: {e}"));
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut out = BufReader::new(out).lines();
            while let Ok(Some(l)) = out.next_line().await {
                // The harness's own `test <name> ... ` may come first on the line.
                if let Some(at) = l.find("@@ ") {
                    if tx.send((Instant::now(), l[at + 3..].to_owned())).is_err() {
                        return;
                    }
                }
            }
        });
        Part {
            name: role.to_owned(),
            child,
            lines,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("the child is running")
    }

    /// The next line whose first word is `word`, and when it arrived (earlier lines skipped).
    async fn expect(&mut self, word: &str, limit: Duration) -> (Instant, String) {
        let what = format!("the {} child reports `{word}`", self.name);
        let lines = &mut self.lines;
        within(limit, &what.clone(), async move {
            loop {
                let (at, l) = lines
                    .recv()
                    .await
                    .unwrap_or_else(|| panic!("{what}: the child exited"));
                if l.split_whitespace().next() == Some(word) {
                    return (at, l);
                }
            }
        })
        .await
    }

    /// The newest `word` line that has arrived, or the next one.
    async fn latest(&mut self, word: &str, limit: Duration) -> String {
        let mut newest = None;
        while let Ok((_, l)) = self.lines.try_recv() {
            if l.split_whitespace().next() == Some(word) {
                newest = Some(l);
            }
        }
        match newest {
            Some(l) => l,
            None => self.expect(word, limit).await.1,
        }
    }
}

/// Runs `test` again in a process of its own, so that what it measures of its process is not
/// disturbed by the tests running beside it. True in the test run, once the child passed (its
/// report lines are printed); false in the child, which then runs the test's body.
async fn alone(test: &str) -> bool {
    if role().as_deref() == Some("alone") {
        return false;
    }
    let mut part = Part::spawn(&[], test, "alone", &[]);
    let status = within(Duration::from_secs(120), test, part.child.wait())
        .await
        .expect("wait for the child");
    while let Some((_, l)) = part.lines.recv().await {
        println!("{test}: {l}");
    }
    assert!(
        status.success(),
        "{test} failed in its own process: {status}"
    );
    true
}

/// `key=value` in a report line.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

fn report(ev: &Event) {
    match ev {
        Event::Accepted { .. } => say("accepted"),
        Event::Connected { .. } => say("connected"),
        Event::Disconnected { reason, .. } => say(format!("disconnected {reason}")),
        Event::HandshakeFailed { reason, .. } => say(format!("handshake-failed {reason}")),
        _ => {}
    }
}

fn stats_line(s: &SocketStats) -> String {
    format!(
        "stats accept_backoffs={} handshakes={} handshake_failures={} heartbeat_timeouts={}",
        s.accept_backoffs, s.handshakes, s.handshake_failures, s.heartbeat_timeouts
    )
}

/// A child's ROUTER: binds `SF_FAULTS_BIND`, echoes every request, and reports `listening
/// <endpoint>`, its connection events and, every 100 ms, its stats.
async fn echo_server(options: SocketOptions) {
    let mut router = RouterSocket::with_options(options);
    let mut mon = router.monitor();
    let bind = std::env::var("SF_FAULTS_BIND").expect("SF_FAULTS_BIND");
    let ep = router.bind(&bind).await.expect("bind");
    say(format!("listening {ep}"));
    let mut tick = tokio::time::interval(ms(100));
    let gone = parent_gone();
    tokio::pin!(gone);
    loop {
        tokio::select! {
            _ = &mut gone => return,
            m = router.recv() => {
                // A reply to a peer that has gone is no matter here.
                let _ = router.send(m.expect("recv"));
            }
            Some(ev) = mon.recv() => report(&ev),
            _ = tick.tick() => say(stats_line(&router.stats())),
        }
    }
}

/// A child's DEALER: connects to `SF_FAULTS_CONNECT`, sends `0`, `1`, ... every 50 ms, and
/// reports `reply <n>` and its connection events.
async fn echo_client(options: SocketOptions) {
    let dealer = DealerSocket::with_options(options);
    let mut mon = dealer.monitor();
    let ep = std::env::var("SF_FAULTS_CONNECT").expect("SF_FAULTS_CONNECT");
    dealer.connect(&ep).expect("connect");
    let (tx, mut rx) = dealer.split();
    let sender = tokio::spawn(async move {
        for n in 0u64.. {
            if tx.send(n.to_string().into_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(ms(50)).await;
        }
    });
    let gone = parent_gone();
    tokio::pin!(gone);
    loop {
        tokio::select! {
            _ = &mut gone => break,
            m = rx.recv() => {
                let m = m.expect("recv");
                say(format!("reply {}", String::from_utf8_lossy(&m.frames()[0])));
            }
            Some(ev) = mon.recv() => report(&ev),
        }
    }
    sender.abort();
}

// ---------------------------------------------------------------------------------------------
// 1. Frame headers that declare more than anyone should buffer.

/// zeromq 0.7 reserved what the header declared and aborted the process (defect 1).
#[tokio::test]
async fn a_2_pow_40_frame_header_drops_only_that_peer() {
    let mut router = RouterSocket::new();
    let ep = router.bind(LOCAL).await.expect("bind");
    let mut mon = router.monitor();
    let mut good = dealer_to(&ep);
    round_trip(&mut router, &mut good, b"before").await;
    event(&mut mon, SOON, "the good DEALER is accepted", accepted).await;

    let mut evil = RawPeer::handshake(&ep, "DEALER").await;
    event(&mut mon, SOON, "the raw DEALER is accepted", accepted).await;
    evil.send(&raw::long_header(0, 1 << 40))
        .await
        .expect("send the header");
    let closed = evil
        .closed_within(SOON)
        .await
        .expect("the ROUTER closes the connection of the 2^40 header");
    let reason = event(&mut mon, SOON, "the raw DEALER is dropped", disconnected).await;
    assert!(reason.contains("1099511627776"), "reason: {reason}");
    assert_eq!(router.stats().limit_violations, 1);

    // Still serving: the DEALER that was there, and a new one.
    round_trip(&mut router, &mut good, b"after").await;
    let mut fresh = dealer_to(&ep);
    round_trip(&mut router, &mut fresh, b"fresh").await;
    assert_eq!(router.peer_count(), 2);
    println!("2^40 header: connection closed {closed:?} after it; {reason}");
}

/// zeromq 0.7 held 533 MiB for a frame declared as 4 GiB with 512 MiB sent (defect 1).
#[tokio::test]
async fn a_4_gib_frame_header_is_refused_before_its_body() {
    const LIMIT: usize = 1 << 20;
    const BODY_SENT: usize = 8 << 20;
    let router = RouterSocket::with_options(SocketOptions::default().max_message_bytes(LIMIT));
    let ep = router.bind(LOCAL).await.expect("bind");
    let mut mon = router.monitor();
    let header = raw::long_header(0, 4 << 30);

    // The header alone, not one octet of body: refused on it.
    let mut a = RawPeer::handshake(&ep, "DEALER").await;
    a.send(&header).await.expect("send the header");
    let closed = a
        .closed_within(SOON)
        .await
        .expect("the ROUTER closes on the 4 GiB header alone");
    let reason = event(
        &mut mon,
        SOON,
        "the first raw DEALER is dropped",
        disconnected,
    )
    .await;
    assert!(
        reason.contains("4294967296") && reason.contains(&LIMIT.to_string()),
        "reason: {reason}"
    );
    assert_eq!(router.stats().limit_violations, 1);

    // The header with MiBs behind it: the connection goes while they are being written.
    let mut b = RawPeer::handshake(&ep, "DEALER").await;
    b.send(&header).await.expect("send the header");
    let chunk = vec![0x5a; 64 << 10];
    let mut written = 0;
    let refused = within(SOON, "the ROUTER refuses the body", async {
        while written < BODY_SENT {
            if b.send(&chunk).await.is_err() {
                return true;
            }
            written += chunk.len();
        }
        false
    })
    .await;
    assert!(
        refused,
        "all {BODY_SENT} octets of the body were taken: the connection stayed open"
    );
    let reason = event(
        &mut mon,
        SOON,
        "the second raw DEALER is dropped",
        disconnected,
    )
    .await;
    assert!(reason.contains("4294967296"), "reason: {reason}");
    assert_eq!(router.stats().limit_violations, 2);
    assert_eq!(router.peer_count(), 0);
    println!(
        "4 GiB header, 1 MiB limit: closed {closed:?} after the header alone; with a body, \
         the write failed after {} KiB of {} KiB",
        written >> 10,
        BODY_SENT >> 10
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Handshakes that never finish (zeromq 0.7 held them forever, defect 4).

#[tokio::test]
async fn stalled_handshakes_are_closed_at_the_deadline() {
    const STALLED: usize = 200;
    let mut router =
        RouterSocket::with_options(SocketOptions::default().handshake_timeout(ms(300)));
    let ep = router.bind(LOCAL).await.expect("bind");
    let start = Instant::now();
    let mut stalled = Vec::with_capacity(STALLED);
    for _ in 0..STALLED {
        let mut p = RawPeer::connect(&ep).await;
        p.send(&raw::greeting()[..32])
            .await
            .expect("half a greeting");
        stalled.push(p);
    }
    let opened = start.elapsed();

    // Meanwhile a proper client is served.
    let mut good = dealer_to(&ep);
    round_trip(&mut router, &mut good, b"served").await;
    let served = start.elapsed();

    let closes =
        futures::future::join_all(stalled.iter_mut().map(|p| p.closed_within(ms(3000)))).await;
    let open = closes.iter().filter(|c| c.is_none()).count();
    assert_eq!(
        open, 0,
        "{open} of {STALLED} stalled handshakes still open after 3 s"
    );
    let all_closed = start.elapsed();
    assert!(
        support::eventually(SOON, || router.stats().handshake_failures == STALLED as u64).await,
        "handshake failures counted: {} of {STALLED}",
        router.stats().handshake_failures
    );
    assert_eq!(router.peer_count(), 1);
    round_trip(&mut router, &mut good, b"still").await;
    println!(
        "{STALLED} half greetings: opened in {opened:?}, a DEALER served at {served:?}, all \
         closed by {all_closed:?} (deadline 300 ms)"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. A subscriber that never reads (zeromq 0.7: unbounded memory, defect 2; every other
//    subscriber of an XPUB stopped, defect 3).

const PUBLISHED: u64 = 200_000;
const SIZE: usize = 1024;
const HWM: usize = 1000;
/// The test's own flow control: the publisher stays at most this far ahead of the reader (as
/// a loss-free stream must; PUB itself never waits). Below the HWM, the reader loses nothing.
const WINDOW: u64 = 500;
/// The bound on the publisher's growth: the stalled peer's queue (HWM x SIZE, 1 MiB), the
/// reader's own queues, write buffers and allocator slack. Unbounded queuing takes ~200 MiB.
const RSS_GROWTH_MAX: u64 = 64 << 20;

enum Publisher {
    Pub(PubSocket),
    XPub(XPubSocket),
}

impl Publisher {
    fn send(&self, m: Message) {
        match self {
            Publisher::Pub(p) => p.send(m),
            Publisher::XPub(p) => p.send(m),
        }
        .expect("publish")
    }

    fn stats(&self) -> SocketStats {
        match self {
            Publisher::Pub(p) => p.stats(),
            Publisher::XPub(p) => p.stats(),
        }
    }

    fn peer_count(&self) -> usize {
        match self {
            Publisher::Pub(p) => p.peer_count(),
            Publisher::XPub(p) => p.peer_count(),
        }
    }

    async fn wait_for_peers(&self, n: usize) {
        match self {
            Publisher::Pub(p) => p.wait_for_peers(n).await,
            Publisher::XPub(p) => p.wait_for_peers(n).await,
        }
    }
}

/// This process's resident set (VmRSS, the counter statm reports in pages), in octets.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kib << 10
}

async fn slow_subscriber(xpub: bool) {
    let kind = if xpub { "XPUB" } else { "PUB" };
    // No heartbeats: the stalled peer must stay connected for the whole run.
    let options = SocketOptions::default().send_hwm(HWM).heartbeat(None);
    let mut publisher = if xpub {
        Publisher::XPub(XPubSocket::with_options(options))
    } else {
        Publisher::Pub(PubSocket::with_options(options))
    };
    let ep = match &publisher {
        Publisher::Pub(p) => p.bind(LOCAL).await,
        Publisher::XPub(p) => p.bind(LOCAL).await,
    }
    .expect("bind");

    // The stalled subscriber: subscribes to everything (a 3.1 command to the PUB, a 3.0
    // message to the XPUB), reads one message to show it is subscribed, then never reads.
    let mut stalled = RawPeer::handshake(&ep, "SUB").await;
    let subscription = if xpub {
        raw::frame(0, &[1])
    } else {
        raw::command("SUBSCRIBE", b"")
    };
    stalled.send(&subscription).await.expect("subscribe");
    let mut sub = SubSocket::new();
    sub.subscribe(b"").await;
    sub.connect(&ep).expect("connect");
    within(
        SOON,
        "both subscribers connect",
        publisher.wait_for_peers(2),
    )
    .await;
    if let Publisher::XPub(x) = &mut publisher {
        let up = within(SOON, "the XPUB reads the subscription", x.recv())
            .await
            .expect("recv");
        assert_eq!(up.frames(), [Bytes::from_static(&[1])]);
    }
    let (mut sub_ready, mut stalled_ready) = (false, false);
    for _ in 0..200 {
        publisher.send(Message::single(Bytes::from_static(b"probe")));
        if !sub_ready {
            sub_ready = timeout(ms(10), sub.recv()).await.is_ok();
        }
        if !stalled_ready {
            stalled_ready = matches!(stalled.next_frame(ms(10)).await, Ok((0, _)));
        }
        if sub_ready && stalled_ready {
            break;
        }
    }
    assert!(sub_ready && stalled_ready, "subscriptions in place");

    // The reader reports (messages received, the next index after the newest seen).
    let (seen_tx, mut seen) = watch::channel((0u64, 0u64));
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while let Ok(m) = sub.recv().await {
            let f = &m.frames()[0];
            if f.len() == SIZE && f[0] == b'd' {
                n += 1;
                let i = u64::from_be_bytes(f[1..9].try_into().expect("index"));
                seen_tx.send_replace((n, i + 1));
            }
        }
    });

    let before = rss();
    let mut peak = before;
    let start = Instant::now();
    for i in 0..PUBLISHED {
        if i - seen.borrow().1 >= WINDOW {
            within(SOON, "the reading subscriber keeps up", async {
                seen.wait_for(|s| i - s.1 < WINDOW / 2)
                    .await
                    .map(|_| ())
                    .expect("the reader is running")
            })
            .await;
        }
        let mut body = vec![0u8; SIZE];
        body[0] = b'd';
        body[1..9].copy_from_slice(&i.to_be_bytes());
        publisher.send(Message::single(body));
        if i % 10_000 == 0 {
            peak = peak.max(rss());
        }
    }
    let _ = timeout(SOON, seen.wait_for(|s| s.0 >= PUBLISHED)).await;
    let took = start.elapsed();
    let received = seen.borrow().0;
    let after = rss();
    peak = peak.max(after);
    // Counted while the reader still holds its socket: once it is aborted its connection
    // closes, and the count would race with that.
    let peers = publisher.peer_count();
    reader.abort();
    let stats = publisher.stats();
    let growth = peak.saturating_sub(before);
    say(format!(
        "{kind}: {PUBLISHED} x {SIZE} B in {took:.2?}: the reader got {received} ({:.2}%), \
         {} dropped for the stalled peer; RSS {} MiB before, peak {} MiB, growth {:.1} MiB",
        received as f64 * 100.0 / PUBLISHED as f64,
        stats.dropped,
        before >> 20,
        peak >> 20,
        growth as f64 / f64::from(1 << 20),
    ));
    assert!(
        received * 100 >= PUBLISHED * 99,
        "the reading subscriber got {received} of {PUBLISHED}"
    );
    assert!(
        stats.dropped >= PUBLISHED / 2,
        "only {} dropped for the stalled subscriber",
        stats.dropped
    );
    assert_eq!(peers, 2, "the stalled subscriber is still there");
    assert!(
        growth < RSS_GROWTH_MAX,
        "the publisher grew by {growth} octets, past {RSS_GROWTH_MAX}"
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_costs_a_pub_only_its_own_queue() {
    if !alone("a_stalled_subscriber_costs_a_pub_only_its_own_queue").await {
        slow_subscriber(false).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_costs_an_xpub_only_its_own_queue() {
    if !alone("a_stalled_subscriber_costs_an_xpub_only_its_own_queue").await {
        slow_subscriber(true).await
    }
}

// ---------------------------------------------------------------------------------------------
// 4. A frozen peer (SIGSTOP): alive to TCP, silent to ZMTP. zeromq 0.7 had no heartbeats.

/// SIGSTOP now, SIGCONT when dropped (a failing test leaves no stopped process behind).
struct Frozen(u32);

fn signal(sig: &str, pid: u32) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} {pid}");
}

impl Frozen {
    fn freeze(pid: u32) -> Frozen {
        signal("-STOP", pid);
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

/// Our DEALER connects to a libzmq REP, which is frozen: dropped on the heartbeat timeout,
/// and once the REP runs again, reconnected.
#[tokio::test]
async fn a_frozen_libzmq_server_is_dropped_then_reconnected() {
    let mut rep = PyPeer::new("REP").await;
    let ep = rep.bind("tcp://127.0.0.1:*").await;
    let mut dealer = DealerSocket::with_options(
        fast_heartbeat()
            .reconnect(ms(100), ms(400))
            .handshake_timeout(ms(1000)),
    );
    let mut mon = dealer.monitor();
    dealer.connect(&ep).expect("connect");
    event(&mut mon, SOON, "the DEALER connects", connected).await;

    async fn rep_round_trip(dealer: &mut DealerSocket, rep: &mut PyPeer, body: &'static [u8]) {
        let envelope = Message::from(vec![Bytes::new(), Bytes::from_static(body)]);
        within(SOON, "the DEALER sends", dealer.send(envelope.clone()))
            .await
            .expect("send");
        let got = rep.recv(5000).await.expect("the REP gets the request");
        assert_eq!(got, [Bytes::from_static(body)]);
        rep.send(&[body]).await;
        let r = within(SOON, "the DEALER gets the reply", dealer.recv())
            .await
            .expect("recv");
        assert_eq!(r, envelope);
    }
    rep_round_trip(&mut dealer, &mut rep, b"one").await;

    let frozen = Frozen::freeze(rep.pid());
    let t = Instant::now();
    let reason = event(
        &mut mon,
        ms(3000),
        "the frozen REP is dropped",
        disconnected,
    )
    .await;
    let detected = t.elapsed();
    assert!(reason.contains("heartbeat"), "reason: {reason}");
    assert_eq!(dealer.stats().heartbeat_timeouts, 1);

    drop(frozen);
    let t = Instant::now();
    event(&mut mon, SOON, "the DEALER reconnects", connected).await;
    let back = t.elapsed();
    rep_round_trip(&mut dealer, &mut rep, b"two").await;
    assert_eq!(dealer.stats().heartbeat_timeouts, 1);
    println!(
        "frozen libzmq REP: dropped {detected:?} after SIGSTOP (timeout 500 ms), reconnected \
         {back:?} after SIGCONT"
    );
    rep.close().await;
}

/// A libzmq DEALER connected to our ROUTER is frozen: dropped on the heartbeat timeout; once
/// it runs again it reconnects by itself and is served.
#[tokio::test]
async fn a_frozen_libzmq_client_is_dropped_then_served_again() {
    let mut router = RouterSocket::with_options(fast_heartbeat());
    let ep = router.bind(LOCAL).await.expect("bind");
    let mut mon = router.monitor();
    let mut py = PyPeer::new("DEALER").await;
    py.connect(&ep).await;
    event(&mut mon, SOON, "the libzmq DEALER is accepted", accepted).await;

    async fn py_round_trip(router: &mut RouterSocket, py: &mut PyPeer, body: &'static [u8]) {
        py.send(&[body]).await;
        let req = within(SOON, "the ROUTER gets the request", router.recv())
            .await
            .expect("recv");
        assert_eq!(req.frames()[1..], [Bytes::from_static(body)]);
        router.send(req).expect("the reply is routed");
        assert_eq!(
            py.recv(5000).await.expect("the DEALER gets the reply"),
            [Bytes::from_static(body)]
        );
    }
    py_round_trip(&mut router, &mut py, b"one").await;

    let frozen = Frozen::freeze(py.pid());
    let t = Instant::now();
    let reason = event(
        &mut mon,
        ms(3000),
        "the frozen DEALER is dropped",
        disconnected,
    )
    .await;
    let detected = t.elapsed();
    assert!(reason.contains("heartbeat"), "reason: {reason}");
    assert_eq!(router.stats().heartbeat_timeouts, 1);

    drop(frozen);
    let t = Instant::now();
    event(&mut mon, SOON, "the DEALER comes back", accepted).await;
    let back = t.elapsed();
    py_round_trip(&mut router, &mut py, b"two").await;
    assert_eq!(router.stats().heartbeat_timeouts, 1);
    println!(
        "frozen libzmq DEALER: dropped {detected:?} after SIGSTOP (timeout 500 ms), back \
         {back:?} after SIGCONT"
    );
    py.close().await;
}

// ---------------------------------------------------------------------------------------------
// 5. A partition between two network namespaces (zeromq 0.7: ESTABLISHED forever, defect 4).

/// Two network namespaces joined by a veth pair (10.99.1.1 and 10.99.1.2, which exist only in
/// them); both removed when this is dropped, also when the test fails.
struct Netns {
    a: String,
    b: String,
}

fn ip(args: &[&str]) {
    let ok = std::process::Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "ip {}", args.join(" "));
}

impl Netns {
    const A: &'static str = "10.99.1.1";
    const B: &'static str = "10.99.1.2";

    fn new() -> Netns {
        let id = std::process::id();
        // Each veth end is named after its namespace (at most 15 characters).
        let net = Netns {
            a: format!("sfz{id}a"),
            b: format!("sfz{id}b"),
        };
        ip(&["netns", "add", &net.a]);
        ip(&["netns", "add", &net.b]);
        ip(&[
            "link", "add", &net.a, "netns", &net.a, "type", "veth", "peer", "name", &net.b,
            "netns", &net.b,
        ]);
        for (ns, addr) in [(&net.a, Netns::A), (&net.b, Netns::B)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", ns]);
            ip(&["-n", ns, "link", "set", ns, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        net
    }

    /// Cuts (or heals) the link: A's end goes down, and with it B's carrier.
    fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.a, "link", "set", &self.a, state]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn partition_options() -> SocketOptions {
    let mut o = fast_heartbeat()
        .reconnect(ms(100), ms(400))
        .handshake_timeout(ms(1000));
    o.connect_timeout = ms(1000);
    o
}

fn effective_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1)?.parse().ok())
        .expect("Uid")
}

#[tokio::test]
async fn a_partition_is_detected_on_both_sides_then_healed() {
    const TEST: &str = "a_partition_is_detected_on_both_sides_then_healed";
    match role().as_deref() {
        Some("server") => return echo_server(partition_options()).await,
        Some("client") => return echo_client(partition_options()).await,
        _ => {}
    }
    if effective_uid() != 0 {
        println!("skipped: network namespaces need root (CI runs as root)");
        return;
    }
    assert!(
        std::process::Command::new("ip")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success()),
        "`ip` is missing: install iproute2"
    );
    let net = Netns::new();
    let mut server = Part::spawn(
        &["ip", "netns", "exec", &net.a],
        TEST,
        "server",
        &[("SF_FAULTS_BIND", &format!("tcp://{}:0", Netns::A))],
    );
    let (_, l) = server.expect("listening", Duration::from_secs(20)).await;
    let ep = l.split_whitespace().nth(1).expect("endpoint").to_owned();
    let mut client = Part::spawn(
        &["ip", "netns", "exec", &net.b],
        TEST,
        "client",
        &[("SF_FAULTS_CONNECT", &ep)],
    );
    client.expect("connected", Duration::from_secs(20)).await;
    server.expect("accepted", SOON).await;
    client.expect("reply", SOON).await;

    net.link(false);
    let cut = Instant::now();
    let ((at_server, why_server), (at_client, why_client)) = tokio::join!(
        server.expect("disconnected", SOON),
        client.expect("disconnected", SOON)
    );
    let (server_saw, client_saw) = (at_server - cut, at_client - cut);
    for (side, saw, why) in [
        ("server", server_saw, &why_server),
        ("client", client_saw, &why_client),
    ] {
        assert!(why.contains("heartbeat"), "{side}: {why}");
        // The 500 ms timeout, checked every 125 ms, from the last frame before the cut.
        assert!(
            saw < ms(1500),
            "the {side} noticed the partition after {saw:?}"
        );
    }

    net.link(true);
    let healed = Instant::now();
    let (back, _) = client.expect("connected", Duration::from_secs(10)).await;
    server.expect("accepted", SOON).await;
    let (flowing, _) = client.expect("reply", SOON).await;
    println!(
        "partition: detected by the server {server_saw:?} and the client {client_saw:?} after \
         the cut (timeout 500 ms); after healing, reconnected in {:?}, replies again in {:?}",
        back - healed,
        flowing - healed
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Out of descriptors (zeromq 0.7: the accept loop spun at 100% CPU, defect 4).

/// utime + stime of a process, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

#[tokio::test]
async fn at_the_descriptor_limit_accept_backs_off_then_recovers() {
    const TEST: &str = "at_the_descriptor_limit_accept_backs_off_then_recovers";
    const HELD: usize = 100;
    const WINDOW: Duration = Duration::from_secs(2);
    if role().as_deref() == Some("server") {
        // The connections the parent holds must outlive the test.
        let o = SocketOptions::default().handshake_timeout(Duration::from_secs(60));
        return echo_server(o).await;
    }
    let mut server = Part::spawn(
        &["prlimit", "--nofile=64:64", "--"],
        TEST,
        "server",
        &[("SF_FAULTS_BIND", LOCAL)],
    );
    let (_, l) = server.expect("listening", Duration::from_secs(20)).await;
    let ep = l.split_whitespace().nth(1).expect("endpoint").to_owned();

    // More connections than the child has descriptors: it accepts until EMFILE.
    let mut held = Vec::with_capacity(HELD);
    for _ in 0..HELD {
        held.push(RawPeer::connect(&ep).await);
    }
    let first = within(SOON, "the child's accept backs off", async {
        loop {
            let (_, l) = server.expect("stats", SOON).await;
            if field(&l, "accept_backoffs") > 0 {
                return l;
            }
        }
    })
    .await;

    // Its CPU time over a window spent at the limit.
    let pid = server.pid();
    let ticks = cpu_ticks(pid);
    let t = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let used = (cpu_ticks(pid) - ticks) as f64 / 100.0 / t.elapsed().as_secs_f64();
    let last = server.latest("stats", SOON).await;
    let (b0, b1) = (
        field(&first, "accept_backoffs"),
        field(&last, "accept_backoffs"),
    );
    println!(
        "descriptor limit 64, {HELD} connections: {:.1}% of a core over {WINDOW:?} at the \
         limit; accept backoffs {b0} -> {b1}",
        used * 100.0
    );
    assert!(b1 > b0, "the accept loop is still retrying at the limit");
    assert!(used < 0.30, "the child used {:.1}% of a core", used * 100.0);

    // Descriptors back: a new client is answered.
    drop(held);
    let mut d = dealer_to(&ep);
    within(SOON, "the DEALER sends", d.send("again"))
        .await
        .expect("send");
    let r = within(
        Duration::from_secs(10),
        "the reply after the limit",
        d.recv(),
    )
    .await
    .expect("recv");
    assert_eq!(r.frames(), [Bytes::from_static(b"again")]);
}

// ---------------------------------------------------------------------------------------------
// 7. The connection limit.

#[tokio::test]
async fn the_fifth_client_waits_for_one_of_four_to_leave() {
    let mut router = RouterSocket::with_options(SocketOptions::default().max_connections(4));
    let ep = router.bind(LOCAL).await.expect("bind");
    let mut mon = router.monitor();
    let mut four = Vec::new();
    for _ in 0..4 {
        let mut d = dealer_to(&ep);
        round_trip(&mut router, &mut d, b"one of four").await;
        four.push(d);
    }
    for _ in 0..4 {
        event(&mut mon, SOON, "the first four are accepted", accepted).await;
    }

    let mut fifth = dealer_to(&ep);
    let fifth = tokio::spawn(async move {
        fifth.send("fifth").await.expect("send");
        fifth.recv().await.expect("recv")
    });
    // Not served while four are connected (a bounded wait for what must not happen).
    assert!(
        timeout(ms(500), router.recv()).await.is_err(),
        "the fifth client was served past the limit"
    );
    while let Ok(ev) = mon.try_recv() {
        assert!(accepted(&ev).is_none(), "a fifth connection was accepted");
    }
    assert_eq!(router.peer_count(), 4);
    assert!(!fifth.is_finished());

    four.pop().expect("one of four").close().await;
    let t = Instant::now();
    let req = within(SOON, "the fifth request after one left", router.recv())
        .await
        .expect("recv");
    assert_eq!(req.frames()[1..], [Bytes::from_static(b"fifth")]);
    router.send(req).expect("route");
    let rep = within(SOON, "the fifth reply", fifth)
        .await
        .expect("the fifth client");
    assert_eq!(rep.frames(), [Bytes::from_static(b"fifth")]);
    assert_eq!(router.peer_count(), 4);
    println!(
        "connection limit 4: the fifth served {:?} after one left",
        t.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Peers that handshake, then say nothing.

/// A raw peer that reads our PINGs and never answers is dropped after our timeout.
#[tokio::test]
async fn a_peer_that_never_answers_ping_is_dropped() {
    let router =
        RouterSocket::with_options(SocketOptions::default().heartbeat(heartbeat(100, 500, 700)));
    let ep = router.bind(LOCAL).await.expect("bind");
    let mut mon = router.monitor();
    let mut silent = RawPeer::handshake(&ep, "DEALER").await;
    let t = Instant::now();
    let mut pings = 0;
    let end = loop {
        match silent.next_frame(ms(3000)).await {
            Ok((COMMAND, body)) if raw::command_name(&body) == Some(b"PING") => {
                // Our TTL, in deciseconds, as RFC 37 has it.
                assert_eq!(body[5..7], 7u16.to_be_bytes(), "the PING's TTL");
                pings += 1;
            }
            Ok(other) => panic!("unexpected frame {other:?}"),
            Err(e) => break e,
        }
    };
    let dropped = t.elapsed();
    assert_eq!(end, NoFrame::Closed, "dropped within 3 s");
    assert!(
        dropped >= ms(400) && dropped < ms(2000),
        "dropped {dropped:?} after the handshake (timeout 500 ms)"
    );
    assert!(pings >= 2, "{pings} PINGs before the drop");
    let reason = event(&mut mon, SOON, "the silent peer is dropped", disconnected).await;
    assert!(reason.contains("heartbeat"), "reason: {reason}");
    assert_eq!(router.stats().heartbeat_timeouts, 1);
    println!("silent raw peer: {pings} PINGs, dropped {dropped:?} after the handshake");
}

/// With our heartbeats off, a peer's PING TTL still bounds its silence: answered with a PONG,
/// then dropped once the TTL has passed without a word.
#[tokio::test]
async fn a_peer_silent_past_its_own_ttl_is_dropped() {
    let router = RouterSocket::with_options(SocketOptions::default().heartbeat(None));
    let ep = router.bind(LOCAL).await.expect("bind");
    let mut mon = router.monitor();
    let mut peer = RawPeer::handshake(&ep, "DEALER").await;
    peer.send(&raw::ping(3, b"ctx")).await.expect("PING");
    let t = Instant::now();
    let (flags, body) = peer.next_frame(SOON).await.expect("the PONG");
    assert_eq!(flags, COMMAND);
    assert_eq!(&body[..], b"\x04PONGctx");
    let dropped = peer
        .closed_within(ms(3000))
        .await
        .map(|_| t.elapsed())
        .expect("dropped within 3 s");
    assert!(
        dropped >= ms(250) && dropped < ms(2000),
        "dropped {dropped:?} after a PING with a 300 ms TTL"
    );
    let reason = event(&mut mon, SOON, "the peer is dropped", disconnected).await;
    assert!(reason.contains("heartbeat"), "reason: {reason}");
    assert_eq!(router.stats().heartbeat_timeouts, 1);
    println!("peer TTL 300 ms, our heartbeats off: dropped {dropped:?} after its PING");
}
