//! Processes of the MDP tests: the real `service-framework -s broker` (and framework
//! services), built when missing or stale, with their output collected line by line.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use sf_tests::workspace_root;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// The broker's heartbeat in these tests, and the workers'.
pub const INTERVAL_MS: u64 = 200;
/// Missed heartbeats before a peer is taken for dead (800 ms: a margin for a loaded machine).
pub const LIVENESS: u32 = 4;

const BINS: [&str; 2] = ["service-framework", "echo_replyer"];

/// `target/<profile>/<name>`, built first if missing or older than the sources.
pub fn bin(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test executable's path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("tests run from target/<profile>/deps/")
            .to_path_buf();
        build_if_stale(&dir);
        dir
    })
    .join(name)
}

fn newest_source() -> Option<SystemTime> {
    let mut newest = None;
    let mut todo: Vec<PathBuf> = [
        "zmtp/src",
        "connections/src",
        "states/src",
        "service-framework/src",
        "examples/src",
        "examples/echo",
    ]
    .iter()
    .map(|d| workspace_root().join(d))
    .collect();
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

fn build_if_stale(dir: &Path) {
    let newest = newest_source();
    let stale =
        BINS.iter().any(
            |b| match std::fs::metadata(dir.join(b)).and_then(|m| m.modified()) {
                Ok(built) => newest.is_some_and(|src| src > built),
                Err(_) => true,
            },
        );
    if !stale {
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
        "cargo build -p service-framework -p sf-examples failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A process whose stdout and stderr lines are collected together. Killed on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    changed: watch::Receiver<u64>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1")
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, changed) = watch::channel(0u64);
        let tx = Arc::new(tx);
        tokio::spawn(collect(
            child.stdout.take().unwrap(),
            lines.clone(),
            tx.clone(),
        ));
        tokio::spawn(collect(child.stderr.take().unwrap(), lines.clone(), tx));
        Proc {
            name: name.to_owned(),
            child,
            lines,
            changed,
        }
    }

    pub fn dump(&self) -> String {
        format!(
            "--- {} output ---\n{}",
            self.name,
            self.lines.lock().unwrap().join("\n")
        )
    }

    pub fn has_line(&self, pred: impl Fn(&str) -> bool) -> bool {
        self.lines.lock().unwrap().iter().any(|l| pred(l))
    }

    /// Waits for a line (already printed or to come) for which `pred` holds.
    pub async fn log_line(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let mut changed = self.changed.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changed.borrow_and_update();
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| pred(l)) {
                return l.clone();
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    if let Some(l) = self.lines.lock().unwrap().iter().find(|l| pred(l)) {
                        return l.clone();
                    }
                    panic!(
                        "{}: no such line within {timeout:?}\n{}",
                        self.name,
                        self.dump()
                    )
                }
            }
        }
    }

    /// Waits until `n` lines (printed or to come) hold `pred`.
    pub async fn wait_count(&self, pred: impl Fn(&str) -> bool, n: usize, timeout: Duration) {
        let mut changed = self.changed.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changed.borrow_and_update();
            if self.count_lines(&pred) >= n {
                return;
            }
            if !matches!(
                tokio::time::timeout_at(deadline, changed.changed()).await,
                Ok(Ok(()))
            ) && self.count_lines(&pred) < n
            {
                panic!(
                    "{}: fewer than {n} such lines within {timeout:?}\n{}",
                    self.name,
                    self.dump()
                );
            }
        }
    }

    /// Lines printed so far that hold `pred`.
    pub fn count_lines(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| pred(l))
            .count()
    }

    /// Waits for the process to exit by itself (bounded), then for its output to be read.
    pub async fn exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(s)) => s,
            _ => panic!(
                "{} did not exit within {timeout:?}\n{}",
                self.name,
                self.dump()
            ),
        };
        // Both pipes close at exit: wait (bounded) until the collectors have read them.
        let mut changed = self.changed.clone();
        while tokio::time::timeout(Duration::from_millis(500), changed.changed())
            .await
            .is_ok_and(|r| r.is_ok())
        {}
        status
    }

    /// SIGKILL, and waits for the exit.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }

    /// SIGTERM, and waits (bounded) for the exit status.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn collect(
    stream: impl AsyncRead + Unpin,
    lines: Arc<Mutex<Vec<String>>>,
    tx: Arc<watch::Sender<u64>>,
) {
    let mut r = BufReader::new(stream).lines();
    while let Ok(Some(line)) = r.next_line().await {
        lines.lock().unwrap().push(line);
        tx.send_modify(|n| *n += 1);
    }
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "sf-mdp-{tag}-{}-{}",
            std::process::id(),
            uuid_ish()
        ));
        std::fs::create_dir_all(&p).expect("create a temporary directory");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn uuid_ish() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
        ^ SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
}

/// `service-framework -s broker` on a port of its own, ready.
#[derive(Debug)]
pub struct BrokerProc {
    pub proc: Proc,
    pub port: u16,
    _dir: TempDir,
    extra: Vec<String>,
    /// Front-ends: (entry name = service, port).
    pub frontends: Vec<(String, u16)>,
}

impl BrokerProc {
    /// Starts a broker with the tests' heartbeat and `extra` `--key value` pairs.
    pub async fn start(extra: &[&str]) -> BrokerProc {
        BrokerProc::start_with_frontends(&[], extra).await
    }

    /// Starts a broker with a front-end for each service named (each on a free port).
    pub async fn start_with_frontends(services: &[&str], extra: &[&str]) -> BrokerProc {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut failures = Vec::new();
        for _ in 0..3 {
            let port = sf_tests::free_port();
            let fronts: Vec<(String, u16)> = services
                .iter()
                .map(|s| (s.to_string(), sf_tests::free_port()))
                .collect();
            match BrokerProc::start_on_with(port, &fronts, &extra).await {
                Ok(b) => return b,
                Err(e) => failures.push(e),
            }
        }
        panic!("the broker never started:\n{}", failures.join("\n"));
    }

    /// Starts a broker on `port` (a restart on the same address); Err with its output when
    /// it does not get ready.
    pub async fn start_on(port: u16, extra: &[String]) -> Result<BrokerProc, String> {
        BrokerProc::start_on_with(port, &[], extra).await
    }

    /// As [`start_on`](Self::start_on), with front-ends.
    pub async fn start_on_with(
        port: u16,
        frontends: &[(String, u16)],
        extra: &[String],
    ) -> Result<BrokerProc, String> {
        let dir = TempDir::new("broker");
        let addresses = dir.0.join("addresses.json");
        let mut inbound = serde_json::Map::new();
        inbound.insert(
            "broker".into(),
            serde_json::json!({"router": format!("127.0.0.1:{port}")}),
        );
        for (service, p) in frontends {
            inbound.insert(
                service.clone(),
                serde_json::json!({"replyer": format!("127.0.0.1:{p}")}),
            );
        }
        std::fs::write(
            &addresses,
            serde_json::json!({"connections": {"in": inbound}}).to_string(),
        )
        .unwrap();
        let mut cmd = Command::new(bin("service-framework"));
        cmd.args(["-s", "broker", "-a"])
            .arg(&addresses)
            .args([
                "--heartbeat_interval_s",
                &(INTERVAL_MS as f64 / 1000.0).to_string(),
                "--heartbeat_liveness",
                &LIVENESS.to_string(),
            ])
            .args(extra);
        let proc = Proc::spawn("broker", cmd);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut changed = proc.changed.clone();
        loop {
            changed.borrow_and_update();
            if proc.has_line(|l| l.contains("ready")) {
                break;
            }
            let exited = tokio::time::timeout_at(deadline, changed.changed()).await;
            if !matches!(exited, Ok(Ok(()))) && !proc.has_line(|l| l.contains("ready")) {
                return Err(proc.dump());
            }
        }
        Ok(BrokerProc {
            proc,
            port,
            _dir: dir,
            extra: extra.to_vec(),
            frontends: frontends.to_vec(),
        })
    }

    /// Where clients and workers connect.
    pub fn endpoint(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    pub fn dump(&self) -> String {
        self.proc.dump()
    }

    pub fn has_line(&self, pred: impl Fn(&str) -> bool) -> bool {
        self.proc.has_line(pred)
    }

    pub async fn log_line(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        self.proc.log_line(pred, timeout).await
    }

    /// SIGKILL, then a new broker on the same port (retried while the port is still held).
    pub async fn restart(mut self) -> BrokerProc {
        self.proc.kill().await;
        let mut last = String::new();
        for _ in 0..20 {
            match BrokerProc::start_on_with(self.port, &self.frontends, &self.extra).await {
                Ok(b) => return b,
                Err(e) => last = e,
            }
        }
        panic!("the broker did not restart on port {}:\n{last}", self.port);
    }
}

/// Starts `echo_replyer` with its replyer served through the broker on `port`.
pub fn brokered_echo_replyer(dir: &TempDir, port: u16) -> Proc {
    let path = dir.0.join("echo_addresses.json");
    let addresses = serde_json::json!({
        "connections": {"in": {"reply": {"broker": format!("127.0.0.1:{port}")}}},
        "options": {"connections": {"in": {"reply": {
            "heartbeat_interval_s": INTERVAL_MS as f64 / 1000.0,
            "heartbeat_liveness": LIVENESS,
        }}}},
        "control": false,
    });
    std::fs::write(&path, addresses.to_string()).unwrap();
    let mut cmd = Command::new(bin("service-framework"));
    cmd.args(["-s", "echo_replyer", "-a"]).arg(&path);
    Proc::spawn("echo_replyer", cmd)
}
