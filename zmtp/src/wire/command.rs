//! Commands: READY and ERROR (RFC 23), PING, PONG, SUBSCRIBE and CANCEL (RFC 37).
//!
//! A command body is a one-octet name length, the name, then command data. READY carries
//! metadata: properties of a one-octet name length, the name, a four-octet value length and
//! the value. Every length is checked against what is left of the body; nothing is allocated
//! beyond views into the body itself.

use bytes::{BufMut, Bytes, BytesMut};

/// Properties sent in READY (`Socket-Type`, `Identity`, anything else the peer adds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(pub Vec<(String, Bytes)>);

impl Metadata {
    /// The value of a property, by case-insensitive name (RFC 23: names are case-insensitive).
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Parses properties (READY's data; the metadata inside CURVE's INITIATE and READY boxes).
    pub fn parse(data: &[u8]) -> Result<Metadata, CommandError> {
        parse_metadata(data)
    }

    /// Appends the properties in wire form (names over 255 octets are cut).
    pub fn encode_into(&self, out: &mut BytesMut) {
        for (k, v) in &self.0 {
            let k = &k.as_bytes()[..k.len().min(255)];
            out.put_u8(k.len() as u8);
            out.put_slice(k);
            out.put_u32(v.len() as u32);
            out.put_slice(v);
        }
    }
}

/// One command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Ends the NULL handshake, with the sender's metadata.
    Ready(Metadata),
    /// The sender refuses the connection, with a reason.
    Error(String),
    /// A heartbeat: the sender's TTL in deciseconds and up to 16 octets of context.
    Ping {
        /// How long the receiver may wait for traffic before closing, in tenths of a second.
        ttl_deciseconds: u16,
        /// Echoed in the PONG.
        context: Bytes,
    },
    /// The answer to a PING.
    Pong {
        /// The PING's context.
        context: Bytes,
    },
    /// A subscription to a topic prefix.
    Subscribe(Bytes),
    /// The end of a subscription.
    Cancel(Bytes),
    /// A command this implementation does not know, kept by name (ignored by the engine).
    Other(String),
}

/// A command body that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The body is empty or shorter than its name length says.
    #[error("the command name is truncated")]
    TruncatedName,
    /// A metadata property runs past the end of the body.
    #[error("a READY property is truncated")]
    TruncatedProperty,
    /// A property name that is empty or not made of name characters.
    #[error("a READY property name is invalid")]
    BadPropertyName,
    /// A PING without its TTL, or with more than 16 octets of context.
    #[error("a PING is malformed")]
    BadPing,
    /// A PONG with more than 16 octets of context.
    #[error("a PONG is malformed")]
    BadPong,
    /// An ERROR whose reason length is wrong.
    #[error("an ERROR is malformed")]
    BadError,
}

impl Command {
    /// Parses a command frame's body.
    pub fn parse(body: &Bytes) -> Result<Command, CommandError> {
        let n = *body.first().ok_or(CommandError::TruncatedName)? as usize;
        if n == 0 || body.len() < 1 + n {
            return Err(CommandError::TruncatedName);
        }
        let name = &body[1..1 + n];
        let data = body.slice(1 + n..);
        Ok(match name {
            b"READY" => Command::Ready(parse_metadata(&data)?),
            b"ERROR" => {
                let len = *data.first().ok_or(CommandError::BadError)? as usize;
                if data.len() != 1 + len {
                    return Err(CommandError::BadError);
                }
                Command::Error(String::from_utf8_lossy(&data[1..]).into_owned())
            }
            b"PING" => {
                if data.len() < 2 || data.len() > 2 + 16 {
                    return Err(CommandError::BadPing);
                }
                Command::Ping {
                    ttl_deciseconds: u16::from_be_bytes([data[0], data[1]]),
                    context: data.slice(2..),
                }
            }
            b"PONG" => {
                if data.len() > 16 {
                    return Err(CommandError::BadPong);
                }
                Command::Pong { context: data }
            }
            b"SUBSCRIBE" => Command::Subscribe(data),
            b"CANCEL" => Command::Cancel(data),
            other => Command::Other(String::from_utf8_lossy(other).into_owned()),
        })
    }

    /// Encodes this command's body (without the frame header).
    pub fn encode(&self) -> BytesMut {
        let mut out = BytesMut::new();
        match self {
            Command::Ready(meta) => {
                put_name(&mut out, "READY");
                meta.encode_into(&mut out);
            }
            Command::Error(reason) => {
                put_name(&mut out, "ERROR");
                let r = &reason.as_bytes()[..reason.len().min(255)];
                out.put_u8(r.len() as u8);
                out.put_slice(r);
            }
            Command::Ping {
                ttl_deciseconds,
                context,
            } => {
                put_name(&mut out, "PING");
                out.put_u16(*ttl_deciseconds);
                out.put_slice(&context[..context.len().min(16)]);
            }
            Command::Pong { context } => {
                put_name(&mut out, "PONG");
                out.put_slice(&context[..context.len().min(16)]);
            }
            Command::Subscribe(topic) => {
                put_name(&mut out, "SUBSCRIBE");
                out.put_slice(topic);
            }
            Command::Cancel(topic) => {
                put_name(&mut out, "CANCEL");
                out.put_slice(topic);
            }
            Command::Other(name) => put_name(&mut out, name),
        }
        out
    }
}

fn put_name(out: &mut BytesMut, name: &str) {
    out.put_u8(name.len() as u8);
    out.put_slice(name.as_bytes());
}

fn parse_metadata(mut data: &[u8]) -> Result<Metadata, CommandError> {
    let mut props = Vec::new();
    while !data.is_empty() {
        let n = data[0] as usize;
        if n == 0 {
            return Err(CommandError::BadPropertyName);
        }
        if data.len() < 1 + n + 4 {
            return Err(CommandError::TruncatedProperty);
        }
        let name = &data[1..1 + n];
        if !name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
        {
            return Err(CommandError::BadPropertyName);
        }
        let len = u32::from_be_bytes([data[1 + n], data[2 + n], data[3 + n], data[4 + n]]) as usize;
        let rest = &data[5 + n..];
        if rest.len() < len {
            return Err(CommandError::TruncatedProperty);
        }
        props.push((
            String::from_utf8_lossy(name).into_owned(),
            Bytes::copy_from_slice(&rest[..len]),
        ));
        data = &rest[len..];
    }
    Ok(Metadata(props))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_round_trips_with_metadata() {
        let meta = Metadata(vec![
            ("Socket-Type".into(), Bytes::from_static(b"DEALER")),
            ("Identity".into(), Bytes::new()),
        ]);
        let body = Command::Ready(meta.clone()).encode().freeze();
        assert_eq!(&body[..6], b"\x05READY");
        assert_eq!(&body[6..18], b"\x0bSocket-Type");
        match Command::parse(&body).unwrap() {
            Command::Ready(m) => {
                assert_eq!(m, meta);
                assert_eq!(m.get("socket-type").unwrap().as_ref(), b"DEALER");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_command_round_trips() {
        for c in [
            Command::Error("Invalid socket type".into()),
            Command::Ping {
                ttl_deciseconds: 50,
                context: Bytes::from_static(b"ctx"),
            },
            Command::Pong {
                context: Bytes::from_static(b"ctx"),
            },
            Command::Subscribe(Bytes::from_static(b"\xa3top")),
            Command::Cancel(Bytes::new()),
            Command::Other("HELLO".into()),
        ] {
            assert_eq!(Command::parse(&c.encode().freeze()).unwrap(), c);
        }
    }

    #[test]
    fn refuses_truncated_and_oversized_fields() {
        let cases: [&[u8]; 8] = [
            b"",
            b"\x05REA",
            b"\x05READY\x04Name\x00\x00\x00\x09abc",
            b"\x05READY\x00",
            b"\x05READY\x02a b\x00\x00\x00\x00",
            b"\x04PING\x00",
            b"\x04PONG01234567890123456",
            b"\x05ERROR\x05ab",
        ];
        for c in cases {
            assert!(
                Command::parse(&Bytes::from_static(c)).is_err(),
                "accepted {c:?}"
            );
        }
    }
}
