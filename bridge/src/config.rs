//! Settings, from FrameX's sources with FrameX's precedence, highest first:
//!
//! 1. the command line (`--host`, `--port`, `--enable-proxy/--no-enable-proxy`; the plugin
//!    lists given with `--load-plugins` / `--load-builtin-plugins` are added to the configured
//!    ones, as `framex run` does);
//! 2. the environment, nested with `__` (`SERVER__PORT=9000`, `PLUGINS__ECHO__X=1`); a value
//!    that parses as JSON is taken as JSON (`LOAD_PLUGINS='["a"]'`), otherwise as a string;
//! 3. `.env.prod`, then `.env`, with the same names as the environment;
//! 4. `config.json` given with `-c` (the service-framework convention), same keys;
//! 5. `config.toml` in the working directory;
//! 6. `[tool.framex]` in `pyproject.toml` in the working directory (FrameX's lowest source).
//!
//! Objects merge key by key across sources; any other value replaces. The merged tree is
//! checked in one place: an unknown key or a wrong type is an error naming the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The top-level keys, also the environment variable names that are read.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "server",
    "load_plugins",
    "load_builtin_plugins",
    "plugins",
    "auth",
    "bus",
    "metrics",
];

/// Everything the bridge is configured with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `[server]`.
    pub server: ServerSettings,
    /// Plugins to load, by name, from those compiled into the binary.
    pub load_plugins: Vec<String>,
    /// Built-in plugins to load (`echo`; `proxy` is accepted and means `enable_proxy`).
    pub load_builtin_plugins: Vec<String>,
    /// `[plugins.<name>]`: each plugin's config, checked against its config model.
    pub plugins: BTreeMap<String, Value>,
    /// `[auth]`.
    pub auth: AuthSettings,
    /// `[bus]`: services on the bus published as routes.
    pub bus: BusSettings,
    /// `[metrics]`: the bus services whose stats `/metrics` carries.
    pub metrics: crate::bus_metrics::MetricsSettings,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Host to bind (127.0.0.1).
    pub host: String,
    /// Port to bind (8080; 0 picks a free one).
    pub port: u16,
    /// Turns the proxy for upstream OpenAPI services on (`[plugins.proxy]`).
    pub enable_proxy: bool,
    /// Accepted for FrameX compatibility; there is no Ray here, so it must stay false.
    pub use_ray: bool,
    /// Envelope timestamps as `2026-01-01 12:00:00+00:00` instead of FrameX's
    /// `2026-01-01 12:00:00` (both UTC).
    pub timestamp_offset: bool,
    /// Validate JSON bodies and query parameters strictly: no numeric strings for numbers,
    /// no `7.0` for an integer (the default is lax, as pydantic's default mode).
    pub strict_validation: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            host: "127.0.0.1".into(),
            port: 8080,
            enable_proxy: false,
            use_ray: false,
            timestamp_offset: false,
            strict_validation: false,
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Exact path or `prefix/*` -> the keys accepted in `Authorization`.
    pub rules: BTreeMap<String, Vec<String>>,
    /// An OAuth 2.0 login in front of `/docs`, `/redoc` and the OpenAPI document.
    pub oauth: Option<crate::oauth::OauthSettings>,
}

/// `[bus]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusSettings {
    /// HTTP path -> a replyer to call.
    pub routes: BTreeMap<String, BusRouteConfig>,
    /// HTTP path -> a publisher topic served as server-sent events.
    pub streams: BTreeMap<String, BusStreamConfig>,
    /// HTTP path -> an in-state (full or delta) whose current value a GET answers.
    pub states: BTreeMap<String, BusStateConfig>,
    /// Publish every `connections.out.<name>.requester` of addresses.json as
    /// `POST /api/v1/bus/<name>` and every `connections.in.<name>.subscriber` as
    /// `GET /api/v1/bus/<name>` (events) unless a configured route already names it.
    pub auto_routes: bool,
    /// Name -> a service whose replyers become routes while it runs, read from its control
    /// endpoint's `info` (a plugin shipped as a bus service).
    pub services: BTreeMap<String, BusServiceConfig>,
}

/// A service on the bus mounted as a plugin: each of its replyers is
/// `POST /api/v1/<prefix>/<connection>`, with the schemas and metadata its `info` gives,
/// for as long as it answers. A service without a control endpoint (a Python 0.0.18 one)
/// names its routes instead: `routes = ["/path", ..]`, entries of `[bus.routes]`, served
/// while the bridge is connected to their replyers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusServiceConfig {
    /// The service's control endpoint (`host:port`).
    #[serde(default)]
    pub control: Option<String>,
    /// Or, for a service without one: the paths of its `[bus.routes]` and `[bus.streams]`
    /// entries. They are served, and in the OpenAPI document, only while the bridge's
    /// connection to each replyer and publisher is up (the service's process holds them open
    /// while it runs).
    #[serde(default)]
    pub routes: Vec<String>,
    /// The path before each connection's name (default: `/<name>`).
    pub prefix: Option<String>,
    /// Seconds a request to one of its replyers may take (10), and `info` (at most 5).
    pub timeout_s: Option<f64>,
    /// Seconds between two reads of its `info` (1): how soon a service that stopped or
    /// came back is unmounted or mounted.
    pub refresh_s: Option<f64>,
}

impl Default for BusSettings {
    fn default() -> Self {
        BusSettings {
            routes: BTreeMap::new(),
            streams: BTreeMap::new(),
            states: BTreeMap::new(),
            auto_routes: true,
            services: BTreeMap::new(),
        }
    }
}

/// One replyer published as a route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusRouteConfig {
    /// HTTP method (POST): the JSON body is the args. With GET the query parameters are.
    pub method: Option<String>,
    /// The replyer's address (`host:port`, `tcp://...`).
    pub requester: Option<String>,
    /// Or the name of an out-connection in addresses.json (`connections.out.<name>.requester`).
    pub connection: Option<String>,
    /// Seconds to wait for the reply (10); past it the route answers 504.
    pub timeout_s: Option<f64>,
    /// Extra attempts after a timeout (0).
    pub retries: Option<u32>,
    /// A summary for the OpenAPI document.
    pub description: Option<String>,
    /// OpenAPI tags (`["bus"]`).
    pub tags: Option<Vec<String>>,
    /// Answer with the reply as is, without the envelope.
    pub raw_response: bool,
    /// JSON Schema of the args (the request body), for the OpenAPI document.
    pub args_schema: Option<Value>,
    /// JSON Schema of the reply.
    pub return_schema: Option<Value>,
    /// A file with a Rust service's `describe` output: the schemas of
    /// `connections.in.<describe_connection>` are used when none are given above.
    pub describe_file: Option<PathBuf>,
    /// Which in-connection of the described service this route reaches (`reply`).
    pub describe_connection: Option<String>,
}

/// One publisher topic served as a stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusStreamConfig {
    /// The publisher's address (or the bus proxy's subscriber side).
    pub subscriber: Option<String>,
    /// Or the name of an in-connection in addresses.json (`connections.in.<name>.subscriber`).
    pub connection: Option<String>,
    /// Only this topic (empty: everything).
    pub topic: String,
    /// A summary for the OpenAPI document.
    pub description: Option<String>,
    /// OpenAPI tags (`["bus"]`).
    pub tags: Option<Vec<String>>,
    /// JSON Schema of a message's args.
    pub args_schema: Option<Value>,
}

/// One in-state served as a GET route with its current value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusStateConfig {
    /// `full` (the whole state on every change) or `delta` (changes plus snapshots).
    pub kind: StateKindConfig,
    /// The out side's publisher (or the bus proxy's subscriber side).
    pub subscriber: String,
    /// Delta states: the out side's snapshot replyer.
    #[serde(default)]
    pub requester: Option<String>,
    /// The state's topic (empty: none).
    #[serde(default)]
    pub topic: String,
    /// A summary for the OpenAPI document.
    #[serde(default)]
    pub description: Option<String>,
    /// OpenAPI tags (`["bus"]`).
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

/// `full` or `delta`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateKindConfig {
    /// `full_update_in`.
    #[default]
    Full,
    /// `delta_update_in`.
    Delta,
}

/// What the command line says (only what was given).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CliOverrides {
    /// `--host`.
    pub host: Option<String>,
    /// `--port`.
    pub port: Option<u16>,
    /// `--load-plugins` (repeatable).
    pub load_plugins: Vec<String>,
    /// `--load-builtin-plugins` (repeatable).
    pub load_builtin_plugins: Vec<String>,
    /// `--enable-proxy` / `--no-enable-proxy`.
    pub enable_proxy: Option<bool>,
}

/// Where settings come from. [`Sources::from_process`] is what the binary uses; tests give
/// the directory and the environment explicitly.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The folder holding `config.toml`, `.env` and `.env.prod`.
    pub dir: PathBuf,
    /// `-c config.json`.
    pub config_json: Option<PathBuf>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// The command line.
    pub cli: CliOverrides,
}

impl Sources {
    /// The working directory and the process environment.
    pub fn from_process(cli: CliOverrides, config_json: Option<PathBuf>) -> Self {
        Sources {
            dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            config_json,
            env: std::env::vars().collect(),
            cli,
        }
    }
}

impl Settings {
    /// Reads every source and checks the result.
    pub fn load(sources: &Sources) -> Result<Settings> {
        let mut tree = Value::Object(Map::new());
        let pyproject = sources.dir.join("pyproject.toml");
        if pyproject.is_file() {
            let doc = read_toml(&pyproject)?;
            match doc.pointer("/tool/framex") {
                Some(v @ Value::Object(_)) => merge(&mut tree, v.clone()),
                Some(other) => {
                    return Err(Error::Config(format!(
                        "{}: [tool.framex] must be a table, got {other}",
                        pyproject.display()
                    )))
                }
                None => {}
            }
        }
        let toml_path = sources.dir.join("config.toml");
        if toml_path.is_file() {
            merge(&mut tree, read_toml(&toml_path)?);
        }
        if let Some(path) = &sources.config_json {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| Error::Config(format!("{} is not JSON: {e}", path.display())))?;
            if !v.is_object() {
                return Err(Error::Config(format!(
                    "{} must hold a JSON object",
                    path.display()
                )));
            }
            merge(&mut tree, v);
        }
        for name in [".env", ".env.prod"] {
            let path = sources.dir.join(name);
            if path.is_file() {
                let pairs = dotenvy::from_path_iter(&path)
                    .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
                merge(&mut tree, env_tree(&pairs));
            }
        }
        merge(&mut tree, env_tree(&sources.env));
        let mut settings = Settings::from_value(tree)?;
        let cli = &sources.cli;
        if let Some(h) = &cli.host {
            settings.server.host = h.clone();
        }
        if let Some(p) = cli.port {
            settings.server.port = p;
        }
        if let Some(e) = cli.enable_proxy {
            settings.server.enable_proxy = e;
        }
        for p in &cli.load_plugins {
            if !settings.load_plugins.contains(p) {
                settings.load_plugins.push(p.clone());
            }
        }
        for p in &cli.load_builtin_plugins {
            if !settings.load_builtin_plugins.contains(p) {
                settings.load_builtin_plugins.push(p.clone());
            }
        }
        if settings.server.use_ray {
            return Err(Error::Config(
                "server.use_ray: there is no Ray in this bridge; leave it false".into(),
            ));
        }
        Ok(settings)
    }

    /// Checks a merged tree; errors name the key.
    pub fn from_value(tree: Value) -> Result<Settings> {
        serde_path_to_error::deserialize::<_, Settings>(tree).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                Error::Config(e.inner().to_string())
            } else {
                Error::Config(format!("{path}: {}", e.inner()))
            }
        })
    }
}

fn read_toml(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
    let v: toml::Table =
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    serde_json::to_value(v).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// Deep merge: objects key by key, anything else replaces.
pub(crate) fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Environment-style pairs (`SERVER__PORT=9000`) as a tree. Only names whose first part is a
/// top-level key are read, so the rest of the environment is left alone.
fn env_tree(pairs: &[(String, String)]) -> Value {
    let mut tree = Value::Object(Map::new());
    for (name, raw) in pairs {
        let lower = name.to_ascii_lowercase();
        let parts: Vec<&str> = lower.split("__").collect();
        if !TOP_LEVEL_KEYS.contains(&parts[0]) || parts.iter().any(|p| p.is_empty()) {
            continue;
        }
        // server.host is text even when it looks like a number.
        let value = if parts == ["server", "host"] {
            Value::String(raw.clone())
        } else {
            serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.clone()))
        };
        let mut node = value;
        for p in parts.iter().rev() {
            let mut m = Map::new();
            m.insert((*p).to_owned(), node);
            node = Value::Object(m);
        }
        merge(&mut tree, node);
    }
    tree
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn env_names_nest_and_parse() {
        let t = env_tree(&[
            ("SERVER__PORT".into(), "9000".into()),
            ("SERVER__HOST".into(), "1".into()),
            ("LOAD_PLUGINS".into(), "[\"a\"]".into()),
            ("PATH".into(), "/bin".into()),
            ("PLUGINS__ECHO__NAME".into(), "x".into()),
        ]);
        assert_eq!(
            t,
            json!({"server": {"port": 9000, "host": "1"}, "load_plugins": ["a"], "plugins": {"echo": {"name": "x"}}})
        );
    }

    #[test]
    fn unknown_and_mistyped_keys_are_named() {
        let e = Settings::from_value(json!({"server": {"prot": 1}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("server") && e.contains("prot"), "{e}");
        let e = Settings::from_value(json!({"server": {"port": "x"}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.port"), "{e}");
        let e = Settings::from_value(json!({"sever": {}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sever"), "{e}");
    }
}
