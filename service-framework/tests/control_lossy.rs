//! Counters that move by exactly what the test did: messages dropped on the way by a lossy
//! relay between a publisher and a service's subscriber show up as `lost` in the control
//! endpoint's `stats`, and the ones that arrived as `delivered`; an update a relay drops on
//! the way to a delta in-state is one `lost` and one `resyncs`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use service_framework::connections::{Address, Publisher, PublisherOptions, WorkflowId};
use service_framework::prelude::*;
use service_framework::states::{
    DeltaArgs, DeltaUpdateOut, StateMap, StateOptions, Value as StateValue,
};
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

const PRICES: DeltaStateIn<BTreeMap<String, i64>> = DeltaStateIn::new("prices").topic("prices");

/// An in-state's `number` and counters from the control endpoint.
async fn state_stats(control: &str) -> Value {
    let stats: Value = call_once(control, &json!({"verb": "stats"}), WorkflowId::None, WAIT)
        .await
        .unwrap();
    stats["states"][0].clone()
}

/// Polls the in-state's stats until its `number` is `n` (bounded).
async fn wait_number(control: &str, n: i64) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = state_stats(control).await;
        if s["number"] == n {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "never at {n}: {s}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_dropped_on_the_way_is_one_lost_and_one_resync() {
    let options = StateOptions {
        topic: "prices".into(),
        ..Default::default()
    };
    let any = Address::from("127.0.0.1:0");
    let out = DeltaUpdateOut::start(&any, &any, &options).await.unwrap();
    // The relay: re-publishes every update but the one carrying key "drop".
    let mut from_out = service_framework::connections::Subscriber::start(
        &Address::from(out.publisher_endpoint()),
        service_framework::connections::SubscriberOptions {
            topic: "prices".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let relay = Publisher::start(
        &any,
        PublisherOptions {
            topic: "prices".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let relay_out = relay.clone();
    let dropped = Arc::new(AtomicUsize::new(0));
    let counted = dropped.clone();
    let relay_task = tokio::spawn(async move {
        while let Ok(d) = from_out.next_timeout(WAIT).await {
            let args: DeltaArgs = d.args().unwrap();
            if args.state.contains_key("drop") {
                counted.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            relay_out.publish(&args, &WorkflowId::None).await.unwrap();
        }
    });

    let addresses = service_framework::AddressesFile::from_value(json!({"states": {"in": {
        "prices": {"subscriber": relay.endpoint(), "requester": out.replyer_endpoint()}
    }}}))
    .unwrap();
    let handle =
        service_framework::Service::new(ServiceDef::new("follower").delta_update_in(PRICES))
            .addresses(addresses)
            .run_in_background();
    let ready = handle.wait_ready_async(WAIT).await.unwrap();
    let control = ready.control().unwrap().to_owned();

    // Warm up until the chain carries updates end to end.
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        n = out
            .delta(map(&[("warmup", n + 1)]), &WorkflowId::None)
            .await
            .unwrap();
        if state_stats(&control).await["number"] == n {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the chain never carried an update"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = state_stats(&control).await;

    // One update dropped by the relay, one after it that shows the gap.
    out.delta(map(&[("drop", 1)]), &WorkflowId::None)
        .await
        .unwrap();
    let last = out
        .delta(map(&[("after", 2)]), &WorkflowId::None)
        .await
        .unwrap();
    let after = wait_number(&control, last).await;
    let moved = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert_eq!(moved("lost"), 1, "before {before}, after {after}");
    assert_eq!(moved("resyncs"), 1, "before {before}, after {after}");
    assert_eq!(moved("duplicates"), 0, "before {before}, after {after}");

    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the relay dropped exactly one update"
    );
    handle.stop_async().await.unwrap();
    relay_task.abort();
    out.shutdown(Duration::ZERO).await;
}

fn map(pairs: &[(&str, i64)]) -> StateMap {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), StateValue::from(*v)))
        .collect()
}
