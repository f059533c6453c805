//! The attribute macros' less common forms against a running bridge: a string default,
//! `self: Arc<Self>`, a stream that may fail before its first event, a stream of
//! `StreamEvent`s and of `Result`s, `raw_response`, the ctx by value, `on_start`, a fallible
//! `new`, and a plugin declared inside a function (`typed = false`).

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use common::*;
use futures::{stream, Stream};
use serde_json::json;
use sf_bridge::{model, plugin, ApiError, PluginCtx, PluginDef, StreamEvent};

#[model]
pub struct Knobs {
    pub loud: bool,
}

#[derive(Debug)]
pub struct Forms {
    loud: bool,
    started: AtomicU32,
}

#[plugin(name = "forms", config = Knobs, type_name = "FormsPlugin")]
impl Forms {
    fn new(k: Knobs) -> Result<Self, String> {
        Ok(Forms {
            loud: k.loud,
            started: AtomicU32::new(0),
        })
    }

    async fn on_start(&self, ctx: &PluginCtx) -> Result<(), ApiError> {
        assert_eq!(ctx.plugin(), "forms");
        self.started.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// A string default.
    #[on_request("/forms/hello")]
    async fn hello(&self, #[default("world")] who: String) -> String {
        let s = format!("hello {who}");
        if self.loud {
            s.to_uppercase()
        } else {
            s
        }
    }

    /// The state by Arc, the ctx by value, no envelope.
    #[on_request("/forms/raw", raw_response)]
    async fn raw(self: Arc<Self>, ctx: PluginCtx) -> serde_json::Value {
        json!({"plugin": ctx.plugin(), "started": self.started.load(Ordering::SeqCst)})
    }

    /// Refuses before streaming when n is 0; else n events, the last one failing.
    #[on_request("/forms/count", stream)]
    fn count(
        &self,
        n: u32,
    ) -> Result<impl Stream<Item = Result<u32, ApiError>> + Send + 'static, ApiError> {
        if n == 0 {
            return Err(ApiError::bad_request("n must be at least 1"));
        }
        Ok(stream::iter((1..=n).map(move |i| {
            if i == n {
                Err(ApiError::internal("the last one fails"))
            } else {
                Ok(i)
            }
        })))
    }

    /// Events as they are.
    #[on_request("/forms/events", stream)]
    fn events(&self) -> impl Stream<Item = StreamEvent> {
        stream::iter([StreamEvent::debug("d"), StreamEvent::chunk("c")])
    }
}

/// A model private to this module: the typed-call module is private too (`api_vis = ""`).
#[model]
struct Secret {
    n: u32,
}

#[derive(Debug, Default)]
struct Vault;

#[plugin(name = "vault", api_vis = "", required_remote_apis = [vault_api::Open])]
impl Vault {
    #[on_request("/vault", methods = ["POST"])]
    async fn open(&self, s: Secret) -> Secret {
        Secret { n: s.n + 1 }
    }

    /// Calls its own POST route, typed.
    #[on_request("/vault/again")]
    async fn again(&self, #[default(1)] n: u32, ctx: &PluginCtx) -> Result<u32, ApiError> {
        let s = ctx.call_api(vault_api::Open::new(Secret { n })).await?;
        Ok(s.n)
    }
}

#[tokio::test]
async fn private_models_with_a_private_typed_module() {
    let b = start(settings(&[], &["vault"]), vec![]).await;
    let (s, v) = get(&format!("{}/api/v1/vault/again?n=4", b.url())).await;
    assert_eq!((s, data_of(200, &v)), (200, json!(5)));
    b.stop().await;
}

#[tokio::test]
async fn the_less_common_forms() {
    let mut s = settings(&[], &["forms"]);
    s.plugins.insert("forms".into(), json!({"loud": true}));
    let b = start(s, vec![]).await;
    let u = b.url();
    let (st, v) = get(&format!("{u}/api/v1/forms/hello")).await;
    assert_eq!((st, data_of(200, &v)), (200, json!("HELLO WORLD")));
    let (_, v) = get(&format!("{u}/api/v1/forms/hello?who=x")).await;
    assert_eq!(data_of(200, &v), json!("HELLO X"));
    // on_start ran once, before the first request.
    assert_eq!(
        get(&format!("{u}/api/v1/forms/raw")).await,
        (200, json!({"plugin": "forms", "started": 1}))
    );
    // A failure before the stream is an error event with its status.
    let r = client()
        .get(format!("{u}/api/v1/forms/count?n=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let evs = events(&r.text().await.unwrap());
    assert_eq!(evs[0].0, "error", "{evs:?}");
    let r = client()
        .get(format!("{u}/api/v1/forms/count?n=3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let evs = events(&r.text().await.unwrap());
    assert_eq!(
        evs,
        vec![
            ("message_chunk".to_owned(), json!(1)),
            ("message_chunk".to_owned(), json!(2)),
            (
                "error".to_owned(),
                json!({"status": 500, "message": "the last one fails"})
            ),
        ]
    );
    let r = client()
        .get(format!("{u}/api/v1/forms/events"))
        .send()
        .await
        .unwrap();
    let evs = events(&r.text().await.unwrap());
    assert_eq!(
        evs.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        ["debug", "message_chunk", "finish"]
    );
    b.stop().await;
    assert_eq!(Forms::plugin().deployment(), "forms.FormsPlugin");
}

#[tokio::test]
async fn a_plugin_declared_in_a_function() {
    #[derive(Debug, Default)]
    struct Local;

    #[plugin(name = "local", typed = false)]
    impl Local {
        #[on_request("/local")]
        async fn here(&self, n: Option<u32>) -> u32 {
            n.unwrap_or(7)
        }
    }

    let b = start(settings(&[], &["local"]), vec![]).await;
    let (s, v) = get(&format!("{}/api/v1/local", b.url())).await;
    assert_eq!((s, data_of(200, &v)), (200, json!(7)));
    b.stop().await;
}
