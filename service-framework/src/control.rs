//! The control endpoint: every service answers `ping`, `info`, `stats` and `health` on a
//! replyer of its own, speaking the framework's request/reply wire (so `service-framework
//! call ADDR '{"verb": "stats"}'` and a Python 0.0.18 requester can ask too).
//!
//! Its address is the addresses file's top-level `"control"` entry (`"host:port"`; `false`
//! turns it off), else an ephemeral port on 127.0.0.1; `SF_CONTROL=off` turns it off too. It
//! is not one of the service's connections: it does not appear in `stats`, and it stops
//! last, so `health` keeps answering (with `stopping: true`) while the service drains.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Map, Value};
use sf_connections::wire::{ErrorCode, WireError, WorkflowId};
use sf_connections::{
    Address, Counter, PeerGauge, Publisher, Pusher, Replyer, ReplyerOptions, RequestMeta,
    Requester, Stats,
};
use tokio_util::sync::CancellationToken;

use crate::addresses::{AddressesFile, ControlEntry};
use crate::context::OutState;
use crate::error::{Error, Result};
use crate::model::StatsData;

/// The verbs, in the order error messages list them.
pub const VERBS: &[&str] = &["ping", "info", "stats", "health"];

/// The variable that turns the control endpoint off (`off`, `false`, `0` or `no`).
pub const CONTROL_ENV: &str = "SF_CONTROL";

/// What one of the service's connections lets the control endpoint read.
pub(crate) enum Probe {
    /// The replyer's counters, and its connected requesters.
    Replyer(Arc<Stats>, PeerGauge),
    Requester(Requester),
    Publisher(Publisher),
    /// The subscriber's own counters, its handler's, and its connected publishers.
    Subscriber(Arc<Stats>, Arc<Stats>, PeerGauge),
    Pusher(Pusher),
    /// The puller's own counters, its handler's, and its connected pushers.
    Puller(Arc<Stats>, Arc<Stats>, PeerGauge),
    External,
}

/// One connection as the control endpoint sees it.
pub(crate) struct Conn {
    pub name: String,
    pub side: &'static str,
    pub kind: &'static str,
    pub probe: Probe,
}

/// One state as the control endpoint sees it.
pub(crate) enum StateProbe {
    In {
        name: String,
        kind: &'static str,
        view: tokio::sync::watch::Receiver<sf_states::StateView>,
        stats: Arc<Stats>,
    },
    Out {
        name: String,
        kind: &'static str,
        state: OutState,
    },
}

/// Everything the verbs report: fixed at start, read live for `stats` and `health`.
pub(crate) struct Introspect {
    pub name: String,
    pub id: String,
    pub version: String,
    pub description: String,
    pub metadata: BTreeMap<String, String>,
    /// `ServiceDef::describe()`, after the options were merged.
    pub describe: Value,
    pub started: SystemTime,
    pub endpoints: BTreeMap<String, String>,
    pub conns: Vec<Conn>,
    pub states: Vec<StateProbe>,
    pub data: Option<StatsData>,
    pub ready: AtomicBool,
    /// The service's stop token: cancelled once it is stopping.
    pub stop: CancellationToken,
    /// The control endpoint itself, once bound.
    pub control: std::sync::OnceLock<String>,
}

/// Where the control endpoint goes: `None` when it is off.
pub(crate) fn control_address(addresses: &AddressesFile) -> Option<Address> {
    let off = std::env::var(CONTROL_ENV).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "off" | "false" | "0" | "no"
        )
    });
    if off {
        return None;
    }
    match &addresses.control {
        Some(ControlEntry::Enabled(false)) => None,
        Some(ControlEntry::At(a)) => Some(a.clone()),
        Some(ControlEntry::Enabled(true)) | None => Some(Address::from("127.0.0.1:0")),
    }
}

#[derive(Deserialize)]
struct ControlArgs {
    verb: String,
}

/// Binds the control replyer. Its stop is its own: it is shut down after the service drained.
pub(crate) async fn bind(address: &Address, intro: Arc<Introspect>) -> Result<Replyer> {
    let handler = sf_connections::typed(move |args: ControlArgs, _meta: RequestMeta| {
        let intro = intro.clone();
        async move {
            match args.verb.as_str() {
                "ping" => Ok(intro.ping()),
                "info" => Ok(intro.info()),
                "stats" => Ok(intro.stats().await),
                "health" => Ok(intro.health()),
                other => Err(WireError::new(
                    ErrorCode::InvalidArgs,
                    format!("unknown verb {other:?} (verbs: {})", VERBS.join(", ")),
                )),
            }
        }
    });
    let opts = ReplyerOptions {
        max_concurrency: 16,
        drain_timeout: Duration::from_millis(200),
        linger: Duration::from_millis(200),
        ..Default::default()
    };
    Replyer::bind(address, handler, opts)
        .await
        .map_err(|source| Error::Connection {
            name: "control".into(),
            source,
        })
}

impl Introspect {
    fn ping(&self) -> Value {
        json!({"name": self.name, "id": self.id, "version": self.version})
    }

    fn info(&self) -> Value {
        let mut conns = Vec::new();
        for c in &self.conns {
            let d = &self.describe["connections"][c.side][&c.name];
            conns.push(json!({
                "name": c.name,
                "side": c.side,
                "kind": c.kind,
                "wire_name": c.name,
                "endpoint": self.endpoints.get(&format!("{}.{}", c.side, c.name)),
                "options": d["creation_arguments"],
                "args": d["args"],
                "returns": d["return_args"],
            }));
        }
        let mut states = Vec::new();
        for s in &self.states {
            let (name, kind, side) = match s {
                StateProbe::In { name, kind, .. } => (name, *kind, "in"),
                StateProbe::Out { name, kind, .. } => (name, *kind, "out"),
            };
            let d = &self.describe["states"][side][name];
            let prefix = format!("state.{side}.{name}.");
            let endpoints: Map<String, Value> = self
                .endpoints
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix(&prefix)
                        .map(|socket| (socket.to_owned(), Value::from(v.clone())))
                })
                .collect();
            states.push(json!({
                "name": name,
                "side": side,
                "kind": kind,
                "wire_name": name,
                "endpoints": endpoints,
                "options": d["creation_arguments"],
                "schema": d["state"],
            }));
        }
        json!({
            "name": self.name,
            "id": self.id,
            "version": self.version,
            "description": self.description,
            "metadata": self.metadata,
            "control": self.control.get(),
            "config": self.describe["config"],
            "connections": conns,
            "states": states,
        })
    }

    async fn stats(&self) -> Value {
        let connections: Vec<Value> = self.conns.iter().map(conn_stats).collect();
        let mut states = Vec::new();
        for s in &self.states {
            states.push(state_stats(s).await);
        }
        let data = self.data.as_ref().map_or_else(Map::new, |f| f());
        let started = self.started.duration_since(UNIX_EPOCH).unwrap_or_default();
        json!({
            "name": self.name,
            "id": self.id,
            "version": self.version,
            "started": rfc3339(started),
            "started_unix": started.as_secs_f64(),
            "uptime_s": self.started.elapsed().unwrap_or_default().as_secs_f64(),
            "connections": connections,
            "states": states,
            "data": data,
        })
    }

    fn health(&self) -> Value {
        let mut peers = Vec::new();
        for c in &self.conns {
            let count = match &c.probe {
                Probe::Requester(r) => Some(r.peer_count()),
                Probe::Publisher(p) => Some(*p.subscriber_changes().borrow()),
                Probe::Pusher(p) => Some(p.peer_count()),
                Probe::Replyer(_, peers)
                | Probe::Subscriber(_, _, peers)
                | Probe::Puller(_, _, peers) => Some(peers.count()),
                Probe::External => None,
            };
            if let Some(n) = count {
                peers.push(json!({
                    "name": c.name,
                    "side": c.side,
                    "kind": c.kind,
                    "peers": n,
                    "up": n > 0,
                }));
            }
        }
        let ready = self.ready.load(Ordering::Relaxed);
        let stopping = self.stop.is_cancelled();
        json!({
            "name": self.name,
            "id": self.id,
            "ready": ready,
            "stopping": stopping,
            "healthy": ready && !stopping,
            "connections": peers,
        })
    }
}

/// Handler figures: runs, errors, last error, processing time, in flight.
fn handler_figures(m: &mut Map<String, Value>, s: &Stats, runs: u64, errors: u64) {
    let (total, n) = s.processing();
    m.insert("handled".into(), runs.into());
    m.insert("errors".into(), errors.into());
    m.insert("last_error".into(), s.last_error().into());
    m.insert("processing_time_s".into(), total.as_secs_f64().into());
    let avg = if n == 0 {
        0.0
    } else {
        total.as_secs_f64() / n as f64
    };
    m.insert("average_processing_time_s".into(), avg.into());
    m.insert("in_flight".into(), s.in_flight().into());
}

fn conn_stats(c: &Conn) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), c.name.clone().into());
    m.insert("side".into(), c.side.into());
    m.insert("kind".into(), c.kind.into());
    let put = |m: &mut Map<String, Value>, key: &str, v: u64| {
        m.insert(key.into(), v.into());
    };
    match &c.probe {
        Probe::Replyer(s, _) => {
            let errors = [
                Counter::InvalidArgs,
                Counter::Malformed,
                Counter::TooLarge,
                Counter::HandlerFailed,
            ]
            .iter()
            .map(|&k| s.get(k))
            .sum();
            put(&mut m, "requests", s.get(Counter::Received));
            put(&mut m, "replied", s.get(Counter::Replied));
            handler_figures(&mut m, s, s.processing().1, errors);
            put(&mut m, "invalid_args", s.get(Counter::InvalidArgs));
            put(&mut m, "refused", s.get(Counter::Refused));
        }
        Probe::Requester(r) => {
            let s = r.stats();
            put(&mut m, "requests", s.get(Counter::Sent));
            put(&mut m, "replies", s.get(Counter::Received));
            put(&mut m, "timeouts", s.get(Counter::Timeouts));
            put(&mut m, "retries", s.get(Counter::Retries));
            put(&mut m, "late_replies", s.get(Counter::LateReplies));
            // A list of replicas: each one's state (which are up, how the load is spread).
            let replicas = r.replicas();
            if replicas.len() > 1 {
                let list: Vec<Value> = replicas
                    .iter()
                    .map(|x| {
                        json!({
                            "endpoint": x.endpoint,
                            "up": x.up,
                            "in_flight": x.in_flight,
                            "sent": x.sent,
                        })
                    })
                    .collect();
                m.insert("replicas".into(), list.into());
            }
        }
        Probe::Publisher(p) => {
            let s = p.stats();
            put(&mut m, "published", s.get(Counter::Sent));
            put(&mut m, "dropped", s.get(Counter::Dropped));
            put(
                &mut m,
                "subscribers",
                *p.subscriber_changes().borrow() as u64,
            );
        }
        Probe::Subscriber(s, h, _) => {
            put(&mut m, "received", s.get(Counter::Received));
            put(&mut m, "delivered", s.get(Counter::Delivered));
            put(&mut m, "lost", s.get(Counter::Lost));
            put(&mut m, "duplicates", s.get(Counter::Duplicates));
            handler_figures(
                &mut m,
                h,
                h.get(Counter::Received),
                h.get(Counter::HandlerFailed),
            );
        }
        Probe::Pusher(p) => {
            let s = p.stats();
            put(&mut m, "pushed", s.get(Counter::Sent));
            put(&mut m, "redelivered", s.get(Counter::Redelivered));
            put(&mut m, "acked", s.get(Counter::Acked));
            put(&mut m, "timeouts", s.get(Counter::Timeouts));
            put(&mut m, "in_flight", p.in_flight() as u64);
        }
        Probe::Puller(s, h, _) => {
            put(&mut m, "pulled", s.get(Counter::Received));
            handler_figures(
                &mut m,
                h,
                h.get(Counter::Received),
                h.get(Counter::HandlerFailed),
            );
        }
        Probe::External => {}
    }
    Value::Object(m)
}

async fn state_stats(s: &StateProbe) -> Value {
    match s {
        StateProbe::In {
            name,
            kind,
            view,
            stats,
        } => json!({
            "name": name,
            "side": "in",
            "kind": kind,
            "number": view.borrow().current_num,
            "received": stats.get(Counter::Received),
            "lost": stats.get(Counter::Lost),
            "duplicates": stats.get(Counter::Duplicates),
            "resyncs": stats.get(Counter::Resyncs),
        }),
        StateProbe::Out { name, kind, state } => {
            let (number, publisher, served) = match state {
                OutState::Full(f) => (None, f.publisher_stats().clone(), None),
                OutState::Delta(d) => (
                    Some(d.current().await.1),
                    d.publisher_stats().clone(),
                    Some(d.snapshots_served()),
                ),
            };
            json!({
                "name": name,
                "side": "out",
                "kind": kind,
                "number": number,
                "published": publisher.get(Counter::Sent),
                "dropped": publisher.get(Counter::Dropped),
                "snapshots_served": served,
            })
        }
    }
}

/// A fresh id for this process's service.
pub(crate) fn new_id() -> String {
    WorkflowId::new_random().to_string()
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time since the Unix epoch.
pub fn rfc3339(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(Duration::ZERO), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(Duration::from_millis(1_709_210_096_123)),
            "2024-02-29T12:34:56.123Z"
        );
    }
}
