//! The mixed example (examples/mixed/) run by `service-framework up`: a Python
//! service_framework 0.0.18 service between Rust services, edges both ways. Real processes,
//! real sockets; every wait is for a line of up's output or an answer, with a timeout.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{bridge_data, call, workspace_root, UpProcess};

const START: Duration = Duration::from_secs(60);

/// The example in `dir`: its topology (the bridge on a free port, ticks every 0.1 s) and
/// its Python module beside it, as in examples/mixed/.
fn mixed_copy(dir: &Path) -> PathBuf {
    let example = workspace_root().join("examples/mixed");
    let text = std::fs::read_to_string(example.join("mixed.toml")).unwrap();
    let text = text
        .replace("port = 8080", "port = 0")
        .replace("interval_s = 0.5", "interval_s = 0.1");
    assert!(
        text.contains("port = 0") && text.contains("interval_s = 0.1"),
        "{text}"
    );
    std::fs::copy(example.join("quotes.py"), dir.join("quotes.py")).unwrap();
    let f = dir.join("mixed.toml");
    std::fs::write(&f, text).unwrap();
    f
}

/// quotes.py's price of the `index`th symbol at `tick` (open 100.0).
fn price(index: usize, tick: i64) -> f64 {
    let n = tick + 1;
    100.0 + 10.0 * index as f64 + 0.25 * n as f64 - 1.25 * (n / 5) as f64
}

const SYMBOLS: [&str; 3] = ["ACME", "GLOBEX", "INITECH"];

fn assert_prices(prices: &Value, tick: i64, what: &str) {
    for (i, s) in SYMBOLS.iter().enumerate() {
        let got = prices[s]
            .as_f64()
            .unwrap_or_else(|| panic!("{what}: no price of {s} in {prices}"));
        assert!(
            (got - price(i, tick)).abs() < 1e-9,
            "{what}: {s} at tick {tick} is {got}, not {}",
            price(i, tick)
        );
    }
}

#[test]
fn python_and_rust_services_feed_each_other_under_up() {
    let dir = tempfile::tempdir().unwrap();
    let file = mixed_copy(dir.path());
    let mut up = UpProcess::start(&[file.to_str().unwrap()], dir.path());

    // Consumers first: the Rust mirror, then the Python service (ready once its ports
    // accept), then the Rust ticker and the bridge.
    up.first_ready_pid("board", START);
    up.first_ready_pid("quotes", START);
    up.find_line(START, |l| l == "[up] every service started");
    for service in ["clock", "web"] {
        let ready = format!("[up] {service}: ready (pid ");
        assert!(
            up.seen.iter().any(|l| l.starts_with(&ready)),
            "{service} is not ready:\n{}",
            up.tail()
        );
    }
    let quote_at = up.slot_address(START, "quotes", "in.quote.replyer");
    let board_at = up.slot_address(START, "board", "in.get_weather.replyer");
    let web_port = up.bridge_port(START);

    // Rust -> Python, publish/subscribe: the ticker's ticks reach quotes.py, which prices
    // every symbol at each.
    const PRICED: &str = "quotes | Priced tick ";
    let line = up.wait_line(START, |l| {
        l.strip_prefix(PRICED)
            .and_then(|r| r.split(':').next())
            .and_then(|n| n.parse::<i64>().ok())
            .is_some_and(|n| n >= 3)
    });
    let rest = line.strip_prefix(PRICED).unwrap();
    let (tick, prices) = rest.split_once(": ").unwrap();
    let tick: i64 = tick.parse().unwrap();
    assert_prices(&serde_json::from_str(prices).unwrap(), tick, &line);

    // Rust -> Python, request/reply: the bridge calls quotes.py's replyer.
    let q = bridge_data(web_port, "/api/v1/bus/quote", r#"{"symbol": "GLOBEX"}"#);
    assert_eq!(q["symbol"], "GLOBEX", "{q}");
    let t = q["tick"].as_i64().expect("a tick");
    assert!(t >= tick, "{q}");
    assert!(
        (q["price"].as_f64().unwrap() - price(1, t)).abs() < 1e-9,
        "{q}"
    );
    // And so does `service-framework call`; an unknown symbol is an answer, not a crash.
    let q = call(&quote_at, r#"{"symbol": "NOPE"}"#).expect("it answers");
    assert_eq!(q["price"], -1.0, "{q}");
    assert!(
        q["error"].as_str().unwrap_or("").contains("unknown symbol"),
        "{q}"
    );
    let q = call(&quote_at, r#"{"symbol": "ACME"}"#).expect("it answers");
    assert_eq!(q["symbol"], "ACME", "{q}");

    // Python -> Rust, full state: quotes.py publishes the whole board after each tick; the
    // Rust weather_mirror follows it and answers with its copy.
    // (The board of the tick seen is published just after the line: asked until there.)
    let deadline = Instant::now() + START;
    let b = loop {
        let b = call(&board_at, "{}").expect("it answers");
        if b["state"]["tick"].as_i64().is_some_and(|t| t >= tick) {
            break b;
        }
        assert!(Instant::now() < deadline, "the mirror stays behind: {b}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let state = &b["state"];
    let t = state["tick"].as_i64().unwrap();
    assert!(b["current_num"].as_i64().unwrap() >= 0, "{b}");
    assert_prices(&state["prices"], t, "the mirror's board");
    // The same through the bridge.
    let b = bridge_data(web_port, "/api/v1/bus/board", "{}");
    assert!(b["state"]["tick"].as_i64().unwrap() >= t, "{b}");
    assert_prices(
        &b["state"]["prices"],
        b["state"]["tick"].as_i64().unwrap(),
        "the board through the bridge",
    );

    // SIGTERM: every service stops, the Python one as 0.0.18 does, and up exits 0.
    up.signal("TERM");
    let status = up.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}:\n{}", up.tail());
    for stopped in ["clock", "web", "board"] {
        let want = format!("[up] {stopped}: stopped (exit 0)");
        assert!(up.seen.contains(&want), "{want:?} missing:\n{}", up.tail());
    }
    assert!(
        up.seen
            .iter()
            .any(|l| l == "[up] quotes: stopped (SIGTERM, as 0.0.18 stops)"),
        "{}",
        up.tail()
    );
    assert!(
        up.seen.iter().any(|l| l == "[up] all stopped"),
        "{}",
        up.tail()
    );
}
