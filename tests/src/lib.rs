//! Test support for the interoperability tests: the Python 0.0.18 venv, Python peer processes
//! that announce themselves and report in JSON lines, and small socket helpers.
//!
//! Nothing here sleeps to "let things settle": every wait is for an event (a line from the
//! peer, a message) bounded by a timeout, and a timeout fails the test with the peer's stderr.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How long a Python peer may take to start (interpreter, numpy and pyzmq imports).
pub const READY_TIMEOUT: Duration = Duration::from_secs(8);

/// The workspace root (the directory holding `scripts/` and `tests/`).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package sits in the workspace root")
}

/// The venv interpreter with `service_framework` 0.0.18: `SF_PYTHON` when set (scripts/test
/// sets it), else whatever `scripts/python-env` prints (it creates the venv on first use).
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        if let Some(p) = std::env::var_os("SF_PYTHON").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        let script = workspace_root().join("scripts/python-env");
        let out = std::process::Command::new(&script)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "SF_PYTHON is unset and {} could not run: {e}",
                    script.display()
                )
            });
        assert!(
            out.status.success(),
            "SF_PYTHON is unset and {} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8(out.stdout).expect("python-env prints a UTF-8 path");
        PathBuf::from(path.trim())
    })
}

/// A TCP port that was free a moment ago, for a Python peer that must bind (its sockets bind
/// `tcp://*:port` and cannot report an ephemeral port back).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .unwrap()
        .port()
}

/// `"tcp://127.0.0.1:5555"` -> `"127.0.0.1:5555"`: the `host:port` form Python 0.0.18 takes.
pub fn host_port(endpoint: &str) -> String {
    endpoint
        .strip_prefix("tcp://")
        .unwrap_or(endpoint)
        .to_owned()
}

/// A Python peer running `tests/python/<script>.py`. Its stdout is the protocol (a `READY`
/// line, then JSON lines); its stderr is collected for failure messages. Killed on drop.
#[derive(Debug)]
pub struct PyProcess {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<String>>,
    stderr_task: tokio::task::JoinHandle<()>,
}

impl PyProcess {
    /// Starts `python -u tests/python/<script>.py args...`. Must run inside a tokio runtime.
    pub fn spawn<S: AsRef<str>>(script: &str, args: &[S]) -> PyProcess {
        let path = workspace_root()
            .join("tests/python")
            .join(format!("{script}.py"));
        let mut child = Command::new(python())
            .arg("-u")
            .arg(&path)
            .args(args.iter().map(AsRef::as_ref))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} {}: {e}",
                    python().display(),
                    path.display()
                )
            });
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let stdin = child.stdin.take();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let sink = stderr.clone();
        let stderr_task = tokio::spawn(async move {
            while let Ok(Some(line)) = err_lines.next_line().await {
                let mut s = sink.lock().expect("stderr lock");
                s.push_str(&line);
                s.push('\n');
            }
        });
        PyProcess {
            name: script.to_owned(),
            child,
            stdin,
            stdout,
            stderr,
            stderr_task,
        }
    }

    /// What the peer wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "python peer {}: {what}\n--- its stderr ---\n{}",
            self.name,
            self.stderr()
        )
    }

    /// Waits for the next stdout line; `None` at end of output. Panics on timeout.
    pub async fn line(&mut self, timeout: Duration) -> Option<String> {
        match tokio::time::timeout(timeout, self.stdout.next_line()).await {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => self.fail(&format!("cannot read its stdout: {e}")),
            Err(_) => self.fail(&format!("no output line within {timeout:?}")),
        }
    }

    /// Waits for `READY <json>` (it must be the first line) and returns the JSON after it
    /// (`null` for a bare `READY`). Panics, with the peer's stderr, if it does not come.
    pub async fn ready(&mut self) -> serde_json::Value {
        match self.try_ready().await {
            Ok(v) => v,
            Err(e) => self.fail(&e),
        }
    }

    /// Like [`PyProcess::ready`], but says why instead of panicking.
    pub async fn try_ready(&mut self) -> Result<serde_json::Value, String> {
        let line = match tokio::time::timeout(READY_TIMEOUT, self.stdout.next_line()).await {
            Ok(Ok(Some(l))) => l,
            Ok(Ok(None)) => return Err("exited before printing READY".into()),
            Ok(Err(e)) => return Err(format!("cannot read its stdout: {e}")),
            Err(_) => return Err(format!("no READY within {READY_TIMEOUT:?}")),
        };
        let rest = line
            .strip_prefix("READY")
            .ok_or_else(|| format!("expected READY, got {line:?}"))?
            .trim();
        if rest.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(rest).map_err(|e| format!("bad READY payload {rest:?}: {e}"))
    }

    /// Starts a peer that binds `127.0.0.1:<port>` (given as `host:port` to `args`) on a free
    /// port and waits for its READY. A port taken between [`free_port`] and the peer's bind
    /// makes the peer fail before READY: that is retried on another port, a few times.
    pub async fn spawn_bound<F>(script: &str, args: F) -> (PyProcess, String)
    where
        F: Fn(&str) -> Vec<String>,
    {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let addr = format!("127.0.0.1:{}", free_port());
            let mut peer = PyProcess::spawn(script, &args(&addr));
            match peer.try_ready().await {
                Ok(_) => return (peer, addr),
                Err(e) => {
                    // Let it finish dying so that its stderr is complete.
                    let _ = tokio::time::timeout(Duration::from_secs(2), peer.child.wait()).await;
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), &mut peer.stderr_task).await;
                    failures.push(format!("{addr}: {e}\n{}", peer.stderr()));
                }
            }
        }
        panic!(
            "python peer {script} never got ready on a free port:\n{}",
            failures.join("\n")
        )
    }

    /// Waits for the next JSON line; `None` at end of output. Panics on timeout.
    pub async fn json(&mut self, timeout: Duration) -> Option<serde_json::Value> {
        let line = self.line(timeout).await?;
        Some(
            serde_json::from_str(&line)
                .unwrap_or_else(|e| self.fail(&format!("bad JSON line {line:?}: {e}"))),
        )
    }

    /// Like [`PyProcess::json`], but the line must exist.
    pub async fn expect_json(&mut self, timeout: Duration) -> serde_json::Value {
        match self.json(timeout).await {
            Some(v) => v,
            None => self.fail("exited while a JSON line was expected"),
        }
    }

    /// Writes one line to the peer's stdin (its control channel).
    pub async fn send_line(&mut self, line: &str) {
        let stdin = self
            .stdin
            .as_mut()
            .unwrap_or_else(|| panic!("stdin of {} already closed", self.name));
        let mut buf = line.as_bytes().to_vec();
        buf.push(b'\n');
        if let Err(e) = async {
            stdin.write_all(&buf).await?;
            stdin.flush().await
        }
        .await
        {
            self.fail(&format!("cannot write to its stdin: {e}"));
        }
    }

    /// Closes the peer's stdin (peers that read commands take EOF as "stop").
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the peer to exit by itself; panics on timeout.
    pub async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => self.fail(&format!("cannot wait for it: {e}")),
            Err(_) => self.fail(&format!("did not exit within {timeout:?}")),
        }
    }

    /// Waits for the peer to exit by itself and requires success.
    pub async fn wait_success(&mut self, timeout: Duration) {
        let status = self.wait(timeout).await;
        if !status.success() {
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.stderr_task).await;
            self.fail(&format!("exited with {status}"));
        }
    }
}

impl Drop for PyProcess {
    fn drop(&mut self) {
        // kill_on_drop covers the child too; this makes the intent explicit and immediate.
        let _ = self.child.start_kill();
    }
}

/// A background task aborted when the guard drops (e.g. a publish loop that retries until
/// the far side has seen what it needs).
#[derive(Debug)]
pub struct TaskGuard(tokio::task::JoinHandle<()>);

impl TaskGuard {
    /// Runs `f` every `period` until the guard drops.
    pub fn repeat<F, Fut>(period: Duration, mut f: F) -> TaskGuard
    where
        F: FnMut(u64) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        TaskGuard(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            for n in 0u64.. {
                tick.tick().await;
                f(n).await;
            }
        }))
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
