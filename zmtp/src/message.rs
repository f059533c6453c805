//! Messages: one or more frames, each a `Bytes` (cheap to clone, never copied by the socket).

use bytes::Bytes;
use smallvec::SmallVec;

/// A multipart message. Up to three frames are held inline (a request, reply or routed
/// message without allocating for the frame list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    frames: SmallVec<[Bytes; 3]>,
}

impl Message {
    /// An empty message (no frames).
    pub fn new() -> Message {
        Message::default()
    }

    /// A message of one frame.
    pub fn single(frame: impl Into<Bytes>) -> Message {
        let mut m = Message::new();
        m.push(frame);
        m
    }

    /// Appends a frame.
    pub fn push(&mut self, frame: impl Into<Bytes>) {
        self.frames.push(frame.into());
    }

    /// Puts a frame in front (a ROUTER's routing id).
    pub fn push_front(&mut self, frame: impl Into<Bytes>) {
        self.frames.insert(0, frame.into());
    }

    /// Removes and returns the first frame.
    pub fn pop_front(&mut self) -> Option<Bytes> {
        if self.frames.is_empty() {
            None
        } else {
            Some(self.frames.remove(0))
        }
    }

    /// The frames.
    pub fn frames(&self) -> &[Bytes] {
        &self.frames
    }

    /// The first frame.
    pub fn first(&self) -> Option<&Bytes> {
        self.frames.first()
    }

    /// The last frame.
    pub fn last(&self) -> Option<&Bytes> {
        self.frames.last()
    }

    /// The number of frames.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether the message has no frames.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The octets of all frames together.
    pub fn byte_len(&self) -> usize {
        self.frames.iter().map(Bytes::len).sum()
    }

    /// The frames, owned.
    pub fn into_frames(self) -> Vec<Bytes> {
        self.frames.into_vec()
    }
}

impl From<Vec<Bytes>> for Message {
    fn from(v: Vec<Bytes>) -> Message {
        Message {
            frames: SmallVec::from_vec(v),
        }
    }
}

impl From<Bytes> for Message {
    fn from(b: Bytes) -> Message {
        Message::single(b)
    }
}

impl From<Vec<u8>> for Message {
    fn from(b: Vec<u8>) -> Message {
        Message::single(b)
    }
}

impl From<&'static str> for Message {
    fn from(s: &'static str) -> Message {
        Message::single(Bytes::from_static(s.as_bytes()))
    }
}

impl FromIterator<Bytes> for Message {
    fn from_iter<I: IntoIterator<Item = Bytes>>(iter: I) -> Message {
        Message {
            frames: iter.into_iter().collect(),
        }
    }
}

impl IntoIterator for Message {
    type Item = Bytes;
    type IntoIter = smallvec::IntoIter<[Bytes; 3]>;
    fn into_iter(self) -> Self::IntoIter {
        self.frames.into_iter()
    }
}
