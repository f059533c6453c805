//! Counters that move by exactly what the test did: messages dropped on the way by a lossy
//! relay between a publisher and a service's subscriber show up as `lost` in the control
//! endpoint's `stats`, and the ones that arrived as `delivered`.

use std::time::Duration;

use serde_json::{json, Value};
use service_framework::connections::{Address, Publisher, PublisherOptions, WorkflowId};
use service_framework::prelude::*;
use service_framework::testing::{call_once, TestService};
use sf_zmtp::{XPubSocket, XSubSocket};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Tick {
    n: i64,
}

const TICKS: Subscriber<Tick> = Subscriber::new("ticks_in").topic("ticks");

const WAIT: Duration = Duration::from_secs(10);

/// Which of the relayed messages (1-based) never arrive.
const DROPPED: [usize; 3] = [3, 7, 8];
const SENT: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_dropped_by_a_relay_are_counted_lost() {
    let options = PublisherOptions {
        topic: "ticks".into(),
        ..Default::default()
    };
    let publisher = Publisher::start(&Address::from("127.0.0.1:0"), options)
        .await
        .unwrap();
    // The relay: everything from the publisher, on to its own subscribers, minus DROPPED.
    let mut upstream = XSubSocket::new();
    upstream.subscribe(b"").await;
    upstream.connect(publisher.endpoint()).unwrap();
    let mut downstream = XPubSocket::new();
    let relay_endpoint = downstream.bind("tcp://127.0.0.1:0").await.unwrap();
    let mut upstream_ready = publisher.subscriber_changes();
    tokio::time::timeout(WAIT, upstream_ready.wait_for(|n| *n >= 1))
        .await
        .expect("the relay subscribes upstream")
        .unwrap();

    let def = ServiceDef::new("ticker").subscriber(TICKS, |_tick, _ctx| async move { Ok(()) });
    let svc = TestService::builder(def)
        .address(true, "ticks_in", "subscriber", &relay_endpoint)
        .start()
        .await
        .unwrap();
    // The service's subscription reaches the relay before anything is sent.
    let subscription = tokio::time::timeout(WAIT, downstream.recv())
        .await
        .expect("the service subscribes at the relay")
        .unwrap();
    assert_eq!(subscription.first().unwrap()[0], 1, "{subscription:?}");

    let relay = tokio::spawn(async move {
        let mut seen = 0;
        while seen < SENT {
            let Ok(Ok(msg)) = tokio::time::timeout(WAIT, upstream.recv()).await else {
                break;
            };
            seen += 1;
            if !DROPPED.contains(&seen) {
                downstream.send(msg).unwrap();
            }
        }
        (seen, downstream)
    });
    for n in 1..=SENT as i64 {
        publisher
            .publish(&Tick { n }, &WorkflowId::None)
            .await
            .unwrap();
    }
    let (seen, _downstream) = relay.await.unwrap();
    assert_eq!(seen, SENT, "the relay saw every message");
    let delivered = (SENT - DROPPED.len()) as u64;
    svc.wait_for_handler("ticks_in", delivered).await.unwrap();

    let stats: Value = call_once(
        svc.control().unwrap(),
        &json!({"verb": "stats"}),
        WorkflowId::None,
        WAIT,
    )
    .await
    .unwrap();
    let ticks = &stats["connections"][0];
    assert_eq!(ticks["name"], "ticks_in", "{stats}");
    assert_eq!(ticks["delivered"], delivered, "{ticks}");
    assert_eq!(ticks["lost"], DROPPED.len() as u64, "{ticks}");
    assert_eq!(ticks["duplicates"], 0, "{ticks}");
    assert_eq!(ticks["errors"], 0, "{ticks}");
    svc.stop().await.unwrap();
}
