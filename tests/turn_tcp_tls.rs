//! TURN and STUN over TCP and TLS against the real binary: coturn's `turnutils_uclient`
//! relays through confnode without loss over TCP and TLS (with channels, and with
//! Send/Data indications); an allocation ends with its connection; SIGHUP swaps the
//! TLS certificate for new handshakes while connections and allocations made before
//! stay; a bad certificate or key fails the start naming its configuration key; TCP
//! and TLS connections share one connection limit; a silent TLS client is dropped.
//!
//! Certificates are self-signed ones made by the `openssl` command line.

mod common;

use common::{Node, Peer, free_port, number_after, require_tool, run_with_timeout};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stun::agent::TransactionId;
use stun::error_code::ErrorCodeAttribute;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    BINDING_REQUEST, BINDING_SUCCESS, CLASS_ERROR_RESPONSE, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE,
    Getter, METHOD_ALLOCATE, METHOD_REFRESH, Message, MessageType, Method, Setter,
};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use tokio_rustls::rustls;

const USER: &str = "user";
const PASS: &str = "pass";
const ALLOCATIONS: &str = "confnode_turn_allocations";
/// Clients (`-m`) and messages per client (`-n`) of one uclient run.
const CLIENTS: u64 = 5;
const MESSAGES: u64 = 50;

/// A self-signed certificate and its key, made by `openssl` as `NAME.crt`/`NAME.key`.
fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    require_tool("openssl", "openssl");
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={name}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null());
    let (status, out) = run_with_timeout(&mut cmd, Duration::from_secs(30));
    assert!(status.success(), "openssl req failed ({status}):\n{out}");
    (cert, key)
}

/// A node with a long-term user, loopback peers allowed and TLS on its own port with
/// the certificate at `cert`/`key`. Returns the node and its TLS address.
fn start_node(cert: &Path, key: &Path) -> (Node, SocketAddr) {
    start_node_with(cert, key, "")
}

/// `start_node` with more `[turn]` keys.
fn start_node_with(cert: &Path, key: &Path, more: &str) -> (Node, SocketAddr) {
    let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let turn = format!(
        "users = {{ {USER} = \"{PASS}\" }}\n\
         allow_loopback_peers = true\n\
         tls_listen = [\"{tls}\"]\n\
         tls_cert = \"{}\"\n\
         tls_key = \"{}\"\n{more}",
        cert.display(),
        key.display()
    );
    (Node::start_with_turn(&turn, ""), tls)
}

/// Runs `turnutils_uclient -t` (plus `args`) against `port` of the node and checks what
/// its user checks: success, `Total lost packets 0`, everything sent came back; and on
/// `/metrics`, that the messages came over `transport` and the allocations are gone
/// once uclient has closed its connections.
fn uclient(node: &Node, peer: &Peer, port: u16, transport: &str, args: &[&str]) {
    require_tool("turnutils_uclient", "coturn");
    let received = format!("confnode_received_total{{transport=\"{transport}\"}}");
    let before = node.metric(&received);
    let mut cmd = Command::new("turnutils_uclient");
    cmd.arg("-t")
        .args(args)
        .args(["-e", "127.0.0.1", "-r", &peer.port.to_string()])
        .args(["-u", USER, "-w", PASS, "-p", &port.to_string()])
        .args(["-n", &MESSAGES.to_string(), "-m", &CLIENTS.to_string()])
        .arg("127.0.0.1")
        .stdin(Stdio::null());
    let what = format!("turnutils_uclient -t {}", args.join(" "));
    let (status, out) = run_with_timeout(&mut cmd, Duration::from_secs(90));
    assert!(status.success(), "{what} failed ({status}):\n{out}");
    let lost = out
        .lines()
        .find_map(|l| number_after(l, "Total lost packets "))
        .unwrap_or_else(|| panic!("{what}: no `Total lost packets` in its output:\n{out}"));
    assert_eq!(lost, 0, "{what}: lost packets:\n{out}");
    // The closing totals line (the per-second progress lines carry `msz=`).
    let summary = out
        .lines()
        .rfind(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))
        .unwrap_or_else(|| panic!("{what}: no totals in its output:\n{out}"));
    let sent = number_after(summary, "tot_send_msgs=").expect("tot_send_msgs");
    let got = number_after(summary, "tot_recv_msgs=").expect("tot_recv_msgs");
    assert!(
        sent >= CLIENTS * MESSAGES,
        "{what}: sent only {sent}:\n{out}"
    );
    assert_eq!(got, sent, "{what}: received {got} of {sent}:\n{out}");
    let after = node.metric(&received);
    assert!(
        after - before >= (CLIENTS * MESSAGES) as f64,
        "{what}: only {} messages counted over {transport}",
        after - before
    );
    let left = node.wait_metric(ALLOCATIONS, Duration::from_secs(10), |v| v == 0.0);
    assert_eq!(
        left, 0.0,
        "{what}: allocations left after its connections closed"
    );
}

#[test]
fn turnutils_uclient_over_tcp_relays_without_loss() {
    let certs = tempfile::tempdir().expect("temp dir");
    let (cert, key) = make_cert(certs.path(), "a");
    let (node, _) = start_node(&cert, &key);
    let peer = Peer::start(&["127.0.0.1"]);
    let port = node.stun.port();
    uclient(&node, &peer, port, "tcp", &["-l", "120"]);
    // An odd length makes every ChannelData to the client carry padding.
    uclient(&node, &peer, port, "tcp", &["-l", "121"]);
}

#[test]
fn turnutils_uclient_over_tcp_with_send_and_data_indications_relays_without_loss() {
    let certs = tempfile::tempdir().expect("temp dir");
    let (cert, key) = make_cert(certs.path(), "a");
    let (node, _) = start_node(&cert, &key);
    let peer = Peer::start(&["127.0.0.1"]);
    let port = node.stun.port();
    uclient(&node, &peer, port, "tcp", &["-c", "-l", "120"]);
    uclient(&node, &peer, port, "tcp", &["-c", "-l", "123"]);
}

#[test]
fn turnutils_uclient_over_tls_relays_without_loss() {
    let certs = tempfile::tempdir().expect("temp dir");
    let (cert, key) = make_cert(certs.path(), "a");
    let (node, tls) = start_node(&cert, &key);
    let peer = Peer::start(&["127.0.0.1"]);
    uclient(&node, &peer, tls.port(), "tls", &["-S", "-l", "120"]);
    uclient(&node, &peer, tls.port(), "tls", &["-S", "-c", "-l", "121"]);
}

/// Accepts any server certificate: the tests compare the certificate itself.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection of the given protocol version; returns it and the DER of the
/// certificate the server showed.
fn tls_connect(
    addr: SocketAddr,
    version: &'static rustls::SupportedProtocolVersion,
) -> (TlsStream, Vec<u8>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("TLS client");
    let tcp = TcpStream::connect(addr).expect("connect to the TLS port");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .expect("TLS handshake with confnode");
    }
    assert_eq!(tls.conn.protocol_version(), Some(version.version));
    let cert = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a server certificate")
        .to_vec();
    (tls, cert)
}

/// The DER of the (first) certificate in a PEM file.
fn cert_der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(path)
        .expect("read PEM certificate")
        .to_vec()
}

/// Sends `msg` and reads the STUN message that answers it (skipping ChannelData).
fn exchange(stream: &mut impl ReadWrite, msg: &Message) -> Message {
    stream.write_all(&msg.raw).expect("send");
    stream.flush().expect("flush");
    loop {
        let mut head = [0u8; 4];
        stream.read_exact(&mut head).expect("answer header");
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        if head[0] >= 0x40 {
            let mut skip = vec![0u8; len.div_ceil(4) * 4];
            stream.read_exact(&mut skip).expect("ChannelData");
            continue;
        }
        let mut raw = head.to_vec();
        raw.resize(20 + len, 0);
        stream.read_exact(&mut raw[4..]).expect("answer body");
        let mut answer = Message::new();
        answer.raw = raw;
        answer.decode().expect("a well-formed STUN answer");
        if answer.transaction_id == msg.transaction_id {
            return answer;
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A Binding over `stream` answers with the client's own address.
fn binding(stream: &mut impl ReadWrite, local: SocketAddr) {
    let mut req = Message::new();
    req.build(&[
        Box::new(TransactionId::new()),
        Box::new(BINDING_REQUEST),
        Box::new(FINGERPRINT),
    ])
    .expect("build Binding");
    let answer = exchange(stream, &req);
    assert_eq!(answer.typ, BINDING_SUCCESS);
    let mut xor = XorMappedAddress::default();
    xor.get_from(&answer).expect("XOR-MAPPED-ADDRESS");
    assert_eq!(SocketAddr::new(xor.ip, xor.port), local);
}

/// REALM and NONCE from the server's 401.
struct Session {
    realm: String,
    nonce: String,
}

fn turn_request(method: Method, attrs: Vec<Box<dyn Setter>>, session: Option<&Session>) -> Message {
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(method, CLASS_REQUEST)),
    ];
    setters.extend(attrs);
    if let Some(s) = session {
        use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
        setters.push(Box::new(TextAttribute::new(ATTR_USERNAME, USER.into())));
        setters.push(Box::new(TextAttribute::new(ATTR_REALM, s.realm.clone())));
        setters.push(Box::new(TextAttribute::new(ATTR_NONCE, s.nonce.clone())));
        setters.push(Box::new(MessageIntegrity::new_long_term_integrity(
            USER.into(),
            s.realm.clone(),
            PASS.into(),
        )));
    }
    setters.push(Box::new(FINGERPRINT));
    let mut m = Message::new();
    m.build(&setters).expect("build TURN request");
    m
}

fn error_code(m: &Message) -> u16 {
    let mut e = ErrorCodeAttribute::default();
    e.get_from(m).expect("ERROR-CODE");
    e.code.0
}

/// Allocates over `stream` with the long-term user (401 first, then authenticated).
fn allocate(stream: &mut impl ReadWrite) -> Session {
    use stun::attributes::{ATTR_NONCE, ATTR_REALM};
    let transport = || -> Vec<Box<dyn Setter>> {
        vec![Box::new(turn::proto::reqtrans::RequestedTransport {
            protocol: turn::proto::PROTO_UDP,
        })]
    };
    let challenge = exchange(stream, &turn_request(METHOD_ALLOCATE, transport(), None));
    assert_eq!(
        challenge.typ,
        MessageType::new(METHOD_ALLOCATE, CLASS_ERROR_RESPONSE)
    );
    assert_eq!(error_code(&challenge), 401);
    let session = Session {
        realm: TextAttribute::get_from_as(&challenge, ATTR_REALM)
            .expect("REALM")
            .text,
        nonce: TextAttribute::get_from_as(&challenge, ATTR_NONCE)
            .expect("NONCE")
            .text,
    };
    let answer = exchange(
        stream,
        &turn_request(METHOD_ALLOCATE, transport(), Some(&session)),
    );
    assert_eq!(
        answer.typ,
        MessageType::new(METHOD_ALLOCATE, CLASS_SUCCESS_RESPONSE),
        "Allocate refused: {}",
        error_code(&answer)
    );
    session
}

/// A Refresh of the allocation on `stream` succeeds.
fn refresh(stream: &mut impl ReadWrite, session: &Session) {
    let lifetime: Vec<Box<dyn Setter>> = vec![Box::new(turn::proto::lifetime::Lifetime(
        Duration::from_secs(600),
    ))];
    let answer = exchange(
        stream,
        &turn_request(METHOD_REFRESH, lifetime, Some(session)),
    );
    assert_eq!(
        answer.typ,
        MessageType::new(METHOD_REFRESH, CLASS_SUCCESS_RESPONSE),
        "Refresh refused: {}",
        error_code(&answer)
    );
}

/// Connects over TLS 1.3 until the server shows `want` (the reload follows the signal
/// asynchronously), for up to 10 s; returns the connection.
fn wait_for_cert(addr: SocketAddr, want: &[u8]) -> TlsStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (tls, cert) = tls_connect(addr, &rustls::version::TLS13);
        if cert == want {
            return tls;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within 10 s of SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_reloads_the_tls_certificate_and_keeps_connections_and_allocations() {
    let certs = tempfile::tempdir().expect("temp dir");
    let (cert, key) = make_cert(certs.path(), "a");
    let (b_cert, b_key) = make_cert(certs.path(), "b");
    let cert_a = cert_der(&cert);
    let cert_b = cert_der(&b_cert);
    let (node, tls) = start_node(&cert, &key);

    // Before: certificate A, over TLS 1.2; STUN Binding and an allocation over it.
    let (mut old, seen) = tls_connect(tls, &rustls::version::TLS12);
    assert!(seen == cert_a, "the server did not show certificate A");
    let old_local = old.sock.local_addr().expect("addr");
    binding(&mut old, old_local);
    let session = allocate(&mut old);
    assert_eq!(node.metric(ALLOCATIONS), 1.0);

    // Certificate B in place of A, then SIGHUP: new handshakes show B.
    std::fs::copy(&b_key, &key).expect("replace key");
    std::fs::copy(&b_cert, &cert).expect("replace certificate");
    node.signal(libc::SIGHUP);
    let mut new = wait_for_cert(tls, &cert_b);
    let new_local = new.sock.local_addr().expect("addr");
    binding(&mut new, new_local);

    // The connection made before still works, and so does its allocation.
    binding(&mut old, old_local);
    refresh(&mut old, &session);
    assert_eq!(node.metric(ALLOCATIONS), 1.0);

    // A reload that fails keeps what is served.
    std::fs::write(&cert, "not a certificate\n").expect("break certificate");
    node.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    let (_, seen) = tls_connect(tls, &rustls::version::TLS13);
    assert!(seen == cert_b, "a failed reload changed the certificate");
    binding(&mut old, old_local);

    // The allocation ends with its connection.
    drop(old);
    let left = node.wait_metric(ALLOCATIONS, Duration::from_secs(10), |v| v == 0.0);
    assert_eq!(left, 0.0, "the allocation outlived its TLS connection");
}

#[test]
fn tcp_allocation_ends_with_its_connection() {
    let certs = tempfile::tempdir().expect("temp dir");
    let (cert, key) = make_cert(certs.path(), "a");
    let (node, _) = start_node(&cert, &key);
    let mut tcp = TcpStream::connect(node.stun).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let local = tcp.local_addr().expect("addr");
    binding(&mut tcp, local);
    let session = allocate(&mut tcp);
    refresh(&mut tcp, &session);
    assert_eq!(node.metric(ALLOCATIONS), 1.0);
    assert_eq!(node.metric("confnode_tcp_connections"), 1.0);
    drop(tcp);
    let left = node.wait_metric(ALLOCATIONS, Duration::from_secs(10), |v| v == 0.0);
    assert_eq!(left, 0.0, "the allocation outlived its TCP connection");
    let open = node.wait_metric("confnode_tcp_connections", Duration::from_secs(10), |v| {
        v == 0.0
    });
    assert_eq!(open, 0.0);
}

/// Starts the binary with `turn` keys and returns its exit status and output.
fn start_failing(turn: &str) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (port, http, tls) = (free_port(), free_port(), free_port());
    let config = format!(
        "[turn]\nlisten = [\"127.0.0.1:{port}\"]\ntls_listen = [\"127.0.0.1:{tls}\"]\n{turn}\n\
         [http]\nlisten = \"127.0.0.1:{http}\"\n\
         [store]\npath = \"{}\"\n",
        dir.path().join("data").display()
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).expect("write config");
    let mut cmd = Command::new(common::BIN);
    cmd.arg("--config")
        .arg(&path)
        .current_dir(dir.path())
        .stdin(Stdio::null());
    run_with_timeout(&mut cmd, Duration::from_secs(20))
}

#[test]
fn a_missing_or_bad_tls_certificate_or_key_fails_the_start_naming_the_key() {
    let certs = tempfile::tempdir().expect("temp dir");
    let (cert, key) = make_cert(certs.path(), "a");
    let (_, other_key) = make_cert(certs.path(), "b");
    let missing = certs.path().join("missing.pem");
    let cases = [
        (missing.clone(), key.clone(), "turn.tls_cert: cannot read"),
        (cert.clone(), missing.clone(), "turn.tls_key: cannot read"),
        // A certificate where the key should be: no private key in it.
        (cert.clone(), cert.clone(), "turn.tls_key"),
        (key.clone(), key.clone(), "turn.tls_cert"),
        // A key that is not the certificate's.
        (cert.clone(), other_key.clone(), "turn.tls_key"),
    ];
    for (c, k, expected) in cases {
        let turn = format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            c.display(),
            k.display()
        );
        let (status, out) = start_failing(&turn);
        assert_eq!(
            status.code(),
            Some(1),
            "cert {c:?}, key {k:?}: expected a start-up failure:\n{out}"
        );
        assert!(
            out.contains(expected),
            "cert {c:?}, key {k:?}: no `{expected}` in:\n{out}"
        );
    }
}

/// Whether the server closes `stream` (EOF or reset) within `limit`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).expect("timeout");
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn the_connection_limit_holds_tcp_and_tls_together() {
    let certs = tempfile::tempdir().expect("temp dir");
    let (cert, key) = make_cert(certs.path(), "a");
    let (node, tls) = start_node_with(&cert, &key, "max_tcp_connections = 2\n");
    let mut tcp = TcpStream::connect(node.stun).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let local = tcp.local_addr().expect("addr");
    binding(&mut tcp, local);
    let (mut tls_conn, _) = tls_connect(tls, &rustls::version::TLS13);
    let tls_local = tls_conn.sock.local_addr().expect("addr");
    binding(&mut tls_conn, tls_local);

    // A third connection, over either transport, is closed at once.
    for addr in [node.stun, tls] {
        let mut over = TcpStream::connect(addr).expect("connect");
        assert!(
            closed_within(&mut over, Duration::from_secs(5)),
            "a connection over the limit to {addr} stayed open"
        );
    }
    assert_eq!(node.metric("confnode_tcp_refused_total"), 2.0);

    // One goes, and another may come.
    drop(tcp);
    node.wait_metric("confnode_tcp_connections", Duration::from_secs(10), |v| {
        v == 1.0
    });
    let mut again = TcpStream::connect(node.stun).expect("connect");
    again
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let local = again.local_addr().expect("addr");
    binding(&mut again, local);
    binding(&mut tls_conn, tls_local);
}

#[test]
fn a_tls_handshake_that_never_comes_is_dropped() {
    let certs = tempfile::tempdir().expect("temp dir");
    let (cert, key) = make_cert(certs.path(), "a");
    let (_node, tls) = start_node(&cert, &key);
    let started = Instant::now();
    let mut silent = TcpStream::connect(tls).expect("connect");
    assert!(
        closed_within(&mut silent, Duration::from_secs(30)),
        "a connection without a handshake was kept for 30 s"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(8),
        "closed after {waited:?}, before the handshake timeout"
    );
}
