//! One requester, several replicas of one replyer (brokerless), over real sockets on
//! 127.0.0.1: requests spread by the fewest in flight, a replica that goes away is taken out
//! and its requests retried elsewhere only when the caller allows it, and retries are not
//! multiplied by a handler that calls on (the rule of `requester::serving`). The same with
//! real processes killed and stopped is in examples/tests/replicas.rs.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sf_connections::requester::is_serving;
use sf_connections::{
    typed, Address, Counter, Error, Replyer, ReplyerOptions, Requester, RequesterOptions,
    WireError, WorkflowId,
};
use sf_zmtp::{Heartbeat, RouterSocket};
use support::wait_until;

#[derive(Debug, Serialize, Deserialize)]
struct Work {
    n: u64,
    #[serde(default)]
    delay_ms: u64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Done {
    n: u64,
    by: usize,
}

/// A replyer that says who it is (`by`) and waits `delay_ms` (its own, or the request's).
async fn replica(by: usize, delay_ms: u64) -> Replyer {
    let handler = typed(move |w: Work, _meta| async move {
        let d = w.delay_ms.max(delay_ms);
        if d > 0 {
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
        Ok::<_, WireError>(Done { n: w.n, by })
    });
    Replyer::bind(
        &Address::from("127.0.0.1:0"),
        handler,
        ReplyerOptions::default(),
    )
    .await
    .unwrap()
}

fn list(endpoints: &[&str]) -> Address {
    Address::Replicas(endpoints.iter().map(|e| Address::from(*e)).collect())
}

fn fast_heartbeat() -> Option<Heartbeat> {
    Some(Heartbeat {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(500),
        ttl: Duration::from_millis(500),
    })
}

fn requester(address: &Address, timeout: Duration, retries: u32) -> Requester {
    Requester::connect(
        address,
        RequesterOptions {
            timeout,
            retries,
            heartbeat: fast_heartbeat(),
            ..Default::default()
        },
    )
    .unwrap()
}

/// Waits until `n` replicas are up.
async fn up(r: &Requester, n: usize) {
    let mut w = r.replicas_up();
    tokio::time::timeout(Duration::from_secs(5), w.wait_for(|&u| u >= n))
        .await
        .unwrap_or_else(|_| panic!("{n} replicas up within 5 s: {:?}", r.replicas()))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_over_three_replicas_and_the_busy_one_gets_fewer() {
    // Equal replicas: each gets a share.
    let reps = [
        replica(0, 2).await,
        replica(1, 2).await,
        replica(2, 2).await,
    ];
    let eps: Vec<&str> = reps.iter().map(|r| r.endpoint()).collect();
    let req = requester(&list(&eps), Duration::from_secs(5), 0);
    up(&req, 3).await;
    const N: u64 = 600;
    let tasks: Vec<_> = (0..30)
        .map(|t| {
            let req = req.clone();
            tokio::spawn(async move {
                for i in 0..N / 30 {
                    let d: Done = req
                        .request(
                            &Work {
                                n: t * 1000 + i,
                                delay_ms: 0,
                            },
                            WorkflowId::None,
                        )
                        .await
                        .unwrap();
                    assert_eq!(d.n, t * 1000 + i);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let served: Vec<u64> = reps
        .iter()
        .map(|r| r.stats().get(Counter::Replied))
        .collect();
    assert_eq!(served.iter().sum::<u64>(), N, "{served:?}");
    for (i, s) in served.iter().enumerate() {
        assert!(*s >= N / 6, "replica {i} served {s} of {N}: {served:?}");
    }
    let seen: Vec<u64> = req.replicas().iter().map(|r| r.sent).collect();
    assert_eq!(seen, served, "the requester's count per replica");
    println!("600 requests over 3 equal replicas: {served:?}");

    // One replica is slow (200 ms a request, the others 2 ms): with the fewest in flight
    // chosen, it gets a small part.
    let reps = [
        replica(0, 200).await,
        replica(1, 2).await,
        replica(2, 2).await,
    ];
    let eps: Vec<&str> = reps.iter().map(|r| r.endpoint()).collect();
    let req = requester(&list(&eps), Duration::from_secs(5), 0);
    up(&req, 3).await;
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let req = req.clone();
            tokio::spawn(async move {
                for i in 0..40u64 {
                    let _: Done = req
                        .request(
                            &Work {
                                n: t * 1000 + i,
                                delay_ms: 0,
                            },
                            WorkflowId::None,
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let served: Vec<u64> = reps
        .iter()
        .map(|r| r.stats().get(Counter::Replied))
        .collect();
    assert_eq!(served.iter().sum::<u64>(), 320, "{served:?}");
    // Round-robin would give it a third (107); the fewest in flight, about one per 100
    // requests the fast ones serve while it works.
    assert!(served[0] < 40, "the slow replica served {served:?}");
    assert!(served[1] > 100 && served[2] > 100, "{served:?}");
    println!("320 requests, one replica 100x slower: {served:?}");
}

/// A replica that takes requests and never answers, then drops its connection: what a host
/// that dies with requests in flight looks like to the requester.
async fn black_hole() -> (String, tokio::sync::oneshot::Sender<()>, Arc<AtomicU64>) {
    let mut sock = RouterSocket::new();
    let ep = sock.bind("tcp://127.0.0.1:0").await.unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let (die, dead) = tokio::sync::oneshot::channel::<()>();
    let count = got.clone();
    tokio::spawn(async move {
        tokio::pin!(dead);
        loop {
            tokio::select! {
                m = sock.recv() => if m.is_ok() { count.fetch_add(1, Ordering::SeqCst); } else { break },
                _ = &mut dead => break,
            }
        }
        sock.close().await;
    });
    (ep, die, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_lost_with_requests_in_flight_is_retried_only_when_allowed() {
    for retries in [0u32, 2] {
        let good = replica(1, 0).await;
        let (hole, die, got) = black_hole().await;
        let req = requester(
            &list(&[&hole, good.endpoint()]),
            Duration::from_secs(3),
            retries,
        );
        up(&req, 2).await;
        // Enough concurrent requests that the black hole holds some.
        let started = Instant::now();
        let calls: Vec<_> = (0..20u64)
            .map(|n| {
                let req = req.clone();
                tokio::spawn(async move {
                    let r: Result<Done, Error> = req
                        .request(&Work { n, delay_ms: 0 }, WorkflowId::None)
                        .await;
                    (r, started.elapsed())
                })
            })
            .collect();
        wait_until(
            "the black hole holds requests",
            Duration::from_secs(5),
            || got.load(Ordering::SeqCst) > 0,
        )
        .await;
        let held = got.load(Ordering::SeqCst);
        let _ = die.send(());
        let mut answered = 0;
        let mut failed = 0;
        for c in calls {
            let (r, took) = c.await.unwrap();
            // Nothing waits out the 3 s timeout: the loss is seen at once.
            assert!(
                took < Duration::from_secs(2),
                "{retries} retries: took {took:?}"
            );
            match r {
                Ok(d) => {
                    assert_eq!(d.by, 1);
                    answered += 1;
                }
                Err(e) => {
                    assert!(retries == 0, "with retries every request is answered: {e}");
                    assert!(e.to_string().contains("went away"), "{e}");
                    failed += 1;
                }
            }
        }
        if retries == 0 {
            assert!(
                failed >= 1 && failed as u64 <= held,
                "{failed} failed, {held} held"
            );
        } else {
            assert_eq!(answered, 20);
            assert!(req.stats().get(Counter::Retries) >= 1);
        }
        // The lost replica is out: the next requests all go to the other one at once.
        wait_until("the lost replica is out", Duration::from_secs(2), || {
            !req.replicas()[0].up
        })
        .await;
        for n in 0..10u64 {
            let d: Done = req
                .request(&Work { n, delay_ms: 0 }, WorkflowId::None)
                .await
                .unwrap();
            assert_eq!(d.by, 1);
        }
        println!(
            "retries {retries}: {held} requests were on the lost replica; {answered} answered, {failed} failed at once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_replica_gone_a_request_fails_within_its_timeout_and_one_coming_back_serves() {
    let port = support::unused_port();
    let ep = format!("tcp://127.0.0.1:{port}");
    let other = format!("tcp://127.0.0.1:{}", support::unused_port());
    let req = requester(&list(&[&ep, &other]), Duration::from_millis(400), 0);
    let t = Instant::now();
    let r: Result<Done, Error> = req
        .request(&Work { n: 1, delay_ms: 0 }, WorkflowId::None)
        .await;
    let took = t.elapsed();
    assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1400),
        "{took:?}"
    );
    // A request waiting for a replica is sent as soon as one comes up.
    let waiting = {
        let req = req.clone();
        tokio::spawn(async move {
            req.request::<_, Done>(&Work { n: 2, delay_ms: 0 }, WorkflowId::None)
                .await
        })
    };
    let handler = typed(|w: Work, _meta| async move { Ok::<_, WireError>(Done { n: w.n, by: 9 }) });
    let _rep = Replyer::bind(
        &Address::from(ep.as_str()),
        handler,
        ReplyerOptions::default(),
    )
    .await
    .unwrap();
    let mut w = req.replicas_up();
    tokio::time::timeout(Duration::from_secs(3), w.wait_for(|&u| u == 1))
        .await
        .unwrap()
        .unwrap();
    // It was made before the replica came up, and may have timed out meanwhile (400 ms):
    // either way it ends, and the next is served.
    let _ = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .expect("the waiting request ends within its timeout");
    let d: Done = req
        .request(&Work { n: 3, delay_ms: 0 }, WorkflowId::None)
        .await
        .unwrap();
    assert_eq!(d, Done { n: 3, by: 9 });
    assert!(!req.replicas()[1].up);
}

/// A -> middle (a handler that calls C with 3 retries) -> C, which never answers. A allows 2
/// retries: C sees 3 attempts (one per attempt of A), not 3 x 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_happen_at_the_edge_only_and_do_not_multiply_across_hops() {
    assert!(!is_serving());
    let (c_ep, _keep, c_got) = black_hole().await;
    let inner = requester(&Address::from(c_ep.as_str()), Duration::from_millis(600), 3);
    let handler = typed(move |w: Work, _meta| {
        let inner = inner.clone();
        async move {
            assert!(is_serving(), "a handler runs as serving a request");
            inner
                .request::<_, Done>(&w, WorkflowId::None)
                .await
                .map_err(|e| WireError::new(sf_connections::ErrorCode::HandlerError, e.to_string()))
        }
    });
    let middle = Replyer::bind(
        &Address::from("127.0.0.1:0"),
        handler,
        ReplyerOptions::default(),
    )
    .await
    .unwrap();
    // A's timeout is below the middle's: A retries on its own timeouts.
    let a = requester(
        &Address::from(middle.endpoint()),
        Duration::from_millis(300),
        2,
    );
    let r: Result<Done, Error> = a
        .request(&Work { n: 1, delay_ms: 0 }, WorkflowId::None)
        .await;
    assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
    assert_eq!(a.stats().get(Counter::Retries), 2);
    // Every handler run of the middle ends (its one attempt at C times out after 600 ms).
    wait_until(
        "the middle's 3 handler runs end",
        Duration::from_secs(5),
        || middle.stats().get(Counter::HandlerFailed) == 3,
    )
    .await;
    assert_eq!(
        c_got.load(Ordering::SeqCst),
        3,
        "C saw one attempt per attempt of A"
    );
    println!("A (2 retries) -> B (3 retries, inside a handler) -> C: C saw 3 requests, not 12");
}

/// Requests waiting for room on a replica that stopped reading (its queue and the TCP buffers
/// full) fail as soon as it is lost, not at their timeout: they were never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_for_room_on_a_lost_replica_fail_at_once() {
    // A replica that takes one message and then reads nothing more.
    let stalled = RouterSocket::with_options(sf_zmtp::SocketOptions::default().recv_hwm(1));
    let ep = stalled.bind("tcp://127.0.0.1:0").await.unwrap();
    let absent = format!("tcp://127.0.0.1:{}", support::unused_port());
    let req = Requester::connect(
        &list(&[&ep, &absent]),
        RequesterOptions {
            timeout: Duration::from_secs(10),
            queue: 2,
            heartbeat: fast_heartbeat(),
            ..Default::default()
        },
    )
    .unwrap();
    up(&req, 1).await;
    let started = Instant::now();
    let big = "x".repeat(64 << 10);
    let calls: Vec<_> = (0..200u64)
        .map(|n| {
            let (req, big) = (req.clone(), big.clone());
            tokio::spawn(async move {
                let body = sf_connections::wire::encode(&sf_connections::wire::Request {
                    args: serde_json::json!({ "n": n, "pad": big }),
                    workflow_id: WorkflowId::None,
                    traceparent: None,
                })
                .unwrap();
                let r = req.request_raw(body).await;
                (r, started.elapsed())
            })
        })
        .collect();
    // Fills up: some requests sent (in the buffers), the rest waiting for room.
    wait_until("requests waiting for room", Duration::from_secs(10), || {
        let sent = req.stats().get(Counter::Sent);
        sent > 0 && sent < 200 && req.replicas()[0].in_flight == 200
    })
    .await;
    let sent = req.stats().get(Counter::Sent);
    tokio::task::yield_now().await;
    drop(stalled);
    let mut unsent = 0;
    for c in calls {
        let (r, took) = c.await.unwrap();
        let e = r.expect_err("nobody answers");
        assert!(took < Duration::from_secs(5), "{e} after {took:?}");
        if e.to_string().contains("before the request was sent") {
            unsent += 1;
        } else {
            assert!(e.to_string().contains("went away"), "{e}");
        }
    }
    assert!(unsent > 0, "no request was waiting for room ({sent} sent)");
    println!("{sent} requests sent to the stalled replica, {unsent} waiting for room: all failed at its loss");
}
