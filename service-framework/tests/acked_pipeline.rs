//! An acked pipeline through the runtime: a source pushes 1,000 ids, acked, to two instances
//! of a transform service (acked pullers, `concurrency` 8, connecting to the source's
//! binding pusher), each pushing on, acked, to a sink service whose binding puller records
//! every id. One transform instance is killed mid-stream: its runtime is dropped with
//! everything in it (sockets closed, nothing acknowledged, nothing drained), as a SIGKILL
//! would leave it. The sink must still hold every id; duplicates are allowed (at-least-once)
//! and counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use service_framework::connections::{
    Address, Counter, PipelineOptions, Pusher as PushConn, WorkflowId,
};
use service_framework::prelude::*;
use service_framework::{AddressesFile, Ready, Service, StopReason};
use tokio::sync::{oneshot, watch, Notify, Semaphore};
use tokio::task::JoinSet;

const N: u64 = 1000;
const WARM_UP_FROM: u64 = 1_000_000;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Item {
    id: u64,
}

const RESULTS_IN: Puller<Item> = Puller::new("results").is_binder(true).acked(true);
const RESULTS_OUT: Pusher<Item> = Pusher::new("results");

/// Ids the sink handled, with how many times.
#[derive(Default)]
struct Sink {
    seen: Mutex<HashMap<u64, u32>>,
}

fn sink_def(sink: Arc<Sink>, distinct: watch::Sender<usize>) -> ServiceDef {
    ServiceDef::new("sink").puller(RESULTS_IN, move |item: Item, _ctx: Ctx| {
        let (sink, distinct) = (sink.clone(), distinct.clone());
        async move {
            if item.id < N {
                let mut seen = sink.seen.lock().unwrap();
                *seen.entry(item.id).or_default() += 1;
                distinct.send_replace(seen.len());
            }
            Ok(())
        }
    })
}

/// A hang switch for one transform instance: once set, its handlers never finish (the
/// messages they hold stay unacknowledged until the kill), and `hung` counts them.
#[derive(Default)]
struct Hang {
    set: AtomicBool,
    hung: Mutex<u64>,
    changed: Notify,
}

/// The transform: takes an item, pushes it on; `handled` counts its runs by instance.
fn transform_def(
    instance: &'static str,
    handled: Arc<Mutex<HashMap<&'static str, u64>>>,
    hang: Arc<Hang>,
) -> ServiceDef {
    ServiceDef::new("transform")
        .puller("work", move |item: Item, ctx: Ctx| {
            let (handled, hang) = (handled.clone(), hang.clone());
            async move {
                if hang.set.load(Ordering::SeqCst) {
                    *hang.hung.lock().unwrap() += 1;
                    hang.changed.notify_waiters();
                    std::future::pending::<()>().await;
                }
                ctx.push(&RESULTS_OUT, &item).await?;
                *handled.lock().unwrap().entry(instance).or_default() += 1;
                Ok(())
            }
        })
        .pusher(RESULTS_OUT)
}

/// The transforms' addresses, and their options set the deployment's way (the file).
fn transform_addresses(source: &str, sink: &str) -> AddressesFile {
    AddressesFile::from_value(json!({
        "connections": {
            "in": {"work": {"puller": source}},
            "out": {"results": {"pusher": sink}},
        },
        "options": {"connections": {
            "in": {"work": {"acked": true, "concurrency": 8}},
            "out": {"results": {"acked": true, "window": 100}},
        }},
    }))
    .unwrap()
}

/// Runs `def` on a runtime of its own, on a thread of its own, until `kill` fires: then the
/// runtime is dropped at once with every task in it (no stop, no drain, no linger).
fn start_killable(
    def: ServiceDef,
    addrs: AddressesFile,
) -> (
    oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
    std::sync::mpsc::Receiver<Ready>,
) {
    let (kill, killed) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let run = Service::new(def).addresses(addrs).run(
                std::future::pending::<StopReason>(),
                move |r: &Ready| {
                    let _ = ready_tx.send(r.clone());
                },
            );
            tokio::select! {
                r = run => panic!("the transform stopped by itself: {r:?}"),
                _ = killed => {}
            }
        });
        rt.shutdown_background();
    });
    (kill, thread, ready_rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transform_killed_mid_stream_loses_nothing() {
    let ready_within = Duration::from_secs(5);
    // The source: an acked pusher binding; the transforms connect to it.
    let source = PushConn::start(
        &Address::from("127.0.0.1:0"),
        PipelineOptions {
            is_binder: true,
            acked: true,
            send_timeout: Duration::from_secs(15),
            // Redelivery must come from the lost connection, not from this safety net.
            ack_timeout: Duration::from_secs(60),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let sink = Arc::new(Sink::default());
    let (distinct_tx, mut distinct) = watch::channel(0usize);
    let sink_handle = Service::new(sink_def(sink.clone(), distinct_tx))
        .addresses(
            AddressesFile::from_value(
                json!({"connections": {"in": {"results": {"puller": "127.0.0.1:0"}}}}),
            )
            .unwrap(),
        )
        .run_in_background();
    let sink_ready = sink_handle.wait_ready_async(ready_within).await.unwrap();
    let sink_ep = sink_ready.endpoints["in.results"].clone();

    let handled: Arc<Mutex<HashMap<&'static str, u64>>> = Arc::default();
    let addrs = transform_addresses(source.endpoint(), &sink_ep);
    let hang_a = Arc::new(Hang::default());
    let (kill_a, thread_a, ready_a) = start_killable(
        transform_def("a", handled.clone(), hang_a.clone()),
        addrs.clone(),
    );
    let b = Service::new(transform_def("b", handled.clone(), Arc::default()))
        .addresses(addrs)
        .run_in_background();
    b.wait_ready_async(ready_within).await.unwrap();
    tokio::task::spawn_blocking(move || ready_a.recv_timeout(ready_within))
        .await
        .unwrap()
        .expect("transform a ready");

    // Warm-up, one push at a time, until both instances have handled one: both are then
    // connected to the source, which alternates between them.
    let mut warm = WARM_UP_FROM;
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let both = {
                let h = handled.lock().unwrap();
                h.contains_key("a") && h.contains_key("b")
            };
            if both {
                break;
            }
            source
                .push(&Item { id: warm }, WorkflowId::None)
                .await
                .unwrap();
            warm += 1;
        }
    })
    .await
    .expect("both transform instances connected");

    // The stream: 64 pushes in flight at a time.
    let in_flight = Arc::new(Semaphore::new(64));
    let mut pushes = JoinSet::new();
    for id in 0..N {
        let permit = in_flight.clone().acquire_owned().await.unwrap();
        let s = source.clone();
        pushes.spawn(async move {
            let r = s.push(&Item { id }, WorkflowId::None).await;
            drop(permit);
            (id, r)
        });
        if id == N / 10 {
            break;
        }
    }
    let feeder = {
        let source = source.clone();
        let in_flight = in_flight.clone();
        tokio::spawn(async move {
            let mut rest = JoinSet::new();
            for id in N / 10 + 1..N {
                let permit = in_flight.clone().acquire_owned().await.unwrap();
                let s = source.clone();
                rest.spawn(async move {
                    let r = s.push(&Item { id }, WorkflowId::None).await;
                    drop(permit);
                    (id, r)
                });
            }
            let mut results = Vec::new();
            while let Some(r) = rest.join_next().await {
                results.push(r.unwrap());
            }
            results
        })
    };

    // Mid-stream: once the sink has a third of the ids, transform `a` hangs, and once it
    // holds messages it will never acknowledge, it dies.
    tokio::time::timeout(
        Duration::from_secs(10),
        distinct.wait_for(|n| *n >= N as usize / 3),
    )
    .await
    .expect("the stream is under way")
    .unwrap();
    hang_a.set.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let changed = hang_a.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if *hang_a.hung.lock().unwrap() >= 4 {
                return;
            }
            changed.await;
        }
    })
    .await
    .expect("transform a holds messages");
    let hung = *hang_a.hung.lock().unwrap();
    let a_before = handled.lock().unwrap().get("a").copied().unwrap_or(0);
    kill_a.send(()).unwrap();
    tokio::task::spawn_blocking(move || thread_a.join())
        .await
        .unwrap()
        .unwrap();

    // Every push returns Ok: each was acknowledged by a transform after the sink acked it.
    let mut results = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(r) = pushes.join_next().await {
            results.push(r.unwrap());
        }
        results.extend(feeder.await.unwrap());
    })
    .await
    .expect("every push finished");
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(failed.is_empty(), "pushes failed: {failed:?}");
    assert_eq!(results.len(), N as usize);

    let seen = sink.seen.lock().unwrap().clone();
    let missing: Vec<u64> = (0..N).filter(|id| !seen.contains_key(id)).collect();
    assert!(missing.is_empty(), "the sink never got {missing:?}");
    let duplicates: u64 = seen.values().map(|&c| u64::from(c) - 1).sum();
    let redelivered = source.stats().get(Counter::Redelivered);
    let handled = handled.lock().unwrap().clone();
    eprintln!(
        "sink: {} ids, {duplicates} duplicates; source redelivered {redelivered}; \
         handled by a: {} ({a_before} before the kill, {hung} hung), b: {}",
        seen.len(),
        handled.get("a").copied().unwrap_or(0),
        handled.get("b").copied().unwrap_or(0),
    );
    assert!(
        redelivered >= hung,
        "`a` died holding {hung} unacknowledged messages, only {redelivered} sent again"
    );
    assert_eq!(source.in_flight(), 0);

    b.stop_async().await.unwrap();
    sink_handle.stop_async().await.unwrap();
}

/// The acked options are checked like every other: a window or concurrency of 0, or an
/// `acked` that is not a boolean, stops the start naming it.
#[test]
fn acked_options_in_the_addresses_file_are_checked() {
    let with = |options: serde_json::Value| {
        let def = ServiceDef::new("t")
            .puller("work", |_: Item, _ctx: Ctx| async { Ok(()) })
            .pusher(RESULTS_OUT);
        Service::new(def)
            .addresses(
                AddressesFile::from_value(json!({
                    "connections": {
                        "in": {"work": {"puller": "127.0.0.1:1"}},
                        "out": {"results": {"pusher": "127.0.0.1:1"}},
                    },
                    "options": {"connections": options},
                }))
                .unwrap(),
            )
            .run_blocking()
            .expect_err("a wrong option")
            .to_string()
    };
    let msg = with(json!({"in": {"work": {"concurrency": 0}}}));
    assert!(
        msg.contains("concurrency") && msg.contains("1 or more"),
        "{msg}"
    );
    let msg = with(json!({"out": {"results": {"window": 0}}}));
    assert!(msg.contains("window") && msg.contains("1 or more"), "{msg}");
    let msg = with(json!({"in": {"work": {"acked": "yes"}}}));
    assert!(
        msg.contains("acked") && msg.contains("true or false"),
        "{msg}"
    );
    let msg = with(json!({"out": {"results": {"ack_timeout_s": -1}}}));
    assert!(msg.contains("ack_timeout_s"), "{msg}");
    let msg = with(json!({"in": {"work": {"window": 5}}}));
    assert!(
        msg.contains("window") && msg.contains("concurrency"),
        "a puller takes no window: {msg}"
    );
}
