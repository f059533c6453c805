//! Helpers for the service-framework integration tests: small services, addresses on
//! ephemeral ports, one-off requests with a bounded wait, children killed on drop.

#![allow(dead_code)]

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use service_framework::connections::{wire, Address, Requester, RequesterOptions, WorkflowId};
use service_framework::{
    AddressesFile, Ctx, Ready, Service, ServiceDef, ServiceError, ServiceHandle,
};

/// How long a service gets to come up.
pub const READY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Echo {
    pub to_echo: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Echoed {
    pub echoed: String,
}

/// A replyer `reply` answering `{echoed: "<prefix><to_echo>"}`.
pub fn echo_service(name: &str, prefix: &str) -> ServiceDef {
    let prefix = prefix.to_owned();
    ServiceDef::new(name).replyer("reply", move |a: Echo, _ctx: Ctx| {
        let echoed = format!("{prefix}{}", a.to_echo);
        async move { Ok::<_, ServiceError>(Echoed { echoed }) }
    })
}

/// addresses.json as a value.
pub fn addresses(v: Value) -> AddressesFile {
    AddressesFile::from_value(v).expect("test addresses have the right shape")
}

/// Addresses binding in-connection `reply` at `addr`.
pub fn replyer_at(addr: &str) -> AddressesFile {
    addresses(json!({"connections": {"in": {"reply": {"replyer": addr}}}}))
}

/// Starts `def` in the background on the loop (not main) and waits until it is up.
pub fn start(def: ServiceDef, addrs: AddressesFile) -> (ServiceHandle, Ready) {
    let handle = Service::new(def).addresses(addrs).run_in_background();
    let ready = handle.wait_ready(READY).expect("service ready");
    (handle, ready)
}

/// One request on a fresh requester, on a runtime of its own, bounded by `timeout`.
pub fn request_with(
    endpoint: &str,
    args: &Value,
    workflow_id: WorkflowId,
    timeout: Duration,
) -> Result<Value, service_framework::connections::Error> {
    service_framework::testing::call_once_blocking(endpoint, args, workflow_id, timeout)
}

/// One request with a fresh UUID, 5 s at most.
pub fn request(
    endpoint: &str,
    args: &Value,
) -> Result<Value, service_framework::connections::Error> {
    request_with(
        endpoint,
        args,
        WorkflowId::new_random(),
        Duration::from_secs(5),
    )
}

/// One request returning the whole decoded reply envelope (to see its workflow id).
pub fn request_envelope(endpoint: &str, args: &Value, workflow_id: WorkflowId) -> Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = Requester::connect(
            &Address::from(endpoint),
            RequesterOptions {
                timeout: Duration::from_secs(5),
                ..Default::default()
            },
        )
        .unwrap();
        let body = wire::encode(&wire::Request {
            args,
            workflow_id,
            traceparent: None,
        })
        .unwrap();
        let reply = r.request_raw(body).await.expect("a reply");
        wire::decode::<Value>(&reply).expect("reply decodes")
    })
}

/// A child process killed on drop, with output collected by threads.
pub struct Proc {
    child: Child,
    out: std::sync::mpsc::Receiver<(bool, String)>,
    what: String,
}

/// What a finished process said.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        let what = format!("{cmd:?}");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let (tx, rx) = std::sync::mpsc::channel();
        for (is_err, mut stream) in [
            (
                false,
                Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            ),
            (
                true,
                Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
            ),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = stream.read_to_string(&mut s);
                let _ = tx.send((is_err, s));
            });
        }
        Proc {
            child,
            out: rx,
            what,
        }
    }

    /// Waits for exit within `timeout` (killing it and panicking after) and collects output.
    pub fn finish(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        let mut stdout = String::new();
        let mut stderr = String::new();
        let mut streams = 0;
        while streams < 2 {
            match self
                .out
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok((true, s)) => {
                    stderr = s;
                    streams += 1;
                }
                Ok((false, s)) => {
                    stdout = s;
                    streams += 1;
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("{} did not finish within {timeout:?}", self.what);
                }
            }
        }
        // Output closed: the process has exited or is exiting.
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("{} did not exit within {timeout:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Finished {
            status,
            stdout,
            stderr,
        }
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

/// Runs the service-framework binary with `args`, 10 s at most.
pub fn sf(args: &[&str]) -> Finished {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_service-framework"));
    cmd.args(args);
    Proc::spawn(cmd).finish(Duration::from_secs(8))
}
