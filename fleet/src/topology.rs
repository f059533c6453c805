//! The topology file: which services run, with what config, and which connection feeds which.
//!
//! ```toml
//! name = "pipeline"                      # optional: shown in the status table
//! edges = [                              # "<service>.<out> -> <service>.<in>"
//!   "source.items -> square.items",      # an out-connection or out-state feeds
//!   "square.squares -> sink.squares",    #   an in-connection or in-state
//! ]
//!
//! [services.source]
//! service = "pipeline_source"            # a built-in (bus, bridge, broker), a Rust binary
//! main = true                            #   (beside service-framework or on PATH) or a path
//! config = { count = 1000 }              # written to its config.json (or config_file = "..")
//!
//! [services.square]
//! service = "pipeline_square"
//! replicas = 2                           # instances square.1 and square.2
//!
//! [services.legacy]
//! python = "legacy.py"                   # a Python service_framework 0.0.18 module
//!
//! [services.mdp]
//! service = "broker"                     # the Majordomo broker built-in
//!
//! [services.echo]
//! service = "echo_replyer"
//! replicas = 3
//! broker = "mdp"                         # its replyers register with mdp as MDP workers;
//!                                        #   requester edges to them go through mdp
//! ```
//!
//! Paths in the file are relative to the file's directory, and services run there.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyFile {
    /// Shown in the status table and used to name generated resources.
    #[serde(default)]
    pub name: Option<String>,
    /// `"<service>.<out-connection or out-state> -> <service>.<in-connection or in-state>"`.
    #[serde(default)]
    pub edges: Vec<String>,
    /// Lines `up` prints once every service started: where to look, what to try.
    #[serde(default)]
    pub notes: Vec<String>,
    /// The services, by name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSpec>,
}

/// One service of the topology.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// A built-in (`bus`, `bridge`, `broker`), the name of a Rust service binary, or a path to one.
    #[serde(default)]
    pub service: Option<String>,
    /// A Python `service_framework` 0.0.18 service module, run with `interpreter`.
    #[serde(default)]
    pub python: Option<PathBuf>,
    /// The Python interpreter (default: `$SF_PYTHON`, else `python3`).
    #[serde(default)]
    pub interpreter: Option<String>,
    /// Main mode (`-m`): the service's `main` drives the work.
    #[serde(default)]
    pub main: bool,
    /// The config, inline; written to the service's config.json.
    #[serde(default)]
    pub config: Option<Value>,
    /// Or a config file.
    #[serde(default)]
    pub config_file: Option<PathBuf>,
    /// More command-line arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The topology's `broker` service its replyers are served through: each registers with
    /// it as MDP service `<this service>.<connection>`, the broker binds a front-end for it,
    /// and requester edges to it connect there (so a replicated service may serve requests).
    #[serde(default)]
    pub broker: Option<String>,
    /// Instances (1). Each replica connects; a replicated service cannot be the binding end
    /// of an edge.
    #[serde(default = "one")]
    pub replicas: u32,
    /// When a stopped instance is started again.
    #[serde(default)]
    pub restart: Restart,
    /// The `options` section of its addresses.json (creation options by connection and
    /// state: `{"connections": {"out": {"items": {"send_timeout_s": 5}}}}`).
    #[serde(default)]
    pub options: Option<Value>,
    /// Seconds it may take to be ready (30).
    #[serde(default)]
    pub ready_timeout_s: Option<f64>,
    /// Seconds it gets to stop after SIGTERM before SIGKILL (15).
    #[serde(default)]
    pub stop_timeout_s: Option<f64>,
}

fn one() -> u32 {
    1
}

/// The restart policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Restarted when it exits with an error or is killed (the default). A main-mode service
    /// that finishes with exit 0 is done.
    #[default]
    OnFailure,
    /// Restarted whenever it exits.
    Always,
    /// Never restarted.
    Never,
}

/// One end of an edge: `service.name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct End {
    /// The service.
    pub service: String,
    /// Its connection or state.
    pub name: String,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.service, self.name)
    }
}

/// `from -> to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// The out side.
    pub from: End,
    /// The in side.
    pub to: End,
}

impl fmt::Display for Edge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.from, self.to)
    }
}

impl Edge {
    /// Parses `"a.x -> b.y"`.
    pub fn parse(text: &str) -> Result<Edge, String> {
        let Some((from, to)) = text.split_once("->") else {
            return Err(format!(
                "edge {text:?}: expected \"<service>.<out> -> <service>.<in>\""
            ));
        };
        let end = |s: &str| -> Result<End, String> {
            let s = s.trim();
            match s.split_once('.') {
                Some((svc, name))
                    if !svc.is_empty()
                        && !name.is_empty()
                        && !name.contains('.')
                        && !s.contains(char::is_whitespace) =>
                {
                    Ok(End {
                        service: svc.to_owned(),
                        name: name.to_owned(),
                    })
                }
                _ => Err(format!(
                    "edge {text:?}: {s:?} is not \"<service>.<connection or state>\""
                )),
            }
        };
        Ok(Edge {
            from: end(from)?,
            to: end(to)?,
        })
    }
}

/// A topology read from its file.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Its name (the file's `name`, else the file's stem).
    pub name: String,
    /// The directory services run in and paths are relative to.
    pub dir: PathBuf,
    /// The file.
    pub path: PathBuf,
    /// The services.
    pub services: BTreeMap<String, ServiceSpec>,
    /// The edges, parsed.
    pub edges: Vec<Edge>,
    /// Lines printed once every service started.
    pub notes: Vec<String>,
}

/// Names a service may have: they become file names, log prefixes and Kubernetes names.
fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 50
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && name.starts_with(|c: char| c.is_ascii_lowercase())
}

impl Topology {
    /// Reads and parses `path`: every mistake found is listed.
    pub fn read(path: &Path) -> Result<Topology, Vec<String>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
        Topology::parse(&text, path)
    }

    /// Parses the text of the file at `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Topology, Vec<String>> {
        let file: TopologyFile = toml::from_str(text)
            .map_err(|e| vec![format!("{}: {}", path.display(), e.to_string().trim())])?;
        let mut errors = Vec::new();
        if file.services.is_empty() {
            errors.push(format!("{}: no [services.NAME] table", path.display()));
        }
        for (name, spec) in &file.services {
            if !valid_service_name(name) {
                errors.push(format!(
                    "service {name:?}: a name is lowercase letters, digits, '_' and '-', starting with a letter (at most 50)"
                ));
            }
            match (&spec.service, &spec.python) {
                (None, None) => errors.push(format!(
                    "service {name:?}: give `service = \"<binary or built-in>\"` or `python = \"<module.py>\"`"
                )),
                (Some(_), Some(_)) => errors.push(format!(
                    "service {name:?}: give `service` or `python`, not both"
                )),
                _ => {}
            }
            if spec.interpreter.is_some() && spec.python.is_none() {
                errors.push(format!(
                    "service {name:?}: `interpreter` is for Python services (`python = ..`)"
                ));
            }
            if spec.config.is_some() && spec.config_file.is_some() {
                errors.push(format!(
                    "service {name:?}: give `config` or `config_file`, not both"
                ));
            }
            if let Some(c) = &spec.config {
                if !c.is_object() {
                    errors.push(format!("service {name:?}: `config` must be a table"));
                }
            }
            if let Some(o) = &spec.options {
                if !o.is_object() {
                    errors.push(format!("service {name:?}: `options` must be a table"));
                }
            }
            if spec.replicas == 0 || spec.replicas > 64 {
                errors.push(format!(
                    "service {name:?}: replicas must be 1 to 64 (it is {})",
                    spec.replicas
                ));
            }
            for (what, v) in [
                ("ready_timeout_s", spec.ready_timeout_s),
                ("stop_timeout_s", spec.stop_timeout_s),
            ] {
                if let Some(v) = v {
                    if !(v.is_finite() && v > 0.0 && v <= 3600.0) {
                        errors.push(format!(
                            "service {name:?}: {what} must be between 0 and 3600 seconds (it is {v})"
                        ));
                    }
                }
            }
        }
        let mut edges = Vec::new();
        for text in &file.edges {
            match Edge::parse(text) {
                Ok(e) => {
                    if edges.contains(&e) {
                        errors.push(format!("edge \"{e}\" is given twice"));
                    } else {
                        edges.push(e);
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let dir = dir.canonicalize().unwrap_or(dir);
        let name = file.name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map_or("topology".into(), |s| s.to_string_lossy().into_owned())
        });
        Ok(Topology {
            name,
            dir,
            path: path.to_path_buf(),
            services: file.services,
            edges,
            notes: file.notes,
        })
    }

    /// A path of the file, made absolute against the file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Topology, Vec<String>> {
        Topology::parse(text, Path::new("t.toml"))
    }

    #[test]
    fn a_whole_file_parses() {
        let t = parse(
            r#"
name = "p"
edges = ["a.out -> b.in"]
[services.a]
service = "x"
main = true
config = { n = 3, s = "v" }
[services.b]
python = "b.py"
replicas = 2
restart = "always"
"#,
        )
        .unwrap();
        assert_eq!(t.name, "p");
        assert_eq!(t.edges[0].to_string(), "a.out -> b.in");
        assert_eq!(t.services["a"].config.as_ref().unwrap()["n"], 3);
        assert_eq!(t.services["b"].replicas, 2);
        assert_eq!(t.services["b"].restart, Restart::Always);
    }

    #[test]
    fn mistakes_are_named_all_at_once() {
        let errors = parse(
            r#"
edges = ["a.out => b.in", "a -> b.in", "a.x -> b.y", "a.x -> b.y"]
[services.a]
[services.B]
service = "x"
python = "y.py"
[services.c]
service = "x"
replicas = 0
config = [1]
"#,
        )
        .unwrap_err();
        let all = errors.join("\n");
        for expected in [
            "\"a.out => b.in\"",
            "\"a\" is not",
            "given twice",
            "service \"a\": give `service",
            "service \"B\": a name is lowercase",
            "not both",
            "replicas must be 1 to 64",
            "`config` must be a table",
        ] {
            assert!(all.contains(expected), "{expected:?} missing from:\n{all}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let errors = parse("[services.a]\nservice = \"x\"\nreplica = 2\n").unwrap_err();
        assert!(errors[0].contains("replica"), "{errors:?}");
    }
}
