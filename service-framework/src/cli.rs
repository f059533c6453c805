//! The command line, with the original's flags:
//!
//! ```text
//! -s/--service_path   service to run: built-in `bus` or `broker`, or a service binary (path or name)
//! -a/--addresses_path addresses.json          -c/--config_path   config.json
//! -m/--main_mode      run `main`              -cl/--console_loglevel  INFO
//! -f/--file_loglevel  INFO                    -l/--log_path      log file (hourly rotation)
//! -bc/--backup_count  24                      -wt/--service_loop_min_wait_time_s (accepted;
//!                                              the loop never polls, so it has no effect)
//! --key value         any other pair is a config key, converted to its declared type
//! ```
//!
//! Subcommands: `describe` prints a service's models as JSON Schema; `call ADDRESS JSON`
//! sends one request to a replyer and prints the reply; `subscribe ADDRESS` prints what a
//! publisher (or a bus) publishes, one JSON line per message.
//!
//! Multi-letter short flags (`-cl`) are the original's and are accepted as such.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::addresses::AddressesFile;
use crate::config::env_overrides;
/// The config file's reader and the `--key value` parser, for binaries with built-ins of
/// their own (the `broker` built-in uses them).
pub use crate::config::{pairs_from_extras, read_config_file};
use crate::error::{Error, Result};
use crate::logging::{self, LogOptions};
use crate::model::ServiceDef;
use crate::runtime::RunOptions;
/// Resolves on SIGINT or SIGTERM with which one: the stop a binary's own loop waits on.
pub use crate::service::os_signals;
use crate::service::Service;

/// Parsed command line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CliArgs {
    /// `describe`, `call`, `subscribe` or none (run).
    pub command: Option<String>,
    /// Positional words after the subcommand.
    pub positional: Vec<String>,
    /// `-s`.
    pub service: Option<String>,
    /// `-a`.
    pub addresses: Option<PathBuf>,
    /// `-c`.
    pub config: Option<PathBuf>,
    /// `-m`.
    pub main_mode: bool,
    /// `-cl`, `-f`, `-l`, `-bc`.
    pub log: LogOptions,
    /// `-wt` (accepted for compatibility).
    pub min_wait_s: Option<f64>,
    /// `-h`.
    pub help: bool,
    /// `--version`.
    pub version: bool,
    /// `--timeout` for `call` and `subscribe` (seconds).
    pub timeout_s: Option<f64>,
    /// `--topic` for `subscribe`.
    pub topic: Option<String>,
    /// `--count` for `subscribe`: stop after this many messages.
    pub count: Option<u64>,
    /// `--envelope` for `subscribe`: print topic, workflow id and sequence beside the args.
    pub envelope: bool,
    /// `--json` for `ping`, `info`, `stats`, `ls`: raw JSON lines.
    pub json: bool,
    /// `--up` for `ping`, `info`, `stats`, `ls`: every instance of the running `up`s.
    pub up: bool,
    /// `--watch [SECONDS]` for `stats`: redraw every SECONDS (2), with rates.
    pub watch_s: Option<f64>,
    /// Everything else: `--key value` config pairs.
    pub extras: Vec<String>,
}

/// The introspection verbs (see [`crate::inspect`]).
pub const INSPECT_VERBS: &[&str] = &["ping", "info", "stats", "ls", "health"];

/// Reads one of the logging flags (`-cl`, `-f`, `-l`, `-bc`) into `log`, taking its value
/// from `words`; `Ok(false)` for any other flag. Both command lines (services and the bridge)
/// take these flags through here.
pub fn log_flag(
    log: &mut LogOptions,
    flag: &str,
    words: &mut ArgWalker,
) -> std::result::Result<bool, String> {
    match flag {
        "-cl" | "--console_loglevel" => log.console_level = words.value(flag)?,
        "-f" | "--file_loglevel" => log.file_level = words.value(flag)?,
        "-l" | "--log_path" => log.log_path = Some(words.value(flag)?.into()),
        "-bc" | "--backup_count" => {
            let v = words.value(flag)?;
            log.backup_count = v
                .parse()
                .map_err(|_| format!("{flag} needs a whole number, got {v:?}"))?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// The usage text.
pub const USAGE: &str = "\
usage: service-framework -s SERVICE [-a addresses.json] [-c config.json] [-m] [options] [--key value ...]
       service-framework describe -s SERVICE
       service-framework call ADDRESS '{\"arg\": ...}' [--timeout SECONDS]
       service-framework subscribe ADDRESS [--topic TOPIC] [--count N] [--timeout SECONDS] [--envelope]
       service-framework ls|ping|info|stats|health [ADDRESS...|FILE.toml] [--up] [--json] [--timeout SECONDS]
                                                 running services through their control endpoints
                                                 (FILE.toml: the running `up` of that file; nothing:
                                                 every running `service-framework up`)
       service-framework stats --watch [SECONDS] [ADDRESS...]   redrawn in place, with rates
       service-framework keygen [--out DIR] [NAME]     a CURVE key pair, NAME.key and NAME.key_secret
       service-framework up [--check] [FILE]           every service of a topology file, by one command
       service-framework metrics [--listen HOST:PORT] [ADDRESS...] [--up]
                                                 their stats as a Prometheus scrape target (/metrics)
       service-framework new plugin NAME [--dir DIR] [--path CHECKOUT]
                                                 a bridge plugin in a crate of its own, with a bridge
                                                 binary linking it (new --help says more)

  -s,  --service_path      built-in service (bus, broker, bridge) or a service binary: a path, or a name found
                           beside this executable or on PATH
  -a,  --addresses_path    addresses.json          -c, --config_path   config.json
  -m,  --main_mode         run the service's main (a leading-edge service)
  -cl, --console_loglevel  DEBUG|INFO|WARNING|ERROR|CRITICAL (INFO)
  -f,  --file_loglevel     level of the log file (INFO)
  -l,  --log_path          log file, rotated hourly
  -bc, --backup_count      hourly log files kept (24)
  -wt, --service_loop_min_wait_time_s  accepted for compatibility (the loop never polls)
  --security FILE          bus security (CURVE keys per connection); else environment SF_SECURITY
  -h,  --help              this text           --version           the version
  --KEY VALUE              any other pair sets config key KEY (converted to its declared type);
                           environment SF_CONFIG_<KEY> does the same, below the command line
";

/// Walks command-line words the way the original's argparse reads them: `--flag value`,
/// `--flag=value`, and its multi-letter short flags (`-cl INFO`). Shared by every binary of
/// the framework that takes the original's flags.
#[derive(Debug)]
pub struct ArgWalker {
    args: Vec<String>,
    next: usize,
    inline: Option<String>,
}

impl ArgWalker {
    /// Walks `args` (without the program name) from word `start`.
    pub fn new(args: Vec<String>, start: usize) -> Self {
        ArgWalker {
            args,
            next: start,
            inline: None,
        }
    }

    /// Converts OS arguments, refusing any that is not UTF-8.
    pub fn strings(
        args: impl IntoIterator<Item = OsString>,
    ) -> std::result::Result<Vec<String>, String> {
        args.into_iter()
            .map(|a| {
                a.into_string()
                    .map_err(|a| format!("argument {a:?} is not UTF-8"))
            })
            .collect()
    }

    /// The next word as `(flag, raw word)`: `--flag=value` gives `("--flag", ...)` and keeps
    /// the value for [`ArgWalker::value`]; any other word is its own flag.
    pub fn next_word(&mut self) -> Option<(String, String)> {
        let raw = self.args.get(self.next)?.clone();
        self.next += 1;
        let (flag, inline) = match raw.split_once('=') {
            Some((f, v)) if f.starts_with('-') => (f.to_owned(), Some(v.to_owned())),
            _ => (raw.clone(), None),
        };
        self.inline = inline;
        Some((flag, raw))
    }

    /// The value of the flag just read: its `=value`, else the next word.
    pub fn value(&mut self, flag: &str) -> std::result::Result<String, String> {
        if let Some(v) = self.inline.take() {
            return Ok(v);
        }
        let v = self
            .args
            .get(self.next)
            .cloned()
            .ok_or_else(|| format!("{flag} needs a value"))?;
        self.next += 1;
        Ok(v)
    }

    /// The `=value` of the flag just read, if it had one and it was not taken.
    pub fn take_inline(&mut self) -> Option<String> {
        self.inline.take()
    }
}

/// Parses arguments (without the program name).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<CliArgs> {
    let args = ArgWalker::strings(args).map_err(Error::Other)?;
    let mut out = CliArgs::default();
    let mut start = 0;
    if let Some(first) = args.first() {
        if matches!(first.as_str(), "describe" | "call" | "subscribe")
            || INSPECT_VERBS.contains(&first.as_str())
        {
            out.command = Some(first.clone());
            start = 1;
        }
    }
    let inspecting = out
        .command
        .as_deref()
        .is_some_and(|c| INSPECT_VERBS.contains(&c));
    let mut words = ArgWalker::new(args, start);
    let mut after_watch = false;
    while let Some((flag, raw)) = words.next_word() {
        if std::mem::take(&mut after_watch) {
            if let Ok(secs) = raw.parse::<f64>() {
                out.watch_s = Some(secs.max(0.1));
                continue;
            }
        }
        if log_flag(&mut out.log, &flag, &mut words).map_err(Error::Other)? {
            continue;
        }
        let mut value = |name: &str| words.value(name).map_err(Error::Other);
        match flag.as_str() {
            "-s" | "--service_path" => out.service = Some(value(&flag)?),
            "-a" | "--addresses_path" => out.addresses = Some(value(&flag)?.into()),
            "-c" | "--config_path" => out.config = Some(value(&flag)?.into()),
            "-m" | "--main_mode" => out.main_mode = true,
            "-wt" | "--service_loop_min_wait_time_s" => {
                let v = value(&flag)?;
                out.min_wait_s = Some(
                    v.parse()
                        .map_err(|_| Error::Other(format!("{flag} needs a number, got {v:?}")))?,
                );
            }
            "--json" if inspecting => out.json = true,
            "--up" if inspecting => out.up = true,
            "--watch" if out.command.as_deref() == Some("stats") => {
                out.watch_s = Some(2.0);
                match words.take_inline() {
                    Some(v) => {
                        let secs: f64 = v.parse().map_err(|_| {
                            Error::Other(format!("--watch needs seconds, got {v:?}"))
                        })?;
                        out.watch_s = Some(secs.max(0.1));
                    }
                    None => after_watch = true,
                }
            }
            "--timeout"
                if inspecting || matches!(out.command.as_deref(), Some("call" | "subscribe")) =>
            {
                let v = value(&flag)?;
                out.timeout_s = Some(
                    v.parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s > 0.0)
                        .ok_or_else(|| {
                            Error::Other(format!("--timeout needs seconds above 0, got {v:?}"))
                        })?,
                );
            }
            "--topic" if out.command.as_deref() == Some("subscribe") => {
                out.topic = Some(value(&flag)?);
            }
            "--count" if out.command.as_deref() == Some("subscribe") => {
                let v = value(&flag)?;
                out.count = Some(v.parse().map_err(|_| {
                    Error::Other(format!("--count needs a whole number, got {v:?}"))
                })?);
            }
            "--envelope" if out.command.as_deref() == Some("subscribe") => out.envelope = true,
            "-h" | "--help" => out.help = true,
            "--version" | "-V" => out.version = true,
            _ if out.command.is_some() && !raw.starts_with('-') && out.extras.is_empty() => {
                out.positional.push(raw)
            }
            _ => {
                out.extras.push(flag);
                if let Some(v) = words.take_inline() {
                    out.extras.push(v);
                }
            }
        }
    }
    Ok(out)
}

/// Loads config (file < environment < CLI extras, typed per the model) and addresses.
pub(crate) fn load_run_options(def: &ServiceDef, args: &CliArgs) -> Result<RunOptions> {
    let mut config = match &args.config {
        Some(path) => read_config_file(path)?,
        None => Map::new(),
    };
    let origin = args.config.as_ref().map_or_else(
        || "no config file given (-c)".to_owned(),
        |p| p.display().to_string(),
    );
    // Where each key not from the file came from, so that errors blame the right source.
    let mut sources = BTreeMap::new();
    let env = env_overrides(&def.config);
    for (key, _) in &env {
        sources.insert(
            key.clone(),
            format!("environment SF_CONFIG_{}", key.to_uppercase()),
        );
    }
    def.config.apply_strings(&mut config, env, "environment")?;
    let (security, extras) = security_flag(&args.extras)?;
    let extras = pairs_from_extras(&extras)?;
    for (key, _) in &extras {
        sources.insert(key.clone(), format!("command line --{key}"));
    }
    def.config
        .apply_strings(&mut config, extras, "command line")?;
    let (addresses, addresses_origin) = match &args.addresses {
        Some(path) => (AddressesFile::read(path)?, path.display().to_string()),
        None => (
            AddressesFile::default(),
            "addresses (none given: use -a addresses.json)".to_owned(),
        ),
    };
    Ok(RunOptions {
        config,
        config_origin: origin,
        config_sources: sources,
        addresses,
        addresses_origin,
        main_mode: args.main_mode,
        security: crate::security::SecuritySettings::from_flag_or_env(security.as_deref())?,
        ..RunOptions::default()
    })
}

/// Takes `--security FILE` (bus security, see [`crate::security`]) out of the config pairs.
pub fn security_flag(extras: &[String]) -> Result<(Option<PathBuf>, Vec<String>)> {
    let mut rest = Vec::with_capacity(extras.len());
    let mut path = None;
    let mut words = extras.iter();
    while let Some(w) = words.next() {
        if w == "--security" {
            let v = words
                .next()
                .ok_or_else(|| Error::Config("--security needs a file".into()))?;
            path = Some(PathBuf::from(v));
        } else {
            rest.push(w.clone());
        }
    }
    Ok((path, rest))
}

/// `service-framework keygen [--out DIR] [NAME]`: a CURVE key pair as libzmq certificates,
/// `DIR/NAME.key` (public, to hand out) and `DIR/NAME.key_secret` (mode 0600), loadable by
/// pyzmq's `zmq.auth.load_certificate`. NAME defaults to `service`, DIR to `.`.
pub fn keygen_main(args: &[OsString]) -> ExitCode {
    const KEYGEN_USAGE: &str = "usage: service-framework keygen [--out DIR] [NAME]\n";
    let words = match ArgWalker::strings(args.iter().cloned()) {
        Ok(w) => w,
        Err(e) => return fail(&Error::Other(e)),
    };
    let (mut out, mut name) = (PathBuf::from("."), None);
    let mut walk = ArgWalker::new(words, 0);
    while let Some((flag, raw)) = walk.next_word() {
        match flag.as_str() {
            "--out" | "-o" => match walk.value(&flag) {
                Ok(v) => out = PathBuf::from(v),
                Err(e) => return fail(&Error::Other(e)),
            },
            "-h" | "--help" => {
                print!("{KEYGEN_USAGE}");
                return ExitCode::SUCCESS;
            }
            _ if !raw.starts_with('-') && name.is_none() => name = Some(raw),
            _ => {
                eprint!("{KEYGEN_USAGE}");
                return fail(&Error::Other(format!("keygen: unexpected {raw:?}")));
            }
        }
    }
    let name = name.unwrap_or_else(|| "service".to_owned());
    match crate::security::keygen(&out, &name) {
        Ok((public, secret, key)) => {
            // The public key only: the secret stays in its file.
            println!("public key: {key}");
            println!("public certificate: {}", public.display());
            println!("secret certificate: {} (keep it private)", secret.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// The `main` of a service binary: `fn main() -> ExitCode { cli::main(my_service()) }`.
/// Handles `describe`, `-h`, `--version` and running (exit 0 after a graceful stop, 2 for a
/// config or addresses mistake, 1 for any other failure).
pub fn main(def: ServiceDef) -> ExitCode {
    let args = match parse(std::env::args_os().skip(1)) {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    if args.help {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if args.version {
        println!(
            "{} (service-framework {})",
            def.name(),
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    if args.command.as_deref() == Some("describe") {
        println!(
            "{}",
            serde_json::to_string_pretty(&def.describe()).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    let _guard = match logging::init(&args.log) {
        Ok(g) => g,
        Err(e) => return fail(&e),
    };
    let spans = export_spans_from_env();
    if args.min_wait_s.is_some() {
        tracing::debug!(
            "-wt accepted for compatibility: the service loop waits on sockets, it never polls"
        );
    }
    let options = match load_run_options(&def, &args) {
        Ok(o) => o,
        Err(e) => return fail(&e),
    };
    let def_name = def.name().to_owned();
    let service = Service::new(def).options(options);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&Error::Other(e.to_string())),
    };
    // Installed before the sockets are bound: a signal during start-up stops gracefully.
    let signals = {
        let _in_runtime = rt.enter();
        os_signals()
    };
    let ready_file = ReadyFile::from_env();
    let name = def_name;
    let result = rt.block_on(service.run(signals, |ready| {
        for (name, ep) in &ready.endpoints {
            tracing::info!("{name}: {ep}");
        }
        match ready.control() {
            Some(control) => {
                tracing::info!(service = %name, pid = std::process::id(), control, "ready")
            }
            None => tracing::info!(service = %name, pid = std::process::id(), "ready"),
        }
        if let Some(f) = &ready_file {
            f.write(&serde_json::json!({
                "service": name,
                "pid": std::process::id(),
                "endpoints": ready.endpoints,
                "control": ready.control(),
            }));
        }
    }));
    drop(ready_file);
    spans.finish();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// The span export of a service binary: with the `otlp` feature and
/// `OTEL_EXPORTER_OTLP_ENDPOINT` set, every span goes to that collector (see `sf-otel`);
/// otherwise nothing.
#[derive(Debug)]
pub struct SpanExport {
    #[cfg(feature = "otlp")]
    guard: Option<sf_otel::OtelGuard>,
}

/// Starts [`SpanExport`] (call it after logging is set up: it logs where spans go).
pub fn export_spans_from_env() -> SpanExport {
    #[cfg(feature = "otlp")]
    {
        let guard = match sf_otel::install_from_env() {
            None => None,
            Some(Ok(g)) => {
                tracing::info!("spans exported over OTLP to {}", g.endpoint());
                Some(g)
            }
            Some(Err(e)) => {
                tracing::warn!("spans not exported: {e}");
                None
            }
        };
        SpanExport { guard }
    }
    #[cfg(not(feature = "otlp"))]
    SpanExport {}
}

impl SpanExport {
    /// Sends what is queued and stops (blocking; call it outside the runtime).
    pub fn finish(self) {
        #[cfg(feature = "otlp")]
        if let Some(g) = self.guard {
            if let Err(e) = g.shutdown() {
                tracing::warn!("the last spans were not exported: {e}");
            }
        }
    }
}

/// The variable naming the ready file: a supervisor (`service-framework up`, a Kubernetes
/// readiness probe) sets it, and the service writes the file once every socket is bound or
/// connecting, and removes it when it stops.
pub const READY_FILE_ENV: &str = "SF_READY_FILE";

/// The ready signal as a file: written (atomically: a temporary file renamed) once the
/// service is ready, removed when this value is dropped (at stop).
#[derive(Debug)]
pub struct ReadyFile {
    path: PathBuf,
}

impl ReadyFile {
    /// The file `SF_READY_FILE` names, if set and not empty.
    pub fn from_env() -> Option<ReadyFile> {
        std::env::var_os(READY_FILE_ENV)
            .filter(|p| !p.is_empty())
            .map(|p| ReadyFile { path: p.into() })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `content` (a JSON line) to the file. A failure is logged, never fatal: the
    /// service runs whether or not anybody watches it.
    pub fn write(&self, content: &Value) {
        let tmp = self.path.with_extension("tmp");
        let r = std::fs::write(&tmp, format!("{content}\n"))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = r {
            tracing::warn!("cannot write the ready file {}: {e}", self.path.display());
        }
    }
}

impl Drop for ReadyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Prints `error: ...` and picks the exit code.
pub fn fail(e: &Error) -> ExitCode {
    eprintln!("error: {e}");
    match e {
        Error::Config(_) | Error::Addresses(_) => ExitCode::from(2),
        Error::DrainIncomplete(_) => ExitCode::from(3),
        _ => ExitCode::from(1),
    }
}

/// `call ADDRESS JSON`: one request, the reply printed as JSON.
pub async fn call(address: &str, args_json: &str, timeout: Duration) -> Result<Value> {
    let args: Value = serde_json::from_str(args_json)
        .map_err(|e| Error::Other(format!("the args {args_json:?} are not JSON: {e}")))?;
    crate::testing::call_once::<Value, Value>(
        address,
        &args,
        sf_connections::WorkflowId::new_random(),
        timeout,
    )
    .await
    .map_err(|e| Error::Other(format!("{address}: {e}")))
}

/// What `subscribe` asks for.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Only this topic (empty: everything).
    pub topic: String,
    /// Stop after this many messages.
    pub count: Option<u64>,
    /// Fail when no message arrives for this long.
    pub timeout: Option<Duration>,
    /// Print `{topic, workflow_id, seq, args}` instead of the args alone.
    pub envelope: bool,
}

/// `subscribe ADDRESS`: connects a subscriber to a publisher's (or a bus's subscribers')
/// address and hands each message to `line` as JSON, until `count` messages, `stop`, `line`
/// returning false, or an idle `timeout` (an error naming how many arrived). Returns how many were received and how
/// many the subscriber counted as lost (sequence gaps from framework publishers).
pub async fn subscribe(
    address: &str,
    options: &SubscribeOptions,
    stop: impl std::future::Future<Output = ()>,
    mut line: impl FnMut(Value) -> bool,
) -> Result<(u64, u64)> {
    let mut sub = sf_connections::Subscriber::start(
        &sf_connections::Address::from(address),
        sf_connections::SubscriberOptions {
            topic: options.topic.clone(),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| Error::Other(format!("{address}: {e}")))?;
    let lost = |sub: &sf_connections::Subscriber| sub.stats().get(sf_connections::Counter::Lost);
    let mut received = 0u64;
    tokio::pin!(stop);
    while options.count.is_none_or(|n| received < n) {
        let next = async {
            match options.timeout {
                Some(t) => tokio::time::timeout(t, sub.next()).await.map_err(|_| t),
                None => Ok(sub.next().await),
            }
        };
        let delivery = tokio::select! {
            d = next => d,
            () = &mut stop => break,
        };
        let d = match delivery {
            Ok(Some(d)) => d,
            Ok(None) => return Err(Error::Other(format!("{address}: the subscriber closed"))),
            Err(t) => {
                return Err(Error::Other(format!(
                    "{address}: no message within {t:?} ({received} received)"
                )))
            }
        };
        received += 1;
        let args = match d.decode::<Value>() {
            Ok(p) => p.args,
            Err(e) => {
                // Shown, not dropped: what arrived is worth seeing even when it is not ours.
                serde_json::json!({"undecodable": e.to_string()})
            }
        };
        let go_on = line(if options.envelope {
            serde_json::json!({
                "topic": d.topic,
                "workflow_id": d.workflow_id.to_string(),
                "seq": d.seq.map(|(seq, _)| seq),
                "args": args,
            })
        } else {
            args
        });
        if !go_on {
            break;
        }
    }
    Ok((received, lost(&sub)))
}

/// Finds a service binary: a path as given, else a file named `name` beside `exe_dir`, else on
/// PATH.
pub fn find_service_binary(name: &str, exe_dir: Option<&Path>) -> Option<PathBuf> {
    let as_path = Path::new(name);
    if name.contains('/') {
        return as_path.is_file().then(|| as_path.to_path_buf());
    }
    if let Some(dir) = exe_dir {
        let p = dir.join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(words: &[&str]) -> CliArgs {
        parse(words.iter().map(OsString::from)).unwrap()
    }

    #[test]
    fn original_flags_including_multi_letter_shorts() {
        let a = p(&[
            "-s", "echo", "-a", "a.json", "-c", "c.json", "-m", "-cl", "DEBUG", "-f", "ERROR",
            "-l", "x.log", "-bc", "3", "-wt", "0.5",
        ]);
        assert_eq!(a.service.as_deref(), Some("echo"));
        assert_eq!(a.addresses, Some("a.json".into()));
        assert_eq!(a.config, Some("c.json".into()));
        assert!(a.main_mode);
        assert_eq!(a.log.console_level, "DEBUG");
        assert_eq!(a.log.file_level, "ERROR");
        assert_eq!(a.log.log_path, Some("x.log".into()));
        assert_eq!(a.log.backup_count, 3);
        assert_eq!(a.min_wait_s, Some(0.5));
        assert!(a.extras.is_empty());
    }

    #[test]
    fn unknown_pairs_become_extras() {
        let a = p(&["-s", "x", "--num_req_to_send", "10", "plain", "v", "--k=v"]);
        assert_eq!(
            a.extras,
            vec!["--num_req_to_send", "10", "plain", "v", "--k", "v"]
        );
    }

    #[test]
    fn subcommands() {
        let a = p(&["call", "127.0.0.1:1", "{}", "--timeout", "2"]);
        assert_eq!(a.command.as_deref(), Some("call"));
        assert_eq!(a.positional, vec!["127.0.0.1:1", "{}"]);
        assert_eq!(a.timeout_s, Some(2.0));
        assert_eq!(
            p(&["describe", "-s", "x"]).command.as_deref(),
            Some("describe")
        );
    }

    #[test]
    fn missing_values_are_errors() {
        assert!(parse(["-s"].map(OsString::from))
            .unwrap_err()
            .to_string()
            .contains("-s needs a value"));
        assert!(parse(["-bc", "x"].map(OsString::from))
            .unwrap_err()
            .to_string()
            .contains("whole number"));
    }
}
