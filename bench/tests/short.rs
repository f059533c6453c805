//! The harness in short mode, as CI runs it: the real binary with `--short --json`, then the
//! JSON checked for every pattern's figures (non-zero throughput through the framework and
//! through raw zeromq; for the transport pattern, through sf-zmtp and zeromq, and libzmq
//! when built with `--features libzmq`). Figures from a debug build under test load say nothing about speed:
//! only that every measurement ran.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(120);

fn run_short() -> (Value, String) {
    let json: PathBuf =
        std::env::temp_dir().join(format!("sf-bench-short-{}.json", std::process::id()));
    let out_path = json.with_extension("out");
    let out = std::fs::File::create(&out_path).expect("create the output file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sf-bench"))
        .args(["--short", "--json"])
        .arg(&json)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("sf-bench starts");
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sf-bench --short did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let printed = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    assert!(
        status.success(),
        "sf-bench exited with {status}:\n{printed}"
    );
    let text = std::fs::read_to_string(&json).expect("the JSON file was written");
    let _ = std::fs::remove_file(&json);
    let value: Value = serde_json::from_str(&text).expect("the JSON parses");
    (value, printed)
}

fn rows<'a>(report: &'a Value, pattern: &str) -> &'a Vec<Value> {
    report["patterns"]
        .as_array()
        .expect("patterns")
        .iter()
        .find(|p| p["name"] == pattern)
        .unwrap_or_else(|| panic!("no {pattern} in the report"))["rows"]
        .as_array()
        .expect("rows")
}

fn positive(v: &Value) -> bool {
    v.as_f64().is_some_and(|x| x > 0.0)
}

/// Every row of `pattern` whose metric is `metric` has both figures above zero.
fn both_positive(report: &Value, printed: &str, pattern: &str, metric: &str) {
    let matching: Vec<&Value> = rows(report, pattern)
        .iter()
        .filter(|r| r["metric"] == metric && !r["case"].as_str().unwrap_or("").starts_with("raw "))
        .collect();
    assert!(!matching.is_empty(), "{pattern}: no {metric:?} row");
    for r in matching {
        assert!(
            positive(&r["framework"]) && positive(&r["raw"]),
            "{pattern}: {metric} not measured through both: {r}\n\n{printed}"
        );
        assert!(positive(&r["ratio"]), "{pattern}: no ratio: {r}");
    }
}

#[test]
fn short_mode_measures_every_pattern_through_framework_and_raw() {
    let (report, printed) = run_short();
    assert_eq!(report["mode"], "short");
    assert!(report["machine"]["cores"].as_u64().unwrap_or(0) >= 1);
    let names: Vec<&str> = report["patterns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, sf_bench::PATTERNS, "{printed}");

    both_positive(&report, &printed, "reqrep", "round trips/s");
    both_positive(&report, &printed, "reqrep", "p50 latency");
    both_positive(&report, &printed, "broker", "round trips/s");
    both_positive(&report, &printed, "broker", "p50 latency");
    both_positive(&report, &printed, "replicas", "round trips/s");
    both_positive(&report, &printed, "replicas", "p50 latency");
    both_positive(&report, &printed, "broker_replicas", "round trips/s");
    both_positive(&report, &printed, "broker_replicas", "p50 latency");
    both_positive(&report, &printed, "pubsub", "delivered");
    both_positive(&report, &printed, "pipeline", "through the pipeline");
    both_positive(&report, &printed, "delta", "updates to converged");
    for metric in [
        "round trips/s",
        "p50 latency",
        "p99 latency",
        "delivered",
        "through one hop",
    ] {
        both_positive(&report, &printed, "transport", metric);
    }
    // Every transport case has its row against zeromq (and against libzmq when built).
    let transport = rows(&report, "transport");
    for baseline in sf_bench::transport::Library::built().iter().skip(1) {
        let vs = format!("vs {}", baseline.label());
        assert!(
            transport
                .iter()
                .filter(|r| r["case"].as_str().unwrap_or("").ends_with(&vs))
                .count()
                >= sf_bench::transport::cases().len(),
            "transport: a case without its row {vs}\n\n{printed}"
        );
    }
    for r in rows(&report, "delta")
        .iter()
        .filter(|r| r["unit"] == "us" || r["unit"] == "ms")
    {
        assert!(
            positive(&r["framework"]),
            "delta resync not measured: {r}\n\n{printed}"
        );
    }

    // Resources, the bridge and the fleet need other packages' binaries: measured, or
    // clearly skipped.
    let measured_or_skipped = |pattern: &str, row: &Value, raw_needed: bool| {
        let note = row["note"].as_str().unwrap_or("");
        let fw_ok = positive(&row["framework"]) || note.contains("not measured");
        assert!(fw_ok, "{pattern}: neither measured nor skipped: {row}");
        if raw_needed {
            assert!(
                positive(&row["raw"]),
                "{pattern}: raw baseline missing: {row}"
            );
        }
    };
    let res = rows(&report, "resources");
    measured_or_skipped("resources", &res[0], true);
    let bridge = rows(&report, "bridge");
    measured_or_skipped("bridge", &bridge[0], true);
    // The pipeline example under `up` needs service-framework and the pipeline binaries.
    let fleet = rows(&report, "fleet");
    measured_or_skipped("fleet", &fleet[0], false);

    assert!(printed.contains("fw/raw"), "no table printed:\n{printed}");
    assert!(printed.contains("PASS") || printed.contains("FAIL"));
}
