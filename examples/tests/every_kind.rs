//! The examples for each connection and state kind, run as a user runs them
//! (`service-framework -s NAME -a FILE [-c FILE] [-m] [--key value]`): a topic publisher and
//! its listener directly and through the bus, and a full-state source with an early and a
//! late mirror. Creation options come from the addresses files' `options` section.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use service_framework::connections::WorkflowId;
use support::*;

/// `service-framework ARGS` as a process.
fn sf(args: &[&str]) -> Proc {
    let mut cmd = Command::new(service_framework());
    cmd.args(args);
    Proc::spawn(cmd)
}

/// `N` distinct TCP ports that were free a moment ago.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

fn ticks_seen(p: &Proc) -> Vec<String> {
    p.stdout
        .iter()
        .filter(|l| l.starts_with("Got Tick: "))
        .cloned()
        .collect()
}

fn expected_ticks(count: i64) -> Vec<String> {
    (0..count)
        .map(|n| format!("Got Tick: {{\"n\":{n}}}"))
        .collect()
}

/// The ticker publishes `count` ticks at `publisher` (binding, or connecting to a bus with
/// `via_bus`), waiting 1.5 s after start (set in the file: the listener's reconnect, at most
/// about 0.6 s, lands in that window), and exits 0.
fn run_ticker(dir: &Scratch, publisher: u16, via_bus: bool, count: i64) -> Proc {
    let mut options = json!({"wait_after_creation_s": 1.5});
    if via_bus {
        options["is_x_pub"] = json!(true);
    }
    let file = dir.write(
        &format!("ticker_{via_bus}.json"),
        &json!({
            "connections": {"out": {"ticks": {"publisher": format!("127.0.0.1:{publisher}")}}},
            "options": {"connections": {"out": {"ticks": options}}},
        })
        .to_string(),
    );
    let count = count.to_string();
    let mut ticker = sf(&[
        "-s",
        "ticker",
        "-a",
        file.to_str().unwrap(),
        "-m",
        "--count",
        &count,
        "--interval_s",
        "0.02",
    ]);
    let status = ticker.finish(Duration::from_secs(15));
    assert!(
        status.success(),
        "ticker: {status}\n{}",
        ticker.stderr_text()
    );
    ticker
}

fn start_listener(dir: &Scratch, subscriber: u16, tag: &str) -> Proc {
    let file = dir.write(
        &format!("listener_{tag}.json"),
        &json!({"connections": {"in": {"ticks": {"subscriber": format!("127.0.0.1:{subscriber}")}}}})
            .to_string(),
    );
    let mut listener = sf(&["-s", "tick_listener", "-a", file.to_str().unwrap()]);
    listener.wait_for_stderr("in.ticks: ", START);
    listener
}

#[test]
fn a_topic_publisher_and_its_listener_directly_and_through_the_bus() {
    let dir = Scratch::new("ticks");
    // Directly: the ticker binds, the listener connects.
    let [direct] = free_ports();
    let mut listener = start_listener(&dir, direct, "direct");
    let ticker = run_ticker(&dir, direct, false, 5);
    listener.wait_for_stdout("Got Tick: {\"n\":4}", Duration::from_secs(5));
    assert_eq!(
        ticks_seen(&listener),
        expected_ticks(5),
        "{}",
        ticker.stdout_text()
    );

    // Through the bus: both connect to `service-framework -s bus`.
    let [publishers, subscribers] = free_ports();
    let bus_file = dir.write(
        "bus.json",
        &json!({"connections": {"in": {"bus": {
            "publishers": format!("127.0.0.1:{publishers}"),
            "subscribers": format!("127.0.0.1:{subscribers}"),
        }}}})
        .to_string(),
    );
    let mut bus = sf(&["-s", "bus", "-a", bus_file.to_str().unwrap()]);
    bus.wait_for_stderr("bus proxy running", START);
    let mut via_bus = start_listener(&dir, subscribers, "bus");
    run_ticker(&dir, publishers, true, 5);
    via_bus.wait_for_stdout("Got Tick: {\"n\":4}", Duration::from_secs(5));
    assert_eq!(
        ticks_seen(&via_bus),
        expected_ticks(5),
        "{}",
        bus.stderr_text()
    );
    // The direct listener heard nothing of the bus's ticks.
    assert_eq!(ticks_seen(&listener), expected_ticks(5));
}

/// Asks the mirror until its state is `expected` (bounded).
fn until_weather(endpoint: &str, expected: &Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = request(endpoint, &json!({}), WorkflowId::new_random());
        if let Ok(reply) = &got {
            if reply["state"] == *expected {
                return reply.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the mirror at {endpoint} never reached {expected}; last: {got:?}"
        );
        // Pacing between asks (each is bounded).
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_full_state_source_and_an_early_and_a_late_mirror() {
    let dir = Scratch::new("weather");
    let [publisher] = free_ports();
    let mirror_file = dir.write(
        "mirror.json",
        &json!({
            "connections": {"in": {"get_weather": {"replyer": "127.0.0.1:0"}}},
            "states": {"in": {"weather": {"subscriber": format!("127.0.0.1:{publisher}")}}},
        })
        .to_string(),
    );
    let mut early = sf(&["-s", "weather_mirror", "-a", mirror_file.to_str().unwrap()]);
    let early_ep = early
        .wait_for_stderr("in.get_weather: ", START)
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    let states = json!([
        {"oslo": {"temp_c": -3, "sky": "snow"}},
        {"oslo": {"temp_c": -2, "sky": "cloud"}, "lima": {"temp_c": 19, "sky": "sun"}},
    ]);
    let source_file = dir.write(
        "source.json",
        &json!({"states": {"out": {"weather": {"publisher": format!("127.0.0.1:{publisher}")}}}})
            .to_string(),
    );
    let config = dir.write(
        "source_config.json",
        &json!({"states": states, "interval_s": 0.3, "hold_s": 30}).to_string(),
    );
    let mut source = sf(&[
        "-s",
        "weather_source",
        "-a",
        source_file.to_str().unwrap(),
        "-c",
        config.to_str().unwrap(),
        "-m",
    ]);
    source.wait_for_stderr("weather is now state 1", Duration::from_secs(10));
    let last = &states[1];
    let reply = until_weather(&early_ep, last);
    assert!(reply["current_num"].as_i64().unwrap() >= 1, "{reply}");

    // A mirror that starts after the last change: the source answers its subscription.
    let mut late = sf(&["-s", "weather_mirror", "-a", mirror_file.to_str().unwrap()]);
    let late_ep = late
        .wait_for_stderr("in.get_weather: ", START)
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    until_weather(&late_ep, last);
    source.signal("TERM");
    assert!(source.finish(Duration::from_secs(10)).success());
}
