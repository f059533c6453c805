//! The `service-framework` binary as a user runs it: usage, version, unknown services, the
//! bus without addresses, and `call` against a live replyer (answers, remote errors,
//! timeouts, bad input), and `subscribe` against a live publisher.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use service_framework::connections::{Address, WorkflowId};
use support::*;

#[test]
fn help_and_version_exit_zero() {
    for flag in ["-h", "--help"] {
        let out = sf(&[flag]);
        assert!(out.status.success(), "{flag}: {:?}", out.status);
        assert!(
            out.stdout
                .starts_with("usage: service-framework -s SERVICE"),
            "{}",
            out.stdout
        );
        for expected in [
            "-s,  --service_path",
            "-a,  --addresses_path",
            "-c, --config_path",
            "-m,  --main_mode",
            "-cl, --console_loglevel",
            "-f,  --file_loglevel",
            "-l,  --log_path",
            "-bc, --backup_count",
            "-wt, --service_loop_min_wait_time_s",
            "service-framework describe -s SERVICE",
            "service-framework call ADDRESS",
        ] {
            assert!(
                out.stdout.contains(expected),
                "{expected:?} missing:\n{}",
                out.stdout
            );
        }
    }
    let out = sf(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        out.stdout.trim(),
        format!("service-framework {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn no_service_prints_usage_and_fails() {
    let out = sf(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.starts_with("usage: "), "{}", out.stdout);
}

#[test]
fn an_unknown_service_is_named() {
    let out = sf(&["-s", "nope"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr
            .starts_with("error: unknown service \"nope\": not a built-in ("),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(") and no executable named \"nope\" beside "),
        "{}",
        out.stderr
    );
    let out = sf(&["describe", "-s", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("unknown service \"nope\""),
        "{}",
        out.stderr
    );
    let out = sf(&["-s", "./no/such/path/service"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr
            .contains("unknown service \"./no/such/path/service\""),
        "{}",
        out.stderr
    );
}

#[test]
fn bad_flag_values_are_errors() {
    let out = sf(&["-s", "bus", "-bc", "many"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        out.stderr.trim(),
        "error: -bc needs a whole number, got \"many\""
    );
    let out = sf(&["-s", "bus", "-wt", "soon"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(out.stderr.trim(), "error: -wt needs a number, got \"soon\"");
    let out = sf(&["-s"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(out.stderr.trim(), "error: -s needs a value");
    let out = sf(&["-s", "bus", "-cl", "LOUD"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("unknown log level \"LOUD\""),
        "{}",
        out.stderr
    );
}

#[test]
fn the_bus_needs_addresses() {
    let out = sf(&["-s", "bus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stderr
            .contains("error: addresses: the bus needs -a addresses.json"),
        "{}",
        out.stderr
    );
    let out = sf(&["describe", "-s", "bus"]);
    assert!(out.status.success());
    let d: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(d["name"], "bus");
}

#[test]
fn call_prints_the_reply() {
    let (h, ready) = start(echo_service("echo", ""), replyer_at("127.0.0.1:0"));
    let endpoint = ready.endpoint("reply").unwrap().to_owned();

    let out = sf(&["call", &endpoint, r#"{"to_echo": "hello"}"#]);
    assert!(out.status.success(), "{out:?}");
    let reply: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(reply, json!({"echoed": "hello"}));

    // The original's host:port form.
    let hostport = endpoint.trim_start_matches("tcp://");
    let out = sf(&[
        "call",
        hostport,
        r#"{"to_echo": "again"}"#,
        "--timeout",
        "3",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), r#"{"echoed":"again"}"#);
    h.stop().unwrap();
}

#[test]
fn call_with_bad_args_prints_the_remote_error_and_fails() {
    let (h, ready) = start(echo_service("echo", ""), replyer_at("127.0.0.1:0"));
    let endpoint = ready.endpoint("reply").unwrap().to_owned();

    let out = sf(&["call", &endpoint, r#"{"to_echo": 5}"#]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr.starts_with(&format!("error: {endpoint}: ")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("invalid_args"), "{}", out.stderr);
    assert!(out.stderr.contains("to_echo"), "{}", out.stderr);

    let out = sf(&["call", &endpoint, r#"{"wrong": "key"}"#]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("invalid_args"), "{}", out.stderr);
    assert!(out.stderr.contains("to_echo"), "{}", out.stderr);

    // Not JSON at all: refused before anything is sent.
    let out = sf(&["call", &endpoint, "{to_echo: hi}"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr
            .starts_with("error: the args \"{to_echo: hi}\" are not JSON: "),
        "{}",
        out.stderr
    );
    // The service is still serving after all that.
    let out = sf(&["call", &endpoint, r#"{"to_echo": "still here"}"#]);
    assert!(out.status.success(), "{out:?}");
    h.stop().unwrap();
}

#[test]
fn call_without_a_replyer_times_out() {
    // A port that was just free: nothing answers there.
    let (h, ready) = start(echo_service("gone", ""), replyer_at("127.0.0.1:0"));
    let endpoint = ready.endpoint("reply").unwrap().to_owned();
    h.stop().unwrap();
    let t = std::time::Instant::now();
    let out = sf(&[
        "call",
        &endpoint,
        r#"{"to_echo": "anyone?"}"#,
        "--timeout",
        "0.3",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.starts_with(&format!("error: {endpoint}: ")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("0.3") || out.stderr.contains("300ms"),
        "{}",
        out.stderr
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
    let out = sf(&["call"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("call needs an ADDRESS"),
        "{}",
        out.stderr
    );
}

/// `subscribe` with its arguments, started now; killed on drop.
fn subscriber(args: &[&str]) -> Proc {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_service-framework"));
    cmd.arg("subscribe").args(args);
    Proc::spawn(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_prints_one_json_line_per_message() {
    use service_framework::connections::{Publisher, PublisherOptions};
    let publisher = Publisher::start(
        &Address::from("127.0.0.1:0"),
        PublisherOptions {
            topic: "ticks".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let ep = publisher.endpoint().to_owned();
    let hostport = ep.trim_start_matches("tcp://").to_owned();
    let plain = subscriber(&[&ep, "--topic", "ticks", "--count", "3", "--timeout", "5"]);
    let envelope = subscriber(&[&hostport, "--topic", "ticks", "--count", "1", "--envelope"]);
    let other = subscriber(&[&ep, "--topic", "nope", "--timeout", "0.5"]);
    // Each subscription in place before anything is published: nothing is lost to a slow
    // joiner.
    publisher
        .wait_for_subscribers(3, Duration::from_secs(5))
        .await
        .expect("three subscribers");
    for n in 1..=3 {
        publisher
            .publish(&json!({"n": n}), &WorkflowId::new_random())
            .await
            .unwrap();
    }
    let finish = |p: Proc| tokio::task::spawn_blocking(move || p.finish(Duration::from_secs(8)));
    let (plain, envelope, other) = (finish(plain), finish(envelope), finish(other));

    let plain = plain.await.unwrap();
    assert!(plain.status.success(), "{plain:?}");
    let lines: Vec<Value> = plain
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines, [json!({"n": 1}), json!({"n": 2}), json!({"n": 3})]);
    assert_eq!(plain.stderr.trim(), "3 received, 0 lost", "{plain:?}");

    let envelope = envelope.await.unwrap();
    assert!(envelope.status.success(), "{envelope:?}");
    let line: Value = serde_json::from_str(envelope.stdout.trim()).unwrap();
    assert_eq!(line["topic"], "ticks", "{line}");
    assert_eq!(line["seq"], 1, "{line}");
    assert_eq!(line["args"], json!({"n": 1}), "{line}");
    assert_eq!(
        line["workflow_id"].as_str().map(str::len),
        Some(36),
        "{line}"
    );

    // Another topic hears nothing, and an idle timeout says so.
    let other = other.await.unwrap();
    assert_eq!(other.status.code(), Some(1), "{other:?}");
    assert!(other.stdout.is_empty(), "{other:?}");
    assert!(
        other.stderr.contains("no message within") && other.stderr.contains("0 received"),
        "{other:?}"
    );
}

#[test]
fn subscribe_needs_an_address_and_sane_numbers() {
    let out = sf(&["subscribe"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("subscribe needs an ADDRESS"), "{out:?}");
    for bad in [["--count", "many"], ["--timeout", "-1"]] {
        let out = sf(&["subscribe", "127.0.0.1:1", bad[0], bad[1]]);
        assert_ne!(out.status.code(), Some(0), "{bad:?}: {out:?}");
        assert!(out.stderr.contains(bad[0]), "{bad:?}: {out:?}");
    }
}
