//! `service-framework -s broker -a addresses.json`: the Majordomo (MDP 0.2) broker as a
//! built-in service (the broker itself is `sf_connections::mdp`).
//!
//! Its address is the addresses file's `connections.in.broker.router`; clients and workers
//! all connect there:
//!
//! ```json
//! {"connections": {"in": {"broker": {"router": "127.0.0.1:5555"}}}}
//! ```
//!
//! Front-ends: every other `connections.in` entry is an endpoint where plain requesters (a
//! Python `service_framework` requester's REQ, a framework requester's DEALER) call one
//! brokered service without speaking MDP, as they would call a replyer. The entry's name is
//! the service (`<service>.<connection>`, as a replyer registers it), or its `service` key:
//!
//! ```json
//! {"connections": {"in": {"broker": {"router": "127.0.0.1:5555"},
//!                         "echo_replyer.reply": {"replyer": "127.0.0.1:5601"},
//!                         "echo": {"replyer": "127.0.0.1:5602", "service": "echo_replyer.reply"}}}}
//! ```
//!
//! Tuning, from `-c config.json` (a flat object) or `--key value` on the command line (the
//! command line wins): `heartbeat_interval_s` (2.5), `heartbeat_liveness` (3),
//! `max_queued_per_service` (1000), `max_queued_total` (100000), `max_services` (10000),
//! `request_timeout_s` (30). `--security FILE` (or `SF_SECURITY`) makes it a CURVE server
//! (entry `connections.in.broker`).

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Map, Value};
use service_framework::cli::{self, CliArgs};
use service_framework::{AddressesFile, Error};
use sf_connections::mdp::{Broker, BrokerOptions, Frontend};
use sf_connections::Address;

/// What `describe -s broker` prints.
pub fn describe() -> Value {
    serde_json::json!({
        "name": "broker",
        "description": "Majordomo (MDP 0.2, rfc.zeromq.org spec 18) broker: MDP clients and workers (framework replyers whose address names a broker) connect to connections.in.broker.router",
        "addresses": {"connections": {"in": {
            "broker": {"router": "host:port"},
            "<service name>": {"replyer": "host:port", "service": "optional: the MDP service, else the entry's name"}
        }}},
        "config": {
            "heartbeat_interval_s": "number, 2.5",
            "heartbeat_liveness": "integer, 3",
            "max_queued_per_service": "integer, 1000",
            "max_queued_total": "integer, 100000",
            "max_services": "integer, 10000",
            "request_timeout_s": "number, 30"
        }
    })
}

/// Reads the tuning keys; any other key, or a value of the wrong type, is an error naming it.
pub fn options(config: &Map<String, Value>) -> Result<BrokerOptions, Error> {
    let mut o = BrokerOptions::default();
    for (key, v) in config {
        let num = || {
            v.as_f64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| {
                    Error::Config(format!("broker: {key} must be a number above 0, found {v}"))
                })
        };
        let whole = || {
            num().and_then(|x| {
                if x.fract() == 0.0 && x <= u32::MAX as f64 {
                    Ok(x as u64)
                } else {
                    Err(Error::Config(format!(
                        "broker: {key} must be a whole number, found {v}"
                    )))
                }
            })
        };
        match key.as_str() {
            "heartbeat_interval_s" => o.heartbeat_interval = Duration::from_secs_f64(num()?),
            "heartbeat_liveness" => o.liveness = whole()? as u32,
            "max_queued_per_service" => o.max_queued_per_service = whole()? as usize,
            "max_queued_total" => o.max_queued_total = whole()? as usize,
            "max_services" => o.max_services = whole()? as usize,
            "request_timeout_s" => o.request_timeout = Duration::from_secs_f64(num()?),
            other => {
                return Err(Error::Config(format!(
                    "broker: unknown config key {other:?} (known: heartbeat_interval_s, heartbeat_liveness, max_queued_per_service, max_queued_total, max_services, request_timeout_s)"
                )))
            }
        }
    }
    Ok(o)
}

/// The front-ends: every `connections.in` entry but `broker`, `{"replyer": "host:port"}` with
/// an optional `"service"` (else the entry's name is the service).
pub fn frontends(
    inbound: &service_framework::addresses::SideAddresses,
    origin: &str,
) -> Result<Vec<Frontend>, Error> {
    let mut out = Vec::new();
    for (name, entry) in inbound {
        if name == "broker" {
            continue;
        }
        let at = format!("{origin}: connections.in.{name}");
        if let Some(other) = entry.keys().find(|k| *k != "replyer" && *k != "service") {
            return Err(Error::Addresses(format!(
                "{at}: a broker front-end takes \"replyer\" (where requesters connect) and \"service\" only, found {other:?}"
            )));
        }
        let Some(address) = entry.get("replyer") else {
            return Err(Error::Addresses(format!(
                "{at}: a broker front-end needs {{\"replyer\": \"host:port\"}} (where requesters connect)"
            )));
        };
        let service = match entry.get("service") {
            None => name.clone(),
            Some(Address::Plain(s)) if !s.is_empty() => s.clone(),
            Some(other) => {
                return Err(Error::Addresses(format!(
                    "{at}.service must be a service name (a string), found {other}"
                )))
            }
        };
        if service.starts_with("mmi.") {
            return Err(Error::Addresses(format!(
                "{at}: {service:?} is the broker's own (mmi.*), not a service a front-end can serve"
            )));
        }
        out.push(Frontend {
            address: address.clone(),
            service,
        });
    }
    Ok(out)
}

/// Runs the broker until SIGINT or SIGTERM.
pub fn run(args: &CliArgs) -> ExitCode {
    let _guard = match service_framework::logging::init(&args.log) {
        Ok(g) => g,
        Err(e) => return cli::fail(&e),
    };
    let Some(path) = &args.addresses else {
        return cli::fail(&Error::Addresses(
            "the broker needs -a addresses.json with connections.in.broker.router".into(),
        ));
    };
    let file = match AddressesFile::read(path) {
        Ok(f) => f,
        Err(e) => return cli::fail(&e),
    };
    let Some(router) = file
        .connections
        .inbound
        .get("broker")
        .and_then(|e| e.get("router"))
    else {
        return cli::fail(&Error::Addresses(format!(
            "{}: connections.in.broker needs {{\"router\": \"host:port\"}}",
            path.display()
        )));
    };
    let fronts = match frontends(&file.connections.inbound, &path.display().to_string()) {
        Ok(f) => f,
        Err(e) => return cli::fail(&e),
    };
    let (security_path, extras) = match cli::security_flag(&args.extras) {
        Ok(x) => x,
        Err(e) => return cli::fail(&e),
    };
    let mut config = match &args.config {
        Some(p) => match service_framework::cli::read_config_file(p) {
            Ok(c) => c,
            Err(e) => return cli::fail(&e),
        },
        None => Map::new(),
    };
    match service_framework::cli::pairs_from_extras(&extras) {
        Ok(pairs) => {
            for (k, v) in pairs {
                config.insert(k, Value::String(v));
            }
        }
        Err(e) => return cli::fail(&e),
    }
    let mut options = match options(&config) {
        Ok(o) => o,
        Err(e) => return cli::fail(&e),
    };
    options.security = match service_framework::security::SecuritySettings::from_flag_or_env(
        security_path.as_deref(),
    ) {
        Ok(Some(s)) => match s.connection(service_framework::security::Side::In, "broker", true) {
            Ok(sec) => sec,
            Err(e) => return cli::fail(&e),
        },
        Ok(None) => sf_connections::Security::Null,
        Err(e) => return cli::fail(&e),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return cli::fail(&Error::Other(e.to_string())),
    };
    rt.block_on(async {
        let broker = match Broker::bind_with_frontends(router, &fronts, options).await {
            Ok(b) => b,
            Err(e) => return cli::fail(&Error::Other(format!("broker: {e}"))),
        };
        tracing::info!(
            service = "broker",
            pid = std::process::id(),
            endpoint = broker.endpoint(),
            "ready"
        );
        let ready_file = cli::ReadyFile::from_env();
        if let Some(f) = &ready_file {
            let mut endpoints = Map::new();
            endpoints.insert("in.broker.router".into(), broker.endpoint().into());
            let names = file.connections.inbound.keys().filter(|n| *n != "broker");
            for (name, (endpoint, _)) in names.zip(broker.frontend_endpoints()) {
                endpoints.insert(format!("in.{name}.replyer"), endpoint.as_str().into());
            }
            f.write(&serde_json::json!({
                "service": "broker",
                "pid": std::process::id(),
                "endpoints": endpoints,
            }));
        }
        let reason = service_framework::cli::os_signals().await;
        let stats = broker.stats().clone();
        tracing::info!(
            ?reason,
            requests = stats.get(sf_connections::Counter::Received),
            replies = stats.get(sf_connections::Counter::Replied),
            refused = stats.get(sf_connections::Counter::Refused),
            "broker stopping"
        );
        broker.shutdown().await;
        drop(ready_file);
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_keys_are_read_and_mistakes_named() {
        let c: Map<String, Value> = serde_json::from_str(
            r#"{"heartbeat_interval_s": "0.5", "heartbeat_liveness": 4, "max_queued_per_service": "7"}"#,
        )
        .unwrap();
        let o = options(&c).unwrap();
        assert_eq!(o.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(o.liveness, 4);
        assert_eq!(o.max_queued_per_service, 7);
        for bad in [
            r#"{"heartbeat_liveness": 2.5}"#,
            r#"{"heartbeat_interval_s": -1}"#,
            r#"{"heartbeat_interval_s": "soon"}"#,
            r#"{"liveness": 3}"#,
        ] {
            let c: Map<String, Value> = serde_json::from_str(bad).unwrap();
            let e = options(&c).unwrap_err().to_string();
            assert!(e.contains("broker:"), "{bad}: {e}");
        }
    }

    #[test]
    fn frontends_are_the_other_in_entries_named_by_their_service() {
        let inbound: service_framework::addresses::SideAddresses = serde_json::from_str(
            r#"{"broker": {"router": "127.0.0.1:1"},
                "echo_replyer.reply": {"replyer": "127.0.0.1:2"},
                "short": {"replyer": "127.0.0.1:3", "service": "quotes.reply"}}"#,
        )
        .unwrap();
        let f = frontends(&inbound, "a.json").unwrap();
        let got: Vec<(String, String)> = f
            .iter()
            .map(|f| (f.address.to_string(), f.service.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("127.0.0.1:2".to_owned(), "echo_replyer.reply".to_owned()),
                ("127.0.0.1:3".to_owned(), "quotes.reply".to_owned())
            ]
        );
        let only_broker: service_framework::addresses::SideAddresses =
            serde_json::from_str(r#"{"broker": {"router": "127.0.0.1:1"}}"#).unwrap();
        assert!(frontends(&only_broker, "a.json").unwrap().is_empty());
    }
}
