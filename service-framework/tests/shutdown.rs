//! One stop for the whole service: every replyer stops taking work at once, work refused
//! while stopping and handlers past the deadline get an `unavailable` reply, and the result
//! tells a complete drain from an incomplete one.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use service_framework::connections::{Error as ConnError, ErrorCode, WorkflowId};
use service_framework::prelude::*;
use service_framework::{Error, Service};
use support::{addresses, request_with, Echo, Echoed};
use tokio::sync::{mpsc, Semaphore};

/// Two replyers, `a` and `b`, that answer `probe` at once and hold any other request until
/// `gate` gives a permit, telling `started` when they begin.
fn service(gate: Arc<Semaphore>, started: mpsc::UnboundedSender<()>) -> ServiceDef {
    let mut def = ServiceDef::new("two_replyers");
    for name in ["a", "b"] {
        let (gate, started) = (gate.clone(), started.clone());
        let handle: Replyer<Echo, Echoed> = Replyer::new(name);
        def = def.replyer(handle, move |args, _ctx| {
            let (gate, started) = (gate.clone(), started.clone());
            async move {
                if args.to_echo != "probe" {
                    let _ = started.send(());
                    let _permit = gate.acquire().await.map_err(|_| "gate closed")?;
                }
                Ok(Echoed {
                    echoed: args.to_echo,
                })
            }
        });
    }
    def
}

fn addrs() -> service_framework::AddressesFile {
    addresses(json!({"connections": {"in": {
        "a": {"replyer": "127.0.0.1:0"},
        "b": {"replyer": "127.0.0.1:0"},
    }}}))
}

fn call(endpoint: &str, text: &str) -> Result<serde_json::Value, ConnError> {
    request_with(
        endpoint,
        &json!({ "to_echo": text }),
        WorkflowId::None,
        Duration::from_secs(10),
    )
}

fn unavailable(r: &Result<serde_json::Value, ConnError>) -> Option<String> {
    match r {
        Err(ConnError::Remote(w)) if w.code == ErrorCode::Unavailable => Some(w.message.clone()),
        _ => None,
    }
}

/// A requester connected before the stop (a new connection is refused once the replyer
/// has stopped listening, freeing its port for a successor).
struct Client {
    rt: tokio::runtime::Runtime,
    req: service_framework::connections::Requester,
}

impl Client {
    fn new(endpoint: &str) -> Client {
        use service_framework::connections::{Address, Requester, RequesterOptions};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let req = rt.block_on(async {
            Requester::connect(
                &Address::from(endpoint),
                RequesterOptions {
                    timeout: Duration::from_secs(5),
                    ..Default::default()
                },
            )
            .unwrap()
        });
        // Connected and answered once before the stop.
        let c = Client { rt, req };
        assert_eq!(c.call("probe").unwrap(), json!({"echoed": "probe"}));
        c
    }

    fn call(&self, text: &str) -> Result<serde_json::Value, ConnError> {
        self.rt.block_on(
            self.req
                .request::<_, serde_json::Value>(&json!({ "to_echo": text }), WorkflowId::None),
        )
    }

    /// Sends probes until one is refused as stopping (bounded).
    fn wait_until_refused(&self) -> String {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let r = self.call("probe");
            if let Some(why) = unavailable(&r) {
                return why;
            }
            assert!(r.is_ok(), "a probe gets an answer: {r:?}");
            assert!(Instant::now() < until, "the replyer never started refusing");
        }
    }
}

#[test]
fn every_replyer_stops_taking_work_at_once_and_in_flight_work_finishes() {
    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let handle = Service::new(service(gate.clone(), started_tx))
        .addresses(addrs())
        .drain_timeout(Duration::from_secs(20))
        .run_in_background();
    let ready = handle.wait_ready(support::READY).unwrap();
    let (a, b) = (
        ready.endpoint("a").unwrap().to_owned(),
        ready.endpoint("b").unwrap().to_owned(),
    );
    // One request held in each replyer.
    let held: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|ep| std::thread::spawn(move || call(&ep, "held")))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for _ in 0..2 {
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), started.recv()).await })
            .expect("both handlers start")
            .unwrap();
    }
    let (probe_a, probe_b) = (Client::new(&a), Client::new(&b));
    let stopping = std::thread::spawn(move || handle.stop());
    // Both replyers refuse new work while both held requests are still running: the second
    // replyer does not wait for the first one's drain.
    let why_b = probe_b.wait_until_refused();
    let why_a = probe_a.wait_until_refused();
    assert!(
        why_a.contains("stopping") && why_b.contains("stopping"),
        "{why_a} / {why_b}"
    );
    gate.add_permits(2);
    for h in held {
        assert_eq!(h.join().unwrap().unwrap(), json!({"echoed": "held"}));
    }
    stopping
        .join()
        .unwrap()
        .expect("a complete drain is a clean stop");
}

#[test]
fn a_handler_past_the_deadline_is_answered_unavailable_and_the_stop_says_so() {
    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let handle = Service::new(service(gate, started_tx))
        .addresses(addrs())
        .drain_timeout(Duration::from_millis(300))
        .run_in_background();
    let ready = handle.wait_ready(support::READY).unwrap();
    let a = ready.endpoint("a").unwrap().to_owned();
    let held = std::thread::spawn(move || call(&a, "held forever"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), started.recv()).await })
        .expect("the handler starts")
        .unwrap();
    let e = handle.stop().expect_err("work was abandoned");
    assert!(matches!(e, Error::DrainIncomplete(_)), "{e:?}");
    assert!(e.to_string().contains("1 request"), "{e}");
    assert_eq!(
        format!("{:?}", service_framework::cli::fail(&e)),
        format!("{:?}", std::process::ExitCode::from(3))
    );
    let r = held.join().unwrap();
    let why = unavailable(&r).unwrap_or_else(|| panic!("an unavailable reply, got {r:?}"));
    assert!(
        why.contains("stopped before this request finished"),
        "{why}"
    );
}
