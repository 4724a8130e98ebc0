//! TURN (RFC 8656) as sans-IO cores: authentication, the peer policy, allocations.

pub mod auth;
pub mod policy;
pub mod server;
pub mod stream;
