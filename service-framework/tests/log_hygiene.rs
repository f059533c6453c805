//! Log hygiene: a flood of bad requests writes a handful of warnings with a count of what was
//! held back, and a peer-supplied key holding a newline cannot forge a log line.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::json;
use service_framework::connections::{Address, Requester, RequesterOptions, WorkflowId};
use service_framework::prelude::*;
use support::{replyer_at, start};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Deserialize, JsonSchema)]
struct Limits {
    #[allow(dead_code)]
    limits: BTreeMap<String, u8>,
}

#[test]
fn a_flood_of_bad_requests_is_answered_in_full_but_logged_a_few_times_escaped() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let def = ServiceDef::new("limits").replyer("reply", |_a: Limits, _ctx: Ctx| async move {
        Ok::<_, ServiceError>(())
    });
    let (h, ready) = start(def, replyer_at("127.0.0.1:0"));
    let endpoint = ready.endpoint("reply").unwrap().to_owned();

    const FLOOD: usize = 3000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (refused, first_error) = rt.block_on(async {
        let r = Requester::connect(
            &Address::from(endpoint.as_str()),
            RequesterOptions {
                timeout: std::time::Duration::from_secs(5),
                ..Default::default()
            },
        )
        .unwrap();
        let bad = json!({"limits": {"evil\nERROR forged line": "not a number"}});
        let mut refused = 0;
        let mut first = None;
        for _ in 0..FLOOD {
            if let Err(e) = r
                .request::<_, serde_json::Value>(&bad, WorkflowId::None)
                .await
            {
                refused += 1;
                first.get_or_insert(e.to_string());
            }
        }
        (refused, first.unwrap_or_default())
    });
    assert_eq!(refused, FLOOD, "every bad request gets its error reply");
    assert!(first_error.contains("invalid_args"), "{first_error}");
    h.stop().unwrap();

    let log = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request answered with an error"))
        .collect();
    assert!(
        !warnings.is_empty() && warnings.len() <= 10,
        "{} warning lines for {FLOOD} bad requests:\n{log}",
        warnings.len()
    );
    assert!(
        !log.lines().any(|l| l.starts_with("ERROR forged line")),
        "a peer's newline forged a line:\n{log}"
    );
    assert!(warnings[0].contains("evil\\n"), "escaped: {}", warnings[0]);
}
