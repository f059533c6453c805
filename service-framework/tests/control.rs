//! The control endpoint every service has (`ping`, `info`, `stats`, `health`) and the CLI
//! verbs over it (`ls`, `ping`, `info`, `stats`): real sockets, counters that move by exactly
//! what each test sent.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use service_framework::connections::WorkflowId;
use service_framework::connections::{typed, Error as ConnError, ErrorCode, Replyer as RawReplyer};
use service_framework::prelude::*;
use service_framework::testing::{call_once, TestService};

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

type Prices = std::collections::BTreeMap<String, i64>;

const ADD: Replyer<Add, Sum> = Replyer::new("add");
const SUMS: Publisher<Sum> = Publisher::new("sums_out").topic("sums");
const TICKS: Subscriber<Tick> = Subscriber::new("ticks_in").topic("ticks");
const JOBS: Puller<Tick> = Puller::new("jobs_in");
const DONE: Pusher<Sum> = Pusher::new("done_out");
const DOUBLER: Requester<Tick, Tick> = Requester::new("doubler");
const PRICES: DeltaStateOut<Prices> = DeltaStateOut::new("prices");

/// Every kind at once: `add` fails on a negative `a`, publishes each sum and records it in a
/// delta state; ticks fail on a negative `n`; each job is doubled downstream and pushed.
fn calc() -> ServiceDef {
    ServiceDef::new("calc")
        .description("adds, publishes, doubles")
        .version("1.2.3")
        .metadata("team", "numbers")
        .stats_data(|| {
            let mut m = serde_json::Map::new();
            m.insert("answer".into(), json!(42));
            m
        })
        .publisher(SUMS)
        .pusher(DONE)
        .requester(DOUBLER)
        .delta_update_out(PRICES)
        .replyer(ADD, |args, ctx| async move {
            if args.a < 0 {
                return Err(ServiceError::new(format!("negative a: {}", args.a)));
            }
            let sum = Sum {
                total: args.a + args.b,
            };
            ctx.publish(&SUMS, &sum).await?;
            ctx.update_state(
                &PRICES,
                &Prices::from([(format!("p{}", args.a), sum.total)]),
            )
            .await?;
            Ok(sum)
        })
        .subscriber(TICKS, |tick, _ctx| async move {
            if tick.n < 0 {
                return Err(ServiceError::new("negative tick"));
            }
            Ok(())
        })
        .puller(JOBS, |tick, ctx| async move {
            let doubled = ctx.request(&DOUBLER, &tick).await?;
            ctx.push(&DONE, &Sum { total: doubled.n }).await?;
            Ok(())
        })
}

async fn ask(control: &str, verb: &str) -> Result<Value, ConnError> {
    call_once::<Value, Value>(
        control,
        &json!({ "verb": verb }),
        WorkflowId::None,
        Duration::from_secs(5),
    )
    .await
}

fn conn<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no connection {name} in {stats}"))
}

#[tokio::test]
async fn every_verb_and_counters_that_move_by_what_was_sent() {
    let svc = TestService::builder(calc())
        .stub(&DOUBLER, |t: Tick| async move { Ok(Tick { n: t.n * 2 }) })
        .start()
        .await
        .unwrap();
    let control = svc
        .control()
        .expect("a control endpoint by default")
        .to_owned();
    assert!(control.starts_with("tcp://127.0.0.1:"), "{control}");

    // ping
    let ping = ask(&control, "ping").await.unwrap();
    assert_eq!(ping["name"], "calc");
    assert_eq!(ping["version"], "1.2.3");
    assert_eq!(ping["id"].as_str().unwrap().len(), 36, "{ping}");
    assert_eq!(ask(&control, "ping").await.unwrap()["id"], ping["id"]);

    // 5 good requests, 2 failing ones.
    for a in 0..5 {
        svc.call(&ADD, &Add { a, b: 1 }).await.unwrap();
    }
    for a in [-1, -2] {
        svc.call(&ADD, &Add { a, b: 1 }).await.unwrap_err();
    }
    // 3 ticks, one failing; 2 jobs.
    for n in [1, -1, 2] {
        svc.publish(&TICKS, &Tick { n }).await.unwrap();
    }
    svc.wait_for_handler("ticks_in", 3).await.unwrap();
    for n in [5, 6] {
        svc.push(&JOBS, &Tick { n }).await.unwrap();
    }
    svc.wait_for_handler("jobs_in", 2).await.unwrap();

    let stats = ask(&control, "stats").await.unwrap();
    assert_eq!(stats["name"], "calc");
    assert!(stats["started"].as_str().unwrap().ends_with('Z'), "{stats}");
    assert_eq!(stats["data"]["answer"], 42);
    let add = conn(&stats, "add");
    assert_eq!(add["kind"], "replyer");
    assert_eq!(add["requests"], 7, "{add}");
    assert_eq!(add["replied"], 5, "{add}");
    assert_eq!(add["errors"], 2, "{add}");
    assert!(
        add["last_error"]
            .as_str()
            .unwrap()
            .contains("negative a: -2"),
        "{add}"
    );
    assert!(add["processing_time_s"].as_f64().unwrap() > 0.0, "{add}");
    assert!(
        add["average_processing_time_s"].as_f64().unwrap() > 0.0,
        "{add}"
    );
    assert_eq!(add["in_flight"], 0);
    let sums = conn(&stats, "sums_out");
    assert_eq!(sums["published"], 5, "{sums}");
    assert_eq!(sums["dropped"], 0, "{sums}");
    let ticks = conn(&stats, "ticks_in");
    assert_eq!(ticks["delivered"], 3, "{ticks}");
    assert_eq!(ticks["handled"], 3, "{ticks}");
    assert_eq!(ticks["errors"], 1, "{ticks}");
    assert_eq!(ticks["lost"], 0, "{ticks}");
    assert!(ticks["last_error"]
        .as_str()
        .unwrap()
        .contains("negative tick"));
    let jobs = conn(&stats, "jobs_in");
    assert_eq!(jobs["pulled"], 2, "{jobs}");
    assert_eq!(jobs["errors"], 0, "{jobs}");
    let doubler = conn(&stats, "doubler");
    assert_eq!(doubler["requests"], 2, "{doubler}");
    assert_eq!(doubler["timeouts"], 0, "{doubler}");
    assert_eq!(conn(&stats, "done_out")["pushed"], 2);
    let prices = &stats["states"][0];
    assert_eq!(prices["name"], "prices");
    assert_eq!(prices["kind"], "delta_update_out");
    assert!(prices["number"].as_i64().unwrap() >= 5, "{prices}");
    // The control endpoint is not one of the service's own connections.
    assert_eq!(stats["connections"].as_array().unwrap().len(), 6, "{stats}");

    // info: kinds, endpoints, options and schemas.
    let info = ask(&control, "info").await.unwrap();
    assert_eq!(info["description"], "adds, publishes, doubles");
    assert_eq!(info["metadata"]["team"], "numbers");
    assert_eq!(info["control"], control.as_str());
    let add = conn(&info, "add");
    assert_eq!(add["kind"], "replyer");
    assert_eq!(add["endpoint"], svc.endpoint("add").unwrap());
    assert!(add["args"].to_string().contains("\"a\""), "{add}");
    assert!(add["returns"].to_string().contains("total"), "{add}");
    assert_eq!(conn(&info, "sums_out")["options"]["topic"], "sums");
    assert_eq!(info["states"][0]["kind"], "delta_update_out");
    assert!(
        info["states"][0]["endpoints"]["replyer"].is_string(),
        "{info}"
    );

    // health: ready, not stopping, the outbound peers up.
    let health = ask(&control, "health").await.unwrap();
    assert_eq!(health["ready"], true);
    assert_eq!(health["stopping"], false);
    let doubler = conn(&health, "doubler");
    assert_eq!(doubler["up"], true, "{health}");
    // Every connection with peers reports them: the testkit's publisher, pusher and the
    // puller capturing `done_out` are connected, one each.
    for name in ["ticks_in", "jobs_in", "done_out", "sums_out"] {
        let c = conn(&health, name);
        assert_eq!(c["peers"], 1, "{name}: {health}");
        assert_eq!(c["up"], true, "{name}: {health}");
    }
    assert!(conn(&health, "add")["peers"].is_u64(), "{health}");
    assert_eq!(
        health["connections"].as_array().unwrap().len(),
        6,
        "{health}"
    );

    // An unknown verb names the verbs.
    match ask(&control, "reboot").await {
        Err(ConnError::Remote(e)) => {
            assert_eq!(e.code, ErrorCode::InvalidArgs);
            assert!(
                e.message.contains("ping, info, stats, health"),
                "{}",
                e.message
            );
        }
        other => panic!("{other:?}"),
    }
    svc.stop().await.unwrap();
}

const UP: Requester<Tick, Tick> = Requester::new("up");

#[tokio::test]
async fn health_sees_a_peer_go_away() {
    // A replyer of our own, so that the test can take it away.
    let peer = RawReplyer::bind(
        &"127.0.0.1:0".into(),
        typed(|t: Tick, _| async move { Ok::<_, service_framework::connections::WireError>(t) }),
        Default::default(),
    )
    .await
    .unwrap();
    let addrs = service_framework::AddressesFile::from_value(json!({
        "connections": {"out": {"up": {"requester": peer.endpoint()}}}
    }))
    .unwrap();
    let def = ServiceDef::new("watcher").requester(UP);
    let handle = service_framework::Service::new(def)
        .addresses(addrs)
        .run_in_background();
    let ready = handle
        .wait_ready_async(Duration::from_secs(5))
        .await
        .unwrap();
    let control = ready.control().unwrap().to_owned();
    let up = |want: bool| {
        let control = control.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let h = ask(&control, "health").await.unwrap();
                if conn(&h, "up")["up"] == want {
                    return h;
                }
                assert!(Instant::now() < deadline, "never up={want}: {h}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let h = up(true).await;
    assert_eq!(conn(&h, "up")["peers"], 1);
    peer.shutdown().await;
    let h = up(false).await;
    assert_eq!(conn(&h, "up")["peers"], 0);
    handle.stop_async().await.unwrap();
}

#[tokio::test]
async fn control_can_be_placed_or_turned_off() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let at = format!("127.0.0.1:{port}");
    let addrs = |control: Value| {
        service_framework::AddressesFile::from_value(json!({
            "connections": {"in": {"reply": {"replyer": "127.0.0.1:0"}}},
            "control": control,
        }))
        .unwrap()
    };
    let handle = service_framework::Service::new(support::echo_service("placed", ""))
        .addresses(addrs(json!(at)))
        .run_in_background();
    let ready = handle
        .wait_ready_async(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(ready.control(), Some(format!("tcp://{at}").as_str()));
    assert_eq!(ask(&at, "ping").await.unwrap()["name"], "placed");
    handle.stop_async().await.unwrap();

    let handle = service_framework::Service::new(support::echo_service("dark", ""))
        .addresses(addrs(json!(false)))
        .run_in_background();
    let ready = handle
        .wait_ready_async(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(ready.control(), None);
    handle.stop_async().await.unwrap();

    // A wrong shape is named.
    let e = service_framework::AddressesFile::from_value(json!({"control": 7})).unwrap_err();
    assert!(e.to_string().contains("control"), "{e}");
}

#[test]
fn cli_ls_ping_info_stats_over_control_addresses() {
    let (handle, ready) = support::start(
        support::echo_service("echoer", "> ").version("9.9"),
        support::replyer_at("127.0.0.1:0"),
    );
    let control = ready.control().unwrap().to_owned();
    let endpoint = ready.endpoint("reply").unwrap().to_owned();
    for _ in 0..3 {
        support::request(&endpoint, &json!({"to_echo": "x"})).unwrap();
    }

    let ls = support::sf(&["ls", &control]);
    assert!(ls.status.success(), "{}", ls.stderr);
    let mut lines = ls.stdout.lines();
    let header = lines.next().unwrap();
    for col in ["NAME", "ID", "VERSION", "ADDRESS"] {
        assert!(header.contains(col), "{}", ls.stdout);
    }
    let row = lines.next().unwrap();
    assert!(
        row.starts_with("echoer") && row.contains("9.9") && row.contains(&control),
        "{}",
        ls.stdout
    );

    let ping = support::sf(&["ping", &control, "--json"]);
    assert!(ping.status.success(), "{}", ping.stderr);
    let v: Value = serde_json::from_str(ping.stdout.trim()).unwrap();
    assert_eq!(v["name"], "echoer");
    assert_eq!(v["address"], control.as_str());

    let info = support::sf(&["info", &control]);
    assert!(info.status.success(), "{}", info.stderr);
    assert!(info.stdout.contains("echoer 9.9"), "{}", info.stdout);
    assert!(
        info.stdout.contains("reply") && info.stdout.contains(&endpoint),
        "{}",
        info.stdout
    );

    let stats = support::sf(&["stats", &control]);
    assert!(stats.status.success(), "{}", stats.stderr);
    let row = stats
        .stdout
        .lines()
        .find(|l| l.contains("in.reply"))
        .unwrap_or_else(|| panic!("{}", stats.stdout));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[2], "replyer", "{row}");
    assert_eq!(cells[3], "3", "{row}");
    assert_eq!(cells[4], "0", "{row}");

    let json_stats = support::sf(&["stats", &control, "--json"]);
    let v: Value = serde_json::from_str(json_stats.stdout.trim()).unwrap();
    assert_eq!(v["connections"][0]["requests"], 3);

    // An address nobody answers on fails, saying which.
    let dead = support::sf(&["ping", "127.0.0.1:1", "--timeout", "0.3"]);
    assert!(!dead.status.success());
    assert!(dead.stderr.contains("127.0.0.1:1"), "{}", dead.stderr);
    handle.stop().unwrap();
}

/// Asks `health` until `conn`'s peer count is `want` (within 5 s).
async fn wait_peers(control: &str, conn_name: &str, want: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let h = ask(control, "health").await.unwrap();
        if conn(&h, conn_name)["peers"] == want {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "{conn_name} never had {want} peers: {h}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn health_counts_a_replyers_callers_as_they_come_and_go() {
    let def = ServiceDef::new("adder").replyer(ADD, |args, _ctx| async move {
        Ok(Sum {
            total: args.a + args.b,
        })
    });
    let svc = TestService::start(def).await.unwrap();
    let control = svc.control().unwrap().to_owned();
    wait_peers(&control, "add", 0).await;
    let endpoint = svc.endpoint("add").unwrap().to_owned();
    let callers: Vec<_> = (0..2)
        .map(|_| {
            service_framework::connections::Requester::connect(
                &endpoint.as_str().into(),
                Default::default(),
            )
            .unwrap()
        })
        .collect();
    let h = wait_peers(&control, "add", 2).await;
    assert_eq!(conn(&h, "add")["up"], true);
    drop(callers);
    let h = wait_peers(&control, "add", 0).await;
    assert_eq!(conn(&h, "add")["up"], false);
    svc.stop().await.unwrap();
}
