//! `service-framework new plugin`: the crate it makes builds against this checkout (into the
//! shared target directory, so the dependencies already built are reused), its bridge binary
//! runs through `service-framework -s`, and the plugin's routes answer a real HTTP client.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const SF: &str = env!("CARGO_BIN_EXE_service-framework");

/// `target/` and the profile directory's name (`debug` or `release`).
fn target_dir() -> (PathBuf, String) {
    let profile_dir = Path::new(SF).parent().expect("the binary's folder");
    let target = profile_dir.parent().expect("target folder").to_path_buf();
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a UTF-8 profile folder")
        .to_owned();
    (target, profile)
}

fn sf(args: &[&str]) -> Output {
    std::process::Command::new(SF)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("service-framework runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn new_plugin_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for (args, says) in [
        (vec!["new"], "new plugin NAME"),
        (vec!["new", "plugin"], "needs a NAME"),
        (vec!["new", "service", "x"], "not \"service\""),
        (vec!["new", "plugin", "Bad Name"], "lower-case letters"),
        (vec!["new", "plugin", "fn"], "is taken"),
        (vec!["new", "plugin", "sf-bridge"], "is taken"),
        (vec!["new", "plugin", "x", "--frob"], "unknown option"),
        (
            vec!["new", "plugin", "x", "--path", d],
            "not a service-framework checkout",
        ),
    ] {
        let o = sf(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
    // A directory with something in it is left alone.
    std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
    let o = sf(&["new", "plugin", "x", "--dir", d]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("not empty"), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let o = sf(&["new", "--help"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("--path CHECKOUT"));
}

/// The packages of this checkout (path dependencies) in the new crate's dependency graph.
fn linked_local_crates(manifest: &Path) -> BTreeSet<String> {
    let o = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(manifest)
        .stdin(Stdio::null())
        .output()
        .expect("cargo metadata runs");
    assert!(o.status.success(), "{}", stderr(&o));
    let m: Value = serde_json::from_slice(&o.stdout).expect("cargo metadata's JSON");
    let root = m["resolve"]["root"].clone();
    m["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|p| p["source"].is_null() && p["id"] != root)
        .map(|p| p["name"].as_str().expect("a name").to_owned())
        .collect()
}

/// The crates that `[profile.dev.package.<name>]` names in the new crate's Cargo.toml.
fn profile_overrides(manifest: &str) -> BTreeSet<String> {
    manifest
        .lines()
        .filter_map(|l| l.strip_prefix("[profile.dev.package.")?.strip_suffix(']'))
        .filter(|n| !n.starts_with('"'))
        .map(str::to_owned)
        .collect()
}

async fn answer(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.expect("the bridge answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_plugin_builds_runs_and_answers() {
    // A fixed place in the target directory: a rebuild replaces the last one's artefacts.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("new-plugin/notes-it");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let o = sf(&["new", "plugin", "notes-it", "--dir", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "Cargo.toml",
        "Cargo.lock",
        "src/lib.rs",
        "src/main.rs",
        "config.toml",
        "README.md",
    ] {
        assert!(dir.join(f).is_file(), "{f} is missing");
    }
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .canonicalize()
        .unwrap();
    assert!(
        manifest.contains(&format!("path = \"{}\"", checkout.join("bridge").display())),
        "sf-bridge by path in this checkout:\n{manifest}"
    );
    // The workspace's profiles, and every crate of this checkout that the plugin links given
    // the settings of a workspace member (else each would be rebuilt).
    let workspace = std::fs::read_to_string(checkout.join("Cargo.toml")).unwrap();
    assert!(workspace.contains("[profile.release]\ndebug = 1\n"));
    assert!(
        manifest.contains("[profile.release]\ndebug = 1\n"),
        "{manifest}"
    );
    assert_eq!(
        profile_overrides(&manifest),
        linked_local_crates(&dir.join("Cargo.toml")),
        "{manifest}"
    );
    // The plugin's config, read from the working directory.
    std::fs::write(
        dir.join("config.toml"),
        "[plugins.notes-it]\ngreeting = \"Hi\"\nmax_notes = 2\n",
    )
    .unwrap();

    let (target, profile) = target_dir();
    let started = Instant::now();
    let mut build = Command::new(env!("CARGO"));
    // What cargo set for this test is not the nested build's: some build scripts rerun when
    // such a variable changes (ring's, on CARGO_MANIFEST_DIR), and then all that depends on them.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k == "OUT_DIR"
            || k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
            ]
            .contains(&k.as_ref())
        {
            build.env_remove(k.as_ref());
        }
    }
    build
        .arg("build")
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", &target)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if profile == "release" {
        build.arg("--release");
    }
    let built = tokio::time::timeout(Duration::from_secs(600), build.status())
        .await
        .expect("the plugin crate builds within 10 minutes")
        .expect("cargo runs");
    assert!(built.success(), "cargo build of the new crate failed");
    eprintln!(
        "new_plugin: cargo build of the generated crate took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let bridge = target.join(&profile).join("notes-it-bridge");
    assert!(bridge.is_file(), "{} was not built", bridge.display());

    // Run through service-framework -s, by path.
    let mut child = Command::new(SF)
        .arg("-s")
        .arg(&bridge)
        .args([
            "--port",
            "0",
            "--load-plugins",
            "notes-it",
            "-cl",
            "WARNING",
        ])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("service-framework runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if let Some(u) = l.strip_prefix("bridge serving on ") {
                return u.trim().to_owned();
            }
        }
        panic!("the bridge exited without serving");
    })
    .await
    .expect("the bridge announces itself within 20 s");
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let api = format!("{url}/api/v1/notes-it");

    let (s, v) = answer(c.get(format!("{url}/health"))).await;
    assert_eq!(s, 200, "{v}");
    // A query parameter with a default (times = 1), then given; the config's greeting.
    let (s, v) = answer(c.get(format!("{api}/greet?name=Ada"))).await;
    assert_eq!(
        (s, &v["data"]),
        (200, &json!({"message": "Hi, Ada!"})),
        "{v}"
    );
    let (s, v) = answer(c.get(format!("{api}/greet?name=Ada&times=2"))).await;
    assert_eq!(
        (s, &v["data"]["message"]),
        (200, &json!("Hi, Ada! Hi, Ada!"))
    );
    let (s, v) = answer(c.get(format!("{api}/greet"))).await;
    assert_eq!(
        (s, &v["data"]["detail"][0]["loc"]),
        (422, &json!(["query", "name"]))
    );
    let (s, v) = answer(c.get(format!("{api}/greet?name=Ada&times=11"))).await;
    assert_eq!(s, 400, "{v}");
    // A typed body.
    for (i, text) in ["milk", "bread"].into_iter().enumerate() {
        let (s, v) = answer(
            c.post(format!("{api}/notes"))
                .json(&json!({"text": text, "tags": ["home"]})),
        )
        .await;
        assert_eq!(
            (s, &v["data"]),
            (
                200,
                &json!({"id": i + 1, "note": {"text": text, "tags": ["home"]}})
            ),
            "{v}"
        );
    }
    let (s, v) = answer(c.post(format!("{api}/notes")).json(&json!({"tags": []}))).await;
    assert_eq!(
        (s, &v["data"]["detail"][0]["loc"]),
        (422, &json!(["body", "text"]))
    );
    let (s, v) = answer(
        c.post(format!("{api}/notes"))
            .json(&json!({"text": "eggs"})),
    )
    .await;
    assert_eq!(s, 400, "max_notes = 2 from config.toml: {v}");
    let (s, v) = answer(c.get(format!("{api}/notes?limit=1"))).await;
    assert_eq!((s, &v["data"][0]["id"]), (200, &json!(2)), "{v}");

    // The OpenAPI document: both paths, GET and POST on one, the default, the function API.
    let (s, doc) = answer(c.get(format!("{url}/api/v1/openapi.json"))).await;
    assert_eq!(s, 200);
    let paths = &doc["paths"];
    let greet = &paths["/api/v1/notes-it/greet"]["get"];
    let times = greet["parameters"]
        .as_array()
        .expect("greet's parameters")
        .iter()
        .find(|p| p["name"] == "times")
        .expect("the times parameter");
    assert_eq!(
        (&times["required"], &times["schema"]["default"]),
        (&json!(false), &json!(1))
    );
    assert!(paths["/api/v1/notes-it/notes"]["get"].is_object(), "{doc}");
    assert!(paths["/api/v1/notes-it/notes"]["post"]["requestBody"].is_object());
    let func = &doc["x-function-apis"]["notes-it.NotesIt.count_tagged"];
    assert_eq!(func["kwargs"]["required"], json!(["tag"]), "{doc}");

    let pid = child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("stops within 15 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}
