//! Logging on a real process: `-l` writes the log file at exactly that path, `-f` and `-cl`
//! set the file's and the console's levels separately, lines written inside a handler carry
//! the request's workflow id, and console output on a pipe is plain text.

mod support;

use std::process::Command;

use serde_json::json;
use service_framework::connections::WorkflowId;
use support::*;

#[test]
fn the_log_file_holds_handler_lines_with_their_workflow_id() {
    let dir = Scratch::new("logging");
    let addresses = dir.write("addresses.json", REPLYER_ADDRESSES);
    let log_path = dir.path().join("logs").join("replyer.log");
    let mut cmd = Command::new(service_framework());
    cmd.args(["-s", "echo_replyer", "-a"])
        .arg(&addresses)
        .args(["-cl", "INFO", "-f", "DEBUG", "-bc", "2", "-l"])
        .arg(&log_path);
    let mut replyer = Proc::spawn(cmd);
    let endpoint = replyer.wait_serving(START);

    let named = WorkflowId::Str("wf-log-test-1".into());
    let uuid = WorkflowId::new_random();
    for (id, text) in [(&named, "hi"), (&uuid, "there")] {
        assert_eq!(
            request(&endpoint, &json!({"to_echo": text}), id.clone()).unwrap(),
            json!({"echoed": text})
        );
    }
    replyer.signal("TERM");
    assert_eq!(replyer.finish(SHORT).code(), Some(0));

    // The file is at the path given (rotated copies get a date suffix later).
    let file = std::fs::read_to_string(&log_path)
        .unwrap_or_else(|e| panic!("{} not written: {e}", log_path.display()));
    for (id, text) in [(&named, "hi"), (&uuid, "there")] {
        let line = file
            .lines()
            .find(|l| l.contains(&format!("echoing {text:?}")))
            .unwrap_or_else(|| panic!("no DEBUG line for {text:?} in:\n{file}"));
        assert!(line.contains("DEBUG"), "{line}");
        assert!(line.contains(&format!("workflow{{id={id}}}")), "{line}");
    }
    assert!(file.contains("replyer serving"), "{file}");
    assert!(!file.contains('\u{1b}'), "no colours in the file");

    // Console at INFO: the service's INFO lines, none of the handler's DEBUG lines.
    let console = replyer.stderr_text();
    assert!(console.contains("replyer serving"), "{console}");
    assert!(!console.contains("echoing"), "{console}");
    assert!(!replyer.coloured, "no colours on a pipe: {console}");
}

#[test]
fn file_level_filters_the_file_and_console_level_the_console() {
    let dir = Scratch::new("levels");
    let addresses = dir.write("addresses.json", REPLYER_ADDRESSES);
    let log_path = dir.path().join("quiet.log");
    let mut cmd = Command::new(ECHO_REPLYER);
    cmd.arg("-a")
        .arg(&addresses)
        .args(["-cl", "DEBUG", "-f", "WARNING", "-l"])
        .arg(&log_path);
    let mut replyer = Proc::spawn(cmd);
    let endpoint = replyer.wait_serving(START);
    request(
        &endpoint,
        &json!({"to_echo": "loud"}),
        WorkflowId::Str("wf-console".into()),
    )
    .unwrap();
    // The console shows the DEBUG line from the handler, with its workflow id.
    let line = replyer.wait_for_stderr("echoing \"loud\"", START);
    assert!(line.contains("workflow{id=wf-console}"), "{line}");
    replyer.signal("TERM");
    assert_eq!(replyer.finish(SHORT).code(), Some(0));
    // The file at WARNING got none of it, but exists.
    let file = std::fs::read_to_string(&log_path).unwrap();
    assert!(!file.contains("echoing"), "{file}");
    assert!(!file.contains("replyer serving"), "{file}");
}
