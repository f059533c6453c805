//! The HTTP bridge: requests/s and p50/p99 under a load generator on loopback.
//!
//! Framework: the `service-framework-bridge` binary (built beside this one) with its `echo`
//! plugin, `GET /api/v1/echo?message=hi`, and, when `echo_replyer` is built too, a
//! bus-backed route (`POST /api/v1/bus/echo` -> echo_replyer over the bus). Baseline: a raw
//! axum server in this process answering the same echo. The load generator is a minimal
//! HTTP/1.1 keep-alive client (N connections, each sending its share of requests one after
//! the other), so its own cost stays small and equal for both.
//!
//! If the bridge binary is missing or does not serve, its rows say "not measured" and why.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::Query;
use axum::routing::get;
use axum::{Json, Router};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::procs::Proc;
use crate::report::{PatternReport, Row, Target};
use crate::util::{block_on, rate, rss_mib, Flavor, Latency};
use crate::Config;

/// The bridge binary's name.
pub const BRIDGE_BIN: &str = "service-framework-bridge";
const IO_LIMIT: Duration = Duration::from_secs(5);

/// What a load run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    /// Successful (200) requests per second.
    pub per_s: f64,
    /// Latency of one request.
    pub latency: Latency,
    /// 200 answers.
    pub ok: u64,
    /// Anything else (other statuses, I/O errors, timeouts).
    pub errors: u64,
}

/// An HTTP/1.1 request for `target` (`GET` without a body, `POST` with a JSON body).
pub fn request(method: &str, target: &str, json_body: Option<&str>) -> Vec<u8> {
    let mut r = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    if let Some(b) = json_body {
        r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ));
    } else {
        r.push_str("\r\n");
    }
    r.into_bytes()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses one HTTP/1.1 response at the start of `buf`: its status and length once complete
/// (content-length or chunked bodies), `None` while more bytes are needed.
pub fn parse_response(buf: &[u8]) -> anyhow::Result<Option<(u16, usize)>> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("no status in the response")?;
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse::<usize>().context("bad content-length")?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked") {
            chunked = true;
        }
    }
    let body = end + 4;
    if chunked {
        let mut at = body;
        loop {
            let Some(nl) = find(&buf[at..], b"\r\n") else {
                return Ok(None);
            };
            let size_text = std::str::from_utf8(&buf[at..at + nl])?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .context("bad chunk size")?;
            at += nl + 2;
            if size == 0 {
                // No trailers expected: the final CRLF.
                return Ok((buf.len() >= at + 2).then_some((status, at + 2)));
            }
            if buf.len() < at + size + 2 {
                return Ok(None);
            }
            at += size + 2;
        }
    }
    let total = body + length.unwrap_or(0);
    Ok((buf.len() >= total).then_some((status, total)))
}

async fn one_connection(
    addr: SocketAddr,
    req: Arc<Vec<u8>>,
    n: usize,
) -> (Vec<Duration>, u64, u64) {
    let mut lat = Vec::with_capacity(n);
    let (mut ok, mut errors) = (0u64, 0u64);
    let Ok(Ok(mut stream)) = tokio::time::timeout(IO_LIMIT, TcpStream::connect(addr)).await else {
        return (lat, 0, n as u64);
    };
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(8192);
    for done in 0..n {
        let t = Instant::now();
        let exchange = async {
            stream.write_all(&req).await?;
            loop {
                if let Some((status, len)) = parse_response(&buf)? {
                    buf.drain(..len);
                    return anyhow::Ok(status);
                }
                let mut chunk = [0u8; 8192];
                let got = stream.read(&mut chunk).await?;
                anyhow::ensure!(got > 0, "the server closed the connection");
                buf.extend_from_slice(&chunk[..got]);
            }
        };
        match tokio::time::timeout(IO_LIMIT, exchange).await {
            Ok(Ok(200)) => {
                ok += 1;
                lat.push(t.elapsed());
            }
            Ok(Ok(_)) => errors += 1,
            _ => {
                // The connection is in an unknown state: count the rest as errors.
                errors += (n - done) as u64;
                break;
            }
        }
    }
    (lat, ok, errors)
}

/// `total` requests over `connections` keep-alive connections to `addr`.
pub async fn load(
    addr: SocketAddr,
    req: Vec<u8>,
    total: usize,
    connections: usize,
) -> anyhow::Result<Load> {
    let req = Arc::new(req);
    let per = total / connections;
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(one_connection(addr, req.clone(), per)))
        .collect();
    let mut lat = Vec::with_capacity(total);
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (l, o, e) = t.await?;
        lat.extend(l);
        ok += o;
        errors += e;
    }
    let elapsed = start.elapsed();
    Ok(Load {
        per_s: rate(ok, elapsed),
        latency: Latency::of(&mut lat),
        ok,
        errors,
    })
}

/// Waits until `GET target` on `addr` answers 200 (the process must stay up meanwhile).
fn wait_http_ok(
    proc: &mut Proc,
    addr: SocketAddr,
    target: &str,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let rt = crate::util::runtime(Flavor::Current);
    let deadline = Instant::now() + limit;
    let req = request("GET", target, None);
    loop {
        anyhow::ensure!(proc.running(), "the bridge exited before serving");
        let got = rt.block_on(async {
            let r = one_connection(addr, Arc::new(req.clone()), 1).await;
            r.1 == 1
        });
        if got {
            return Ok(Instant::now());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the bridge did not answer {target} with 200 within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The raw baseline's routes: the bridge echo plugin's answer, from a bare axum router.
pub fn echo_router() -> Router {
    Router::new().route(
        "/api/v1/echo",
        get(|Query(q): Query<HashMap<String, String>>| async move {
            Json(serde_json::json!({"status": 200, "message": "", "data": q.get("message")}))
        }),
    )
}

/// The line the raw HTTP server prints once it serves.
pub const RAW_HTTP_SERVING: &str = "raw http serving";

/// `sf-bench --raw-http-server`: the bridge's baseline, a bare axum echo on a multi-thread
/// runtime in its own process (as the bridge runs). Binds 127.0.0.1 on an ephemeral port,
/// prints `raw http serving addr=...` on stderr, exits when its stdin closes.
pub fn raw_http_server() -> std::process::ExitCode {
    std::thread::spawn(|| {
        use std::io::Read as _;
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    let rt = crate::util::runtime(Flavor::Multi);
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        eprintln!("{RAW_HTTP_SERVING} addr={}", listener.local_addr()?);
        axum::serve(listener, echo_router()).await?;
        anyhow::Ok(())
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raw http server failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Ready time, idle memory and load figures of one HTTP server process.
#[derive(Debug, Default)]
struct Served {
    echo: Option<Load>,
    bus: Option<anyhow::Result<Load>>,
    ready_ms: f64,
    rss_mib: Option<f64>,
}

/// Measures a started server: first 200, idle memory, then the echo load.
fn measure_server(config: &Config, proc: &mut Proc, addr: SocketAddr) -> anyhow::Result<Served> {
    let c = config.counts();
    let ready = wait_http_ok(
        proc,
        addr,
        "/api/v1/echo?message=hi",
        Duration::from_secs(15),
    )?;
    let ready_ms = (ready - proc.started).as_secs_f64() * 1000.0;
    std::thread::sleep(Duration::from_millis(500));
    let rss = rss_mib(proc.pid());
    let lim = Duration::from_secs(if config.short { 20 } else { 120 });
    let echo_req = request("GET", "/api/v1/echo?message=hi", None);
    let (total, conns) = (c.http_requests, c.http_connections);
    let echo = block_on(Flavor::Multi, lim, async move {
        let warm = (total / 10).max(10);
        load(addr, echo_req.clone(), warm, conns).await?;
        load(addr, echo_req, total, conns).await
    })?;
    Ok(Served {
        echo: Some(echo),
        bus: None,
        ready_ms,
        rss_mib: rss,
    })
}

/// The raw baseline in its own process (this binary re-run), or `None` without the binary.
fn run_raw(config: &Config) -> anyhow::Result<Served> {
    let exe = crate::resources::self_exe(config)
        .context("the sf-bench binary was not found (run it with `cargo run -p sf-bench`)")?;
    let mut proc = Proc::spawn(&exe, &["--raw-http-server"], None)?;
    let (line, _) = proc.wait_line(RAW_HTTP_SERVING, Duration::from_secs(10))?;
    let addr: SocketAddr = line
        .split("addr=")
        .nth(1)
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no address in {line:?}"))?;
    measure_server(config, &mut proc, addr)
}

fn run_bridge(config: &Config, bin: &Path) -> anyhow::Result<Served> {
    let c = config.counts();
    let dir = crate::resources::scratch("bridge")?;
    // The bus-backed route needs an echo_replyer on the bus.
    let mut replyer = None;
    let mut bus_note = None;
    match config.find_bin("echo_replyer") {
        Some(er) => {
            let addresses = dir.join("replyer_addresses.json");
            std::fs::write(
                &addresses,
                r#"{"connections": {"in": {"reply": {"replyer": "127.0.0.1:0"}}, "out": {}}, "states": {"in": {}, "out": {}}}"#,
            )?;
            let path = addresses.to_string_lossy().into_owned();
            let mut p = Proc::spawn(&er, &["-a", &path], None)?;
            let (line, _) = p.wait_line("replyer serving", Duration::from_secs(10))?;
            let ep = crate::procs::endpoint_in(&line).context("no endpoint")?;
            replyer = Some((p, ep));
        }
        None => bus_note = Some("echo_replyer not built (cargo build -p sf-examples)"),
    }
    let port = free_port()?;
    let mut toml =
        String::from("load_builtin_plugins = [\"echo\"]\n\n[server]\nhost = \"127.0.0.1\"\n");
    toml.push_str(&format!("port = {port}\n"));
    if let Some((_, ep)) = &replyer {
        toml.push_str(&format!(
            "\n[bus.routes.\"/api/v1/bus/echo\"]\nrequester = \"{ep}\"\nmethod = \"POST\"\n"
        ));
    }
    std::fs::write(dir.join("config.toml"), toml)?;
    let port_s = port.to_string();
    let args = [
        "--host",
        "127.0.0.1",
        "--port",
        &port_s,
        "--load-builtin-plugins",
        "echo",
    ];
    let mut proc = Proc::spawn(bin, &args, Some(&dir))?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut served = measure_server(config, &mut proc, addr)?;
    let lim = Duration::from_secs(if config.short { 20 } else { 120 });
    let bus = replyer.as_ref().map(|_| {
        let req = request("POST", "/api/v1/bus/echo", Some(r#"{"to_echo": "hi"}"#));
        let (total, conns) = (c.http_requests, c.http_connections);
        block_on(Flavor::Multi, lim, async move {
            let warm = (total / 10).max(10);
            let w = load(addr, req.clone(), warm, conns).await?;
            anyhow::ensure!(
                w.ok > 0,
                "POST /api/v1/bus/echo never answered 200 ({} errors)",
                w.errors
            );
            load(addr, req, total, conns).await
        })
    });
    drop(proc);
    drop(replyer);
    let _ = std::fs::remove_dir_all(&dir);
    served.bus = bus.or_else(|| bus_note.map(|n| Err(anyhow::anyhow!("not measured: {n}"))));
    Ok(served)
}

/// Runs the bridge pattern.
pub fn run(config: &Config) -> PatternReport {
    let c = config.counts();
    let mut p = PatternReport::new(
        "bridge",
        "HTTP bridge under a loopback load generator vs a raw axum server",
    );
    // Single runs move by up to 1.3x on this kind of VM, and p50 sits near its target: each
    // server runs three times, alternating, and the run with the median echo throughput is
    // reported (its p50 and p99 with it).
    let runs = if config.short { 1 } else { 3 };
    let bin = config.find_bin(BRIDGE_BIN);
    let (mut raws, mut bridges) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        raws.push(run_raw(config));
        bridges.push(match &bin {
            None => Err(anyhow::anyhow!(
                "not measured: bridge not available ({BRIDGE_BIN} not built; cargo build{} -p sf-bridge)",
                if cfg!(debug_assertions) { "" } else { " --release" }
            )),
            Some(bin) => run_bridge(config, bin)
                .map_err(|e| anyhow::anyhow!("not measured: bridge not available ({e:#})")),
        });
    }
    let echo_rate = |s: &Served| s.echo.map_or(0.0, |l| l.per_s);
    let raw = crate::util::median_run(raws, echo_rate);
    let r = raw.as_ref().ok().and_then(|s| s.echo);
    let bridge = crate::util::median_run(bridges, echo_rate);
    let f = bridge.as_ref().ok();
    let echo = f.and_then(|b| b.echo);
    let mut rps = Row::new("GET /api/v1/echo", "requests/s", "req/s")
        .fw(echo.map(|l| l.per_s))
        .raw(r.map(|l| l.per_s))
        .target(Target::AtLeast(50_000.0))
        .target(Target::RatioAtLeast(0.8));
    let mut notes = Vec::new();
    if let Err(e) = &bridge {
        notes.push(format!("{e:#}"));
    }
    match &raw {
        Err(e) => notes.push(format!("raw axum failed: {e:#}")),
        Ok(_) => {
            if let Some(l) = r {
                notes.push(format!(
                    "raw = bare axum echo in its own process (sf-bench --raw-http-server), {} ok, {} errors",
                    l.ok, l.errors
                ))
            }
        }
    }
    if let Some(l) = echo {
        notes.push(format!("bridge {} ok, {} errors", l.ok, l.errors));
    }
    rps = rps.note(notes.join("; "));
    p.push(rps);
    p.push(
        Row::new("GET /api/v1/echo", "p50 latency", "us")
            .fw(echo.map(|l| l.latency.p50_us))
            .raw(r.map(|l| l.latency.p50_us))
            .target(Target::RatioAtMost(1.25)),
    );
    p.push(
        Row::new("GET /api/v1/echo", "p99 latency", "us")
            .fw(echo.map(|l| l.latency.p99_us))
            .raw(r.map(|l| l.latency.p99_us)),
    );
    let bus = f.and_then(|b| b.bus.as_ref());
    let bus_ok = bus.and_then(|b| b.as_ref().ok());
    let mut row = Row::new("POST /api/v1/bus/echo (bus-backed)", "requests/s", "req/s")
        .fw(bus_ok.map(|l| l.per_s))
        .target(Target::AtLeast(20_000.0));
    row = match (bus, &bridge) {
        (Some(Err(e)), _) => row.note(format!("{e:#}")),
        (Some(Ok(l)), _) => row.note(format!(
            "-> echo_replyer process over the bus; {} ok, {} errors; p50 {:.0} us, p99 {:.0} us",
            l.ok, l.errors, l.latency.p50_us, l.latency.p99_us
        )),
        (None, _) => row.note("not measured: bridge not available"),
    };
    p.push(row);
    p.push(
        Row::new("idle bridge", "resident memory", "MiB")
            .fw(f.and_then(|b| b.rss_mib))
            .raw(raw.as_ref().ok().and_then(|b| b.rss_mib))
            .note("after ready, before load"),
    );
    p.push(
        Row::new("bridge start", "to first 200", "ms")
            .fw(f.map(|b| b.ready_ms))
            .raw(raw.as_ref().ok().map(|b| b.ready_ms))
            .target(Target::AtMost(50.0)),
    );
    p.note(format!(
        "{} requests over {} keep-alive connections per run, after a warm-up of a tenth; the run with the median echo throughput of {runs} per server",
        c.http_requests, c.http_connections
    ));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_framed() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhiHTTP/1.1";
        assert_eq!(parse_response(r).unwrap(), Some((200, r.len() - 8)));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhi").unwrap(),
            None
        );
        let c = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
        assert_eq!(parse_response(c).unwrap(), Some((404, c.len())));
        assert_eq!(parse_response(&c[..c.len() - 2]).unwrap(), None);
    }
}
