//! What goes on the wire to HTTP clients: the JSON envelope and server-sent events.
//!
//! The envelope is FrameX's `{"status", "message", "timestamp", "data"}`, with two deliberate
//! differences: an error keeps its real HTTP status (FrameX answers 401/404/405 with HTTP 200),
//! and the timestamp is really UTC, in FrameX's text form (`2026-01-01 12:00:00`; FrameX prints
//! local time and calls it Shanghai time), with `+00:00` as an option.
//!
//! Events are FrameX's helper format, `event: <type>\ndata: <json>\n\n`, where a string payload
//! travels as `{"content": "..."}` and `finish` carries `{}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::ApiError;

tokio::task_local! {
    /// Whether the timestamp carries `+00:00` (`server.timestamp_offset`), set per request
    /// by the bridge that answers it.
    pub(crate) static TIMESTAMP_OFFSET: bool;
}

/// The current time as the envelope prints it: UTC in FrameX's exact form
/// (`2026-01-01 12:00:00`, so `strptime(ts, "%Y-%m-%d %H:%M:%S")` reads it), or with
/// `+00:00` when the answering bridge has `server.timestamp_offset = true`.
pub fn timestamp() -> String {
    timestamp_in(TIMESTAMP_OFFSET.try_with(|o| *o).unwrap_or(false))
}

/// The current time in either form. Formatted once per second per thread and form: the
/// text only changes with the second, and formatting it was a visible part of a response.
pub fn timestamp_in(with_offset: bool) -> String {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<[(i64, String); 2]> =
            const { RefCell::new([(i64::MIN, String::new()), (i64::MIN, String::new())]) };
    }
    let now = chrono::Utc::now();
    let second = now.timestamp();
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        let slot = &mut last[usize::from(with_offset)];
        if slot.0 != second {
            let format = if with_offset {
                "%Y-%m-%d %H:%M:%S+00:00"
            } else {
                "%Y-%m-%d %H:%M:%S"
            };
            *slot = (second, now.format(format).to_string());
        }
        slot.1.clone()
    })
}

/// The envelope, its keys in FrameX's order.
#[derive(Debug, Serialize)]
struct Envelope<'a, D: Serialize + ?Sized> {
    status: u16,
    message: &'a str,
    timestamp: String,
    data: &'a D,
}

/// `{"status": 200, "message": "success", "timestamp", "data"}` with `status` as given.
pub fn success(status: StatusCode, data: Value) -> Response {
    let body = Envelope {
        status: status.as_u16(),
        message: "success",
        timestamp: timestamp(),
        data: &data,
    };
    json_response(status, &body)
}

/// The success envelope around JSON kept as its text (key order and numbers as they came).
pub fn success_raw(status: StatusCode, data: &serde_json::value::RawValue) -> Response {
    let body = Envelope {
        status: status.as_u16(),
        message: "success",
        timestamp: timestamp(),
        data,
    };
    json_response(status, &body)
}

/// JSON bytes as they are.
pub fn raw_json_response(status: StatusCode, bytes: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

/// An error on a stream route, as FrameX answers it: the error's status with a
/// `text/event-stream` body holding one `error` event (`{"status", "message"}`, and the
/// validation `detail` when there is one).
pub fn sse_error(e: &ApiError) -> Response {
    let mut ev = StreamEvent::error(e);
    if let Some(d) = e.data.as_ref().and_then(|d| d.get("detail")) {
        ev.data["detail"] = d.clone();
    }
    let mut r = (
        e.status,
        [
            (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        ev.to_bytes(),
    )
        .into_response();
    if e.status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// The error envelope, with the error's real status as the HTTP status.
pub fn failure(e: &ApiError) -> Response {
    let body = Envelope {
        status: e.status.as_u16(),
        message: &e.message,
        timestamp: timestamp(),
        data: e.data.as_ref().unwrap_or(&Value::Null),
    };
    let mut r = json_response(e.status, &body);
    if e.status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// A JSON body as is (raw responses, pages outside `/api`).
pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            Bytes::from(bytes),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot serialize the response: {e}"),
        )
            .into_response(),
    }
}

/// The type of a server-sent event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// A piece of the result.
    MessageChunk,
    /// The stream ended normally.
    Finish,
    /// The stream failed; no `finish` follows.
    Error,
    /// Diagnostic output.
    Debug,
}

impl EventType {
    /// The name on the `event:` line.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::MessageChunk => "message_chunk",
            EventType::Finish => "finish",
            EventType::Error => "error",
            EventType::Debug => "debug",
        }
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    /// Its type.
    pub kind: EventType,
    /// Its payload (a string becomes `{"content": ...}` as in FrameX).
    pub data: Value,
}

impl StreamEvent {
    /// A `message_chunk` event.
    pub fn chunk(data: impl Serialize) -> Self {
        Self::of(EventType::MessageChunk, data)
    }

    /// A `debug` event.
    pub fn debug(data: impl Serialize) -> Self {
        Self::of(EventType::Debug, data)
    }

    /// A `finish` event with `{}`.
    pub fn finish() -> Self {
        StreamEvent {
            kind: EventType::Finish,
            data: json!({}),
        }
    }

    /// The `error` event a failed stream ends with.
    pub fn error(e: &ApiError) -> Self {
        StreamEvent {
            kind: EventType::Error,
            data: json!({"status": e.status.as_u16(), "message": e.message}),
        }
    }

    fn of(kind: EventType, data: impl Serialize) -> Self {
        let data = match serde_json::to_value(data) {
            Ok(Value::String(s)) => json!({"content": s}),
            Ok(Value::Null) => json!({}),
            Ok(v) => v,
            Err(e) => json!({"content": format!("unserializable event: {e}")}),
        };
        StreamEvent { kind, data }
    }

    /// The event's bytes: `event: <type>\ndata: <json>\n\n`.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(format!(
            "event: {}\ndata: {}\n\n",
            self.kind.as_str(),
            self.data
        ))
    }
}

/// Parses the events of a `text/event-stream` body (for tests and for collecting streams
/// that arrive over HTTP). Unknown lines are ignored.
pub fn parse_events(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut event = None;
        let mut data = String::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(v.trim_start());
            }
        }
        if event.is_none() && data.is_empty() {
            continue;
        }
        let value = serde_json::from_str(&data).unwrap_or(Value::String(data));
        out.push((event.unwrap_or_else(|| "message".into()), value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_bytes_follow_framex() {
        assert_eq!(
            StreamEvent::chunk("a").to_bytes(),
            "event: message_chunk\ndata: {\"content\":\"a\"}\n\n"
        );
        assert_eq!(
            StreamEvent::finish().to_bytes(),
            "event: finish\ndata: {}\n\n"
        );
        let parsed = parse_events(
            "event: message_chunk\ndata: {\"content\":\"a\"}\n\nevent: finish\ndata: {}\n\n",
        );
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].1["content"], "a");
    }

    #[test]
    fn timestamp_is_framex_form_utc_with_the_offset_as_an_option() {
        let t = timestamp();
        assert_eq!(t.len(), 19, "{t}");
        let parsed = chrono::NaiveDateTime::parse_from_str(&t, "%Y-%m-%d %H:%M:%S").unwrap();
        // The cached text is the current second, not a stale one.
        let drift = (chrono::Utc::now().timestamp() - parsed.and_utc().timestamp()).abs();
        assert!(drift <= 1, "{t} is {drift} s off");
        let o = timestamp_in(true);
        assert!(o.ends_with("+00:00"), "{o}");
        chrono::DateTime::parse_from_str(&o, "%Y-%m-%d %H:%M:%S%:z").unwrap();
        let scoped = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(TIMESTAMP_OFFSET.scope(true, async { timestamp() }));
        assert!(scoped.ends_with("+00:00"), "{scoped}");
        let first = timestamp();
        // The text moves on with the clock (within two seconds, polled).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let later = loop {
            let t = timestamp();
            if t != first {
                break t;
            }
            assert!(std::time::Instant::now() < deadline, "stuck at {first}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(later > first, "{later} after {first}");
    }
}
