//! `service-framework up --emit k8s DIR FILE`: every topology under `examples/` and a fixture
//! rendered, validated offline by `kubernetes-validate --strict` (from the test venv), and the
//! outcome checked: every connecting address names a Service of the output and one of its
//! ports, every bound port is a port of the service's own Service and container, readiness
//! comes from the service's own signal, and the grace period covers the drain.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use sf_fleet::k8s::{ANNOTATION_SERVICE, GRACE_MARGIN_S, READY_FILE};
use sf_fleet::Topology;

mod support;

use support::{binaries, python, workspace_root, UP};

fn kubernetes_validate() -> PathBuf {
    let k = python().with_file_name("kubernetes-validate");
    assert!(
        k.is_file(),
        "{} is missing: is kubernetes-validate in tests/python/requirements.txt?",
        k.display()
    );
    k
}

/// Runs `up --emit k8s <out> <file> <extra...>`; returns the files it printed.
fn emit(file: &Path, out: &Path, extra: &[&str]) -> Vec<PathBuf> {
    binaries();
    let o = Command::new(UP)
        .arg("up")
        .args(extra)
        .arg("--emit")
        .arg("k8s")
        .arg(out)
        .arg(file)
        .env("SF_PYTHON", python())
        .stdin(Stdio::null())
        .output()
        .expect("service-framework-up runs");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "up --emit k8s {} failed ({}):\n{stdout}\n{}",
        file.display(),
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let files: Vec<PathBuf> = stdout.lines().map(PathBuf::from).collect();
    assert!(!files.is_empty(), "nothing written for {}", file.display());
    for f in &files {
        assert!(
            f.starts_with(out) && f.is_file(),
            "{} printed, not written",
            f.display()
        );
    }
    files
}

/// `kubernetes-validate --strict` on every file: exit 0, its output shown otherwise.
fn validate(files: &[PathBuf]) {
    let o = Command::new(kubernetes_validate())
        .arg("--strict")
        .args(files)
        .stdin(Stdio::null())
        .output()
        .expect("kubernetes-validate runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success(),
        "kubernetes-validate --strict failed:\n{text}"
    );
    assert_eq!(
        text.matches(" passed for resource ").count(),
        files.len(),
        "every file passes:\n{text}"
    );
}

/// The resources of one topology, by service (as the topology names it) and kind.
#[derive(Debug, Default)]
struct Rendered {
    by_service: BTreeMap<String, BTreeMap<String, Value>>,
}

impl Rendered {
    fn read(files: &[PathBuf]) -> Rendered {
        let mut r = Rendered::default();
        for f in files {
            let doc: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap())
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", f.display()));
            let service = doc["metadata"]["annotations"][ANNOTATION_SERVICE]
                .as_str()
                .unwrap_or_else(|| panic!("{} has no {ANNOTATION_SERVICE}", f.display()))
                .to_owned();
            let kind = doc["kind"].as_str().unwrap().to_owned();
            let old = r
                .by_service
                .entry(service.clone())
                .or_default()
                .insert(kind.clone(), doc);
            assert!(old.is_none(), "two {kind}s for {service}");
        }
        r
    }

    fn get(&self, service: &str, kind: &str) -> Option<&Value> {
        self.by_service.get(service).and_then(|m| m.get(kind))
    }

    fn workload(&self, service: &str) -> &Value {
        self.get(service, "Deployment")
            .or_else(|| self.get(service, "Job"))
            .unwrap_or_else(|| panic!("no Deployment or Job for {service}"))
    }

    fn container(&self, service: &str) -> &Value {
        &self.workload(service)["spec"]["template"]["spec"]["containers"][0]
    }

    fn name(&self, service: &str) -> &str {
        self.workload(service)["metadata"]["name"].as_str().unwrap()
    }

    fn config_file(&self, service: &str, file: &str) -> Option<Value> {
        let cm = self.get(service, "ConfigMap")?;
        cm["data"][file]
            .as_str()
            .map(|t| serde_json::from_str(t).expect("ConfigMap data is JSON"))
    }

    fn addresses(&self, service: &str) -> Value {
        self.config_file(service, "addresses.json")
            .unwrap_or_else(|| panic!("no addresses.json for {service}"))
    }

    /// The Service named `name` and its ports.
    fn service_ports(&self, name: &str) -> Option<Vec<(String, u64)>> {
        self.by_service.values().find_map(|m| {
            let s = m.get("Service")?;
            (s["metadata"]["name"] == name).then(|| {
                s["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| {
                        (
                            p["name"].as_str().unwrap().to_owned(),
                            p["port"].as_u64().unwrap(),
                        )
                    })
                    .collect()
            })
        })
    }
}

/// Every socket address of an addresses.json (`connections`/`states`, `in`/`out`).
fn socket_addresses(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for section in ["connections", "states"] {
        for side in ["in", "out"] {
            if let Some(conns) = doc[section][side].as_object() {
                for (conn, keys) in conns {
                    for (key, addr) in keys.as_object().unwrap() {
                        out.push((
                            format!("{section}.{side}.{conn}.{key}"),
                            addr.as_str().unwrap().to_owned(),
                        ));
                    }
                }
            }
        }
    }
    out
}

fn dns_1035(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// What must hold for any topology: names, addresses against Services, readiness, grace.
fn check_outcome(topology: &Topology, r: &Rendered) {
    assert_eq!(
        r.by_service.keys().collect::<Vec<_>>(),
        topology.services.keys().collect::<Vec<_>>(),
        "one set of resources per service"
    );
    for (service, spec) in &topology.services {
        let name = r.name(service);
        assert!(
            dns_1035(name),
            "{service}: {name:?} is not a DNS-1035 label"
        );
        let container = r.container(service);
        let container_ports: Vec<u64> = container["ports"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| p["containerPort"].as_u64().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        let own_ports = r.service_ports(name).unwrap_or_default();
        let addresses = r.addresses(service);
        let mut binds = 0;
        for (at, addr) in socket_addresses(&addresses) {
            let (host, port) = addr.rsplit_once(':').expect("host:port");
            let port: u64 = port.parse().expect("a port number");
            if host == "0.0.0.0" {
                binds += 1;
                assert!(
                    own_ports.iter().any(|(_, p)| *p == port) && container_ports.contains(&port),
                    "{service} binds {at} = {addr}, not a port of its Service {own_ports:?} and container {container_ports:?}"
                );
            } else {
                let ports = r.service_ports(host).unwrap_or_else(|| {
                    panic!("{service} connects {at} to {addr}: there is no Service {host:?}")
                });
                assert!(
                    ports.iter().any(|(_, p)| *p == port),
                    "{service} connects {at} to {addr}: Service {host} has ports {ports:?}"
                );
                assert_ne!(host, name, "{service} connects to itself");
            }
        }
        if binds == 0 && spec.service.as_deref() != Some("bridge") {
            assert!(
                r.get(service, "Service").is_none(),
                "{service} binds nothing"
            );
        }

        // Readiness from the service's own signal.
        let probe = &container["readinessProbe"];
        if spec.python.is_some() {
            if binds > 0 {
                let first = &own_ports[0].0;
                assert_eq!(probe["tcpSocket"]["port"], first.as_str(), "{service}");
            } else {
                assert!(probe.is_null(), "{service}: no probe without a bound port");
            }
        } else {
            assert_eq!(
                probe["exec"]["command"],
                serde_json::json!(["test", "-f", READY_FILE]),
                "{service}"
            );
            let env = container["env"].as_array().unwrap();
            assert!(
                env.iter()
                    .any(|e| e["name"] == "SF_READY_FILE" && e["value"] == READY_FILE),
                "{service}: SF_READY_FILE in {env:?}"
            );
        }

        // The drain fits in the grace period.
        let stop = spec.stop_timeout_s.unwrap_or(15.0);
        let grace = r.workload(service)["spec"]["template"]["spec"]
            ["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap();
        assert_eq!(grace, stop.ceil() as u64 + GRACE_MARGIN_S, "{service}");
        assert!(grace as f64 > stop, "{service}");

        let replicas = &r.workload(service)["spec"];
        let n = replicas["replicas"]
            .as_u64()
            .or_else(|| replicas["parallelism"].as_u64());
        assert_eq!(n, Some(u64::from(spec.replicas)), "{service}");
    }
}

fn example_topologies() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in std::fs::read_dir(workspace_root().join("examples")).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            // Every .toml but a crate's manifest (examples/bridge-plugins is a crate).
            if f.extension().and_then(|e| e.to_str()) == Some("toml") && !f.ends_with("Cargo.toml")
            {
                found.push(f);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn every_example_topology_renders_and_validates_strictly() {
    let files = example_topologies();
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("order_book/order_book.toml")),
        "examples/*/*.toml found: {files:?}"
    );
    for file in files {
        let out = tempfile::tempdir().unwrap();
        let written = emit(&file, out.path(), &[]);
        validate(&written);
        let topology = Topology::read(&file).unwrap();
        let r = Rendered::read(&written);
        check_outcome(&topology, &r);
        println!("{}: {} manifests, valid", file.display(), written.len());
    }
}

#[test]
fn the_order_book_mirror_reaches_the_feed_by_its_service_name() {
    let out = tempfile::tempdir().unwrap();
    let file = workspace_root().join("examples/order_book/order_book.toml");
    let r = Rendered::read(&emit(&file, out.path(), &[]));
    assert_eq!(r.name("feed"), "order-book-feed");
    let mirror = r.addresses("mirror");
    let sub = mirror["states"]["in"]["market_price"]["subscriber"]
        .as_str()
        .unwrap();
    assert!(sub.starts_with("order-book-feed:"), "{mirror}");
    let feed = r.addresses("feed");
    assert_eq!(
        feed["states"]["out"]["market_price"]["publisher"]
            .as_str()
            .unwrap()
            .replace("0.0.0.0", "order-book-feed"),
        sub
    );
    // The feed is a main-mode source with restart = "on-failure": a Job restarted on failure.
    let job = r.get("feed", "Job").expect("the feed is a Job");
    assert_eq!(
        job["spec"]["template"]["spec"]["restartPolicy"],
        "OnFailure"
    );
    assert!(r.get("mirror", "Deployment").is_some());
}

const FIXTURE: &str = r#"
name = "fixture_k8s_topology"
edges = [
  "ticker.ticks -> bus.publishers",
  "bus.subscribers -> listener.ticks",
  "bus.subscribers -> web.ticks",
  "requester.request -> py_echo_replyer_with_a_rather_long_service_name_xy.reply",
]

[services.bus]
service = "bus"

[services.ticker]
service = "ticker"
main = true
restart = "never"
config_file = "ticker_config.json"

[services.listener]
service = "tick_listener"
replicas = 2
stop_timeout_s = 2.5
env = { RUST_LOG = "debug" }

[services.requester]
service = "echo_requester"
main = true
restart = "always"
config = { num_req_to_send = 3 }
args = ["-cl", "INFO"]

[services.py_echo_replyer_with_a_rather_long_service_name_xy]
python = "PY_MODULE"

[services.web]
service = "bridge"
config = { server = { host = "127.0.0.1", port = 9090 } }
"#;

#[test]
fn a_fixture_of_built_ins_rust_and_python_services_renders_as_expected() {
    let dir = tempfile::tempdir().unwrap();
    let module = workspace_root().join("tests/python/services/echo_replyer.py");
    let file = dir.path().join("fixture.toml");
    std::fs::write(
        &file,
        FIXTURE.replace("PY_MODULE", &module.display().to_string()),
    )
    .unwrap();
    std::fs::write(dir.path().join("ticker_config.json"), r#"{"count": 5}"#).unwrap();
    let out = dir.path().join("manifests");
    let written = emit(
        &file,
        &out,
        &[
            "--image",
            "reg.example/sf:1.2",
            "--python-image",
            "reg.example/sf-py:1.2",
        ],
    );
    validate(&written);
    let topology = Topology::read(&file).unwrap();
    let r = Rendered::read(&written);
    check_outcome(&topology, &r);

    let py = "py_echo_replyer_with_a_rather_long_service_name_xy";
    // Too long for one label: cut and given a hash, still DNS-1035.
    let py_name = r.name(py);
    assert!(
        py_name.len() <= 63 && py_name.starts_with("fixture-k8s-topology-py-echo"),
        "{py_name}"
    );
    assert_eq!(r.name("bus"), "fixture-k8s-topology-bus");

    // The requester reaches the Python replyer by its Service name and port.
    let req = r.addresses("requester");
    assert_eq!(
        req["connections"]["out"]["request"]["requester"],
        format!("{py_name}:5000"),
        "{req}"
    );
    assert_eq!(
        r.addresses(py)["connections"]["in"]["reply"]["replyer"],
        "0.0.0.0:5000"
    );
    assert_eq!(r.service_ports(py_name).unwrap()[0].1, 5000);
    let bus_name = r.name("bus");
    let sub = r.addresses("listener")["connections"]["in"]["ticks"]["subscriber"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(sub.starts_with(&format!("{bus_name}:")), "{sub}");
    assert_eq!(
        r.addresses("web")["connections"]["in"]["ticks"]["subscriber"],
        sub.as_str()
    );
    let ticker = r.addresses("ticker");
    assert!(
        ticker["connections"]["out"]["ticks"]["publisher"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{bus_name}:")),
        "{ticker}"
    );
    assert_eq!(
        ticker["options"]["connections"]["out"]["ticks"]["is_x_pub"],
        true
    );

    // Commands and images.
    let c = r.container(py);
    assert_eq!(c["image"], "reg.example/sf-py:1.2");
    assert_eq!(
        c["command"],
        serde_json::json!([
            "python",
            "-u",
            "-m",
            "service_framework",
            "-s",
            "./echo_replyer.py",
            "-a",
            "/etc/sf/addresses.json"
        ])
    );
    let c = r.container("requester");
    assert_eq!(c["image"], "reg.example/sf:1.2");
    assert_eq!(
        c["command"],
        serde_json::json!([
            "service-framework",
            "-s",
            "echo_requester",
            "-a",
            "/etc/sf/addresses.json",
            "-c",
            "/etc/sf/config.json",
            "-m",
            "-cl",
            "INFO"
        ])
    );
    assert_eq!(
        r.config_file("requester", "config.json").unwrap(),
        serde_json::json!({"num_req_to_send": 3})
    );
    // config_file: its content in the ConfigMap.
    assert_eq!(
        r.config_file("ticker", "config.json").unwrap(),
        serde_json::json!({"count": 5})
    );
    assert!(r.config_file("listener", "config.json").is_none());
    let env = r.container("listener")["env"].as_array().unwrap().clone();
    assert!(env
        .iter()
        .any(|e| e["name"] == "RUST_LOG" && e["value"] == "debug"));

    // Workloads: main + never is a Job with no retries, main + always a Deployment.
    let job = r.get("ticker", "Job").expect("the ticker is a Job");
    assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");
    assert_eq!(job["spec"]["backoffLimit"], 0);
    assert!(r.get("requester", "Deployment").is_some());
    assert_eq!(
        r.workload("listener")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        8
    );

    // The bridge listens on every interface of its pod, on its configured port, named http.
    let web = r.config_file("web", "config.json").unwrap();
    assert_eq!(web["server"]["host"], "0.0.0.0");
    assert_eq!(web["server"]["port"], 9090);
    let ports = r.service_ports(r.name("web")).unwrap();
    assert_eq!(ports, vec![("http".to_owned(), 9090)]);
}

#[test]
fn emit_with_another_kind_is_an_error_naming_it() {
    let o = Command::new(UP)
        .args(["up", "--emit", "helm", "out", "x.toml"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("\"helm\"") && err.contains("k8s"), "{err}");
}
