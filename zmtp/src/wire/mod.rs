//! Bytes on the wire, with no I/O: the greeting, frames and commands. Every parser here takes
//! untrusted input and returns an error, never panics; the fuzz targets drive them directly.

pub mod command;
pub mod frame;
pub mod greeting;

pub use command::{Command, CommandError, Metadata};
pub use frame::{Frame, FrameDecoder, FrameError, Limits};
pub use greeting::{Greeting, GreetingError, GREETING_LEN};
