//! Running a plan: free local ports, each service's files, the processes started in order and
//! watched (log lines prefixed with the instance's name, readiness, restarts with backoff),
//! and the stop in reverse order on Ctrl-C or SIGTERM.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use crate::declared::Runner;
use crate::plan::{Addressing, BindRef, Plan};
use crate::topology::Restart;

/// Addresses on this machine: 127.0.0.1 and a port per bound slot, free when assigned.
#[derive(Debug)]
pub struct LocalPorts {
    ports: BTreeMap<BindRef, u16>,
}

impl LocalPorts {
    /// One free port per bound slot of the plan. The listeners that found them are held until
    /// every port is picked, so no two slots get the same one.
    pub fn assign(plan: &Plan) -> std::io::Result<LocalPorts> {
        let mut held = Vec::new();
        let mut ports = BTreeMap::new();
        for (name, p) in &plan.services {
            for index in 0..p.binds.len() {
                let l = std::net::TcpListener::bind("127.0.0.1:0")?;
                ports.insert(
                    BindRef {
                        service: name.clone(),
                        index,
                    },
                    l.local_addr()?.port(),
                );
                held.push(l);
            }
        }
        Ok(LocalPorts { ports })
    }

    /// The port of a bound slot.
    pub fn port(&self, r: &BindRef) -> u16 {
        self.ports[r]
    }
}

impl Addressing for LocalPorts {
    fn bind(&self, r: &BindRef) -> String {
        format!("127.0.0.1:{}", self.ports[r])
    }
    fn connect(&self, r: &BindRef) -> String {
        format!("127.0.0.1:{}", self.ports[r])
    }
}

/// Where an instance is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not started yet (its turn in the start order has not come).
    Waiting,
    /// Started, not ready yet.
    Starting,
    /// Ready (its ready file is there; Python: its bound ports accept).
    Ready,
    /// Started but not ready within its ready timeout.
    NotReady,
    /// Exited; restarting after a pause.
    Backoff(String),
    /// Finished with exit 0 and not restarted (a main-mode source that is done).
    Done,
    /// Exited with an error and not restarted.
    Failed(String),
    /// Asked to stop.
    Stopping,
    /// Stopped by `up`.
    Stopped(String),
}

impl State {
    fn word(&self) -> String {
        match self {
            State::Waiting => "waiting".into(),
            State::Starting => "starting".into(),
            State::Ready => "ready".into(),
            State::NotReady => "not ready".into(),
            State::Backoff(why) => format!("restarting ({why})"),
            State::Done => "done".into(),
            State::Failed(why) => format!("failed ({why})"),
            State::Stopping => "stopping".into(),
            State::Stopped(how) => format!("stopped ({how})"),
        }
    }

    fn running(&self) -> bool {
        matches!(
            self,
            State::Starting | State::Ready | State::NotReady | State::Stopping
        )
    }
}

/// One row of the status table.
#[derive(Debug, Clone)]
pub struct Status {
    /// The instance (`square.2`).
    pub name: String,
    /// What runs.
    pub runs: String,
    /// Its state.
    pub state: State,
    /// Its process id while it runs.
    pub pid: Option<u32>,
    /// Times restarted.
    pub restarts: u32,
    /// When the current process started.
    pub since: Option<Instant>,
    /// Its control endpoint, from its ready file (Rust services).
    pub control: Option<String>,
    /// From its `stats`: messages handled per second (requests, deliveries, pulls).
    pub rate: Option<f64>,
    /// From its `stats`: handler errors, summed over its connections.
    pub errors: Option<u64>,
    /// From its `stats`: messages lost (sequence gaps), connections and states.
    pub lost: Option<u64>,
    /// The last handled count and when it was read, for the rate.
    last: Option<(Instant, u64)>,
}

impl Status {
    /// A row for an instance not started yet.
    pub fn new(name: impl Into<String>, runs: impl Into<String>) -> Status {
        Status {
            name: name.into(),
            runs: runs.into(),
            state: State::Waiting,
            pid: None,
            restarts: 0,
            since: None,
            control: None,
            rate: None,
            errors: None,
            lost: None,
            last: None,
        }
    }
}

type Table = Arc<Mutex<Vec<Status>>>;

enum Out {
    Line(usize, String),
    Changed(String),
    Tick,
    Note(String),
}

/// One process to keep running.
#[derive(Debug, Clone)]
struct Instance {
    row: usize,
    service: String,
    name: String,
    command: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: PathBuf,
    ready_file: Option<PathBuf>,
    python_ports: Vec<u16>,
    restart: Restart,
    ready_timeout: Duration,
    stop_timeout: Duration,
}

/// Options of one `up` run.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Where addresses, configs and ready files go (default: a fresh temporary directory,
    /// removed at the end).
    pub run_dir: Option<PathBuf>,
}

/// The files of every service, and the instances to run.
fn prepare(plan: &Plan, ports: &LocalPorts, dir: &Path) -> Result<Vec<Instance>, String> {
    let io = |e: std::io::Error, p: &Path| format!("cannot write {}: {e}", p.display());
    let mut instances = Vec::new();
    for name in plan.start_sequence() {
        let p = &plan.services[&name];
        let addr_path = dir.join(format!("{name}.addresses.json"));
        let doc = plan.addresses(&name, ports);
        std::fs::write(
            &addr_path,
            serde_json::to_string_pretty(&doc).unwrap_or_default(),
        )
        .map_err(|e| io(e, &addr_path))?;
        let config = match (&p.spec.config, &p.spec.config_file) {
            (Some(c), _) => {
                let path = dir.join(format!("{name}.config.json"));
                std::fs::write(&path, serde_json::to_string_pretty(c).unwrap_or_default())
                    .map_err(|e| io(e, &path))?;
                Some(path)
            }
            (None, Some(f)) => Some(plan.topology.resolve(f)),
            (None, None) => None,
        };
        let (command, mut args, run_in) = match &p.runner {
            Runner::Framework { exe, service } => (
                exe.clone(),
                vec!["-s".into(), service.clone()],
                plan.topology.dir.clone(),
            ),
            Runner::Python {
                interpreter,
                module,
            } => {
                // 0.0.18 imports `-s` relative to where it runs: not an absolute path.
                let (run_in, module) =
                    crate::declared::python_invocation(module, &plan.topology.dir);
                (
                    interpreter.clone(),
                    vec![
                        "-u".into(),
                        "-m".into(),
                        "service_framework".into(),
                        "-s".into(),
                        module,
                    ],
                    run_in,
                )
            }
        };
        args.push("-a".into());
        args.push(addr_path.display().to_string());
        if let Some(c) = config {
            args.push("-c".into());
            args.push(c.display().to_string());
        }
        if p.spec.main {
            args.push("-m".into());
        }
        args.extend(p.spec.args.iter().cloned());
        let python_ports: Vec<u16> = if p.runner.is_python() {
            (0..p.binds.len())
                .map(|index| {
                    ports.port(&BindRef {
                        service: name.clone(),
                        index,
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        let n = p.spec.replicas;
        for i in 1..=n {
            let iname = if n > 1 {
                format!("{name}.{i}")
            } else {
                name.clone()
            };
            let ready_file = (!p.runner.is_python()).then(|| dir.join(format!("{iname}.ready")));
            let mut env: Vec<(String, String)> = p
                .spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if let Some(f) = &ready_file {
                env.push((
                    service_framework::cli::READY_FILE_ENV.into(),
                    f.display().to_string(),
                ));
            }
            instances.push(Instance {
                row: instances.len(),
                service: name.clone(),
                name: iname,
                command: command.clone(),
                args: args.clone(),
                env,
                dir: run_in.clone(),
                ready_file,
                python_ports: python_ports.clone(),
                restart: p.spec.restart,
                ready_timeout: Duration::from_secs_f64(p.spec.ready_timeout_s.unwrap_or(30.0)),
                stop_timeout: Duration::from_secs_f64(p.spec.stop_timeout_s.unwrap_or(15.0)),
            });
        }
    }
    Ok(instances)
}

/// Lines of a child's output, each sent with the instance's row; a line is cut at 8 KiB so a
/// child printing without newlines cannot grow this process.
fn forward(read: impl AsyncRead + Unpin + Send + 'static, row: usize, out: mpsc::Sender<Out>) {
    tokio::spawn(async move {
        let mut r = BufReader::new(read);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match (&mut r).take(8192).read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                    if out.send(Out::Line(row, line)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
}

use tokio::io::AsyncReadExt;

async fn set(table: &Table, out: &mpsc::Sender<Out>, row: usize, f: impl FnOnce(&mut Status)) {
    let line = match table.lock() {
        Ok(mut t) => {
            f(&mut t[row]);
            let r = &t[row];
            format!(
                "[up] {}: {}{}",
                r.name,
                r.state.word(),
                r.pid.map_or(String::new(), |p| format!(" (pid {p})"))
            )
        }
        Err(_) => return,
    };
    // Waits for room: a change is never dropped (the printer only writes lines).
    let _ = out.send(Out::Changed(line)).await;
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// How a Python 0.0.18 service ended by `up`'s SIGTERM stopped: a clean stop.
const PYTHON_SIGTERM_STOP: &str = "SIGTERM, as 0.0.18 stops";

fn by_sigterm(s: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    s.signal() == Some(nix::sys::signal::Signal::SIGTERM as i32)
}

fn describe_exit(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(sig)) => nix::sys::signal::Signal::try_from(sig)
            .map_or_else(|_| format!("signal {sig}"), |s| format!("killed by {s}")),
        _ => "ended".into(),
    }
}

async fn ready(inst: &Instance, child: &mut Child) -> Option<std::process::ExitStatus> {
    let check = async {
        loop {
            let ok = match &inst.ready_file {
                Some(f) => f.exists(),
                None => {
                    let mut all = true;
                    for port in &inst.python_ports {
                        if tokio::net::TcpStream::connect(("127.0.0.1", *port))
                            .await
                            .is_err()
                        {
                            all = false;
                            break;
                        }
                    }
                    all
                }
            };
            if ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    tokio::select! {
        () = check => None,
        s = child.wait() => s.ok(),
    }
}

/// Returns once the instance's stop switch is on (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Keeps one instance running until `stop`; reports each change in the table.
async fn keep(
    inst: Instance,
    table: Table,
    out: mpsc::Sender<Out>,
    mut stop: watch::Receiver<bool>,
    ready_tx: mpsc::Sender<usize>,
) {
    let mut backoff = Duration::from_millis(500);
    let mut first = true;
    loop {
        if let Some(f) = &inst.ready_file {
            let _ = std::fs::remove_file(f);
        }
        let mut cmd = Command::new(&inst.command);
        cmd.args(&inst.args)
            .envs(inst.env.iter().cloned())
            .current_dir(&inst.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                set(&table, &out, inst.row, |s| {
                    s.state =
                        State::Failed(format!("cannot start {}: {e}", inst.command.display()));
                    s.pid = None;
                })
                .await;
                let _ = ready_tx.send(inst.row).await;
                return;
            }
        };
        let pid = child.id();
        if let Some(o) = child.stdout.take() {
            forward(o, inst.row, out.clone());
        }
        if let Some(e) = child.stderr.take() {
            forward(e, inst.row, out.clone());
        }
        let started = Instant::now();
        set(&table, &out, inst.row, |s| {
            s.state = State::Starting;
            s.pid = pid;
            s.since = Some(started);
        })
        .await;
        // Ready, or exited first, or late.
        let early = tokio::select! {
            r = tokio::time::timeout(inst.ready_timeout, ready(&inst, &mut child)) => match r {
                Ok(None) => {
                    let control = inst.ready_file.as_ref().and_then(|f| control_of(f));
                    set(&table, &out, inst.row, |s| {
                        s.state = State::Ready;
                        s.control = control;
                        s.last = None;
                    })
                    .await;
                    None
                }
                Ok(Some(status)) => Some(status),
                Err(_) => {
                    set(&table, &out, inst.row, |s| s.state = State::NotReady).await;
                    None
                }
            },
            () = stopped(&mut stop) => None,
        };
        if first {
            first = false;
            let _ = ready_tx.send(inst.row).await;
        }
        let status = match early {
            Some(s) => Some(s),
            None => {
                tokio::select! {
                    s = child.wait() => s.ok(),
                    () = stopped(&mut stop) => {
                        // The stop: SIGTERM, then SIGKILL past the deadline.
                        set(&table, &out, inst.row, |s| s.state = State::Stopping).await;
                        if let Some(pid) = pid {
                            signal(pid, nix::sys::signal::Signal::SIGTERM);
                        }
                        let how = match tokio::time::timeout(inst.stop_timeout, child.wait()).await {
                            // A Python 0.0.18 service (no ready file) without a
                            // `sigterm_handler` keeps SIGTERM's default action: it stops so.
                            Ok(Ok(s)) if inst.ready_file.is_none() && by_sigterm(s) => {
                                PYTHON_SIGTERM_STOP.to_owned()
                            }
                            Ok(Ok(s)) => describe_exit(s),
                            _ => {
                                let _ = child.kill().await;
                                format!("killed after {:?}", inst.stop_timeout)
                            }
                        };
                        set(&table, &out, inst.row, |s| {
                            s.state = State::Stopped(how);
                            s.pid = None;
                        }).await;
                        return;
                    }
                }
            }
        };
        let Some(status) = status else { return };
        let why = describe_exit(status);
        if *stop.borrow() {
            set(&table, &out, inst.row, |s| {
                s.state = State::Stopped(why);
                s.pid = None;
            })
            .await;
            return;
        }
        let again = match inst.restart {
            Restart::Always => true,
            Restart::Never => false,
            Restart::OnFailure => !status.success(),
        };
        if !again {
            set(&table, &out, inst.row, |s| {
                s.state = if status.success() {
                    State::Done
                } else {
                    State::Failed(why)
                };
                s.pid = None;
            })
            .await;
            return;
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(500);
        }
        set(&table, &out, inst.row, |s| {
            s.state = State::Backoff(format!("{why}; again in {:.1}s", backoff.as_secs_f64()));
            s.pid = None;
        })
        .await;
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stopped(&mut stop) => {
                set(&table, &out, inst.row, |s| s.state = State::Stopped(why.clone())).await;
                return;
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
        set(&table, &out, inst.row, |s| s.restarts += 1).await;
    }
}

/// The control endpoint a service wrote into its ready file.
fn control_of(ready_file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(ready_file).ok()?;
    let v: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
    v.get("control")?.as_str().map(str::to_owned)
}

/// (handled, errors, lost) summed from a `stats` reply.
fn totals(stats: &serde_json::Value) -> (u64, u64, u64) {
    let (mut handled, mut errors, mut lost) = (0, 0, 0);
    let field = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_u64);
    for list in ["connections", "states"] {
        for c in stats
            .get(list)
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
        {
            let kind = c
                .get("kind")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("");
            handled += match kind {
                "replyer" => field(c, "requests"),
                "subscriber" => field(c, "delivered"),
                "puller" => field(c, "pulled"),
                _ => None,
            }
            .unwrap_or(0);
            if kind != "requester" {
                errors += field(c, "errors").unwrap_or(0);
            }
            lost += field(c, "lost").unwrap_or(0);
        }
    }
    (handled, errors, lost)
}

/// Every second, each ready instance's `stats` (bounded by a short timeout), for the table's
/// rate, errors and lost columns. Only on a terminal: piped output has no table. One
/// requester per instance is kept while its control address stays the same (a restarted
/// instance has a new one), so a poll is one round trip, not a new connection.
async fn poll_stats(table: Table) {
    use service_framework::connections::{Address, Requester, RequesterOptions, WorkflowId};
    let mut clients: BTreeMap<usize, (String, Requester)> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let targets: Vec<(usize, String)> = table
            .lock()
            .map(|t| {
                t.iter()
                    .enumerate()
                    .filter(|(_, s)| s.state == State::Ready)
                    .filter_map(|(i, s)| s.control.clone().map(|c| (i, c)))
                    .collect()
            })
            .unwrap_or_default();
        clients.retain(|row, (addr, _)| targets.iter().any(|(r, a)| r == row && a == addr));
        for (row, control) in targets {
            let requester = match clients.entry(row) {
                std::collections::btree_map::Entry::Occupied(e) => &e.into_mut().1,
                std::collections::btree_map::Entry::Vacant(e) => {
                    let options = RequesterOptions {
                        timeout: Duration::from_millis(500),
                        ..Default::default()
                    };
                    match Requester::connect(&Address::from(control.as_str()), options) {
                        Ok(r) => &e.insert((control, r)).1,
                        Err(_) => continue,
                    }
                }
            };
            let reply = requester
                .request::<_, serde_json::Value>(
                    &serde_json::json!({"verb": "stats"}),
                    WorkflowId::None,
                )
                .await;
            let Ok(stats) = reply else { continue };
            let (handled, errors, lost) = totals(&stats);
            let now = Instant::now();
            if let Ok(mut t) = table.lock() {
                let s = &mut t[row];
                if let Some((then, before)) = s.last {
                    let dt = now.duration_since(then).as_secs_f64();
                    if dt > 0.0 {
                        s.rate = Some(handled.saturating_sub(before) as f64 / dt);
                    }
                }
                s.last = Some((now, handled));
                s.errors = Some(errors);
                s.lost = Some(lost);
            }
        }
    }
}

fn uptime(since: Option<Instant>, state: &State) -> String {
    match since {
        Some(t) if state.running() => {
            let s = t.elapsed().as_secs();
            if s >= 3600 {
                format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
            } else if s >= 60 {
                format!("{}m{:02}s", s / 60, s % 60)
            } else {
                format!("{s}s")
            }
        }
        _ => "-".into(),
    }
}

fn table_lines(rows: &[Status], title: &str) -> Vec<String> {
    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(7);
    let rw = rows.iter().map(|r| r.runs.len()).max().unwrap_or(4).max(4);
    let mut lines = vec![format!(
        "── {title} {}",
        "─".repeat(w + rw + 40 - title.len().min(w + rw + 30))
    )];
    lines.push(format!(
        "{:<w$}  {:<rw$}  {:<28}  {:>7}  {:>8}  {:>6}  {:>8}  {:>6}  {:>6}",
        "SERVICE", "RUNS", "STATE", "PID", "RESTARTS", "UPTIME", "MSG/S", "ERRORS", "LOST"
    ));
    for r in rows {
        let mut state = r.state.word();
        if state.len() > 28 {
            state.truncate(27);
            state.push('…');
        }
        let dash = || "-".to_owned();
        lines.push(format!(
            "{:<w$}  {:<rw$}  {:<28}  {:>7}  {:>8}  {:>6}  {:>8}  {:>6}  {:>6}",
            r.name,
            r.runs,
            state,
            r.pid.map_or_else(dash, |p| p.to_string()),
            r.restarts,
            uptime(r.since, &r.state),
            r.rate.map_or_else(dash, |v| format!("{v:.0}")),
            r.errors.map_or_else(dash, |v| v.to_string()),
            r.lost.map_or_else(dash, |v| v.to_string()),
        ));
    }
    lines
}

/// Prints log lines with their prefix and the status: on a terminal a table kept at the
/// bottom and redrawn in place; otherwise one `[up] name: state (pid N)` line per change.
async fn printer(mut rx: mpsc::Receiver<Out>, table: Table, title: String, width: usize) {
    let tty = std::io::stdout().is_terminal();
    let mut drawn = 0usize;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = tick.tick(), if tty => Some(Out::Tick),
        };
        let Some(msg) = msg else { break };
        let rows = table.lock().map(|t| t.clone()).unwrap_or_default();
        let mut stdout = std::io::stdout().lock();
        if tty && drawn > 0 {
            // Up over the table, and clear it: the log line takes its place.
            let _ = write!(stdout, "\x1b[{drawn}A\x1b[J");
            drawn = 0;
        }
        match msg {
            Out::Line(row, line) => {
                let name = rows.get(row).map_or("?", |r| r.name.as_str());
                let _ = writeln!(stdout, "{name:<width$} | {line}");
            }
            Out::Note(n) => {
                let _ = writeln!(stdout, "[up] {n}");
            }
            Out::Changed(line) if !tty => {
                let _ = writeln!(stdout, "{line}");
            }
            Out::Changed(..) | Out::Tick => {}
        }
        if tty {
            let lines = table_lines(&rows, &title);
            for l in &lines {
                let _ = writeln!(stdout, "{l}");
            }
            drawn = lines.len();
        }
        let _ = stdout.flush();
    }
    if tty {
        let rows = table.lock().map(|t| t.clone()).unwrap_or_default();
        let mut stdout = std::io::stdout().lock();
        if drawn > 0 {
            let _ = write!(stdout, "\x1b[{drawn}A\x1b[J");
        }
        for l in table_lines(&rows, &title) {
            let _ = writeln!(stdout, "{l}");
        }
    }
}

/// The first of SIGINT and SIGTERM.
async fn signals() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// In a run's folder, the canonical path of its topology file (read by `service-framework
/// ls FILE`).
pub const TOPOLOGY_FILE: &str = "topology";

/// Runs the plan until Ctrl-C or SIGTERM (or until nothing is left running). Returns the
/// process exit code: 0 when every service stopped cleanly.
pub async fn up(plan: Plan, options: UpOptions) -> Result<i32, String> {
    let term = {
        let s = signals();
        tokio::spawn(s)
    };
    let (dir, temporary) = match &options.run_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!(
                "sf-up-{}-{}",
                plan.topology.name,
                std::process::id()
            )),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // Which file this run is of: `service-framework ls FILE` finds the run by it.
    let source = std::fs::canonicalize(&plan.topology.path).unwrap_or(plan.topology.path.clone());
    if let Err(e) = std::fs::write(dir.join(TOPOLOGY_FILE), source.to_string_lossy().as_bytes()) {
        eprintln!(
            "[up] cannot write {}: {e}",
            dir.join(TOPOLOGY_FILE).display()
        );
    }
    let ports = LocalPorts::assign(&plan).map_err(|e| format!("cannot find free ports: {e}"))?;
    let instances = prepare(&plan, &ports, &dir)?;

    let table: Table = Arc::new(Mutex::new(
        instances
            .iter()
            .map(|i| Status::new(&i.name, plan.services[&i.service].runner.describe()))
            .collect(),
    ));
    let width = instances.iter().map(|i| i.name.len()).max().unwrap_or(4);
    let (out, rx) = mpsc::channel::<Out>(1024);
    let printer = tokio::spawn(printer(
        rx,
        table.clone(),
        plan.topology.name.clone(),
        width,
    ));
    let poller = std::io::stdout()
        .is_terminal()
        .then(|| tokio::spawn(poll_stats(table.clone())));
    let note = |n: String| {
        let out = out.clone();
        async move {
            let _ = out.send(Out::Note(n)).await;
        }
    };
    note(format!(
        "{}: {} service(s), files in {}",
        plan.topology.path.display(),
        instances.len(),
        dir.display()
    ))
    .await;
    for (name, p) in &plan.services {
        for (index, slot) in p.binds.iter().enumerate() {
            let r = BindRef {
                service: name.clone(),
                index,
            };
            let unconnected = if plan.unconnected.contains(&r) {
                " (no edge)"
            } else {
                ""
            };
            note(format!(
                "{name} {}: 127.0.0.1:{}{unconnected}",
                slot.label(),
                ports.port(&r)
            ))
            .await;
        }
    }

    // One stop switch per instance: the stop goes level by level.
    let (stop_txs, stop_rxs): (Vec<_>, Vec<_>) =
        instances.iter().map(|_| watch::channel(false)).unzip();
    let (ready_tx, mut ready_rx) = mpsc::channel::<usize>(instances.len().max(1));
    let mut tasks: BTreeMap<usize, tokio::task::JoinHandle<()>> = BTreeMap::new();
    tokio::pin!(term);
    let mut reason = None;
    // Level by level: a level starts when every instance of the one before is ready (or has
    // given up being so).
    'levels: for level in &plan.order {
        let rows: Vec<&Instance> = instances
            .iter()
            .filter(|i| level.contains(&i.service))
            .collect();
        for inst in &rows {
            tasks.insert(
                inst.row,
                tokio::spawn(keep(
                    (*inst).clone(),
                    table.clone(),
                    out.clone(),
                    stop_rxs[inst.row].clone(),
                    ready_tx.clone(),
                )),
            );
        }
        let mut waiting = rows.len();
        while waiting > 0 {
            tokio::select! {
                r = ready_rx.recv() => { if r.is_some() { waiting -= 1 } else { break } }
                s = &mut term => {
                    reason = Some(s.ok().and_then(Result::ok).unwrap_or("a signal"));
                    break 'levels;
                }
            }
        }
    }
    if reason.is_none() {
        note("every service started".into()).await;
        for n in &plan.topology.notes {
            note(n.clone()).await;
        }
        // Until a signal, or until nothing is left running.
        let all_over = async {
            loop {
                let over = table
                    .lock()
                    .map(|t| {
                        t.iter().all(|s| {
                            matches!(s.state, State::Done | State::Failed(_) | State::Stopped(_))
                        })
                    })
                    .unwrap_or(true);
                if over {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            s = &mut term => reason = Some(s.ok().and_then(Result::ok).unwrap_or("a signal")),
            () = all_over => {}
        }
    }
    if let Some(r) = reason {
        note(format!("{r}: stopping in reverse order")).await;
    }
    // Reverse order: producers first, so what they sent is drained by their consumers.
    for level in plan.order.iter().rev() {
        let rows: Vec<usize> = instances
            .iter()
            .filter(|i| level.contains(&i.service))
            .map(|i| i.row)
            .collect();
        for &row in &rows {
            let _ = stop_txs[row].send(true);
        }
        for row in rows {
            if let Some(t) = tasks.remove(&row) {
                let _ = t.await;
            }
        }
    }
    for tx in &stop_txs {
        let _ = tx.send(true);
    }
    for (_, t) in tasks {
        let _ = t.await;
    }
    let rows = table.lock().map(|t| t.clone()).unwrap_or_default();
    let bad: Vec<String> = rows
        .iter()
        .filter(|r| match &r.state {
            State::Stopped(how) => how != "exit 0" && how != PYTHON_SIGTERM_STOP,
            State::Failed(_) => true,
            State::Done | State::Waiting => false,
            _ => true,
        })
        .map(|r| format!("{} {}", r.name, r.state.word()))
        .collect();
    if bad.is_empty() {
        note("all stopped".into()).await;
    } else {
        note(format!("not a clean stop: {}", bad.join(", "))).await;
    }
    if let Some(p) = poller {
        p.abort();
    }
    drop(out);
    let _ = printer.await;
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(if bad.is_empty() { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_table_has_a_row_per_instance_with_state_pid_restarts_and_uptime() {
        let rows = vec![
            Status {
                state: State::Ready,
                pid: Some(4242),
                restarts: 2,
                since: Some(Instant::now()),
                rate: Some(1250.2),
                errors: Some(3),
                lost: Some(0),
                ..Status::new("square.1", "pipeline_square")
            },
            Status {
                state: State::Backoff("killed by SIGKILL; again in 1.0s".into()),
                ..Status::new("source", "pipeline_source")
            },
        ];
        let lines = table_lines(&rows, "pipeline");
        assert!(lines[0].contains(" pipeline "), "{lines:?}");
        assert!(lines[1].split_whitespace().eq([
            "SERVICE", "RUNS", "STATE", "PID", "RESTARTS", "UPTIME", "MSG/S", "ERRORS", "LOST"
        ]));
        let cells: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "square.1",
                "pipeline_square",
                "ready",
                "4242",
                "2",
                "0s",
                "1250",
                "3",
                "0"
            ]
        );
        // A long state is cut to its column, so the table keeps its shape.
        assert!(lines[3].starts_with("source  "), "{}", lines[3]);
        assert!(
            lines[3].contains("restarting (killed by SIGKI…"),
            "{}",
            lines[3]
        );
        let widths: Vec<usize> = lines[1..].iter().map(|l| l.chars().count()).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{lines:#?}");
    }

    #[test]
    fn stats_sum_handled_errors_and_lost_by_kind() {
        let stats = serde_json::json!({
            "connections": [
                {"kind": "replyer", "requests": 7, "errors": 2},
                {"kind": "requester", "requests": 100, "timeouts": 1},
                {"kind": "subscriber", "delivered": 5, "lost": 3, "errors": 1},
                {"kind": "puller", "pulled": 4, "errors": 0},
                {"kind": "publisher", "published": 50},
            ],
            "states": [{"kind": "delta_update_in", "lost": 2}],
        });
        // A requester's calls are not messages this service handled.
        assert_eq!(totals(&stats), (16, 3, 5));
        assert_eq!(totals(&serde_json::json!({})), (0, 0, 0));
    }

    #[test]
    fn uptime_reads_in_the_largest_unit() {
        let now = Instant::now();
        assert_eq!(uptime(Some(now), &State::Ready), "0s");
        assert_eq!(uptime(Some(now), &State::Done), "-");
        let hour = now.checked_sub(Duration::from_secs(3725));
        if let Some(t) = hour {
            assert_eq!(uptime(Some(t), &State::Ready), "1h02m");
        }
    }
}
