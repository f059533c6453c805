//! Plugins on workers behind a Majordomo broker: FrameX's `@remote()`, the bus way.
//!
//! The same plugin code runs either inside the bridge or in worker processes on the bus,
//! chosen by config. `[plugins.<name>.remote]` moves plugin `<name>` to workers:
//!
//! ```toml
//! load_plugins = ["pricing", "checkout"]
//!
//! [plugins.pricing.remote]
//! broker = "10.0.0.5:5555"        # the broker's router: its workers register there, and
//!                                 # the bridge calls service "plugin.pricing" through it
//! workers = 4                     # calls one worker process serves at once
//! ```
//!
//! - **Workers**: the bridge binary that links the plugin, run as
//!   `<bridge binary> --serve-plugins pricing` (any number of processes, on any
//!   host), builds the plugin exactly as a bridge does (its config from `plugins.pricing`,
//!   its state, its `on_start`, its own `call_plugin_api` targets) and registers `workers`
//!   MDP 0.2 workers for the service `plugin.<name>` (or `service`) with the broker. Each
//!   request names one of the plugin's APIs and carries its query and body; the answer is
//!   the handler's value, its stream's events, or its error with its HTTP status.
//! - **The bridge**: the plugin is still loaded (its routes, function APIs and OpenAPI
//!   entries come from the same code), but every handler of it is replaced by a call through
//!   the broker; its state is not made and its `on_start` does not run in the bridge. Callers
//!   see no difference: `call_plugin_api`, `call_api` and its HTTP routes answer what they
//!   answer in-process (a stream is replayed once the worker has finished it).
//! - **Dead workers and retries**: the broker gives a request whose worker died to another
//!   worker (MDP workers are idempotent). That is right only for APIs marked
//!   [`idempotent`](crate::Api::idempotent). For every other API the worker first sends a
//!   PARTIAL reply, which the broker takes as "this request may have had effects": it never
//!   gives such a request to another worker, and answers it 503 if its worker dies. The
//!   handler runs only once the broker has read the PARTIAL: the worker asks the broker's
//!   `mmi.service` on the same connection right after it, and the answer, which the broker
//!   sends after reading what came before, is the go-ahead (one round trip to the broker per
//!   call of such an API). So a call of it runs at most once, and when its worker dies it
//!   fails with 503 as soon as the broker has dropped the worker (within a heartbeat
//!   interval or so, at most the broker's liveness). The bridge itself retries an idempotent
//!   call `retries` times after a timeout or a lost connection to the broker, and a call of
//!   any other API never. The workers are the framework's own MDP workers
//!   (`sf_connections::mdp::worker`), the PARTIAL-first rule their
//!   [`at_most_once`](sf_connections::mdp::WorkerOptions::at_most_once) option.
//!
//! The bridge calls the broker as an MDP client ([`Requester::through_broker`]). Given
//! `requester = "host:port"`, it calls a broker front-end bound for the plugin's service
//! instead (the broker's addresses.json: `connections.in."plugin.pricing" = {"replyer":
//! "host:port"}`), as a plain requester would.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sf_connections::mdp::proto;
use sf_connections::wire::{self, ErrorCode, Request, WireError, WorkflowId};
use sf_connections::{Address, Requester, RequesterOptions};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::envelope::{EventType, StreamEvent};
use crate::error::{ApiError, Error, Result};
use crate::plugin::{self, Erased, Output};
use crate::registry::{ApiEntry, PluginCtx, Registry};

/// The key of `plugins.<name>` that moves a plugin to workers.
pub const REMOTE_KEY: &str = "remote";

/// Most workers one process registers for one plugin.
pub const MAX_WORKERS: usize = 256;

/// `[plugins.<name>.remote]`: the plugin runs on workers behind a Majordomo broker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// The broker's router (`host:port`): workers register there (`--serve-plugins`), and
    /// the bridge calls the plugin's service through it. The bridge may be given a list of
    /// brokers.
    pub broker: Option<Address>,
    /// Instead of calling through `broker`, the bridge calls here: a broker front-end bound
    /// for `service` (`host:port`, or a list of them).
    pub requester: Option<Address>,
    /// The MDP service name (`plugin.<name>`).
    pub service: Option<String>,
    /// Workers one `--serve-plugins` process registers: calls it serves at once (4).
    pub workers: Option<usize>,
    /// The heartbeat interval in seconds; must be the broker's (2.5, its default).
    pub heartbeat_interval_s: Option<f64>,
    /// Intervals of broker silence before a worker registers again (3).
    pub heartbeat_liveness: Option<u32>,
    /// Seconds the bridge waits for one call (10).
    pub timeout_s: Option<f64>,
    /// Extra attempts of a call of an idempotent API after a timeout or a lost connection
    /// to the broker (1). Calls of other APIs are never repeated.
    pub retries: Option<u32>,
}

impl RemoteConfig {
    /// `plugins.<name>.remote`, checked; `None` when the plugin runs in the bridge.
    pub fn of(settings: &Settings, name: &str) -> Result<Option<RemoteConfig>> {
        let Some(v) = settings.plugins.get(name).and_then(|p| p.get(REMOTE_KEY)) else {
            return Ok(None);
        };
        let at = format!("plugins.{name}.{REMOTE_KEY}");
        let c: RemoteConfig = serde_path_to_error::deserialize(v.clone()).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                Error::Config(format!("{at}: {}", e.inner()))
            } else {
                Error::Config(format!("{at}.{path}: {}", e.inner()))
            }
        })?;
        let positive = |key: &str, v: Option<f64>| match v {
            Some(x) if !(x.is_finite() && x > 0.0) => Err(Error::Config(format!(
                "{at}.{key}: give a number of seconds above 0, got {x}"
            ))),
            _ => Ok(()),
        };
        positive("timeout_s", c.timeout_s)?;
        positive("heartbeat_interval_s", c.heartbeat_interval_s)?;
        if let Some(n) = c.workers.filter(|n| !(1..=MAX_WORKERS).contains(n)) {
            return Err(Error::Config(format!(
                "{at}.workers: give 1 to {MAX_WORKERS}, got {n}"
            )));
        }
        if c.heartbeat_liveness == Some(0) {
            return Err(Error::Config(format!(
                "{at}.heartbeat_liveness: give 1 or more"
            )));
        }
        let service = c.service(name);
        if proto::service_name(service.as_bytes()).is_err() || service.starts_with("mmi.") {
            return Err(Error::Config(format!(
                "{at}.service: {service:?} is not an MDP service name (1 to {} printable characters, not starting with \"mmi.\")",
                proto::MAX_SERVICE_LEN
            )));
        }
        if c.broker.is_none() && c.requester.is_none() {
            return Err(Error::Config(format!(
                "{at}: give `broker`, the broker's router (host:port): the plugin's workers register there and the bridge calls service {service:?} through it"
            )));
        }
        Ok(Some(c))
    }

    /// The MDP service the plugin's workers register as.
    pub fn service(&self, plugin: &str) -> String {
        self.service
            .clone()
            .unwrap_or_else(|| format!("plugin.{plugin}"))
    }

    fn heartbeat(&self) -> Duration {
        Duration::from_secs_f64(self.heartbeat_interval_s.unwrap_or(2.5))
    }
}

/// `plugins.<name>` without the `remote` key: what the plugin itself is configured with.
pub(crate) fn plugin_part(given: &Value) -> Value {
    match given {
        Value::Object(m) if m.contains_key(REMOTE_KEY) => {
            let mut m = m.clone();
            m.remove(REMOTE_KEY);
            Value::Object(m)
        }
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------------------
// The bridge's side: handlers that call the workers.

/// The bridge's connection to one remote plugin's workers.
pub(crate) struct RemoteClient {
    plugin: String,
    service: String,
    /// For idempotent APIs: `retries` extra attempts.
    retrying: Requester,
    /// For the others: one attempt.
    once: Requester,
}

impl RemoteClient {
    /// Connects (in the background) to where the plugin's calls go.
    pub fn connect(plugin: &str, c: &RemoteConfig) -> Result<Arc<RemoteClient>> {
        let service = c.service(plugin);
        let options = RequesterOptions {
            timeout: Duration::from_secs_f64(c.timeout_s.unwrap_or(10.0)),
            ..Default::default()
        };
        let connect = |retries: u32| {
            let options = RequesterOptions {
                retries,
                ..options.clone()
            };
            let (r, key) = match (&c.requester, &c.broker) {
                (Some(front), _) => (Requester::connect(front, options), "requester"),
                (None, Some(broker)) => (
                    Requester::through_broker(broker, &service, options),
                    "broker",
                ),
                (None, None) => {
                    return Err(Error::Config(format!(
                        "plugins.{plugin}.{REMOTE_KEY}: give `broker` (host:port)"
                    )))
                }
            };
            r.map_err(|e| Error::Config(format!("plugins.{plugin}.{REMOTE_KEY}.{key}: {e}")))
        };
        let (retrying, once) = (connect(c.retries.unwrap_or(1))?, connect(0)?);
        Ok(Arc::new(RemoteClient {
            plugin: plugin.to_owned(),
            service,
            retrying,
            once,
        }))
    }

    /// The handler that stands for API `api` of the plugin in the bridge.
    pub fn handler(self: &Arc<Self>, api: &str, idempotent: bool, what: &str) -> Erased {
        let (me, api, what) = (self.clone(), api.to_owned(), what.to_owned());
        Arc::new(move |query, body, _ctx| {
            let (me, api, what) = (me.clone(), api.clone(), what.clone());
            Box::pin(async move { me.call(&api, &what, idempotent, query, body).await })
        })
    }

    async fn call(
        &self,
        api: &str,
        what: &str,
        idempotent: bool,
        query: Value,
        body: Option<Value>,
    ) -> Result<Output, ApiError> {
        let args = json!({"api": api, "query": query, "body": body});
        let requester = if idempotent {
            &self.retrying
        } else {
            &self.once
        };
        let answer: Value = requester
            .request_traced(
                &args,
                WorkflowId::new_random(),
                Some(crate::trace::for_call()),
            )
            .await
            .map_err(|e| {
                let mut err = crate::bus::map_error(
                    e,
                    &format!(
                        "the workers of plugin {:?} (service {:?})",
                        self.plugin, self.service
                    ),
                );
                if err.status.is_server_error() {
                    err.message = if idempotent {
                        format!("{what} (on a worker): {}", err.message)
                    } else {
                        format!(
                            "{what} (on a worker; not idempotent, so not retried): {}",
                            err.message
                        )
                    };
                }
                err
            })?;
        decode_answer(answer, what)
    }
}

fn bad_answer(what: &str, why: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        format!("{what}: the worker's answer {why}"),
    )
}

fn decode_error(v: &Value) -> ApiError {
    let status = v["status"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    ApiError {
        status,
        message: v["message"].as_str().unwrap_or("failed").to_owned(),
        data: v.get("data").filter(|d| !d.is_null()).cloned(),
    }
}

fn encode_error(e: &ApiError) -> Value {
    json!({"status": e.status.as_u16(), "message": e.message, "data": e.data})
}

/// The worker's answer as the handler's output.
fn decode_answer(answer: Value, what: &str) -> Result<Output, ApiError> {
    let Value::Object(mut m) = answer else {
        return Err(bad_answer(what, "is not an object"));
    };
    if let Some(e) = m.get("error") {
        return Err(decode_error(e));
    }
    if let Some(v) = m.remove("value") {
        return Ok(Output::Value(v));
    }
    let Some(Value::Array(events)) = m.remove("events") else {
        return Err(bad_answer(what, "has neither value, events nor error"));
    };
    let mut items = Vec::with_capacity(events.len());
    for ev in events {
        if let Some(e) = ev.get("error") {
            items.push(Err(decode_error(e)));
            continue;
        }
        let kind = match ev["event"].as_str() {
            Some("message_chunk") => EventType::MessageChunk,
            Some("finish") => EventType::Finish,
            Some("error") => EventType::Error,
            Some("debug") => EventType::Debug,
            _ => return Err(bad_answer(what, "has an event of no known type")),
        };
        items.push(Ok(StreamEvent {
            kind,
            data: ev.get("data").cloned().unwrap_or(Value::Null),
        }));
    }
    Ok(Output::Stream(futures::stream::iter(items).boxed()))
}

/// The output as the worker answers it.
async fn encode_output(out: Result<Output, ApiError>) -> Value {
    match out {
        Ok(Output::Value(v)) => json!({ "value": v }),
        Ok(Output::Stream(mut s)) => {
            let mut events = Vec::new();
            while let Some(item) = s.next().await {
                match item {
                    Ok(ev) => {
                        let finish = ev.kind == EventType::Finish;
                        events.push(json!({"event": ev.kind.as_str(), "data": ev.data}));
                        if finish {
                            break;
                        }
                    }
                    Err(e) => {
                        events.push(json!({ "error": encode_error(&e) }));
                        break;
                    }
                }
            }
            json!({ "events": events })
        }
        Err(e) => json!({ "error": encode_error(&e) }),
    }
}

// ---------------------------------------------------------------------------------------
// The workers' side.

/// Readies `settings` for serving `names` as workers: each must have `plugins.<name>.remote`
/// with a `broker`; its `remote` key is taken out (the plugin runs here), and the plugins
/// loaded are the served ones plus those configured remote (callable from them).
pub(crate) fn worker_settings(
    settings: &mut Settings,
    names: &[String],
) -> Result<Vec<(String, RemoteConfig)>> {
    let mut out = Vec::new();
    for name in names {
        let c = RemoteConfig::of(settings, name)?.ok_or_else(|| {
            Error::Config(format!(
                "--serve-plugins {name}: plugins.{name}.{REMOTE_KEY} is not configured; give at least `broker` (where the workers register)"
            ))
        })?;
        if c.broker.is_none() {
            return Err(Error::Config(format!(
                "--serve-plugins {name}: plugins.{name}.{REMOTE_KEY}.broker: the broker's router (host:port) the workers register with"
            )));
        }
        out.push((name.clone(), c));
    }
    let remote_others: Vec<String> = settings
        .load_plugins
        .iter()
        .filter(|n| !names.contains(n))
        .filter(|n| {
            settings
                .plugins
                .get(*n)
                .and_then(|p| p.get(REMOTE_KEY))
                .is_some()
        })
        .cloned()
        .collect();
    for name in names {
        if let Some(p) = settings.plugins.get_mut(name) {
            *p = plugin_part(p);
        }
    }
    settings.load_plugins = names.iter().cloned().chain(remote_others).collect();
    Ok(out)
}

/// Workers serving plugins for a broker (`--serve-plugins`).
#[derive(Debug)]
pub struct PluginWorkers {
    stop: CancellationToken,
    replyers: Vec<sf_connections::Replyer>,
    registered: watch::Receiver<usize>,
    total: usize,
    summary: String,
}

impl PluginWorkers {
    /// Registers each plugin's workers with its broker: `mdp::worker`, the framework's MDP
    /// worker, serving a handler that runs the named API; the APIs not marked idempotent run
    /// at most once (`WorkerOptions::at_most_once`).
    pub(crate) async fn start(
        registry: Arc<Registry>,
        configs: Vec<(String, RemoteConfig)>,
    ) -> Result<PluginWorkers> {
        let stop = CancellationToken::new();
        let (reg_tx, registered) = watch::channel(0usize);
        let reg_tx = Arc::new(reg_tx);
        let mut replyers = Vec::new();
        let mut summary = Vec::new();
        let mut total = 0;
        for (name, c) in configs {
            let apis: Arc<HashMap<String, Arc<ApiEntry>>> = Arc::new(
                registry
                    .entries
                    .iter()
                    .filter(|e| e.plugin.meta.name == name)
                    .map(|e| (e.api.name.clone(), e.clone()))
                    .collect(),
            );
            if apis.is_empty() {
                return Err(Error::Plugin(format!(
                    "--serve-plugins {name}: the plugin has no APIs to serve"
                )));
            }
            let broker = c.broker.clone().unwrap_or_else(|| Address::from(""));
            let at = format!("plugins.{name}.{REMOTE_KEY}.broker");
            broker
                .connect_endpoint()
                .map_err(|e| Error::Config(format!("{at}: {e}")))?;
            let n = c.workers.unwrap_or(4);
            let service = c.service(&name);
            summary.push(format!("{name} as {service:?} ({n} workers) at {broker}"));
            // Which requests must run at most once: those of APIs not marked idempotent.
            let not_idempotent = {
                let apis = apis.clone();
                move |envelope: &Bytes| {
                    wire::decode::<Request<Value>>(envelope).is_ok_and(|r| {
                        r.args
                            .get("api")
                            .and_then(Value::as_str)
                            .and_then(|api| apis.get(api))
                            .is_some_and(|e| !e.api.idempotent)
                    })
                }
            };
            // Each worker counted once, the first time it hears from the broker.
            let seen = Arc::new(std::sync::Mutex::new(vec![false; n]));
            let on_registered = {
                let reg_tx = reg_tx.clone();
                let (service, endpoint) = (service.clone(), broker.to_string());
                move |i: usize| {
                    tracing::info!(broker = %endpoint, service = %service, worker = i, "plugin worker registered with the broker");
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(s) = seen.get_mut(i).filter(|s| !**s) {
                        *s = true;
                        reg_tx.send_modify(|n| *n += 1);
                    }
                }
            };
            let handler = api_handler(name.clone(), apis, registry.clone());
            let replyer = sf_connections::mdp::worker::serve(
                &broker,
                &service,
                handler,
                sf_connections::ReplyerOptions {
                    max_message_bytes: 64 << 20,
                    // Each call in hand finishes within this on stop (the caller is answered
                    // `unavailable` past it).
                    drain_timeout: Duration::from_secs(10),
                    stop: Some(stop.clone()),
                    ..Default::default()
                },
                sf_connections::mdp::WorkerOptions {
                    heartbeat_interval: c.heartbeat(),
                    liveness: c.heartbeat_liveness.unwrap_or(3),
                    workers: n,
                    at_most_once: Some(sf_connections::mdp::RequestFilter(Arc::new(
                        not_idempotent,
                    ))),
                    on_registered: Some(sf_connections::mdp::RegisteredHook(Arc::new(
                        on_registered,
                    ))),
                },
            )
            .await
            .map_err(|e| Error::Config(format!("{at}: {e}")))?;
            total += n;
            replyers.push(replyer);
        }
        Ok(PluginWorkers {
            stop,
            replyers,
            registered,
            total,
            summary: summary.join(", "),
        })
    }

    /// What is served, for a log line: `pricing as "plugin.pricing" (4 workers) at host:port`.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// Resolves once every worker has heard from the broker since it registered (the
    /// broker heartbeats a worker only once it knows it).
    pub async fn all_registered(&self) {
        let mut rx = self.registered.clone();
        let total = self.total;
        let _ = rx.wait_for(|n| *n >= total).await;
    }

    /// Stops: each worker finishes the call in hand (all within 12 s), says DISCONNECT and
    /// closes.
    pub async fn stop(self) {
        self.stop.cancel();
        let deadline = Instant::now() + Duration::from_secs(12);
        for r in self.replyers {
            let _ = tokio::time::timeout_at(deadline, r.shutdown()).await;
        }
    }
}

/// The workers' handler: `{"api", "query", "body"}` in, the API's answer (`{"value"}`,
/// `{"events"}` or `{"error"}`) out, run in the caller's trace.
fn api_handler(
    plugin_name: String,
    apis: Arc<HashMap<String, Arc<ApiEntry>>>,
    registry: Arc<Registry>,
) -> sf_connections::RawHandler {
    sf_connections::typed(move |args: Value, meta: sf_connections::RequestMeta| {
        let (plugin_name, apis, registry) = (plugin_name.clone(), apis.clone(), registry.clone());
        async move {
            let Value::Object(mut args) = args else {
                return Err(WireError::new(
                    ErrorCode::InvalidArgs,
                    "args must be {\"api\", \"query\", \"body\"}",
                ));
            };
            let api = args.get("api").and_then(Value::as_str).unwrap_or_default();
            let Some(entry) = apis.get(api).cloned() else {
                let mut known: Vec<&str> = apis.keys().map(String::as_str).collect();
                known.sort_unstable();
                return Err(WireError::new(
                    ErrorCode::NotFound,
                    format!(
                        "plugin {plugin_name:?} has no API {api:?} here; its APIs: {}",
                        known.join(", ")
                    ),
                ));
            };
            let query = args
                .remove("query")
                .filter(|q| !q.is_null())
                .unwrap_or_else(|| Value::Object(Map::new()));
            let body = args.remove("body").filter(|b| !b.is_null());
            let ctx = PluginCtx {
                plugin: entry.plugin.clone(),
                registry,
            };
            tracing::debug!(api = %entry.what(), "plugin worker: call started");
            let out = service_framework::in_trace(
                meta.trace,
                plugin::invoke(&entry.handler.erased, query, body, ctx, entry.what()),
            )
            .await;
            Ok::<_, WireError>(encode_output(out).await)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(v: Value) -> Settings {
        Settings::from_value(v).unwrap()
    }

    #[test]
    fn remote_config_is_checked() {
        let s = settings(json!({"plugins": {"p": {"x": 1}}}));
        assert_eq!(RemoteConfig::of(&s, "p").unwrap(), None);
        let s = settings(
            json!({"plugins": {"p": {"remote": {"broker": "h:1", "requester": "h:2", "workers": 2}}}}),
        );
        let c = RemoteConfig::of(&s, "p").unwrap().unwrap();
        assert_eq!(c.service("p"), "plugin.p");
        assert_eq!(c.workers, Some(2));
        for (bad, key) in [
            (json!({"brokr": "h:1"}), "brokr"),
            (json!({"requester": "h:2", "timeout_s": 0}), "timeout_s"),
            (json!({"requester": "h:2", "workers": 0}), "workers"),
            (json!({"requester": "h:2", "service": "mmi.x"}), "service"),
            (json!({}), "broker"),
        ] {
            let s = settings(json!({"plugins": {"p": {"remote": bad}}}));
            let e = RemoteConfig::of(&s, "p").unwrap_err().to_string();
            assert!(e.contains("plugins.p.remote") && e.contains(key), "{e}");
        }
    }

    #[test]
    fn worker_settings_keep_the_plugin_part() {
        let mut s = settings(json!({
            "load_plugins": ["a", "b", "c"],
            "plugins": {
                "a": {"k": 1, "remote": {"broker": "h:1"}},
                "b": {"remote": {"requester": "h:2"}},
            }
        }));
        let c = worker_settings(&mut s, &["a".into()]).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(s.plugins["a"], json!({"k": 1}));
        assert_eq!(s.load_plugins, vec!["a", "b"]);
        let e = worker_settings(&mut s, &["c".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("plugins.c.remote"), "{e}");
    }

    #[tokio::test]
    async fn answers_round_trip() {
        let v = decode_answer(json!({"value": [1, 2]}), "x").unwrap();
        assert!(matches!(v, Output::Value(v) if v == json!([1, 2])));
        let e = decode_answer(encode_output(Err(ApiError::not_found("no SKU"))).await, "x")
            .err()
            .unwrap();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.message, "no SKU");
        let items: Vec<Result<StreamEvent, ApiError>> = vec![
            Ok(StreamEvent::chunk(json!({"a": 1}))),
            Err(ApiError::bad_request("midway")),
        ];
        let out = Output::Stream(futures::stream::iter(items).boxed());
        let Output::Stream(s) = decode_answer(encode_output(Ok(out)).await, "x").unwrap() else {
            panic!("a stream")
        };
        let got: Vec<_> = s.collect().await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].as_ref().unwrap().data, json!({"a": 1}));
        assert_eq!(got[1].as_ref().unwrap_err().status, StatusCode::BAD_REQUEST);
        assert!(decode_answer(json!(3), "x").is_err());
    }
}
