//! The command line on real processes: the example binaries directly and through
//! `service-framework -s NAME`, config from CLI extras and the environment with type
//! conversion and precedence, `describe`, `call`, `-h`, `--version`.

mod support;

use std::process::Command;

use serde_json::Value;
use support::*;

/// An echo_replyer on an ephemeral port, and the endpoint it bound.
fn start_replyer(dir: &Scratch) -> (Proc, String) {
    let addresses = dir.write("replyer_addresses.json", REPLYER_ADDRESSES);
    let mut cmd = Command::new(ECHO_REPLYER);
    cmd.arg("-a").arg(&addresses);
    let mut p = Proc::spawn(cmd);
    let endpoint = p.wait_serving(START);
    (p, endpoint)
}

fn got_responses(p: &Proc) -> Vec<&String> {
    p.stdout
        .iter()
        .filter(|l| l.starts_with("Got Response: "))
        .collect()
}

#[test]
fn cli_extra_is_converted_to_the_declared_integer() {
    let dir = Scratch::new("extras");
    let (_replyer, endpoint) = start_replyer(&dir);
    let addresses = dir.write("requester.json", &requester_addresses(&endpoint));
    let mut cmd = Command::new(service_framework());
    cmd.args(["-s", "echo_requester", "-a"])
        .arg(&addresses)
        .args(["-m", "--num_req_to_send", "3"]);
    let (status, p) = run(cmd, SHORT);
    assert!(status.success(), "{status}: {}", p.stderr_text());
    let got = got_responses(&p);
    assert_eq!(
        got,
        vec![
            r#"Got Response: {"echoed":"Hello World 0"}"#,
            r#"Got Response: {"echoed":"Hello World 1"}"#,
            r#"Got Response: {"echoed":"Hello World 2"}"#,
        ],
        "stdout: {}",
        p.stdout_text()
    );
}

#[test]
fn plain_pairs_and_key_equals_value_are_extras_too() {
    let dir = Scratch::new("extras-forms");
    let (_replyer, endpoint) = start_replyer(&dir);
    let addresses = dir.write("requester.json", &requester_addresses(&endpoint));
    for form in [
        vec!["num_req_to_send", "2"],
        vec!["--num_req_to_send=2"],
        vec!["-num_req_to_send", "2"],
    ] {
        let mut cmd = Command::new(ECHO_REQUESTER);
        cmd.arg("-a").arg(&addresses).arg("-m").args(&form);
        let (status, p) = run(cmd, SHORT);
        assert!(status.success(), "{form:?}: {status}: {}", p.stderr_text());
        assert_eq!(got_responses(&p).len(), 2, "{form:?}: {}", p.stdout_text());
    }
}

#[test]
fn environment_sets_config_and_command_line_beats_environment_beats_file() {
    let dir = Scratch::new("precedence");
    let (_replyer, endpoint) = start_replyer(&dir);
    let addresses = dir.write("requester.json", &requester_addresses(&endpoint));
    let config = dir.write("config.json", r#"{"num_req_to_send": 1}"#);
    let count = |env: Option<&str>, cli: Option<&str>, file: bool| {
        let mut cmd = Command::new(ECHO_REQUESTER);
        cmd.arg("-a").arg(&addresses).arg("-m");
        if file {
            cmd.arg("-c").arg(&config);
        }
        if let Some(n) = cli {
            cmd.args(["--num_req_to_send", n]);
        }
        let mut p = Proc::spawn(cmd_with_env(cmd, env));
        let status = p.finish(SHORT);
        assert!(status.success(), "{status}: {}", p.stderr_text());
        got_responses(&p).len()
    };
    assert_eq!(count(None, None, true), 1, "file alone");
    assert_eq!(count(Some("2"), None, false), 2, "environment alone");
    assert_eq!(
        count(Some("2"), None, true),
        2,
        "environment beats the file"
    );
    assert_eq!(
        count(Some("2"), Some("3"), true),
        3,
        "command line beats both"
    );
}

fn cmd_with_env(mut cmd: Command, env: Option<&str>) -> Command {
    if let Some(v) = env {
        cmd.env("SF_CONFIG_NUM_REQ_TO_SEND", v);
    }
    cmd
}

#[test]
fn environment_value_that_does_not_convert_is_an_error_naming_it() {
    let dir = Scratch::new("env-bad");
    let addresses = dir.write("requester.json", &requester_addresses("127.0.0.1:1"));
    let mut cmd = Command::new(ECHO_REQUESTER);
    cmd.arg("-a").arg(&addresses).arg("-m");
    let (status, p) = run(cmd_with_env(cmd, Some("many")), SHORT);
    assert_eq!(status.code(), Some(2), "{}", p.stderr_text());
    assert!(
        p.stderr_text()
            .contains(r#"error: config: environment num_req_to_send="many": expected integer"#),
        "{}",
        p.stderr_text()
    );
}

#[test]
fn describe_prints_the_models_as_json_schema() {
    for (program, via) in [
        (ECHO_REPLYER.to_owned(), None),
        (
            service_framework().display().to_string(),
            Some("echo_replyer"),
        ),
    ] {
        let mut cmd = Command::new(&program);
        cmd.arg("describe");
        if let Some(name) = via {
            cmd.args(["-s", name]);
        }
        let (status, p) = run(cmd, SHORT);
        assert!(status.success(), "{status}: {}", p.stderr_text());
        let d: Value = serde_json::from_str(&p.stdout_text())
            .unwrap_or_else(|e| panic!("describe is not JSON ({e}): {}", p.stdout_text()));
        assert_eq!(d["name"], "echo_replyer");
        let reply = &d["connections"]["in"]["reply"];
        assert_eq!(reply["connection_type"], "replyer", "{d:#}");
        assert_eq!(reply["address_key"], "replyer");
        assert_eq!(
            reply["args"]["properties"]["to_echo"]["type"], "string",
            "{d:#}"
        );
        assert_eq!(reply["args"]["required"], serde_json::json!(["to_echo"]));
        assert_eq!(
            reply["return_args"]["properties"]["echoed"]["type"],
            "string"
        );
    }

    let (status, p) = run(
        {
            let mut c = Command::new(ECHO_REQUESTER);
            c.arg("describe");
            c
        },
        SHORT,
    );
    assert!(status.success());
    let d: Value = serde_json::from_str(&p.stdout_text()).unwrap();
    assert_eq!(d["main_mode"], true);
    assert_eq!(
        d["connections"]["out"]["request"]["connection_type"],
        "requester"
    );
    assert_eq!(
        d["config"]["properties"]["num_req_to_send"]["type"], "integer",
        "{d:#}"
    );
    assert_eq!(
        d["config"]["required"],
        serde_json::json!(["num_req_to_send"])
    );
}

#[test]
fn call_prints_the_reply_and_a_bad_arg_is_a_remote_error() {
    let dir = Scratch::new("call");
    let (_replyer, endpoint) = start_replyer(&dir);

    let mut cmd = Command::new(service_framework());
    cmd.args(["call", &endpoint, r#"{"to_echo": "hi"}"#]);
    let (status, p) = run(cmd, SHORT);
    assert!(status.success(), "{status}: {}", p.stderr_text());
    let reply: Value = serde_json::from_str(&p.stdout_text()).unwrap();
    assert_eq!(reply, serde_json::json!({"echoed": "hi"}));

    // host:port, the addresses.json form, works as well.
    let hostport = endpoint.trim_start_matches("tcp://").to_owned();
    let mut cmd = Command::new(service_framework());
    cmd.args(["call", &hostport, r#"{"to_echo": "again"}"#]);
    let (status, p) = run(cmd, SHORT);
    assert!(status.success(), "{status}: {}", p.stderr_text());
    assert_eq!(p.stdout_text(), r#"{"echoed":"again"}"#);

    let mut cmd = Command::new(service_framework());
    cmd.args(["call", &endpoint, r#"{"to_echo": 5}"#]);
    let (status, p) = run(cmd, SHORT);
    assert_eq!(status.code(), Some(1), "{}", p.stderr_text());
    assert!(p.stdout.is_empty(), "{}", p.stdout_text());
    let err = p.stderr_text();
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("invalid_args"), "{err}");
    assert!(err.contains("to_echo"), "{err}");

    let mut cmd = Command::new(service_framework());
    cmd.args(["call", &endpoint, r#"{}"#]);
    let (status, p) = run(cmd, SHORT);
    assert_eq!(status.code(), Some(1));
    assert!(p.stderr_text().contains("to_echo"), "{}", p.stderr_text());
}

#[test]
fn service_binaries_answer_help_and_version() {
    for exe in [ECHO_REPLYER, ECHO_REQUESTER, SLOW_REPLYER] {
        let (status, p) = run(
            {
                let mut c = Command::new(exe);
                c.arg("-h");
                c
            },
            SHORT,
        );
        assert!(status.success(), "{exe} -h: {status}");
        assert!(
            p.stdout_text().starts_with("usage: "),
            "{}",
            p.stdout_text()
        );
        for flag in [
            "-cl", "-bc", "-wt", "-l,", "-f,", "-m,", "-a,", "-c,", "-s,",
        ] {
            assert!(p.stdout_text().contains(flag), "{flag} missing from -h");
        }
        let (status, p) = run(
            {
                let mut c = Command::new(exe);
                c.arg("--version");
                c
            },
            SHORT,
        );
        assert!(status.success());
        let name = std::path::Path::new(exe)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        assert!(
            p.stdout_text()
                .starts_with(&format!("{name} (service-framework ")),
            "{}",
            p.stdout_text()
        );
    }
}

#[test]
fn all_the_original_flags_are_accepted_when_running() {
    let dir = Scratch::new("flags");
    let (_replyer, endpoint) = start_replyer(&dir);
    let addresses = dir.write("requester.json", &requester_addresses(&endpoint));
    let config = dir.write("config.json", r#"{"num_req_to_send": 1}"#);
    let log = dir.path().join("logs").join("requester.log");
    let mut cmd = Command::new(service_framework());
    cmd.args(["-s", "echo_requester", "-a"])
        .arg(&addresses)
        .arg("-c")
        .arg(&config)
        .arg("-m")
        .args(["-cl", "WARNING", "-f", "DEBUG", "-l"])
        .arg(&log)
        .args(["-bc", "3", "-wt", "0.01"]);
    let (status, p) = run(cmd, SHORT);
    assert!(status.success(), "{status}: {}", p.stderr_text());
    assert_eq!(got_responses(&p).len(), 1);
    // -cl WARNING: nothing below WARNING on the console.
    assert!(
        !p.stderr.iter().any(|l| l.contains(" INFO ")),
        "{}",
        p.stderr_text()
    );
}

#[test]
fn service_framework_needs_a_known_service() {
    let (status, p) = run(
        {
            let mut c = Command::new(service_framework());
            c.args(["-s", "nope_no_such_service"]);
            c
        },
        SHORT,
    );
    assert_eq!(status.code(), Some(1));
    assert!(
        p.stderr_text()
            .contains(r#"error: unknown service "nope_no_such_service""#),
        "{}",
        p.stderr_text()
    );
}
