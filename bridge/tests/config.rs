//! Settings precedence (CLI > environment > .env.prod > .env > config.json > config.toml),
//! errors that name the key, and the real binaries: `service-framework-bridge` reading
//! config.toml from its working directory, `--num-cpus` setting its worker threads, and
//! `service-framework -s bridge` handing over to it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::json;
use sf_bridge::config::{CliOverrides, Settings, Sources};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn sources(dir: &Path, env: &[(&str, &str)], cli: CliOverrides) -> Sources {
    Sources {
        dir: dir.to_owned(),
        config_json: None,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        cli,
    }
}

#[test]
fn framex_precedence() {
    let dir = scratch("precedence");
    write(
        &dir,
        "config.toml",
        r#"
load_builtin_plugins = ["echo"]
load_plugins = ["a"]
[server]
host = "127.0.0.2"
port = 1111
[plugins.echo]
prefix = "toml:"
[auth.rules]
"/api/v1/*" = ["k"]
"#,
    );
    let only_toml = Settings::load(&sources(&dir, &[], CliOverrides::default())).unwrap();
    assert_eq!(only_toml.server.port, 1111);
    assert_eq!(only_toml.server.host, "127.0.0.2");
    assert_eq!(only_toml.plugins["echo"], json!({"prefix": "toml:"}));
    assert_eq!(only_toml.auth.rules["/api/v1/*"], vec!["k"]);
    assert_eq!(only_toml.load_builtin_plugins, vec!["echo"]);

    // config.json (-c) is above config.toml.
    let cfg_json = dir.join("config.json");
    std::fs::write(&cfg_json, r#"{"server": {"port": 1500}}"#).unwrap();
    let mut src = sources(&dir, &[], CliOverrides::default());
    src.config_json = Some(cfg_json);
    assert_eq!(Settings::load(&src).unwrap().server.port, 1500);

    write(
        &dir,
        ".env",
        "SERVER__PORT=2222\nPLUGINS__ECHO__PREFIX=dotenv:\n# a comment\n",
    );
    let s = Settings::load(&sources(&dir, &[], CliOverrides::default())).unwrap();
    assert_eq!(s.server.port, 2222);
    assert_eq!(s.server.host, "127.0.0.2", "objects merge key by key");
    assert_eq!(s.plugins["echo"]["prefix"], "dotenv:");

    write(&dir, ".env.prod", "SERVER__PORT=2500\n");
    assert_eq!(
        Settings::load(&sources(&dir, &[], CliOverrides::default()))
            .unwrap()
            .server
            .port,
        2500
    );

    let env = [
        ("SERVER__PORT", "3333"),
        ("SERVER__ENABLE_PROXY", "true"),
        ("LOAD_PLUGINS", "[\"b\"]"),
        ("HOME", "/x"),
    ];
    let s = Settings::load(&sources(&dir, &env, CliOverrides::default())).unwrap();
    assert_eq!(s.server.port, 3333);
    assert!(s.server.enable_proxy);
    assert_eq!(
        s.load_plugins,
        vec!["b"],
        "a list from the environment replaces"
    );
    assert_eq!(s.plugins["echo"]["prefix"], "dotenv:");

    let cli = CliOverrides {
        host: Some("0.0.0.0".into()),
        port: Some(4444),
        load_plugins: vec!["c".into(), "b".into()],
        load_builtin_plugins: vec!["echo".into()],
        enable_proxy: Some(false),
    };
    let s = Settings::load(&sources(&dir, &env, cli)).unwrap();
    assert_eq!(s.server.port, 4444);
    assert_eq!(s.server.host, "0.0.0.0");
    assert!(
        !s.server.enable_proxy,
        "--no-enable-proxy beats the environment"
    );
    assert_eq!(s.load_plugins, vec!["b", "c"], "CLI plugins are added");
    assert_eq!(s.load_builtin_plugins, vec!["echo"]);
}

#[test]
fn pyproject_tool_framex_is_the_lowest_source() {
    let dir = scratch("pyproject");
    write(
        &dir,
        "pyproject.toml",
        r#"
[project]
name = "my-framex-app"
[tool.framex]
load_builtin_plugins = ["echo"]
[tool.framex.server]
host = "127.0.0.3"
port = 2222
[tool.framex.plugins.echo]
prefix = "py:"
"#,
    );
    let s = Settings::load(&sources(&dir, &[], CliOverrides::default())).unwrap();
    assert_eq!((s.server.host.as_str(), s.server.port), ("127.0.0.3", 2222));
    assert_eq!(s.plugins["echo"], json!({"prefix": "py:"}));
    assert_eq!(s.load_builtin_plugins, vec!["echo"]);
    // config.toml is above it, key by key; the environment above both.
    write(&dir, "config.toml", "[server]\nport = 3333\n");
    let s = Settings::load(&sources(
        &dir,
        &[("SERVER__HOST", "127.0.0.4")],
        CliOverrides::default(),
    ))
    .unwrap();
    assert_eq!((s.server.host.as_str(), s.server.port), ("127.0.0.4", 3333));
    assert_eq!(s.plugins["echo"], json!({"prefix": "py:"}));
    // Its mistakes are named like any other source's.
    write(&dir, "pyproject.toml", "[tool.framex.server]\nprot = 1\n");
    let e = Settings::load(&sources(&dir, &[], CliOverrides::default()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("prot"), "{e}");
}

#[test]
fn bad_config_names_the_key() {
    let dir = scratch("bad");
    write(&dir, "config.toml", "[server]\nprot = 1\n");
    let e = Settings::load(&sources(&dir, &[], CliOverrides::default()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("server") && e.contains("prot") && e.contains("port"),
        "{e}"
    );

    write(&dir, "config.toml", "[server]\nport = 1\n");
    let e = Settings::load(&sources(
        &dir,
        &[("SERVER__PORT", "eighty")],
        CliOverrides::default(),
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("server.port"), "{e}");

    write(&dir, "config.toml", "[server\nport = 1\n");
    let e = Settings::load(&sources(&dir, &[], CliOverrides::default()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("config.toml"), "{e}");

    write(&dir, "config.toml", "load_plugins = \"x\"\n");
    let e = Settings::load(&sources(&dir, &[], CliOverrides::default()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("load_plugins"), "{e}");

    write(
        &dir,
        "config.toml",
        "[bus.routes.\"/x\"]\nmethdo = \"GET\"\n",
    );
    let e = Settings::load(&sources(&dir, &[], CliOverrides::default()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("methdo"), "{e}");
}

/// A child process that is killed if the test fails.
struct Proc {
    child: Child,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Proc {
    fn spawn(program: &Path, args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, _) in std::env::vars() {
            let l = k.to_ascii_lowercase();
            if sf_bridge::config::TOP_LEVEL_KEYS
                .iter()
                .any(|t| l == *t || l.starts_with(&format!("{t}__")))
            {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Proc { child, stdout }
    }

    /// Waits (bounded) for the line announcing the address.
    async fn url(&mut self) -> String {
        let line = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(l) = self.stdout.next_line().await.unwrap() {
                if let Some(u) = l.strip_prefix("bridge serving on ") {
                    return Some(u.trim().to_owned());
                }
            }
            None
        })
        .await
        .expect("the bridge announces itself within 20 s");
        match line {
            Some(u) => u,
            None => {
                let out = self.child.wait_with_output_ref().await;
                panic!("the bridge exited without serving: {out}")
            }
        }
    }

    async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running").to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(killed.success());
        tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("stops within 15 s of SIGTERM")
            .unwrap()
    }
}

trait WaitRef {
    async fn wait_with_output_ref(&mut self) -> String;
}

impl WaitRef for Child {
    async fn wait_with_output_ref(&mut self) -> String {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.wait()).await;
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            use tokio::io::AsyncReadExt;
            let _ = tokio::time::timeout(Duration::from_secs(2), e.read_to_string(&mut err)).await;
        }
        err
    }
}

fn bridge_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_service-framework-bridge"))
}

#[tokio::test]
async fn the_binary_reads_config_toml_from_its_working_directory() {
    let dir = scratch("binary");
    write(
        &dir,
        "config.toml",
        "load_builtin_plugins = [\"echo\"]\n[server]\nport = 1\n[plugins.echo]\nprefix = \"cfg:\"\n",
    );
    // The environment beats config.toml's port 1 (which could not be bound).
    // A FrameX start script's flags are accepted.
    let mut p = Proc::spawn(
        &bridge_binary(),
        &[
            "-cl",
            "WARNING",
            "--num-cpus",
            "1",
            "--dashboard-host",
            "0.0.0.0",
            "--dashboard-port",
            "8265",
            "--no-use-ray",
        ],
        &dir,
        &[("SERVER__PORT", "0")],
    );
    let url = p.url().await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let (s, v) = get(&format!("{url}/api/v1/echo?message=x")).await;
    assert_eq!((s, data_of(200, &v)), (200, json!("cfg:x")));
    let status = p.terminate().await;
    assert!(status.success(), "{status}");

    // A config mistake exits 2 naming the key.
    let out = Command::new(bridge_binary())
        .args(["--port", "0", "--load-builtin-plugins", "ehco"])
        .current_dir(&dir)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ehco") && err.contains("load_builtin_plugins"),
        "{err}"
    );
}

/// The names of a process's threads, from /proc/<pid>/task/*/comm.
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process's threads are listed in /proc")
        .map(|t| {
            let comm = t.expect("a thread entry").path().join("comm");
            std::fs::read_to_string(comm)
                .expect("a thread name")
                .trim()
                .to_owned()
        })
        .collect();
    names.sort();
    names
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn num_cpus_sets_the_worker_threads_of_the_binary() {
    let dir = scratch("num-cpus");
    // Without the flag, the bridge's default of 2 worker threads; with it, as many as asked.
    for (flag, workers) in [(None, 2), (Some("1"), 1), (Some("3"), 3)] {
        let mut args = vec![
            "--port",
            "0",
            "--load-builtin-plugins",
            "echo",
            "-cl",
            "WARNING",
        ];
        if let Some(n) = flag {
            args.extend(["--num-cpus", n]);
        }
        let mut p = Proc::spawn(&bridge_binary(), &args, &dir, &[]);
        let url = p.url().await;
        // Tokio names its worker threads "tokio-rt-worker" (its blocking pool's too, and the
        // bridge runs nothing there): once the bridge serves, those are its workers.
        // A new thread names itself once it runs, so one just spawned still shows the
        // process's name for a moment: wait (bounded) for every worker to carry its name.
        let pid = p.child.id().expect("running");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let names = thread_names(pid);
            let counted = names.iter().filter(|n| *n == "tokio-rt-worker").count();
            assert!(counted <= workers, "--num-cpus {flag:?}: threads {names:?}");
            if counted == workers {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "--num-cpus {flag:?}: threads {names:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let (s, v) = get(&format!("{url}/api/v1/echo?message=n")).await;
        assert_eq!((s, data_of(200, &v)), (200, json!("n")));
        assert!(p.terminate().await.success());
    }
}

#[tokio::test]
async fn service_framework_dash_s_bridge_runs_it() {
    let sf = bridge_binary().with_file_name("service-framework");
    // It belongs to another package, so cargo does not build it for these tests: build it
    // into the same folder (a no-op when it is up to date).
    let bin_dir = sf.parent().expect("binary folder");
    let mut build = std::process::Command::new(env!("CARGO"));
    build
        .args([
            "build",
            "--quiet",
            "-p",
            "service-framework",
            "--bin",
            "service-framework",
        ])
        .arg("--manifest-path")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
        .arg("--target-dir")
        .arg(bin_dir.parent().expect("target folder"));
    if bin_dir.file_name().and_then(|n| n.to_str()) == Some("release") {
        build.arg("--release");
    }
    let built = build
        .stdin(std::process::Stdio::null())
        .status()
        .expect("cargo runs");
    assert!(
        built.success() && sf.is_file(),
        "building {} failed: {built}",
        sf.display()
    );
    let dir = scratch("dash-s");
    let mut p = Proc::spawn(
        &sf,
        &[
            "-s",
            "bridge",
            "--port",
            "0",
            "--load-builtin-plugins",
            "echo",
        ],
        &dir,
        &[],
    );
    let url = p.url().await;
    let (s, v) = get(&format!("{url}/api/v1/echo?message=via%20sf")).await;
    assert_eq!((s, data_of(200, &v)), (200, json!("via sf")));
    assert_eq!(get(&format!("{url}/health")).await, (200, json!("ok")));
    assert!(p.terminate().await.success());

    let out = Command::new(&sf)
        .args(["describe", "-s", "bridge"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "bridge");
}

/// Issue 16: a bridge with no plugin loaded (the stock binary, no flags but a port) starts and
/// serves its system routes, its (empty) OpenAPI document and an envelope 404 under /api.
#[tokio::test]
async fn the_stock_binary_with_no_plugin_serves_its_system_routes() {
    let dir = scratch("no-plugins");
    let mut p = Proc::spawn(&bridge_binary(), &["--port", "0"], &dir, &[]);
    let url = p.url().await;
    assert_eq!(get(&format!("{url}/health")).await, (200, json!("ok")));
    assert_eq!(get(&format!("{url}/ping")).await, (200, json!("pong")));
    let (s, doc) = get(&format!("{url}/api/v1/openapi.json")).await;
    assert_eq!(s, 200);
    let paths: Vec<&String> = doc["paths"].as_object().expect("paths").keys().collect();
    assert!(paths.iter().all(|p| !p.starts_with("/api/")), "{paths:?}");
    let (s, v) = get(&format!("{url}/api/v1/echo?message=x")).await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["status"], 404, "{v}");
    assert!(p.terminate().await.success());
}
