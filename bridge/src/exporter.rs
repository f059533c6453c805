//! `service-framework metrics --listen ADDR [CONTROL...] [--up] [--timeout S]`: the bus
//! services' stats as a Prometheus scrape target on its own, without a bridge
//! (binary `service-framework-metrics`; `service-framework metrics` runs it).

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::bus_metrics::{BusMetrics, MetricsSettings};

/// What `--help` prints.
pub const USAGE: &str = "\
usage: service-framework metrics [--listen HOST:PORT] [CONTROL...] [--up] [--timeout S]

Serves GET /metrics (OpenMetrics text, for Prometheus) with the stats of the services
whose control endpoints are named (HOST:PORT or tcp://HOST:PORT) and, with --up, of every
instance of every `service-framework up` running on this machine.

  --listen HOST:PORT  where to serve (default 127.0.0.1:9464; port 0 picks a free one)
  --up                also every instance of every running `service-framework up`
  --timeout S         how long a scrape waits for each service (default 1)
";

#[derive(Debug, PartialEq)]
struct Args {
    listen: String,
    settings: MetricsSettings,
}

fn parse(argv: Vec<OsString>) -> Result<Option<Args>, String> {
    let mut args = Args {
        listen: "127.0.0.1:9464".into(),
        settings: MetricsSettings::default(),
    };
    let mut it = argv.into_iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => args.listen = value("--listen")?,
            "--up" => args.settings.up = true,
            "--timeout" => {
                let v = value("--timeout")?;
                args.settings.timeout_s = v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| {
                        format!("--timeout: {v:?} is not a positive number of seconds")
                    })?;
            }
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag:?}")),
            address => args.settings.control.push(address.to_owned()),
        }
    }
    if !args.settings.enabled() {
        return Err("name control addresses (HOST:PORT) or give --up".into());
    }
    Ok(Some(args))
}

/// The exporter's entry: arguments after `metrics`.
pub fn main(argv: Vec<OsString>) -> ExitCode {
    let args = match parse(argv) {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("service-framework metrics: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("service-framework metrics: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "service-framework metrics: cannot listen on {}: {e}",
                args.listen
            );
            return ExitCode::from(1);
        }
    };
    let local = listener
        .local_addr()
        .map_or_else(|_| args.listen.clone(), |a| a.to_string());
    let bus = Arc::new(BusMetrics::new(args.settings));
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let bus = bus.clone();
            async move {
                let mut text = bus.encode().await;
                text.push_str("# EOF\n");
                (
                    StatusCode::OK,
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
                )
                    .into_response()
            }
        }),
    );
    // The line a script (or a test) waits for.
    println!("metrics: serving http://{local}/metrics");
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    match axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("service-framework metrics: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Option<Args>, String> {
        parse(list.iter().map(OsString::from).collect())
    }

    #[test]
    fn arguments() {
        let a = args(&[
            "--listen",
            "127.0.0.1:0",
            "127.0.0.1:7001",
            "--up",
            "--timeout",
            "0.5",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(a.listen, "127.0.0.1:0");
        assert_eq!(a.settings.control, vec!["127.0.0.1:7001".to_owned()]);
        assert!(a.settings.up);
        assert_eq!(a.settings.timeout_s, 0.5);
        assert!(args(&["--help"]).unwrap().is_none());
        assert!(args(&[]).unwrap_err().contains("control addresses"));
        assert!(args(&["--timeout", "-1", "--up"])
            .unwrap_err()
            .contains("--timeout"));
        assert!(args(&["--bogus"]).unwrap_err().contains("--bogus"));
        assert!(args(&["--listen"]).unwrap_err().contains("needs a value"));
    }
}
