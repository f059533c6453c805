//! Request/reply under failure, over real sockets on 127.0.0.1: a replyer that restarts,
//! replyers that never answer or answer late, oversize requests, panicking handlers, and
//! concurrent serving.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sf_connections::{
    typed, Address, Counter, Error, ErrorCode, Replyer, ReplyerOptions, Requester,
    RequesterOptions, WireError, WorkflowId,
};
use support::{port_of, retry, unused_port, wait_until};
use tokio::sync::{mpsc, Notify};

#[derive(Debug, Serialize, Deserialize)]
struct Work {
    n: u64,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    text: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Done {
    n: u64,
    generation: u32,
}

/// A replyer whose replies say which `generation` answered; requests with a delay report on
/// `started` when their handler begins.
async fn work_replyer(
    address: &str,
    generation: u32,
    started: Option<mpsc::UnboundedSender<u64>>,
    options: ReplyerOptions,
) -> sf_connections::Result<Replyer> {
    let handler = typed(move |w: Work, _meta| {
        let started = started.clone();
        async move {
            if w.delay_ms > 0 {
                if let Some(s) = &started {
                    let _ = s.send(w.n);
                }
                tokio::time::sleep(Duration::from_millis(w.delay_ms)).await;
            }
            if w.text == "panic" {
                panic!("handler asked to panic");
            }
            Ok::<_, WireError>(Done { n: w.n, generation })
        }
    });
    Replyer::bind(&Address::from(address), handler, options).await
}

fn work(n: u64, delay_ms: u64) -> Work {
    Work {
        n,
        delay_ms,
        text: String::new(),
    }
}

fn connect(endpoint: &str, timeout: Duration, retries: u32) -> Requester {
    let options = RequesterOptions {
        timeout,
        retries,
        ..Default::default()
    };
    Requester::connect(&Address::from(endpoint), options).unwrap()
}

// The requester is built differently per runtime flavor (see `requester.rs`): both run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requester_recovers_by_itself_when_the_replyer_restarts_on_the_same_port() {
    recovers_after_restart().await
}

#[tokio::test(flavor = "current_thread")]
async fn requester_recovers_by_itself_when_the_replyer_restarts_on_the_same_port_current_thread() {
    recovers_after_restart().await
}

async fn recovers_after_restart() {
    let quick = ReplyerOptions {
        drain_timeout: Duration::from_millis(100),
        linger: Duration::from_millis(50),
        ..Default::default()
    };
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let first = work_replyer("127.0.0.1:0", 1, Some(started_tx.clone()), quick.clone())
        .await
        .unwrap();
    let endpoint = first.endpoint().to_owned();
    let port = port_of(&endpoint);
    let plain = connect(&endpoint, Duration::from_secs(3), 0);
    let retrying = connect(&endpoint, Duration::from_secs(3), 1);

    for i in 0..20 {
        let a: Done = plain.request(&work(i, 0), WorkflowId::None).await.unwrap();
        let b: Done = retrying
            .request(&work(100 + i, 0), WorkflowId::None)
            .await
            .unwrap();
        assert_eq!((a.n, a.generation, b.n, b.generation), (i, 1, 100 + i, 1));
    }

    // Two requests whose handlers outlive the replyer's drain timeout: in flight at the kill.
    let in_flight_plain = tokio::spawn({
        let plain = plain.clone();
        async move {
            let t = Instant::now();
            (
                plain
                    .request::<_, Done>(&work(1000, 1500), WorkflowId::None)
                    .await,
                t.elapsed(),
            )
        }
    });
    let in_flight_retrying = tokio::spawn({
        let retrying = retrying.clone();
        async move {
            retrying
                .request::<_, Done>(&work(2000, 300), WorkflowId::None)
                .await
        }
    });
    let mut seen = Vec::new();
    for _ in 0..2 {
        let n = tokio::time::timeout(Duration::from_secs(3), started.recv())
            .await
            .expect("handler started")
            .unwrap();
        seen.push(n);
    }
    seen.sort();
    assert_eq!(seen, [1000, 2000]);

    let t = Instant::now();
    first.shutdown().await;
    let shutdown_took = t.elapsed();
    assert!(
        shutdown_took < Duration::from_secs(2),
        "shutdown took {shutdown_took:?}"
    );

    // A new replyer on the same port (the old listener must have been released).
    let same_port = format!("127.0.0.1:{port}");
    let (second, bind_attempts) = retry("rebinding the same port", Duration::from_secs(3), || {
        work_replyer(&same_port, 2, Some(started_tx.clone()), quick.clone())
    })
    .await;
    assert_eq!(port_of(second.endpoint()), port);

    // The request in flight without retries fails promptly (not a hang, not its timeout),
    // with the stopping replyer's own answer.
    let (result, took) = tokio::time::timeout(Duration::from_secs(5), in_flight_plain)
        .await
        .unwrap()
        .unwrap();
    match result {
        Err(Error::Remote(w)) => {
            assert_eq!(w.code, sf_connections::ErrorCode::Unavailable, "{w:?}");
            // Which of the two requests holds the replyer's one slot is a race: the one
            // running is answered "stopped before this request finished", the one waiting
            // for the slot "the service is stopping". Either is the stopping replyer's answer.
            assert!(
                w.message.contains("stopped before") || w.message.contains("is stopping"),
                "{w:?}"
            );
        }
        other => {
            panic!("expected the in-flight request to be answered unavailable, got {other:?}")
        }
    }
    assert!(
        took < Duration::from_secs(3),
        "the in-flight request took {took:?}: it hung until its timeout"
    );
    // The one allowed a retry is answered by the new replyer.
    let retried = tokio::time::timeout(Duration::from_secs(5), in_flight_retrying)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        retried,
        Done {
            n: 2000,
            generation: 2
        }
    );

    // New requests on both requesters succeed against the new replyer, with no action by the caller.
    for i in 0..20 {
        let a: Done = plain.request(&work(i, 0), WorkflowId::None).await.unwrap();
        let b: Done = retrying
            .request(&work(100 + i, 0), WorkflowId::None)
            .await
            .unwrap();
        assert_eq!((a.generation, b.generation), (2, 2));
    }
    for (name, r) in [("plain", &plain), ("retrying", &retrying)] {
        assert_eq!(
            r.stats().get(Counter::Reconnects),
            1,
            "{name}: {:?}",
            r.stats().snapshot()
        );
    }
    assert_eq!(retrying.stats().get(Counter::Retries), 1);
    assert_eq!(plain.stats().get(Counter::Retries), 0);
    eprintln!("restart: shutdown {shutdown_took:?}, rebind attempts {bind_attempts}");
    second.shutdown().await;
}

// The requester is built differently per runtime flavor (see `requester.rs`): both run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_never_finishes_gives_a_timeout_after_every_retry() {
    timeout_after_every_retry().await
}

#[tokio::test(flavor = "current_thread")]
async fn a_handler_that_never_finishes_gives_a_timeout_after_every_retry_current_thread() {
    timeout_after_every_retry().await
}

async fn timeout_after_every_retry() {
    let handler = typed(|_args: Work, _meta| std::future::pending::<Result<Done, WireError>>());
    let options = ReplyerOptions {
        drain_timeout: Duration::from_millis(50),
        linger: Duration::ZERO,
        ..Default::default()
    };
    let replyer = Replyer::bind(&Address::from("127.0.0.1:0"), handler, options)
        .await
        .unwrap();
    let timeout = Duration::from_millis(300);
    let req = connect(replyer.endpoint(), timeout, 2);
    let t = Instant::now();
    let err = req
        .request::<_, Done>(&work(1, 0), WorkflowId::None)
        .await
        .unwrap_err();
    let took = t.elapsed();
    assert!(matches!(err, Error::Timeout(d) if d == timeout), "{err:?}");
    assert!(
        took >= timeout * 3 && took < Duration::from_secs(2),
        "three attempts took {took:?}"
    );
    let stats = req.stats();
    assert_eq!(stats.get(Counter::Timeouts), 3);
    assert_eq!(stats.get(Counter::Retries), 2);
    assert_eq!(
        stats.get(Counter::Sent),
        3,
        "every attempt went out: {:?}",
        stats.snapshot()
    );
    assert_eq!(replyer.stats().get(Counter::Received), 3);
    replyer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_nobody_listens_on_gives_a_timeout() {
    let timeout = Duration::from_millis(200);
    let req = connect(&format!("127.0.0.1:{}", unused_port()), timeout, 1);
    let t = Instant::now();
    let err = req
        .request::<_, Done>(&work(1, 0), WorkflowId::None)
        .await
        .unwrap_err();
    let took = t.elapsed();
    assert!(matches!(err, Error::Timeout(d) if d == timeout), "{err:?}");
    assert!(
        took >= timeout * 2 && took < Duration::from_millis(1500),
        "took {took:?}"
    );
    let stats = req.stats();
    assert_eq!(stats.get(Counter::Timeouts), 2);
    assert_eq!(stats.get(Counter::Retries), 1);
    assert_eq!(
        stats.get(Counter::Sent),
        0,
        "nothing can be sent with no peer"
    );
}

// The requester is built differently per runtime flavor (see `requester.rs`): both run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reply_is_counted_and_never_given_to_a_later_request() {
    late_reply_is_counted().await
}

#[tokio::test(flavor = "current_thread")]
async fn a_late_reply_is_counted_and_never_given_to_a_later_request_current_thread() {
    late_reply_is_counted().await
}

async fn late_reply_is_counted() {
    // Each request's handler waits for its own gate, so the test decides when replies leave.
    let gates: Arc<[Notify; 2]> = Arc::new([Notify::new(), Notify::new()]);
    let (started_tx, mut started) = mpsc::unbounded_channel::<u64>();
    let handler = {
        let gates = gates.clone();
        typed(move |w: Work, _meta| {
            let (gates, started) = (gates.clone(), started_tx.clone());
            async move {
                let _ = started.send(w.n);
                gates[w.n as usize].notified().await;
                Ok::<_, WireError>(Done {
                    n: w.n,
                    generation: 1,
                })
            }
        })
    };
    let options = ReplyerOptions {
        drain_timeout: Duration::from_millis(50),
        ..Default::default()
    };
    let replyer = Replyer::bind(&Address::from("127.0.0.1:0"), handler, options)
        .await
        .unwrap();
    let timeout = Duration::from_millis(800);
    let req = connect(replyer.endpoint(), timeout, 0);

    // Request 0 gives up.
    let err = req
        .request::<_, Done>(&work(0, 0), WorkflowId::None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(1), started.recv())
            .await
            .unwrap(),
        Some(0)
    );

    // Request 1 is in flight when request 0's reply finally arrives.
    let later = tokio::spawn({
        let req = req.clone();
        async move { req.request::<_, Done>(&work(1, 0), WorkflowId::None).await }
    });
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(1), started.recv())
            .await
            .unwrap(),
        Some(1)
    );
    gates[0].notify_one();
    wait_until(
        "the late reply to be counted",
        Duration::from_millis(700),
        || req.stats().get(Counter::LateReplies) == 1,
    )
    .await;
    assert!(
        !later.is_finished(),
        "request 1 must still be waiting for its own reply"
    );
    gates[1].notify_one();
    let got = tokio::time::timeout(Duration::from_secs(2), later)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        Done {
            n: 1,
            generation: 1
        },
        "request 1 got its own reply, not request 0's"
    );
    let stats = req.stats();
    assert_eq!(stats.get(Counter::LateReplies), 1);
    assert_eq!(stats.get(Counter::Received), 1, "{:?}", stats.snapshot());
    assert_eq!(stats.get(Counter::Timeouts), 1);
    replyer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_requests_and_panicking_handlers_get_error_replies_and_serving_goes_on() {
    let options = ReplyerOptions {
        max_message_bytes: 1024,
        ..Default::default()
    };
    let replyer = work_replyer("127.0.0.1:0", 1, None, options).await.unwrap();
    let req = connect(replyer.endpoint(), Duration::from_secs(3), 0);

    let big = Work {
        n: 1,
        delay_ms: 0,
        text: "x".repeat(4096),
    };
    match req
        .request::<_, Done>(&big, WorkflowId::None)
        .await
        .unwrap_err()
    {
        Error::Remote(e) => {
            assert_eq!(e.code, ErrorCode::TooLarge);
            assert!(
                e.message.contains("1024"),
                "the limit is named: {}",
                e.message
            );
        }
        other => panic!("expected a too_large error reply, got {other:?}"),
    }
    let ok: Done = req.request(&work(2, 0), WorkflowId::None).await.unwrap();
    assert_eq!(ok.n, 2);

    let boom = Work {
        n: 3,
        delay_ms: 0,
        text: "panic".into(),
    };
    match req
        .request::<_, Done>(&boom, WorkflowId::None)
        .await
        .unwrap_err()
    {
        Error::Remote(e) => assert_eq!(e.code, ErrorCode::Internal, "{e}"),
        other => panic!("expected an internal error reply, got {other:?}"),
    }
    // Panics more than once, concurrently with good requests: still serving.
    let calls = (0..10).map(|i| {
        let req = req.clone();
        async move {
            let w = Work {
                n: i,
                delay_ms: 0,
                text: if i % 2 == 0 {
                    "panic".into()
                } else {
                    String::new()
                },
            };
            req.request::<_, Done>(&w, WorkflowId::None).await
        }
    });
    for (i, r) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        if i % 2 == 0 {
            assert!(
                matches!(&r, Err(Error::Remote(e)) if e.code == ErrorCode::Internal),
                "{r:?}"
            );
        } else {
            assert_eq!(r.unwrap().n, i as u64);
        }
    }
    let ok: Done = req.request(&work(4, 0), WorkflowId::None).await.unwrap();
    assert_eq!(ok.n, 4);
    let stats = replyer.stats();
    assert_eq!(stats.get(Counter::TooLarge), 1);
    assert_eq!(stats.get(Counter::HandlerFailed), 6);
    assert_eq!(stats.get(Counter::Replied), 7);
    replyer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_slow_requests_are_served_concurrently() {
    let replyer = work_replyer("127.0.0.1:0", 1, None, ReplyerOptions::default())
        .await
        .unwrap();
    let req = connect(replyer.endpoint(), Duration::from_secs(5), 0);
    // Connected and warm.
    let _: Done = req.request(&work(0, 0), WorkflowId::None).await.unwrap();
    let t = Instant::now();
    let calls = (1..=20).map(|i| {
        let req = req.clone();
        async move {
            req.request::<_, Done>(&work(i, 200), WorkflowId::None)
                .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let took = t.elapsed();
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap().n, i as u64 + 1);
    }
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(
        took < Duration::from_secs(2),
        "20 x 200 ms took {took:?}: not served concurrently"
    );
    eprintln!("20 concurrent 200 ms requests: {took:?}");
    replyer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_never_fires_before_its_time() {
    // Short timeouts, many of them: the sweeper that times requests out runs on a coarse
    // period, and none may end a request early.
    let handler = typed(|_args: Work, _meta| std::future::pending::<Result<Done, WireError>>());
    let options = ReplyerOptions {
        drain_timeout: Duration::from_millis(20),
        linger: Duration::ZERO,
        ..Default::default()
    };
    let replyer = Replyer::bind(&Address::from("127.0.0.1:0"), handler, options)
        .await
        .unwrap();
    for timeout in [Duration::from_millis(5), Duration::from_millis(20)] {
        let req = connect(replyer.endpoint(), timeout, 0);
        for i in 0..25 {
            let t = Instant::now();
            let err = req
                .request::<_, Done>(&work(i, 0), WorkflowId::None)
                .await
                .unwrap_err();
            let took = t.elapsed();
            assert!(matches!(err, Error::Timeout(_)), "{err:?}");
            assert!(
                took >= timeout,
                "a {timeout:?} timeout fired after {took:?}"
            );
            assert!(
                took < timeout + Duration::from_millis(500),
                "a {timeout:?} timeout took {took:?}"
            );
        }
        // Idle for several timeouts (the sweeper goes to sleep), then a request must still
        // time out on time: the request wakes it.
        tokio::time::sleep(timeout * 4).await;
        let t = Instant::now();
        let err = tokio::time::timeout(
            Duration::from_secs(5),
            req.request::<_, Done>(&work(99, 0), WorkflowId::None),
        )
        .await
        .expect("after an idle spell the request never timed out")
        .unwrap_err();
        let took = t.elapsed();
        assert!(matches!(err, Error::Timeout(_)), "{err:?}");
        assert!(
            took >= timeout && took < timeout + Duration::from_millis(500),
            "after an idle spell a {timeout:?} timeout took {took:?}"
        );
    }
    replyer.shutdown().await;
}
