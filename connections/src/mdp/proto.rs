//! MDP 0.2 framing (rfc.zeromq.org spec 18): the commands as frames, parsed and built with
//! no I/O, so a broker, a worker and a client all share one reading of the spec.
//!
//! Frames as they travel (a ROUTER prepends the sender's routing id on receipt; a DEALER sends
//! these frames as they are, with no empty delimiter first: that is MDP 0.1's, gone in 0.2):
//!
//! ```text
//! client -> broker   REQUEST     "MDPC02" 0x01 service body...
//! broker -> client   PARTIAL     "MDPC02" 0x02 service body...
//!                    FINAL       "MDPC02" 0x03 service body...
//! worker -> broker   READY       "MDPW02" 0x01 service
//! broker -> worker   REQUEST     "MDPW02" 0x02 client "" body...
//! worker -> broker   PARTIAL     "MDPW02" 0x03 client "" body...
//!                    FINAL       "MDPW02" 0x04 client "" body...
//! both ways          HEARTBEAT   "MDPW02" 0x05
//!                    DISCONNECT  "MDPW02" 0x06
//! ```
//!
//! Every parser returns an error naming what is wrong instead of panicking, whatever the
//! frames: a peer's bytes are never trusted.
//!
//! A requester that calls through a broker (an MDP client) needs [`client_request`] to send
//! and [`parse_client_reply`] to read what comes back; the broker's own answers (MMI, and
//! refusals to clients that are not framework requesters) are described in [`BrokerStatus`].

use bytes::Bytes;
use sf_zmtp::Message;

/// The MDP/Client v0.2 header frame.
pub const CLIENT: &[u8] = b"MDPC02";
/// The MDP/Worker v0.2 header frame.
pub const WORKER: &[u8] = b"MDPW02";

/// The longest service name accepted (a printable string; the spec sets no limit, this keeps
/// a hostile peer from making the broker hold megabyte keys).
pub const MAX_SERVICE_LEN: usize = 255;

/// Client command bytes.
pub mod client_cmd {
    /// Client -> broker.
    pub const REQUEST: u8 = 0x01;
    /// Broker -> client, zero or more per request.
    pub const PARTIAL: u8 = 0x02;
    /// Broker -> client, exactly one per request, last.
    pub const FINAL: u8 = 0x03;
}

/// Worker command bytes.
pub mod worker_cmd {
    /// Worker -> broker: registers for a service.
    pub const READY: u8 = 0x01;
    /// Broker -> worker.
    pub const REQUEST: u8 = 0x02;
    /// Worker -> broker, zero or more per request.
    pub const PARTIAL: u8 = 0x03;
    /// Worker -> broker, exactly one per request.
    pub const FINAL: u8 = 0x04;
    /// Both ways.
    pub const HEARTBEAT: u8 = 0x05;
    /// Both ways.
    pub const DISCONNECT: u8 = 0x06;
}

/// Why frames are not a valid MDP 0.2 command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Too few frames for any command.
    #[error("{0} frame(s): too few for an MDP command")]
    TooShort(usize),
    /// The first frame is neither `MDPC02` nor `MDPW02`.
    #[error("unknown protocol header {0}")]
    Header(String),
    /// The command frame is not one byte, or not a known command.
    #[error("unknown {side} command {value}")]
    Command {
        /// `client` or `worker`.
        side: &'static str,
        /// The command frame, shown escaped.
        value: String,
    },
    /// A command that the sending side may not send (a client sending FINAL).
    #[error("{0} is not a command this peer may send")]
    Direction(&'static str),
    /// The frames after the command do not match the command's layout.
    #[error("{command}: {problem}")]
    Layout {
        /// The command.
        command: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
    /// A service name that is empty, too long or not printable.
    #[error("invalid service name {0}")]
    Service(String),
}

/// What a peer (client or worker) sent to the broker, without the routing id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToBroker {
    /// A client's REQUEST.
    Request {
        /// The service asked for.
        service: String,
        /// The request body (one or more frames).
        body: Vec<Bytes>,
    },
    /// A worker's READY.
    Ready {
        /// The service it serves.
        service: String,
    },
    /// A worker's PARTIAL or FINAL reply.
    Reply {
        /// FINAL (else PARTIAL).
        last: bool,
        /// The client the reply is for.
        client: Bytes,
        /// The reply body (possibly empty).
        body: Vec<Bytes>,
    },
    /// A worker's HEARTBEAT.
    Heartbeat,
    /// A worker's DISCONNECT.
    Disconnect,
}

impl ToBroker {
    /// The command's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            ToBroker::Request { .. } => "REQUEST",
            ToBroker::Ready { .. } => "READY",
            ToBroker::Reply { last: true, .. } => "FINAL",
            ToBroker::Reply { last: false, .. } => "PARTIAL",
            ToBroker::Heartbeat => "HEARTBEAT",
            ToBroker::Disconnect => "DISCONNECT",
        }
    }

    /// Whether this came from a worker (else a client).
    pub fn from_worker(&self) -> bool {
        !matches!(self, ToBroker::Request { .. })
    }
}

/// What the broker sends a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToWorker {
    /// A request to serve.
    Request {
        /// The client's address (echoed on the reply).
        client: Bytes,
        /// The request body.
        body: Vec<Bytes>,
    },
    /// The broker is alive.
    Heartbeat,
    /// The broker dropped this worker: reconnect on a new socket and register again.
    Disconnect,
}

/// What the broker sends a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientReply {
    /// FINAL (else PARTIAL).
    pub last: bool,
    /// The service that answered.
    pub service: String,
    /// The reply body.
    pub body: Vec<Bytes>,
}

/// The broker's own answers, as MMI (spec 8) status codes in a first body frame: `200` (the
/// service has workers), `404` (it has none), `501` (an `mmi.` query the broker does not
/// know). A client that is not a framework requester gets refusals the same way, as a
/// FINAL with body `[code, reason]`: `503` (the service's queue is full, or its worker was
/// lost after it had sent PARTIAL replies) and `504` (no worker took the request in time).
/// A framework requester gets a framework error reply instead (`unavailable`, `timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerStatus {
    /// `200`.
    Ok,
    /// `404`.
    NotFound,
    /// `501`.
    NotImplemented,
    /// `503`.
    Unavailable,
    /// `504`.
    Timeout,
}

impl BrokerStatus {
    /// The code as sent.
    pub fn code(self) -> &'static str {
        match self {
            BrokerStatus::Ok => "200",
            BrokerStatus::NotFound => "404",
            BrokerStatus::NotImplemented => "501",
            BrokerStatus::Unavailable => "503",
            BrokerStatus::Timeout => "504",
        }
    }

    /// Reads a code frame.
    pub fn parse(frame: &[u8]) -> Option<BrokerStatus> {
        Some(match frame {
            b"200" => BrokerStatus::Ok,
            b"404" => BrokerStatus::NotFound,
            b"501" => BrokerStatus::NotImplemented,
            b"503" => BrokerStatus::Unavailable,
            b"504" => BrokerStatus::Timeout,
            _ => return None,
        })
    }
}

fn shown(b: &[u8]) -> String {
    let cut = &b[..b.len().min(32)];
    let mut s = String::from("\"");
    s.extend(cut.escape_ascii().map(char::from));
    s.push('"');
    if b.len() > cut.len() {
        s.push_str("...");
    }
    s
}

/// Checks a service name: 1 to [`MAX_SERVICE_LEN`] bytes of printable UTF-8.
pub fn service_name(frame: &[u8]) -> Result<String, ProtoError> {
    let ok = !frame.is_empty()
        && frame.len() <= MAX_SERVICE_LEN
        && std::str::from_utf8(frame).is_ok_and(|s| !s.chars().any(char::is_control));
    if ok {
        Ok(String::from_utf8_lossy(frame).into_owned())
    } else {
        Err(ProtoError::Service(shown(frame)))
    }
}

fn command_byte(frame: &Bytes, side: &'static str) -> Result<u8, ProtoError> {
    match frame.as_ref() {
        [b] => Ok(*b),
        other => Err(ProtoError::Command {
            side,
            value: shown(other),
        }),
    }
}

/// Reads `client "" body...` (the frames after a worker REQUEST/PARTIAL/FINAL command).
fn addressed(
    frames: &[Bytes],
    command: &'static str,
    body_needed: bool,
) -> Result<(Bytes, Vec<Bytes>), ProtoError> {
    let layout = |problem| ProtoError::Layout { command, problem };
    let client = frames.first().ok_or(layout("no client address frame"))?;
    if client.is_empty() {
        return Err(layout("an empty client address frame"));
    }
    match frames.get(1) {
        Some(d) if d.is_empty() => {}
        Some(_) => {
            return Err(layout(
                "the client address must be one frame followed by an empty frame",
            ))
        }
        None => return Err(layout("no empty frame after the client address")),
    }
    let body = frames[2..].to_vec();
    if body_needed && body.is_empty() {
        return Err(layout("no body frame"));
    }
    Ok((client.clone(), body))
}

/// Parses what a peer sent the broker (the frames after the routing id).
pub fn parse_to_broker(frames: &[Bytes]) -> Result<ToBroker, ProtoError> {
    if frames.len() < 2 {
        return Err(ProtoError::TooShort(frames.len()));
    }
    let rest = &frames[2..];
    match frames[0].as_ref() {
        CLIENT => match command_byte(&frames[1], "client")? {
            client_cmd::REQUEST => {
                let layout = |problem| ProtoError::Layout {
                    command: "REQUEST",
                    problem,
                };
                let service = service_name(rest.first().ok_or(layout("no service frame"))?)?;
                if rest.len() < 2 {
                    return Err(layout("no body frame"));
                }
                Ok(ToBroker::Request {
                    service,
                    body: rest[1..].to_vec(),
                })
            }
            client_cmd::PARTIAL => Err(ProtoError::Direction("client PARTIAL")),
            client_cmd::FINAL => Err(ProtoError::Direction("client FINAL")),
            other => Err(ProtoError::Command {
                side: "client",
                value: format!("0x{other:02x}"),
            }),
        },
        WORKER => match command_byte(&frames[1], "worker")? {
            worker_cmd::READY => {
                let layout = |problem| ProtoError::Layout {
                    command: "READY",
                    problem,
                };
                let service = service_name(rest.first().ok_or(layout("no service frame"))?)?;
                if rest.len() > 1 {
                    return Err(layout("frames after the service name"));
                }
                Ok(ToBroker::Ready { service })
            }
            worker_cmd::REQUEST => Err(ProtoError::Direction("worker REQUEST")),
            worker_cmd::PARTIAL => {
                let (client, body) = addressed(rest, "PARTIAL", false)?;
                Ok(ToBroker::Reply {
                    last: false,
                    client,
                    body,
                })
            }
            worker_cmd::FINAL => {
                let (client, body) = addressed(rest, "FINAL", false)?;
                Ok(ToBroker::Reply {
                    last: true,
                    client,
                    body,
                })
            }
            worker_cmd::HEARTBEAT => Ok(ToBroker::Heartbeat),
            worker_cmd::DISCONNECT => Ok(ToBroker::Disconnect),
            other => Err(ProtoError::Command {
                side: "worker",
                value: format!("0x{other:02x}"),
            }),
        },
        other => Err(ProtoError::Header(shown(other))),
    }
}

/// Parses what the broker sent a worker.
pub fn parse_to_worker(frames: &[Bytes]) -> Result<ToWorker, ProtoError> {
    if frames.len() < 2 {
        return Err(ProtoError::TooShort(frames.len()));
    }
    if frames[0].as_ref() != WORKER {
        return Err(ProtoError::Header(shown(&frames[0])));
    }
    match command_byte(&frames[1], "worker")? {
        worker_cmd::REQUEST => {
            let (client, body) = addressed(&frames[2..], "REQUEST", true)?;
            Ok(ToWorker::Request { client, body })
        }
        worker_cmd::HEARTBEAT => Ok(ToWorker::Heartbeat),
        worker_cmd::DISCONNECT => Ok(ToWorker::Disconnect),
        worker_cmd::READY => Err(ProtoError::Direction("broker READY")),
        worker_cmd::PARTIAL => Err(ProtoError::Direction("broker PARTIAL")),
        worker_cmd::FINAL => Err(ProtoError::Direction("broker FINAL")),
        other => Err(ProtoError::Command {
            side: "worker",
            value: format!("0x{other:02x}"),
        }),
    }
}

/// Parses what the broker sent a client (PARTIAL or FINAL).
pub fn parse_client_reply(frames: &[Bytes]) -> Result<ClientReply, ProtoError> {
    if frames.len() < 3 {
        return Err(ProtoError::TooShort(frames.len()));
    }
    if frames[0].as_ref() != CLIENT {
        return Err(ProtoError::Header(shown(&frames[0])));
    }
    let last = match command_byte(&frames[1], "client")? {
        client_cmd::PARTIAL => false,
        client_cmd::FINAL => true,
        client_cmd::REQUEST => return Err(ProtoError::Direction("broker REQUEST")),
        other => {
            return Err(ProtoError::Command {
                side: "client",
                value: format!("0x{other:02x}"),
            })
        }
    };
    Ok(ClientReply {
        last,
        service: service_name(&frames[2])?,
        body: frames[3..].to_vec(),
    })
}

fn message(head: [&'static [u8]; 2], rest: impl IntoIterator<Item = Bytes>) -> Message {
    let mut m = Message::new();
    m.push(Bytes::from_static(head[0]));
    m.push(Bytes::from_static(head[1]));
    for f in rest {
        m.push(f);
    }
    m
}

const fn cmd(b: u8) -> &'static [u8] {
    match b {
        1 => &[1],
        2 => &[2],
        3 => &[3],
        4 => &[4],
        5 => &[5],
        _ => &[6],
    }
}

/// A client's REQUEST (what a DEALER sends).
pub fn client_request(service: &str, body: impl IntoIterator<Item = Bytes>) -> Message {
    let mut m = message([CLIENT, cmd(client_cmd::REQUEST)], []);
    m.push(Bytes::copy_from_slice(service.as_bytes()));
    for f in body {
        m.push(f);
    }
    m
}

/// A PARTIAL or FINAL to a client (without the routing id).
pub fn client_reply(last: bool, service: &str, body: impl IntoIterator<Item = Bytes>) -> Message {
    let c = if last {
        client_cmd::FINAL
    } else {
        client_cmd::PARTIAL
    };
    let mut m = message([CLIENT, cmd(c)], []);
    m.push(Bytes::copy_from_slice(service.as_bytes()));
    for f in body {
        m.push(f);
    }
    m
}

/// A worker's READY.
pub fn worker_ready(service: &str) -> Message {
    message(
        [WORKER, cmd(worker_cmd::READY)],
        [Bytes::copy_from_slice(service.as_bytes())],
    )
}

/// The broker's REQUEST to a worker (without the routing id).
pub fn worker_request(client: Bytes, body: impl IntoIterator<Item = Bytes>) -> Message {
    let mut m = message([WORKER, cmd(worker_cmd::REQUEST)], [client, Bytes::new()]);
    for f in body {
        m.push(f);
    }
    m
}

/// A worker's PARTIAL or FINAL.
pub fn worker_reply(last: bool, client: Bytes, body: impl IntoIterator<Item = Bytes>) -> Message {
    let c = if last {
        worker_cmd::FINAL
    } else {
        worker_cmd::PARTIAL
    };
    let mut m = message([WORKER, cmd(c)], [client, Bytes::new()]);
    for f in body {
        m.push(f);
    }
    m
}

/// HEARTBEAT (either way).
pub fn heartbeat() -> Message {
    message([WORKER, cmd(worker_cmd::HEARTBEAT)], [])
}

/// DISCONNECT (either way).
pub fn disconnect() -> Message {
    message([WORKER, cmd(worker_cmd::DISCONNECT)], [])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(m: &Message) -> Vec<Bytes> {
        m.frames().to_vec()
    }

    #[test]
    fn every_command_round_trips() {
        let body = vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")];
        assert_eq!(
            parse_to_broker(&frames(&client_request("echo", body.clone()))).unwrap(),
            ToBroker::Request {
                service: "echo".into(),
                body: body.clone()
            }
        );
        assert_eq!(
            parse_to_broker(&frames(&worker_ready("echo"))).unwrap(),
            ToBroker::Ready {
                service: "echo".into()
            }
        );
        let c = Bytes::from_static(b"\0\x01\x02\x03\x04");
        for last in [false, true] {
            assert_eq!(
                parse_to_broker(&frames(&worker_reply(last, c.clone(), body.clone()))).unwrap(),
                ToBroker::Reply {
                    last,
                    client: c.clone(),
                    body: body.clone()
                }
            );
            assert_eq!(
                parse_client_reply(&frames(&client_reply(last, "echo", body.clone()))).unwrap(),
                ClientReply {
                    last,
                    service: "echo".into(),
                    body: body.clone()
                }
            );
        }
        assert_eq!(
            parse_to_worker(&frames(&worker_request(c.clone(), body.clone()))).unwrap(),
            ToWorker::Request {
                client: c,
                body: body.clone()
            }
        );
        assert_eq!(
            parse_to_broker(&frames(&heartbeat())).unwrap(),
            ToBroker::Heartbeat
        );
        assert_eq!(
            parse_to_worker(&frames(&disconnect())).unwrap(),
            ToWorker::Disconnect
        );
        // The spec's own layout, frame by frame.
        assert_eq!(
            frames(&worker_ready("s")),
            vec![
                Bytes::from_static(b"MDPW02"),
                Bytes::from_static(&[1]),
                Bytes::from_static(b"s")
            ]
        );
        assert_eq!(frames(&disconnect())[1].as_ref(), &[6]);
    }

    #[test]
    fn bad_frames_are_named_not_panicked_on() {
        let f = |v: &[&[u8]]| {
            v.iter()
                .map(|b| Bytes::copy_from_slice(b))
                .collect::<Vec<_>>()
        };
        let cases: &[&[&[u8]]] = &[
            &[],
            &[b"MDPC02"],
            &[b"MDPC01", &[1], b"echo", b"x"],
            &[b"MDPC02", &[1, 1], b"echo", b"x"],
            &[b"MDPC02", &[9], b"echo", b"x"],
            &[b"MDPC02", &[1], b"echo"],
            &[b"MDPC02", &[1], b"", b"x"],
            &[b"MDPC02", &[1], b"bad\nname", b"x"],
            &[b"MDPC02", &[3], b"echo", b"x"],
            &[b"MDPW02", &[1]],
            &[b"MDPW02", &[1], b"echo", b"extra"],
            &[b"MDPW02", &[2], b"c", b"", b"x"],
            &[b"MDPW02", &[4], b"c"],
            &[b"MDPW02", &[4], b"c", b"not empty", b"x"],
            &[b"MDPW02", &[4], b"", b"", b"x"],
            &[b"MDPW02", &[0x7f]],
            &[b"", &[]],
        ];
        for c in cases {
            let e = parse_to_broker(&f(c)).unwrap_err();
            assert!(!e.to_string().is_empty());
        }
        let long = vec![b'x'; MAX_SERVICE_LEN + 1];
        assert!(parse_to_broker(&f(&[b"MDPW02", &[1], &long])).is_err());
        assert!(parse_to_worker(&f(&[b"MDPW02", &[2], b"c", b""])).is_err());
        assert!(parse_client_reply(&f(&[b"MDPC02", &[1], b"s", b"x"])).is_err());
    }
}
