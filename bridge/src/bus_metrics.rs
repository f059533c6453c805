//! The stats of bus services as Prometheus series: on the bridge's `/metrics` (`[metrics]`
//! in its config) and in the standalone exporter (`service-framework metrics --listen`).
//!
//! At each scrape every target's control endpoint is asked `stats` (all at once, each within
//! `timeout_s`), and the answers become series labelled by `service`, `instance` (the `up`
//! instance name where the target was found that way, otherwise the process's id),
//! `connection` (or `state`), `side` and `kind`:
//!
//! - `sf_service_up{address}`: 1 when the endpoint answered, 0 when not;
//! - `sf_service_info{address, service, instance, id, version}` and
//!   `sf_service_uptime_seconds`;
//! - `sf_connection_<counter>_total` for each counter a connection's kind has (`requests`,
//!   `errors`, `published`, `lost`, `pushed`, ...), `sf_connection_processing_seconds_total`,
//!   and the gauges `sf_connection_in_flight`, `sf_connection_subscribers`,
//!   `sf_connection_average_processing_seconds`;
//! - `sf_state_number` and `sf_state_<counter>_total` (`received`, `lost`, `resyncs`,
//!   `snapshots_served`, ...);
//! - `sf_service_data{key}`: the numbers in the service-defined `data` map.
//!
//! A scrape's result is kept for a second, so scrapers cannot multiply the requests sent to
//! the services by scraping more often.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use service_framework::inspect::{self, Target};
use tokio::sync::Mutex;

/// `[metrics]`: which bus services' stats `/metrics` carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Control endpoints to ask (`host:port` or `tcp://host:port`).
    pub control: Vec<String>,
    /// Also every instance of every `service-framework up` running on this machine.
    pub up: bool,
    /// How long one scrape waits for each service.
    pub timeout_s: f64,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            control: Vec::new(),
            up: false,
            timeout_s: 1.0,
        }
    }
}

impl MetricsSettings {
    /// Whether any bus service is asked at all.
    pub fn enabled(&self) -> bool {
        self.up || !self.control.is_empty()
    }
}

type Labels = Vec<(String, String)>;
type FloatCounter = Counter<f64, AtomicU64>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Asks the configured services for their stats at each scrape.
#[derive(Debug)]
pub struct BusMetrics {
    settings: MetricsSettings,
    last: Mutex<Option<(Instant, String)>>,
}

/// How long one scrape's text is served again.
const REUSE: Duration = Duration::from_secs(1);

impl BusMetrics {
    /// From the `[metrics]` settings.
    pub fn new(settings: MetricsSettings) -> Self {
        BusMetrics {
            settings,
            last: Mutex::new(None),
        }
    }

    fn targets(&self) -> Vec<Target> {
        let mut targets: Vec<Target> = self
            .settings
            .control
            .iter()
            .map(|a| Target {
                address: a.clone(),
                instance: None,
            })
            .collect();
        if self.settings.up {
            for t in inspect::discover_up(&std::env::temp_dir()) {
                if !targets.iter().any(|k| k.address == t.address) {
                    targets.push(t);
                }
            }
        }
        targets
    }

    /// The series in the OpenMetrics text format, without the closing `# EOF`.
    pub async fn encode(&self) -> String {
        let mut last = self.last.lock().await;
        if let Some((at, text)) = last.as_ref() {
            if at.elapsed() < REUSE {
                return text.clone();
            }
        }
        let targets = self.targets();
        let timeout = Duration::from_secs_f64(self.settings.timeout_s.clamp(0.01, 60.0));
        let asks = targets.iter().map(|t| {
            let address = t.address.clone();
            tokio::spawn(async move { inspect::ask(&address, "stats", timeout).await })
        });
        let handles: Vec<_> = asks.collect();
        let mut answers = Vec::with_capacity(handles.len());
        for h in handles {
            answers.push(h.await.ok().and_then(|r| r.ok()));
        }
        let text = render(&targets, &answers);
        *last = Some((Instant::now(), text.clone()));
        text
    }
}

/// One scrape's registry, built from the answers (`None`: no answer).
fn render(targets: &[Target], answers: &[Option<Value>]) -> String {
    let mut series = Series::default();
    for (t, answer) in targets.iter().zip(answers) {
        series
            .up
            .get_or_create(&vec![("address".into(), t.address.clone())])
            .set(i64::from(answer.is_some()));
        if let Some(stats) = answer {
            series.service(t, stats);
        }
    }
    let mut registry = Registry::with_prefix("sf");
    series.register(&mut registry);
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode_registry(&mut out, &registry) {
        tracing::warn!("cannot encode the bus services' metrics: {e}");
    }
    out
}

#[derive(Default)]
struct Series {
    up: Family<Labels, Gauge>,
    info: Family<Labels, Gauge>,
    uptime: Family<Labels, FloatGauge>,
    data: Family<Labels, FloatGauge>,
    /// `connection_<key>` / `state_<key>` -> counters.
    counters: BTreeMap<String, Family<Labels, Counter>>,
    seconds: Family<Labels, FloatCounter>,
    /// `connection_<key>` / `state_<key>` -> gauges.
    gauges: BTreeMap<String, Family<Labels, FloatGauge>>,
}

/// Numbers that are levels, not counts.
const GAUGES: &[&str] = &["in_flight", "subscribers", "number"];

impl Series {
    fn service(&mut self, t: &Target, stats: &Value) {
        let text = |k: &str| stats[k].as_str().unwrap_or_default().to_owned();
        let (service, id) = (text("name"), text("id"));
        let instance = t.instance.clone().unwrap_or_else(|| id.clone());
        let info: Labels = vec![
            ("address".into(), t.address.clone()),
            ("service".into(), service.clone()),
            ("instance".into(), instance.clone()),
            ("id".into(), id),
            ("version".into(), text("version")),
        ];
        self.info.get_or_create(&info).set(1);
        let who: Labels = vec![("service".into(), service), ("instance".into(), instance)];
        if let Some(up) = stats["uptime_s"].as_f64() {
            self.uptime.get_or_create(&who).set(up);
        }
        if let Some(data) = stats["data"].as_object() {
            for (key, v) in data {
                if let Some(v) = number(v) {
                    let mut l = who.clone();
                    l.push(("key".into(), key.clone()));
                    self.data.get_or_create(&l).set(v);
                }
            }
        }
        for (list, what) in [("connections", "connection"), ("states", "state")] {
            for entry in stats[list].as_array().into_iter().flatten() {
                self.entry(&who, what, entry);
            }
        }
    }

    fn entry(&mut self, who: &Labels, what: &str, entry: &Value) {
        let Some(fields) = entry.as_object() else {
            return;
        };
        let mut labels = who.clone();
        for (label, key) in [(what, "name"), ("side", "side"), ("kind", "kind")] {
            labels.push((
                label.into(),
                fields
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .into(),
            ));
        }
        for (key, v) in fields {
            let Some(v) = number(v) else {
                continue;
            };
            match key.as_str() {
                "processing_time_s" => {
                    self.seconds.get_or_create(&labels).inc_by(v.max(0.0));
                }
                "average_processing_time_s" => {
                    self.gauge(format!("{what}_average_processing_seconds"), &labels, v);
                }
                k if GAUGES.contains(&k) => self.gauge(format!("{what}_{k}"), &labels, v),
                k => {
                    self.counters
                        .entry(format!("{what}_{k}"))
                        .or_default()
                        .get_or_create(&labels)
                        .inc_by(v.max(0.0) as u64);
                }
            }
        }
    }

    fn gauge(&mut self, name: String, labels: &Labels, v: f64) {
        self.gauges
            .entry(name)
            .or_default()
            .get_or_create(labels)
            .set(v);
    }

    fn register(self, r: &mut Registry) {
        r.register(
            "service_up",
            "Whether the control endpoint answered this scrape",
            self.up,
        );
        r.register(
            "service_info",
            "1 for each service answering on a control endpoint: its name, id and version",
            self.info,
        );
        r.register(
            "service_uptime_seconds",
            "Seconds since the service started",
            self.uptime,
        );
        r.register(
            "service_data",
            "The numbers in the service-defined data map of its stats",
            self.data,
        );
        r.register(
            "connection_processing_seconds",
            "Time spent in the connection's handler",
            self.seconds,
        );
        for (name, family) in self.counters {
            let help = format!(
                "The `{}` count of the control endpoint's stats",
                suffix(&name)
            );
            r.register(name, help, family);
        }
        for (name, family) in self.gauges {
            let help = format!(
                "The `{}` level of the control endpoint's stats",
                suffix(&name)
            );
            r.register(name, help, family);
        }
    }
}

fn suffix(name: &str) -> &str {
    name.split_once('_').map_or(name, |(_, k)| k)
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stats_become_labelled_series() {
        let t = Target {
            address: "127.0.0.1:9".into(),
            instance: Some("square.1".into()),
        };
        let stats = json!({
            "name": "square", "id": "abc", "version": "0.1.0", "uptime_s": 2.5,
            "data": {"jobs": 3, "label": "x"},
            "connections": [
                {"name": "items", "side": "in", "kind": "puller", "pulled": 7,
                 "handled": 7, "errors": 1, "last_error": "boom", "processing_time_s": 0.25,
                 "average_processing_time_s": 0.035, "in_flight": 2},
            ],
            "states": [{"name": "prices", "side": "in", "kind": "delta", "number": 12,
                        "resyncs": 1, "lost": 0}],
        });
        let dead = Target {
            address: "127.0.0.1:10".into(),
            instance: None,
        };
        let text = render(&[t, dead], &[Some(stats), None]);
        for line in [
            r#"sf_service_up{address="127.0.0.1:9"} 1"#,
            r#"sf_service_up{address="127.0.0.1:10"} 0"#,
            r#"sf_connection_pulled_total{service="square",instance="square.1",connection="items",side="in",kind="puller"} 7"#,
            r#"sf_connection_errors_total{service="square",instance="square.1",connection="items",side="in",kind="puller"} 1"#,
            r#"sf_connection_in_flight{service="square",instance="square.1",connection="items",side="in",kind="puller"} 2.0"#,
            r#"sf_connection_processing_seconds_total{service="square",instance="square.1",connection="items",side="in",kind="puller"} 0.25"#,
            r#"sf_state_number{service="square",instance="square.1",state="prices",side="in",kind="delta"} 12.0"#,
            r#"sf_state_resyncs_total{service="square",instance="square.1",state="prices",side="in",kind="delta"} 1"#,
            r#"sf_service_data{service="square",instance="square.1",key="jobs"} 3.0"#,
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
        assert!(!text.contains("last_error"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }
}
