//! What each service of a topology declares, and how it is run: a Rust service says it with
//! `describe`, a Python 0.0.18 service with its module's `connection_models` and
//! `state_models` (read by its own interpreter), the built-ins are known here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::topology::{ServiceSpec, Topology};

/// A connection or state kind, as an edge sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// In: answers requests.
    Replyer,
    /// In: receives publishes.
    Subscriber,
    /// In: receives pushed work.
    Puller,
    /// Out: sends requests.
    Requester,
    /// Out: publishes.
    Publisher,
    /// Out: pushes work.
    Pusher,
    /// Out: a local function; no address, no edge.
    ExternalTarget,
    /// In-state, whole updates.
    FullIn,
    /// Out-state, whole updates.
    FullOut,
    /// In-state, changes and snapshots.
    DeltaIn,
    /// Out-state, changes and snapshots.
    DeltaOut,
    /// The bus's publishers side (in: publishers with `is_x_pub` connect to it).
    BusPublishers,
    /// The bus's subscribers side (out: subscribers connect to it).
    BusSubscribers,
    /// The broker's MDP endpoint (in: workers, the replyers of services with `broker = ..`,
    /// connect to it; no edge reaches it).
    BrokerRouter,
}

impl Kind {
    /// From a `connection_type` or `state_type` (Rust `describe`, Python models).
    pub fn from_type(t: &str) -> Option<Kind> {
        Some(match t {
            "replyer" => Kind::Replyer,
            "subscriber" => Kind::Subscriber,
            "puller" => Kind::Puller,
            "requester" => Kind::Requester,
            "publisher" => Kind::Publisher,
            "pusher" => Kind::Pusher,
            "external_target" | "external_request" => Kind::ExternalTarget,
            "full_update_in" => Kind::FullIn,
            "full_update_out" => Kind::FullOut,
            "delta_update_in" => Kind::DeltaIn,
            "delta_update_out" => Kind::DeltaOut,
            _ => return None,
        })
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Replyer => "replyer",
            Kind::Subscriber => "subscriber",
            Kind::Puller => "puller",
            Kind::Requester => "requester",
            Kind::Publisher => "publisher",
            Kind::Pusher => "pusher",
            Kind::ExternalTarget => "external target",
            Kind::FullIn => "full_update_in state",
            Kind::FullOut => "full_update_out state",
            Kind::DeltaIn => "delta_update_in state",
            Kind::DeltaOut => "delta_update_out state",
            Kind::BusPublishers => "bus publishers side",
            Kind::BusSubscribers => "bus subscribers side",
            Kind::BrokerRouter => {
                "broker's MDP endpoint (its workers are services with `broker = ..`)"
            }
        }
    }

    /// States live under `states` in addresses.json, connections under `connections`.
    pub fn is_state(self) -> bool {
        matches!(
            self,
            Kind::FullIn | Kind::FullOut | Kind::DeltaIn | Kind::DeltaOut
        )
    }

    /// The in kinds this out kind may feed.
    pub fn feeds(self) -> &'static [Kind] {
        match self {
            Kind::Requester => &[Kind::Replyer],
            Kind::Publisher => &[Kind::Subscriber, Kind::BusPublishers],
            Kind::BusSubscribers => &[Kind::Subscriber],
            Kind::Pusher => &[Kind::Puller],
            Kind::FullOut => &[Kind::FullIn],
            Kind::DeltaOut => &[Kind::DeltaIn],
            _ => &[],
        }
    }

    /// Request/reply edges may form cycles (services calling each other); data-flow edges
    /// may not.
    pub fn is_request(self) -> bool {
        matches!(self, Kind::Requester | Kind::Replyer)
    }
}

/// One declared connection or state.
#[derive(Debug, Clone)]
pub struct Decl {
    /// Its kind.
    pub kind: Kind,
    /// Its creation arguments with plain values (`is_binder`, `is_x_pub`, `topic`, ...).
    pub creation: Map<String, Value>,
}

/// What a service declares.
#[derive(Debug, Clone)]
pub enum Declared {
    /// A fixed set of in and out connections and states.
    Fixed {
        /// In-connections and in-states.
        inbound: BTreeMap<String, Decl>,
        /// Out-connections and out-states.
        outbound: BTreeMap<String, Decl>,
    },
    /// The HTTP bridge: any in-connection (a subscriber: an SSE route) and any out-connection
    /// (a requester: a POST route), named by the edges.
    Bridge,
}

/// How a service is started.
#[derive(Debug, Clone)]
pub enum Runner {
    /// `service-framework -s NAME ...` (built-ins and Rust service binaries).
    Framework {
        /// The `service-framework` executable.
        exe: PathBuf,
        /// The `-s` value.
        service: String,
    },
    /// `INTERPRETER -u -m service_framework -s MODULE ...`.
    Python {
        /// The interpreter.
        interpreter: PathBuf,
        /// The module file (absolute); [`python_invocation`] gives where it runs and its
        /// `-s` value.
        module: PathBuf,
    },
}

impl Runner {
    /// A short description for the status table.
    pub fn describe(&self) -> String {
        match self {
            Runner::Framework { service, .. } => service.clone(),
            Runner::Python { module, .. } => format!(
                "python {}",
                module.file_name().unwrap_or_default().to_string_lossy()
            ),
        }
    }

    /// True for Python 0.0.18 services (no ready file: readiness is their bound ports).
    pub fn is_python(&self) -> bool {
        matches!(self, Runner::Python { .. })
    }
}

/// Where `service-framework` and the service binaries are: beside this executable.
pub fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

/// The `service-framework` executable that runs every Rust and built-in service.
pub fn framework_exe() -> Result<PathBuf, String> {
    let dir = exe_dir();
    service_framework::cli::find_service_binary("service-framework", dir.as_deref()).ok_or_else(
        || {
            format!(
                "no `service-framework` executable beside {} or on PATH",
                dir.map_or("this program".into(), |d| d.display().to_string())
            )
        },
    )
}

/// The Python interpreter for `spec`.
pub fn interpreter(spec: &ServiceSpec) -> PathBuf {
    spec.interpreter
        .clone()
        .or_else(|| std::env::var("SF_PYTHON").ok().filter(|p| !p.is_empty()))
        .unwrap_or_else(|| "python3".to_owned())
        .into()
}

const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(30);

async fn output(mut cmd: tokio::process::Command, what: &str) -> Result<String, String> {
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(DESCRIBE_TIMEOUT, cmd.output())
        .await
        .map_err(|_| format!("{what} did not answer within {DESCRIBE_TIMEOUT:?}"))?
        .map_err(|e| format!("{what} could not run: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.trim().lines().last().unwrap_or("").to_owned();
        return Err(format!("{what} failed ({}): {last}", out.status));
    }
    String::from_utf8(out.stdout).map_err(|_| format!("{what} printed something not UTF-8"))
}

/// Plain creation values only: functions and classes of a Python model are left out.
fn plain(v: Option<&Value>) -> Map<String, Value> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v.is_boolean() || v.is_number() || v.is_string())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads `{in: {name: {<type_key>: "..", creation_arguments: {..}}}, out: ..}`.
fn side(
    section: Option<&Value>,
    inbound: bool,
    type_key: &str,
    into: &mut BTreeMap<String, Decl>,
    who: &str,
) -> Result<(), String> {
    let key = if inbound { "in" } else { "out" };
    let Some(map) = section.and_then(|s| s.get(key)).and_then(Value::as_object) else {
        return Ok(());
    };
    for (name, d) in map {
        let t = d.get(type_key).and_then(Value::as_str).unwrap_or("");
        let kind = Kind::from_type(t)
            .ok_or_else(|| format!("{who}: {key}.{name} has an unknown {type_key} {t:?}"))?;
        into.insert(
            name.clone(),
            Decl {
                kind,
                creation: plain(d.get("creation_arguments")),
            },
        );
    }
    Ok(())
}

/// Turns a `describe`-shaped document into declarations.
pub fn from_describe(doc: &Value, who: &str) -> Result<Declared, String> {
    let mut inbound = BTreeMap::new();
    let mut outbound = BTreeMap::new();
    for (section, type_key) in [("connections", "connection_type"), ("states", "state_type")] {
        side(doc.get(section), true, type_key, &mut inbound, who)?;
        side(doc.get(section), false, type_key, &mut outbound, who)?;
    }
    Ok(Declared::Fixed { inbound, outbound })
}

/// Reads a Python 0.0.18 module's models with its own interpreter, as `describe` would
/// print them (module-level code runs, as it does when the service starts).
const PY_DESCRIBE: &str = r#"
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("sf_up_service", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
def plain(d):
    return {k: v for k, v in (d or {}).items() if isinstance(v, (bool, int, float, str))}
def models(m, key):
    out = {}
    for side in ("in", "out"):
        out[side] = {}
        for name, model in ((m or {}).get(side) or {}).items():
            creation = plain(model.get("required_creation_arguments"))
            creation.update(plain(model.get("optional_creation_arguments")))
            out[side][name] = {key: model.get(key), "creation_arguments": creation}
    return out
print(json.dumps({
    "connections": models(getattr(mod, "connection_models", None), "connection_type"),
    "states": models(getattr(mod, "state_models", None), "state_type"),
}))
"#;

/// A Python name: what 0.0.18 can import a module file or folder as.
fn importable(part: &str) -> bool {
    part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Where a Python 0.0.18 `module` runs and its `-s` value, for a topology in `dir`. 0.0.18
/// imports `-s` as a module path relative to its working directory (it drops `./` and `.py`
/// and turns `/` into `.`; an absolute path fails), so: in `dir` with `./<path from dir>`
/// when the module is under `dir` by importable names, else in the module's own directory
/// with `./<file>`.
pub fn python_invocation(module: &Path, dir: &Path) -> (PathBuf, String) {
    let file = module
        .canonicalize()
        .unwrap_or_else(|_| module.to_path_buf());
    if let Ok(rel) = file.strip_prefix(dir) {
        let text = rel.to_string_lossy();
        if text
            .strip_suffix(".py")
            .is_some_and(|stem| stem.split('/').all(importable))
        {
            return (dir.to_path_buf(), format!("./{text}"));
        }
    }
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    let home = file
        .parent()
        .map_or_else(|| dir.to_path_buf(), Path::to_path_buf);
    (home, format!("./{name}"))
}

/// What `name` (a service of the topology) declares, and how it runs.
pub async fn declared(topology: &Topology, name: &str) -> Result<(Runner, Declared), String> {
    let spec = &topology.services[name];
    let who = format!("service {name:?}");
    if let Some(module) = &spec.python {
        let module = topology.resolve(module);
        if !module.is_file() {
            return Err(format!("{who}: no Python module {}", module.display()));
        }
        let file = module.file_name().unwrap_or_default().to_string_lossy();
        if !file.strip_suffix(".py").is_some_and(importable) {
            return Err(format!(
                "{who}: service_framework 0.0.18 cannot import the Python module {}: it imports `-s` as a module path; name it <letters, digits, _>.py",
                module.display()
            ));
        }
        let interpreter = interpreter(spec);
        let mut cmd = tokio::process::Command::new(&interpreter);
        cmd.arg("-c")
            .arg(PY_DESCRIBE)
            .arg(&module)
            .current_dir(&topology.dir);
        let text = output(
            cmd,
            &format!("{who}: reading its models with {}", interpreter.display()),
        )
        .await?;
        let doc: Value = serde_json::from_str(text.trim().lines().last().unwrap_or(""))
            .map_err(|e| format!("{who}: its models could not be read: {e}"))?;
        let d = from_describe(&doc, &who)?;
        return Ok((
            Runner::Python {
                interpreter,
                module: module.canonicalize().unwrap_or(module),
            },
            d,
        ));
    }
    let service = spec.service.clone().unwrap_or_default();
    let exe = framework_exe()?;
    let runner = Runner::Framework {
        exe: exe.clone(),
        service: service.clone(),
    };
    match service.as_str() {
        "bus" => {
            let decl = |kind| Decl {
                kind,
                creation: Map::new(),
            };
            Ok((
                runner,
                Declared::Fixed {
                    inbound: BTreeMap::from([("publishers".into(), decl(Kind::BusPublishers))]),
                    outbound: BTreeMap::from([("subscribers".into(), decl(Kind::BusSubscribers))]),
                },
            ))
        }
        "bridge" => Ok((runner, Declared::Bridge)),
        "broker" => Ok((
            runner,
            Declared::Fixed {
                inbound: BTreeMap::from([(
                    "router".into(),
                    Decl {
                        kind: Kind::BrokerRouter,
                        creation: Map::new(),
                    },
                )]),
                outbound: BTreeMap::new(),
            },
        )),
        _ => {
            // A path is relative to the topology's directory; a bare name is looked up
            // beside service-framework and on PATH.
            let path_like = service.contains('/');
            let binary = if path_like {
                let p = topology.resolve(Path::new(&service));
                p.is_file().then_some(p)
            } else {
                service_framework::cli::find_service_binary(&service, exe_dir().as_deref())
            };
            let Some(binary) = binary else {
                return Err(format!(
                    "{who}: unknown service {service:?}: not a built-in (bus, bridge, broker) and no executable named {service:?} beside {} or on PATH",
                    exe.parent().map_or("service-framework".into(), |d| d.display().to_string())
                ));
            };
            let runner = Runner::Framework {
                exe,
                service: if path_like {
                    binary.display().to_string()
                } else {
                    service
                },
            };
            let mut cmd = tokio::process::Command::new(&binary);
            cmd.arg("describe");
            let text = output(cmd, &format!("{who}: `{} describe`", binary.display())).await?;
            let doc: Value = serde_json::from_str(&text)
                .map_err(|e| format!("{who}: `describe` did not print JSON: {e}"))?;
            Ok((runner, from_describe(&doc, &who)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn describe_documents_become_declarations() {
        let d = from_describe(
            &json!({
                "connections": {"in": {"r": {"connection_type": "replyer", "creation_arguments": {"max_concurrency": 4}}},
                                "out": {"p": {"connection_type": "pusher"}}},
                "states": {"out": {"s": {"state_type": "delta_update_out", "creation_arguments": {"topic": "t", "f": null}}}}
            }),
            "x",
        )
        .unwrap();
        let Declared::Fixed { inbound, outbound } = d else {
            panic!()
        };
        assert_eq!(inbound["r"].kind, Kind::Replyer);
        assert_eq!(outbound["p"].kind, Kind::Pusher);
        assert_eq!(outbound["s"].kind, Kind::DeltaOut);
        assert_eq!(outbound["s"].creation.len(), 1);
    }

    #[test]
    fn a_python_module_runs_where_0_0_18_can_import_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        for d in ["py", "other", "not-a-name"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in ["quotes.py", "py/feed.py", "other/x.py", "not-a-name/y.py"] {
            std::fs::write(root.join(f), "").unwrap();
        }
        let at = |m: &str, d: &str| python_invocation(&root.join(m), &root.join(d));
        // Under the topology's directory: run there.
        assert_eq!(at("quotes.py", ""), (root.clone(), "./quotes.py".into()));
        assert_eq!(
            at("py/../py/feed.py", ""),
            (root.clone(), "./py/feed.py".into())
        );
        // Elsewhere, or under a folder that is no Python name: in its own directory.
        assert_eq!(at("quotes.py", "py"), (root.clone(), "./quotes.py".into()));
        assert_eq!(
            at("other/x.py", "py"),
            (root.join("other"), "./x.py".into())
        );
        assert_eq!(
            at("not-a-name/y.py", ""),
            (root.join("not-a-name"), "./y.py".into())
        );
    }

    #[test]
    fn an_unknown_type_is_named() {
        let e = from_describe(
            &json!({"connections": {"in": {"r": {"connection_type": "router"}}}}),
            "service \"x\"",
        )
        .unwrap_err();
        assert!(e.contains("in.r") && e.contains("router"), "{e}");
    }
}
