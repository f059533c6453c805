//! `up --emit k8s DIR`: the same plan as Kubernetes manifests, one JSON file per resource
//! (`kubectl apply -f DIR`).
//!
//! Per service of the topology, named `<topology>-<service>` made a DNS-1035 label
//! ([`KubeNames`]):
//!
//! - a **ConfigMap** holding its `addresses.json` and, when it has config, its `config.json`
//!   (inline `config` or the content of `config_file`), mounted at `/etc/sf`;
//! - a **Deployment**, or a **Job** for a main-mode service that finishes (below), running
//!   `service-framework -s <service> -a /etc/sf/addresses.json [-c /etc/sf/config.json] [-m]
//!   <args>` in `--image` (Rust binaries and the built-ins) or `python -u -m
//!   service_framework -s ./<module file> ...` (in `/app`) in `--python-image`, with the topology's
//!   env, readiness from the service's own signal (`SF_READY_FILE=/tmp/sf-ready` and an exec
//!   probe `test -f /tmp/sf-ready`; a Python 0.0.18 service has no ready signal: a TCP probe
//!   on its first bound port, none when it binds nothing), and
//!   `terminationGracePeriodSeconds` = its stop timeout (15 s) + 5 s, so the drain after
//!   SIGTERM ends before the kubelet's SIGKILL;
//! - a **Service** when it binds: one named port per bound slot (5000, 5001, ... in the
//!   order of its binds), plus `http` for the bridge's HTTP port (its `server.port`, 8080 by
//!   default; the rendered config makes it listen on `0.0.0.0`).
//!
//! Addresses ([`KubeAddressing`]): the binding side binds `0.0.0.0:<port>`, the connecting
//! side connects to `<Service name>:<port>` (the cluster DNS of the same namespace).
//!
//! Restarts follow `up`: a main-mode service with `restart = "on-failure"` (the default) is
//! a Job with `restartPolicy: OnFailure` (restarted after an error, done after exit 0, no
//! retry limit, as `up`); with `restart = "never"` a Job with `restartPolicy: Never` and no
//! retries; with `restart = "always"` a Deployment. A service that is not in main mode
//! serves until stopped: a Deployment, whatever its `restart` (a Deployment's pods always
//! restart).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::declared::{Declared, Runner};
use crate::plan::{Addressing, BindRef, Plan, Planned};
use crate::topology::Restart;

/// The image holding `service-framework` and every Rust service binary beside it.
pub const DEFAULT_IMAGE: &str = "service-framework:latest";
/// The image holding Python with `service_framework` 0.0.18 and the modules in `/app`.
pub const DEFAULT_PYTHON_IMAGE: &str = "service-framework-python:latest";
/// The container port of a service's first bound slot; the next slots count up from it.
pub const FIRST_PORT: u16 = 5000;
/// Where a container's ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/sf";
/// The ready file of a Rust service or the bridge inside its container.
pub const READY_FILE: &str = "/tmp/sf-ready";
/// Seconds added to a service's stop timeout for the pod's grace period.
pub const GRACE_MARGIN_S: u64 = 5;
/// Where a Python service's module is in the Python image.
pub const PYTHON_APP_DIR: &str = "/app";
/// The annotation naming the topology's service a resource belongs to.
pub const ANNOTATION_SERVICE: &str = "service-framework/service";
/// The annotation naming the topology.
pub const ANNOTATION_TOPOLOGY: &str = "service-framework/topology";
/// The bridge's HTTP port when its config does not name one.
pub const BRIDGE_HTTP_PORT: u16 = 8080;

/// What the manifests are made with.
#[derive(Debug, Clone)]
pub struct K8sOptions {
    /// The image of Rust services and built-ins.
    pub image: String,
    /// The image of Python 0.0.18 services.
    pub python_image: String,
}

impl Default for K8sOptions {
    fn default() -> Self {
        K8sOptions {
            image: DEFAULT_IMAGE.into(),
            python_image: DEFAULT_PYTHON_IMAGE.into(),
        }
    }
}

/// `s` as a DNS-1035 label of at most `max` characters: lowercase letters, digits and `-`,
/// starting with a letter and ending with a letter or digit (`_` and anything else become
/// `-`, runs of `-` one).
pub fn dns_label(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    if !out.starts_with(|c: char| c.is_ascii_lowercase()) {
        out.insert_str(0, "x-");
    }
    out.truncate(max);
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// FNV-1a, 32 bits: a short suffix that stays the same from one run (and Rust) to the next.
fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The Kubernetes name of every service: `<topology>-<service>` as a DNS-1035 label of at
/// most 63 characters. A name that would be longer, or that two services would share
/// (`a_b` and `a-b`), is cut to 54 characters and given an 8-digit hash of both names.
#[derive(Debug, Clone)]
pub struct KubeNames {
    names: BTreeMap<String, String>,
}

impl KubeNames {
    /// Names for every service of `plan`.
    pub fn new(plan: &Plan) -> KubeNames {
        let topology = &plan.topology.name;
        let plain: BTreeMap<String, String> = plan
            .services
            .keys()
            .map(|s| (s.clone(), dns_label(&format!("{topology}-{s}"), 200)))
            .collect();
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for n in plain.values() {
            *count.entry(n).or_default() += 1;
        }
        let names = plain
            .iter()
            .map(|(s, n)| {
                let name = if n.len() > 63 || count[n.as_str()] > 1 {
                    let mut cut = n.clone();
                    cut.truncate(54);
                    while cut.ends_with('-') {
                        cut.pop();
                    }
                    format!("{cut}-{:08x}", fnv(&format!("{topology}\0{s}")))
                } else {
                    n.clone()
                };
                (s.clone(), name)
            })
            .collect();
        KubeNames { names }
    }

    /// The name of `service`'s resources (and of its Service, the host others connect to).
    pub fn name(&self, service: &str) -> &str {
        &self.names[service]
    }
}

/// Addresses inside the cluster: a service binds `0.0.0.0:<port>` and is reached at
/// `<its Service name>:<port>`, the port being [`FIRST_PORT`] + the index of the bound slot.
#[derive(Debug, Clone)]
pub struct KubeAddressing {
    names: KubeNames,
}

impl KubeAddressing {
    /// The addressing of `plan`'s services.
    pub fn new(plan: &Plan) -> KubeAddressing {
        KubeAddressing {
            names: KubeNames::new(plan),
        }
    }

    /// The names used.
    pub fn names(&self) -> &KubeNames {
        &self.names
    }

    /// The container (and Service) port of a bound slot.
    pub fn port(r: &BindRef) -> u16 {
        FIRST_PORT + u16::try_from(r.index).unwrap_or(u16::MAX - FIRST_PORT)
    }
}

impl Addressing for KubeAddressing {
    fn bind(&self, r: &BindRef) -> String {
        format!("0.0.0.0:{}", Self::port(r))
    }
    fn connect(&self, r: &BindRef) -> String {
        format!("{}:{}", self.names.name(&r.service), Self::port(r))
    }
}

/// One resource to write: its file name in the output directory and its document.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// `<name>.<kind>.json`.
    pub file: String,
    /// The resource.
    pub doc: Value,
}

/// A port name (IANA service name: at most 15 characters, lowercase letters, digits and
/// single `-`, with a letter) for bound slot `index` of connection `conn`.
fn port_name(conn: &str, index: usize) -> String {
    let suffix = format!("-{index}");
    let mut base = dns_label(conn, 15 - suffix.len());
    if base.is_empty() {
        base.push_str("zmq");
    }
    format!("{base}{suffix}")
}

/// The config a service's config.json holds in the cluster, if any.
fn config(plan: &Plan, p: &Planned) -> Result<Option<Value>, String> {
    let mut config = match (&p.spec.config, &p.spec.config_file) {
        (Some(c), _) => Some(c.clone()),
        (None, Some(f)) => {
            let path = plan.topology.resolve(f);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                format!(
                    "service {:?}: cannot read its config_file {}: {e}",
                    p.name,
                    path.display()
                )
            })?;
            Some(serde_json::from_str(&text).map_err(|e| {
                format!(
                    "service {:?}: its config_file {} is not JSON: {e}",
                    p.name,
                    path.display()
                )
            })?)
        }
        (None, None) => None,
    };
    if matches!(p.declared, Declared::Bridge) {
        // Inside a pod the bridge listens on every interface, on a fixed port.
        let c = config.get_or_insert_with(|| json!({}));
        let Some(obj) = c.as_object_mut() else {
            return Err(format!("service {:?}: its config is not a table", p.name));
        };
        let server = obj.entry("server").or_insert_with(|| json!({}));
        let Some(server) = server.as_object_mut() else {
            return Err(format!(
                "service {:?}: its config's `server` is not a table",
                p.name
            ));
        };
        server.insert("host".into(), json!("0.0.0.0"));
        let port = bridge_port(server);
        server.insert("port".into(), json!(port));
    }
    Ok(config)
}

/// The bridge's HTTP port: `server.port`, else 8080 (0, a free port, is no use behind a
/// Service: 8080 then too).
fn bridge_port(server: &Map<String, Value>) -> u16 {
    server
        .get("port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(BRIDGE_HTTP_PORT)
}

fn labels(name: &str, part_of: &str) -> Value {
    json!({
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/part-of": part_of,
    })
}

/// Every resource of `plan`, in a stable order (service by service: ConfigMap, workload,
/// Service).
pub fn render(plan: &Plan, options: &K8sOptions) -> Result<Vec<Manifest>, String> {
    let addressing = KubeAddressing::new(plan);
    let part_of = dns_label(&plan.topology.name, 63);
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for p in plan.services.values() {
        match render_service(plan, p, &addressing, &part_of, options) {
            Ok(m) => out.extend(m),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors.join("\n"))
    }
}

fn render_service(
    plan: &Plan,
    p: &Planned,
    addressing: &KubeAddressing,
    part_of: &str,
    options: &K8sOptions,
) -> Result<Vec<Manifest>, String> {
    let name = addressing.names().name(&p.name).to_owned();
    let labels = labels(&name, part_of);
    // Which service of which topology a resource is, as the topology names them.
    let annotations = json!({
        ANNOTATION_SERVICE: p.name,
        ANNOTATION_TOPOLOGY: plan.topology.name,
    });
    let python = p.runner.is_python();
    let bridge = matches!(p.declared, Declared::Bridge);

    // ConfigMap.
    let addresses = plan.addresses(&p.name, addressing);
    let config = config(plan, p)?;
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    let mut data = Map::new();
    data.insert("addresses.json".into(), json!(pretty(&addresses)));
    if let Some(c) = &config {
        data.insert("config.json".into(), json!(pretty(c)));
    }
    let config_map = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "data": data,
    });

    // Ports: one per bound slot, and the bridge's HTTP port.
    let mut ports: Vec<(String, u16)> = p
        .binds
        .iter()
        .enumerate()
        .map(|(index, slot)| {
            let r = BindRef {
                service: p.name.clone(),
                index,
            };
            (port_name(&slot.conn, index), KubeAddressing::port(&r))
        })
        .collect();
    if bridge {
        let port = config
            .as_ref()
            .and_then(|c| c.get("server"))
            .and_then(Value::as_object)
            .map_or(BRIDGE_HTTP_PORT, bridge_port);
        if ports.iter().any(|(_, q)| *q == port) {
            return Err(format!(
                "service {:?}: its HTTP port {port} is one of its ZeroMQ ports ({FIRST_PORT} and up); give the bridge another server.port",
                p.name
            ));
        }
        ports.push(("http".into(), port));
    }

    // The container.
    let config_path = format!("{CONFIG_DIR}/config.json");
    let (image, mut command) = match &p.runner {
        Runner::Framework { service, .. } => {
            // A path names a binary of the image, beside service-framework.
            let service = if service.contains('/') {
                Path::new(service)
                    .file_name()
                    .map_or(service.clone(), |n| n.to_string_lossy().into_owned())
            } else {
                service.clone()
            };
            (
                options.image.clone(),
                vec!["service-framework".to_owned(), "-s".into(), service],
            )
        }
        Runner::Python { module, .. } => {
            let file = module
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            (
                options.python_image.clone(),
                vec![
                    "python".to_owned(),
                    "-u".into(),
                    "-m".into(),
                    "service_framework".into(),
                    "-s".into(),
                    // 0.0.18 imports `-s` relative to its working directory, /app.
                    format!("./{file}"),
                ],
            )
        }
    };
    command.push("-a".into());
    command.push(format!("{CONFIG_DIR}/addresses.json"));
    if config.is_some() {
        command.push("-c".into());
        command.push(config_path);
    }
    if p.spec.main {
        command.push("-m".into());
    }
    command.extend(p.spec.args.iter().cloned());

    let ready_env = service_framework::cli::READY_FILE_ENV;
    let mut env: Vec<Value> = p
        .spec
        .env
        .iter()
        .filter(|(k, _)| python || k.as_str() != ready_env)
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    let readiness = if python {
        ports
            .first()
            .map(|(port_name, _)| json!({"tcpSocket": {"port": port_name}, "periodSeconds": 2}))
    } else {
        env.push(json!({"name": ready_env, "value": READY_FILE}));
        Some(json!({
            "exec": {"command": ["test", "-f", READY_FILE]},
            "periodSeconds": 2,
        }))
    };

    let mut container = json!({
        "name": dns_label(&p.name, 63),
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": env,
        "volumeMounts": [{"name": "sf-config", "mountPath": CONFIG_DIR, "readOnly": true}],
    });
    if python {
        container["workingDir"] = json!(PYTHON_APP_DIR);
    }
    if !ports.is_empty() {
        container["ports"] = ports
            .iter()
            .map(|(n, port)| json!({"name": n, "containerPort": port, "protocol": "TCP"}))
            .collect();
    }
    if let Some(r) = readiness {
        container["readinessProbe"] = r;
    }

    let stop_timeout = p.spec.stop_timeout_s.unwrap_or(15.0);
    // Whole seconds (the field is an integer), rounded up so the drain is never cut short.
    let grace = stop_timeout.ceil() as u64 + GRACE_MARGIN_S;
    let job = p.spec.main && p.spec.restart != Restart::Always;
    let mut pod_spec = json!({
        "containers": [container],
        "volumes": [{"name": "sf-config", "configMap": {"name": name}}],
        "terminationGracePeriodSeconds": grace,
        "enableServiceLinks": false,
    });
    if job {
        pod_spec["restartPolicy"] = json!(if p.spec.restart == Restart::Never {
            "Never"
        } else {
            "OnFailure"
        });
    }
    let template = json!({
        "metadata": {"labels": labels},
        "spec": pod_spec,
    });
    let workload = if job {
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {
                "completions": p.spec.replicas,
                "parallelism": p.spec.replicas,
                // `up` restarts a failed service for as long as it runs (`never`: not at all).
                "backoffLimit": if p.spec.restart == Restart::Never { 0 } else { i32::MAX },
                "template": template,
            },
        })
    } else {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {
                "replicas": p.spec.replicas,
                "selector": {"matchLabels": labels},
                "template": template,
            },
        })
    };

    let mut out = vec![
        Manifest {
            file: format!("{name}.configmap.json"),
            doc: config_map,
        },
        Manifest {
            file: format!("{name}.{}.json", if job { "job" } else { "deployment" }),
            doc: workload,
        },
    ];
    if !ports.is_empty() {
        out.push(Manifest {
            file: format!("{name}.service.json"),
            doc: json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "labels": labels, "annotations": annotations},
                "spec": {
                    "selector": labels,
                    "ports": ports
                        .iter()
                        .map(|(n, port)| json!({
                            "name": n,
                            "port": port,
                            "targetPort": n,
                            "protocol": "TCP",
                        }))
                        .collect::<Vec<_>>(),
                },
            }),
        });
    }
    Ok(out)
}

/// Renders `plan` and writes one file per resource into `dir` (created when missing);
/// returns the files written.
pub fn emit(plan: &Plan, options: &K8sOptions, dir: &Path) -> Result<Vec<PathBuf>, String> {
    let manifests = render(plan, options)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for m in manifests {
        let path = dir.join(&m.file);
        let text = serde_json::to_string_pretty(&m.doc).unwrap_or_default() + "\n";
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_dns_1035() {
        assert_eq!(dns_label("Order_Book-feed", 63), "order-book-feed");
        assert_eq!(dns_label("__a__b__", 63), "a-b");
        assert_eq!(dns_label("1st", 63), "x-1st");
        assert_eq!(dns_label("abc_def", 4), "abc");
        assert_eq!(port_name("market_price", 0), "market-price-0");
        assert_eq!(
            port_name("a_very_long_connection_name", 12),
            "a-very-long-12"
        );
        assert_eq!(port_name("_", 1), "x-1");
    }
}
