//! STUN (RFC 8489) as a sans-IO core.
//!
//! `message` reads and writes STUN messages in caller-owned buffers (shared with the
//! TURN core); `binding` answers Binding requests in place for the data plane.

mod binding;
pub mod message;

pub(crate) use binding::canonical;
pub use binding::{Verdict, answer};
pub use message::{Attribute, Class, Message, ParseError, WriteError, Writer};
