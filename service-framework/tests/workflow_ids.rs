//! Workflow ids as the original numbers them: a handler's first send reuses the incoming id,
//! later sends are `{id}_1`, `{id}_2`, ...; every send of `main` (and `init_function`) carries a
//! fresh UUID; the reply echoes the request's id.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use service_framework::connections::WorkflowId;
use service_framework::{Ctx, Service, ServiceDef, ServiceError};
use support::*;

const DOWN: service_framework::handle::Requester<Echo, Echoed> =
    service_framework::handle::Requester::new("down");

type Seen = Arc<Mutex<Vec<WorkflowId>>>;

/// A replyer `reply` that records the workflow id of every request.
fn recorder(seen: &Seen) -> ServiceDef {
    let seen = seen.clone();
    ServiceDef::new("recorder").replyer("reply", move |a: Echo, ctx: Ctx| {
        seen.lock().unwrap().push(ctx.workflow_id().clone());
        async move { Ok::<_, ServiceError>(Echoed { echoed: a.to_echo }) }
    })
}

/// A replyer `relay` whose handler sends three requests on to `down`.
fn relay() -> ServiceDef {
    ServiceDef::new("relay")
        .requester(DOWN)
        .replyer("relay", |a: Echo, ctx: Ctx| async move {
            for i in 0..3 {
                let _: Echoed = ctx
                    .request(
                        &DOWN,
                        &Echo {
                            to_echo: format!("{} {i}", a.to_echo),
                        },
                    )
                    .await?;
            }
            Ok::<_, ServiceError>(Echoed { echoed: a.to_echo })
        })
}

fn s(v: &str) -> WorkflowId {
    WorkflowId::Str(v.to_owned())
}

#[test]
fn sends_inside_a_handler_continue_the_incoming_workflow() {
    let seen: Seen = Arc::default();
    let (down, down_ready) = start(recorder(&seen), replyer_at("127.0.0.1:0"));
    let addrs = addresses(json!({"connections": {
        "in": {"relay": {"replyer": "127.0.0.1:0"}},
        "out": {"down": {"requester": down_ready.endpoint("reply").unwrap()}}
    }}));
    let (up, up_ready) = start(relay(), addrs);
    let relay_endpoint = up_ready.endpoint("relay").unwrap().to_owned();
    let timeout = Duration::from_secs(5);

    // A string id (what a handler forwards).
    request_with(
        &relay_endpoint,
        &json!({"to_echo": "s"}),
        s("wf-42"),
        timeout,
    )
    .unwrap();
    assert_eq!(
        std::mem::take(&mut *seen.lock().unwrap()),
        [s("wf-42"), s("wf-42_1"), s("wf-42_2")]
    );

    // A UUID id (what main sends): the first send keeps the UUID itself.
    let uuid = WorkflowId::new_random();
    request_with(
        &relay_endpoint,
        &json!({"to_echo": "u"}),
        uuid.clone(),
        timeout,
    )
    .unwrap();
    assert_eq!(
        std::mem::take(&mut *seen.lock().unwrap()),
        [
            uuid.clone(),
            s(&format!("{uuid}_1")),
            s(&format!("{uuid}_2"))
        ]
    );

    // Concurrent messages each number their own sends.
    let callers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|id| {
            let endpoint = relay_endpoint.clone();
            std::thread::spawn(move || {
                request_with(&endpoint, &json!({"to_echo": id}), s(id), timeout)
            })
        })
        .collect();
    for c in callers {
        c.join().unwrap().unwrap();
    }
    let mut got: Vec<String> = seen.lock().unwrap().iter().map(|w| w.to_string()).collect();
    got.sort();
    assert_eq!(got, ["a", "a_1", "a_2", "b", "b_1", "b_2"]);

    // The reply carries the request's id back.
    let reply = request_envelope(&relay_endpoint, &json!({"to_echo": "e"}), s("wf-echo"));
    assert_eq!(reply["workflow_id"], "wf-echo", "{reply}");
    assert_eq!(reply["return_args"], json!({"echoed": "e"}));

    up.stop().unwrap();
    down.stop().unwrap();
}

#[test]
fn every_send_of_main_and_init_gets_a_fresh_uuid() {
    let seen: Seen = Arc::default();
    let (down, down_ready) = start(recorder(&seen), replyer_at("127.0.0.1:0"));
    let send = |ctx: Ctx, what: &'static str| async move {
        let _: Echoed = ctx
            .request(
                &DOWN,
                &Echo {
                    to_echo: what.into(),
                },
            )
            .await?;
        Ok::<_, ServiceError>(())
    };
    let def = ServiceDef::new("leader")
        .requester(DOWN)
        .init_function(move |ctx: Ctx| send(ctx, "init"))
        .main(move |ctx: Ctx| async move {
            assert!(ctx.workflow_id().is_none(), "main handles no message");
            for _ in 0..3 {
                send(ctx.clone(), "main").await?;
            }
            Ok(())
        });
    let addrs = addresses(json!({"connections": {
        "out": {"down": {"requester": down_ready.endpoint("reply").unwrap()}}
    }}));
    Service::new(def)
        .addresses(addrs)
        .main_mode()
        .run_in_background()
        .join()
        .unwrap();
    let ids = seen.lock().unwrap().clone();
    assert_eq!(ids.len(), 4, "{ids:?}");
    for id in &ids {
        assert!(matches!(id, WorkflowId::Uuid(_)), "{id:?} is not a UUID");
    }
    let mut distinct: Vec<String> = ids.iter().map(|w| w.to_string()).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "{ids:?}");
    down.stop().unwrap();
}

#[test]
fn the_context_numbers_ids_like_the_original() {
    // Inside a handler: the same numbering through the public helper.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let def = ServiceDef::new("numbering").replyer("reply", {
        let seen = seen.clone();
        move |_a: Value, ctx: Ctx| {
            let ids: Vec<String> = (0..3).map(|_| ctx.next_workflow_id().to_string()).collect();
            seen.lock().unwrap().extend(ids);
            async move { Ok::<_, ServiceError>(json!({})) }
        }
    });
    let (h, ready) = start(def, replyer_at("127.0.0.1:0"));
    request_with(
        ready.endpoint("reply").unwrap(),
        &json!({}),
        s("id"),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(*seen.lock().unwrap(), ["id", "id_1", "id_2"]);
    h.stop().unwrap();
}

#[test]
fn a_handler_and_the_tasks_it_wraps_can_read_the_workflow_id() {
    // The handler reports the id it reads itself and the one a task it spawns reads, with and
    // without `in_workflow`.
    let def = ServiceDef::new("reader").replyer("reply", |a: Echo, _ctx: Ctx| async move {
        let here = service_framework::current_workflow_id();
        let id = here.clone().unwrap_or_default();
        let wrapped = tokio::spawn(service_framework::in_workflow(id, async {
            service_framework::current_workflow_id()
        }))
        .await
        .unwrap();
        let bare = tokio::spawn(async { service_framework::current_workflow_id() })
            .await
            .unwrap();
        let show = |w: Option<WorkflowId>| w.map_or("-".to_owned(), |w| w.to_string());
        Ok::<_, ServiceError>(Echoed {
            echoed: format!(
                "{} {} {} {}",
                a.to_echo,
                show(here),
                show(wrapped),
                show(bare)
            ),
        })
    });
    let (_svc, ready) = start(def, replyer_at("127.0.0.1:0"));
    let reply = request_with(
        ready.endpoint("reply").unwrap(),
        &json!({"to_echo": "ids"}),
        s("wf-7"),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(reply["echoed"], "ids wf-7 wf-7 -");
    assert_eq!(service_framework::current_workflow_id(), None);
}

/// A replyer `reply` that records the trace id its handler runs in.
fn trace_recorder(seen: &Arc<Mutex<Vec<Option<String>>>>) -> ServiceDef {
    let seen = seen.clone();
    ServiceDef::new("trace_recorder").replyer("reply", move |a: Echo, ctx: Ctx| {
        let seen = seen.clone();
        async move {
            assert_eq!(
                service_framework::current_trace().map(|t| t.trace_id_hex().to_string()),
                ctx.trace_id(),
                "the task-local and the context agree"
            );
            seen.lock().unwrap().push(ctx.trace_id());
            Ok::<_, ServiceError>(Echoed { echoed: a.to_echo })
        }
    })
}

#[test]
fn every_send_of_main_starts_a_trace_and_a_handler_s_sends_continue_its_own() {
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let (down, down_ready) = start(trace_recorder(&seen), replyer_at("127.0.0.1:0"));
    let down_ep = down_ready.endpoint("reply").unwrap().to_owned();
    let def = ServiceDef::new("leader")
        .requester(DOWN)
        .main(move |ctx: Ctx| async move {
            assert_eq!(ctx.trace(), None, "main serves no message");
            for _ in 0..2 {
                let _: Echoed = ctx
                    .request(
                        &DOWN,
                        &Echo {
                            to_echo: "main".into(),
                        },
                    )
                    .await?;
            }
            Ok(())
        });
    let addrs = addresses(json!({"connections": {"out": {"down": {"requester": down_ep}}}}));
    Service::new(def)
        .addresses(addrs)
        .main_mode()
        .run_in_background()
        .join()
        .unwrap();
    let from_main = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(from_main.len(), 2, "{from_main:?}");
    assert!(from_main
        .iter()
        .all(|t| t.as_ref().is_some_and(|t| t.len() == 32)));
    assert_ne!(
        from_main[0], from_main[1],
        "each send of main is a trace of its own"
    );

    // Through a relay: its three sends carry the trace of the request it serves.
    let addrs = addresses(json!({"connections": {
        "in": {"relay": {"replyer": "127.0.0.1:0"}},
        "out": {"down": {"requester": down_ready.endpoint("reply").unwrap()}}
    }}));
    let (up, up_ready) = start(relay(), addrs);
    let relay_ep = up_ready.endpoint("relay").unwrap().to_owned();
    let given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let frame = service_framework::connections::wire::encode(&json!({
        "args": {"to_echo": "traced"}, "workflow_id": "wf-t", "traceparent": given
    }))
    .unwrap();
    let reply = raw_request(&relay_ep, frame);
    assert_eq!(reply["return_args"], json!({"echoed": "traced"}), "{reply}");
    let tp = reply["traceparent"]
        .as_str()
        .expect("a traced request's reply is traced");
    assert!(
        tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{tp}"
    );
    assert_ne!(tp, given, "the relay's own span");
    let via_relay = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(
        via_relay,
        vec![Some("0af7651916cd43dd8448eb211c80319c".to_owned()); 3]
    );
    up.stop().unwrap();
    down.stop().unwrap();
}

/// Sends an encoded request frame and returns the whole reply envelope.
fn raw_request(endpoint: &str, frame: Vec<u8>) -> Value {
    use service_framework::connections::{wire, Address, Requester, RequesterOptions};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = Requester::connect(
            &Address::from(endpoint),
            RequesterOptions {
                timeout: Duration::from_secs(5),
                ..Default::default()
            },
        )
        .unwrap();
        let reply = r.request_raw(frame).await.expect("a reply");
        wire::decode::<Value>(&reply).expect("reply decodes")
    })
}
