//! Service-level interoperability with the real Python `service_framework` 0.0.18: whole
//! services, as real processes started from the two command lines.
//!
//! - Python: `python -m service_framework -s ./<file>.py -a addresses.json [-c config.json]
//!   [-m] [--key value]`, run from `tests/python/services/` (0.0.18 imports the service file as
//!   a module named after its path relative to the working directory). The four service files
//!   there are written in the 0.0.18 style (models, `setup_config`, `main(to_send, config)`,
//!   handlers `fn(args, to_send, states, config)`).
//! - Rust: `service-framework -s <service> ...` (the dispatcher runs the service binary beside
//!   it) and `service-framework call ADDRESS JSON`, from the target directory of this test.
//!
//! What is proven:
//! 1. Python echo_requester (main mode) -> Rust echo_replyer: 5 echoes; Python exits 0.
//! 2. A Python requester sending a wrongly typed arg -> Rust echo_replyer: the reply carries
//!    `error` (seen in the Python framework's own log of the reply) and the replyer keeps
//!    serving, Python's later requests included.
//! 3. Rust echo_requester (main mode) -> Python echo_replyer: exactly 5 `Got Response:` lines,
//!    exit 0. Then a wrongly typed `call` kills the Python replyer: that is the 0.0.18
//!    defect, asserted as such (the caller gets a failure, not a hang).
//! 4. Python state_source (main mode; a scripted series with a delete and a numbering gap)
//!    -> a Rust state_mirror started before it and one started after its series: both reach
//!    the source's final state (0.0.18's snapshot replies say `current_num` 0: only the state
//!    is compared).
//! 5. Rust state_source -> Python state_mirror started first: the Python mirror reaches the
//!    Rust source's final state (its in side never asks at start; the Rust out side
//!    re-publishes a snapshot a period after the changes).
//!
//! Every wait is for an output line, an exit or a reply, bounded; every process is killed
//! when its handle drops. The Rust binaries are built (once per run) when missing or older
//! than the sources, so a `cargo test -p sf-tests` never runs stale ones.
//! Run with `SF_PYTHON=$(scripts/python-env) cargo test -p sf-tests --test python_services`.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};
use sf_tests::{python, workspace_root};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// How long a process may take to print its ready line (Python imports numpy and pyzmq).
const START: Duration = Duration::from_secs(10);
/// Bound on a run that should end by itself, and on a state converging.
const RUN: Duration = Duration::from_secs(10);
/// What one `service-framework call` may wait for its reply.
const CALL_TIMEOUT_S: &str = "1";

// ---------------------------------------------------------------------------------------
// The Rust binaries
// ---------------------------------------------------------------------------------------

const RUST_BINS: [&str; 6] = [
    "service-framework",
    "dynamic_echo",
    "echo_replyer",
    "echo_requester",
    "state_source",
    "state_mirror",
];

/// `target/<profile>/<name>`, beside this test's `deps/` directory.
fn bin(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test executable's path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test runs from target/<profile>/deps/")
            .to_path_buf();
        build_bins_if_needed(&dir);
        dir
    });
    dir.join(name)
}

/// `cargo test --workspace --all-targets` builds every binary before running tests, but
/// `cargo test -p sf-tests` does not: build them once here if one is missing or older than
/// the sources it is made from.
fn build_bins_if_needed(dir: &Path) {
    let newest_source = [
        "connections/src",
        "states/src",
        "service-framework/src",
        "examples/src",
        "examples/echo",
        "examples/dynamic",
        "examples/state_mirror",
    ]
    .iter()
    .filter_map(|d| newest_rs(&workspace_root().join(d)))
    .max();
    let stale: Vec<&str> = RUST_BINS
        .iter()
        .copied()
        .filter(|b| {
            match std::fs::metadata(dir.join(b)).and_then(|m| m.modified()) {
                Ok(built) => newest_source.is_some_and(|src| src > built),
                Err(_) => true, // missing
            }
        })
        .collect();
    if stale.is_empty() {
        return;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "build",
        "-p",
        "service-framework",
        "-p",
        "sf-examples",
        "--bins",
    ])
    .current_dir(workspace_root());
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("run cargo build");
    assert!(
        out.status.success(),
        "{stale:?} missing or stale in {}, and `cargo build -p service-framework -p sf-examples` failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The newest modification time of a `.rs` file under `dir`.
fn newest_rs(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                    newest = newest.max(Some(t));
                }
            }
        }
    }
    newest
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Default)]
struct Output {
    stdout: Vec<String>,
    stderr: Vec<String>,
    stdout_closed: bool,
    stderr_closed: bool,
}

impl Output {
    fn get(&self, s: Stream) -> (&[String], bool) {
        match s {
            Stream::Stdout => (&self.stdout, self.stdout_closed),
            Stream::Stderr => (&self.stderr, self.stderr_closed),
        }
    }
}

/// A service process; both output streams are collected line by line. Killed on drop.
#[derive(Debug)]
struct Proc {
    name: String,
    child: Child,
    output: Arc<Mutex<Output>>,
    changed: watch::Receiver<u64>,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let output = Arc::new(Mutex::new(Output::default()));
        let (tx, changed) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        tokio::spawn(collect(stdout, Stream::Stdout, output.clone(), tx.clone()));
        tokio::spawn(collect(stderr, Stream::Stderr, output.clone(), tx));
        Proc {
            name: name.to_owned(),
            child,
            output,
            changed,
        }
    }

    /// `service-framework ARGS...`.
    fn rust(name: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new(bin("service-framework"));
        cmd.args(args);
        Proc::spawn(name, cmd)
    }

    /// `python -m service_framework -s ./FILE ARGS...` from `tests/python/services/`.
    fn python(name: &str, file: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new(python());
        cmd.args(["-u", "-m", "service_framework", "-s"])
            .arg(format!("./{file}"))
            .args(args)
            .current_dir(workspace_root().join("tests/python/services"))
            .env("PYTHONDONTWRITEBYTECODE", "1");
        Proc::spawn(name, cmd)
    }

    fn lines(&self, s: Stream) -> Vec<String> {
        self.output.lock().expect("output lock").get(s).0.to_vec()
    }

    fn dump(&self) -> String {
        let o = self.output.lock().expect("output lock");
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            o.stdout.join("\n"),
            self.name,
            o.stderr.join("\n")
        )
    }

    /// The first line of `s` (so far or to come) for which `pred` holds.
    async fn try_line(
        &mut self,
        s: Stream,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.changed.borrow_and_update();
            {
                let o = self.output.lock().expect("output lock");
                let (lines, closed) = o.get(s);
                if let Some(l) = lines.iter().find(|l| pred(l)) {
                    return Ok(l.clone());
                }
                if closed {
                    return Err(format!("{} closed its {s:?} without the line", self.name));
                }
            }
            match tokio::time::timeout_at(deadline, self.changed.changed()).await {
                Ok(Ok(())) => {}
                // Both collectors ended: one more look, then the stream is closed.
                Ok(Err(_)) => {}
                Err(_) => return Err(format!("{}: no such line within {timeout:?}", self.name)),
            }
        }
    }

    async fn line(&mut self, s: Stream, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        match self.try_line(s, pred, timeout).await {
            Ok(l) => l,
            Err(e) => panic!("{e}\n{}", self.dump()),
        }
    }

    /// Waits for the process to end by itself, then for its output to be complete.
    async fn exit(&mut self, timeout: Duration) -> ExitStatus {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => panic!("cannot wait for {}: {e}", self.name),
            Err(_) => panic!(
                "{} did not exit within {timeout:?}\n{}",
                self.name,
                self.dump()
            ),
        };
        for s in [Stream::Stdout, Stream::Stderr] {
            let _ = self.try_line(s, |_| false, Duration::from_secs(2)).await;
        }
        status
    }

    fn still_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn collect(
    stream: impl AsyncRead + Unpin,
    s: Stream,
    output: Arc<Mutex<Output>>,
    tx: Arc<watch::Sender<u64>>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        {
            let mut o = output.lock().expect("output lock");
            match s {
                Stream::Stdout => o.stdout.push(line),
                Stream::Stderr => o.stderr.push(line),
            }
        }
        tx.send_modify(|n| *n += 1);
    }
    {
        let mut o = output.lock().expect("output lock");
        match s {
            Stream::Stdout => o.stdout_closed = true,
            Stream::Stderr => o.stderr_closed = true,
        }
    }
    tx.send_modify(|n| *n += 1);
}

/// Starts a process that binds a port of its own (given to `start`), until it prints its
/// ready line: a port taken between [`free_ports`] and the bind makes it exit first, and that
/// is retried on other ports, a few times.
async fn start_bound<F>(what: &str, s: Stream, ready: &str, mut start: F) -> (Proc, u16)
where
    F: FnMut(u16) -> Proc,
{
    let mut failures = Vec::new();
    for _ in 0..3 {
        let [port] = free_ports();
        let mut p = start(port);
        match p.try_line(s, |l| l.contains(ready), START).await {
            Ok(_) => return (p, port),
            Err(e) => {
                let _ = p.child.start_kill();
                failures.push(format!("port {port}: {e}\n{}", p.dump()));
            }
        }
    }
    panic!("{what} never got ready:\n{}", failures.join("\n"))
}

/// `N` distinct TCP ports that were free a moment ago.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// A directory for one test's addresses and config files, removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "sf-python-services-{}-{n}-{test}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create the temp dir");
        TempDir(dir)
    }

    /// Writes `value` as `name`; returns the absolute path as a string.
    fn json(&self, name: &str, value: &Value) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap()).expect("write json");
        path.to_str().expect("UTF-8 temp path").to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------
// Talking to replyers
// ---------------------------------------------------------------------------------------

/// `service-framework call ADDRESS JSON --timeout 1`: the reply, or the failure's stderr.
async fn call(address: &str, args: &Value) -> Result<Value, String> {
    let mut cmd = Command::new(bin("service-framework"));
    cmd.args([
        "call",
        address,
        &args.to_string(),
        "--timeout",
        CALL_TIMEOUT_S,
    ])
    .stdin(Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(10), cmd.output())
        .await
        .expect("service-framework call ends (its own timeout is 1 s)")
        .expect("run service-framework call");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if !out.status.success() {
        return Err(format!("{} (stdout {stdout:?}): {stderr}", out.status));
    }
    serde_json::from_str(&stdout).map_err(|e| format!("reply {stdout:?} is not JSON: {e}"))
}

/// Asks the mirror at `address` for its state until it equals `expected`, bounded by `RUN`.
async fn until_state(what: &str, address: &str, expected: &Value, procs: &[&Proc]) -> Value {
    let deadline = tokio::time::Instant::now() + RUN;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let got = call(address, &json!({})).await;
        if let Ok(reply) = &got {
            if reply["state"] == *expected {
                return reply.clone();
            }
        }
        if tokio::time::Instant::now() >= deadline {
            let dumps: Vec<String> = procs.iter().map(|p| p.dump()).collect();
            panic!(
                "{what} at {address} never reached {expected} ({attempts} attempts in {RUN:?}); last: {got:?}\n{}",
                dumps.join("\n")
            );
        }
        // Pacing between attempts (each attempt is itself bounded).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The state after a scripted series: a snapshot replaces, a delta sets keys (null deletes).
fn final_state(updates: &[Value]) -> Value {
    let mut state = Map::new();
    for u in updates {
        let changes = u["state"].as_object().expect("an update has a state map");
        if u["is_snapshot"] == json!(true) {
            state = changes.clone();
            continue;
        }
        for (k, v) in changes {
            if v.is_null() {
                state.remove(k);
            } else {
                state.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(state)
}

fn after<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    line.strip_prefix(prefix)
}

fn echo_addresses(dir: &TempDir, port: u16) -> (String, String) {
    let replyer = dir.json(
        "replyer_addresses.json",
        &json!({
            "connections": {"in": {"reply": {"replyer": addr(port)}}, "out": {}},
            "states": {"in": {}, "out": {}},
        }),
    );
    let requester = dir.json(
        "requester_addresses.json",
        &json!({
            "connections": {"in": {}, "out": {"request": {"requester": addr(port)}}},
            "states": {"in": {}, "out": {}},
        }),
    );
    (replyer, requester)
}

/// The Rust echo_replyer (`service-framework -s echo_replyer`) on a free port, serving.
async fn rust_echo_replyer(dir: &TempDir) -> (Proc, u16, String) {
    let (replyer, port) = start_bound("rust echo_replyer", Stream::Stderr, "in.reply: ", |port| {
        let (replyer_file, _) = echo_addresses(dir, port);
        Proc::rust(
            "rust echo_replyer",
            &["-s", "echo_replyer", "-a", &replyer_file],
        )
    })
    .await;
    let (_, requester_file) = echo_addresses(dir, port);
    (replyer, port, requester_file)
}

// ---------------------------------------------------------------------------------------
// Request / reply
// ---------------------------------------------------------------------------------------

/// 1. Python 0.0.18 echo_requester (main mode, `--num_req_to_send 5`) -> Rust echo_replyer:
///    five replies with the echoed values, in order, and the Python process exits 0 once its
///    `main` returns.
#[tokio::test]
async fn python_requester_service_to_rust_replyer_service() {
    let dir = TempDir::new("py_req");
    let (mut replyer, _, requester_file) = rust_echo_replyer(&dir).await;

    let mut py = Proc::python(
        "python echo_requester",
        "echo_requester.py",
        &["-a", &requester_file, "-m", "--num_req_to_send", "5"],
    );
    let status = py.exit(RUN).await;
    assert!(
        status.success(),
        "python exited with {status}\n{}",
        py.dump()
    );
    let responses: Vec<Value> = py
        .lines(Stream::Stdout)
        .iter()
        .filter_map(|l| after(l, "Got Response: "))
        .map(|j| serde_json::from_str(j).expect("python prints JSON"))
        .collect();
    let expected: Vec<Value> = (0..5)
        .map(|i| json!({"echoed": format!("Hello World - {i}")}))
        .collect();
    assert_eq!(responses, expected, "\n{}", py.dump());
    assert!(replyer.still_running(), "{}", replyer.dump());
}

/// 2. A Python 0.0.18 requester whose first request has a number for `to_echo` -> Rust
///    echo_replyer: the reply is an error reply (`return_args` nil, `error.code`
///    `invalid_args`), which the Python framework logs whole before its to_send raises on the
///    nil `return_args` (0.0.18 can only hand `return_args` to the service). The Rust
///    replyer keeps serving: Python's next requests are echoed, and so are later calls.
#[tokio::test]
async fn python_requester_bad_arg_gets_an_error_reply_and_rust_replyer_keeps_serving() {
    let dir = TempDir::new("py_bad");
    let (mut replyer, port, requester_file) = rust_echo_replyer(&dir).await;

    let run = || {
        Proc::python(
            "python echo_requester",
            "echo_requester.py",
            &[
                "-a",
                &requester_file,
                "-m",
                "-cl",
                "DEBUG",
                "--num_req_to_send",
                "2",
                "--bad_arg_first",
                "yes",
            ],
        )
    };
    let mut py = run();
    let mut status = py.exit(RUN).await;
    // Once, in a loaded run from a clean clone, 0.0.18's REQ failed with EFSM in its own
    // recv right after a send, while its main-mode service-loop thread was starting up
    // (0.0.18 shares sockets between threads, one of its known defects; libzmq sockets are
    // not thread-safe). Every reply it had got was right. That failure is named here and the
    // run is tried once more; any other failure fails the test.
    if !status.success()
        && py
            .lines(Stream::Stderr)
            .iter()
            .any(|l| l.contains("Operation cannot be accomplished in current state"))
    {
        eprintln!("0.0.18's REQ hit its thread race (EFSM); running it once more");
        py = run();
        status = py.exit(RUN).await;
    }
    assert!(
        status.success(),
        "python exited with {status}\n{}",
        py.dump()
    );

    // The whole reply the Python requester received, from the framework's DEBUG log.
    let logged: Vec<String> = py
        .lines(Stream::Stderr)
        .into_iter()
        .filter(|l| l.contains("Parsing returned Response: "))
        .collect();
    assert_eq!(logged.len(), 3, "three replies\n{}", py.dump());
    assert!(
        logged[0].contains("{'return_args': None,")
            && logged[0].contains("'error': {'code': 'invalid_args'")
            && logged[0].contains("to_echo"),
        "the first reply is an error naming the field: {}",
        logged[0]
    );
    let stdout = py.lines(Stream::Stdout);
    let outcomes: Vec<&String> = stdout
        .iter()
        .filter(|l| l.starts_with("Got Error: ") || l.starts_with("Got Response: "))
        .collect();
    assert_eq!(outcomes.len(), 3, "\n{}", py.dump());
    assert!(
        outcomes[0].starts_with("Got Error: ") && outcomes[0].contains("NoneType"),
        "0.0.18's to_send validates the nil return_args and raises: {}",
        outcomes[0]
    );
    for (i, line) in outcomes[1..].iter().enumerate() {
        let reply: Value = serde_json::from_str(after(line, "Got Response: ").unwrap()).unwrap();
        assert_eq!(reply, json!({"echoed": format!("Hello World - {i}")}));
    }

    // Still serving, and a bad call from the Rust CLI is answered with an error too.
    assert!(replyer.still_running(), "{}", replyer.dump());
    let ok = call(&addr(port), &json!({"to_echo": "still here"}))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", replyer.dump()));
    assert_eq!(ok, json!({"echoed": "still here"}));
    let err = call(&addr(port), &json!({"to_echo": 7})).await.unwrap_err();
    assert!(err.contains("invalid_args"), "{err}");
}

/// 3. Rust echo_requester (`service-framework -s echo_requester -m --num_req_to_send 5`) ->
///    Python 0.0.18 echo_replyer: exactly five `Got Response:` lines and exit 0; the Python
///    replyer saw the five requests. Then `service-framework call` with a number for
///    `to_echo`: 0.0.18 validates the args inside its service loop, the ValueError ends the
///    whole Python service (exit 1, no reply), and the Rust caller gets a failure instead of
///    hanging. (That the Python replyer dies is the original's defect, shown here, not
///    something to rely on.)
#[tokio::test]
async fn rust_requester_service_to_python_replyer_service() {
    let dir = TempDir::new("rust_req");
    let (mut py, port) = start_bound("python echo_replyer", Stream::Stdout, "READY", |port| {
        let (replyer_file, _) = echo_addresses(&dir, port);
        Proc::python(
            "python echo_replyer",
            "echo_replyer.py",
            &["-a", &replyer_file],
        )
    })
    .await;
    let (_, requester_file) = echo_addresses(&dir, port);

    let mut rust = Proc::rust(
        "rust echo_requester",
        &[
            "-s",
            "echo_requester",
            "-a",
            &requester_file,
            "-m",
            "--num_req_to_send",
            "5",
        ],
    );
    let status = rust.exit(RUN).await;
    assert!(
        status.success(),
        "rust exited with {status}\n{}",
        rust.dump()
    );
    let responses: Vec<String> = rust
        .lines(Stream::Stdout)
        .into_iter()
        .filter(|l| l.starts_with("Got Response:"))
        .collect();
    let expected: Vec<String> = (0..5)
        .map(|i| format!("Got Response: {{\"echoed\":\"Hello World {i}\"}}"))
        .collect();
    assert_eq!(responses, expected, "\n{}\n{}", rust.dump(), py.dump());
    let requests: Vec<Value> = py
        .lines(Stream::Stdout)
        .iter()
        .filter_map(|l| after(l, "Got Request: "))
        .map(|j| serde_json::from_str(j).unwrap())
        .collect();
    let sent: Vec<Value> = (0..5)
        .map(|i| json!({"to_echo": format!("Hello World {i}")}))
        .collect();
    assert_eq!(requests, sent, "\n{}", py.dump());

    // The mistyped call.
    let err = call(&addr(port), &json!({"to_echo": 5})).await.unwrap_err();
    let status = py.exit(RUN).await;
    assert!(
        !status.success(),
        "0.0.18's replyer dies on bad input; here it exited with {status}\n{}",
        py.dump()
    );
    let stderr = py.lines(Stream::Stderr).join("\n");
    assert!(
        stderr.contains("ValueError") && stderr.contains("is not of required type"),
        "the Python service died of its own args validation\n{}",
        py.dump()
    );
    assert!(
        err.contains("went away") || err.contains("timed out"),
        "the caller learns there is no reply: {err}"
    );
}

// ---------------------------------------------------------------------------------------
// Delta states
// ---------------------------------------------------------------------------------------

/// 4. Python 0.0.18 state_source (main mode, delta_update_out `prices`) sends a scripted
///    series (snapshot, deltas with a delete, and a numbering gap 2 -> 5 as in 0.0.18's own
///    tests), 0.3 s apart, then keeps its snapshot replyer up. A Rust state_mirror started
///    before the source follows it live (its subscriber connects once the source binds; the
///    gap and anything missed before the connection are healed by snapshot requests); one
///    started after the series converges by the snapshot it asks for at start. Both must
///    answer `get_state` with the series' final state.
#[tokio::test]
async fn python_state_source_to_rust_state_mirrors() {
    let dir = TempDir::new("py_src");
    let [publisher, replyer, early_port, late_port] = free_ports();
    let updates = vec![
        json!({"current_num": 0, "is_snapshot": true, "state": {"btc": 91000.5, "eth": 3100.25}}),
        json!({"current_num": 1, "is_snapshot": false, "state": {"sol": 142.1}}),
        json!({"current_num": 2, "is_snapshot": false, "state": {"eth": null, "ada": 0.61}}),
        json!({"current_num": 5, "is_snapshot": false, "state": {"btc": 91010.0}}),
        json!({"current_num": 6, "is_snapshot": false, "state": {"xrp": 2.5}}),
    ];
    let expected = final_state(&updates);
    assert_eq!(
        expected,
        json!({"btc": 91010.0, "sol": 142.1, "ada": 0.61, "xrp": 2.5})
    );
    let source_addresses = dir.json(
        "source_addresses.json",
        &json!({
            "connections": {"in": {}, "out": {}},
            "states": {"in": {}, "out": {"prices": {
                "publisher": addr(publisher), "replyer": addr(replyer)}}},
        }),
    );
    let source_config = dir.json(
        "source_config.json",
        &json!({"updates": updates, "hold_s": 15, "pause_s": 0.3}),
    );
    let mirror_addresses = |name: &str, port: u16| {
        dir.json(
            name,
            &json!({
                "connections": {"in": {"get_state": {"replyer": addr(port)}}, "out": {}},
                "states": {"in": {"prices": {
                    "subscriber": addr(publisher), "requester": addr(replyer)}}, "out": {}},
            }),
        )
    };
    let early_file = mirror_addresses("early_addresses.json", early_port);
    let late_file = mirror_addresses("late_addresses.json", late_port);

    let early = Proc::rust(
        "rust early state_mirror",
        &["-s", "state_mirror", "-a", &early_file],
    );
    let mut source = Proc::python(
        "python state_source",
        "state_source.py",
        &["-a", &source_addresses, "-c", &source_config, "-m"],
    );
    source
        .line(Stream::Stdout, |l| l == "SERIES DONE", RUN)
        .await;
    let sent = source
        .lines(Stream::Stdout)
        .iter()
        .filter(|l| l.starts_with("Sent: "))
        .count();
    assert_eq!(sent, updates.len(), "\n{}", source.dump());

    let mut late = Proc::rust(
        "rust late state_mirror",
        &["-s", "state_mirror", "-a", &late_file],
    );
    late.line(Stream::Stderr, |l| l.contains("in.get_state: "), START)
        .await;
    let early_reply = until_state(
        "the early Rust mirror",
        &addr(early_port),
        &expected,
        &[&early, &source],
    )
    .await;
    let late_reply = until_state(
        "the late Rust mirror",
        &addr(late_port),
        &expected,
        &[&late, &source],
    )
    .await;
    // Which path the early mirror took depends on when its subscriber got connected; shown,
    // not asserted.
    let resyncs: Vec<String> = early
        .lines(Stream::Stderr)
        .into_iter()
        .filter(|l| l.contains("gap"))
        .collect();
    eprintln!(
        "early mirror at current_num {} after {resyncs:?}; late mirror at {} (0.0.18 snapshot replies say 0)",
        early_reply["current_num"], late_reply["current_num"]
    );
    assert!(
        source.still_running(),
        "the source was to hold for 15 s\n{}",
        source.dump()
    );
}

/// 5. Rust state_source (main mode, scripted updates, `hold_s` 10) -> Python 0.0.18
///    state_mirror (delta_update_in `prices`, replyer `get_state`), started first. The
///    Python in side never asks for a snapshot at start and only resyncs on a gap, so
///    whatever it missed while connecting is healed by the snapshot the Rust out side
///    re-publishes a period after the changes. The Python mirror's `get_state` must return
///    the Rust source's final state.
#[tokio::test]
async fn rust_state_source_to_python_state_mirror() {
    let dir = TempDir::new("rust_src");
    let [publisher, replyer] = free_ports();
    let updates = vec![
        json!({"is_snapshot": true, "state": {"btc": 91000.5, "eth": 3100.25}}),
        json!({"state": {"sol": 142.1}}),
        json!({"state": {"eth": null, "ada": 0.61}}),
        json!({"state": {"btc": 91010.0}}),
    ];
    let expected = final_state(&updates);
    assert_eq!(expected, json!({"btc": 91010.0, "sol": 142.1, "ada": 0.61}));
    let (mut mirror, mirror_port) =
        start_bound("python state_mirror", Stream::Stdout, "READY", |port| {
            let file = dir.json(
                "mirror_addresses.json",
                &json!({
                    "connections": {"in": {"get_state": {"replyer": addr(port)}}, "out": {}},
                    "states": {"in": {"prices": {
                        "subscriber": addr(publisher), "requester": addr(replyer)}}, "out": {}},
                }),
            );
            Proc::python("python state_mirror", "state_mirror.py", &["-a", &file])
        })
        .await;
    let before = call(&addr(mirror_port), &json!({}))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", mirror.dump()));
    assert_eq!(before, json!({"state": {}}), "nothing mirrored yet");

    let source_addresses = dir.json(
        "source_addresses.json",
        &json!({
            "connections": {"in": {}, "out": {}},
            "states": {"in": {}, "out": {"prices": {
                "publisher": addr(publisher), "replyer": addr(replyer)}}},
        }),
    );
    let source_config = dir.json(
        "source_config.json",
        &json!({"updates": updates, "hold_s": 10}),
    );
    let mut source = Proc::rust(
        "rust state_source",
        &[
            "-s",
            "state_source",
            "-a",
            &source_addresses,
            "-c",
            &source_config,
            "-m",
        ],
    );
    source
        .line(
            Stream::Stderr,
            |l| l.contains(&format!("prices is now at {}", updates.len())),
            START,
        )
        .await;
    until_state(
        "the Python mirror",
        &addr(mirror_port),
        &expected,
        &[&mirror, &source],
    )
    .await;
    assert!(mirror.still_running(), "{}", mirror.dump());
}

// ---------------------------------------------------------------------------------------
// States that converge in every case (issue 13)
// ---------------------------------------------------------------------------------------

fn source_addresses(dir: &TempDir, name: &str, publisher: u16, replyer: u16) -> String {
    dir.json(
        name,
        &json!({
            "connections": {"in": {}, "out": {}},
            "states": {"in": {}, "out": {"prices": {
                "publisher": addr(publisher), "replyer": addr(replyer)}}},
        }),
    )
}

fn mirror_addresses(dir: &TempDir, name: &str, port: u16, publisher: u16, replyer: u16) -> String {
    dir.json(
        name,
        &json!({
            "connections": {"in": {"get_state": {"replyer": addr(port)}}, "out": {}},
            "states": {"in": {"prices": {
                "subscriber": addr(publisher), "requester": addr(replyer)}}, "out": {}},
        }),
    )
}

/// The Rust state_source with `updates`, holding `hold_s`, up to its last update.
async fn rust_source(dir: &TempDir, tag: &str, ports: (u16, u16), updates: &[Value]) -> Proc {
    let addresses = source_addresses(dir, &format!("{tag}_addresses.json"), ports.0, ports.1);
    let config = dir.json(
        &format!("{tag}_config.json"),
        &json!({"updates": updates, "hold_s": 30}),
    );
    let mut source = Proc::rust(
        tag,
        &["-s", "state_source", "-a", &addresses, "-c", &config, "-m"],
    );
    source
        .line(Stream::Stderr, |l| l.contains("prices is now at"), START)
        .await;
    source
}

/// Asks until the state equals `expected`; returns how long that took (bounded by `RUN`).
async fn time_to_state(what: &str, address: &str, expected: &Value, procs: &[&Proc]) -> Duration {
    let t0 = tokio::time::Instant::now();
    until_state(what, address, expected, procs).await;
    t0.elapsed()
}

/// 13.1 A Python 0.0.18 state_source is stopped, and started again 3 s later (the Rust
///    mirror's reconnects backing off meanwhile) with another series, sent at once and never
///    re-published (0.0.18 has no periodic snapshot). The Rust mirror must answer the new
///    final state soon after: it asks for a snapshot when its connection is re-established.
#[tokio::test]
async fn python_source_restarted_during_the_mirrors_backoff_reaches_the_rust_mirror() {
    let dir = TempDir::new("py_restart");
    let [publisher, replyer, mirror_port] = free_ports();
    let first = vec![json!({"current_num": 0, "is_snapshot": true, "state": {"old": 1}})];
    let second = vec![
        json!({"current_num": 0, "is_snapshot": true, "state": {"new": 2}}),
        json!({"current_num": 1, "is_snapshot": false, "state": {"more": 3}}),
    ];
    let addresses = source_addresses(&dir, "source_addresses.json", publisher, replyer);
    let start_source = |tag: &str, updates: &[Value]| {
        let config = dir.json(
            &format!("{tag}_config.json"),
            &json!({"updates": updates, "hold_s": 30}),
        );
        Proc::python(
            tag,
            "state_source.py",
            &["-a", &addresses, "-c", &config, "-m"],
        )
    };
    let mut source = start_source("python state_source", &first);
    source
        .line(Stream::Stdout, |l| l == "SERIES DONE", RUN)
        .await;
    let mirror_file = mirror_addresses(&dir, "mirror.json", mirror_port, publisher, replyer);
    let mut mirror = Proc::rust(
        "rust state_mirror",
        &["-s", "state_mirror", "-a", &mirror_file],
    );
    mirror
        .line(Stream::Stderr, |l| l.contains("in.get_state: "), START)
        .await;
    until_state(
        "the Rust mirror",
        &addr(mirror_port),
        &final_state(&first),
        &[&mirror, &source],
    )
    .await;

    drop(source);
    // Down for 3 s, as in the report: the mirror's reconnects fail and back off.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut again = start_source("python state_source (restarted)", &second);
    again
        .line(Stream::Stdout, |l| l == "SERIES DONE", RUN)
        .await;
    let took = time_to_state(
        "the Rust mirror after the restart",
        &addr(mirror_port),
        &final_state(&second),
        &[&mirror, &again],
    )
    .await;
    eprintln!("Rust mirror at the restarted Python source's state {took:?} after its series");
    assert!(
        took < Duration::from_secs(3),
        "took {took:?}\n{}",
        mirror.dump()
    );
}

/// 13.1 The same with a Rust state_source restarted 3 s later: a Rust and a Python mirror
///    both reach the new state.
#[tokio::test]
async fn rust_source_restarted_during_the_mirrors_backoff_reaches_both_mirrors() {
    let dir = TempDir::new("rust_restart");
    let [publisher, replyer, rust_port, py_port] = free_ports();
    let first = vec![json!({"is_snapshot": true, "state": {"old": 1}})];
    let second = vec![
        json!({"is_snapshot": true, "state": {"new": 2}}),
        json!({"state": {"more": 3}}),
    ];
    let source = rust_source(&dir, "rust state_source", (publisher, replyer), &first).await;
    let rust_file = mirror_addresses(&dir, "rust_mirror.json", rust_port, publisher, replyer);
    let mut rust_mirror = Proc::rust(
        "rust state_mirror",
        &["-s", "state_mirror", "-a", &rust_file],
    );
    rust_mirror
        .line(Stream::Stderr, |l| l.contains("in.get_state: "), START)
        .await;
    let py_file = mirror_addresses(&dir, "py_mirror.json", py_port, publisher, replyer);
    let mut py_mirror = Proc::python("python state_mirror", "state_mirror.py", &["-a", &py_file]);
    py_mirror
        .line(Stream::Stdout, |l| l == "READY", START)
        .await;
    until_state(
        "the Rust mirror",
        &addr(rust_port),
        &final_state(&first),
        &[&rust_mirror, &source],
    )
    .await;
    until_state(
        "the Python mirror",
        &addr(py_port),
        &final_state(&first),
        &[&py_mirror, &source],
    )
    .await;

    drop(source);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = rust_source(
        &dir,
        "rust state_source (restarted)",
        (publisher, replyer),
        &second,
    )
    .await;
    let expected = final_state(&second);
    let took = time_to_state(
        "the Rust mirror after the restart",
        &addr(rust_port),
        &expected,
        &[&rust_mirror, &again],
    )
    .await;
    eprintln!("Rust mirror at the restarted Rust source's state {took:?} after its first update");
    assert!(
        took < Duration::from_secs(3),
        "took {took:?}\n{}",
        rust_mirror.dump()
    );
    until_state(
        "the Python mirror after the restart",
        &addr(py_port),
        &expected,
        &[&py_mirror, &again],
    )
    .await;
}

/// 13.2 A Python mirror started after a Rust source went idle (its changes, and the snapshot
///    re-published a period after them, long gone): the Rust out side answers the Python
///    subscription with a snapshot, though Python never asks.
#[tokio::test]
async fn a_late_python_mirror_of_an_idle_rust_source_converges() {
    let dir = TempDir::new("late_py");
    let [publisher, replyer, py_port] = free_ports();
    let updates = vec![
        json!({"is_snapshot": true, "state": {"btc": 91000.5}}),
        json!({"state": {"sol": 142.1}}),
    ];
    let mut source = rust_source(&dir, "rust state_source", (publisher, replyer), &updates).await;
    source
        .line(Stream::Stderr, |l| l.contains("prices is now at 2"), START)
        .await;
    // Idle past the periodic snapshot (1 s after the changes).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let py_file = mirror_addresses(&dir, "py_mirror.json", py_port, publisher, replyer);
    let mut py_mirror = Proc::python("python state_mirror", "state_mirror.py", &["-a", &py_file]);
    py_mirror
        .line(Stream::Stdout, |l| l == "READY", START)
        .await;
    let took = time_to_state(
        "the late Python mirror",
        &addr(py_port),
        &final_state(&updates),
        &[&py_mirror, &source],
    )
    .await;
    eprintln!("late Python mirror converged {took:?} after it was ready");
}

/// 13.4 and 13.5: a Python mirror started first gets the updates the Rust source makes at
///    once after starting (the out side waits `wait_after_creation_s`, 0.15 s, as the
///    original does: the deltas themselves arrive, seen in the mirror's debug log), and a
///    delete of a key that is not there is never published (0.0.18's `del` would raise).
#[tokio::test]
async fn a_python_mirror_gets_the_updates_made_at_start_and_no_delete_of_an_absent_key() {
    let dir = TempDir::new("start_py");
    let [publisher, replyer, py_port] = free_ports();
    let updates = vec![
        json!({"is_snapshot": true, "state": {"btc": 91000.5}}),
        json!({"state": {"sol": 142.1}}),
        json!({"state": {"absent_key": null}}),
        json!({"state": {"eth": 3100.25}}),
    ];
    let py_file = mirror_addresses(&dir, "py_mirror.json", py_port, publisher, replyer);
    let mut py_mirror = Proc::python(
        "python state_mirror",
        "state_mirror.py",
        &["-a", &py_file, "-cl", "DEBUG"],
    );
    py_mirror
        .line(Stream::Stdout, |l| l == "READY", START)
        .await;
    let source = rust_source(&dir, "rust state_source", (publisher, replyer), &updates).await;
    until_state(
        "the Python mirror",
        &addr(py_port),
        &final_state(&updates),
        &[&py_mirror, &source],
    )
    .await;
    let got_delta = |n: u32| {
        move |l: &str| {
            l.contains("Got args to update state")
                && l.contains(&format!("'current_num': {n}, 'is_snapshot': False"))
        }
    };
    py_mirror.line(Stream::Stderr, got_delta(2), RUN).await;
    py_mirror.line(Stream::Stderr, got_delta(3), RUN).await;
    let log = py_mirror.lines(Stream::Stderr).join("\n");
    assert!(
        !log.contains("absent_key"),
        "a delete of an absent key was published:\n{log}"
    );
    assert!(!log.contains("Traceback"), "{log}");
    assert!(py_mirror.still_running(), "{}", py_mirror.dump());
}

// ---------------------------------------------------------------------------------------
// Bus security (CURVE) between whole services and pyzmq (libzmq 4.3.5 with libsodium)
// ---------------------------------------------------------------------------------------

/// `service-framework keygen --out DIR NAME`: the public key it printed.
async fn keygen(dir: &Path, name: &str) -> String {
    let out = Command::new(bin("service-framework"))
        .arg("keygen")
        .arg("--out")
        .arg(dir)
        .arg(name)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run service-framework keygen");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "keygen: {stdout} {:?}", out.stderr);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .unwrap_or_else(|| panic!("keygen printed no public key: {stdout}"))
        .to_owned()
}

/// `tests/python/curve_peer.py ARGS`: its first JSON line after READY (or its only one).
async fn curve_peer(args: &[&str]) -> Value {
    let mut p = sf_tests::PyProcess::spawn("curve_peer", args);
    let first = p
        .line(START)
        .await
        .unwrap_or_else(|| panic!("curve_peer {args:?} printed nothing: {}", p.stderr()));
    let json = match first.strip_prefix("READY") {
        Some(_) => p.expect_json(START).await,
        None => serde_json::from_str(&first).expect("a JSON line"),
    };
    p.wait_success(START).await;
    json
}

/// The Z85 secret key in a `NAME.key_secret` certificate, to check it is never printed.
fn secret_in(cert: &Path) -> String {
    let text = std::fs::read_to_string(cert).expect("read the certificate");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("secret-key = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("a secret-key line")
        .to_owned()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// Keys made by `service-framework keygen` load in pyzmq (`zmq.auth.load_certificate`), keys
/// made by pyzmq (`zmq.auth.create_certificates`) load in the framework, and a Rust replyer
/// started with `--security` answers a pyzmq CURVE client whose certificate is in its
/// clients directory. An unknown client key, a NULL client and a client expecting another
/// server key get nothing; the refusal is logged with the client's key; the service keeps
/// serving; its secret key is never printed.
#[tokio::test]
async fn a_pyzmq_curve_client_calls_a_rust_replyer_started_with_a_security_file() {
    let dir = TempDir::new("curve_rep");
    let keys = dir.0.join("keys");
    let clients = dir.0.join("clients");
    let strangers = dir.0.join("strangers");
    let server_public = keygen(&keys, "server").await;
    let (server_cert, server_secret) = (keys.join("server.key"), keys.join("server.key_secret"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&server_secret)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the secret certificate is private");
    }
    // pyzmq reads ours...
    let loaded = curve_peer(&["load", path_str(&server_cert)]).await;
    assert_eq!(
        loaded,
        json!({"public": server_public, "has_secret": false})
    );
    let loaded = curve_peer(&["load", path_str(&server_secret)]).await;
    assert_eq!(loaded, json!({"public": server_public, "has_secret": true}));
    // ...and makes the clients' (the framework reads those through clients_dir).
    curve_peer(&["certs", path_str(&clients), "alice"]).await;
    let mallory = curve_peer(&["certs", path_str(&strangers), "mallory"]).await;
    let alice_secret = clients.join("alice.key_secret");
    let mallory_secret = strangers.join("mallory.key_secret");

    let security = dir.json(
        "security.json",
        &json!({"service": {"secret_key_file": "keys/server.key_secret", "clients_dir": "clients"}}),
    );
    let (replyer, port) = start_bound(
        "rust echo_replyer over CURVE",
        Stream::Stderr,
        "in.reply: ",
        |port| {
            let (replyer_file, _) = echo_addresses(&dir, port);
            Proc::rust(
                "rust echo_replyer over CURVE",
                &[
                    "-s",
                    "echo_replyer",
                    "-a",
                    &replyer_file,
                    "--security",
                    &security,
                ],
            )
        },
    )
    .await;
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let call_as = |server_key: &Path, client_secret: &Path, text: &str, timeout_ms: &str| {
        let args = [
            "call".to_owned(),
            endpoint.clone(),
            path_str(server_key).to_owned(),
            path_str(client_secret).to_owned(),
            json!({"to_echo": text}).to_string(),
            timeout_ms.to_owned(),
        ];
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            curve_peer(&args).await
        }
    };

    let ok = call_as(&server_cert, &alice_secret, "hello over curve", "5000").await;
    assert_eq!(
        ok,
        json!({"reply": {"echoed": "hello over curve"}}),
        "{}",
        replyer.dump()
    );

    // Refused before any message reaches the handler.
    let unknown = call_as(&server_cert, &mallory_secret, "let me in", "1000").await;
    assert_eq!(unknown, json!({"timeout": true}));
    let null = curve_peer(&[
        "call",
        &endpoint,
        "-",
        "-",
        &json!({"to_echo": "plain"}).to_string(),
        "1000",
    ])
    .await;
    assert_eq!(null, json!({"timeout": true}));
    // A client that takes mallory's key for the server's: its HELLO cannot be opened.
    let wrong_server = call_as(
        &strangers.join("mallory.key"),
        &alice_secret,
        "who are you",
        "1000",
    )
    .await;
    assert_eq!(wrong_server, json!({"timeout": true}));

    // Still serving the authorized client.
    let again = call_as(&server_cert, &alice_secret, "still here", "5000").await;
    assert_eq!(again, json!({"reply": {"echoed": "still here"}}));

    let log = replyer.lines(Stream::Stderr).join("\n");
    let mallory_key = mallory["public"].as_str().unwrap();
    assert!(
        log.contains("is not authorized") && log.contains(mallory_key),
        "the refusal is logged with the client's key:\n{log}"
    );
    assert!(
        !log.contains(&secret_in(&server_secret)),
        "the secret key is never logged"
    );
}

/// A Rust requester service (`echo_requester -m`, `--security`) calls a pyzmq CURVE REP
/// server whose keys pyzmq made and whose ZAP handler accepts the key `keygen` made for the
/// Rust side: five replies, in order; the server saw the five requests.
#[tokio::test]
async fn a_rust_requester_started_with_a_security_file_calls_a_pyzmq_curve_server() {
    let dir = TempDir::new("curve_req");
    let py_keys = dir.0.join("py");
    let rust_clients = dir.0.join("rust_clients");
    curve_peer(&["certs", path_str(&py_keys), "pyserver"]).await;
    keygen(&rust_clients, "requester").await;
    let security = dir.json(
        "security.json",
        &json!({"connections": {"out": {"request": {
            "secret_key_file": "rust_clients/requester.key_secret",
            "server_key_file": "py/pyserver.key",
        }}}}),
    );
    let mut server = None;
    for _ in 0..3 {
        let [port] = free_ports();
        let mut p = sf_tests::PyProcess::spawn(
            "curve_peer",
            &[
                "serve",
                &port.to_string(),
                path_str(&py_keys.join("pyserver.key_secret")),
                path_str(&rust_clients),
                "5",
            ],
        );
        if p.try_ready().await.is_ok() {
            server = Some((p, port));
            break;
        }
    }
    let (mut server, port) = server.expect("the pyzmq CURVE server binds a free port");
    let (_, requester_file) = echo_addresses(&dir, port);
    let mut rust = Proc::rust(
        "rust echo_requester over CURVE",
        &[
            "-s",
            "echo_requester",
            "-a",
            &requester_file,
            "-m",
            "--num_req_to_send",
            "5",
            "--security",
            &security,
        ],
    );
    let status = rust.exit(RUN).await;
    assert!(status.success(), "{status}\n{}", rust.dump());
    let responses: Vec<String> = rust
        .lines(Stream::Stdout)
        .into_iter()
        .filter(|l| l.starts_with("Got Response:"))
        .collect();
    let expected: Vec<String> = (0..5)
        .map(|i| format!("Got Response: {{\"echoed\":\"Hello World {i}\"}}"))
        .collect();
    assert_eq!(responses, expected, "\n{}", rust.dump());
    for i in 0..5 {
        let seen = server.expect_json(RUN).await;
        assert_eq!(
            seen,
            json!({"request": {"to_echo": format!("Hello World {i}")}})
        );
    }
    server.wait_success(RUN).await;
}

/// Publish/subscribe between a whole Rust service and pyzmq over CURVE: the Rust
/// `state_source` started with `--security` (its state's publisher and snapshot replyer bind:
/// CURVE servers) answers a pyzmq CURVE SUB with an authorized key with a snapshot of its
/// state, boxed; a NULL SUB hears nothing.
#[tokio::test]
async fn a_pyzmq_curve_subscriber_hears_a_rust_state_source_started_with_a_security_file() {
    let dir = TempDir::new("curve_pub");
    let keys = dir.0.join("keys");
    let clients = dir.0.join("clients");
    keygen(&keys, "source").await;
    curve_peer(&["certs", path_str(&clients), "listener"]).await;
    let security = dir.json(
        "security.json",
        &json!({"service": {"secret_key_file": "keys/source.key_secret", "clients_dir": "clients"}}),
    );
    let [publisher, replyer] = free_ports();
    let updates = vec![
        json!({"is_snapshot": true, "state": {"a": 1}}),
        json!({"state": {"b": 2}}),
    ];
    let addresses = source_addresses(&dir, "source_addresses.json", publisher, replyer);
    let config = dir.json(
        "source_config.json",
        &json!({"updates": updates, "hold_s": 30}),
    );
    let mut source = Proc::rust(
        "rust state_source over CURVE",
        &[
            "-s",
            "state_source",
            "-a",
            &addresses,
            "-c",
            &config,
            "-m",
            "--security",
            &security,
        ],
    );
    source
        .line(Stream::Stderr, |l| l.contains("prices is now at"), START)
        .await;

    let endpoint = format!("tcp://127.0.0.1:{publisher}");
    let mut listener = sf_tests::PyProcess::spawn(
        "curve_peer",
        &[
            "sub",
            &endpoint,
            path_str(&keys.join("source.key")),
            path_str(&clients.join("listener.key_secret")),
            "",
            "1",
            "8000",
        ],
    );
    let mut plain =
        sf_tests::PyProcess::spawn("curve_peer", &["sub", &endpoint, "-", "-", "", "1", "1500"]);
    listener.ready().await;
    plain.ready().await;
    // The out side answers a new subscriber with a snapshot (issue 13), here inside a box.
    let heard = listener.expect_json(RUN).await;
    assert_eq!(heard["args"]["is_snapshot"], json!(true), "{heard}");
    assert_eq!(
        heard["args"]["state"],
        final_state(&updates),
        "{heard}\n{}",
        source.dump()
    );
    listener.wait_success(RUN).await;
    assert_eq!(plain.expect_json(RUN).await, json!({"timeout": true}));
    plain.wait_success(RUN).await;
    let log = source.lines(Stream::Stderr).join("\n");
    assert!(
        log.contains("handshake failed"),
        "the NULL subscriber's refusal is logged:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------
// Dynamic values: every kind 0.0.18 sends, through Rust and back
// ---------------------------------------------------------------------------------------

/// The values `py_dynamic.py` sends, as its state source's config writes them (tagged JSON).
fn tagged_values() -> Value {
    json!({
        "arr": {"$ndarray": [1.5, -2.25, 1e300]},
        "dec": {"$decimal": "1.10"},
        "set": {"$set": [1, 2, 3]},
        "uuid": {"$uuid": "0b7c3a2e-5d4f-4e8a-9c1b-2f3e4d5a6b7c"},
        "raw": {"$bytes": "00ff07"},
        "plain": {"n": -3, "f": 2.5, "s": "text", "l": [1, "a", null], "big": 18446744073709551615u64},
    })
}

/// A numpy array, a Decimal, a set, a UUID, raw bytes and plain values sent by a Python 0.0.18
/// requester to the Rust `dynamic_echo` (args typed `Dynamic`) come back as the same Python
/// values of the same types. The same service through `service-framework call` takes and
/// gives JSON (the JSON view: bytes as a list of integers, Python's tagged maps as maps).
#[tokio::test]
async fn every_kind_python_sends_goes_through_a_dynamic_rust_replyer_and_back() {
    let dir = TempDir::new("dynamic_echo");
    let (replyer, port) = start_bound("rust dynamic_echo", Stream::Stderr, "in.reply: ", |port| {
        let (replyer_file, _) = echo_addresses(&dir, port);
        Proc::rust(
            "rust dynamic_echo",
            &["-s", "dynamic_echo", "-a", &replyer_file],
        )
    })
    .await;
    let mut py = sf_tests::PyProcess::spawn("py_dynamic", &[addr(port)]);
    py.ready().await;
    let reply = py.expect_json(RUN).await;
    assert_eq!(
        (&reply["same"], &reply["mismatches"]),
        (&json!(true), &json!([])),
        "{reply}\n{}",
        replyer.dump()
    );
    py.wait_success(RUN).await;

    let json_args = json!({"d": {"__decimal__": true, "as_str": "2.50"}, "l": [1, "x", null]});
    let echoed = call(&addr(port), &json_args).await.unwrap();
    assert_eq!(echoed, json!({"echoed": json_args}));
}

/// The same values in a delta state: a Python 0.0.18 source publishes them, the Rust
/// `state_mirror` (values typed `Dynamic`) follows, and a Python caller of the mirror's
/// `get_state` gets them back as the same Python values of the same types.
#[tokio::test]
async fn every_kind_python_sends_goes_through_a_rust_state_mirror_and_back() {
    let dir = TempDir::new("dynamic_state");
    let [publisher, replyer_port, mirror_port] = free_ports();
    let addresses = source_addresses(&dir, "source_addresses.json", publisher, replyer_port);
    let mirror_file = mirror_addresses(&dir, "mirror.json", mirror_port, publisher, replyer_port);
    let mut mirror = Proc::rust(
        "rust state_mirror",
        &["-s", "state_mirror", "-a", &mirror_file],
    );
    mirror
        .line(Stream::Stderr, |l| l.contains("in.get_state: "), START)
        .await;
    let updates = vec![json!({"current_num": 0, "is_snapshot": true, "state": tagged_values()})];
    let config = dir.json(
        "source_config.json",
        &json!({"updates": updates, "hold_s": 30}),
    );
    let mut source = Proc::python(
        "python state_source",
        "state_source.py",
        &["-a", &addresses, "-c", &config, "-m"],
    );
    source
        .line(Stream::Stdout, |l| l == "SERIES DONE", RUN)
        .await;
    let mut py = sf_tests::PyProcess::spawn("py_dynamic", &[addr(mirror_port), "state".into()]);
    py.ready().await;
    let reply = py.expect_json(RUN).await;
    assert_eq!(
        (&reply["same"], &reply["mismatches"]),
        (&json!(true), &json!([])),
        "{reply}\n{}\n{}",
        mirror.dump(),
        source.dump()
    );
    py.wait_success(RUN).await;
}

/// One addresses.json for a Python 0.0.18 replyer and a Rust requester, with an `options`
/// section setting the Rust requester's `timeout_s` and `retries`: Python loads the file
/// (it reads only `connections` and `states`) and serves; the Rust requester gets its
/// replies.
#[tokio::test]
async fn python_0_0_18_loads_an_addresses_file_with_an_options_section() {
    let dir = TempDir::new("options");
    let shared = |port: u16| {
        dir.json(
            "addresses.json",
            &json!({
                "connections": {
                    "in": {"reply": {"replyer": addr(port)}},
                    "out": {"request": {"requester": addr(port)}},
                },
                "states": {"in": {}, "out": {}},
                "options": {"connections": {"out": {"request": {"timeout_s": 2.5, "retries": 1}}}},
            }),
        )
    };
    let (mut py, port) = start_bound("python echo_replyer", Stream::Stdout, "READY", |port| {
        Proc::python(
            "python echo_replyer",
            "echo_replyer.py",
            &["-a", &shared(port)],
        )
    })
    .await;
    let file = shared(port);
    let mut rust = Proc::rust(
        "rust echo_requester",
        &[
            "-s",
            "echo_requester",
            "-a",
            &file,
            "-m",
            "--num_req_to_send",
            "3",
        ],
    );
    let status = rust.exit(RUN).await;
    assert!(status.success(), "{status}\n{}\n{}", rust.dump(), py.dump());
    let responses = rust
        .lines(Stream::Stdout)
        .iter()
        .filter(|l| l.starts_with("Got Response:"))
        .count();
    assert_eq!(responses, 3, "\n{}", rust.dump());
    assert!(py.still_running(), "{}", py.dump());
}

/// 13.3 A lagging Python 0.0.18 mirror under a long stream: the Rust state_source sends a
///    snapshot and then 30,000 deltas as fast as it can to a Python mirror that cannot keep
///    up (its queue at the publisher overflows, it sees gaps and resyncs through the Rust
///    snapshot replyer, which blocks its loop). Python applies any snapshot whatever its
///    number, so a snapshot published in the middle of the stream could take it back; the
///    Rust side publishes unsolicited snapshots only after a quiet spell. The mirror must
///    end at the source's final state.
#[tokio::test]
async fn a_lagging_python_mirror_of_a_long_rust_stream_ends_at_the_final_state() {
    const DELTAS: usize = 30_000;
    let dir = TempDir::new("lagging");
    let [publisher, replyer, py_port] = free_ports();
    let py_file = mirror_addresses(&dir, "py_mirror.json", py_port, publisher, replyer);
    let mut py_mirror = Proc::python("python state_mirror", "state_mirror.py", &["-a", &py_file]);
    py_mirror
        .line(Stream::Stdout, |l| l == "READY", START)
        .await;
    let mut updates = vec![json!({"is_snapshot": true, "state": {"start": 0}})];
    updates.extend((0..DELTAS).map(|i| json!({"state": {format!("k{}", i % 50): i}})));
    let expected = final_state(&updates);
    let source = rust_source(&dir, "rust state_source", (publisher, replyer), &updates).await;
    let mut source = source;
    source
        .line(
            Stream::Stderr,
            |l| l.contains(&format!("prices is now at {}", DELTAS + 1)),
            Duration::from_secs(30),
        )
        .await;
    // Bounded by 40 s: Python works through its backlog (each `call` waits 1 s at most).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut last = None;
    loop {
        let got = call(&addr(py_port), &json!({})).await;
        if let Ok(reply) = &got {
            if reply["state"] == expected {
                break;
            }
        }
        last = Some(got);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lagging Python mirror never reached the final state; last: {:?}\n{}",
            last.as_ref()
                .map(|r| r.as_ref().map(|v| v["state"].to_string())),
            py_mirror
                .dump()
                .chars()
                .rev()
                .take(3000)
                .collect::<String>()
                .chars()
                .rev()
                .collect::<String>()
        );
        // Pacing between asks (each is bounded).
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(last);
    drop(source);
}

/// 13.2 through the bus: a Rust state_source publishes through `service-framework -s bus`
///    (`is_x_pub` set in the file's options), finishes its updates and goes idle; then two
///    Python 0.0.18 mirrors join through the bus, one after the other. Python never asks for
///    a snapshot; the bus announces each new subscriber to the source (a verbose XPUB) and
///    the source answers each with a snapshot, so both converge, the second too.
#[tokio::test]
async fn late_python_mirrors_behind_the_bus_converge_on_an_idle_rust_source() {
    let dir = TempDir::new("bus_late");
    let [bus_pub, bus_sub, replyer, m1, m2] = free_ports();
    let bus_file = dir.json(
        "bus.json",
        &json!({"connections": {"in": {"bus": {
            "publishers": addr(bus_pub), "subscribers": addr(bus_sub)}}}}),
    );
    let mut bus = Proc::rust("bus", &["-s", "bus", "-a", &bus_file]);
    bus.line(Stream::Stderr, |l| l.contains("bus proxy running"), START)
        .await;
    let updates = vec![
        json!({"is_snapshot": true, "state": {"a": 1}}),
        json!({"state": {"b": 2}}),
    ];
    let source_file = dir.json(
        "source.json",
        &json!({
            "states": {"out": {"prices": {"publisher": addr(bus_pub), "replyer": addr(replyer)}}},
            // No periodic snapshots: what reaches the mirrors is what answers them.
            "options": {"states": {"out": {"prices": {"is_x_pub": true, "snapshot_interval_s": 0}}}},
        }),
    );
    let config = dir.json(
        "source_config.json",
        &json!({"updates": updates, "hold_s": 30}),
    );
    let mut source = Proc::rust(
        "rust state_source via the bus",
        &[
            "-s",
            "state_source",
            "-a",
            &source_file,
            "-c",
            &config,
            "-m",
        ],
    );
    source
        .line(Stream::Stderr, |l| l.contains("prices is now at 2"), START)
        .await;
    let expected = final_state(&updates);
    // Both stay up: the second joins while the first still subscribes to the same topic.
    let mut mirrors = Vec::new();
    for (i, port) in [m1, m2].into_iter().enumerate() {
        let file = mirror_addresses(&dir, &format!("mirror{i}.json"), port, bus_sub, replyer);
        let mut mirror = Proc::python(
            &format!("python state_mirror {i}"),
            "state_mirror.py",
            &["-a", &file],
        );
        mirror.line(Stream::Stdout, |l| l == "READY", START).await;
        let t0 = tokio::time::Instant::now();
        until_state(
            &format!("late Python mirror {i} behind the bus"),
            &addr(port),
            &expected,
            &[&mirror, &source, &bus],
        )
        .await;
        eprintln!(
            "late Python mirror {i} converged {:?} after READY",
            t0.elapsed()
        );
        mirrors.push(mirror);
    }
    assert!(mirrors.iter_mut().all(Proc::still_running));
}
