//! Test support: a libzmq peer (pyzmq, from the project's test venv) driven over stdin.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The venv interpreter: `SF_PYTHON` (set by scripts/test), else what `scripts/python-env`
/// prints (it creates the venv on first use).
pub fn python() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(find_python).clone()
}

fn find_python() -> PathBuf {
    if let Some(p) = std::env::var_os("SF_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let script = workspace_root().join("scripts/python-env");
    let out = std::process::Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("{} could not run: {e}", script.display()));
    assert!(out.status.success(), "{} failed", script.display());
    PathBuf::from(String::from_utf8(out.stdout).expect("utf-8").trim())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Bytes {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect::<Vec<u8>>()
        .into()
}

/// One pyzmq socket in its own process.
pub struct PyPeer {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl PyPeer {
    /// A pyzmq socket of `kind` ("REP", "SUB", ...).
    pub async fn new(kind: &str) -> PyPeer {
        let mut child = Command::new(python())
            .arg(workspace_root().join("zmtp/tests/support/peer.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the pyzmq peer");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut p = PyPeer {
            child,
            stdin,
            lines,
        };
        p.op(json!({"op": "socket", "type": kind})).await;
        p
    }

    /// Sends one op and returns its answer (panics on an error answer or after 20 s).
    pub async fn op(&mut self, v: Value) -> Value {
        let mut line = v.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("peer stdin");
        let got = tokio::time::timeout(Duration::from_secs(20), self.lines.next_line())
            .await
            .expect("the pyzmq peer answers within 20 s")
            .expect("peer stdout")
            .expect("the pyzmq peer is alive");
        let v: Value = serde_json::from_str(&got).expect("json answer");
        assert!(v.get("error").is_none(), "pyzmq peer: {v}");
        v
    }

    pub async fn opt(&mut self, name: &str, value: i64) {
        self.op(json!({"op": "opt", "name": name, "value": value}))
            .await;
    }

    /// Sets a bytes-valued option (`ROUTING_ID`, ...).
    pub async fn opt_bytes(&mut self, name: &str, value: &[u8]) {
        self.op(json!({"op": "opt", "name": name, "value": hex(value)}))
            .await;
    }

    pub async fn bind(&mut self, ep: &str) -> String {
        let v = self.op(json!({"op": "bind", "ep": ep})).await;
        v["ep"].as_str().expect("ep").to_owned()
    }

    pub async fn connect(&mut self, ep: &str) {
        self.op(json!({"op": "connect", "ep": ep})).await;
    }

    pub async fn send(&mut self, frames: &[&[u8]]) {
        let frames: Vec<String> = frames.iter().map(|f| hex(f)).collect();
        self.op(json!({"op": "send", "frames": frames})).await;
    }

    /// Sends without waiting for a peer; false if libzmq had no room (no peer connected).
    pub async fn send_nowait(&mut self, frames: &[&[u8]]) -> bool {
        let frames: Vec<String> = frames.iter().map(|f| hex(f)).collect();
        let v = self
            .op(json!({"op": "send_nowait", "frames": frames}))
            .await;
        v["sent"].as_bool().expect("sent")
    }

    /// The next message, or `None` after `timeout_ms`.
    pub async fn recv(&mut self, timeout_ms: u64) -> Option<Vec<Bytes>> {
        let v = self
            .op(json!({"op": "recv", "timeout_ms": timeout_ms}))
            .await;
        v.get("frames").map(|f| {
            f.as_array()
                .expect("frames")
                .iter()
                .map(|x| unhex(x.as_str().expect("hex frame")))
                .collect()
        })
    }

    /// Up to `count` messages, stopping once none arrives within `timeout_ms`.
    pub async fn recv_n(&mut self, count: usize, timeout_ms: u64) -> Vec<Vec<Bytes>> {
        let v = self
            .op(json!({"op": "recv_n", "count": count, "timeout_ms": timeout_ms}))
            .await;
        v["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| {
                m.as_array()
                    .expect("frames")
                    .iter()
                    .map(|x| unhex(x.as_str().expect("hex frame")))
                    .collect()
            })
            .collect()
    }

    /// Sends `count` one-frame messages, `prefix` followed by 0, 1, 2, ... in decimal.
    pub async fn send_seq(&mut self, prefix: &[u8], count: usize) {
        self.op(json!({"op": "send_seq", "prefix": hex(prefix), "count": count}))
            .await;
    }

    pub async fn subscribe(&mut self, topic: &[u8]) {
        self.op(json!({"op": "subscribe", "topic": hex(topic)}))
            .await;
    }

    pub async fn unsubscribe(&mut self, topic: &[u8]) {
        self.op(json!({"op": "unsubscribe", "topic": hex(topic)}))
            .await;
    }

    pub async fn monitor(&mut self) {
        self.op(json!({"op": "monitor"})).await;
    }

    pub async fn events(&mut self) -> Value {
        self.op(json!({"op": "events"})).await
    }

    /// Waits up to `timeout_ms` for the monitor to have counted `count` events called `name`
    /// (see `events`); true if it did.
    pub async fn wait_event(&mut self, name: &str, count: u64, timeout_ms: u64) -> bool {
        let v = self
            .op(json!({"op": "wait_event", "name": name, "count": count, "timeout_ms": timeout_ms}))
            .await;
        v["reached"].as_bool().expect("reached")
    }

    pub async fn close(mut self) {
        self.op(json!({"op": "close"})).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// Waits for `f` to be true, polling every 10 ms, up to `within`.
pub async fn eventually<F: FnMut() -> bool>(within: Duration, mut f: F) -> bool {
    let end = tokio::time::Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub mod mitm;
pub mod raw;

impl PyPeer {
    /// Makes the socket a CURVE server with this secret key (Z85); with `allow_dir`, a ZAP
    /// handler accepts only the client keys of the certificates (`*.key`) there.
    pub async fn curve_server(&mut self, secret: &str, allow_dir: Option<&std::path::Path>) {
        let mut v = json!({"op": "curve_server", "secret": secret});
        if let Some(d) = allow_dir {
            v["allow_dir"] = json!(d.to_str().expect("utf-8 path"));
        }
        self.op(v).await;
    }

    /// Makes the socket a CURVE client (keys in Z85).
    pub async fn curve_client(&mut self, server: &str, public: &str, secret: &str) {
        self.op(
            json!({"op": "curve_client", "server": server, "public": public, "secret": secret}),
        )
        .await;
    }

    /// pyzmq's `zmq.auth.create_certificates(dir, name)`: (public, secret) in Z85.
    pub async fn create_certificates(
        &mut self,
        dir: &std::path::Path,
        name: &str,
    ) -> (String, String) {
        let v = self
            .op(json!({"op": "create_certificates", "dir": dir.to_str().expect("utf-8"), "name": name}))
            .await;
        (
            v["public"].as_str().expect("public").to_owned(),
            v["secret"].as_str().expect("secret").to_owned(),
        )
    }

    /// pyzmq's `zmq.auth.load_certificate(path)`: (public, secret if the file has it).
    pub async fn load_certificate(&mut self, path: &std::path::Path) -> (String, Option<String>) {
        let v = self
            .op(json!({"op": "load_certificate", "path": path.to_str().expect("utf-8")}))
            .await;
        (
            v["public"].as_str().expect("public").to_owned(),
            v["secret"].as_str().map(str::to_owned),
        )
    }
}

impl PyPeer {
    /// The peer process's id (to freeze it with SIGSTOP, for instance).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the pyzmq peer is running")
    }
}
