//! Every mistake in config.json, addresses.json or the config on the command line stops a
//! real service process with exit code 2 and one `error: ...` line naming the file (or the
//! source), the key and what was expected there.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

/// Runs `service-framework -s echo_requester -m ARGS...` and returns (exit code, stderr).
fn requester(args: &[&str]) -> (Option<i32>, String, Vec<String>) {
    let mut cmd = Command::new(service_framework());
    cmd.args(["-s", "echo_requester", "-m"]).args(args);
    let (status, p) = run(cmd, SHORT);
    (status.code(), p.stderr_text(), p.stdout.clone())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts exit code 2, nothing sent, and exactly `expected` on stderr.
fn assert_fails(got: (Option<i32>, String, Vec<String>), expected: &str) {
    let (code, stderr, stdout) = got;
    assert_eq!(stderr, expected);
    assert_eq!(code, Some(2), "exit code for {expected:?}");
    assert!(stdout.is_empty(), "nothing should run: {stdout:?}");
}

fn json_error(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .unwrap_err()
        .to_string()
}

#[test]
fn config_file_mistakes_name_the_file_the_key_and_what_was_expected() {
    let dir = Scratch::new("config-errors");
    // Nothing listens there: every case must fail before any request is sent.
    let a = dir.write("addresses.json", &requester_addresses("127.0.0.1:1"));
    let a = s(&a);

    let c = dir.write(
        "undeclared.json",
        r#"{"num_req_to_send": 1, "colour": "red"}"#,
    );
    assert_fails(
        requester(&["-a", a, "-c", s(&c)]),
        &format!(
            r#"error: config: {}: key "colour" is not declared (declared: num_req_to_send)"#,
            c.display()
        ),
    );

    let c = dir.write("missing.json", "{}");
    assert_fails(
        requester(&["-a", a, "-c", s(&c)]),
        &format!(
            r#"error: config: {}: required key "num_req_to_send" is missing (expected integer)"#,
            c.display()
        ),
    );

    let c = dir.write("string.json", r#"{"num_req_to_send": "3"}"#);
    assert_fails(
        requester(&["-a", a, "-c", s(&c)]),
        &format!(
            r#"error: config: {}: key "num_req_to_send" must be integer, found string "3""#,
            c.display()
        ),
    );

    let c = dir.write("float.json", r#"{"num_req_to_send": 2.5}"#);
    assert_fails(
        requester(&["-a", a, "-c", s(&c)]),
        &format!(
            r#"error: config: {}: key "num_req_to_send" must be integer, found number 2.5"#,
            c.display()
        ),
    );

    let text = r#"{"num_req_to_send": 3,}"#;
    let c = dir.write("bad.json", text);
    assert_fails(
        requester(&["-a", a, "-c", s(&c)]),
        &format!(
            "error: config: {} is not valid JSON: {}",
            c.display(),
            json_error(text)
        ),
    );
    assert!(json_error(text).contains("line 1 column"));

    let c = dir.write("array.json", "[3]");
    assert_fails(
        requester(&["-a", a, "-c", s(&c)]),
        &format!(
            "error: config: {} must hold a flat JSON object of config keys, found an array",
            c.display()
        ),
    );

    let c = dir.path().join("absent.json");
    assert_fails(
        requester(&["-a", a, "-c", s(&c)]),
        &format!(
            "error: config: cannot read config file {}: No such file or directory (os error 2)",
            c.display()
        ),
    );

    // Several mistakes at once: all of them, in one message.
    let c = dir.write("two.json", r#"{"colour": 1, "num_req_to_send": true}"#);
    assert_fails(
        requester(&["-a", a, "-c", s(&c)]),
        &format!(
            r#"error: config: {}: key "colour" is not declared (declared: num_req_to_send); key "num_req_to_send" must be integer, found boolean true"#,
            c.display()
        ),
    );
}

#[test]
fn command_line_config_mistakes_name_the_command_line() {
    let dir = Scratch::new("cli-config-errors");
    let a = dir.write("addresses.json", &requester_addresses("127.0.0.1:1"));
    let a = s(&a);
    let good = dir.write("good.json", r#"{"num_req_to_send": 1}"#);

    assert_fails(
        requester(&["-a", a, "--num_req_to_send"]),
        "error: config: extra command-line arguments must come in --key value pairs; got 1 word: --num_req_to_send",
    );
    assert_fails(
        requester(&["-a", a, "--num_req_to_send", "1", "--colour"]),
        "error: config: extra command-line arguments must come in --key value pairs; got 3 words: --num_req_to_send 1 --colour",
    );
    assert_fails(
        requester(&["-a", a, "--num_req_to_send", "ten"]),
        r#"error: config: command line num_req_to_send="ten": expected integer"#,
    );
    assert_fails(
        requester(&["-a", a, "--num_req_to_send", "2.5"]),
        r#"error: config: command line num_req_to_send="2.5": expected integer"#,
    );
    // An undeclared key typed on the command line is blamed on the command line, not the file.
    assert_fails(
        requester(&["-a", a, "-c", s(&good), "--colour", "red"]),
        r#"error: config: command line --colour: key "colour" is not declared (declared: num_req_to_send)"#,
    );
    // No file and no value at all.
    assert_fails(
        requester(&["-a", a]),
        r#"error: config: no config file given (-c): required key "num_req_to_send" is missing (expected integer)"#,
    );
}

#[test]
fn addresses_file_mistakes_name_the_file_and_the_connection() {
    let dir = Scratch::new("addresses-errors");
    let n = ["--num_req_to_send", "1"];
    let with = |a: &Path| {
        let mut args = vec!["-a", s(a)];
        args.extend(n);
        requester(&args)
    };

    let a = dir.path().join("absent.json");
    assert_fails(
        with(&a),
        &format!(
            "error: addresses: cannot read addresses file {}: No such file or directory (os error 2)",
            a.display()
        ),
    );

    let text = r#"{"connections": {"out": {"request": {"requester": "127.0.0.1:1"}}"#;
    let a = dir.write("bad.json", text);
    assert_fails(
        with(&a),
        &format!(
            "error: addresses: {} is not valid JSON: {}",
            a.display(),
            json_error(text)
        ),
    );

    let a = dir.write(
        "empty_entry.json",
        r#"{"connections": {"out": {"request": {}}}}"#,
    );
    assert_fails(
        with(&a),
        &format!(
            r#"error: addresses: {}: connections.out.request has no "requester" address (found: nothing)"#,
            a.display()
        ),
    );

    let a = dir.write(
        "wrong_socket.json",
        r#"{"connections": {"out": {"request": {"replyer": "127.0.0.1:1"}}}}"#,
    );
    assert_fails(
        with(&a),
        &format!(
            r#"error: addresses: {}: connections.out.request has no "requester" address (found: replyer)"#,
            a.display()
        ),
    );

    let a = dir.write("no_entry.json", r#"{"connections": {"in": {}, "out": {}}}"#);
    assert_fails(
        with(&a),
        &format!(
            r#"error: addresses: {}: connections.out.request is missing: the requester connection "request" needs {{"requester": "host:port"}}"#,
            a.display()
        ),
    );

    let a = dir.write(
        "wrong_type.json",
        r#"{"connections": {"out": {"request": {"requester": 7999}}}}"#,
    );
    assert_fails(
        with(&a),
        &format!(
            r#"error: addresses: {}: connections.out.request.requester must be "host:port", a tcp:// or ipc:// endpoint, or {{"bind": .., "connect": ..}}, found integer 7999"#,
            a.display()
        ),
    );

    let a = dir.write("typo.json", r#"{"connection": {"out": {}}}"#);
    assert_fails(
        with(&a),
        &format!(
            r#"error: addresses: {}: unknown key "connection" (expected "connections", "states", "options" or "control")"#,
            a.display()
        ),
    );

    let a = dir.write("side.json", r#"{"connections": {"outbound": {}}}"#);
    assert_fails(
        with(&a),
        &format!(
            r#"error: addresses: {}: connections: unknown key "outbound" (expected "in" or "out")"#,
            a.display()
        ),
    );

    let a = dir.write(
        "options_shape.json",
        r#"{"connections": {"out": {"request": {"requester": "127.0.0.1:1"}}},
            "options": {"connections": {"out": {"request": 5}}}}"#,
    );
    assert_fails(
        with(&a),
        &format!(
            r#"error: addresses: {}: options.connections.out.request must be an object like {{"timeout_s": 2}}, found integer 5"#,
            a.display()
        ),
    );

    let a = dir.write(
        "options_type.json",
        r#"{"connections": {"out": {"request": {"requester": "127.0.0.1:1"}}},
            "options": {"connections": {"out": {"request": {"timeout_s": "soon"}}}}}"#,
    );
    assert_fails(
        with(&a),
        &format!(
            r#"error: addresses: {}: options.connections.out.request: requester option "timeout_s" must be a number of seconds (0 or more), found "soon""#,
            a.display()
        ),
    );

    let a = dir.write("array.json", r#"[]"#);
    assert_fails(
        with(&a),
        &format!(
            r#"error: addresses: {}: must be a JSON object {{"connections": {{"in": {{..}}, "out": {{..}}}}, "states": {{"in": {{..}}, "out": {{..}}}}}}, found an array"#,
            a.display()
        ),
    );

    let a = dir.write(
        "bad_address.json",
        r#"{"connections": {"out": {"request": {"requester": "localhost"}}}}"#,
    );
    let (code, stderr, _) = with(&a);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            r#"error: addresses: {}: connection "request": "#,
            a.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("localhost"), "{stderr}");
}

#[test]
fn a_replyer_without_its_address_names_the_in_side() {
    let dir = Scratch::new("replyer-addresses");
    let a = dir.write("addresses.json", r#"{"connections": {"in": {}}}"#);
    let mut cmd = Command::new(service_framework());
    cmd.args(["-s", "echo_replyer", "-a"]).arg(&a);
    let (status, p) = run(cmd, SHORT);
    assert_eq!(
        p.stderr_text(),
        format!(
            r#"error: addresses: {}: connections.in.reply is missing: the replyer connection "reply" needs {{"replyer": "host:port"}}"#,
            a.display()
        )
    );
    assert_eq!(status.code(), Some(2));

    // No -a at all says how to give one.
    let mut cmd = Command::new(ECHO_REPLYER);
    cmd.args(["-cl", "ERROR"]);
    let (status, p) = run(cmd, SHORT);
    assert_eq!(status.code(), Some(2));
    assert!(
        p.stderr_text()
            .contains("none given: use -a addresses.json"),
        "{}",
        p.stderr_text()
    );
}
