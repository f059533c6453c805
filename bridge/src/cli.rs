//! The command line of `service-framework-bridge` (run directly, or as
//! `service-framework -s bridge ...`, which passes every argument on):
//!
//! ```text
//! --host HOST  --port PORT  --load-plugins NAME (repeatable)  --load-builtin-plugins NAME
//! (repeatable)  --enable-proxy / --no-enable-proxy  --num-cpus N  --dashboard-host HOST
//! --dashboard-port PORT  --no-use-ray                    FrameX's `framex run` flags
//! -s bridge  -a addresses.json  -c config.json  -cl LEVEL  -f LEVEL  -l LOG  -bc N
//!                                                        service-framework's flags
//! --serve-plugins NAME (repeatable)                      no HTTP: serve these plugins as
//!                                                        workers behind their broker
//! ```
//!
//! A program with its own plugins has the same command line:
//! `fn main() -> ExitCode { sf_bridge::cli::main(vec![my_plugin()]) }`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use service_framework::cli::{log_flag, ArgWalker};
use service_framework::logging::{self, LogOptions};
use service_framework::AddressesFile;

use crate::config::{CliOverrides, Settings, Sources};
use crate::error::{Error, Result};
use crate::plugin::Plugin;
use crate::server::Bridge;

/// The usage text.
pub const USAGE: &str = "\
usage: service-framework -s bridge [--host HOST] [--port PORT] [--load-plugins NAME]...
                         [--load-builtin-plugins NAME]... [--enable-proxy|--no-enable-proxy]
                         [--num-cpus N] [--dashboard-host HOST] [--dashboard-port PORT]
                         [--no-use-ray] [-a addresses.json] [-c config.json] [-cl LEVEL]
                         [-f LEVEL] [-l LOG]
       service-framework -s bridge --serve-plugins NAME... [-c config.json] [-cl LEVEL]

The HTTP bridge: plugins, bus services and upstream OpenAPI services under /api/v1, with
/docs, /redoc and /api/v1/openapi.json. Settings come from [tool.framex] in pyproject.toml
and config.toml in the working directory, .env, .env.prod, the environment
(SERVER__PORT=9000) and these flags, the later overriding the earlier.

  --host HOST                  bind address (server.host, 127.0.0.1)
  --port PORT                  port (server.port, 8080; 0 picks one)
  --load-plugins NAME          load a plugin linked into this binary, or a [bus.services] one
  --load-builtin-plugins NAME  load a built-in plugin: echo (repeatable)
  --enable-proxy               forward the upstreams of [plugins.proxy] proxy_urls
  --no-enable-proxy            do not, whatever the config says
  --num-cpus N                 worker threads serving requests (2)
  --dashboard-host HOST        accepted for FrameX start scripts; there is no Ray dashboard
  --dashboard-port PORT          here, so both are ignored (a log line says so)
  --no-use-ray                 accepted (the only mode); --use-ray is refused
  --serve-plugins NAME         serve no HTTP: run plugin NAME (linked into this binary) as
                               workers registered with the broker of [plugins.NAME.remote]
                               (repeatable); bridges configured the same way call them
  -a, --addresses_path FILE    addresses.json: bus routes by connection name
  --security FILE              bus security: CURVE keys towards bus services (else SF_SECURITY)
  -c, --config_path FILE       config.json with the keys of config.toml (above it)
  -cl, --console_loglevel L    DEBUG|INFO|WARNING|ERROR (INFO)
  -f, --file_loglevel L        level of the log file     -l, --log_path FILE  log file
  -bc, --backup_count N        hourly log files kept (24)
  -h, --help                   this text                 --version  the version
";

/// Parsed arguments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Args {
    /// FrameX's flags.
    pub overrides: CliOverrides,
    /// `-a`.
    pub addresses: Option<PathBuf>,
    /// `--security FILE` (else `SF_SECURITY`): CURVE keys towards bus services.
    pub security: Option<PathBuf>,
    /// `-c`.
    pub config: Option<PathBuf>,
    /// `-cl`, `-f`, `-l`, `-bc`.
    pub log: LogOptions,
    /// `-h`.
    pub help: bool,
    /// `--version`.
    pub version: bool,
    /// `describe`.
    pub describe: bool,
    /// `--num-cpus`: the runtime's worker threads.
    pub num_cpus: Option<usize>,
    /// `--dashboard-host` / `--dashboard-port`: FrameX's Ray dashboard; accepted, unused.
    pub dashboard: Vec<String>,
    /// `--serve-plugins`: run these plugins as workers behind their broker, no HTTP.
    pub serve_plugins: Vec<String>,
}

/// Parses arguments (without the program name). Unknown flags are an error naming them.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Args> {
    let args = ArgWalker::strings(args).map_err(Error::Config)?;
    let mut out = Args::default();
    let mut start = 0;
    if args.first().map(String::as_str) == Some("describe") {
        out.describe = true;
        start = 1;
    }
    let mut words = ArgWalker::new(args, start);
    while let Some((flag, _raw)) = words.next_word() {
        if log_flag(&mut out.log, &flag, &mut words).map_err(Error::Config)? {
            continue;
        }
        let mut value = |name: &str| words.value(name).map_err(Error::Config);
        match flag.as_str() {
            "--host" => out.overrides.host = Some(value(&flag)?),
            "--port" => {
                let v = value(&flag)?;
                out.overrides.port = Some(v.parse().map_err(|_| {
                    Error::Config(format!("--port needs a port number (0-65535), got {v:?}"))
                })?);
            }
            "--load-plugins" => out.overrides.load_plugins.push(value(&flag)?),
            "--load-builtin-plugins" => out.overrides.load_builtin_plugins.push(value(&flag)?),
            "--serve-plugins" => out.serve_plugins.push(value(&flag)?),
            "--enable-proxy" => out.overrides.enable_proxy = Some(true),
            "--num-cpus" => {
                let v = value(&flag)?;
                let n: usize = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| {
                        Error::Config(format!(
                            "--num-cpus needs a number of threads (1-1024), got {v:?}"
                        ))
                    })?;
                out.num_cpus = Some(n);
            }
            "--dashboard-host" | "--dashboard-port" => {
                let v = value(&flag)?;
                if flag == "--dashboard-port" && v.parse::<u16>().is_err() {
                    return Err(Error::Config(format!(
                        "--dashboard-port needs a port number (0-65535), got {v:?}"
                    )));
                }
                out.dashboard.push(format!("{flag} {v}"));
            }
            "--no-use-ray" => {}
            "--use-ray" => {
                return Err(Error::Config(
                    "--use-ray: there is no Ray in this bridge; plugins run in this process \
                     (--num-cpus sets its threads) and distributed work belongs in services on \
                     the bus (bus.routes); start without --use-ray"
                        .into(),
                ))
            }
            "--no-enable-proxy" => out.overrides.enable_proxy = Some(false),
            "-s" | "--service_path" => {
                value(&flag)?;
            }
            "-a" | "--addresses_path" => out.addresses = Some(value(&flag)?.into()),
            "--security" => out.security = Some(value(&flag)?.into()),
            "-c" | "--config_path" => out.config = Some(value(&flag)?.into()),
            // Accepted for the service-framework command line; a bridge has no main mode and
            // never polls.
            "-m" | "--main_mode" => {}
            "-wt" | "--service_loop_min_wait_time_s" => {
                value(&flag)?;
            }
            "-h" | "--help" => out.help = true,
            "--version" | "-V" => out.version = true,
            other => {
                return Err(Error::Config(format!(
                    "unknown argument {other:?} (see --help)"
                )))
            }
        }
    }
    Ok(out)
}

/// The bridge's `main`: parses the command line, loads settings, serves until SIGINT or
/// SIGTERM. Exit 0 after a graceful stop, 2 for a config mistake, 1 otherwise.
pub fn main(plugins: Vec<Plugin>) -> ExitCode {
    let args = match parse(std::env::args_os().skip(1)) {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    if args.help {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if args.version {
        println!("service-framework-bridge {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if args.describe {
        let mut names: Vec<String> = plugins.iter().map(|p| p.name().to_owned()).collect();
        names.sort();
        println!(
            "{}",
            serde_json::json!({
                "name": "bridge",
                "description": "HTTP bridge: plugins, bus services and upstream OpenAPI services under /api/v1",
                "builtin_plugins": ["echo", "proxy"],
                "plugins": names,
                "config": ["server.host", "server.port", "server.enable_proxy", "load_plugins",
                    "load_builtin_plugins", "plugins.<name>", "plugins.<name>.remote", "auth.rules", "auth.oauth", "bus.routes", "bus.streams", "bus.states", "bus.services", "bus.auto_routes",
                    "server.timestamp_offset", "server.strict_validation", "metrics.control", "metrics.up", "metrics.timeout_s"],
            })
        );
        return ExitCode::SUCCESS;
    }
    let _guard = match logging::init(&args.log) {
        Ok(g) => g,
        Err(e) => return fail(&Error::Config(e.to_string())),
    };
    if !args.dashboard.is_empty() {
        tracing::info!(
            "ignored (there is no Ray dashboard in this bridge): {}",
            args.dashboard.join(", ")
        );
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.num_cpus.unwrap_or(2))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&Error::Server(format!("cannot start the runtime: {e}"))),
    };
    let spans = service_framework::cli::export_spans_from_env();
    let result = rt.block_on(run(args, plugins));
    drop(rt);
    spans.finish();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

async fn run(args: Args, plugins: Vec<Plugin>) -> Result<()> {
    let settings = Settings::load(&Sources::from_process(
        args.overrides.clone(),
        args.config.clone(),
    ))?;
    let mut bridge = Bridge::new(settings).plugins(plugins);
    if let Some(path) = &args.addresses {
        let file = AddressesFile::read(path).map_err(|e| Error::Config(e.to_string()))?;
        bridge = bridge.addresses(file);
    }
    if let Some(s) =
        service_framework::security::SecuritySettings::from_flag_or_env(args.security.as_deref())
            .map_err(|e| Error::Config(e.to_string()))?
    {
        bridge = bridge.security(s);
    }
    if !args.serve_plugins.is_empty() {
        return serve_plugins(bridge, &args.serve_plugins).await;
    }
    let running = bridge.start().await?;
    // Handlers go in before the announcement, so a signal sent as soon as it is read is
    // already a graceful stop.
    let stop = signals()?;
    // The line scripts and tests wait for.
    println!("bridge serving on {}", running.url());
    let ready_file = service_framework::cli::ReadyFile::from_env();
    if let Some(f) = &ready_file {
        f.write(&serde_json::json!({
            "service": "bridge",
            "pid": std::process::id(),
            "url": running.url(),
        }));
    }
    let reason = stop.await;
    tracing::info!("bridge stopping on {reason}");
    running.stop().await;
    drop(ready_file);
    Ok(())
}

/// `--serve-plugins`: workers until SIGINT or SIGTERM.
async fn serve_plugins(bridge: Bridge, names: &[String]) -> Result<()> {
    let workers = bridge.serve_plugins(names).await?;
    let stop = signals()?;
    tokio::pin!(stop);
    println!("plugin workers starting: {}", workers.summary());
    let ready_file = service_framework::cli::ReadyFile::from_env();
    let reason = tokio::select! {
        r = &mut stop => r,
        () = workers.all_registered() => {
            // The line scripts and tests wait for: the broker knows every worker.
            println!("plugin workers registered: {}", workers.summary());
            if let Some(f) = &ready_file {
                f.write(&serde_json::json!({
                    "service": "plugin-workers",
                    "pid": std::process::id(),
                    "plugins": names,
                }));
            }
            stop.await
        }
    };
    tracing::info!("plugin workers stopping on {reason}");
    workers.stop().await;
    drop(ready_file);
    Ok(())
}

/// SIGINT or SIGTERM, with the handlers installed now.
#[cfg(unix)]
fn signals() -> Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Error::Server(format!("cannot install a SIGTERM handler: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Error::Server(format!("cannot install a SIGINT handler: {e}")))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

#[cfg(not(unix))]
fn signals() -> Result<impl std::future::Future<Output = &'static str>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    })
}

/// Prints `error: ...` and picks the exit code.
pub fn fail(e: &Error) -> ExitCode {
    eprintln!("error: {e}");
    match e {
        Error::Config(_) => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(words: &[&str]) -> Result<Args> {
        parse(words.iter().map(OsString::from))
    }

    #[test]
    fn framex_and_service_framework_flags() {
        let a = p(&[
            "-s",
            "bridge",
            "--port",
            "8080",
            "--load-builtin-plugins",
            "echo",
            "--load-plugins",
            "a",
            "--load-plugins=b",
            "--enable-proxy",
            "-a",
            "x.json",
            "-cl",
            "DEBUG",
        ])
        .unwrap();
        assert_eq!(a.overrides.port, Some(8080));
        assert_eq!(a.overrides.load_builtin_plugins, vec!["echo"]);
        assert_eq!(a.overrides.load_plugins, vec!["a", "b"]);
        assert_eq!(a.overrides.enable_proxy, Some(true));
        assert_eq!(a.addresses, Some("x.json".into()));
        assert_eq!(a.log.console_level, "DEBUG");
        assert_eq!(
            p(&["--no-enable-proxy"]).unwrap().overrides.enable_proxy,
            Some(false)
        );
    }

    #[test]
    fn framex_start_script_flags() {
        let a = p(&[
            "--num-cpus",
            "3",
            "--dashboard-host",
            "0.0.0.0",
            "--dashboard-port",
            "8265",
            "--no-use-ray",
        ])
        .unwrap();
        assert_eq!(a.num_cpus, Some(3));
        assert_eq!(a.dashboard.len(), 2);
        let e = p(&["--use-ray"]).unwrap_err().to_string();
        assert!(e.contains("--use-ray") && e.contains("no Ray"), "{e}");
        assert!(p(&["--num-cpus", "0"])
            .unwrap_err()
            .to_string()
            .contains("--num-cpus"));
        assert!(p(&["--dashboard-port", "x"])
            .unwrap_err()
            .to_string()
            .contains("--dashboard-port"));
    }

    #[test]
    fn mistakes_are_named() {
        assert!(p(&["--prot", "1"])
            .unwrap_err()
            .to_string()
            .contains("--prot"));
        assert!(p(&["--port", "x"])
            .unwrap_err()
            .to_string()
            .contains("--port"));
        assert!(p(&["--host"])
            .unwrap_err()
            .to_string()
            .contains("needs a value"));
    }
}
