//! `service-framework`: runs built-in services (`bus`) and user service binaries with the
//! original's flags, describes services, and calls replyers.
//!
//! ```text
//! service-framework -s echo_replyer -a examples/echo/replyer_addresses.json
//! service-framework -s bus -a bus_addresses.json
//! service-framework -s broker -a broker_addresses.json
//! service-framework call 127.0.0.1:18899 '{"to_echo": "hi"}'
//! service-framework subscribe 127.0.0.1:18900 --topic ticks --count 10
//! service-framework up examples/pipeline/pipeline.toml
//! service-framework new plugin notes --dir ../notes
//! ```

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use service_framework::cli::{self, CliArgs};
use service_framework::{AddressesFile, Error};

mod builtin_broker;
mod new_plugin;

const BUILT_INS: &str = "bus, broker, bridge";

/// The HTTP bridge lives in its own binary so that this one never compiles axum.
const BRIDGE_BINARY: &str = "service-framework-bridge";

/// `up` (topologies of services) lives in its own binary too: it reads TOML.
const UP_BINARY: &str = "service-framework-up";

/// The Prometheus exporter is served by the bridge's crate, for the same reason as the bridge.
const METRICS_BINARY: &str = "service-framework-metrics";

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    if argv.first().is_some_and(|a| a == "keygen") {
        return cli::keygen_main(&argv[1..]);
    }
    if argv.first().is_some_and(|a| a == "new") {
        return new_plugin::main(&argv[1..]);
    }
    if argv.first().is_some_and(|a| a == "up") {
        return exec_service(UP_BINARY, argv);
    }
    if argv.first().is_some_and(|a| a == "metrics") {
        return exec_service(METRICS_BINARY, argv[1..].to_vec());
    }
    let args = match cli::parse(argv.clone()) {
        Ok(a) => a,
        Err(e) => return cli::fail(&e),
    };
    if args.help || (args.command.is_none() && args.service.is_none() && !args.version) {
        print!("{}", cli::USAGE);
        return if args.help {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        };
    }
    if args.version {
        println!("service-framework {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    match args.command.as_deref() {
        Some("call") => call(&args),
        Some("subscribe") => subscribe(&args),
        Some(verb) if cli::INSPECT_VERBS.contains(&verb) => inspect(verb, &args),
        Some("describe") => match args.service.as_deref() {
            Some("bus") => {
                println!(
                    "{}",
                    serde_json::json!({
                        "name": "bus",
                        "description": "XSUB/XPUB proxy: publishers with is_x_pub connect to connections.in.bus.publishers, subscribers to connections.in.bus.subscribers",
                        "addresses": {"connections": {"in": {"bus": {"publishers": "host:port", "subscribers": "host:port"}}}}
                    })
                );
                ExitCode::SUCCESS
            }
            Some("broker") => {
                println!("{}", builtin_broker::describe());
                ExitCode::SUCCESS
            }
            Some("bridge") => exec_service(BRIDGE_BINARY, vec![OsString::from("describe")]),
            Some(name) => exec_service(name, vec![OsString::from("describe")]),
            None => cli::fail(&Error::Other("describe needs -s SERVICE".into())),
        },
        _ => match args.service.as_deref() {
            Some("bus") => run_bus(&args),
            Some("broker") => builtin_broker::run(&args),
            Some("bridge") => exec_service(BRIDGE_BINARY, argv),
            Some(name) => exec_service(name, argv),
            None => cli::fail(&Error::Other("-s SERVICE is required".into())),
        },
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Other(e.to_string()))
}

fn call(args: &CliArgs) -> ExitCode {
    let Some(address) = args.positional.first() else {
        return cli::fail(&Error::Other(
            "call needs an ADDRESS (host:port) and JSON args".into(),
        ));
    };
    let json = args.positional.get(1).map_or("{}", String::as_str);
    let timeout = Duration::from_secs_f64(args.timeout_s.unwrap_or(10.0).max(0.001));
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return cli::fail(&e),
    };
    match rt.block_on(cli::call(address, json, timeout)) {
        Ok(reply) => {
            println!("{reply}");
            ExitCode::SUCCESS
        }
        Err(e) => cli::fail(&e),
    }
}

/// `ls | ping | info | stats | health`: the control endpoints given, else every running
/// `service-framework up`'s instances.
fn inspect(verb: &str, args: &CliArgs) -> ExitCode {
    use service_framework::inspect::{self, InspectOptions, Target};
    let (files, addresses): (Vec<&String>, Vec<&String>) = args
        .positional
        .iter()
        .partition(|a| inspect::is_topology_file(a));
    let mut targets: Vec<Target> = addresses
        .into_iter()
        .map(|a| Target {
            address: a.clone(),
            instance: None,
        })
        .collect();
    for f in &files {
        let found = inspect::discover_topology(&std::env::temp_dir(), std::path::Path::new(f));
        if found.is_empty() {
            eprintln!("{f}: no running `service-framework up` of this file");
        }
        targets.extend(found);
    }
    if args.up || (targets.is_empty() && files.is_empty()) {
        targets.extend(inspect::discover_up(&std::env::temp_dir()));
    }
    let options = InspectOptions {
        json: args.json,
        watch: args.watch_s.map(Duration::from_secs_f64),
        timeout: Duration::from_secs_f64(args.timeout_s.unwrap_or(2.0).max(0.001)),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return cli::fail(&e),
    };
    rt.block_on(inspect::run(verb, &targets, &options))
}

/// Prints each message as one JSON line, flushed as it comes, so the output can be piped.
/// Ctrl-C or SIGTERM ends it (exit 0); a count reached ends it too; an idle `--timeout`
/// fails it (exit 1). What was received and lost goes to stderr at the end.
fn subscribe(args: &CliArgs) -> ExitCode {
    use std::io::Write;
    let Some(address) = args.positional.first() else {
        return cli::fail(&Error::Other(
            "subscribe needs an ADDRESS (a publisher's host:port, or a bus's subscribers side)"
                .into(),
        ));
    };
    let options = cli::SubscribeOptions {
        topic: args.topic.clone().unwrap_or_default(),
        count: args.count,
        timeout: args.timeout_s.map(Duration::from_secs_f64),
        envelope: args.envelope,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return cli::fail(&e),
    };
    let mut out = std::io::stdout().lock();
    let r = rt.block_on(async {
        let stop = async {
            service_framework::cli::os_signals().await;
        };
        cli::subscribe(address, &options, stop, |line| {
            // A closed pipe (`| head -1`) ends the subscription, with no panic.
            writeln!(out, "{line}").is_ok() && out.flush().is_ok()
        })
        .await
    });
    match r {
        Ok((received, lost)) => {
            eprintln!("{received} received, {lost} lost");
            ExitCode::SUCCESS
        }
        Err(e) => cli::fail(&e),
    }
}

/// Replaces this process with the service binary, passing the same arguments, so signals
/// and the exit code are the service's own.
fn exec_service(name: &str, argv: Vec<OsString>) -> ExitCode {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.to_path_buf()));
    let Some(binary) = cli::find_service_binary(name, exe_dir.as_deref()) else {
        return cli::fail(&Error::Other(format!(
            "unknown service {name:?}: not a built-in ({BUILT_INS}) and no executable named {name:?} beside {} or on PATH",
            exe_dir.map_or("this executable".into(), |d| d.display().to_string())
        )));
    };
    let mut cmd = std::process::Command::new(&binary);
    cmd.args(argv);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let e = cmd.exec();
        cli::fail(&Error::Other(format!(
            "cannot run {}: {e}",
            binary.display()
        )))
    }
    #[cfg(not(unix))]
    match cmd.status() {
        Ok(s) => ExitCode::from(s.code().unwrap_or(1) as u8),
        Err(e) => cli::fail(&Error::Other(format!(
            "cannot run {}: {e}",
            binary.display()
        ))),
    }
}

fn run_bus(args: &CliArgs) -> ExitCode {
    let _guard = match service_framework::logging::init(&args.log) {
        Ok(g) => g,
        Err(e) => return cli::fail(&e),
    };
    let Some(path) = &args.addresses else {
        return cli::fail(&Error::Addresses(
            "the bus needs -a addresses.json with connections.in.bus.publishers and .subscribers"
                .into(),
        ));
    };
    let file = match AddressesFile::read(path) {
        Ok(f) => f,
        Err(e) => return cli::fail(&e),
    };
    let entry = file.connections.inbound.get("bus");
    let (Some(publishers), Some(subscribers)) = (
        entry.and_then(|e| e.get("publishers")),
        entry.and_then(|e| e.get("subscribers")),
    ) else {
        return cli::fail(&Error::Addresses(format!(
            "{}: connections.in.bus needs {{\"publishers\": \"host:port\", \"subscribers\": \"host:port\"}}",
            path.display()
        )));
    };
    // Both sides bind: with a security file the bus is the CURVE server of every publisher
    // and subscriber (entry connections.in.bus, or the file's service entry).
    let security = match cli::security_flag(&args.extras).and_then(|(path, _)| {
        service_framework::security::SecuritySettings::from_flag_or_env(path.as_deref())
    }) {
        Ok(Some(s)) => match s.connection(service_framework::security::Side::In, "bus", true) {
            Ok(sec) => sec,
            Err(e) => return cli::fail(&e),
        },
        Ok(None) => sf_connections::Security::Null,
        Err(e) => return cli::fail(&e),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return cli::fail(&e),
    };
    rt.block_on(async {
        let proxy =
            match sf_connections::BusProxy::bind_secured(publishers, subscribers, security).await {
                Ok(p) => p,
                Err(e) => return cli::fail(&Error::Other(format!("bus: {e}"))),
            };
        let reason = service_framework::cli::os_signals().await;
        tracing::info!(
            ?reason,
            forwarded = proxy.stats().get(sf_connections::Counter::Received),
            auth_failures = proxy.stats().get(sf_connections::Counter::AuthFailures),
            "bus stopping"
        );
        proxy.shutdown().await;
        ExitCode::SUCCESS
    })
}
