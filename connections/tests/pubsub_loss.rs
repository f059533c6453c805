//! Loss on a plain (no credit) publish/subscribe stream is never silent: every message a
//! framework publisher sends after the first one a subscriber received is either delivered or
//! counted in the subscriber's `lost` counter.
//!
//! Its own test binary, so that these heavier tests do not share the two cores with others.
//!
//! Since the project's own transport, a subscriber that falls behind costs the publisher only
//! that subscriber's bounded queue (`send_hwm` messages): past it, it misses messages, which
//! it counts as `lost`. Whether a reader that is merely slow falls that far behind is a
//! matter of scheduling, so the flood test checks the accounting whatever the loss; the
//! bus-restart test makes loss certain, and `slow_subscriber.rs` stops a reader outright.

mod support;

use std::time::{Duration, Instant};

use serde::Serialize;
use sf_connections::{
    Address, BusProxy, Counter, Error, Publisher, PublisherOptions, Subscriber, SubscriberOptions,
    WorkflowId,
};
use support::{port_of, retry};

#[derive(Serialize)]
struct Marker {
    end: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_falls_behind_accounts_for_every_message() {
    const FLOOD: u64 = 200_000;
    let publisher = Publisher::start(&Address::from("127.0.0.1:0"), PublisherOptions::default())
        .await
        .unwrap();
    let mut sub = Subscriber::start(
        &Address::from(publisher.endpoint()),
        SubscriberOptions::default(),
    )
    .await
    .unwrap();

    // Warm up: publish until the first message arrives (the subscription is then in place).
    let mut published = 0u64;
    let start = Instant::now();
    let first = loop {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no message arrived within 5 s"
        );
        publisher
            .publish(&Marker { end: 0 }, &WorkflowId::None)
            .await
            .unwrap();
        published += 1;
        if let Ok(d) = sub.next_timeout(Duration::from_millis(20)).await {
            break d;
        }
    };
    let (first_seq, pub_id) = first.seq.unwrap();

    // The consumer does not read while the publisher sends far more than the queues hold.
    let t = Instant::now();
    for n in 0..FLOOD {
        publisher.publish(&n, &WorkflowId::None).await.unwrap();
    }
    published += FLOOD;
    let flood_took = t.elapsed();

    // Now read everything. To know the end has been reached, publish an end marker whenever
    // the stream goes quiet, until the newest one arrives: nothing is in flight after it. One
    // task publishes, so the newest message's sequence number is the number published.
    let mut delivered_here = 1u64; // `first`
    let mut last_seq = first_seq;
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "stream did not end: {:?}",
            sub.stats().snapshot()
        );
        match sub.next_timeout(Duration::from_millis(50)).await {
            Ok(d) => {
                let (seq, id) = d.seq.unwrap();
                assert_eq!(id, pub_id, "one publisher");
                assert!(seq > last_seq, "out of order: {seq} after {last_seq}");
                last_seq = seq;
                delivered_here += 1;
                if seq == published {
                    break;
                }
            }
            Err(Error::Timeout(_)) => {
                publisher
                    .publish(&Marker { end: published }, &WorkflowId::None)
                    .await
                    .unwrap();
                published += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let stats = sub.stats();
    let (delivered, lost) = (stats.get(Counter::Delivered), stats.get(Counter::Lost));
    assert_eq!(publisher.stats().get(Counter::Sent), published);
    assert_eq!(delivered, delivered_here);
    // Loss is never silent: every message published after the first one received is either
    // delivered or counted lost (warm-ups before `first_seq` predate the subscription).
    assert_eq!(
        delivered + lost,
        published - (first_seq - 1),
        "delivered {delivered}, lost {lost}"
    );
    assert_eq!(stats.get(Counter::Duplicates), 0);
    eprintln!(
        "flood of {FLOOD}: published in {flood_took:?}, delivered {delivered}, lost {lost}, total {:?}",
        t.elapsed()
    );
}

/// Reads until the message numbered `published` (the newest) arrives, publishing an end marker
/// whenever the stream goes quiet. Returns the number of messages read and the updated count
/// of messages published.
async fn read_to_the_end(
    publisher: &Publisher,
    sub: &mut Subscriber,
    mut published: u64,
    last_seq: &mut u64,
) -> (u64, u64) {
    let mut read = 0;
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "stream did not end: {:?}",
            sub.stats().snapshot()
        );
        match sub.next_timeout(Duration::from_millis(50)).await {
            Ok(d) => {
                let (seq, _) = d.seq.unwrap();
                assert!(seq > *last_seq, "out of order: {seq} after {last_seq}");
                *last_seq = seq;
                read += 1;
                if seq == published {
                    return (read, published);
                }
            }
            Err(Error::Timeout(_)) => {
                publisher
                    .publish(&Marker { end: published }, &WorkflowId::None)
                    .await
                    .unwrap();
                published += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_lost_while_the_bus_restarts_are_counted() {
    let any = Address::from("127.0.0.1:0");
    let proxy = BusProxy::bind(&any, &any).await.unwrap();
    let (pub_port, sub_port) = (
        port_of(proxy.publishers_endpoint()),
        port_of(proxy.subscribers_endpoint()),
    );
    let publisher = Publisher::start(
        &Address::from(proxy.publishers_endpoint()),
        PublisherOptions {
            is_x_pub: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut sub = Subscriber::start(
        &Address::from(proxy.subscribers_endpoint()),
        SubscriberOptions::default(),
    )
    .await
    .unwrap();

    // A steady stream, one message a millisecond, from before the restart until after it.
    let stop = tokio_util::sync::CancellationToken::new();
    let producer = tokio::spawn({
        let (publisher, stop) = (publisher.clone(), stop.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let mut n = 0u64;
            while !stop.is_cancelled() {
                tick.tick().await;
                publisher.publish(&n, &WorkflowId::None).await.unwrap();
                n += 1;
            }
            n
        }
    });
    let first = sub
        .next_timeout(Duration::from_secs(5))
        .await
        .expect("the stream flows through the bus");
    let (first_seq, pub_id) = first.seq.unwrap();
    let mut last_seq = first_seq;
    for _ in 0..20 {
        last_seq = sub
            .next_timeout(Duration::from_secs(2))
            .await
            .unwrap()
            .seq
            .unwrap()
            .0;
    }
    assert_eq!(
        sub.stats().get(Counter::Lost),
        0,
        "no loss before the restart"
    );

    proxy.shutdown().await;
    let (publishers_side, subscribers_side) = (
        Address::from(format!("127.0.0.1:{pub_port}")),
        Address::from(format!("127.0.0.1:{sub_port}")),
    );
    let (proxy, attempts) = retry("rebinding the bus", Duration::from_secs(3), || {
        BusProxy::bind(&publishers_side, &subscribers_side)
    })
    .await;

    // The stream comes back by itself (publisher and subscriber both reconnect), with a gap.
    let start = Instant::now();
    let mut delivered_here = 21u64; // `first` and the 20 after it
    let resumed_at = loop {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the stream did not resume: {:?}",
            sub.stats().snapshot()
        );
        let d = sub
            .next_timeout(Duration::from_secs(3))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "the stream did not resume: {e}; publisher {:?}, proxy {:?}, subscriber {:?}",
                    publisher.stats().snapshot(),
                    proxy.stats().snapshot(),
                    sub.stats().snapshot()
                )
            });
        let (seq, id) = d.seq.unwrap();
        assert_eq!(id, pub_id, "the same publisher, so the same sequence");
        assert!(seq > last_seq);
        delivered_here += 1;
        let gap = seq > last_seq + 1;
        last_seq = seq;
        if gap {
            break seq;
        }
    };
    // And flows on without further loss.
    let lost_in_restart = sub.stats().get(Counter::Lost);
    for _ in 0..50 {
        let seq = sub
            .next_timeout(Duration::from_secs(2))
            .await
            .unwrap()
            .seq
            .unwrap()
            .0;
        assert_eq!(seq, last_seq + 1, "no gap after the stream resumed");
        last_seq = seq;
        delivered_here += 1;
    }
    assert_eq!(sub.stats().get(Counter::Lost), lost_in_restart);
    stop.cancel();
    let published = producer.await.unwrap();
    let (read, published) = read_to_the_end(&publisher, &mut sub, published, &mut last_seq).await;
    delivered_here += read;

    let stats = sub.stats();
    let (delivered, lost) = (stats.get(Counter::Delivered), stats.get(Counter::Lost));
    assert!(
        lost > 0,
        "the restart lost messages and the subscriber knows it"
    );
    assert_eq!(delivered, delivered_here);
    assert_eq!(
        delivered + lost,
        published - (first_seq - 1),
        "delivered {delivered}, lost {lost}"
    );
    assert!(
        publisher.stats().get(Counter::Reconnects) >= 1,
        "{:?}",
        publisher.stats().snapshot()
    );
    eprintln!(
        "bus restart: rebind attempts {attempts}, resumed at seq {resumed_at}, delivered {delivered}, lost {lost}, published {published}"
    );
    proxy.shutdown().await;
}
