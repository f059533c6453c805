//! Delta and full states over real sockets: a follower converges to the out side's state
//! after starting late, after messages are dropped on the way, after the out side restarts,
//! and through the bus proxy with topics.

use std::time::Duration;

use sf_connections::wire::WorkflowId;
use sf_connections::{
    Address, BusProxy, Publisher, PublisherOptions, Subscriber, SubscriberOptions,
};
use sf_states::{
    DeltaArgs, DeltaUpdateIn, DeltaUpdateOut, FullUpdateIn, FullUpdateOut, StateMap, StateOptions,
    StateView, Value,
};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(8);

fn map(pairs: &[(&str, i64)]) -> StateMap {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect()
}

fn any() -> Address {
    Address::from("127.0.0.1:0")
}

/// Waits until the view satisfies `ok`, failing with the last view seen.
async fn wait_for(
    rx: &mut watch::Receiver<StateView>,
    ok: impl Fn(&StateView) -> bool,
) -> StateView {
    let got = tokio::time::timeout(WAIT, rx.wait_for(|v| ok(v)))
        .await
        .map(|r| r.map(|v| v.clone()));
    match got {
        Ok(Ok(v)) => v,
        _ => panic!(
            "state did not converge within {WAIT:?}; last view: {:?}",
            *rx.borrow()
        ),
    }
}

async fn out_side(opts: &StateOptions) -> DeltaUpdateOut {
    DeltaUpdateOut::start(&any(), &any(), opts).await.unwrap()
}

/// A follower of `out`, straight from its sockets.
async fn follower_of(out: &DeltaUpdateOut) -> DeltaUpdateIn {
    DeltaUpdateIn::start(
        &Address::from(out.publisher_endpoint()),
        &Address::from(out.replyer_endpoint()),
        &StateOptions::default(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_late_joiner_converges_without_waiting_for_a_change() {
    // No periodic snapshots: the joiner must get there by asking at start.
    let opts = StateOptions {
        snapshot_interval: Some(Duration::ZERO),
        ..Default::default()
    };
    let out = out_side(&opts).await;
    out.snapshot(map(&[("a", 1), ("b", 2)]), &WorkflowId::None)
        .await
        .unwrap();
    out.delta(map(&[("c", 3)]), &WorkflowId::None)
        .await
        .unwrap();
    let mut delete_b = StateMap::new();
    delete_b.insert("b".into(), Value::Nil);
    out.delta(delete_b, &WorkflowId::None).await.unwrap();

    let follower = follower_of(&out).await;
    let mut rx = follower.watch();
    let view = wait_for(&mut rx, |v| v.current_num == 3).await;
    assert_eq!(*view.state, map(&[("a", 1), ("c", 3)]));
    assert_eq!(out.current().await, (map(&[("a", 1), ("c", 3)]), 3));

    // And then follows live deltas (subscription is in place once a message arrives).
    for i in 0..200 {
        out.delta(map(&[("live", i)]), &WorkflowId::None)
            .await
            .unwrap();
        if rx.borrow().state.get("live").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (state, n) = out.current().await;
    let view = wait_for(&mut rx, |v| v.current_num == n).await;
    assert_eq!(*view.state, state);
}

#[tokio::test]
async fn a_stream_into_a_large_state_ends_with_its_last_update_in_the_view() {
    // A large state makes each view copy expensive, so while deltas stream the follower
    // publishes views less often than it applies deltas, and the view owed at the end of the
    // stream comes from its timer. No periodic snapshots: nothing else would heal a miss.
    let opts = StateOptions {
        snapshot_interval: Some(Duration::ZERO),
        ..Default::default()
    };
    let out = out_side(&opts).await;
    let keys = 20_000;
    let big: StateMap = (0..keys)
        .map(|i| (format!("k{i}"), Value::from(i)))
        .collect();
    out.snapshot(big, &WorkflowId::None).await.unwrap();
    let follower = follower_of(&out).await;
    let mut rx = follower.watch();
    wait_for(&mut rx, |v| {
        v.current_num >= 1 && v.state.len() == keys as usize
    })
    .await;
    // Live deltas until one arrives over the bus (the subscription is then in place).
    let mut probe = 0;
    loop {
        let n = out
            .delta(map(&[("probe", probe)]), &WorkflowId::None)
            .await
            .unwrap();
        if tokio::time::timeout(
            Duration::from_millis(100),
            rx.wait_for(|v| v.current_num == n),
        )
        .await
        .is_ok()
        {
            break;
        }
        probe += 1;
        assert!(probe < 50, "the follower never received a live delta");
    }
    let mut last = 0;
    for i in 0..5_000i64 {
        let key = format!("k{}", i % keys);
        let mut d = StateMap::new();
        d.insert(key, Value::from(-i));
        last = out.delta(d, &WorkflowId::None).await.unwrap();
    }
    let view = wait_for(&mut rx, |v| v.current_num == last).await;
    let (state, n) = out.current().await;
    assert_eq!(n, last);
    assert_eq!(*view.state, state, "the last view is the out side's state");
    assert_eq!(view.state.get("k4999"), Some(&Value::from(-4999)));
}

/// Forwards state publishes from `from` to a new publisher, dropping every `nth` one.
async fn lossy_relay(from: &str, nth: usize) -> (Publisher, tokio::task::JoinHandle<usize>) {
    let mut sub = Subscriber::start(&Address::from(from), SubscriberOptions::default())
        .await
        .unwrap();
    let publisher = Publisher::start(&any(), PublisherOptions::default())
        .await
        .unwrap();
    let out = publisher.clone();
    let task = tokio::spawn(async move {
        let mut dropped = 0;
        let mut i = 0usize;
        while let Ok(d) = sub.next_timeout(Duration::from_secs(3)).await {
            i += 1;
            let args: DeltaArgs = d.args().unwrap();
            if i % nth == 0 {
                dropped += 1;
                continue;
            }
            out.publish(&args, &WorkflowId::None).await.unwrap();
        }
        dropped
    });
    (publisher, task)
}

#[tokio::test]
async fn dropped_messages_are_detected_and_healed_by_snapshot() {
    let opts = StateOptions {
        snapshot_interval: Some(Duration::from_millis(200)),
        ..Default::default()
    };
    let out = out_side(&opts).await;
    let (relay, relay_task) = lossy_relay(out.publisher_endpoint(), 3).await;
    let follower = DeltaUpdateIn::start(
        &Address::from(relay.endpoint()),
        &Address::from(out.replyer_endpoint()),
        &StateOptions::default(),
    )
    .await
    .unwrap();
    let mut rx = follower.watch();
    // Make sure the chain is connected end to end before the scripted run.
    for i in 0..300 {
        out.delta(map(&[("warmup", i)]), &WorkflowId::None)
            .await
            .unwrap();
        if rx.borrow().state.contains_key("warmup") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..60 {
        out.delta(map(&[(&format!("k{}", i % 7), i)]), &WorkflowId::None)
            .await
            .unwrap();
    }
    let (state, n) = out.current().await;
    let view = wait_for(&mut rx, |v| v.current_num == n).await;
    assert_eq!(*view.state, state, "final state equals the out side's");
    assert!(
        follower.stats().get(sf_connections::Counter::Lost) > 0,
        "gaps were seen"
    );
    drop(relay);
    drop(follower);
    out.shutdown(Duration::ZERO).await;
    let dropped = relay_task.await.unwrap();
    assert!(dropped >= 20, "the relay dropped {dropped} messages");
}

#[tokio::test]
async fn a_restarted_out_side_is_followed_from_its_new_numbering() {
    let opts = StateOptions::default();
    let first = out_side(&opts).await;
    let (pub_ep, rep_ep) = (
        first.publisher_endpoint().to_owned(),
        first.replyer_endpoint().to_owned(),
    );
    for i in 0..5 {
        first
            .delta(map(&[("gen1", i)]), &WorkflowId::None)
            .await
            .unwrap();
    }
    let follower = DeltaUpdateIn::start(
        &Address::from(pub_ep.as_str()),
        &Address::from(rep_ep.as_str()),
        &opts,
    )
    .await
    .unwrap();
    let mut rx = follower.watch();
    wait_for(&mut rx, |v| v.current_num == 5).await;
    first.shutdown(Duration::ZERO).await;
    drop(first);

    // Same ports, numbering from scratch.
    let second = DeltaUpdateOut::start(
        &Address::from(pub_ep.as_str()),
        &Address::from(rep_ep.as_str()),
        &opts,
    )
    .await
    .unwrap();
    second
        .snapshot(map(&[("gen2", 1)]), &WorkflowId::None)
        .await
        .unwrap();
    for i in 0..300 {
        second
            .delta(map(&[("tick", i)]), &WorkflowId::None)
            .await
            .unwrap();
        if rx.borrow().state.contains_key("gen2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (state, n) = second.current().await;
    let view = wait_for(&mut rx, |v| {
        v.current_num == n && !v.state.contains_key("gen1")
    })
    .await;
    assert_eq!(*view.state, state);
}

#[tokio::test]
async fn states_flow_through_the_bus_proxy_with_topics() {
    let proxy = BusProxy::bind(&any(), &any()).await.unwrap();
    let topic = |t: &str| StateOptions {
        topic: t.into(),
        is_x_pub: true,
        ..Default::default()
    };
    let prices = DeltaUpdateOut::start(
        &Address::from(proxy.publishers_endpoint()),
        &any(),
        &topic("prices"),
    )
    .await
    .unwrap();
    let other = FullUpdateOut::start(
        &Address::from(proxy.publishers_endpoint()),
        &topic("prices_v2"),
    )
    .await
    .unwrap();
    let follower = DeltaUpdateIn::start(
        &Address::from(proxy.subscribers_endpoint()),
        &Address::from(prices.replyer_endpoint()),
        &StateOptions {
            topic: "prices".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let full = FullUpdateIn::start(
        &Address::from(proxy.subscribers_endpoint()),
        &StateOptions {
            topic: "prices_v2".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (mut rx, mut full_rx) = (follower.watch(), full.watch());
    for i in 0..300 {
        prices
            .delta(map(&[("btc", 100 + i)]), &WorkflowId::None)
            .await
            .unwrap();
        other
            .set(map(&[("eth", i)]), &WorkflowId::None)
            .await
            .unwrap();
        if rx.borrow().state.contains_key("btc") && full_rx.borrow().state.contains_key("eth") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (state, n) = prices.current().await;
    let view = wait_for(&mut rx, |v| v.current_num == n).await;
    assert_eq!(*view.state, state);
    assert!(
        !view.state.contains_key("eth"),
        "exact topics: prices does not see prices_v2"
    );
    let full_view = wait_for(&mut full_rx, |v| v.state.contains_key("eth")).await;
    assert!(!full_view.state.contains_key("btc"));
    assert_eq!(
        full_view.state.len(),
        1,
        "a full update replaces the whole state"
    );
}
