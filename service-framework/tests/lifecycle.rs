//! The lifecycle, in process, on real sockets: hook order and the effect of each hook's
//! result, main mode serving inbound requests meanwhile, background handles (stop, join,
//! drop, several services per process, ports released), graceful drain of in-flight work.

mod support;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use service_framework::connections::{Address, Error as ConnError, ErrorCode};
use service_framework::{Ctx, Service, ServiceDef, ServiceError};
use support::*;
use tokio::sync::Notify;

const REQUEST: service_framework::handle::Requester<Echo, Echoed> =
    service_framework::handle::Requester::new("request");

type Log = Arc<Mutex<Vec<String>>>;

fn push(log: &Log, entry: impl Into<String>) {
    log.lock().unwrap().push(entry.into());
}

fn entries(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

#[derive(Debug, Deserialize, JsonSchema)]
struct HookConfig {
    n: i64,
}

#[test]
fn hooks_run_in_the_original_order_and_their_results_take_effect() {
    let log: Log = Arc::default();
    let finish = Arc::new(Notify::new());
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let def = echo_service("hooks", "")
        .config::<HookConfig>()
        .setup_config({
            let log = log.clone();
            move |mut config| {
                push(&log, format!("setup_config n={}", config["n"]));
                // The config says "5" (a string), the model wants an integer: the hook
                // converts it, and validation sees the hook's result.
                let n: i64 = config["n"]
                    .as_str()
                    .ok_or("n should arrive as a string")?
                    .parse()
                    .map_err(|e| ServiceError::new(format!("n: {e}")))?;
                config.insert("n".into(), json!(n));
                Ok(config)
            }
        })
        .setup_addresses({
            let log = log.clone();
            move |mut addresses, config| {
                push(&log, format!("setup_addresses n={}", config["n"]));
                // The given address cannot be bound here; the hook's replacement is used.
                addresses
                    .connections
                    .inbound
                    .get_mut("reply")
                    .ok_or("no reply entry")?
                    .insert("replyer".into(), Address::from("127.0.0.1:0"));
                Ok(addresses)
            }
        })
        .setup_connection_models({
            let log = log.clone();
            move |models, config| {
                push(&log, format!("setup_connection_models n={}", config["n"]));
                models
                    .get_mut("reply")
                    .ok_or("no reply model")?
                    .creation
                    .insert("max_message_bytes".into(), json!(256));
                Ok(())
            }
        })
        .init_function({
            let log = log.clone();
            move |ctx: Ctx| {
                let log = log.clone();
                async move {
                    let n = ctx.config::<HookConfig>().n;
                    push(&log, format!("init_function n={n}"));
                    Ok(())
                }
            }
        })
        .main({
            let log = log.clone();
            let finish = finish.clone();
            move |ctx: Ctx| {
                let (log, finish, started) = (log.clone(), finish.clone(), started_tx.clone());
                async move {
                    push(&log, format!("main n={}", ctx.config::<HookConfig>().n));
                    let _ = started.send(());
                    tokio::time::timeout(Duration::from_secs(5), finish.notified())
                        .await
                        .map_err(|_| "the test never told main to finish")?;
                    push(&log, "main returns");
                    Ok(())
                }
            }
        });

    let handle = Service::new(def)
        .config(json!({"n": "5"}))
        .addresses(replyer_at("192.0.2.1:5999"))
        .main_mode()
        .run_in_background();
    let ready = handle.wait_ready(READY).expect("ready");
    let endpoint = ready.endpoint("reply").expect("reply endpoint").to_owned();
    assert!(endpoint.starts_with("tcp://127.0.0.1:"), "{endpoint}");
    started_rx
        .recv_timeout(READY)
        .expect("main started after init_function");
    assert_eq!(
        entries(&log),
        [
            "setup_config n=\"5\"",
            "setup_addresses n=5",
            "setup_connection_models n=5",
            "init_function n=5",
            "main n=5",
        ]
    );

    // setup_connection_models' creation argument is in force on the replyer.
    assert_eq!(
        request(&endpoint, &json!({"to_echo": "small"})).unwrap(),
        json!({"echoed": "small"})
    );
    match request(&endpoint, &json!({"to_echo": "x".repeat(1000)})) {
        Err(ConnError::Remote(e)) => assert_eq!(e.code, ErrorCode::TooLarge, "{e:?}"),
        other => panic!("a 1000-byte request should be refused as too large: {other:?}"),
    }

    finish.notify_one();
    handle.join().expect("main returned Ok");
    assert_eq!(
        entries(&log).last().map(String::as_str),
        Some("main returns")
    );
}

#[test]
fn a_failing_hook_stops_the_start_and_names_itself() {
    let def = echo_service("bad_hook", "").setup_config(|_| Err("no config for you".into()));
    let handle = Service::new(def)
        .addresses(replyer_at("127.0.0.1:0"))
        .run_in_background();
    let err = handle.wait_ready(READY).unwrap_err().to_string();
    assert_eq!(err, "setup_config failed: no config for you");
    let err = handle.stop().unwrap_err().to_string();
    assert_eq!(err, "setup_config failed: no config for you");
}

#[test]
fn main_mode_serves_inbound_requests_while_main_runs_and_stops_when_it_returns() {
    // Downstream service B, which A's main calls.
    let (b, b_ready) = start(echo_service("b", "B:"), replyer_at("127.0.0.1:0"));
    let b_endpoint = b_ready.endpoint("reply").unwrap().to_owned();

    let finish = Arc::new(Notify::new());
    let (main_tx, main_rx) = mpsc::channel::<String>();
    let a = echo_service("a", "A:").requester(REQUEST).main({
        let finish = finish.clone();
        move |ctx: Ctx| {
            let (finish, tx) = (finish.clone(), main_tx.clone());
            async move {
                let r: Echoed = ctx
                    .request(
                        &REQUEST,
                        &Echo {
                            to_echo: "from main".into(),
                        },
                    )
                    .await?;
                let _ = tx.send(r.echoed);
                tokio::time::timeout(Duration::from_secs(5), finish.notified())
                    .await
                    .map_err(|_| "never told to finish")?;
                Ok(())
            }
        }
    });
    let addrs = addresses(json!({"connections": {
        "in": {"reply": {"replyer": "127.0.0.1:0"}},
        "out": {"request": {"requester": b_endpoint}}
    }}));
    let handle = Service::new(a)
        .addresses(addrs)
        .main_mode()
        .run_in_background();
    let ready = handle.wait_ready(READY).unwrap();
    let a_endpoint = ready.endpoint("reply").unwrap().to_owned();
    assert_eq!(ready.endpoint("request"), Some(b_endpoint.as_str()));

    // main got its answer from B...
    assert_eq!(main_rx.recv_timeout(READY).unwrap(), "B:from main");
    // ...and while it is still running, A's own replyer answers outsiders.
    for i in 0..3 {
        assert_eq!(
            request(&a_endpoint, &json!({"to_echo": format!("outside {i}")})).unwrap(),
            json!({"echoed": format!("A:outside {i}")})
        );
    }
    assert!(!handle.is_finished(), "main is still running");

    finish.notify_one();
    handle
        .join()
        .expect("main returned Ok, so the service stops with Ok");
    // Stopped: its port is free again.
    let (again, _) = start(echo_service("a2", "A2:"), replyer_at(&a_endpoint));
    assert_eq!(
        request(&a_endpoint, &json!({"to_echo": "x"})).unwrap(),
        json!({"echoed": "A2:x"})
    );
    again.stop().unwrap();
    b.stop().unwrap();
}

#[test]
fn main_that_fails_ends_the_service_with_its_error() {
    let def = ServiceDef::new("failing_main")
        .main(|_ctx: Ctx| async move { Err(ServiceError::new("main gave up")) });
    let handle = Service::new(def).main_mode().run_in_background();
    let err = handle.join().unwrap_err().to_string();
    assert_eq!(err, "main failed: main gave up");
}

#[test]
fn main_mode_without_main_is_refused() {
    let handle = Service::new(echo_service("no_main", ""))
        .addresses(replyer_at("127.0.0.1:0"))
        .main_mode()
        .run_in_background();
    let err = handle.join().unwrap_err().to_string();
    assert!(
        err.contains("\"no_main\" has no main, so it cannot run in main mode"),
        "{err}"
    );
}

#[test]
fn main_mode_in_background_then_join() {
    let (b, b_ready) = start(echo_service("b", "B:"), replyer_at("127.0.0.1:0"));
    let replies: Arc<Mutex<Vec<String>>> = Arc::default();
    let def = ServiceDef::new("leader").requester(REQUEST).main({
        let replies = replies.clone();
        move |ctx: Ctx| {
            let replies = replies.clone();
            async move {
                for i in 0..3 {
                    let r: Echoed = ctx
                        .request(
                            &REQUEST,
                            &Echo {
                                to_echo: i.to_string(),
                            },
                        )
                        .await?;
                    replies.lock().unwrap().push(r.echoed);
                }
                Ok(())
            }
        }
    });
    let addrs = addresses(
        json!({"connections": {"out": {"request": {"requester": b_ready.endpoint("reply").unwrap()}}}}),
    );
    let handle = Service::new(def)
        .addresses(addrs)
        .main_mode()
        .run_in_background();
    handle.wait_ready(READY).unwrap();
    handle.join().unwrap();
    assert_eq!(*replies.lock().unwrap(), ["B:0", "B:1", "B:2"]);
    b.stop().unwrap();
}

#[test]
fn several_services_in_one_process_stop_promptly_and_release_their_ports() {
    let names = ["one", "two", "three"];
    let mut running = Vec::new();
    for name in names {
        let (h, ready) = start(
            echo_service(name, &format!("{name}:")),
            replyer_at("127.0.0.1:0"),
        );
        running.push((h, ready.endpoint("reply").unwrap().to_owned()));
    }
    let endpoints: Vec<String> = running.iter().map(|(_, e)| e.clone()).collect();
    let mut distinct = endpoints.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{endpoints:?}");
    for (name, endpoint) in names.iter().zip(&endpoints) {
        assert_eq!(
            request(endpoint, &json!({"to_echo": "hi"})).unwrap(),
            json!({"echoed": format!("{name}:hi")})
        );
    }
    for (h, _) in running {
        let t = Instant::now();
        h.stop().expect("stop returns Ok");
        // Well under the 5 s drain deadline: nothing was in flight.
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "stop took {:?}",
            t.elapsed()
        );
    }
    // Every port is free: successors bind exactly the same endpoints.
    for endpoint in &endpoints {
        let (h, ready) = start(echo_service("successor", "next:"), replyer_at(endpoint));
        assert_eq!(ready.endpoint("reply"), Some(endpoint.as_str()));
        assert_eq!(
            request(endpoint, &json!({"to_echo": "hi"})).unwrap(),
            json!({"echoed": "next:hi"})
        );
        h.stop().unwrap();
    }
}

#[test]
fn dropping_a_handle_stops_its_service() {
    let (h, ready) = start(echo_service("dropped", ""), replyer_at("127.0.0.1:0"));
    let endpoint = ready.endpoint("reply").unwrap().to_owned();
    drop(h);
    let (h, _) = start(echo_service("after_drop", "after:"), replyer_at(&endpoint));
    assert_eq!(
        request(&endpoint, &json!({"to_echo": "x"})).unwrap(),
        json!({"echoed": "after:x"})
    );
    h.stop().unwrap();
}

#[test]
fn a_taken_port_is_a_start_error_naming_the_connection() {
    let (first, ready) = start(echo_service("first", "first:"), replyer_at("127.0.0.1:0"));
    let endpoint = ready.endpoint("reply").unwrap().to_owned();
    let second = Service::new(echo_service("second", ""))
        .addresses(replyer_at(&endpoint))
        .run_in_background();
    let err = second.wait_ready(READY).unwrap_err().to_string();
    assert!(err.starts_with("connection \"reply\": "), "{err}");
    assert!(err.contains(&endpoint), "{err}");
    assert!(second.stop().is_err());
    // The first one is unharmed.
    assert_eq!(
        request(&endpoint, &json!({"to_echo": "x"})).unwrap(),
        json!({"echoed": "first:x"})
    );
    first.stop().unwrap();
}

#[test]
fn stop_lets_an_in_flight_request_finish_and_answers_it() {
    let (arrived_tx, arrived_rx) = mpsc::channel::<()>();
    let arrived_tx = Mutex::new(arrived_tx);
    let def = ServiceDef::new("slow").replyer("reply", move |a: Echo, _ctx: Ctx| {
        let _ = arrived_tx.lock().unwrap().send(());
        async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Ok::<_, ServiceError>(Echoed { echoed: a.to_echo })
        }
    });
    let (h, ready) = start(def, replyer_at("127.0.0.1:0"));
    let endpoint = ready.endpoint("reply").unwrap().to_owned();
    let caller = std::thread::spawn(move || request(&endpoint, &json!({"to_echo": "late"})));
    arrived_rx
        .recv_timeout(READY)
        .expect("the request reached the handler");
    let t = Instant::now();
    h.stop().expect("graceful stop");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(
        caller
            .join()
            .unwrap()
            .expect("the in-flight request was answered"),
        json!({"echoed": "late"})
    );
}

#[test]
fn a_handler_can_ask_the_service_to_stop() {
    let def = ServiceDef::new("self_stopping").replyer("reply", |_a: Value, ctx: Ctx| async move {
        ctx.request_stop();
        Ok::<_, ServiceError>(json!({"stopping": true}))
    });
    let (h, ready) = start(def, replyer_at("127.0.0.1:0"));
    let endpoint = ready.endpoint("reply").unwrap().to_owned();
    assert_eq!(
        request(&endpoint, &json!({})).unwrap(),
        json!({"stopping": true})
    );
    h.join().expect("stopped by itself, gracefully");
}

/// A replyer whose handler holds its request until the test says so.
fn held(release: Arc<Notify>) -> ServiceDef {
    ServiceDef::new("held").replyer("reply", move |a: Echo, _ctx: Ctx| {
        let release = release.clone();
        async move {
            release.notified().await;
            Ok::<_, ServiceError>(Echoed { echoed: a.to_echo })
        }
    })
}

/// The async waits of a background service never block the caller's runtime: on one
/// current-thread runtime, a task of the test keeps running while `wait_ready_async`,
/// `stop_async` (draining an in-flight request) and a drop inside the runtime are awaited or
/// done; the in-flight request is answered; `join_async` sees a main-mode service end.
#[tokio::test(flavor = "current_thread")]
async fn async_waits_and_drop_leave_the_callers_runtime_running() {
    // A task of the caller's runtime that counts while it gets to run.
    let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(2)).await;
                ticks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let count = || ticks.load(std::sync::atomic::Ordering::SeqCst);

    let release = Arc::new(Notify::new());
    let handle = Service::new(held(release.clone()))
        .addresses(replyer_at("127.0.0.1:0"))
        .run_in_background();
    let ready = handle
        .wait_ready_async(Duration::from_secs(10))
        .await
        .expect("ready");
    let endpoint = ready.endpoint("reply").unwrap().to_owned();
    let in_flight = tokio::spawn(async move {
        service_framework::testing::call_once::<_, Value>(
            &endpoint,
            &json!({"to_echo": "held"}),
            service_framework::connections::WorkflowId::new_random(),
            Duration::from_secs(10),
        )
        .await
    });
    // Release the handler only after the counter has moved on while stop_async waits.
    let before = count();
    let releaser = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            while ticks.load(std::sync::atomic::Ordering::SeqCst) < before + 20 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            release.notify_one();
        }
    });
    // The request is in flight before the stop (the handler waits on `release`).
    tokio::time::sleep(Duration::from_millis(50)).await;
    handle.stop_async().await.expect("a complete drain");
    assert!(
        count() >= before + 20,
        "the caller's runtime ran during stop_async"
    );
    assert_eq!(
        in_flight
            .await
            .unwrap()
            .expect("the in-flight request is answered"),
        json!({"echoed": "held"})
    );
    releaser.await.unwrap();

    // Dropped inside the runtime with a request that never finishes: drop does not join
    // (that would stall this runtime for the whole drain); the service drains on its own
    // thread and answers the request `unavailable` at its deadline.
    let handle = Service::new(held(Arc::new(Notify::new())))
        .addresses(replyer_at("127.0.0.1:0"))
        .drain_timeout(Duration::from_secs(2))
        .run_in_background();
    let ready = handle
        .wait_ready_async(Duration::from_secs(10))
        .await
        .unwrap();
    let endpoint = ready.endpoint("reply").unwrap().to_owned();
    let stuck = tokio::spawn(async move {
        service_framework::testing::call_once::<_, Value>(
            &endpoint,
            &json!({"to_echo": "stuck"}),
            service_framework::connections::WorkflowId::new_random(),
            Duration::from_secs(10),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    drop(handle);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "drop inside a runtime returned at once, not after the 2 s drain: {:?}",
        t.elapsed()
    );
    match stuck.await.unwrap() {
        Err(ConnError::Remote(w)) => assert_eq!(w.code, ErrorCode::Unavailable, "{w:?}"),
        other => panic!("the stuck request is answered unavailable at the deadline: {other:?}"),
    }

    // join_async: a main-mode service that ends by itself.
    let main = ServiceDef::new("brief").main(|_ctx: Ctx| async move { Ok(()) });
    let handle = Service::new(main).main_mode().run_in_background();
    tokio::time::timeout(Duration::from_secs(10), handle.join_async())
        .await
        .expect("main returned")
        .expect("exit ok");
    counter.abort();
}

/// An out-state's `wait_after_creation_s` (the original's slow-joiner pause) is waited once,
/// by the state itself: a service with 1 s of it is ready after about 1 s, not 2.
#[test]
fn an_out_states_wait_after_creation_is_waited_once() {
    const PRICES: service_framework::handle::DeltaStateOut<
        std::collections::BTreeMap<String, i64>,
    > = service_framework::handle::DeltaStateOut::new("prices").wait_after_creation_s(Some(1.0));
    let def = ServiceDef::new("waits").delta_update_out(PRICES);
    let t = Instant::now();
    let handle = Service::new(def)
        .addresses(addresses(json!({"states": {"out": {"prices": {
            "publisher": "127.0.0.1:0", "replyer": "127.0.0.1:0"}}}})))
        .run_in_background();
    handle.wait_ready(Duration::from_secs(10)).expect("ready");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(1900),
        "ready after {took:?}: the 1 s wait once"
    );
    handle.stop().unwrap();
}
