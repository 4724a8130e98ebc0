//! confnode: a self-hosted video-conference node (STUN/TURN server, SFU, room API).
//!
//! The protocol cores (`stun`, `turn`, `sfu`, `rooms`) are sans-IO state machines:
//! bytes and time in, bytes out. `net` is the only layer that touches sockets, `http`
//! the only one that serves HTTP; `router` decides, without I/O, which core a datagram
//! of the shared media port goes to.

// System calls the standard library and socket2 do not wrap (recvmmsg/sendmmsg with
// their control messages, a socket option, the interface list) are the only unsafe
// code: `net` allows it module by module, each block with a `// SAFETY:` line.
#![deny(unsafe_code)]
// The library is the API of the tests, benches and fuzz targets: what they may use is
// documented, everything else is `pub(crate)`.
#![warn(missing_docs, unreachable_pub)]

pub mod cluster;
pub mod config;
pub mod date;
pub mod http;
pub(crate) mod load;
pub mod logfiles;
pub mod metrics;
pub mod net;
pub mod node;
pub mod rooms;
pub mod router;
pub mod sfu;
pub mod store;
pub mod stun;
pub mod turn;
