//! The README's main command, `scripts/demo`, as a user runs it: it builds what it needs (a
//! no-op here: the test's own profile is passed as SF_PROFILE), runs the pipeline example
//! with the bridge on 127.0.0.1:8080 through `up`, prints where to look, answers through the
//! bridge (the docs page, the sink's totals, the source's stream as SSE) and stops on Ctrl-C
//! (SIGINT), exit 0.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use support::{bridge_data, http, workspace_root, UpProcess};

const WAIT: Duration = Duration::from_secs(300);

fn count(port: u16) -> u64 {
    bridge_data(port, "/api/v1/bus/results", "{}")["count"]
        .as_u64()
        .expect("a count")
}

#[test]
fn the_readme_main_command_runs_the_pipeline_with_the_bridge_and_stops_on_ctrl_c() {
    if std::net::TcpListener::bind("127.0.0.1:8080").is_err() {
        panic!("127.0.0.1:8080 is taken on this machine: the demo's bridge needs it");
    }
    let mut cmd = std::process::Command::new(workspace_root().join("scripts/demo"));
    cmd.env("SF_PROFILE", support::profile());
    let mut up = UpProcess::spawn(cmd);
    up.wait_line(WAIT, |l| l == "[up] every service started");
    up.wait_line(WAIT, |l| {
        l == "[up] the API and its docs: http://127.0.0.1:8080/docs"
    });
    up.wait_line(WAIT, |l| {
        l.starts_with("[up] the sink's running totals: curl")
    });
    up.wait_line(WAIT, |l| {
        l.starts_with("[up] the source's items as they go (SSE)")
    });

    // /docs redirects to /docs/ (a browser follows it).
    let (status, _) = http(8080, "GET", "/docs", "");
    assert_eq!(status, 308);
    let (status, page) = http(8080, "GET", "/docs/", "");
    assert_eq!(status, 200);
    assert!(page.to_lowercase().contains("<html"), "{page}");

    // The totals grow while the source runs (50 items a second).
    let first = count(8080);
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(8080) <= first {
        if Instant::now() >= deadline {
            up.drain();
            panic!(
                "the totals stayed at {first} for 30 s; up printed:\n{}",
                up.tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // The stream: server-sent events, one per item.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", 8080)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /api/v1/bus/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut events = 0;
    let mut line = String::new();
    while events < 3 {
        line.clear();
        let n = r.read_line(&mut line).expect("the stream goes on");
        assert!(n > 0, "the stream ended");
        if line.starts_with("data:") && line.contains("\"id\"") && line.contains("\"value\"") {
            events += 1;
        }
    }

    up.signal("INT");
    let status = up.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}:\n{}", up.tail());
    assert!(
        up.seen.iter().any(|l| l == "[up] all stopped"),
        "{}",
        up.tail()
    );
}
