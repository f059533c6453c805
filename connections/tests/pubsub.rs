//! Publish/subscribe over real sockets on 127.0.0.1: exact topics, a binding subscriber,
//! reconnection after a publisher restart, loss that is counted rather than silent, and the
//! credit window that makes a stream lossless.
//!
//! No test sleeps to let subscriptions settle: publishers repeat a warm-up message until the
//! first one arrives, bounded in time.

mod support;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sf_connections::wire::{self, Publish};
use sf_connections::{
    Address, BusProxy, Counter, CreditOptions, Error, Publisher, PublisherOptions, PublisherProbe,
    Subscriber, SubscriberOptions, WorkflowId,
};
use support::{port_of, retry};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Msg {
    /// What the sender says the topic is ("" for none).
    topic: String,
    phase: String,
    n: u64,
}

fn msg(topic: &str, phase: &str, n: u64) -> Msg {
    Msg {
        topic: topic.into(),
        phase: phase.into(),
        n,
    }
}

fn sub_options(topic: &str) -> SubscriberOptions {
    SubscriberOptions {
        topic: topic.into(),
        ..Default::default()
    }
}

/// Publishes `warm` messages (numbered from 0) until `sub` receives one, at most `within`.
/// Returns the first message received and how many warm-ups were published.
async fn warm_up(
    publisher: &Publisher,
    sub: &mut Subscriber,
    within: Duration,
) -> (sf_connections::Delivery, u64) {
    let start = Instant::now();
    let mut n = 0;
    loop {
        publisher
            .publish(&msg(publisher.topic(), "warm", n), &WorkflowId::None)
            .await
            .unwrap();
        n += 1;
        match sub.next_timeout(Duration::from_millis(20)).await {
            Ok(d) => return (d, n),
            Err(Error::Timeout(_)) => {
                assert!(
                    start.elapsed() < within,
                    "no message arrived within {within:?} ({n} published)"
                )
            }
            Err(e) => panic!("subscriber failed: {e}"),
        }
    }
}

/// A raw frame as the Python original publishes it: `msgpack(topic) + msgpack(envelope)`.
fn raw_frame(topic: &str, m: &Msg) -> sf_zmtp::Message {
    let envelope = Publish {
        args: m.clone(),
        workflow_id: WorkflowId::None,
        seq: None,
        pub_id: None,
        traceparent: None,
    };
    sf_zmtp::Message::single(wire::encode_publish(topic, &envelope).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_match_exactly_and_the_empty_topic_gets_everything() {
    // One PUB socket sends both topics (and topic-less messages) down every connection, as a
    // Python publisher shared by several topics would.
    let publisher = sf_zmtp::PubSocket::new();
    let endpoint = publisher
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap()
        .to_string();
    let mut subs = Vec::new();
    for topic in ["TOP", "TOPIC", ""] {
        subs.push((
            topic,
            Subscriber::start(&Address::from(endpoint.as_str()), sub_options(topic))
                .await
                .unwrap(),
        ));
    }
    let mut got: Vec<Vec<Msg>> = vec![Vec::new(); subs.len()];
    let check = |topic: &str, d: &sf_connections::Delivery| -> Msg {
        let m: Msg = d.args().unwrap();
        match topic {
            "" => assert_eq!(
                d.topic.as_deref().unwrap_or(""),
                m.topic,
                "topic reported as sent"
            ),
            t => {
                assert_eq!(m.topic, t, "a {t:?} subscriber got a {:?} message", m.topic);
                assert_eq!(d.topic.as_deref(), Some(t));
            }
        }
        m
    };

    // Warm up until every subscriber has received something.
    let start = Instant::now();
    let mut n = 0;
    while got.iter().any(|g| g.is_empty()) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "subscriptions not in place after 5 s"
        );
        publisher
            .send(raw_frame("TOP", &msg("TOP", "warm", n)))
            .unwrap();
        publisher
            .send(raw_frame("TOPIC", &msg("TOPIC", "warm", n)))
            .unwrap();
        n += 1;
        for (i, (topic, sub)) in subs.iter_mut().enumerate() {
            while let Ok(d) = sub.next_timeout(Duration::from_millis(10)).await {
                got[i].push(check(topic, &d));
            }
        }
    }

    // Every subscription is in place: now count exactly.
    for k in 0..10 {
        publisher
            .send(raw_frame("TOP", &msg("TOP", "main", k)))
            .unwrap();
        publisher
            .send(raw_frame("TOPIC", &msg("TOPIC", "main", k)))
            .unwrap();
    }
    publisher.send(raw_frame("", &msg("", "main", 0))).unwrap();
    let expected = [("TOP", 10), ("TOPIC", 10), ("", 21)];
    for (i, (topic, sub)) in subs.iter_mut().enumerate() {
        let want = expected[i].1;
        let mut main = got[i].iter().filter(|m| m.phase == "main").count();
        while main < want {
            let d = sub
                .next_timeout(Duration::from_secs(2))
                .await
                .unwrap_or_else(|e| panic!("{topic:?}: {e}"));
            let m = check(topic, &d);
            main += usize::from(m.phase == "main");
            got[i].push(m);
        }
        // Nothing else is on its way (all warm-ups were sent before the main messages).
        assert!(matches!(
            sub.next_timeout(Duration::from_millis(100)).await,
            Err(Error::Timeout(_))
        ));
        assert_eq!(sub.stats().get(Counter::Lost), 0);
    }
    // The empty-topic subscriber saw both topics and the topic-less message.
    let all = &got[2];
    assert!(all.iter().any(|m| m.topic == "TOP") && all.iter().any(|m| m.topic == "TOPIC"));
    assert_eq!(all.iter().filter(|m| m.topic.is_empty()).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_subscriber_receives_from_connecting_x_pub_publishers() {
    let mut sub = Subscriber::start(
        &Address::from("127.0.0.1:0"),
        SubscriberOptions {
            topic: "T".into(),
            is_binder: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let at = Address::from(sub.endpoint());
    let wanted = Publisher::start(
        &at,
        PublisherOptions {
            topic: "T".into(),
            is_x_pub: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let other = Publisher::start(
        &at,
        PublisherOptions {
            topic: "TT".into(),
            is_x_pub: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (first, warm) = warm_up(&wanted, &mut sub, Duration::from_secs(5)).await;
    assert_eq!(first.args::<Msg>().unwrap().topic, "T");
    let (_, pub_id) = first.seq.unwrap();
    // The other publisher's messages go down the same kind of connection and must be filtered.
    for n in 0..50 {
        other
            .publish(&msg("TT", "main", n), &WorkflowId::None)
            .await
            .unwrap();
        wanted
            .publish(&msg("T", "main", n), &WorkflowId::None)
            .await
            .unwrap();
    }
    let mut last_seq = first.seq.unwrap().0;
    let mut main = 0;
    while main < 50 {
        let d = sub.next_timeout(Duration::from_secs(2)).await.unwrap();
        let m: Msg = d.args().unwrap();
        assert_eq!(m.topic, "T", "{m:?} leaked through the topic filter");
        let (seq, id) = d.seq.unwrap();
        assert_eq!(
            (seq, id),
            (last_seq + 1, pub_id),
            "in order, from the one publisher"
        );
        last_seq = seq;
        main += u64::from(m.phase == "main");
    }
    assert_eq!(last_seq, warm + 50);
    assert!(matches!(
        sub.next_timeout(Duration::from_millis(100)).await,
        Err(Error::Timeout(_))
    ));
    assert_eq!(sub.stats().get(Counter::Lost), 0);
    assert!(
        other.stats().get(Counter::Sent) >= 50,
        "the other publisher did publish"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_reconnects_when_its_publisher_restarts_on_the_same_port() {
    let linger = Duration::from_millis(20);
    let first = Publisher::start(
        &Address::from("127.0.0.1:0"),
        PublisherOptions {
            topic: "R".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let port = port_of(first.endpoint());
    let mut sub = Subscriber::start(&Address::from(first.endpoint()), sub_options("R"))
        .await
        .unwrap();
    let (d, _) = warm_up(&first, &mut sub, Duration::from_secs(5)).await;
    let (_, first_id) = d.seq.unwrap();

    let t = Instant::now();
    first.shutdown(linger).await;
    let shutdown_took = t.elapsed();
    assert!(
        shutdown_took < linger + Duration::from_millis(500),
        "shutdown took {shutdown_took:?}"
    );
    // The old publisher is shut down but not dropped: shutdown alone must free the port.
    let same_port = Address::from(format!("127.0.0.1:{port}"));
    let (second, attempts) = retry(
        "rebinding the publisher's port",
        Duration::from_secs(3),
        || {
            Publisher::start(
                &same_port,
                PublisherOptions {
                    topic: "R".into(),
                    ..Default::default()
                },
            )
        },
    )
    .await;
    assert!(
        first
            .publish(&msg("R", "after", 0), &WorkflowId::None)
            .await
            .is_err(),
        "a shut-down publisher refuses"
    );

    let (d, _) = warm_up(&second, &mut sub, Duration::from_secs(5)).await;
    let (_, second_id) = d.seq.unwrap();
    assert_ne!(
        first_id, second_id,
        "the message came from the new publisher"
    );
    for n in 0..20 {
        second
            .publish(&msg("R", "main", n), &WorkflowId::None)
            .await
            .unwrap();
    }
    for n in 0..20 {
        let m: Msg = loop {
            let m: Msg = sub
                .next_timeout(Duration::from_secs(2))
                .await
                .unwrap()
                .args()
                .unwrap();
            if m.phase == "main" {
                break m;
            }
        };
        assert_eq!(m.n, n);
    }
    // A new publisher is a new sequence, not a gap in the old one.
    assert_eq!(sub.stats().get(Counter::Lost), 0);
    eprintln!("publisher restart: shutdown {shutdown_took:?}, rebind attempts {attempts}");
    second.shutdown(linger).await;
}

fn credit(window: u64, stall_timeout: Duration) -> PublisherOptions {
    PublisherOptions {
        credit: Some(CreditOptions {
            window,
            stall_timeout,
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credit_window_makes_the_stream_lossless_and_ordered() {
    // 100 windows' worth, and more than the subscriber's buffer. (The debug build moves about
    // 40,000 credit messages a second on two cores: 100,000 keeps the test near 3 s.)
    const COUNT: u64 = 100_000;
    const WINDOW: u64 = 1000;
    let publisher = Publisher::start(
        &Address::from("127.0.0.1:0"),
        credit(WINDOW, Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let options = SubscriberOptions {
        credit_window: Some(WINDOW),
        ..Default::default()
    };
    let mut sub = Subscriber::start(&Address::from(publisher.endpoint()), options)
        .await
        .unwrap();
    publisher
        .wait_for_subscribers(1, Duration::from_secs(5))
        .await
        .unwrap();

    let t = Instant::now();
    let producer = tokio::spawn({
        let publisher = publisher.clone();
        async move {
            for n in 1..=COUNT {
                publisher.publish(&n, &WorkflowId::None).await.unwrap();
            }
        }
    });
    let mut expected = 1;
    while expected <= COUNT {
        let d = sub
            .next_timeout(Duration::from_secs(3))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "stalled at {expected}: {e}; sub {:?} pub {:?}",
                    sub.stats().snapshot(),
                    publisher.stats().snapshot()
                )
            });
        let n: u64 = d.args().unwrap();
        assert_eq!(n, expected, "in order, none missing");
        assert_eq!(d.seq.unwrap().0, expected);
        // A slow consumer at first: the publisher must wait for it (never more than a window
        // ahead of what was taken), not drop.
        if expected <= 5 * WINDOW && expected % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let sent = publisher.stats().get(Counter::Sent);
            assert!(
                sent <= expected + WINDOW,
                "{sent} sent with {expected} taken: past the window"
            );
        }
        expected += 1;
    }
    tokio::time::timeout(Duration::from_secs(2), producer)
        .await
        .unwrap()
        .unwrap();
    let took = t.elapsed();
    let stats = sub.stats();
    assert_eq!(stats.get(Counter::Lost), 0);
    assert_eq!(stats.get(Counter::Delivered), COUNT);
    assert_eq!(publisher.stats().get(Counter::Sent), COUNT);
    assert!(
        publisher.stats().get(Counter::CreditWaits) > 0,
        "the window held the publisher back"
    );
    eprintln!(
        "credit window: {COUNT} in {took:?}, {:?}",
        publisher.stats().snapshot()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_credit_subscriber_does_not_block_the_publisher_forever() {
    let stall = Duration::from_millis(400);
    let publisher = Publisher::start(&Address::from("127.0.0.1:0"), credit(100, stall))
        .await
        .unwrap();
    let options = SubscriberOptions {
        credit_window: Some(100),
        ..Default::default()
    };
    let sub = Subscriber::start(&Address::from(publisher.endpoint()), options)
        .await
        .unwrap();
    publisher
        .wait_for_subscribers(1, Duration::from_secs(5))
        .await
        .unwrap();
    drop(sub);

    // Far more than one window: the publisher must wait at most about one stall timeout.
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), async {
        for n in 0..1_000u64 {
            publisher.publish(&n, &WorkflowId::None).await.unwrap();
        }
    })
    .await
    .expect("the publisher stayed blocked on a subscriber that is gone");
    // Everything queued is sent once the silent subscriber is dropped from the window.
    support::wait_until("all 1000 sent", Duration::from_secs(3), || {
        publisher.stats().get(Counter::Sent) == 1000
    })
    .await;
    let took = t.elapsed();
    assert!(took < stall * 3 + Duration::from_secs(1), "took {took:?}");
    let stats = publisher.stats();
    assert!(
        stats.get(Counter::CreditWaits) > 0,
        "it did wait on the window: {:?}",
        stats.snapshot()
    );
    // The window no longer holds it. (`dropped` counts it, and may also count messages the
    // transport dropped for its connection before that connection was seen to close.)
    assert_eq!(
        *publisher.subscriber_changes().borrow(),
        0,
        "the silent subscriber was dropped from the window"
    );
    assert!(stats.get(Counter::Dropped) >= 1, "{:?}", stats.snapshot());
    // A new subscriber is registered and served afterwards.
    let options = SubscriberOptions {
        credit_window: Some(100),
        ..Default::default()
    };
    let mut sub = Subscriber::start(&Address::from(publisher.endpoint()), options)
        .await
        .unwrap();
    publisher
        .wait_for_subscribers(1, Duration::from_secs(5))
        .await
        .unwrap();
    for n in 0..500u64 {
        publisher.publish(&n, &WorkflowId::None).await.unwrap();
    }
    for n in 0..500u64 {
        assert_eq!(
            sub.next_timeout(Duration::from_secs(2))
                .await
                .unwrap()
                .args::<u64>()
                .unwrap(),
            n
        );
    }
    assert_eq!(sub.stats().get(Counter::Lost), 0);
    eprintln!("credit stall: publisher went on after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_proxy_carries_x_pub_publishers_to_subscribers_with_exact_topics() {
    let any = Address::from("127.0.0.1:0");
    let proxy = BusProxy::bind(&any, &any).await.unwrap();
    let to_bus = Address::from(proxy.publishers_endpoint());
    let from_bus = Address::from(proxy.subscribers_endpoint());
    let mut publishers = Vec::new();
    for topic in ["TOP", "TOPIC", ""] {
        let options = PublisherOptions {
            topic: topic.into(),
            is_x_pub: true,
            ..Default::default()
        };
        publishers.push(Publisher::start(&to_bus, options).await.unwrap());
    }
    let mut subs = Vec::new();
    for topic in ["TOP", "TOPIC", ""] {
        subs.push(
            Subscriber::start(&from_bus, sub_options(topic))
                .await
                .unwrap(),
        );
    }

    // Warm up: every publisher publishes until the catch-all subscriber has heard from it,
    // and the topic subscribers have heard from theirs.
    let start = Instant::now();
    let mut heard = [[false; 3]; 3]; // [subscriber][publisher]
    let wanted = |s: usize, p: usize| s == 2 || s == p;
    let mut n = 0;
    while (0..3).any(|s| (0..3).any(|p| wanted(s, p) && !heard[s][p])) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "bus not carrying after 5 s: {heard:?}"
        );
        for p in &publishers {
            p.publish(&msg(p.topic(), "warm", n), &WorkflowId::None)
                .await
                .unwrap();
        }
        n += 1;
        for (s, sub) in subs.iter_mut().enumerate() {
            while let Ok(d) = sub.next_timeout(Duration::from_millis(10)).await {
                let m: Msg = d.args().unwrap();
                let p = ["TOP", "TOPIC", ""]
                    .iter()
                    .position(|t| *t == m.topic)
                    .unwrap();
                assert!(wanted(s, p), "subscriber {s} got a {:?} message", m.topic);
                heard[s][p] = true;
            }
        }
    }

    // Now exact counts.
    for k in 0..20 {
        for p in &publishers {
            p.publish(&msg(p.topic(), "main", k), &WorkflowId::None)
                .await
                .unwrap();
        }
    }
    for (s, sub) in subs.iter_mut().enumerate() {
        let want = if s == 2 { 60 } else { 20 };
        let mut got = 0;
        while got < want {
            let d = sub.next_timeout(Duration::from_secs(2)).await.unwrap();
            let m: Msg = d.args().unwrap();
            let p = ["TOP", "TOPIC", ""]
                .iter()
                .position(|t| *t == m.topic)
                .unwrap();
            assert!(wanted(s, p), "subscriber {s} got a {:?} message", m.topic);
            got += usize::from(m.phase == "main");
        }
        assert!(matches!(
            sub.next_timeout(Duration::from_millis(100)).await,
            Err(Error::Timeout(_))
        ));
        assert_eq!(sub.stats().get(Counter::Lost), 0);
    }
    assert!(proxy.stats().get(Counter::Received) >= 60);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credit_window_works_through_the_bus_proxy() {
    const COUNT: u64 = 20_000;
    let any = Address::from("127.0.0.1:0");
    let proxy = BusProxy::bind(&any, &any).await.unwrap();
    let mut options = credit(500, Duration::from_secs(5));
    options.is_x_pub = true;
    let publisher = Publisher::start(&Address::from(proxy.publishers_endpoint()), options)
        .await
        .unwrap();
    let sub_options = SubscriberOptions {
        credit_window: Some(500),
        ..Default::default()
    };
    let mut sub = Subscriber::start(&Address::from(proxy.subscribers_endpoint()), sub_options)
        .await
        .unwrap();
    // The subscriber's hello travels up through the proxy and registers it.
    publisher
        .wait_for_subscribers(1, Duration::from_secs(5))
        .await
        .unwrap();
    let producer = tokio::spawn({
        let publisher = publisher.clone();
        async move {
            for n in 1..=COUNT {
                publisher.publish(&n, &WorkflowId::None).await.unwrap();
            }
        }
    });
    for n in 1..=COUNT {
        let d = sub.next_timeout(Duration::from_secs(3)).await.unwrap();
        assert_eq!(d.args::<u64>().unwrap(), n);
        if n <= 2_000 && n % 100 == 0 {
            let sent = publisher.stats().get(Counter::Sent);
            assert!(
                sent <= n + 500,
                "{sent} sent with {n} taken: past the window"
            );
        }
    }
    tokio::time::timeout(Duration::from_secs(2), producer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sub.stats().get(Counter::Lost), 0);
    assert!(publisher.stats().get(Counter::CreditWaits) > 0);
    proxy.shutdown().await;
}

/// The credit messages (pub_id, acked) a raw XPUB receives within `for_how_long`.
async fn acks_seen(xpub: &mut sf_zmtp::XPubSocket, for_how_long: Duration) -> Vec<(u64, u64)> {
    let mut seen = Vec::new();
    let until = Instant::now() + for_how_long;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let Ok(Ok(m)) = tokio::time::timeout(left, xpub.recv()).await else {
            break;
        };
        let Some(frame) = m.first() else { continue };
        if frame.first() != Some(&0x02) {
            continue; // a subscription or a keepalive
        }
        let v: rmpv::Value = wire::decode(&frame[1..]).unwrap();
        let field = |k: &str| {
            v.as_map()
                .and_then(|m| m.iter().find(|(key, _)| key.as_str() == Some(k)))
                .and_then(|(_, val)| val.as_u64())
        };
        if let (Some(p), Some(a)) = (field("pub_id"), field("acked")) {
            seen.push((p, a));
        }
    }
    seen
}

#[tokio::test]
async fn a_credit_subscriber_repeats_its_last_ack_so_a_lost_one_cannot_stall_the_stream() {
    // A hand-written credit publisher (raw XPUB) that can watch what comes upstream.
    let mut xpub = sf_zmtp::XPubSocket::new();
    let ep = xpub.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
    let mut sub = Subscriber::start(
        &Address::from(ep.as_str()),
        SubscriberOptions {
            credit_window: Some(8),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let frame = |n: u64| {
        let env = Publish {
            args: n,
            workflow_id: WorkflowId::None,
            seq: Some(n),
            pub_id: Some(77),
            traceparent: None,
        };
        sf_zmtp::Message::single(wire::encode(&env).unwrap())
    };
    // Publish until the subscriber is connected and has taken three messages.
    let mut sent = 0;
    let mut taken = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while taken < 3 {
        assert!(
            Instant::now() < deadline,
            "the subscriber took {taken} messages"
        );
        sent += 1;
        xpub.send(frame(sent)).unwrap();
        // The XPUB applies a subscription as it reads it: read what came up meanwhile.
        acks_seen(&mut xpub, Duration::from_millis(10)).await;
        if let Ok(d) = sub.next_timeout(Duration::from_millis(50)).await {
            taken += 1;
            assert_eq!(d.seq.map(|(_, p)| p), Some(77));
        }
    }
    // Nothing more is published: the last ack (for the message before the last taken) must
    // come again with the keepalives, every 500 ms.
    let acks = acks_seen(&mut xpub, Duration::from_millis(1_600)).await;
    let last = acks.iter().map(|(_, a)| *a).max().expect("no ack at all");
    let repeats = acks.iter().filter(|(p, a)| *p == 77 && *a == last).count();
    assert!(
        repeats >= 3,
        "ack {last} came {repeats} times in 1.6 s: {acks:?}"
    );
}

/// The bus proxy as a CURVE server of both sides (`BusProxy::bind_secured`, what
/// `service-framework -s bus --security FILE` runs): an `is_x_pub` publisher and a subscriber
/// with authorized keys talk through it; a subscriber with an unknown key and a NULL one hear
/// nothing and are counted as refused.
#[tokio::test]
async fn the_bus_proxy_over_curve_carries_only_authorized_peers() {
    use sf_connections::security::{Authorizer, KeyPair, Security};
    let bus = KeyPair::generate();
    let (publisher_pair, reader_pair, stranger) = (
        KeyPair::generate(),
        KeyPair::generate(),
        KeyPair::generate(),
    );
    let any = Address::from("127.0.0.1:0");
    let proxy = BusProxy::bind_secured(
        &any,
        &any,
        Security::curve_server(
            bus.secret.clone(),
            Authorizer::allow_list([publisher_pair.public, reader_pair.public]),
        ),
    )
    .await
    .unwrap();
    let to_bus = Address::from(proxy.publishers_endpoint());
    let from_bus = Address::from(proxy.subscribers_endpoint());
    let client = |pair: &KeyPair| Security::curve_client(bus.public, pair.clone());
    let publisher = Publisher::start(
        &to_bus,
        PublisherOptions {
            topic: "T".into(),
            is_x_pub: true,
            security: client(&publisher_pair),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let subscriber = |security| SubscriberOptions {
        security,
        ..sub_options("T")
    };
    let mut reader = Subscriber::start(&from_bus, subscriber(client(&reader_pair)))
        .await
        .unwrap();
    let mut outsider = Subscriber::start(&from_bus, subscriber(client(&stranger)))
        .await
        .unwrap();
    let mut plain = Subscriber::start(&from_bus, subscriber(Security::Null))
        .await
        .unwrap();

    // Publish until the authorized reader hears (a joiner may miss the first), bounded.
    let start = Instant::now();
    let mut n = 0;
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "nothing through the CURVE bus after 5 s"
        );
        publisher
            .publish(&msg("T", "warm", n), &WorkflowId::None)
            .await
            .unwrap();
        n += 1;
        if let Ok(d) = reader.next_timeout(Duration::from_millis(20)).await {
            let m: Msg = d.args().unwrap();
            assert_eq!(m.topic, "T");
            break;
        }
    }
    for (who, sub) in [("unknown key", &mut outsider), ("NULL", &mut plain)] {
        assert!(
            matches!(
                sub.next_timeout(Duration::from_millis(200)).await,
                Err(Error::Timeout(_))
            ),
            "the {who} subscriber heard something"
        );
    }
    assert!(
        proxy.stats().get(Counter::AuthFailures) >= 2,
        "refusals counted: {}",
        proxy.stats().get(Counter::AuthFailures)
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_traced_publish_carries_its_traceparent_beside_seq_and_an_untraced_one_none() {
    let publisher = Publisher::start(
        &Address::from("127.0.0.1:0"),
        PublisherOptions {
            topic: "traced".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut sub = Subscriber::start(&Address::from(publisher.endpoint()), sub_options("traced"))
        .await
        .unwrap();
    publisher
        .wait_for_subscribers(1, Duration::from_secs(5))
        .await
        .unwrap();
    let tp = sf_connections::TraceParent::new_root();
    let wf = WorkflowId::Str("wf-t".into());
    publisher
        .publish_traced(&msg("traced", "t", 1), &wf, Some(tp))
        .await
        .unwrap();
    publisher
        .publish(&msg("traced", "t", 2), &wf)
        .await
        .unwrap();
    for (n, expected) in [(1, Some(tp)), (2, None)] {
        let d = sub.next_timeout(Duration::from_secs(5)).await.unwrap();
        assert_eq!(d.workflow_id, wf);
        assert_eq!(d.seq.map(|(seq, _)| seq), Some(n));
        let env: Publish<Msg> = d.decode().unwrap();
        assert_eq!(env.args, msg("traced", "t", n));
        assert_eq!(env.traceparent, expected);
        // As a Python subscriber sees it: one map, the extra key beside seq and pub_id.
        let map: std::collections::BTreeMap<String, serde::de::IgnoredAny> =
            wire::decode(&d.body).unwrap();
        let keys: Vec<&str> = map.keys().map(String::as_str).collect();
        let mut want = vec!["args", "pub_id", "seq", "workflow_id"];
        if expected.is_some() {
            want.push("traceparent");
            want.sort_unstable();
        }
        assert_eq!(keys, want);
    }
}

/// The bridge's liveness of a publisher with no control endpoint: the probe's count follows
/// the connection (up, gone with the publisher, back when one binds the address again), and
/// it subscribes to nothing, so nothing is ever sent to it.
#[tokio::test]
async fn a_publisher_probe_follows_its_publisher_and_subscribes_to_nothing() {
    let lim = Duration::from_secs(5);
    let mut xpub = sf_zmtp::XPubSocket::new();
    let ep = xpub.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
    let port = port_of(&ep);
    let addr = Address::from(format!("127.0.0.1:{port}"));
    let probe = PublisherProbe::start(&addr, sf_zmtp::Security::Null).unwrap();
    let mut up = probe.up();
    tokio::time::timeout(lim, up.wait_for(|n| *n == 1))
        .await
        .expect("connected within 5 s")
        .unwrap();
    // A subscriber that comes after it: the first thing the publisher's socket hears is
    // that subscriber's subscription, nothing of the probe's.
    let _sub = Subscriber::start(&addr, sub_options("T")).await.unwrap();
    let first = tokio::time::timeout(lim, xpub.recv())
        .await
        .expect("the subscription within 5 s")
        .unwrap();
    let frame = first.first().unwrap();
    assert_eq!(frame[0], 1, "a subscription: {first:?}");
    assert_eq!(&frame[1..], &wire::topic_prefix("T")[..], "{first:?}");

    // The publisher goes: the count drops; one binds the address again: it is back.
    drop(xpub);
    tokio::time::timeout(lim, up.wait_for(|n| *n == 0))
        .await
        .expect("seen gone within 5 s")
        .unwrap();
    let (_again, _) = retry("rebinding the port", Duration::from_secs(3), || async {
        let s = sf_zmtp::XPubSocket::new();
        s.bind(&format!("tcp://127.0.0.1:{port}")).await.map(|_| s)
    })
    .await;
    tokio::time::timeout(lim, up.wait_for(|n| *n == 1))
        .await
        .expect("back within 5 s")
        .unwrap();
}
