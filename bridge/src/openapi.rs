//! The OpenAPI 3.1 document served at `/api/v1/openapi.json`.
//!
//! Schemas come from the Rust types (schemars, JSON Schema 2020-12, which is OpenAPI 3.1's
//! dialect) with every named type under `components/schemas`; bus routes use the JSON Schemas
//! given in the config or a service's `describe` output (their `$defs` are moved to
//! `components/schemas`); proxied routes copy the upstream's operations and schemas. Each
//! plugin is a tag carrying its description, version, author and url.

use axum::http::Method;
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use crate::registry::{Registry, Target};

/// Builds the document.
pub(crate) fn document(reg: &Registry) -> Value {
    let mut gen = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
    let mut extra_schemas = Map::new();
    let mut paths = Map::new();
    let mut used_tags: Vec<String> = Vec::new();
    for (path, routes) in &reg.http {
        let mut item = Map::new();
        for (method, target) in routes {
            let protected = reg.auth.keys_for(path, Some(path)).is_some();
            let op = match target {
                Target::Local(e) => {
                    let tags = if e.api.tags.is_empty() {
                        vec![e.plugin.meta.name.clone()]
                    } else {
                        e.api.tags.clone()
                    };
                    used_tags.extend(tags.iter().cloned());
                    let mut params = Vec::new();
                    let props = e
                        .handler
                        .query_root
                        .get("properties")
                        .and_then(Value::as_object);
                    let required: Vec<&str> = e
                        .handler
                        .query_root
                        .get("required")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    if let Some(props) = props {
                        for (name, schema) in props {
                            let schema =
                                hoist(schema.clone(), &e.handler.query_root, &mut extra_schemas);
                            let mut p = json!({
                                "name": name,
                                "in": "query",
                                "required": required.contains(&name.as_str()),
                                "schema": schema,
                            });
                            if let Some(d) = schema_description(&p["schema"]) {
                                p["description"] = d.into();
                            }
                            params.push(p);
                        }
                    }
                    let mut op = json!({
                        "tags": tags,
                        "summary": e.api.summary.clone().unwrap_or_else(|| e.api.name.clone()),
                        "operationId": operation_id(path, method),
                        "parameters": params,
                    });
                    if let Some((_, schema_fn)) = &e.handler.body {
                        let s = schema_fn(&mut gen);
                        op["requestBody"] = json!({
                            "required": true,
                            "content": {"application/json": {"schema": s.to_value()}},
                        });
                    }
                    let data = (e.handler.response)(&mut gen).to_value();
                    if let (true, Some(event)) = (e.handler.stream, e.api.event) {
                        op["x-message-schema"] = event(&mut gen).to_value();
                    }
                    op["responses"] = if e.handler.stream {
                        stream_responses()
                    } else if e.api.raw_response {
                        json!({"200": {"description": "The handler's result, without the envelope",
                            "content": {"application/json": {"schema": data}}}})
                    } else {
                        json!({"200": {"description": "Success",
                            "content": {"application/json": {"schema": envelope_of(data)}}}})
                    };
                    add_errors(&mut op, true, protected, e.handler.stream);
                    op
                }
                Target::Bus(r) => {
                    used_tags.extend(r.tags.iter().cloned());
                    bus_operation(r, method, protected, &mut extra_schemas)
                }
                Target::BusStream(s) => {
                    used_tags.extend(s.tags.iter().cloned());
                    bus_stream_operation(s, method, protected, &mut extra_schemas)
                }
                Target::BusState(s) => {
                    used_tags.extend(s.tags.iter().cloned());
                    let mut op = json!({
                        "tags": s.tags,
                        "summary": s.description.clone().unwrap_or_else(|| format!("The current value of the state published at {}", s.source)),
                        "operationId": operation_id(&s.path, method),
                        "parameters": [],
                        "responses": {"200": {"description": "The state and its number (-1 before anything arrived)",
                            "content": {"application/json": {"schema": envelope_of(json!({"type": "object",
                                "required": ["state", "current_num"],
                                "properties": {"state": {"type": "object"}, "current_num": {"type": "integer"}}}))}}}},
                    });
                    add_errors(&mut op, false, protected, false);
                    op
                }
                // Upstream and bus-service routes are added to the served document while
                // they are there.
                Target::Proxy(..) | Target::BusService(..) => continue,
            };
            item.insert(method.as_str().to_ascii_lowercase(), op);
        }
        paths.insert(path.clone(), Value::Object(item));
    }
    for (path, summary, example) in [
        ("/health", "Liveness: \"ok\"", json!("ok")),
        ("/ping", "\"pong\"", json!("pong")),
    ] {
        paths.insert(
            path.into(),
            json!({"get": {"tags": ["system"], "summary": summary, "operationId": path.trim_start_matches('/'),
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "string", "examples": [example]}}}}}}}),
        );
    }
    paths.insert(
        "/version".into(),
        json!({"get": {"tags": ["system"], "summary": "The bridge's version, as FrameX answers it", "operationId": "version",
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "string",
                "examples": [env!("CARGO_PKG_VERSION")]}}}}}}}),
    );
    paths.insert(
        crate::server::VERSION_DETAILS_PATH.into(),
        json!({"get": {"tags": ["system"], "summary": "Versions in detail", "operationId": "version_details",
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object",
                "required": ["name", "version"],
                "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                    "framex_surface": {"type": "string"}, "service_framework": {"type": "string"}}}}}}}}}),
    );

    let functions = function_apis(reg, &mut gen, &mut extra_schemas);
    let mut schemas = gen.take_definitions(true);
    for (k, v) in extra_schemas {
        schemas.entry(k).or_insert(v);
    }
    schemas.insert(
        "ErrorEnvelope".into(),
        json!({"type": "object", "required": ["status", "message", "timestamp"],
            "properties": {"status": {"type": "integer", "description": "The HTTP status, repeated"},
                "message": {"type": "string"}, "timestamp": {"type": "string", "description": "UTC, YYYY-MM-DD HH:MM:SS (with +00:00 when server.timestamp_offset is set)"},
                "data": {"description": "Detail, or null"}}}),
    );
    schemas.insert(
        "ValidationErrorEnvelope".into(),
        json!({"type": "object", "required": ["status", "message", "timestamp", "data"],
            "properties": {"status": {"type": "integer", "const": 422}, "message": {"type": "string"},
                "timestamp": {"type": "string"},
                "data": {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "array", "items": {
                    "type": "object", "required": ["loc", "msg", "type"], "properties": {
                        "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                        "msg": {"type": "string"}, "type": {"type": "string"}}}}}}}}),
    );

    let mut tags = Vec::new();
    for p in &reg.plugins {
        let m = &p.meta;
        let mut lines = vec![m.description.clone()];
        let mut facts = Vec::new();
        if !m.version.is_empty() {
            facts.push(format!("version {}", m.version));
        }
        if !m.author.is_empty() {
            facts.push(format!("by {}", m.author));
        }
        if !facts.is_empty() {
            lines.push(facts.join(", "));
        }
        let mut tag = json!({
            "name": m.name,
            "description": lines.into_iter().filter(|l| !l.is_empty()).collect::<Vec<_>>().join("\n\n"),
            "x-plugin": {"version": m.version, "author": m.author, "url": m.url,
                "deployment": format!("{}.{}", m.name, p.type_name),
                "required_remote_apis": m.required_remote_apis},
        });
        if !m.url.is_empty() {
            tag["externalDocs"] = json!({"url": m.url});
        }
        tags.push(tag);
    }
    let known: Vec<String> = tags
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect();
    used_tags.sort();
    used_tags.dedup();
    for t in used_tags.into_iter().filter(|t| !known.contains(t)) {
        let description = match t.as_str() {
            "bus" => "Services on the ZeroMQ bus",
            "proxy" => "Routes forwarded to upstream OpenAPI services",
            _ => "",
        };
        tags.push(json!({"name": t, "description": description}));
    }
    tags.push(json!({"name": "system", "description": "Health and version"}));

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "service-framework bridge",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Plugins and services on the ZeroMQ bus over HTTP. Every non-stream response under /api is an envelope {status, message, timestamp, data}; errors keep their HTTP status.",
        },
        "tags": tags,
        "paths": paths,
        "x-function-apis": functions,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "The key, bare or as `Bearer <key>`"}},
        },
    })
}

/// The operation of a publisher's topic served as events.
pub(crate) fn bus_stream_operation(
    s: &crate::bus::BusStream,
    method: &Method,
    protected: bool,
    extra_schemas: &mut Map<String, Value>,
) -> Value {
    let mut op = json!({
        "tags": s.tags,
        "summary": s.description.clone().unwrap_or_else(|| format!("Messages published on topic {:?} at {}", s.topic, s.address)),
        "operationId": operation_id(&s.path, method),
        "parameters": [],
        "responses": stream_responses(),
    });
    if let Some(a) = &s.args_schema {
        op["x-message-schema"] = hoist_root(a.clone(), extra_schemas);
    }
    add_errors(&mut op, false, protected, true);
    op["responses"]["502"] = json!({"description": "The publisher cannot be subscribed to",
                        "content": {"text/event-stream": {"schema": event_schema()}}});
    op
}

/// The operation of a replyer served as a route.
pub(crate) fn bus_operation(
    r: &crate::bus::BusRoute,
    method: &Method,
    protected: bool,
    extra_schemas: &mut Map<String, Value>,
) -> Value {
    let args = r
        .args_schema
        .clone()
        .map(|s| hoist_root(s, extra_schemas))
        .unwrap_or_else(|| json!({"type": "object"}));
    let ret = r
        .return_schema
        .clone()
        .map(|s| hoist_root(s, extra_schemas))
        .unwrap_or(json!({}));
    let mut op = json!({
        "tags": r.tags,
        "summary": r.description.clone().unwrap_or_else(|| format!("Request to the replyer at {}", r.target)),
        "operationId": operation_id(&r.path, method),
    });
    if *method == Method::GET {
        op["parameters"] = json!(query_params_of(&args));
    } else {
        op["parameters"] = json!([]);
        op["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": args}},
        });
    }
    op["responses"] = if r.raw_response {
        json!({"200": {"description": "The reply's return_args", "content": {"application/json": {"schema": ret}}}})
    } else {
        json!({"200": {"description": "The reply's return_args in data", "content": {"application/json": {"schema": envelope_of(ret)}}}})
    };
    add_errors(&mut op, true, protected, false);
    for (code, what) in [
        (
            "502",
            "The service's reply was unusable or the service went away",
        ),
        ("504", "No reply in time"),
    ] {
        op["responses"][code] = json!({"description": what, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}});
    }
    op
}

/// `x-function-apis`: every function API (`call_type` func or all) by its name, with the
/// keyword arguments `call_plugin_api` takes (query parameters, and the body under its
/// name), what it answers (a stream: the list of its `message_chunk` payloads), whether it
/// is idempotent and whether its plugin runs on workers (`remote`).
fn function_apis(
    reg: &Registry,
    gen: &mut schemars::SchemaGenerator,
    extra: &mut Map<String, Value>,
) -> Value {
    let mut out = Map::new();
    for (name, e) in &reg.funcs {
        let mut kwargs = hoist_root(e.handler.query_root.clone(), extra);
        if let Value::Object(m) = &mut kwargs {
            m.remove("title");
            m.remove("default");
            if let Some((body, schema_fn)) = &e.handler.body {
                let s = schema_fn(gen).to_value();
                m.entry("properties")
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .map(|p| p.insert(body.clone(), s));
                match m.entry("required").or_insert_with(|| json!([])) {
                    Value::Array(r) => r.push(body.clone().into()),
                    other => *other = json!([body]),
                }
            }
        }
        let returns = if e.handler.stream {
            let item = e.api.event.map(|f| f(gen).to_value()).unwrap_or(json!({}));
            json!({"type": "array", "items": item})
        } else {
            (e.handler.response)(gen).to_value()
        };
        let route: Vec<String> = match e.api.full_path() {
            Some(p) if e.api.effective_call_type() == crate::plugin::CallType::All => {
                e.api.methods.iter().map(|m| format!("{m} {p}")).collect()
            }
            _ => Vec::new(),
        };
        out.insert(
            name.clone(),
            json!({
                "plugin": e.plugin.meta.name,
                "summary": e.api.summary.clone().unwrap_or_else(|| e.api.name.clone()),
                "kwargs": kwargs,
                "returns": returns,
                "stream": e.handler.stream,
                "routes": route,
                // May run again on another worker if its worker dies (remote plugins).
                "idempotent": e.api.idempotent,
                // Its plugin runs on workers behind a broker (`plugins.<name>.remote`).
                "remote": e.plugin.remote,
            }),
        );
    }
    Value::Object(out)
}

/// FastAPI's generated id for FrameX's handler: `route_handler` and the path with every
/// non-word character as `_`, then the method (`route_handler_api_v1_echo_get`), so a client
/// generated from FrameX's document keeps its method names.
pub(crate) fn operation_id(path: &str, method: &Method) -> String {
    let mut s: String = format!("route_handler{path}")
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.push('_');
    s.push_str(&method.as_str().to_ascii_lowercase());
    s
}

fn envelope_of(data: Value) -> Value {
    json!({"type": "object", "required": ["status", "message", "timestamp", "data"],
        "properties": {"status": {"type": "integer"}, "message": {"type": "string"},
            "timestamp": {"type": "string", "description": "UTC, YYYY-MM-DD HH:MM:SS (with +00:00 when server.timestamp_offset is set)"}, "data": data}})
}

/// One server-sent event as stream checkers read it: the `event` name and the `data` line's
/// text (JSON).
fn event_schema() -> Value {
    json!({"type": "object", "required": ["data"], "properties": {
        "event": {"type": "string", "enum": ["message_chunk", "finish", "error", "debug"]},
        "data": {"type": "string", "contentMediaType": "application/json",
            "description": "message_chunk: the chunk (a string as {\"content\": ...}); finish: {}; error: {\"status\", \"message\"}"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    }})
}

/// An event stream's 200: its schema describes each event.
fn stream_responses() -> Value {
    json!({"200": {"description": "Server-sent events, `event: <type>` and `data: <json>`: `message_chunk` (a string chunk is {\"content\": ...}), then `finish` ({}); a failure midway is an `error` event ({\"status\", \"message\"}) that ends the stream",
        "content": {"text/event-stream": {"schema": event_schema()}}}})
}

/// Errors a route answers; a stream route answers them as one `error` event.
fn add_errors(op: &mut Value, validates: bool, protected: bool, stream: bool) {
    let err = |d: &str| {
        if stream {
            json!({"description": d, "content": {"text/event-stream": {"schema": event_schema()}}})
        } else {
            json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}})
        }
    };
    if validates {
        op["responses"]["422"] = if stream {
            err("Validation error: one `error` event with `detail`")
        } else {
            json!({"description": "Validation error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ValidationErrorEnvelope"}}}})
        };
    }
    if protected {
        op["responses"]["401"] = err("Missing or invalid API key");
        op["security"] = json!([{"ApiKey": []}]);
    }
    op["responses"]["500"] = err("Internal error (a safe message)");
}

fn schema_description(s: &Value) -> Option<String> {
    s.get("description")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Rewrites `#/$defs/X` refs of a standalone schema to `#/components/schemas/X`, moving the
/// definitions there.
fn hoist(mut schema: Value, root: &Value, out: &mut Map<String, Value>) -> Value {
    if let Some(defs) = root.get("$defs").and_then(Value::as_object) {
        for (k, v) in defs {
            if !out.contains_key(k) {
                let mut v = v.clone();
                rewrite_refs(&mut v);
                out.insert(k.clone(), v);
            }
        }
    }
    rewrite_refs(&mut schema);
    schema
}

fn hoist_root(mut schema: Value, out: &mut Map<String, Value>) -> Value {
    let root = schema.clone();
    if let Value::Object(m) = &mut schema {
        m.remove("$defs");
        m.remove("$schema");
        m.remove("definitions");
    }
    hoist(schema, &root, out)
}

fn rewrite_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref") {
                for from in ["#/$defs/", "#/definitions/"] {
                    if let Some(rest) = r.strip_prefix(from) {
                        *r = format!("#/components/schemas/{rest}");
                    }
                }
            }
            for (_, x) in m.iter_mut() {
                rewrite_refs(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

fn query_params_of(schema: &Value) -> Vec<Value> {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|props| {
            props
                .iter()
                .map(|(k, s)| json!({"name": k, "in": "query", "required": required.contains(&k.as_str()), "schema": s}))
                .collect()
        })
        .unwrap_or_default()
}
