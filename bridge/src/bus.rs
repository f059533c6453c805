//! Services on the bus as HTTP routes.
//!
//! A replyer (a Rust service or a Python 0.0.18 one) becomes a route: the JSON body (POST) or
//! the query parameters (GET) are the request's `args`, the reply's `return_args` is the
//! envelope's `data`. An error reply keeps its meaning as an HTTP status:
//!
//! | reply / failure                | HTTP |
//! |--------------------------------|------|
//! | `invalid_args`                 | 422 (with `data.detail`) |
//! | `malformed`                    | 400 |
//! | `not_found`                    | 404 |
//! | `too_large`                    | 413 |
//! | `handler_error`, `internal`    | 500 with the service's message |
//! | `invalid_return`, bad reply, peer gone | 502 |
//! | `unavailable`                  | 503 |
//! | no reply in time, `timeout`    | 504 |
//!
//! A publisher's topic becomes a `text/event-stream` route: each message's args is one
//! `message_chunk` event, for as long as the client stays.
//!
//! An in-state (`full` or `delta`, followed with `sf-states` from the moment the bridge
//! starts) becomes a GET route answering `{"state": {...}, "current_num": n}`
//! (`current_num` is -1 until something arrived).
//!
//! The OpenAPI schemas of a route come from `args_schema` / `return_schema` in the config, or
//! from a file holding a Rust service's `describe` output (`describe_file`, with
//! `describe_connection` naming the in-connection).

use std::path::Path;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use futures::StreamExt;
use serde_json::{json, Map, Value};
use service_framework::security::{SecuritySettings, Side};
use service_framework::AddressesFile;
use sf_connections::{
    Address, ErrorCode, Requester, RequesterOptions, Security, Subscriber, SubscriberOptions,
    WorkflowId,
};

use crate::config::{
    BusRouteConfig, BusSettings, BusStateConfig, BusStreamConfig, StateKindConfig,
};
use crate::envelope::StreamEvent;
use crate::error::{ApiError, Error, Result};
use crate::plugin::{prefixed, EventStream};

/// A replyer published as a route.
#[derive(Debug)]
pub(crate) struct BusRoute {
    pub path: String,
    pub method: Method,
    pub target: String,
    pub requester: Requester,
    pub raw_response: bool,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub args_schema: Option<Value>,
    pub return_schema: Option<Value>,
}

impl BusRoute {
    /// One request; the reply as JSON.
    pub async fn call(&self, args: Value) -> Result<Value, ApiError> {
        let reply: rmpv::Value = self
            .requester
            .request_traced(
                &args,
                WorkflowId::new_random(),
                Some(crate::trace::for_call()),
            )
            .await
            .map_err(|e| map_error(e, &self.target))?;
        Ok(msgpack_to_json(reply))
    }
}

/// A publisher topic served as events.
#[derive(Debug)]
pub(crate) struct BusStream {
    pub path: String,
    pub address: Address,
    pub topic: String,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub args_schema: Option<Value>,
    /// A CURVE client's, when the security file says so.
    pub security: Security,
}

impl BusStream {
    /// Subscribes for one client; the stream ends when the client goes (the subscriber is
    /// dropped with it).
    pub async fn open(&self) -> Result<EventStream, ApiError> {
        let sub = Subscriber::start(
            &self.address,
            SubscriberOptions {
                topic: self.topic.clone(),
                security: self.security.clone(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("cannot subscribe to {}: {e}", self.address),
            )
        })?;
        let s = futures::stream::unfold(sub, |mut sub| async move {
            let d = sub.next().await?;
            let item = d
                .args::<rmpv::Value>()
                .map(|a| StreamEvent::chunk(msgpack_to_json(a)))
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        format!("a message could not be decoded: {e}"),
                    )
                });
            Some((item, sub))
        });
        Ok(s.boxed())
    }
}

/// An in-state served as its current value.
pub(crate) struct BusState {
    pub path: String,
    pub source: String,
    pub description: Option<String>,
    pub tags: Vec<String>,
    view: tokio::sync::watch::Receiver<sf_states::StateView>,
    _holder: StateHolder,
}

#[allow(dead_code)] // held only to keep the subscription alive
enum StateHolder {
    Full(sf_states::FullUpdateIn),
    Delta(sf_states::DeltaUpdateIn),
}

impl std::fmt::Debug for BusState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusState")
            .field("path", &self.path)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl BusState {
    /// The current view as JSON.
    pub fn current(&self) -> Value {
        let view = self.view.borrow().clone();
        let state: Map<String, Value> = view
            .state
            .iter()
            .map(|(k, v)| (k.clone(), msgpack_to_json(v.clone())))
            .collect();
        json!({"state": state, "current_num": view.current_num})
    }
}

/// Starts following the configured in-states.
pub(crate) async fn states(
    settings: &BusSettings,
    sec: Option<&SecuritySettings>,
) -> Result<Vec<BusState>> {
    let mut out = Vec::new();
    for (path, cfg) in &settings.states {
        out.push(state(path, cfg, sec).await?);
    }
    Ok(out)
}

async fn state(
    path: &str,
    cfg: &BusStateConfig,
    sec: Option<&SecuritySettings>,
) -> Result<BusState> {
    let path = prefixed(path);
    let what = format!("bus.states.\"{path}\"");
    let options = sf_states::StateOptions {
        topic: cfg.topic.clone(),
        // The bridge only connects: a CURVE client of the state's out side.
        connect_security: match sec {
            Some(s) => s
                .state(Side::In, &path, false)
                .map_err(|e| Error::Config(e.to_string()))?,
            None => Security::Null,
        },
        ..Default::default()
    };
    let sub = Address::from(cfg.subscriber.as_str());
    let (holder, view) = match cfg.kind {
        StateKindConfig::Full => {
            if cfg.requester.is_some() {
                return Err(Error::Config(format!(
                    "{what}.requester: only delta states ask for snapshots"
                )));
            }
            let s = sf_states::FullUpdateIn::start(&sub, &options)
                .await
                .map_err(|e| Error::Bus(format!("{what}: {e}")))?;
            let v = s.watch();
            (StateHolder::Full(s), v)
        }
        StateKindConfig::Delta => {
            let Some(req) = &cfg.requester else {
                return Err(Error::Config(format!(
                    "{what}.requester: a delta state needs the out side's snapshot replyer"
                )));
            };
            let s = sf_states::DeltaUpdateIn::start(&sub, &Address::from(req.as_str()), &options)
                .await
                .map_err(|e| Error::Bus(format!("{what}: {e}")))?;
            let v = s.watch();
            (StateHolder::Delta(s), v)
        }
    };
    Ok(BusState {
        source: cfg.subscriber.clone(),
        path,
        description: cfg.description.clone(),
        tags: cfg.tags.clone().unwrap_or_else(|| vec!["bus".into()]),
        view,
        _holder: holder,
    })
}

/// The HTTP meaning of a failed request.
/// The field a decoding message names (serde's ``missing field `x` `` and
/// ``unknown field `x` ``, or a path such as `args.x: ...` / `x: ...`), for `loc`.
fn named_field(message: &str) -> Option<String> {
    for marker in ["missing field `", "unknown field `", "field `"] {
        if let Some(rest) = message.split(marker).nth(1) {
            if let Some(name) = rest.split('`').next().filter(|n| !n.is_empty()) {
                return Some(name.to_owned());
            }
        }
    }
    let body = message.strip_prefix("invalid args: ").unwrap_or(message);
    let (head, _) = body.split_once(": ")?;
    let head = head.strip_prefix("args.").unwrap_or(head);
    (!head.is_empty()
        && head
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '.' || c == '[' || c == ']'))
    .then(|| head.to_owned())
}

pub(crate) fn map_error(e: sf_connections::Error, target: &str) -> ApiError {
    use sf_connections::Error as E;
    match e {
        E::Remote(w) => {
            let status = match w.code {
                ErrorCode::InvalidArgs => StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::Malformed => StatusCode::BAD_REQUEST,
                ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::NotFound => StatusCode::NOT_FOUND,
                ErrorCode::HandlerError | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::InvalidReturn => StatusCode::BAD_GATEWAY,
                ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let data = if w.code == ErrorCode::InvalidArgs {
                let mut loc = vec![json!("body")];
                if let Some(field) = named_field(&w.message) {
                    loc.push(json!(field));
                }
                json!({"code": w.code, "detail": [{"loc": loc, "msg": w.message, "type": "invalid_args"}]})
            } else {
                json!({"code": w.code})
            };
            ApiError::new(status, w.message).with_data(data)
        }
        E::Timeout(d) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("no reply from {target} within {d:?}"),
        ),
        E::Codec(m) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("the reply from {target} could not be read: {m}"),
        ),
        E::TooLarge { size, limit } => ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("the reply from {target} is {size} bytes, over the limit of {limit}"),
        ),
        E::Socket(m) => ApiError::new(StatusCode::BAD_GATEWAY, format!("{target}: {m}")),
        E::Closed => ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("the connection to {target} is closed"),
        ),
        other => ApiError::internal(format!("{target}: {other}")),
    }
}

/// msgpack -> JSON: [`Dynamic`]'s JSON view (binary as an array of byte values, non-string
/// map keys as their text).
pub(crate) fn msgpack_to_json(v: rmpv::Value) -> Value {
    sf_connections::Dynamic(v).into_json()
}

/// Builds the configured routes and streams, plus the automatic ones from addresses.json.
pub(crate) fn build(
    settings: &BusSettings,
    addresses: Option<&AddressesFile>,
    sec: Option<&SecuritySettings>,
) -> Result<(Vec<BusRoute>, Vec<BusStream>)> {
    let mut routes = Vec::new();
    let mut streams = Vec::new();
    let mut named = Vec::new();
    for (path, cfg) in &settings.routes {
        if let Some(c) = &cfg.connection {
            named.push(c.clone());
        }
        routes.push(route(path, cfg, addresses, sec)?);
    }
    for (path, cfg) in &settings.streams {
        if let Some(c) = &cfg.connection {
            named.push(c.clone());
        }
        streams.push(stream(path, cfg, addresses, sec)?);
    }
    if let (true, Some(file)) = (settings.auto_routes, addresses) {
        for (name, entry) in &file.connections.outbound {
            if named.contains(name) || !entry.contains_key("requester") {
                continue;
            }
            let cfg = BusRouteConfig {
                connection: Some(name.clone()),
                description: Some(format!(
                    "out-connection {name:?} of addresses.json: the body is the request's args"
                )),
                ..Default::default()
            };
            routes.push(route(&format!("/bus/{name}"), &cfg, addresses, sec)?);
        }
        for (name, entry) in &file.connections.inbound {
            if named.contains(name) || !entry.contains_key("subscriber") {
                continue;
            }
            let cfg = BusStreamConfig {
                connection: Some(name.clone()),
                description: Some(format!(
                    "in-connection {name:?} of addresses.json: every message as an event"
                )),
                ..Default::default()
            };
            streams.push(stream(&format!("/bus/{name}"), &cfg, addresses, sec)?);
        }
    }
    Ok((routes, streams))
}

fn address_of(
    what: &str,
    direct: &Option<String>,
    connection: &Option<String>,
    side_out: bool,
    key: &str,
    addresses: Option<&AddressesFile>,
) -> Result<Address> {
    match (direct, connection) {
        (Some(a), None) => Ok(Address::from(a.as_str())),
        (None, Some(name)) => {
            let file = addresses.ok_or_else(|| {
                Error::Bus(format!(
                    "{what}: connection {name:?} is looked up in addresses.json, but none was given (-a)"
                ))
            })?;
            let side = if side_out {
                &file.connections.outbound
            } else {
                &file.connections.inbound
            };
            side.get(name)
                .and_then(|e| e.get(key))
                .cloned()
                .ok_or_else(|| {
                    Error::Bus(format!(
                        "{what}: addresses.json has no connections.{}.{name}.{key}",
                        if side_out { "out" } else { "in" }
                    ))
                })
        }
        (Some(_), Some(_)) => Err(Error::Bus(format!(
            "{what}: give either {key} or connection, not both"
        ))),
        (None, None) => Err(Error::Bus(format!(
            "{what}: needs {key} = \"host:port\" or connection = \"<name in addresses.json>\""
        ))),
    }
}

/// The bridge's security towards a bus service: the security file's entry for the named
/// connection (`connections.<side>.<name>`), else for the route's path, else its service
/// entry; NULL without a file. The bridge always connects: it is a CURVE client.
fn client_security(
    sec: Option<&SecuritySettings>,
    side: Side,
    connection: &Option<String>,
    path: &str,
) -> Result<Security> {
    let Some(s) = sec else {
        return Ok(Security::Null);
    };
    s.connection(side, connection.as_deref().unwrap_or(path), false)
        .map_err(|e| Error::Config(e.to_string()))
}

fn route(
    path: &str,
    cfg: &BusRouteConfig,
    addresses: Option<&AddressesFile>,
    sec: Option<&SecuritySettings>,
) -> Result<BusRoute> {
    let path = prefixed(path);
    let what = format!("bus.routes.\"{path}\"");
    let address = address_of(
        &what,
        &cfg.requester,
        &cfg.connection,
        true,
        "requester",
        addresses,
    )?;
    let method = match &cfg.method {
        Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| Error::Config(format!("{what}.method: {m:?} is not an HTTP method")))?,
        None => Method::POST,
    };
    let timeout = cfg.timeout_s.unwrap_or(10.0);
    if !(timeout > 0.0 && timeout.is_finite()) {
        return Err(Error::Config(format!(
            "{what}.timeout_s must be a positive number of seconds"
        )));
    }
    let requester = Requester::connect(
        &address,
        RequesterOptions {
            timeout: Duration::from_secs_f64(timeout),
            retries: cfg.retries.unwrap_or(0),
            security: client_security(sec, Side::Out, &cfg.connection, &path)?,
            ..Default::default()
        },
    )
    .map_err(|e| Error::Bus(format!("{what}: {e}")))?;
    let (mut args_schema, mut return_schema) = (cfg.args_schema.clone(), cfg.return_schema.clone());
    if let Some(file) = &cfg.describe_file {
        let (a, r) = described(
            file,
            cfg.describe_connection.as_deref().unwrap_or("reply"),
            &what,
        )?;
        args_schema = args_schema.or(a);
        return_schema = return_schema.or(r);
    }
    Ok(BusRoute {
        target: address.to_string(),
        path,
        method,
        requester,
        raw_response: cfg.raw_response,
        description: cfg.description.clone(),
        tags: cfg.tags.clone().unwrap_or_else(|| vec!["bus".into()]),
        args_schema,
        return_schema,
    })
}

fn stream(
    path: &str,
    cfg: &BusStreamConfig,
    addresses: Option<&AddressesFile>,
    sec: Option<&SecuritySettings>,
) -> Result<BusStream> {
    let path = prefixed(path);
    let what = format!("bus.streams.\"{path}\"");
    let address = address_of(
        &what,
        &cfg.subscriber,
        &cfg.connection,
        false,
        "subscriber",
        addresses,
    )?;
    address
        .connect_endpoint()
        .map_err(|e| Error::Bus(format!("{what}: {e}")))?;
    let security = client_security(sec, Side::In, &cfg.connection, &path)?;
    Ok(BusStream {
        path,
        address,
        topic: cfg.topic.clone(),
        description: cfg.description.clone(),
        tags: cfg.tags.clone().unwrap_or_else(|| vec!["bus".into()]),
        args_schema: cfg.args_schema.clone(),
        security,
    })
}

/// The args and return schemas of `connections.in.<connection>` in a `describe` output.
fn described(file: &Path, connection: &str, what: &str) -> Result<(Option<Value>, Option<Value>)> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::Bus(format!("{what}.describe_file {}: {e}", file.display())))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        Error::Bus(format!(
            "{what}.describe_file {} is not JSON: {e}",
            file.display()
        ))
    })?;
    let conn = v
        .pointer(&format!("/connections/in/{connection}"))
        .ok_or_else(|| {
            Error::Bus(format!(
                "{what}: {} describes no in-connection {connection:?}",
                file.display()
            ))
        })?;
    let get = |k: &str| conn.get(k).filter(|s| !s.is_null()).cloned();
    Ok((get("args"), get("return_args")))
}

/// The security towards a `[bus.services]` publisher (the file's entry for `conn`, else
/// `path`'s).
pub(crate) fn client_security_for(
    sec: Option<&SecuritySettings>,
    conn: &str,
    path: &str,
) -> Result<Security> {
    client_security(sec, Side::In, &Some(conn.to_owned()), path)
}

/// A requester towards a bus service's socket at `address` (for `[bus.services]`), with the
/// security file's entry for `conn` (else `path`'s).
pub(crate) fn connect(
    address: &str,
    timeout_s: f64,
    sec: Option<&SecuritySettings>,
    conn: &str,
    path: &str,
) -> Result<Requester> {
    Requester::connect(
        &Address::from(address),
        RequesterOptions {
            timeout: Duration::from_secs_f64(timeout_s),
            security: client_security(sec, Side::Out, &Some(conn.to_owned()), path)?,
            ..Default::default()
        },
    )
    .map_err(|e| Error::Bus(format!("{address}: {e}")))
}
