//! `service-framework up` as a user runs it: real processes (up, the services, the bridge),
//! real sockets, a real HTTP request. Every wait is for a line of up's output or an answer,
//! bounded by a timeout.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{bridge_data, call, check, signal, workspace_root, UpProcess};

const START: Duration = Duration::from_secs(60);

#[test]
fn every_example_topology_checks_clean() {
    let files: Vec<_> = std::fs::read_dir(workspace_root().join("examples"))
        .unwrap()
        .flatten()
        .filter(|d| d.path().is_dir())
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .map(|f| f.path())
        // Topologies: every .toml but a crate's manifest (examples/bridge-plugins is a crate).
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && !p.ends_with("Cargo.toml"))
        .collect();
    assert!(files.len() >= 2, "{files:?}");
    for f in files {
        let (code, out, err) = check(&f, workspace_root());
        assert_eq!(code, 0, "{}:\n{out}\n{err}", f.display());
        assert!(
            out.contains(": ok") && out.contains("start order: "),
            "{out}"
        );
    }
}

#[test]
fn check_names_every_mistake_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        r#"
edges = [
  "a.squares -> b.items",
  "b.squares -> a.items",
  "sink.squares -> a.items",
  "a.squares -> sink.results",
  "nobody.x -> sink.squares",
  "a.nothing -> sink.squares",
  "c.request -> sink.results",
  "d.squares -> a.items",
]
[services.a]
service = "pipeline_square"
[services.b]
service = "pipeline_square"
[services.sink]
service = "pipeline_sink"
replicas = 2
[services.c]
service = "echo_requester"
[services.d]
service = "pipeline_square"
options = { connections = { out = { squares = { acked = false } } } }
[services.ghost]
service = "no_such_service_binary"
"#,
    )
    .unwrap();
    let (code, out, err) = check(&file, dir.path());
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        err.contains("unknown service \"no_such_service_binary\""),
        "{err}"
    );
    // With the unknown one gone, every other mistake is named at once.
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "[services.ghost]\nservice = \"no_such_service_binary\"\n",
        "",
    );
    std::fs::write(&file, text).unwrap();
    let (code, out, err) = check(&file, dir.path());
    assert_eq!(code, 2, "{out}\n{err}");
    for expected in [
        // direction
        "sink.squares is an in-connection or in-state of \"sink\"",
        // kind
        "a.squares is a pusher and sink.results is a replyer: a pusher feeds a puller",
        // unknown service
        "there is no service \"nobody\"",
        // unknown connection, with what there is
        "\"a\" has no out-connection or out-state \"nothing\" (its out side: squares (pusher))",
        // a replicated service that would bind
        "service \"sink\" has 2 replicas, but it binds in.squares.puller",
        // a data-flow cycle
        "these edges form a cycle: \"a.squares -> b.items\", \"b.squares -> a.items\"",
        // acked on one end only (the options section overrides the code)
        "the pusher d.squares is not acked and the puller a.items is acked: both ends must agree",
    ] {
        assert!(err.contains(expected), "{expected:?} not in:\n{err}");
    }
    assert!(out.is_empty(), "{out}");
}

/// The pipeline example with its bridge on a free port, `count` items and `work_ms` each.
fn pipeline_copy(dir: &Path, count: u64, work_ms: u64) -> std::path::PathBuf {
    let text = std::fs::read_to_string(workspace_root().join("examples/pipeline/pipeline.toml"))
        .unwrap()
        .replace("port = 8080", "port = 0")
        .replace(
            "config = { count = 1000000, in_flight = 256, rate = 50 }",
            &format!("config = {{ count = {count}, in_flight = 256 }}"),
        )
        .replace(
            "config = { work_ms = 0 }",
            &format!("config = {{ work_ms = {work_ms} }}"),
        );
    assert!(text.contains(&format!("count = {count}")), "{text}");
    let f = dir.join("pipeline.toml");
    std::fs::write(&f, text).unwrap();
    f
}

fn totals(port: u16) -> Value {
    bridge_data(port, "/api/v1/bus/results", "{}")
}

fn sum_of_squares(n: u64) -> i64 {
    (0..n as i64).map(|i| i * i).sum()
}

#[test]
fn the_pipeline_loses_nothing_when_a_worker_is_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let n = 20_000;
    let file = pipeline_copy(dir.path(), n, 2);
    let mut up = UpProcess::start(&[file.to_str().unwrap()], dir.path());
    let port = up.bridge_port(START);
    let victim = up.first_ready_pid("square.1", START);
    up.find_line(START, |l| l == "[up] every service started");

    // Mid-stream: some results are in, far from all.
    let deadline = Instant::now() + START;
    let at_kill = loop {
        let t = totals(port);
        if t["count"].as_u64().unwrap() >= 1000 {
            break t;
        }
        assert!(Instant::now() < deadline, "the stream did not start: {t}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        at_kill["count"].as_u64().unwrap() < n,
        "the stream ended before the kill: {at_kill}"
    );
    signal(victim, "KILL");
    up.wait_line(START, |l| {
        l.starts_with("[up] square.1: restarting (killed by SIGKILL")
    });
    let again = up.ready_pid("square.1", START);
    assert_ne!(again, victim);
    // Facts, whichever order they come in (the other worker may finish during the backoff).
    up.find_line(START, |l| {
        l.contains(&format!("Sent {n} items")) && l.contains("every one acknowledged")
    });
    up.find_line(START, |l| l == "[up] source: done");

    // Every item once in the results, whatever was delivered twice.
    let t = totals(port);
    assert_eq!(t["count"].as_u64(), Some(n), "{t}");
    assert_eq!(t["max_id"].as_u64(), Some(n - 1), "{t}");
    assert_eq!(t["sum"].as_i64(), Some(sum_of_squares(n)), "{t}");
    eprintln!(
        "killed square.1 at {} results; {} duplicates absorbed by the sink",
        at_kill["count"], t["duplicates"]
    );

    // SIGTERM: producers first, the sink last, exit 0.
    up.signal("TERM");
    let status = up.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}:\n{}", up.tail());
    let pos = |needle: &str| {
        up.seen
            .iter()
            .position(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("{needle:?} missing:\n{}", up.tail()))
    };
    let sink = pos("[up] sink: stopping");
    for producer in [
        "[up] square.1: stopping",
        "[up] square.2: stopping",
        "[up] web: stopping",
    ] {
        assert!(
            pos(producer) < sink,
            "{producer} after the sink:\n{}",
            up.tail()
        );
    }
    for stopped in ["sink", "square.1", "square.2", "web"] {
        pos(&format!("[up] {stopped}: stopped (exit 0)"));
    }
    assert!(up.seen.iter().any(|l| l == "[up] all stopped"));
}

#[test]
fn sigint_stops_every_service_and_log_lines_carry_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("echo.toml");
    std::fs::write(
        &file,
        r#"
edges = ["requester.request -> echo.reply"]
[services.echo]
service = "echo_replyer"
[services.requester]
service = "echo_requester"
main = true
config = { num_req_to_send = 3 }
"#,
    )
    .unwrap();
    let mut up = UpProcess::start(&[file.to_str().unwrap()], dir.path());
    // The replyer starts first (it is the requester's consumer).
    up.first_ready_pid("echo", START);
    for i in 0..3 {
        let want = format!("Got Response: {{\"echoed\":\"Hello World {i}\"}}");
        let l = up.find_line(START, |l| l.ends_with(&want));
        assert!(l.starts_with("requester | "), "{l}");
    }
    up.find_line(START, |l| l == "[up] requester: done");
    // `ls FILE`: the running services of this file, by their control endpoints.
    let rows = support::sf_json("ls", &file);
    let names: Vec<String> = rows.iter().map(|r| r["name"].to_string()).collect();
    assert_eq!(names, ["\"echo_replyer\""], "{rows:?}");
    let sf = Path::new(support::UP).with_file_name("service-framework");
    // Another file, with nothing of it running: said plainly, exit 1.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, "[services.x]\nservice = \"bus\"\n").unwrap();
    let ls = Command::new(&sf)
        .args(["ls", other.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(ls.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&ls.stderr)
            .contains("no running `service-framework up` of this file"),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    up.signal("INT");
    let status = up.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", up.tail());
    assert!(
        up.seen.iter().any(|l| l == "[up] echo: stopped (exit 0)"),
        "{}",
        up.tail()
    );
}

#[test]
fn the_order_book_runs_under_up_mirror_converging_and_cancel_reaching_the_exchange() {
    let example = workspace_root().join("examples/order_book/order_book.toml");
    let mut up = UpProcess::start(&[example.to_str().unwrap()], workspace_root());
    let feed = up.slot_address(START, "feed", "in.cancel_order.replyer");
    let book = up.slot_address(START, "mirror", "in.book.replyer");
    up.find_line(START, |l| l == "[up] every service started");

    // The mirror follows both delta states: prices arrive as Python's Decimal maps.
    let deadline = Instant::now() + Duration::from_secs(30);
    let state = loop {
        let b = call(&book, "{}").expect("book answers");
        if b["market_price"]["min_ask"].is_object() && b["order_book"]["asks"].is_object() {
            break b;
        }
        assert!(Instant::now() < deadline, "the mirror has nothing: {b}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        state["market_price"]["min_ask"]["__decimal__"], true,
        "{state}"
    );

    // cancel_order -> external target -> exchange: once, then not_found upstream.
    let ok = call(&feed, r#"{"order_id": "o-2"}"#).expect("a known order cancels");
    assert_eq!(ok["order_id"], "o-2", "{ok}");
    let again = call(&feed, r#"{"order_id": "o-2"}"#).unwrap_err();
    assert!(
        again.contains("dependency_failed") && again.contains("not_found"),
        "{again}"
    );

    up.signal("TERM");
    let status = up.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}:\n{}", up.tail());
}
