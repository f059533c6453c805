//! What the `up` tests share: the binaries beside `service-framework-up`, the Python venv,
//! and an `up` process whose output lines are read with timeouts.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The binary under test.
pub const UP: &str = env!("CARGO_BIN_EXE_service-framework-up");

/// The workspace root.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("fleet sits in the workspace root")
}

/// `service-framework` and the example binaries beside `service-framework-up`, where `up`
/// looks for them. They belong to other packages, so cargo does not build them for this
/// test: they are built here once (a no-op when they are up to date).
/// The cargo profile the tests were built with (`dev` for target/debug).
pub fn profile() -> String {
    let bin_dir = Path::new(UP).parent().expect("the binary has a folder");
    match bin_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".into(),
        Some(other) => other.into(),
        None => "dev".into(),
    }
}

pub fn binaries() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let bin_dir = Path::new(UP).parent().expect("the binary has a folder");
        let target_dir = bin_dir.parent().expect("the profile folder has a parent");
        // The same packages as scripts/demo builds: cargo unifies features per set of
        // packages, so one set everywhere means one build, not one per test binary.
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--profile", &profile()])
            .args(["-p", "service-framework", "-p", "sf-examples"])
            .args(["-p", "sf-bridge", "-p", "sf-fleet"])
            .arg("--manifest-path")
            .arg(workspace_root().join("Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir)
            .stdin(Stdio::null())
            .status()
            .expect("cargo runs to build the service binaries");
        assert!(
            status.success(),
            "building the service binaries failed: {status}"
        );
    });
}

/// The venv interpreter: `SF_PYTHON` when it has kubernetes-validate beside it, else what
/// `scripts/python-env` prints (it creates or updates the venv from
/// tests/python/requirements.txt).
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        if let Some(p) = std::env::var_os("SF_PYTHON").filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            if p.with_file_name("kubernetes-validate").is_file() {
                return p;
            }
        }
        let script = workspace_root().join("scripts/python-env");
        let out = Command::new(&script)
            .output()
            .unwrap_or_else(|e| panic!("{} could not run: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).expect("a UTF-8 path").trim())
    })
}

/// A running `service-framework up`: its stdout and stderr lines, read with timeouts.
/// SIGKILLed on drop (its services are stopped by SIGTERM in the tests that pass).
pub struct UpProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line read so far, for failure messages.
    pub seen: Vec<String>,
}

impl UpProcess {
    /// `up <args...>` in `dir`, with the venv's Python as `SF_PYTHON`.
    pub fn start(args: &[&str], dir: &Path) -> UpProcess {
        binaries();
        let mut cmd = Command::new(UP);
        cmd.arg("up").args(args).current_dir(dir);
        UpProcess::spawn(cmd)
    }

    /// Any command that ends up as `up` (a script that execs it), read the same way.
    pub fn spawn(mut cmd: Command) -> UpProcess {
        let mut child = cmd
            .env("SF_PYTHON", python())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the command starts");
        let (tx, lines) = mpsc::channel();
        for r in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines() {
                    let Ok(line) = line else { return };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        UpProcess {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The process id of `up` itself.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line matching `pred`, within `timeout`; fails the test with what was seen.
    pub fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no matching line within {timeout:?}; the output was:\n{}",
                    self.tail()
                ),
            }
        }
    }

    /// A line matching `pred` among those already read, else the next one to come: for
    /// facts whose order against other lines is not fixed (a service's ready line and the
    /// bridge's address, printed by different processes).
    pub fn find_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return l.clone();
        }
        self.wait_line(timeout, pred)
    }

    /// The pid of the first `[up] <instance>: ready (pid N)` line, read already or to come.
    pub fn first_ready_pid(&mut self, instance: &str, timeout: Duration) -> u32 {
        let prefix = format!("[up] {instance}: ready (pid ");
        let l = self.find_line(timeout, |l| l.starts_with(&prefix));
        l[prefix.len()..]
            .trim_end_matches(')')
            .parse()
            .expect("a pid")
    }

    /// Takes in what `up` printed so far without waiting (for a failure message).
    pub fn drain(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
    }

    /// The last 80 lines seen.
    pub fn tail(&self) -> String {
        let from = self.seen.len().saturating_sub(80);
        self.seen[from..].join("\n")
    }

    /// Waits for the next `[up] <instance>: ready (pid N)` and returns N.
    pub fn ready_pid(&mut self, instance: &str, timeout: Duration) -> u32 {
        let prefix = format!("[up] {instance}: ready (pid ");
        let l = self.wait_line(timeout, |l| l.starts_with(&prefix));
        l[prefix.len()..]
            .trim_end_matches(')')
            .parse()
            .expect("a pid")
    }

    /// Sends `sig` to `up`.
    pub fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }

    /// Reads to the end and waits for the exit, within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        while let Ok(l) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(l);
        }
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "up did not exit within {timeout:?}:\n{}",
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for UpProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // Its services get SIGTERM from up on SIGTERM; only then is up killed.
            signal(self.pid(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
    }
}

/// `kill -<sig> <pid>`.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// One HTTP/1.1 request to 127.0.0.1:`port` with a JSON body; the status and the body.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the bridge");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the answer");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// `service-framework call ADDRESS JSON` (the binary beside `service-framework-up`): the
/// reply as JSON, or the error it printed.
pub fn call(address: &str, json: &str) -> Result<serde_json::Value, String> {
    let exe = Path::new(UP).with_file_name("service-framework");
    let o = Command::new(exe)
        .args(["call", address, json, "--timeout", "10"])
        .output()
        .expect("service-framework call runs");
    if o.status.success() {
        let out = String::from_utf8_lossy(&o.stdout);
        Ok(serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out:?}: {e}")))
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// `up --check FILE` run in `dir`: (exit code, stdout, stderr).
pub fn check(file: &Path, dir: &Path) -> (i32, String, String) {
    binaries();
    let o = Command::new(UP)
        .args(["up", "--check"])
        .arg(file)
        .current_dir(dir)
        .env("SF_PYTHON", python())
        .output()
        .expect("up --check runs");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `service-framework VERB FILE --json` (`ls`, `stats`): one JSON value per line of its
/// output, which must succeed.
pub fn sf_json(verb: &str, file: &Path) -> Vec<serde_json::Value> {
    let exe = Path::new(UP).with_file_name("service-framework");
    let o = Command::new(exe)
        .args([verb, file.to_str().unwrap(), "--json"])
        .output()
        .unwrap_or_else(|e| panic!("service-framework {verb} runs: {e}"));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// POST `path` on the bridge at 127.0.0.1:`port` with a JSON body: the envelope's `data`
/// (the status must be 200).
pub fn bridge_data(port: u16, path: &str, body: &str) -> serde_json::Value {
    let (status, text) = http(port, "POST", path, body);
    assert_eq!(status, 200, "{path}: {text}");
    let json = &text[text.find('{').unwrap()..=text.rfind('}').unwrap()];
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"));
    v["data"].clone()
}

impl UpProcess {
    /// The address `up` printed at start for a bound slot:
    /// `[up] <service> <slot>: 127.0.0.1:PORT`.
    pub fn slot_address(&mut self, timeout: Duration, service: &str, slot: &str) -> String {
        let prefix = format!("[up] {service} {slot}: ");
        let l = self.find_line(timeout, |l| l.starts_with(&prefix));
        l[prefix.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }

    /// The bridge's port, from its `bridge serving on http://127.0.0.1:PORT` line.
    pub fn bridge_port(&mut self, timeout: Duration) -> u16 {
        const SAYS: &str = "bridge serving on http://127.0.0.1:";
        let l = self.find_line(timeout, |l| l.contains(SAYS));
        let rest = &l[l.find(SAYS).unwrap() + SAYS.len()..];
        let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
        port.parse().unwrap_or_else(|e| panic!("{l:?}: {e}"))
    }
}
