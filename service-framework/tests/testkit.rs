//! The testkit, as a user's own tests use it: async, typed, real sockets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use service_framework::connections::{Error as ConnError, ErrorCode};
use service_framework::prelude::*;
use service_framework::testing::{TestError, TestService};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
struct Sum {
    total: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
struct Tick {
    n: i64,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct Config {
    bonus: i64,
}

const ADD: Replyer<Add, Sum> = Replyer::new("add");
const SUMS: Publisher<Sum> = Publisher::new("sums_out").topic("sums");
const TICKS: Subscriber<Tick> = Subscriber::new("ticks_in").topic("ticks");
const JOBS: Puller<Tick> = Puller::new("jobs_in");
const DONE: Pusher<Sum> = Pusher::new("done_out");
const DOUBLER: Requester<Tick, Tick> = Requester::new("doubler");

/// Adds (plus a configured bonus) and publishes each sum; doubles each tick through a
/// downstream service and pushes the result.
fn service(seen: Arc<AtomicU64>) -> ServiceDef {
    ServiceDef::new("calc")
        .config::<Config>()
        .publisher(SUMS)
        .pusher(DONE)
        .requester(DOUBLER)
        .replyer(ADD, |args, ctx| async move {
            let sum = Sum {
                total: args.a + args.b + ctx.config::<Config>().bonus,
            };
            ctx.publish(&SUMS, &sum).await?;
            Ok(sum)
        })
        .subscriber(TICKS, move |tick, _ctx| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(u64::try_from(tick.n).unwrap_or(0), Ordering::SeqCst);
                Ok(())
            }
        })
        .puller(JOBS, |tick, ctx| async move {
            let doubled = ctx.request(&DOUBLER, &tick).await?;
            ctx.push(&DONE, &Sum { total: doubled.n }).await?;
            Ok(())
        })
}

async fn started(seen: Arc<AtomicU64>) -> TestService {
    TestService::builder(service(seen))
        .config(serde_json::json!({"bonus": 10}))
        .stub(&DOUBLER, |t: Tick| async move { Ok(Tick { n: t.n * 2 }) })
        .start()
        .await
        .expect("starts")
}

#[tokio::test]
async fn call_a_replyer_and_see_what_it_published() {
    let svc = started(Arc::default()).await;
    let sum = svc.call(&ADD, &Add { a: 1, b: 2 }).await.unwrap();
    assert_eq!(sum, Sum { total: 13 });
    assert_eq!(svc.next_published(&SUMS).await.unwrap(), Sum { total: 13 });
    svc.wait_for_handler(ADD.name(), 1).await.unwrap();
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn publish_to_a_subscriber_and_wait_for_its_handler() {
    let seen = Arc::new(AtomicU64::new(0));
    let svc = started(seen.clone()).await;
    // The subscription is in place once start returns: nothing published is lost.
    for n in 1..=5 {
        svc.publish(&TICKS, &Tick { n }).await.unwrap();
    }
    svc.wait_for_handler(TICKS.name(), 5).await.unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 15);
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn push_to_a_puller_through_a_stubbed_requester_and_capture_the_push() {
    let svc = started(Arc::default()).await;
    svc.push(&JOBS, &Tick { n: 21 }).await.unwrap();
    assert_eq!(svc.next_pushed(&DONE).await.unwrap(), Sum { total: 42 });
    assert_eq!(svc.handler_runs(JOBS.name()), 1);
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn an_error_reply_and_a_bad_start_come_back_typed() {
    let svc = started(Arc::default()).await;
    let bad = svc
        .call_named::<_, Sum>(ADD.name(), &serde_json::json!({"a": "one"}))
        .await;
    match bad {
        Err(TestError::Connection(ConnError::Remote(w))) => {
            assert_eq!(w.code, ErrorCode::InvalidArgs);
            assert!(w.message.contains("args.a"), "{}", w.message);
        }
        other => panic!("an invalid_args reply, got {other:?}"),
    }
    svc.stop().await.unwrap();

    // A requester with neither a stub nor an address is named at start.
    let e = TestService::builder(service(Arc::default()))
        .config(serde_json::json!({"bonus": 1}))
        .start()
        .await
        .expect_err("no stub for the requester");
    assert!(e.to_string().contains("\"doubler\" needs a stub"), "{e}");
    // A config that does not fit fails the start, named.
    let e = TestService::builder(service(Arc::default()))
        .config(serde_json::json!({"bonus": "x"}))
        .stub(&DOUBLER, |t: Tick| async move { Ok(t) })
        .start()
        .await
        .expect_err("bad config");
    assert!(e.to_string().contains("bonus"), "{e}");
}

type Prices = std::collections::BTreeMap<String, i64>;
const PRICES: DeltaStateOut<Prices> = DeltaStateOut::new("prices");
const LAST: FullStateOut<Sum> = FullStateOut::new("last_sum");
const PRICE: Replyer<Add, Sum> = Replyer::new("price");

/// Sets price `a` to `b` in a delta state and the last sum in a full state.
fn pricer() -> ServiceDef {
    ServiceDef::new("pricer")
        .delta_update_out(PRICES)
        .full_update_out(LAST)
        .replyer(PRICE, |args, ctx| async move {
            let mut change = Prices::new();
            change.insert(format!("p{}", args.a), args.b);
            ctx.update_state(&PRICES, &change).await?;
            let sum = Sum {
                total: args.a + args.b,
            };
            ctx.set_state(&LAST, &sum).await?;
            Ok(sum)
        })
}

#[tokio::test]
async fn what_a_service_puts_in_its_out_states_is_seen_as_a_follower_sees_it() {
    let svc = TestService::start(pricer()).await.unwrap();
    svc.call(&PRICE, &Add { a: 1, b: 10 }).await.unwrap();
    svc.call(&PRICE, &Add { a: 2, b: 20 }).await.unwrap();
    let prices = svc
        .wait_state(&PRICES, |p: &Prices| p.len() == 2)
        .await
        .unwrap();
    assert_eq!(prices, Prices::from([("p1".into(), 10), ("p2".into(), 20)]));
    let last = svc
        .wait_state(&LAST, |s: &Sum| s.total == 22)
        .await
        .unwrap();
    assert_eq!(last, Sum { total: 22 });
    // A value never reached is a bounded wait that says what was last seen.
    let never = svc.wait_state(&PRICES, |p: &Prices| p.len() == 3).await;
    assert!(
        matches!(&never, Err(TestError::Timeout(..)) if never.as_ref().unwrap_err().to_string().contains("p2")),
        "{never:?}"
    );
    svc.stop().await.unwrap();
}
