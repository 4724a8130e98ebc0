//! A TURN client over UDP written with the project's own STUN writer: requests signed
//! with long-term credentials, retransmitted as a client does, their answers checked.
//! Shared by the tests that speak TURN by hand (`turn_negative`, `soak`).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use confnode::stun::message::{Class, Message, WriteError, Writer, attr, long_term_key, method};

use super::unix_now;

pub const REALM: &str = "confnode";
/// REQUESTED-TRANSPORT's protocol number for UDP.
pub const UDP: u8 = 17;

/// A fresh 96-bit transaction id.
pub fn tid() -> [u8; 12] {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    let mut t = [0u8; 12];
    t[..8].copy_from_slice(&n.to_be_bytes());
    t[8..].copy_from_slice(&(nanos ^ std::process::id()).to_be_bytes());
    t
}

/// Long-term credentials and the nonce a request is signed with.
#[derive(Clone)]
pub struct Creds {
    pub user: String,
    pub key: [u8; 16],
    pub nonce: Vec<u8>,
}

impl Creds {
    pub fn new(user: &str, password: &str, nonce: &[u8]) -> Creds {
        Creds {
            user: user.to_owned(),
            key: long_term_key(user.as_bytes(), REALM.as_bytes(), password.as_bytes()),
            nonce: nonce.to_vec(),
        }
    }

    pub fn with_nonce(&self, nonce: &[u8]) -> Creds {
        Creds {
            nonce: nonce.to_vec(),
            ..self.clone()
        }
    }
}

/// A response as received.
pub struct Reply {
    pub raw: Vec<u8>,
}

impl Reply {
    pub fn msg(&self) -> Message<'_> {
        Message::parse(&self.raw).expect("a well-formed STUN response")
    }

    pub fn class(&self) -> Class {
        self.msg().class()
    }

    /// ERROR-CODE as a number (class * 100 + number), if present.
    pub fn error_code(&self) -> Option<u16> {
        let v = self.msg().get(attr::ERROR_CODE)?;
        Some(u16::from(v[2] & 0x07) * 100 + u16::from(v[3]))
    }

    pub fn get(&self, typ: u16) -> Option<Vec<u8>> {
        self.msg().get(typ).map(<[u8]>::to_vec)
    }

    pub fn xor(&self, typ: u16) -> Option<SocketAddr> {
        self.msg().xor_address(typ).map(|r| r.expect("decodes"))
    }

    /// Asserts an error response with `code`, and returns it for more checks.
    pub fn expect_error(self, code: u16, what: &str) -> Reply {
        assert_eq!(
            (self.class(), self.error_code()),
            (Class::Error, Some(code)),
            "{what}: expected error {code}"
        );
        self
    }

    /// Asserts MESSAGE-INTEGRITY is present and verifies under `key`.
    pub fn expect_integrity(self, key: &[u8; 16], what: &str) -> Reply {
        assert_eq!(
            self.msg().verify_integrity(key),
            Some(true),
            "{what}: MESSAGE-INTEGRITY missing or wrong"
        );
        self
    }

    /// Asserts a challenge: REALM is ours and NONCE has the node's format (32 lowercase
    /// hex characters, the first 8 the issue time). Returns the nonce.
    pub fn expect_challenge(&self, what: &str) -> Vec<u8> {
        assert_eq!(
            self.get(attr::REALM).as_deref(),
            Some(REALM.as_bytes()),
            "{what}: REALM"
        );
        let nonce = self.get(attr::NONCE).expect("NONCE in a challenge");
        assert_eq!(nonce.len(), 32, "{what}: nonce length");
        assert!(
            nonce
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c)),
            "{what}: nonce {nonce:?}"
        );
        let issued = u64::from_str_radix(std::str::from_utf8(&nonce[..8]).expect("hex"), 16)
            .expect("issue time");
        assert!(issued.abs_diff(unix_now()) < 60, "{what}: nonce issue time");
        assert!(
            self.msg().integrity_offset().is_none(),
            "{what}: a challenge cannot carry MESSAGE-INTEGRITY"
        );
        nonce
    }
}

pub type Attrs<'a> = &'a dyn Fn(&mut Writer<'_>) -> Result<(), WriteError>;

pub fn transport(proto: u8) -> impl Fn(&mut Writer<'_>) -> Result<(), WriteError> {
    move |w| w.add_u32(attr::REQUESTED_TRANSPORT, u32::from(proto) << 24)
}

pub fn no_attrs(_: &mut Writer<'_>) -> Result<(), WriteError> {
    Ok(())
}

/// One TURN client: a UDP socket talking to the node.
pub struct Client {
    pub sock: UdpSocket,
    pub server: SocketAddr,
}

impl Client {
    pub fn new(server: SocketAddr) -> Client {
        let local = if server.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        };
        Client::bind(local, server)
    }

    pub fn bind(local: &str, server: SocketAddr) -> Client {
        let sock = UdpSocket::bind(local).expect("bind client socket");
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        Client { sock, server }
    }

    /// Writes a request: `attrs`, then (with `creds`) USERNAME, REALM, NONCE and
    /// MESSAGE-INTEGRITY, then FINGERPRINT.
    pub fn build(m: u16, id: &[u8; 12], attrs: Attrs<'_>, creds: Option<&Creds>) -> Vec<u8> {
        let mut buf = [0u8; 1500];
        let mut w = Writer::new(&mut buf, m, Class::Request, id).expect("writer");
        attrs(&mut w).expect("attributes");
        if let Some(c) = creds {
            w.add(attr::USERNAME, c.user.as_bytes()).expect("USERNAME");
            w.add(attr::REALM, REALM.as_bytes()).expect("REALM");
            w.add(attr::NONCE, &c.nonce).expect("NONCE");
            w.add_integrity(&c.key).expect("MESSAGE-INTEGRITY");
        }
        w.add_fingerprint().expect("FINGERPRINT");
        let n = w.finish();
        buf[..n].to_vec()
    }

    /// Sends `raw` and waits for the response to transaction `id`, retransmitting as a
    /// STUN client over UDP does; `None` if nothing came back in about 3 s.
    pub fn exchange(&self, raw: &[u8], id: &[u8; 12]) -> Option<Reply> {
        let mut buf = [0u8; 1500];
        for _ in 0..10 {
            self.sock.send_to(raw, self.server).expect("send");
            let until = Instant::now() + Duration::from_millis(300);
            while Instant::now() < until {
                let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                    break;
                };
                if n >= 20 && buf[8..20] == id[..] {
                    return Some(Reply {
                        raw: buf[..n].to_vec(),
                    });
                }
            }
        }
        None
    }

    pub fn request(&self, m: u16, attrs: Attrs<'_>, creds: Option<&Creds>) -> Reply {
        let id = tid();
        let raw = Client::build(m, &id, attrs, creds);
        self.exchange(&raw, &id)
            .unwrap_or_else(|| panic!("no answer to method {m:#x} from {}", self.server))
    }

    /// An unauthenticated Allocate: the 401 challenge's nonce.
    pub fn nonce(&self) -> Vec<u8> {
        self.request(method::ALLOCATE, &transport(UDP), None)
            .expect_error(401, "unauthenticated Allocate")
            .expect_challenge("unauthenticated Allocate")
    }

    pub fn allocate_with(&self, attrs: Attrs<'_>, creds: &Creds) -> Reply {
        self.request(method::ALLOCATE, attrs, Some(creds))
    }

    /// A successful Allocate (integrity checked); returns the relayed address.
    pub fn allocate(&self, creds: &Creds) -> SocketAddr {
        let r = self.allocate_with(&transport(UDP), creds);
        assert_eq!(
            r.class(),
            Class::Success,
            "Allocate failed with {:?}",
            r.error_code()
        );
        let r = r.expect_integrity(&creds.key, "Allocate success");
        r.xor(attr::XOR_RELAYED_ADDRESS)
            .expect("XOR-RELAYED-ADDRESS")
    }

    pub fn create_permission(&self, peers: &[SocketAddr], creds: &Creds) -> Reply {
        let add = |w: &mut Writer<'_>| {
            for p in peers {
                w.add_xor_address(attr::XOR_PEER_ADDRESS, *p)?;
            }
            Ok(())
        };
        self.request(method::CREATE_PERMISSION, &add, Some(creds))
    }

    /// ChannelBind of `channel` to `peer`; the answer.
    pub fn bind_channel(&self, channel: u16, peer: SocketAddr, creds: &Creds) -> Reply {
        let bind = |w: &mut Writer<'_>| {
            w.add_u32(attr::CHANNEL_NUMBER, u32::from(channel) << 16)?;
            w.add_xor_address(attr::XOR_PEER_ADDRESS, peer)
        };
        self.request(method::CHANNEL_BIND, &bind, Some(creds))
    }

    pub fn delete(&self, creds: &Creds) {
        let r = self.request(
            method::REFRESH,
            &|w: &mut Writer<'_>| w.add_u32(attr::LIFETIME, 0),
            Some(creds),
        );
        assert_eq!(r.class(), Class::Success, "Refresh 0: {:?}", r.error_code());
        r.expect_integrity(&creds.key, "Refresh success");
    }
}
