//! Frames: the unit ZMTP 3 puts on the wire after the handshake (RFC 23, "Framing").
//!
//! A frame is one flags octet, a size (one octet, or eight octets in network order when the
//! LONG flag is set) and that many octets of body. Flags: MORE (another frame of the same
//! message follows), LONG, COMMAND (the body is a command, never part of a message).
//!
//! The decoder checks every limit on the header, before a single body octet is buffered: a
//! peer that declares a 2^40-octet frame is refused on the nine octets that say so. It never
//! reserves what a header declares; the caller grows its buffer as octets actually arrive.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Another frame of the same message follows.
pub const MORE: u8 = 0x01;
/// The size is eight octets.
pub const LONG: u8 = 0x02;
/// The body is a command.
pub const COMMAND: u8 = 0x04;

/// The largest size that fits a short header.
const SHORT_MAX: usize = 255;

/// What a connection accepts from its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most octets in one message, all frames together.
    pub max_message_bytes: usize,
    /// The most frames in one message.
    pub max_frames: usize,
    /// The most octets in one command frame.
    pub max_command_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 << 20,
            max_frames: 4096,
            max_command_bytes: 64 << 10,
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A frame of a message; `more` says another frame of it follows.
    Data {
        /// The MORE flag.
        more: bool,
        /// The body.
        body: Bytes,
    },
    /// A command frame's body: name length, name, data.
    Command(Bytes),
}

/// A frame the peer should not have sent. Every one of these ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Bits other than MORE, LONG and COMMAND are set.
    #[error("frame flags {0:#04x} set reserved bits")]
    ReservedFlags(u8),
    /// A command with the MORE flag.
    #[error("a command frame has the MORE flag")]
    CommandMore,
    /// A command arrived between two frames of one message.
    #[error("a command frame arrived inside a multi-frame message")]
    CommandInMessage,
    /// The message would exceed the largest message accepted.
    #[error("a frame declares {declared} octets, past the message limit of {limit}")]
    MessageTooLarge {
        /// Octets the message would hold with this frame.
        declared: u64,
        /// The limit.
        limit: usize,
    },
    /// A command larger than the largest command accepted.
    #[error("a command frame declares {declared} octets, past the command limit of {limit}")]
    CommandTooLarge {
        /// Octets declared.
        declared: u64,
        /// The limit.
        limit: usize,
    },
    /// Too many frames in one message.
    #[error("a message has more than {limit} frames")]
    TooManyFrames {
        /// The limit.
        limit: usize,
    },
}

/// Splits a byte stream into frames, enforcing [`Limits`].
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    limits: Limits,
    /// Octets of the message in progress (frames already decoded).
    message_bytes: usize,
    /// Frames of the message in progress.
    message_frames: usize,
    /// The header of the frame whose body is still arriving: (flags, header length, size).
    pending: Option<(u8, usize, usize)>,
}

impl FrameDecoder {
    /// A decoder with these limits.
    pub fn new(limits: Limits) -> FrameDecoder {
        FrameDecoder {
            limits,
            message_bytes: 0,
            message_frames: 0,
            pending: None,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether a multi-frame message is partly decoded.
    pub fn in_message(&self) -> bool {
        self.message_frames > 0
    }

    /// Octets still missing before the next frame can be decoded (0 if unknown: the header
    /// itself is incomplete). The caller reserves at most a bounded part of this.
    pub fn wanted(&self, buf: &BytesMut) -> usize {
        match self.pending {
            Some((_, header, size)) => (header + size).saturating_sub(buf.len()),
            None => 0,
        }
    }

    /// Decodes the next frame from the front of `buf`. `Ok(None)`: more octets are needed
    /// (the header, if complete, has already passed every check).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let (flags, header, size) = match self.pending {
            Some(p) => p,
            None => {
                let Some(p) = self.header(buf)? else {
                    return Ok(None);
                };
                self.pending = Some(p);
                p
            }
        };
        if buf.len() < header + size {
            return Ok(None);
        }
        self.pending = None;
        buf.advance(header);
        let body = buf.split_to(size).freeze();
        if flags & COMMAND != 0 {
            return Ok(Some(Frame::Command(body)));
        }
        let more = flags & MORE != 0;
        if more {
            self.message_bytes += size;
            self.message_frames += 1;
        } else {
            self.message_bytes = 0;
            self.message_frames = 0;
        }
        Ok(Some(Frame::Data { more, body }))
    }

    /// Reads and checks a header without consuming it.
    fn header(&self, buf: &BytesMut) -> Result<Option<(u8, usize, usize)>, FrameError> {
        let Some(&flags) = buf.first() else {
            return Ok(None);
        };
        if flags & !(MORE | LONG | COMMAND) != 0 {
            return Err(FrameError::ReservedFlags(flags));
        }
        let command = flags & COMMAND != 0;
        if command && flags & MORE != 0 {
            return Err(FrameError::CommandMore);
        }
        if command && self.in_message() {
            return Err(FrameError::CommandInMessage);
        }
        let (header, declared) = if flags & LONG != 0 {
            if buf.len() < 9 {
                return Ok(None);
            }
            let mut size = [0u8; 8];
            size.copy_from_slice(&buf[1..9]);
            (9, u64::from_be_bytes(size))
        } else {
            if buf.len() < 2 {
                return Ok(None);
            }
            (2, u64::from(buf[1]))
        };
        // The end of the frame must fit in usize even under a limit of usize::MAX (no limit):
        // `header + size` below would overflow, and no such frame can arrive anyway.
        let fits = declared <= (usize::MAX - header) as u64;
        if command {
            if declared > self.limits.max_command_bytes as u64 || !fits {
                return Err(FrameError::CommandTooLarge {
                    declared,
                    limit: self.limits.max_command_bytes,
                });
            }
        } else {
            let total = declared.saturating_add(self.message_bytes as u64);
            if total > self.limits.max_message_bytes as u64 || !fits {
                return Err(FrameError::MessageTooLarge {
                    declared: total,
                    limit: self.limits.max_message_bytes,
                });
            }
            if self.message_frames + 1 > self.limits.max_frames {
                return Err(FrameError::TooManyFrames {
                    limit: self.limits.max_frames,
                });
            }
        }
        // Fits in usize: it is at most one of the limits above.
        Ok(Some((flags, header, declared as usize)))
    }
}

/// Writes a frame header for a body of `len` octets.
pub fn put_header(out: &mut BytesMut, flags: u8, len: usize) {
    if len > SHORT_MAX {
        out.put_u8(flags | LONG);
        out.put_u64(len as u64);
    } else {
        out.put_u8(flags & !LONG);
        out.put_u8(len as u8);
    }
}

/// The length of the header [`put_header`] writes for `len` octets.
pub fn header_len(len: usize) -> usize {
    if len > SHORT_MAX {
        9
    } else {
        2
    }
}

/// Writes a whole frame.
pub fn put_frame(out: &mut BytesMut, flags: u8, body: &[u8]) {
    out.reserve(header_len(body.len()) + body.len());
    put_header(out, flags, body.len());
    out.put_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize) -> Limits {
        Limits {
            max_message_bytes: max,
            max_frames: 3,
            max_command_bytes: 100,
        }
    }

    #[test]
    fn round_trips_short_and_long_frames() {
        let mut buf = BytesMut::new();
        put_frame(&mut buf, MORE, b"abc");
        put_frame(&mut buf, 0, &[7u8; 300]);
        put_frame(&mut buf, COMMAND, b"\x04PING");
        let mut d = FrameDecoder::new(Limits::default());
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Frame::Data {
                more: true,
                body: Bytes::from_static(b"abc")
            })
        );
        assert!(d.in_message());
        match d.decode(&mut buf).unwrap() {
            Some(Frame::Data { more: false, body }) => assert_eq!(body.len(), 300),
            other => panic!("{other:?}"),
        }
        assert!(!d.in_message());
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Frame::Command(Bytes::from_static(b"\x04PING")))
        );
        assert_eq!(d.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn refuses_a_huge_header_before_any_body() {
        let mut buf = BytesMut::new();
        buf.put_u8(LONG);
        buf.put_u64(1 << 40);
        let mut d = FrameDecoder::new(limits(1 << 20));
        assert!(matches!(
            d.decode(&mut buf),
            Err(FrameError::MessageTooLarge { .. })
        ));
        // u64::MAX does not overflow the check.
        let mut buf = BytesMut::new();
        put_frame(&mut buf, MORE, b"x");
        buf.put_u8(LONG);
        buf.put_u64(u64::MAX);
        let mut d = FrameDecoder::new(limits(1 << 20));
        d.decode(&mut buf).unwrap();
        assert!(matches!(
            d.decode(&mut buf),
            Err(FrameError::MessageTooLarge { .. })
        ));
    }

    #[test]
    fn a_size_past_the_address_space_is_refused_without_any_limit() {
        let none = Limits {
            max_message_bytes: usize::MAX,
            max_frames: usize::MAX,
            max_command_bytes: usize::MAX,
        };
        for flags in [LONG, LONG | MORE, LONG | COMMAND] {
            let mut buf = BytesMut::new();
            buf.put_u8(flags);
            buf.put_u64(u64::MAX - 1);
            let mut d = FrameDecoder::new(none);
            assert!(matches!(
                d.decode(&mut buf),
                Err(FrameError::MessageTooLarge { .. } | FrameError::CommandTooLarge { .. })
            ));
        }
    }

    #[test]
    fn counts_the_message_not_the_frame() {
        let mut buf = BytesMut::new();
        put_frame(&mut buf, MORE, &[0; 60]);
        put_frame(&mut buf, 0, &[0; 60]);
        let mut d = FrameDecoder::new(limits(100));
        d.decode(&mut buf).unwrap().unwrap();
        assert!(matches!(
            d.decode(&mut buf),
            Err(FrameError::MessageTooLarge { declared: 120, .. })
        ));
    }

    #[test]
    fn bounds_frames_commands_and_flags() {
        let mut buf = BytesMut::new();
        for _ in 0..4 {
            put_frame(&mut buf, MORE, b"");
        }
        let mut d = FrameDecoder::new(limits(100));
        for _ in 0..3 {
            d.decode(&mut buf).unwrap().unwrap();
        }
        assert!(matches!(
            d.decode(&mut buf),
            Err(FrameError::TooManyFrames { limit: 3 })
        ));

        let mut buf = BytesMut::from(&[COMMAND | LONG, 0, 0, 0, 0, 0, 0, 1, 0][..]);
        assert!(matches!(
            FrameDecoder::new(limits(100)).decode(&mut buf),
            Err(FrameError::CommandTooLarge { .. })
        ));
        let mut buf = BytesMut::from(&[0x08u8, 0][..]);
        assert_eq!(
            FrameDecoder::new(limits(100)).decode(&mut buf),
            Err(FrameError::ReservedFlags(0x08))
        );
        let mut buf = BytesMut::from(&[COMMAND | MORE, 0][..]);
        assert_eq!(
            FrameDecoder::new(limits(100)).decode(&mut buf),
            Err(FrameError::CommandMore)
        );
        let mut buf = BytesMut::new();
        put_frame(&mut buf, MORE, b"a");
        put_frame(&mut buf, COMMAND, b"\x04PING");
        let mut d = FrameDecoder::new(limits(100));
        d.decode(&mut buf).unwrap();
        assert_eq!(d.decode(&mut buf), Err(FrameError::CommandInMessage));
    }

    #[test]
    fn waits_for_partial_input_and_reports_what_it_wants() {
        let mut full = BytesMut::new();
        put_frame(&mut full, 0, &[1u8; 1000]);
        let mut d = FrameDecoder::new(Limits::default());
        let mut buf = BytesMut::new();
        for (i, b) in full.iter().enumerate() {
            buf.put_u8(*b);
            let got = d.decode(&mut buf).unwrap();
            if i + 1 < full.len() {
                assert!(got.is_none());
                if i >= 8 {
                    assert_eq!(d.wanted(&buf), full.len() - i - 1);
                }
            } else {
                assert!(matches!(got, Some(Frame::Data { more: false, .. })));
            }
        }
    }
}
