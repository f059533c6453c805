//! `service-framework up` with the Majordomo broker built-in: two replicas of `echo_replyer`
//! served through it (`broker = "mdp"`), a requester edge to their replyer (the framework
//! requester calls through the broker as an MDP client), and `service-framework call` at the
//! broker's front-end: every call answered,
//! and the requests spread over both replicas (their control `stats`). Mistakes in `broker`
//! are named by `up --check`.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{call, UpProcess};

const START: Duration = Duration::from_secs(60);
const CALLS: usize = 20;

/// `up --check FILE`: (exit code, its listing then any error).
fn check(file: &Path, dir: &Path) -> (i32, String) {
    let (code, out, err) = support::check(file, dir);
    (code, out + &err)
}

/// `requests` of every replyer of the running services of `file`, by their control `stats`.
fn replyer_requests(file: &Path) -> Vec<u64> {
    support::sf_json("stats", file)
        .iter()
        .flat_map(|row| row["connections"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["kind"] == "replyer")
        .map(|c| c["requests"].as_u64().unwrap_or(0))
        .collect()
}

#[test]
fn replicas_served_through_the_broker_share_the_calls() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("brokered.toml");
    std::fs::write(
        &file,
        r#"
edges = ["caller.request -> echo.reply"]
[services.mdp]
service = "broker"
config = { request_timeout_s = 10 }
[services.echo]
service = "echo_replyer"
replicas = 2
broker = "mdp"
[services.caller]
service = "echo_requester"
main = true
config = { num_req_to_send = 3 }
"#,
    )
    .unwrap();
    let (code, err) = check(&file, dir.path());
    assert_eq!(code, 0, "{err}");
    // The framework requester speaks MDP to the broker itself; the front-end stays for
    // plain requesters (`call` below).
    assert!(
        err.contains("calls MDP service echo.reply from out.request through mdp in.broker.router"),
        "{err}"
    );
    let mut up = UpProcess::start(&[file.to_str().unwrap()], dir.path());
    // The broker starts first, then the replicas, then their caller.
    let front = up.slot_address(START, "mdp", "in.echo.reply.replyer");
    up.first_ready_pid("echo.1", START);
    up.first_ready_pid("echo.2", START);
    for i in 0..3 {
        let want = format!("Got Response: {{\"echoed\":\"Hello World {i}\"}}");
        let l = up.find_line(START, |l| l.ends_with(&want));
        assert!(l.starts_with("caller | "), "{l}");
    }
    up.find_line(START, |l| l == "[up] caller: done");
    // Both replicas registered (the caller's calls may all have gone to the first).
    let registered = |up: &UpProcess| {
        up.seen
            .iter()
            .filter(|l| l.contains("worker registered") && l.contains("echo.reply"))
            .count()
    };
    while registered(&up) < 2 {
        up.wait_line(START, |l| {
            l.contains("worker registered") && l.contains("echo.reply")
        });
    }

    // `service-framework call` at the front-end, as at a replyer.
    for i in 0..CALLS {
        let reply = call(&front, &format!(r#"{{"to_echo": "call {i}"}}"#))
            .unwrap_or_else(|e| panic!("call {i}: {e}\n{}", up.tail()));
        assert_eq!(reply["echoed"], format!("call {i}"), "{reply}");
    }
    let counts = replyer_requests(&file);
    eprintln!("requests per replica: {counts:?}");
    assert_eq!(counts.len(), 2, "two replicas: {counts:?}");
    assert_eq!(counts.iter().sum::<u64>(), CALLS as u64 + 3, "{counts:?}");
    // One call at a time: the least recently used worker takes each, so they alternate.
    assert!(
        counts.iter().all(|&c| c >= CALLS as u64 / 2 - 1),
        "spread: {counts:?}"
    );

    up.signal("INT");
    let status = up.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", up.tail());
}

#[test]
fn broker_mistakes_are_named_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[services.echo]\nservice = \"echo_replyer\"\nbroker = \"mdp\"\n",
            "there is no service \"mdp\"",
        ),
        (
            "[services.mdp]\nservice = \"bus\"\n[services.echo]\nservice = \"echo_replyer\"\nbroker = \"mdp\"\n",
            "\"mdp\" is not a broker",
        ),
        (
            "[services.mdp]\nservice = \"broker\"\n[services.b]\nservice = \"bus\"\nbroker = \"mdp\"\n",
            "\"b\" has no replyer to serve through a broker",
        ),
        (
            "[services.mdp]\nservice = \"broker\"\nreplicas = 2\n",
            "service \"mdp\" has 2 replicas, but it binds in.broker.router",
        ),
    ];
    for (i, (text, says)) in cases.into_iter().enumerate() {
        let file = dir.path().join(format!("t{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let (code, err) = check(&file, dir.path());
        assert_ne!(code, 0, "{text}");
        assert!(err.contains(says), "{text}: no {says:?} in\n{err}");
    }
}
