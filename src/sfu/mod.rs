//! The SFU's sans-IO cores: no sockets, no clocks, no tasks; bytes and time in, bytes
//! out, so each is tested deterministically here and wired into the data plane
//! (`net::worker`) and the room API (`http`) by thin glue.
//!
//! - `ice`: the ICE-lite responder that answers a participant's connectivity checks on
//!   the shared media port, learns its address and watches consent.
//! - `sdp`: the publisher's offer and our answer (WHIP-like), and the server offers of a
//!   subscriber's receiving peer connection with their renegotiation.

pub mod ice;
pub mod sdp;
