//! Helpers for the process tests: the binaries under test, children killed on drop, bounded
//! waits on their output, scratch folders.

#![allow(dead_code)]

pub mod netns;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The example binaries, built by cargo for this package's tests.
pub const ECHO_REPLYER: &str = env!("CARGO_BIN_EXE_echo_replyer");
pub const ECHO_REQUESTER: &str = env!("CARGO_BIN_EXE_echo_requester");
pub const SLOW_REPLYER: &str = env!("CARGO_BIN_EXE_slow_replyer");

/// The `service-framework` binary of this build, beside the example binaries (where its `-s`
/// finds them). It belongs to another package, so cargo does not build it for these tests:
/// it is built here, once per test binary (a no-op when it is up to date).
pub fn service_framework() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let bin_dir = Path::new(ECHO_REPLYER)
            .parent()
            .expect("the example binary has a folder");
        let target_dir = bin_dir.parent().expect("the profile folder has a parent");
        let profile = bin_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("profile folder name");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "service-framework", "--bin"])
            .arg("service-framework")
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir);
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let status = cmd
            .stdin(Stdio::null())
            .status()
            .expect("cargo runs to build service-framework");
        assert!(
            status.success(),
            "building service-framework failed: {status}"
        );
        let exe = bin_dir.join(format!("service-framework{}", std::env::consts::EXE_SUFFIX));
        assert!(exe.is_file(), "{} was not built", exe.display());
        exe
    })
}

/// Removes ANSI colour sequences (a console logger may colour its output).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

enum Line {
    Out(String),
    Err(String, bool),
    OutEof,
    ErrEof,
}

/// A child process, killed on drop, whose output is collected line by line.
pub struct Proc {
    child: Child,
    lines: Receiver<Line>,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    /// True once a stderr line carried ANSI escape sequences (colours on a pipe).
    pub coloured: bool,
    open_streams: u8,
    what: String,
}

fn pump<R: Read + Send + 'static>(
    r: R,
    tx: std::sync::mpsc::Sender<Line>,
    wrap: fn(String, bool) -> Line,
    eof: Line,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            let coloured = line.contains('\u{1b}');
            if tx.send(wrap(strip_ansi(&line), coloured)).is_err() {
                return;
            }
        }
        let _ = tx.send(eof);
    });
}

impl Proc {
    /// Starts `cmd` with stdout and stderr captured. A config override in the environment of
    /// the test run is not inherited unless `cmd` sets it itself.
    pub fn spawn(mut cmd: Command) -> Proc {
        let what = format!("{cmd:?}");
        const OVERRIDE: &str = "SF_CONFIG_NUM_REQ_TO_SEND";
        if !cmd.get_envs().any(|(k, _)| k == OVERRIDE) {
            cmd.env_remove(OVERRIDE);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let (tx, rx) = channel();
        pump(
            child.stdout.take().unwrap(),
            tx.clone(),
            |l, _| Line::Out(l),
            Line::OutEof,
        );
        pump(child.stderr.take().unwrap(), tx, Line::Err, Line::ErrEof);
        Proc {
            child,
            lines: rx,
            stdout: vec![],
            stderr: vec![],
            coloured: false,
            open_streams: 2,
            what,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn take(&mut self, line: Line) {
        match line {
            Line::Out(l) => self.stdout.push(l),
            Line::Err(l, coloured) => {
                self.coloured |= coloured;
                self.stderr.push(l);
            }
            Line::OutEof | Line::ErrEof => self.open_streams -= 1,
        }
    }

    /// Reads stderr until a line contains `needle`; panics (with what was seen) after
    /// `timeout`.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_for(true, needle, timeout)
    }

    /// Reads stdout until a line contains `needle`; panics after `timeout`.
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_for(false, needle, timeout)
    }

    fn wait_for(&mut self, stderr: bool, needle: &str, timeout: Duration) -> String {
        let seen = |p: &Proc| {
            let lines = if stderr { &p.stderr } else { &p.stdout };
            lines.iter().find(|l| l.contains(needle)).cloned()
        };
        if let Some(l) = seen(self) {
            return l;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.take(line);
                    if let Some(l) = seen(self) {
                        return l;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: no line containing {needle:?} within {timeout:?}; stdout:\n{}\nstderr:\n{}",
                    self.what,
                    self.stdout.join("\n"),
                    self.stderr.join("\n")
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{}: output ended without a line containing {needle:?}; stdout:\n{}\nstderr:\n{}",
                    self.what,
                    self.stdout.join("\n"),
                    self.stderr.join("\n")
                ),
            }
        }
    }

    /// Reads stdout (or stderr) until `done` holds for all the lines seen so far, and returns
    /// what it returned; panics after `timeout` (saying `what`, with the output seen). For
    /// waits `wait_for` cannot say: a count of lines, the latest of a kind.
    pub fn wait_until<T>(
        &mut self,
        stderr: bool,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[String]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = if stderr { &self.stderr } else { &self.stdout };
            if let Some(v) = done(lines) {
                return v;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.take(line),
                Err(e) => panic!(
                    "{}: {what}: not within {timeout:?} ({e:?}); stdout:\n{}\nstderr:\n{}",
                    self.what,
                    self.stdout.join("\n"),
                    self.stderr.join("\n")
                ),
            }
        }
    }

    /// Takes in the output that has arrived, waiting for none.
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.take(line);
        }
    }

    /// Waits for the "replyer serving" log line and returns the endpoint it bound.
    pub fn wait_serving(&mut self, timeout: Duration) -> String {
        let line = self.wait_for_stderr("replyer serving", timeout);
        let at = line
            .find("endpoint=")
            .unwrap_or_else(|| panic!("no endpoint in {line:?}"));
        line[at + "endpoint=".len()..]
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .trim_matches('"')
            .to_owned()
    }

    /// Sends a signal by name (`TERM`, `INT`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Waits for the process to exit and for its output to end; kills it and panics after
    /// `timeout`.
    pub fn finish(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not exit within {timeout:?}; stderr:\n{}",
                    self.what,
                    self.stderr.join("\n")
                );
            }
            // Bounded poll of the exit status, draining output meanwhile.
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(10)) {
                self.take(line);
            }
        };
        while self.open_streams > 0 {
            let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.take(line);
                }
                Err(_) => break,
            }
        }
        status
    }

    /// All stderr seen so far, one string.
    pub fn stderr_text(&self) -> String {
        self.stderr.join("\n")
    }

    /// All stdout seen so far, one string.
    pub fn stdout_text(&self) -> String {
        self.stdout.join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `cmd` to completion within `timeout` and returns it (exit status, output collected).
pub fn run(cmd: Command, timeout: Duration) -> (ExitStatus, Proc) {
    let mut p = Proc::spawn(cmd);
    let status = p.finish(timeout);
    (status, p)
}

/// A scratch folder under cargo's test tmpdir, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch folder");
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `name` with `contents` and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).expect("write scratch file");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// addresses.json for a replyer `reply` bound on an ephemeral port.
pub const REPLYER_ADDRESSES: &str = r#"{"connections": {"in": {"reply": {"replyer": "127.0.0.1:0"}}, "out": {}}, "states": {"in": {}, "out": {}}}"#;

/// addresses.json for a requester `request` connecting to `endpoint`.
pub fn requester_addresses(endpoint: &str) -> String {
    format!(
        r#"{{"connections": {{"in": {{}}, "out": {{"request": {{"requester": "{endpoint}"}}}}}}, "states": {{"in": {{}}, "out": {{}}}}}}"#
    )
}

/// Generous bound for a process to start and log that it serves.
pub const START: Duration = Duration::from_secs(5);
/// Bound for a short command to finish.
pub const SHORT: Duration = Duration::from_secs(5);

/// One request with workflow id `workflow_id` on a fresh requester, 5 s at most.
pub fn request(
    endpoint: &str,
    args: &serde_json::Value,
    workflow_id: service_framework::connections::WorkflowId,
) -> Result<serde_json::Value, service_framework::connections::Error> {
    service_framework::testing::call_once_blocking(
        endpoint,
        args,
        workflow_id,
        Duration::from_secs(5),
    )
}
