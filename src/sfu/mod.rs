//! The SFU's sans-IO cores: no sockets, no clocks, no tasks; bytes and time in, bytes
//! out, so each is tested deterministically here and wired into the data plane
//! (`net::worker`) and the room API (`http`) by thin glue.
//!
//! - `ice`: the ICE-lite responder that answers a participant's connectivity checks on
//!   the shared media port, learns its address and watches consent.
//! - `session`: the registry of media sessions that the room API fills and the
//!   data-plane workers read (by our ICE ufrag), with each worker's cache of it.
//! - `sdp`: the publisher's offer and our answer (WHIP-like), and the server offers of a
//!   subscriber's receiving peer connection with their renegotiation.
//! - `rtp`, `rtcp`, `codec`: RTP/RTCP headers and VP8/H264 payloads read and rewritten
//!   in place; `track` (a published track: layers, cache, NACKs, keyframe throttle),
//!   `forward` (one receiver's continuous stream of it), `simulcast` (layer choice),
//!   `nack` and `report`: the forwarding path, allocation-free per packet.
//! - `twcc`: transport-wide congestion control feedback (arrival times of a publisher's
//!   packets, reported so its bandwidth estimator ramps up).
//! - `bwe`: each receiver's downlink estimate: the transport-wide numbers we send it
//!   under, its transport-cc feedback read back, and a GoogCC-style estimator.
//! - `egress`: a forwarded stream's way to its receiver (the receiver's keys and
//!   address) without the receiver's lock.
//! - `feedback`: the RTCP around it: receivers' keyframe requests and NACKs answered,
//!   reports both ways, transport-cc feedback to publishers.

pub mod allocate;
pub mod bwe;
pub mod codec;
pub mod dtls;
pub(crate) mod egress;
pub(crate) mod feedback;
pub mod forward;
pub mod ice;
pub mod nack;
pub(crate) mod report;
pub mod rtcp;
pub mod rtp;
pub mod sdp;
pub mod session;
pub mod simulcast;
pub(crate) mod speaker;
pub mod srtp;
pub mod track;
pub mod twcc;
