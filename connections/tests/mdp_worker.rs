//! A replyer served through an in-process Majordomo broker, called by a raw MDP client
//! (a DEALER speaking `mdp::proto`): handlers run as serving a request (a requester they call
//! does not retry), `workers` serve that many requests at once, and a stop sends DISCONNECT
//! (the service is gone from `mmi.service` at once, not after the heartbeat expiry).

use std::time::{Duration, Instant};

use bytes::Bytes;
use sf_connections::mdp::{self, proto, BrokerOptions, WorkerOptions};
use sf_connections::wire::{self, Reply, Request, WorkflowId};
use sf_connections::{typed, Address, Counter, ReplyerOptions, RequestMeta, WireError};
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
    // Two frames are not a framework request: answered `malformed`, serving goes on.
    let m = proto::client_request("svc", [Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
    c.send(m).await.unwrap();
    let got = tokio::time::timeout(WAIT, c.recv()).await.unwrap().unwrap();
    let answer = proto::parse_client_reply(got.frames()).unwrap();
    let reply: Reply<()> = wire::decode(&answer.body[0]).unwrap();
    assert_eq!(
        reply.error.unwrap().code,
        sf_connections::ErrorCode::Malformed
    );
    let s = r.stats();
    assert_eq!((s.get(Counter::Received), s.get(Counter::Replied)), (2, 1));
    assert_eq!(s.get(Counter::Malformed), 1);
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
