//! A replyer served through an in-process Majordomo broker, called by a raw MDP client
//! (a DEALER speaking `mdp::proto`): handlers run as serving a request (a requester they call
//! does not retry), `workers` serve that many requests at once, and a stop sends DISCONNECT
//! (the service is gone from `mmi.service` at once, not after the heartbeat expiry).

use std::time::{Duration, Instant};

use bytes::Bytes;
use sf_connections::mdp::{self, proto, BrokerOptions, WorkerOptions};
use sf_connections::wire::{self, Reply, Request, WorkflowId};
use sf_connections::{
    typed, Address, Counter, ReplyerOptions, RequestMeta, Requester, RequesterOptions, WireError,
};
use sf_zmtp::DealerSocket;

const WAIT: Duration = Duration::from_secs(5);
const HEARTBEAT: Duration = Duration::from_millis(100);

async fn broker() -> mdp::Broker {
    mdp::Broker::bind(
        &Address::from("127.0.0.1:0"),
        BrokerOptions {
            heartbeat_interval: HEARTBEAT,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

fn worker_options(workers: usize) -> WorkerOptions {
    WorkerOptions {
        heartbeat_interval: HEARTBEAT,
        workers,
        ..Default::default()
    }
}

async fn call(sock: &mut DealerSocket, service: &str, body: Bytes) -> Vec<Bytes> {
    tokio::time::timeout(WAIT, sock.send(proto::client_request(service, [body])))
        .await
        .expect("sent in time")
        .unwrap();
    loop {
        let m = tokio::time::timeout(WAIT, sock.recv())
            .await
            .expect("a reply in time")
            .unwrap();
        let r = proto::parse_client_reply(m.frames()).unwrap();
        if r.last {
            return r.body;
        }
    }
}

fn client(ep: &str) -> DealerSocket {
    let s = DealerSocket::new();
    s.connect(ep).unwrap();
    s
}

fn envelope(args: serde_json::Value) -> Bytes {
    Bytes::from(
        wire::encode(&Request {
            args,
            workflow_id: WorkflowId::Str("wf".into()),
            traceparent: None,
        })
        .unwrap(),
    )
}

async fn mmi_until(sock: &mut DealerSocket, service: &str, want: &[u8]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = call(
            sock,
            "mmi.service",
            Bytes::copy_from_slice(service.as_bytes()),
        )
        .await;
        if r[0].as_ref() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "mmi.service {service} never {want:?}"
        );
    }
}

#[tokio::test]
async fn handlers_run_as_serving_and_a_stop_says_disconnect() {
    let b = broker().await;
    let handler = typed(|_a: serde_json::Value, _m: RequestMeta| async move {
        Ok::<_, WireError>(sf_connections::requester::is_serving())
    });
    let r = mdp::worker::serve(
        &Address::from(b.endpoint()),
        "svc",
        handler,
        ReplyerOptions::default(),
        worker_options(1),
    )
    .await
    .unwrap();
    assert!(
        r.endpoint().starts_with("mdp://127.0.0.1:"),
        "{}",
        r.endpoint()
    );
    let mut c = client(b.endpoint());
    mmi_until(&mut c, "svc", b"200").await;
    let body = call(&mut c, "svc", envelope(serde_json::json!({}))).await;
    let reply: Reply<bool> = wire::decode(&body[0]).unwrap();
    assert_eq!(reply.return_args, Some(true), "the handler ran as serving");
    assert_eq!(reply.workflow_id, WorkflowId::Str("wf".into()));
    // A last frame that is not a request envelope: answered `malformed` behind the frames
    // before it (echoed as a tag), and serving goes on.
    let m = proto::client_request("svc", [Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
    c.send(m).await.unwrap();
    let got = tokio::time::timeout(WAIT, c.recv()).await.unwrap().unwrap();
    let answer = proto::parse_client_reply(got.frames()).unwrap();
    assert_eq!(answer.body.len(), 2, "{:?}", answer.body);
    assert_eq!(answer.body[0].as_ref(), b"a", "the tag comes back first");
    let reply: Reply<()> = wire::decode(&answer.body[1]).unwrap();
    assert_eq!(
        reply.error.unwrap().code,
        sf_connections::ErrorCode::Malformed
    );
    // More than MAX_TAG_FRAMES frames before the envelope: refused as malformed, no tag.
    let mut body: Vec<Bytes> = (0..=mdp::worker::MAX_TAG_FRAMES)
        .map(|i| Bytes::from(vec![i as u8]))
        .collect();
    body.push(envelope(serde_json::json!({})));
    c.send(proto::client_request("svc", body)).await.unwrap();
    let got = tokio::time::timeout(WAIT, c.recv()).await.unwrap().unwrap();
    let answer = proto::parse_client_reply(got.frames()).unwrap();
    assert_eq!(answer.body.len(), 1, "{:?}", answer.body);
    let reply: Reply<()> = wire::decode(&answer.body[0]).unwrap();
    let e = reply.error.unwrap();
    assert_eq!(e.code, sf_connections::ErrorCode::Malformed);
    assert!(
        e.message.contains("before the request envelope"),
        "{}",
        e.message
    );
    let s = r.stats();
    assert_eq!((s.get(Counter::Received), s.get(Counter::Replied)), (3, 1));
    assert_eq!(s.get(Counter::Malformed), 2);
    // The stop sends DISCONNECT: the broker forgets the worker at once (the heartbeat
    // expiry would take 300 ms; the answer comes well before a second).
    let started = Instant::now();
    r.shutdown().await;
    mmi_until(&mut c, "svc", b"404").await;
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn workers_serve_that_many_requests_at_once() {
    let b = broker().await;
    let handler = typed(|_a: serde_json::Value, _m: RequestMeta| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok::<_, WireError>(true)
    });
    let _r = mdp::worker::serve(
        &Address::from(b.endpoint()),
        "slow",
        handler,
        ReplyerOptions::default(),
        worker_options(3),
    )
    .await
    .unwrap();
    let mut probe = client(b.endpoint());
    mmi_until(&mut probe, "slow", b"200").await;
    // Three clients at once: with three workers the three 300 ms handlers overlap. (Every
    // worker registers within a heartbeat; the first answer waits for all three to be in.)
    let ep = b.endpoint().to_owned();
    let mut first = client(&ep);
    call(&mut first, "slow", envelope(serde_json::json!({}))).await;
    let started = Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let ep = ep.clone();
            tokio::spawn(async move {
                let mut c = client(&ep);
                call(&mut c, "slow", envelope(serde_json::json!({}))).await
            })
        })
        .collect();
    for c in calls {
        let body = c.await.unwrap();
        let reply: Reply<bool> = wire::decode(&body[0]).unwrap();
        assert_eq!(reply.return_args, Some(true));
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(800),
        "three 300 ms requests on three workers took {took:?}"
    );
}

fn through(b: &mdp::Broker, service: &str, options: RequesterOptions) -> Requester {
    Requester::through_broker(&Address::from(b.endpoint()), service, options).unwrap()
}

/// Echoes `{"n": n}` back after `n` ms, so later requests overtake earlier ones.
fn delayed_echo() -> sf_connections::RawHandler {
    typed(|a: serde_json::Value, m: RequestMeta| async move {
        let n = a["n"].as_u64().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(n)).await;
        Ok::<_, WireError>(serde_json::json!({"n": n, "wf": m.workflow_id.to_string()}))
    })
}

#[tokio::test]
async fn a_requester_through_the_broker_keeps_many_requests_in_flight_matched_by_id() {
    let b = broker().await;
    let _w = mdp::worker::serve(
        &Address::from(b.endpoint()),
        "echo.delayed",
        delayed_echo(),
        ReplyerOptions::default(),
        worker_options(8),
    )
    .await
    .unwrap();
    let req = through(&b, "echo.delayed", RequesterOptions::default());
    assert!(
        req.endpoint().starts_with("mdp://127.0.0.1:") && req.endpoint().ends_with("/echo.delayed"),
        "{}",
        req.endpoint()
    );
    // 24 at once, slowest first: replies come back out of order, each to its caller.
    let started = Instant::now();
    let calls: Vec<_> = (0..24u64)
        .map(|i| {
            let req = req.clone();
            let n = (24 - i) * 10;
            tokio::spawn(async move {
                let wf = WorkflowId::Str(format!("wf-{i}"));
                let v: serde_json::Value =
                    req.request(&serde_json::json!({"n": n}), wf).await.unwrap();
                (i, n, v)
            })
        })
        .collect();
    for c in calls {
        let (i, n, v) = c.await.unwrap();
        assert_eq!(v["n"], serde_json::json!(n), "{v}");
        assert_eq!(v["wf"], serde_json::json!(format!("wf-{i}")), "{v}");
    }
    // Eight workers at once: far less than the 3 s the requests take one after another.
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    let s = req.stats();
    assert_eq!((s.get(Counter::Sent), s.get(Counter::Received)), (24, 24));
    assert_eq!(s.get(Counter::Malformed), 0);
}

#[tokio::test]
async fn a_service_nobody_serves_is_a_framework_timeout_from_the_broker_not_a_hang() {
    let b = mdp::Broker::bind(
        &Address::from("127.0.0.1:0"),
        BrokerOptions {
            heartbeat_interval: HEARTBEAT,
            request_timeout: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let req = through(
        &b,
        "nobody.here",
        RequesterOptions {
            timeout: Duration::from_secs(5),
            ..Default::default()
        },
    );
    let started = Instant::now();
    let err = req
        .request::<_, serde_json::Value>(&serde_json::json!({}), WorkflowId::Str("wf-x".into()))
        .await
        .unwrap_err();
    match err {
        sf_connections::Error::Remote(e) => {
            assert_eq!(e.code, sf_connections::ErrorCode::Timeout, "{e:?}");
            assert!(e.message.starts_with("broker: "), "{}", e.message);
        }
        other => panic!("expected the broker's timeout reply, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_worker_that_dies_holding_the_request_is_replaced_and_the_caller_answered_once() {
    let b = broker().await;
    // A raw MDP worker that registers, takes the request, and goes away without replying.
    let mut doomed = DealerSocket::new();
    doomed.connect(b.endpoint()).unwrap();
    doomed.send(proto::worker_ready("flaky")).await.unwrap();
    let mut probe = client(b.endpoint());
    mmi_until(&mut probe, "flaky", b"200").await;
    let req = through(&b, "flaky", RequesterOptions::default());
    let call = {
        let req = req.clone();
        tokio::spawn(async move {
            req.request::<_, serde_json::Value>(&serde_json::json!({"n": 1}), WorkflowId::None)
                .await
        })
    };
    // The request reaches the doomed worker (skipping heartbeats), which then closes.
    loop {
        let m = tokio::time::timeout(WAIT, doomed.recv())
            .await
            .expect("a request")
            .unwrap();
        if let Ok(proto::ToWorker::Request { body, .. }) = proto::parse_to_worker(m.frames()) {
            assert_eq!(body.len(), 3, "[id, \"\", envelope]: {body:?}");
            assert_eq!(body[0].len(), 8);
            assert!(body[1].is_empty());
            break;
        }
    }
    doomed.close().await;
    // A framework worker comes; the broker gives it the dead worker's request.
    let _w = mdp::worker::serve(
        &Address::from(b.endpoint()),
        "flaky",
        delayed_echo(),
        ReplyerOptions::default(),
        worker_options(1),
    )
    .await
    .unwrap();
    let v = tokio::time::timeout(WAIT, call)
        .await
        .expect("answered in time")
        .unwrap()
        .unwrap();
    assert_eq!(v["n"], serde_json::json!(1));
    assert_eq!(req.stats().get(Counter::Received), 1);
    assert_eq!(
        req.stats().get(Counter::Retries),
        0,
        "the broker re-dispatched, not the caller"
    );
}

#[tokio::test]
async fn a_lost_broker_fails_requests_at_once_and_a_restarted_one_serves_again() {
    let b = broker().await;
    let ep = b.endpoint().to_owned();
    let hold = std::sync::Arc::new(tokio::sync::Notify::new());
    let held = hold.clone();
    let handler = typed(move |a: serde_json::Value, _m: RequestMeta| {
        let held = held.clone();
        async move {
            if a["hold"] == serde_json::json!(true) {
                held.notified().await;
            }
            Ok::<_, WireError>(a)
        }
    });
    let _w = mdp::worker::serve(
        &Address::from(ep.as_str()),
        "svc",
        handler,
        ReplyerOptions::default(),
        worker_options(2),
    )
    .await
    .unwrap();
    let req = Requester::through_broker(
        &Address::from(ep.as_str()),
        "svc",
        RequesterOptions {
            timeout: Duration::from_secs(5),
            ..Default::default()
        },
    )
    .unwrap();
    let v: serde_json::Value = req
        .request(&serde_json::json!({"a": 1}), WorkflowId::None)
        .await
        .unwrap();
    assert_eq!(v["a"], 1);
    // A request held by the worker when the broker goes: it fails now, not at its timeout.
    let held_call = {
        let req = req.clone();
        tokio::spawn(async move {
            req.request::<_, serde_json::Value>(
                &serde_json::json!({"hold": true}),
                WorkflowId::None,
            )
            .await
        })
    };
    let deadline = Instant::now() + WAIT;
    while req.stats().get(Counter::Sent) < 2 {
        assert!(Instant::now() < deadline, "the held request was never sent");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lost_at = Instant::now();
    b.shutdown().await;
    let err = tokio::time::timeout(WAIT, held_call)
        .await
        .expect("failed in time")
        .unwrap()
        .unwrap_err();
    assert!(
        lost_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        lost_at.elapsed()
    );
    assert!(matches!(err, sf_connections::Error::Socket(_)), "{err:?}");
    hold.notify_waiters();
    // The broker back on the same address: the worker registers again (DISCONNECT or its
    // silence limit), the requester reconnects by itself, and calls succeed again.
    let _b2 = mdp::Broker::bind(
        &Address::from(ep.as_str()),
        BrokerOptions {
            heartbeat_interval: HEARTBEAT,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match req
            .request::<_, serde_json::Value>(&serde_json::json!({"a": 2}), WorkflowId::None)
            .await
        {
            Ok(v) => {
                assert_eq!(v["a"], 2);
                break;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "no answer after the restart: {e:?}"
            ),
        }
    }
}

/// `at_most_once`: such a request's handler starts only after the worker's PARTIAL and its
/// `mmi.service` probe went through the broker (the caller, a framework requester, counts
/// the PARTIAL and drops it); other requests start at once. `on_registered` hears each
/// worker once it is known to the broker.
#[tokio::test]
async fn at_most_once_requests_start_after_the_broker_has_their_partial() {
    let b = broker().await;
    let registered = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = registered.clone();
    let options = WorkerOptions {
        at_most_once: Some(mdp::RequestFilter(std::sync::Arc::new(
            |envelope: &Bytes| {
                wire::decode::<Request<serde_json::Value>>(envelope)
                    .is_ok_and(|r| r.args["once"] == serde_json::json!(true))
            },
        ))),
        on_registered: Some(mdp::RegisteredHook(std::sync::Arc::new(move |i| {
            seen.lock().unwrap().push(i)
        }))),
        ..worker_options(2)
    };
    let _w = mdp::worker::serve(
        &Address::from(b.endpoint()),
        "once",
        delayed_echo(),
        ReplyerOptions::default(),
        options,
    )
    .await
    .unwrap();
    let req = through(&b, "once", RequesterOptions::default());
    let v: serde_json::Value = req
        .request(&serde_json::json!({"n": 1, "once": true}), WorkflowId::None)
        .await
        .unwrap();
    assert_eq!(v["n"], 1);
    assert_eq!(
        req.stats().get(Counter::Partials),
        1,
        "the PARTIAL came first"
    );
    let v: serde_json::Value = req
        .request(&serde_json::json!({"n": 2}), WorkflowId::None)
        .await
        .unwrap();
    assert_eq!(v["n"], 2);
    assert_eq!(
        req.stats().get(Counter::Partials),
        1,
        "no PARTIAL for the others"
    );
    let deadline = Instant::now() + WAIT;
    while registered.lock().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            registered.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut got = registered.lock().unwrap().clone();
    got.sort_unstable();
    got.dedup();
    assert_eq!(got, [0, 1]);
}

/// The broker as a CURVE server: a worker and a requester that are CURVE clients with
/// authorized keys work through it; a requester with an unknown key and a NULL one are
/// refused at the handshake (counted by the broker), and their requests time out instead of
/// reaching the worker.
#[tokio::test]
async fn a_curve_broker_serves_authorized_workers_and_clients_only() {
    use sf_connections::security::{Authorizer, KeyPair, Security};
    let broker_pair = KeyPair::generate();
    let (worker_pair, client_pair, stranger) = (
        KeyPair::generate(),
        KeyPair::generate(),
        KeyPair::generate(),
    );
    let b = mdp::Broker::bind(
        &Address::from("127.0.0.1:0"),
        BrokerOptions {
            heartbeat_interval: HEARTBEAT,
            security: Security::curve_server(
                broker_pair.secret.clone(),
                Authorizer::allow_list([worker_pair.public, client_pair.public]),
            ),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let client = |pair: &KeyPair| Security::curve_client(broker_pair.public, pair.clone());
    let w = mdp::worker::serve(
        &Address::from(b.endpoint()),
        "secret.echo",
        delayed_echo(),
        ReplyerOptions {
            security: client(&worker_pair),
            ..Default::default()
        },
        worker_options(1),
    )
    .await
    .unwrap();
    let options = |security, timeout| RequesterOptions {
        security,
        timeout,
        ..Default::default()
    };
    let allowed = through(&b, "secret.echo", options(client(&client_pair), WAIT));
    // The worker registers within a heartbeat; a request before that waits in the queue.
    let v: serde_json::Value = allowed
        .request(&serde_json::json!({"n": 3}), WorkflowId::None)
        .await
        .unwrap();
    assert_eq!(v["n"], 3);
    for (who, security) in [("unknown key", client(&stranger)), ("NULL", Security::Null)] {
        let r = through(
            &b,
            "secret.echo",
            options(security, Duration::from_millis(500)),
        );
        let err = r
            .request::<_, serde_json::Value>(&serde_json::json!({"n": 1}), WorkflowId::None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, sf_connections::Error::Timeout(_)),
            "the {who} requester got {err:?}"
        );
    }
    assert!(
        b.stats().get(Counter::AuthFailures) >= 2,
        "refusals counted: {}",
        b.stats().get(Counter::AuthFailures)
    );
    assert_eq!(
        w.stats().get(Counter::Replied),
        1,
        "only the allowed request was served"
    );
}
