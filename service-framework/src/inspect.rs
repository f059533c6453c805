//! `service-framework ping | info | stats | ls [ADDR...] [--up] [--json] [--watch [SECONDS]]`:
//! the control endpoints of running services (see [`crate::control`]), asked over the
//! framework's own request/reply wire and printed as tables like `nats micro`'s, or as raw
//! JSON lines for scripts (`--json`).
//!
//! Without addresses (or with `--up`) the targets are every instance of every running
//! `service-framework up`: each writes its instances' ready files, with their `control`
//! endpoint, into `$TMPDIR/sf-up-<topology>-<pid>/<instance>.ready`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// One service to ask: its control endpoint, and the `up` instance it is, if found that way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The control endpoint.
    pub address: String,
    /// The instance name under `up` (the ready file's name).
    pub instance: Option<String>,
}

/// What the verbs take from the command line.
#[derive(Debug, Clone, Default)]
pub struct InspectOptions {
    /// Raw JSON lines instead of tables.
    pub json: bool,
    /// `stats --watch`: redraw every this often, with rates.
    pub watch: Option<Duration>,
    /// Per request.
    pub timeout: Duration,
}

/// The control endpoints of every running `service-framework up` (their ready files in the
/// temporary directory; a file whose process is gone is skipped), sorted by instance.
pub fn discover_up(temp_dir: &Path) -> Vec<Target> {
    discover(temp_dir, None)
}

/// As [`discover_up`], only the runs of the topology file `topology` (each run records its
/// file's canonical path in its folder).
pub fn discover_topology(temp_dir: &Path, topology: &Path) -> Vec<Target> {
    let wanted = std::fs::canonicalize(topology).unwrap_or_else(|_| topology.to_path_buf());
    discover(temp_dir, Some(&wanted))
}

/// Whether a command-line word names a topology file rather than a control address.
pub fn is_topology_file(word: &str) -> bool {
    word.ends_with(".toml") && Path::new(word).is_file()
}

fn discover(temp_dir: &Path, topology: Option<&Path>) -> Vec<Target> {
    let mut found = Vec::new();
    let Ok(dirs) = std::fs::read_dir(temp_dir) else {
        return found;
    };
    for dir in dirs.flatten() {
        if !dir.file_name().to_string_lossy().starts_with("sf-up-") {
            continue;
        }
        if let Some(wanted) = topology {
            let recorded = std::fs::read_to_string(dir.path().join("topology")).ok();
            if recorded.as_deref().map(Path::new) != Some(wanted) {
                continue;
            }
        }
        let Ok(files) = std::fs::read_dir(dir.path()) else {
            continue;
        };
        for f in files.flatten() {
            let path = f.path();
            if path.extension().is_none_or(|e| e != "ready") {
                continue;
            }
            let Some(v) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            else {
                continue;
            };
            if let Some(pid) = v["pid"].as_u64() {
                if !alive(pid) {
                    continue;
                }
            }
            if let Some(address) = v["control"].as_str() {
                found.push(Target {
                    address: address.to_owned(),
                    instance: path.file_stem().map(|s| s.to_string_lossy().into_owned()),
                });
            }
        }
    }
    found.sort_by(|a, b| (&a.instance, &a.address).cmp(&(&b.instance, &b.address)));
    found
}

fn alive(pid: u64) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// Asks one control endpoint: `{"verb": verb}`, the reply's `return_args`.
pub async fn ask(address: &str, verb: &str, timeout: Duration) -> Result<Value> {
    crate::testing::call_once::<Value, Value>(
        address,
        &json!({ "verb": verb }),
        sf_connections::WorkflowId::new_random(),
        timeout,
    )
    .await
    .map_err(|e| Error::Other(format!("{address}: {e}")))
}

/// Asks every target at once.
async fn ask_all(targets: &[Target], verb: &str, timeout: Duration) -> Vec<Result<Value>> {
    let asks = targets.iter().map(|t| {
        let (address, verb) = (t.address.clone(), verb.to_owned());
        async move { ask(&address, &verb, timeout).await }
    });
    futures_join_all(asks).await
}

/// Joins futures in order without a dependency on `futures`.
async fn futures_join_all<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("an ask never panics"));
    }
    out
}

/// Runs `verb` (`ping`, `info`, `stats`, `ls`) over `targets`, printing to stdout. Exit 0
/// when every target answered, 1 otherwise.
pub async fn run(verb: &str, targets: &[Target], options: &InspectOptions) -> ExitCode {
    if targets.is_empty() {
        eprintln!("no services: give control addresses (host:port), or run `service-framework up`");
        return ExitCode::from(1);
    }
    if verb == "stats" {
        if let Some(every) = options.watch {
            return watch(targets, options, every).await;
        }
    }
    let asked = if verb == "ls" { "ping" } else { verb };
    let replies = ask_all(targets, asked, options.timeout).await;
    let mut failed = false;
    let mut rows = Vec::new();
    for (t, r) in targets.iter().zip(replies) {
        match r {
            Ok(mut v) => {
                if let Some(m) = v.as_object_mut() {
                    m.insert("address".into(), t.address.clone().into());
                    if let Some(i) = &t.instance {
                        m.insert("instance".into(), i.clone().into());
                    }
                }
                rows.push(v);
            }
            Err(e) => {
                failed = true;
                eprintln!("error: {e}");
            }
        }
    }
    let text = if options.json {
        rows.iter().map(|v| format!("{v}\n")).collect()
    } else {
        match verb {
            "info" => info_text(&rows),
            "stats" => stats_text(&rows, None),
            "health" => health_text(&rows),
            _ => ls_text(&rows),
        }
    };
    print!("{text}");
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `stats --watch`: clears the screen and redraws every `every`, with per-second rates from
/// the previous round, until Ctrl-C.
async fn watch(targets: &[Target], options: &InspectOptions, every: Duration) -> ExitCode {
    let stop = crate::service::os_signals();
    tokio::pin!(stop);
    let mut previous: Option<(Instant, Vec<Value>)> = None;
    loop {
        let now = Instant::now();
        let rows: Vec<Value> = ask_all(targets, "stats", options.timeout)
            .await
            .into_iter()
            .zip(targets)
            .map(|(r, t)| {
                r.unwrap_or_else(|e| json!({"address": t.address, "error": e.to_string()}))
            })
            .collect();
        if options.json {
            for r in &rows {
                println!("{r}");
            }
        } else {
            let rates = previous
                .as_ref()
                .map(|(at, prev)| (now.duration_since(*at).as_secs_f64(), prev.as_slice()));
            print!("\x1b[H\x1b[2J{}", stats_text(&rows, rates));
            println!("(every {every:?}; Ctrl-C to stop)");
        }
        previous = Some((now, rows));
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = &mut stop => return ExitCode::SUCCESS,
        }
    }
}

/// Lines of aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn ls_text(rows: &[Value]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                s(&r["name"]),
                s(&r["id"]),
                s(&r["version"]),
                s(&r["address"]),
            ]
        })
        .collect();
    table(&["NAME", "ID", "VERSION", "ADDRESS"], &rows)
}

fn info_text(rows: &[Value]) -> String {
    let mut out = String::new();
    for r in rows {
        out.push_str(&format!(
            "{} {} ({}) at {}\n",
            s(&r["name"]),
            s(&r["version"]),
            s(&r["id"]),
            s(&r["address"])
        ));
        if r["description"].as_str().is_some_and(|d| !d.is_empty()) {
            out.push_str(&format!("  {}\n", s(&r["description"])));
        }
        if let Some(m) = r["metadata"].as_object().filter(|m| !m.is_empty()) {
            let pairs: Vec<String> = m.iter().map(|(k, v)| format!("{k}={}", s(v))).collect();
            out.push_str(&format!("  metadata: {}\n", pairs.join(", ")));
        }
        let mut lines = Vec::new();
        for c in r["connections"].as_array().into_iter().flatten() {
            lines.push(vec![
                s(&c["name"]),
                s(&c["side"]),
                s(&c["kind"]),
                s(&c["endpoint"]),
            ]);
        }
        for st in r["states"].as_array().into_iter().flatten() {
            let eps: Vec<String> = st["endpoints"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", s(v)))
                .collect();
            lines.push(vec![
                s(&st["name"]),
                s(&st["side"]),
                s(&st["kind"]),
                if eps.is_empty() {
                    "-".into()
                } else {
                    eps.join(" ")
                },
            ]);
        }
        for l in table(&["CONNECTION", "SIDE", "KIND", "ENDPOINT"], &lines).lines() {
            out.push_str(&format!("  {l}\n"));
        }
        out.push('\n');
    }
    out
}

/// The one count a connection's row shows (requests, published, delivered, pushed, pulled),
/// its errors and what it lost.
fn headline(c: &Value) -> (u64, u64, u64) {
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    match c["kind"].as_str().unwrap_or("") {
        "replyer" => (n("requests"), n("errors"), 0),
        "requester" => (n("requests"), n("timeouts"), 0),
        "publisher" => (n("published"), 0, n("dropped")),
        "subscriber" => (n("delivered"), n("errors"), n("lost")),
        "pusher" => (n("pushed"), n("timeouts"), 0),
        "puller" => (n("pulled"), n("errors"), 0),
        _ => (0, 0, 0),
    }
}

/// The stats table: one row per connection. With `rates` (seconds since, and the previous
/// round's rows) a RATE/s column of the count's per-second delta.
fn stats_text(rows: &[Value], rates: Option<(f64, &[Value])>) -> String {
    let mut header = vec![
        "SERVICE",
        "CONNECTION",
        "KIND",
        "COUNT",
        "ERRORS",
        "AVG_MS",
        "IN_FLIGHT",
        "LOST",
    ];
    if rates.is_some() {
        header.insert(4, "RATE/s");
    }
    let mut previous: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    if let Some((_, prev)) = rates {
        for r in prev {
            for c in r["connections"].as_array().into_iter().flatten() {
                let key = (s(&r["id"]), s(&c["side"]), s(&c["name"]));
                previous.insert(key, headline(c).0);
            }
        }
    }
    let mut lines = Vec::new();
    let mut errors = String::new();
    for r in rows {
        if let Some(e) = r["error"].as_str() {
            errors.push_str(&format!("error: {e}\n"));
            continue;
        }
        let service = r["instance"]
            .as_str()
            .map_or_else(|| s(&r["name"]), str::to_owned);
        for c in r["connections"].as_array().into_iter().flatten() {
            let (count, errs, lost) = headline(c);
            let avg = c["average_processing_time_s"]
                .as_f64()
                .map_or("-".into(), |a| format!("{:.3}", a * 1000.0));
            let mut line = vec![
                service.clone(),
                format!("{}.{}", s(&c["side"]), s(&c["name"])),
                s(&c["kind"]),
                count.to_string(),
                errs.to_string(),
                avg,
                c["in_flight"]
                    .as_u64()
                    .map_or("-".into(), |n| n.to_string()),
                lost.to_string(),
            ];
            if let Some((dt, _)) = rates {
                let key = (s(&r["id"]), s(&c["side"]), s(&c["name"]));
                let rate = previous
                    .get(&key)
                    .filter(|_| dt > 0.0)
                    .map_or("-".into(), |p| {
                        format!("{:.1}", count.saturating_sub(*p) as f64 / dt)
                    });
                line.insert(4, rate);
            }
            lines.push(line);
        }
    }
    table(&header, &lines) + &errors
}

fn health_text(rows: &[Value]) -> String {
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let down: Vec<String> = r["connections"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["up"] == false)
                .map(|c| s(&c["name"]))
                .collect();
            vec![
                s(&r["name"]),
                s(&r["ready"]),
                s(&r["stopping"]),
                if down.is_empty() {
                    "-".into()
                } else {
                    down.join(",")
                },
            ]
        })
        .collect();
    table(&["NAME", "READY", "STOPPING", "DOWN"], &lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "BB"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    BB\nxyz  1\nq    22\n");
    }

    #[test]
    fn rates_are_deltas_per_second() {
        let prev = vec![json!({"id": "i", "name": "svc", "connections": [
            {"name": "r", "side": "in", "kind": "replyer", "requests": 10, "errors": 0}]})];
        let now = vec![json!({"id": "i", "name": "svc", "connections": [
            {"name": "r", "side": "in", "kind": "replyer", "requests": 30, "errors": 1,
             "average_processing_time_s": 0.002, "in_flight": 0}]})];
        let t = stats_text(&now, Some((2.0, &prev)));
        assert!(t.contains("RATE/s"), "{t}");
        assert!(t.contains("10.0"), "{t}");
        assert!(t.contains("2.000"), "{t}");
    }

    #[test]
    fn discovers_ready_files_of_live_processes() {
        let dir = std::env::temp_dir().join(format!("sf-inspect-test-{}", std::process::id()));
        let run = dir.join("sf-up-topo-1");
        std::fs::create_dir_all(&run).unwrap();
        let me = std::process::id();
        std::fs::write(
            run.join("a.ready"),
            json!({"pid": me, "control": "tcp://127.0.0.1:5"}).to_string(),
        )
        .unwrap();
        std::fs::write(
            run.join("b.ready"),
            json!({"pid": u32::MAX, "control": "tcp://127.0.0.1:6"}).to_string(),
        )
        .unwrap();
        std::fs::write(run.join("c.log"), "x").unwrap();
        let found = discover_up(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            found,
            vec![Target {
                address: "tcp://127.0.0.1:5".into(),
                instance: Some("a".into())
            }]
        );
    }
}
