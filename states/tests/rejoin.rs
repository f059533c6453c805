//! Followers rejoining an out side: a source restarted while the follower's reconnect backoff
//! runs, a subscriber that never asks for a snapshot (as Python 0.0.18's), updates made just
//! after the out side starts, deletes of keys that are not there. Real sockets, every wait
//! bounded.

use std::time::{Duration, Instant};

use sf_connections::wire::WorkflowId;
use sf_connections::{Address, Delivery, Subscriber, SubscriberOptions};
use sf_states::{
    DeltaArgs, DeltaUpdateIn, DeltaUpdateOut, StateMap, StateOptions, StateView, Value,
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

/// No periodic snapshots: what converges here must converge without them.
fn quiet_opts() -> StateOptions {
    StateOptions {
        snapshot_interval: Some(Duration::ZERO),
        ..Default::default()
    }
}

async fn wait_for(
    rx: &mut watch::Receiver<StateView>,
    within: Duration,
    ok: impl Fn(&StateView) -> bool,
) -> StateView {
    let got = tokio::time::timeout(within, rx.wait_for(|v| ok(v)))
        .await
        .map(|r| r.map(|v| v.clone()));
    match got {
        Ok(Ok(v)) => v,
        _ => panic!(
            "state did not converge within {within:?}; last view: {:?}",
            *rx.borrow()
        ),
    }
}

/// The next publish on `sub` that is a `DeltaArgs`.
async fn next_args(sub: &mut Subscriber) -> DeltaArgs {
    let d: Delivery = sub
        .next_timeout(WAIT)
        .await
        .expect("a publish within the wait");
    d.args::<DeltaArgs>().expect("a delta publish")
}

/// 1. The source stops; the follower's reconnects fail and back off; the source comes back
///    on the same ports with a new state made at once (before the follower reconnects) and
///    then stays idle. The follower must be at the new state within about a second of the
///    restart: it asks for a snapshot when its connection is re-established.
#[tokio::test]
async fn a_source_restarted_during_the_followers_backoff_is_seen_within_a_second() {
    let out = DeltaUpdateOut::start(&any(), &any(), &quiet_opts())
        .await
        .unwrap();
    let (publisher, replyer) = (
        out.publisher_endpoint().to_owned(),
        out.replyer_endpoint().to_owned(),
    );
    out.snapshot(map(&[("old", 1), ("x", 1)]), &WorkflowId::None)
        .await
        .unwrap();
    for i in 0..5 {
        out.delta(map(&[("x", i)]), &WorkflowId::None)
            .await
            .unwrap();
    }
    let follower = DeltaUpdateIn::start(
        &Address::from(publisher.as_str()),
        &Address::from(replyer.as_str()),
        &StateOptions::default(),
    )
    .await
    .unwrap();
    let mut rx = follower.watch();
    wait_for(&mut rx, WAIT, |v| v.current_num == 6).await;

    out.shutdown(Duration::from_millis(100)).await;
    drop(out);
    // Down long enough for several failed reconnects (the backoff doubles each time).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let restarted = DeltaUpdateOut::start(
        &Address::from(publisher.as_str()),
        &Address::from(replyer.as_str()),
        &StateOptions {
            wait_after_creation: Some(Duration::ZERO),
            ..quiet_opts()
        },
    )
    .await
    .unwrap();
    let t0 = Instant::now();
    restarted
        .snapshot(map(&[("new", 2)]), &WorkflowId::None)
        .await
        .unwrap();
    restarted
        .delta(map(&[("y", 3)]), &WorkflowId::None)
        .await
        .unwrap();
    let view = wait_for(&mut rx, Duration::from_secs(3), |v| {
        *v.state == map(&[("new", 2), ("y", 3)])
    })
    .await;
    let took = t0.elapsed();
    println!("restart seen after {took:?} (number {})", view.current_num);
    assert_eq!(view.current_num, 2, "the restarted source's numbering");
    assert!(
        took < Duration::from_millis(1500),
        "a restart must be seen within about a second, took {took:?}"
    );
}

/// 2. A subscriber that never asks (a plain SUB, as Python 0.0.18's in side) joins an idle
///    out side: the out side answers its subscription with a snapshot of the current state.
#[tokio::test]
async fn a_subscription_to_an_idle_source_is_answered_with_a_snapshot() {
    let out = DeltaUpdateOut::start(&any(), &any(), &quiet_opts())
        .await
        .unwrap();
    out.snapshot(map(&[("a", 1)]), &WorkflowId::None)
        .await
        .unwrap();
    out.delta(map(&[("b", 2)]), &WorkflowId::None)
        .await
        .unwrap();
    let mut sub = Subscriber::start(
        &Address::from(out.publisher_endpoint()),
        SubscriberOptions::default(),
    )
    .await
    .unwrap();
    let args = next_args(&mut sub).await;
    assert!(args.is_snapshot, "{args:?}");
    assert_eq!(args.current_num, 2);
    assert_eq!(args.state, map(&[("a", 1), ("b", 2)]));
}

/// 2. `wait_after_creation`: `start` returns only after it, so a subscriber already trying
///    to connect is in place for the very first update.
#[tokio::test]
async fn updates_made_right_after_start_reach_a_subscriber_that_was_connecting() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let publisher = format!("127.0.0.1:{port}");
    let mut sub = Subscriber::start(
        &Address::from(publisher.as_str()),
        SubscriberOptions::default(),
    )
    .await
    .unwrap();
    let wait = Duration::from_secs(1);
    let t0 = Instant::now();
    let out = DeltaUpdateOut::start(
        &Address::from(publisher.as_str()),
        &any(),
        &StateOptions {
            wait_after_creation: Some(wait),
            ..quiet_opts()
        },
    )
    .await
    .unwrap();
    assert!(t0.elapsed() >= wait, "start waits wait_after_creation");
    out.delta(map(&[("first", 1)]), &WorkflowId::None)
        .await
        .unwrap();
    // The answer to the subscription may come first; the delta must come.
    let mut args = next_args(&mut sub).await;
    if args.is_snapshot {
        args = next_args(&mut sub).await;
    }
    assert_eq!((args.current_num, args.is_snapshot), (1, false));
    assert_eq!(args.state, map(&[("first", 1)]));
}

/// 4. A delete of a key the state does not hold is not published (Python 0.0.18's follower
///    raises on it) and does not use up a number.
#[tokio::test]
async fn deletes_of_absent_keys_are_not_published() {
    let out = DeltaUpdateOut::start(&any(), &any(), &quiet_opts())
        .await
        .unwrap();
    out.snapshot(map(&[("a", 1)]), &WorkflowId::None)
        .await
        .unwrap();
    let mut sub = Subscriber::start(
        &Address::from(out.publisher_endpoint()),
        SubscriberOptions::default(),
    )
    .await
    .unwrap();
    // Once the subscription is answered, everything published reaches us.
    let hello = next_args(&mut sub).await;
    assert!(hello.is_snapshot);
    let mut absent = StateMap::new();
    absent.insert("absent_key".into(), Value::Nil);
    assert_eq!(
        out.delta(absent.clone(), &WorkflowId::None).await.unwrap(),
        1
    );
    let mut mixed = absent;
    mixed.insert("a".into(), Value::Nil);
    mixed.insert("c".into(), Value::from(3));
    assert_eq!(out.delta(mixed, &WorkflowId::None).await.unwrap(), 2);
    let args = next_args(&mut sub).await;
    assert_eq!(args.current_num, 2);
    let mut expected = StateMap::new();
    expected.insert("a".into(), Value::Nil);
    expected.insert("c".into(), Value::from(3));
    assert_eq!(
        args.state, expected,
        "only the delete of a key that was there"
    );
    assert_eq!(out.current().await, (map(&[("c", 3)]), 2));
}
