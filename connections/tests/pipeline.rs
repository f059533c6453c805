//! PUSH/PULL over real sockets on 127.0.0.1: fair sharing between workers, nothing lost,
//! waiting (bounded) instead of dropping when no worker is there, either side binding, and a
//! malformed frame that does not stop the stream.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sf_connections::wire::{self, Request};
use sf_connections::{Address, Counter, Error, PipelineOptions, Puller, Pusher, WorkflowId};
use support::unused_port;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Job {
    phase: String,
    from: u32,
    n: u64,
}

fn job(phase: &str, from: u32, n: u64) -> Job {
    Job {
        phase: phase.into(),
        from,
        n,
    }
}

fn binder(send_timeout: Duration) -> PipelineOptions {
    PipelineOptions {
        is_binder: true,
        send_timeout,
        ..Default::default()
    }
}

fn connecter(send_timeout: Duration) -> PipelineOptions {
    PipelineOptions {
        is_binder: false,
        send_timeout,
        ..Default::default()
    }
}

/// Pushes `job(phase, 0, attempt)` for attempt 0, 1, ... until one goes through (each may
/// time out while `puller` connects; failing to within `limit` fails the test), then checks
/// that `puller` gets that one push and nothing else: no push that timed out arrives later.
/// Returns the number of the push that went through.
async fn push_until_one_arrives(
    pusher: &Pusher,
    puller: &mut Puller,
    phase: &str,
    limit: Duration,
    why: &str,
) -> u64 {
    let mut attempt = 0;
    let start = Instant::now();
    loop {
        match pusher.push(&job(phase, 0, attempt), WorkflowId::None).await {
            Ok(()) => break,
            Err(Error::Timeout(_)) => {
                assert!(start.elapsed() < limit, "puller never connected")
            }
            Err(e) => panic!("{e}"),
        }
        attempt += 1;
    }
    let first = tokio::time::timeout(Duration::from_secs(3), puller.next::<Job>())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.args, job(phase, 0, attempt), "{why}");
    assert!(
        tokio::time::timeout(Duration::from_millis(100), puller.next::<Job>())
            .await
            .is_err()
    );
    attempt
}

/// Moves every job each puller receives onto one channel, tagged with the puller's index.
fn drain_into(
    pullers: Vec<Puller>,
) -> (
    mpsc::UnboundedReceiver<(usize, Job)>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let tasks = pullers
        .into_iter()
        .enumerate()
        .map(|(i, mut p)| {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(r) = p.next::<Job>().await {
                    if tx.send((i, r.unwrap().args)).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    (rx, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pullers_share_the_work_fairly_and_nothing_is_lost() {
    const SENT: u64 = 3000;
    let pusher = Pusher::start(
        &Address::from("127.0.0.1:0"),
        binder(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let mut pullers = Vec::new();
    for _ in 0..3 {
        pullers.push(
            Puller::start(
                &Address::from(pusher.endpoint()),
                connecter(Duration::from_secs(5)),
            )
            .await
            .unwrap(),
        );
    }
    let (mut rx, tasks) = drain_into(pullers);

    // Warm up until every puller is connected (has received something): otherwise the first
    // one to connect would rightly get everything.
    let mut warmed = [false; 3];
    let start = Instant::now();
    let mut n = 0;
    while warmed.contains(&false) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "pullers not all connected: {warmed:?}"
        );
        pusher
            .push(&job("warm", 0, n), WorkflowId::None)
            .await
            .unwrap();
        n += 1;
        while let Ok(Some((i, _))) = tokio::time::timeout(Duration::from_millis(5), rx.recv()).await
        {
            warmed[i] = true;
        }
    }

    for n in 0..SENT {
        pusher
            .push(&job("main", 0, n), WorkflowId::None)
            .await
            .unwrap();
    }
    let mut per_puller = [0u64; 3];
    let mut seen = HashSet::new();
    while seen.len() < SENT as usize {
        let (i, j) = tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {SENT} arrived: {per_puller:?}", seen.len()))
            .unwrap();
        if j.phase == "main" {
            assert!(seen.insert(j.n), "job {} delivered twice", j.n);
            per_puller[i] += 1;
        }
    }
    assert_eq!(
        per_puller.iter().sum::<u64>(),
        SENT,
        "nothing lost, nothing doubled"
    );
    for (i, &got) in per_puller.iter().enumerate() {
        assert!(
            got * 100 >= SENT * 20 && got * 100 <= SENT * 47,
            "puller {i} got {got} of {SENT}: {per_puller:?}"
        );
    }
    assert_eq!(pusher.stats().get(Counter::Sent), SENT + n);
    assert_eq!(pusher.stats().get(Counter::Dropped), 0);
    eprintln!("fair share of {SENT}: {per_puller:?}");
    for t in tasks {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pusher_with_no_puller_times_out_instead_of_dropping() {
    let timeout = Duration::from_millis(300);
    // Binding, nobody connected.
    let pusher = Pusher::start(&Address::from("127.0.0.1:0"), binder(timeout))
        .await
        .unwrap();
    let t = Instant::now();
    let err = pusher
        .push(&job("lonely", 0, 0), WorkflowId::None)
        .await
        .unwrap_err();
    let took = t.elapsed();
    assert!(matches!(err, Error::Timeout(d) if d == timeout), "{err:?}");
    assert!(took >= timeout && took < Duration::from_secs(1), "{took:?}");
    // Connecting to a port nobody listens on.
    let nowhere = Pusher::start(
        &Address::from(format!("127.0.0.1:{}", unused_port())),
        connecter(timeout),
    )
    .await
    .unwrap();
    let t = Instant::now();
    let err = nowhere
        .push(&job("lonely", 0, 0), WorkflowId::None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(1));

    // A puller that arrives later gets only what was pushed after: a push that reported a
    // timeout is not delivered behind its caller's back. (Pushes are retried, bounded, while
    // the puller connects; each failed attempt must stay undelivered too.)
    let mut puller = Puller::start(&Address::from(pusher.endpoint()), connecter(timeout))
        .await
        .unwrap();
    let attempt = push_until_one_arrives(
        &pusher,
        &mut puller,
        "after",
        Duration::from_secs(3),
        "only the push that succeeded is delivered",
    )
    .await;
    assert_eq!(
        pusher.stats().get(Counter::Dropped),
        1 + attempt,
        "every timed-out push is counted"
    );
    assert_eq!(pusher.stats().get(Counter::Sent), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_that_timed_out_is_not_delivered_when_a_puller_turns_up() {
    // The pusher connects to a port where nobody listens yet: pushes queue up and time out.
    let port = unused_port();
    let timeout = Duration::from_millis(200);
    let pusher = Pusher::start(
        &Address::from(format!("127.0.0.1:{port}")),
        connecter(timeout),
    )
    .await
    .unwrap();
    let err = pusher
        .push(&job("ghost", 0, 0), WorkflowId::None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");

    // Now a puller binds there; the pusher connects by itself. Pushes are retried (bounded)
    // until one goes through; every one that timed out must stay undelivered.
    let mut puller = Puller::start(&Address::from(format!("127.0.0.1:{port}")), binder(timeout))
        .await
        .unwrap();
    let attempt = push_until_one_arrives(
        &pusher,
        &mut puller,
        "real",
        Duration::from_secs(5),
        "a push whose caller got a timeout was delivered later",
    )
    .await;
    assert_eq!(pusher.stats().get(Counter::Sent), 1);
    assert_eq!(pusher.stats().get(Counter::Dropped), 1 + attempt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_waits_for_a_puller_that_comes_within_the_timeout() {
    let pusher = Pusher::start(
        &Address::from("127.0.0.1:0"),
        binder(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let push = tokio::spawn({
        let pusher = pusher.clone();
        async move { pusher.push(&job("early", 0, 7), WorkflowId::None).await }
    });
    // The push is waiting: no puller yet. Start one; the waiting message reaches it.
    let mut puller = Puller::start(
        &Address::from(pusher.endpoint()),
        connecter(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(3), puller.next::<Job>())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.args, job("early", 0, 7));
    tokio::time::timeout(Duration::from_secs(1), push)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pusher.stats().get(Counter::Dropped), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_puller_takes_from_connecting_pushers() {
    let mut puller = Puller::start(
        &Address::from("127.0.0.1:0"),
        binder(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let at = Address::from(puller.endpoint());
    let pushers = [
        Pusher::start(&at, connecter(Duration::from_secs(5)))
            .await
            .unwrap(),
        Pusher::start(&at, connecter(Duration::from_secs(5)))
            .await
            .unwrap(),
    ];
    let senders: Vec<_> = pushers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let p = p.clone();
            tokio::spawn(async move {
                for n in 0..200 {
                    p.push(&job("main", i as u32, n), WorkflowId::None)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut next = [0u64; 2];
    for _ in 0..400 {
        let r = tokio::time::timeout(Duration::from_secs(3), puller.next::<Job>())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let from = r.args.from as usize;
        assert_eq!(
            r.args.n, next[from],
            "each pusher's messages arrive in order"
        );
        next[from] += 1;
    }
    assert_eq!(next, [200, 200]);
    for s in senders {
        s.await.unwrap();
    }
    assert_eq!(puller.stats().get(Counter::Received), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_is_an_error_and_the_stream_goes_on() {
    let mut puller = Puller::start(
        &Address::from("127.0.0.1:0"),
        binder(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let raw = sf_zmtp::PushSocket::new();
    raw.connect(puller.endpoint()).unwrap();
    raw.send(sf_zmtp::Message::single(b"\xc1not msgpack".to_vec()))
        .await
        .unwrap();
    raw.send(sf_zmtp::Message::single(
        wire::encode(&serde_json::json!({"args": {"n": 1}})).unwrap(),
    ))
    .await
    .unwrap();
    let good = Request {
        args: job("main", 9, 2),
        workflow_id: WorkflowId::Str("w".into()),
        traceparent: None,
    };
    raw.send(sf_zmtp::Message::single(wire::encode(&good).unwrap()))
        .await
        .unwrap();

    let first = tokio::time::timeout(Duration::from_secs(3), puller.next::<Job>())
        .await
        .unwrap()
        .unwrap();
    assert!(first.is_err(), "not msgpack: {first:?}");
    let second = tokio::time::timeout(Duration::from_secs(3), puller.next::<Job>())
        .await
        .unwrap()
        .unwrap();
    assert!(second.is_err(), "args of the wrong shape: {second:?}");
    let third = tokio::time::timeout(Duration::from_secs(3), puller.next::<Job>())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(third, good);
    assert_eq!(puller.stats().get(Counter::Malformed), 2);
    assert_eq!(puller.stats().get(Counter::Received), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connecting_pusher_recovers_when_its_binding_puller_restarts() {
    let timeout = Duration::from_secs(2);
    let mut puller = Puller::start(&Address::from("127.0.0.1:0"), binder(timeout))
        .await
        .unwrap();
    let port = support::port_of(puller.endpoint());
    let pusher = Pusher::start(&Address::from(puller.endpoint()), connecter(timeout))
        .await
        .unwrap();
    for n in 0..10 {
        pusher
            .push(&job("before", 0, n), WorkflowId::None)
            .await
            .unwrap();
    }
    for n in 0..10 {
        let r = tokio::time::timeout(timeout, puller.next::<Job>())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(r.args.n, n);
    }
    drop(puller);
    let same_port = Address::from(format!("127.0.0.1:{port}"));
    let (mut puller, _) = support::retry(
        "rebinding the puller's port",
        Duration::from_secs(3),
        || Puller::start(&same_port, binder(timeout)),
    )
    .await;

    // PUSH has no acknowledgement: what is pushed before the pusher notices that its peer went
    // away (a write fails) is gone, though the push said Ok. Push until one arrives (bounded).
    let start = Instant::now();
    let mut n = 0;
    let resumed = loop {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the pusher never reached the new puller"
        );
        pusher
            .push(&job("after", 0, n), WorkflowId::None)
            .await
            .unwrap();
        n += 1;
        if let Ok(Some(r)) =
            tokio::time::timeout(Duration::from_millis(20), puller.next::<Job>()).await
        {
            break r.unwrap().args.n;
        }
    };
    // From then on, nothing is lost and the order holds.
    let mut expected = resumed + 1;
    for k in n..n + 100 {
        pusher
            .push(&job("after", 0, k), WorkflowId::None)
            .await
            .unwrap();
    }
    while expected < n + 100 {
        let r = tokio::time::timeout(timeout, puller.next::<Job>())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(r.args.n, expected);
        expected += 1;
    }
    assert!(
        pusher.stats().get(Counter::Reconnects) >= 1,
        "{:?}",
        pusher.stats().snapshot()
    );
    eprintln!("puller restart: {resumed} pushes reported Ok but went to the old puller's closed connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pusher_with_two_full_pullers_recovers_once_they_drain() {
    // The socket library forgets a puller whose send was dropped half way; with two pullers
    // that made every later push fail. Pushes that time out on full pullers must leave the
    // pusher whole.
    let pusher = Pusher::start(
        &Address::from("127.0.0.1:0"),
        binder(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let mut pullers = Vec::new();
    for _ in 0..2 {
        pullers.push(
            Puller::start(
                &Address::from(pusher.endpoint()),
                connecter(Duration::from_secs(1)),
            )
            .await
            .unwrap(),
        );
    }
    // Fill both pullers (nobody reads) until pushes time out. Every attempt carries its own
    // number: a push that timed out on a full puller may still be delivered later.
    let mut attempt = 0u64;
    let mut timed_out = HashSet::new();
    let start = Instant::now();
    while timed_out.len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{attempt} pushed and the pullers never filled"
        );
        match pusher.push(&attempt, WorkflowId::None).await {
            Ok(()) => {}
            Err(Error::Timeout(_)) => {
                timed_out.insert(attempt);
            }
            Err(e) => panic!("{e}"),
        }
        attempt += 1;
    }
    let pushed = attempt - timed_out.len() as u64;
    assert!(
        pushed > 1_000,
        "only {pushed} pushed before the pullers were full"
    );
    // Drain both: everything pushed arrives (the timed-out pushes may arrive too).
    let (mut rx, tasks) = {
        let (tx, rx) = mpsc::unbounded_channel();
        let tasks: Vec<_> = pullers
            .into_iter()
            .map(|mut p| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while let Some(r) = p.next::<u64>().await {
                        if tx.send(r.unwrap().args).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        (rx, tasks)
    };
    let mut got = HashSet::new();
    while (got.len() as u64) < pushed {
        let n = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{} of {pushed} drained", got.len()))
            .unwrap();
        assert!(n < attempt, "{n} was never pushed");
        if timed_out.contains(&n) {
            continue; // timed out on a full puller, delivered after all
        }
        assert!(got.insert(n), "{n} arrived twice");
    }
    // Now the pullers have room: every further push succeeds and arrives.
    for n in 0..1_000u64 {
        pusher
            .push(&(1_000_000_000 + n), WorkflowId::None)
            .await
            .unwrap_or_else(|e| panic!("push {n} after the drain: {e}"));
    }
    let mut after = 0;
    while after < 1_000 {
        let n = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{after} of 1000 later pushes arrived"))
            .unwrap();
        after += u64::from(n >= 1_000_000_000);
    }
    // The first push stuck on a full puller is a timeout (its send goes on); pushes that then
    // wait for the socket and give up were never sent (dropped).
    let stats = pusher.stats();
    assert!(stats.get(Counter::Timeouts) >= 1, "{:?}", stats.snapshot());
    assert!(
        stats.get(Counter::Timeouts) + stats.get(Counter::Dropped) >= 3,
        "{:?}",
        stats.snapshot()
    );
    for t in tasks {
        t.abort();
    }
}

/// Push/pull over CURVE: a binding pusher (the CURVE server) hands work only to the puller
/// whose key it accepts; a puller with an unknown key and a NULL one never get a job (a push
/// never waits on them: they are not peers) and are counted as refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_pull_over_curve_reaches_only_the_authorized_puller() {
    use sf_connections::security::{Authorizer, KeyPair, Security};
    let server = KeyPair::generate();
    let (worker, stranger) = (KeyPair::generate(), KeyPair::generate());
    let pusher = Pusher::start(
        &Address::from("127.0.0.1:0"),
        PipelineOptions {
            security: Security::curve_server(
                server.secret.clone(),
                Authorizer::allow_list([worker.public]),
            ),
            ..binder(Duration::from_secs(5))
        },
    )
    .await
    .unwrap();
    let at = Address::from(pusher.endpoint());
    let puller_with = |security| PipelineOptions {
        security,
        ..connecter(Duration::from_secs(5))
    };
    let mut outsider = Puller::start(
        &at,
        puller_with(Security::curve_client(server.public, stranger.clone())),
    )
    .await
    .unwrap();
    let mut plain = Puller::start(&at, puller_with(Security::Null))
        .await
        .unwrap();
    let mut authorized = Puller::start(
        &at,
        puller_with(Security::curve_client(server.public, worker.clone())),
    )
    .await
    .unwrap();
    for n in 0..20 {
        pusher
            .push(&job("curve", 0, n), WorkflowId::None)
            .await
            .unwrap();
    }
    for n in 0..20 {
        let got = tokio::time::timeout(Duration::from_secs(5), authorized.next::<Job>())
            .await
            .expect("a job within 5 s")
            .unwrap()
            .unwrap();
        assert_eq!(got.args, job("curve", 0, n), "every job, in order, boxed");
    }
    for (who, p) in [("unknown key", &mut outsider), ("NULL", &mut plain)] {
        assert!(
            tokio::time::timeout(Duration::from_millis(200), p.next::<Job>())
                .await
                .is_err(),
            "the {who} puller got a job"
        );
    }
    assert!(
        pusher.stats().get(Counter::AuthFailures) >= 2,
        "refusals counted: {}",
        pusher.stats().get(Counter::AuthFailures)
    );
}
