//! The command line: configuration checks, hashing a password, running with no file.

mod common;

use common::{BIN, http_get, run_with_timeout, write_file};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn check_config_accepts_the_shipped_file() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
    let (status, out) = run_with_timeout(
        Command::new(BIN).args(["check-config", shipped]),
        Duration::from_secs(20),
    );
    assert!(status.success(), "{out}");
    assert!(out.contains("OK"), "{out}");
}

#[test]
fn check_config_names_every_bad_key_with_its_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_file(
        dir.path(),
        "bad.toml",
        "[turn]\nlisten = [\"127.0.0.1:3478\"]\nrelam = \"x\"\n\n[rooms]\nttl_hours = \"soon\"\n",
    );
    let (status, out) = run_with_timeout(
        Command::new(BIN).arg("check-config").arg(&path),
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("line 3: turn.relam"), "{out}");
    assert!(out.contains("line 6: rooms.ttl_hours"), "{out}");
}

#[test]
fn node_refuses_to_start_with_a_bad_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_file(
        dir.path(),
        "bad.toml",
        "[http]\nlisten = \"not an address\"\n",
    );
    let (status, out) = run_with_timeout(
        Command::new(BIN).arg("--config").arg(&path),
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("http.listen"), "{out}");
}

#[test]
fn hash_password_prints_an_argon2id_phc_string() {
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"correct horse\n")
        .expect("write");
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).expect("utf-8");
    let hash = hash.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    use argon2::PasswordVerifier;
    let parsed = argon2::PasswordHash::new(hash).expect("PHC string");
    assert!(
        argon2::Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok()
    );
    // The printed hash is accepted by the config file.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_file(
        dir.path(),
        "hosts.toml",
        &format!("[[http.hosts]]\nname = \"host\"\npassword_hash = \"{hash}\"\n"),
    );
    let (status, out) = run_with_timeout(
        Command::new(BIN).arg("check-config").arg(&path),
        Duration::from_secs(20),
    );
    assert!(status.success(), "{out}");
}

/// With no configuration file the node runs on its loopback defaults (3478, 8080).
#[test]
fn runs_with_no_file_on_loopback_defaults() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let http = "127.0.0.1:8080".parse().expect("addr");
    let mut ok = false;
    for _ in 0..300 {
        if let Some((200, body)) = http_get(http, "/api/health") {
            assert!(body.contains("\"status\":\"ok\""), "{body}");
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut answered = false;
    // A Binding request (RFC 5769 style header, no attributes).
    let req = [
        0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];
    for _ in 0..10 {
        let _ = sock.send_to(&req, "127.0.0.1:3478");
        let mut buf = [0u8; 200];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            answered = n >= 20 && buf[0] == 0x01 && buf[1] == 0x01 && buf[8..20] == req[8..20];
            break;
        }
    }
    let status = common::terminate(&mut child);
    assert!(ok, "no /api/health on 127.0.0.1:8080");
    assert!(answered, "no Binding answer on 127.0.0.1:3478");
    assert!(status.success(), "{status:?}");
}

#[test]
fn check_config_reads_the_tls_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_file(
        dir.path(),
        "tls.toml",
        "[turn]\ntls_listen = [\"127.0.0.1:5349\"]\ntls_cert = \"/nonexistent/cert.pem\"\n\
         tls_key = \"/nonexistent/key.pem\"\n",
    );
    let (status, out) = run_with_timeout(
        Command::new(BIN).arg("check-config").arg(&path),
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("turn.tls_cert"), "{out}");
}
