//! FrameX's `@remote()`, the bus way (issue 17 item 5), with real processes: a Majordomo
//! broker (`service-framework -s broker`), `pricing` served by worker processes
//! (`framex-pair-bridge --serve-plugins pricing`) and a bridge process whose `checkout`
//! calls `pricing` through `call_plugin_api`, the two moved apart by `[plugins.pricing.remote]`
//! alone; a real HTTP client. The answers match those of a bridge running both in-process;
//! calls spread over the workers; a worker killed with SIGKILL mid-call costs nothing to
//! callers of the idempotent API and a 503 (never a hang, never a second run) to callers of
//! the other.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sf_bridge::{Bridge, Settings};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

// Links the plugins, so the in-process bridge finds them.
use sf_example_bridge_plugins as _;

mod common;
use common::{bridge_binary, service_framework};

/// The broker's heartbeat, which the workers share: a dead worker is dropped within 3 of
/// them.
const HEARTBEAT_S: f64 = 0.2;
/// The worker's line for a call it begins (logged at DEBUG, once a PARTIAL due went out).
const STARTED: &str = "plugin worker: call started";
/// The bridge's wait for one call of `pricing`.
const CALL_TIMEOUT_S: f64 = 8.0;

/// A child process and its output lines (stdout and stderr together).
struct Proc {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the process starts");
        let (tx, lines) = mpsc::unbounded_channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let tx2 = tx.clone();
        tokio::spawn(async move {
            let mut l = BufReader::new(out).lines();
            while let Ok(Some(line)) = l.next_line().await {
                let _ = tx.send(line);
            }
        });
        tokio::spawn(async move {
            let mut l = BufReader::new(err).lines();
            while let Ok(Some(line)) = l.next_line().await {
                let _ = tx2.send(line);
            }
        });
        Proc { child, lines }
    }

    /// The first line (from now) that contains `needle`.
    async fn line_with(&mut self, needle: &str, within: Duration) -> String {
        tokio::time::timeout(within, async {
            while let Some(l) = self.lines.recv().await {
                if l.contains(needle) {
                    return l;
                }
            }
            panic!("the process ended before printing {needle:?}");
        })
        .await
        .unwrap_or_else(|_| panic!("no line with {needle:?} within {within:?}"))
    }

    /// Lines with `needle` among those left once the process has ended (bounded).
    async fn count_rest(&mut self, needle: &str) -> usize {
        let mut n = 0;
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(l) = self.lines.recv().await {
                n += usize::from(l.contains(needle));
            }
        })
        .await;
        assert!(drained.is_ok(), "the output did not end within 10 s");
        n
    }

    /// Forgets the lines printed so far.
    fn skip_printed(&mut self) {
        while self.lines.try_recv().is_ok() {}
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }
}

/// The broker's router and its front-ends for services `plugin.pricing` and
/// `plugin.checkout`.
#[derive(Clone)]
struct Endpoints {
    router: String,
    pricing: String,
    checkout: String,
}

impl Endpoints {
    fn any() -> Endpoints {
        let any = "127.0.0.1:0".to_owned();
        Endpoints {
            router: any.clone(),
            pricing: any.clone(),
            checkout: any,
        }
    }
}

/// The broker, bound where given (port 0: any); where it is bound.
async fn broker(dir: &Path, at: &Endpoints) -> (Proc, Endpoints) {
    std::fs::write(
        dir.join("broker-addresses.json"),
        json!({"connections": {"in": {
            "broker": {"router": at.router},
            "plugin.pricing": {"replyer": at.pricing},
            "plugin.checkout": {"replyer": at.checkout},
        }}})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("broker.json"),
        json!({"heartbeat_interval_s": HEARTBEAT_S, "heartbeat_liveness": 3}).to_string(),
    )
    .unwrap();
    let ready = dir.join("broker.ready");
    let _ = std::fs::remove_file(&ready);
    let p = Proc::spawn(
        Command::new(service_framework())
            .args([
                "-s",
                "broker",
                "-a",
                "broker-addresses.json",
                "-c",
                "broker.json",
            ])
            .args(["-cl", "WARNING"])
            .env("SF_READY_FILE", &ready)
            .current_dir(dir),
    );
    let started = Instant::now();
    let doc: Value = loop {
        if let Some(v) = std::fs::read_to_string(&ready)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
        {
            break v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the broker did not write its ready file within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ep = |k: &str| doc["endpoints"][k].as_str().expect(k).to_owned();
    (
        p,
        Endpoints {
            router: ep("in.broker.router"),
            pricing: ep("in.plugin.pricing.replyer"),
            checkout: ep("in.plugin.checkout.replyer"),
        },
    )
}

/// A `--serve-plugins pricing` worker process, registered with the broker.
async fn worker(dir: &Path) -> Proc {
    worker_of(dir, "pricing").await
}

/// A `--serve-plugins <plugin>` worker process, registered with the broker.
async fn worker_of(dir: &Path, plugin: &str) -> Proc {
    let mut p = Proc::spawn(
        Command::new(bridge_binary())
            .args(["--serve-plugins", plugin, "-cl", "DEBUG"])
            .current_dir(dir),
    );
    p.line_with("plugin workers registered", Duration::from_secs(20))
        .await;
    p
}

/// The bridge process; its URL.
async fn bridge(dir: &Path) -> (Proc, String) {
    let mut p = Proc::spawn(
        Command::new(bridge_binary())
            .args(["--port", "0", "-cl", "WARNING"])
            .current_dir(dir),
    );
    let l = p
        .line_with("bridge serving on ", Duration::from_secs(20))
        .await;
    let url = l
        .split("bridge serving on ")
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    (p, url)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// (HTTP status, envelope without its timestamp).
async fn answer(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.expect("the bridge answers");
    let status = r.status().as_u16();
    let mut v: Value = r.json().await.unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.remove("timestamp");
    }
    (status, v)
}

async fn quote(c: &reqwest::Client, url: &str, sku: &str, work_ms: u64) -> (u16, Value) {
    answer(c.get(format!(
        "{url}/api/v1/checkout/quote?sku={sku}&quantity=3&work_ms={work_ms}"
    )))
    .await
}

async fn pay(c: &reqwest::Client, url: &str, work_ms: u64) -> (u16, Value) {
    answer(
        c.post(format!("{url}/api/v1/checkout/pay"))
            .json(&json!({"sku": "pear", "quantity": 2, "work_ms": work_ms})),
    )
    .await
}

/// `served_by` of a success, taken out so two answers can be compared.
fn served_by(v: &mut Value) -> Option<u32> {
    let pid = v["data"]["served_by"].as_u64()? as u32;
    v["data"].as_object_mut()?.remove("served_by");
    Some(pid)
}

async fn sse(c: &reqwest::Client, url: &str) -> String {
    c.get(format!("{url}/api/v1/pricing/list"))
        .send()
        .await
        .expect("the bridge answers")
        .text()
        .await
        .expect("the stream ends")
}

/// Calls `n` at once; each answer with how long it took.
async fn at_once<F, Fut>(n: usize, call: F) -> Vec<((u16, Value), Duration)>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = (u16, Value)>,
{
    futures::future::join_all((0..n).map(|_| {
        let f = call();
        async move {
            let t = Instant::now();
            let a = f.await;
            (a, t.elapsed())
        }
    }))
    .await
}

/// A fresh folder for one test.
fn folder(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sf-remote-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// How the bridge calls the workers.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// Through the broker, as an MDP client.
    Broker,
    /// Through the broker's front-end for the plugin's service.
    Frontend,
}

/// One config for the bridge and the workers: pricing (and, if said, checkout) runs on
/// workers.
fn config(dir: &Path, at: &Endpoints, checkout_too: bool, via: Via) {
    let mut text = "load_plugins = [\"pricing\", \"checkout\"]\n".to_owned();
    let remote = [("pricing", &at.pricing), ("checkout", &at.checkout)];
    for (plugin, frontend) in &remote[..if checkout_too { 2 } else { 1 }] {
        text += &format!(
            "\n[plugins.{plugin}.remote]\n\
             broker = \"{}\"\nworkers = 3\n\
             heartbeat_interval_s = {HEARTBEAT_S}\ntimeout_s = {CALL_TIMEOUT_S}\n",
            at.router
        );
        if via == Via::Frontend {
            text += &format!("requester = \"{frontend}\"\n");
        }
    }
    std::fs::write(dir.join("config.toml"), text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plugin_moved_to_workers_by_config() {
    let dir = folder("plugins");
    let (_broker, at) = broker(&dir, &Endpoints::any()).await;
    config(&dir, &at, false, Via::Broker);
    let (mut w1, w2) = tokio::join!(worker(&dir), worker(&dir));
    let (_bridge, url) = bridge(&dir).await;

    // The reference: both plugins in this process, no remote key.
    let mut local = Settings::default();
    local.server.port = 0;
    local.load_plugins = vec!["pricing".into(), "checkout".into()];
    let reference = Bridge::new(local).start().await.expect("in-process bridge");
    let here = reference.url();
    let c = client();

    // Same answers: a typed call_api of an idempotent API, the JSON call_plugin_api of the
    // other, an error from the plugin with its status, and the plugin's own stream route.
    let workers = [w1.pid(), w2.pid()];
    let (s1, mut remote) = quote(&c, &url, "apple", 0).await;
    let (s2, mut inproc) = quote(&c, &here, "apple", 0).await;
    let by = served_by(&mut remote).expect("a quote");
    assert!(workers.contains(&by), "served by {by}, workers {workers:?}");
    assert_eq!(served_by(&mut inproc), Some(std::process::id()));
    assert_eq!((s1, &remote), (s2, &inproc));
    assert_eq!(remote["data"]["total_cents"], 90, "{remote}");
    let (s1, mut remote) = pay(&c, &url, 0).await;
    let (s2, mut inproc) = pay(&c, &here, 0).await;
    assert!(workers.contains(&served_by(&mut remote).expect("a charge")));
    served_by(&mut inproc);
    assert_eq!((s1, &remote), (s2, &inproc));
    let (s1, remote) = quote(&c, &url, "kiwi", 0).await;
    let (s2, inproc) = quote(&c, &here, "kiwi", 0).await;
    assert_eq!((s1, &remote), (s2, &inproc));
    assert_eq!(remote["status"], 404, "{remote}");
    assert_eq!(sse(&c, &url).await, sse(&c, &here).await);
    assert!(sse(&c, &url).await.contains("\"sku\":\"pear\""));

    // What the hop costs, one caller (a figure, not a bound).
    for (name, u) in [("in-process", &here), ("on workers", &url)] {
        let mut took: Vec<Duration> = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            let (s, _) = quote(&c, u, "apple", 0).await;
            took.push(t.elapsed());
            assert_eq!(s, 200);
        }
        took.sort();
        eprintln!(
            "GET /api/v1/checkout/quote, pricing {name}: p50 {:?}, p90 {:?} (50 calls)",
            took[25], took[45]
        );
    }

    // The document says which function APIs run on workers and which may run again.
    let (_, doc) = answer(c.get(format!("{url}/api/v1/openapi.json"))).await;
    let apis = &doc["x-function-apis"];
    assert_eq!(apis["pricing.Pricing.quote"]["idempotent"], true, "{apis}");
    assert_eq!(
        apis["pricing.Pricing.charge"]["idempotent"], false,
        "{apis}"
    );
    assert_eq!(apis["pricing.Pricing.charge"]["remote"], true, "{apis}");

    // Load spreads over both worker processes.
    let answers = at_once(30, || quote(&c, &url, "pear", 100)).await;
    let mut per: BTreeMap<u32, usize> = BTreeMap::new();
    for ((s, mut v), _) in answers {
        assert_eq!((s, &v["status"]), (200, &json!(200)), "{v}");
        *per.entry(served_by(&mut v).unwrap()).or_default() += 1;
    }
    eprintln!("30 quotes per worker process: {per:?}");
    for pid in workers {
        assert!(per.get(&pid).copied().unwrap_or(0) >= 5, "{per:?}");
    }

    // SIGKILL a worker in the middle of idempotent calls: every call is answered, by the
    // survivor, within the bridge's timeout.
    w1.skip_printed();
    let calls = at_once(12, || quote(&c, &url, "apple", 800));
    let kill = async {
        w1.line_with(STARTED, Duration::from_secs(10)).await;
        w1.child.start_kill().expect("SIGKILL");
        Instant::now()
    };
    let (answers, _) = tokio::join!(calls, kill);
    let survivor = w2.pid();
    for ((s, mut v), took) in answers {
        assert_eq!((s, &v["status"]), (200, &json!(200)), "{v}");
        assert_eq!(served_by(&mut v), Some(survivor));
        assert!(took < Duration::from_secs_f64(CALL_TIMEOUT_S), "{took:?}");
    }
    let _ = w1.child.wait().await;
    let lost = 1 + w1.count_rest(STARTED).await;
    eprintln!("idempotent calls: 12 answered by the survivor, {lost} of them first begun on the killed worker");

    // Again with a call that is not idempotent: the calls the dead worker held fail with
    // 503 soon after it died, none hangs, none runs twice (the others succeed once).
    let mut w3 = worker(&dir).await;
    w3.skip_printed();
    let started = Instant::now();
    let calls = at_once(12, || pay(&c, &url, 800));
    let kill = async {
        w3.line_with(STARTED, Duration::from_secs(10)).await;
        w3.child.start_kill().expect("SIGKILL");
        started.elapsed()
    };
    let (answers, killed_at) = tokio::join!(calls, kill);
    let (mut ok, mut failed) = (0, Vec::new());
    for ((_, mut v), took) in answers {
        assert!(
            took < Duration::from_secs_f64(CALL_TIMEOUT_S),
            "{took:?}: {v}"
        );
        if v["status"] == 200 {
            assert_eq!(served_by(&mut v), Some(survivor), "{v}");
            ok += 1;
        } else {
            assert_eq!(v["status"], 503, "{v}");
            let m = v["message"].as_str().unwrap_or_default();
            assert!(m.contains("not idempotent"), "{m}");
            failed.push(took.saturating_sub(killed_at));
        }
    }
    eprintln!(
        "non-idempotent calls: {ok} answered by the survivor, {} failed, after the kill: {failed:?}",
        failed.len()
    );
    let _ = w3.child.wait().await;
    // Every call begun on the dead worker failed (none was run again elsewhere), and so did
    // those it had taken but not begun (their PARTIAL had reached the broker).
    let begun = 1 + w3.count_rest(STARTED).await;
    assert!(begun <= failed.len(), "{begun} begun, failed: {failed:?}");
    assert!(failed.len() <= 3, "it held at most its 3 workers' calls");
    assert_eq!(ok + failed.len(), 12);

    // The survivor stops gracefully on SIGTERM.
    let pid = w2.pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut w2 = w2;
    let status = tokio::time::timeout(Duration::from_secs(15), w2.child.wait())
        .await
        .expect("a worker stops within 15 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");

    reference.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_and_bridge_come_back_after_a_broker_restart() {
    let dir = folder("restart");
    let (mut b, at) = broker(&dir, &Endpoints::any()).await;
    config(&dir, &at, false, Via::Broker);
    let mut w = worker(&dir).await;
    let (_bridge, url) = bridge(&dir).await;
    let c = client();
    assert_eq!(quote(&c, &url, "apple", 0).await.0, 200);

    // The broker dies and comes back on the same endpoints: the workers register again (a
    // silent broker) and the bridge's requester reconnects to the front-end.
    b.child.start_kill().expect("SIGKILL");
    let _ = b.child.wait().await;
    w.skip_printed();
    let (_b2, _) = broker(&dir, &at).await;
    for _ in 0..3 {
        w.line_with(
            "plugin worker registered with the broker",
            Duration::from_secs(10),
        )
        .await;
    }
    let (s, v) = quote(&c, &url, "apple", 0).await;
    assert_eq!((s, &v["status"]), (200, &json!(200)), "{v}");
    let (s, v) = pay(&c, &url, 0).await;
    assert_eq!((s, &v["status"]), (200, &json!(200)), "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plugin_on_workers_calls_another_on_workers() {
    // checkout and pricing both on workers: the bridge calls checkout's worker, whose
    // call_api reaches pricing's worker through the broker, unchanged.
    let dir = folder("chain");
    let (_broker, at) = broker(&dir, &Endpoints::any()).await;
    config(&dir, &at, true, Via::Frontend);
    let (pricing, mut checkout) =
        tokio::join!(worker_of(&dir, "pricing"), worker_of(&dir, "checkout"));
    let (_bridge, url) = bridge(&dir).await;
    let c = client();
    let (s, mut v) = quote(&c, &url, "pear", 0).await;
    assert_eq!((s, &v["status"]), (200, &json!(200)), "{v}");
    assert_eq!(served_by(&mut v), Some(pricing.pid()));
    assert_eq!(v["data"]["total_cents"], 135, "{v}");
    // Served by checkout's worker, not in the bridge.
    checkout
        .line_with("checkout.Checkout.quote", Duration::from_secs(5))
        .await;
    let (s, v) = quote(&c, &url, "kiwi", 0).await;
    assert_eq!((s, &v["status"]), (404, &json!(404)), "{v}");
    let (s, mut v) = pay(&c, &url, 0).await;
    assert_eq!((s, &v["status"]), (200, &json!(200)), "{v}");
    assert_eq!(served_by(&mut v), Some(pricing.pid()));
    drop(checkout);
    let _ = std::fs::remove_dir_all(&dir);
}
