//! Issue 13: SIGHUP reads the configuration file again. TURN users and REST secrets, peer
//! lists, TURN limits, host accounts and the JWT secret change without a restart; a
//! file with errors changes nothing; allocations and rooms made before go on.
//! (The TLS certificate's reload is tested in turn_tcp_tls.rs.)

mod common;

use std::time::{Duration, Instant};

use common::{Node, NodeOutput, basic_auth, cheap_hash, http, turn_allocate};

/// `POST /api/rooms` as `user`: the status.
fn create_room(node: &Node, user: &str, password: &str) -> u16 {
    let auth = basic_auth(user, password);
    http(
        node.http,
        "POST",
        "/api/rooms",
        &[("Authorization", &auth)],
        b"",
    )
    .status
}

/// The `[turn]` keys (besides `listen`) and the `[http]` host account of one version of
/// the file.
fn settings(turn_password: &str, host: &str, host_password: &str) -> (String, String) {
    (
        format!("users = {{ alice = \"{turn_password}\" }}\nmax_allocations_per_user = 5\n"),
        format!(
            "[[http.hosts]]\nname = \"{host}\"\npassword_hash = \"{}\"\n",
            cheap_hash(host_password)
        ),
    )
}

/// Rewrites the node's configuration file with `turn` and `http` in place of the keys
/// it was started with, keeping the rest of the file.
fn rewrite(node: &Node, started: &(String, String), new: &(String, String)) {
    let path = node.dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path).expect("read config");
    let text = text.replace(&started.0, &new.0).replace(&started.1, &new.1);
    std::fs::write(&path, text).expect("write config");
}

/// Waits (up to 10 s) for a log line with `needle` that was not there before.
fn wait_for_new_line(log: &NodeOutput, needle: &str, before: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = log.text();
        if let Some(line) = text.lines().filter(|l| l.contains(needle)).nth(before) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no new line with {needle:?} within 10 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn count(log: &NodeOutput, needle: &str) -> usize {
    log.text().lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn sighup_reloads_credentials_and_host_accounts_and_keeps_the_old_on_errors() {
    let first = settings("first-password", "carol", "carol's password");
    let (node, log) = Node::start_with_http(&first.0, &first.1, "");
    let turn = node.stun;

    // Before: the first TURN password and the first host.
    assert!(turn_allocate(turn, "alice", "first-password"));
    assert_eq!(create_room(&node, "carol", "carol's password"), 201);
    let allocations = node.metric("confnode_turn_allocations");
    assert_eq!(allocations, 1.0);

    // A new TURN password and another host account, then SIGHUP.
    let second = settings("second-password", "dave", "dave's password");
    rewrite(&node, &first, &second);
    let reloaded = count(&log, "configuration reloaded");
    node.signal(libc::SIGHUP);
    wait_for_new_line(&log, "configuration reloaded", reloaded);
    assert!(turn_allocate(turn, "alice", "second-password"));
    assert!(
        !turn_allocate(turn, "alice", "first-password"),
        "the old TURN password still allocates"
    );
    assert_eq!(create_room(&node, "dave", "dave's password"), 201);
    assert_eq!(
        create_room(&node, "carol", "carol's password"),
        401,
        "a removed host account still creates rooms"
    );
    // The allocation made before the reload is still held.
    assert_eq!(node.metric("confnode_turn_allocations"), 2.0);

    // A broken file: its errors are logged with the key, and nothing changes.
    let path = node.dir.path().join("config.toml");
    let good = std::fs::read_to_string(&path).expect("read config");
    std::fs::write(
        &path,
        good.replace(
            "max_allocations_per_user = 5",
            "max_allocations_per_user = \"many\"",
        ),
    )
    .expect("break config");
    let refused = count(&log, "configuration not reloaded");
    node.signal(libc::SIGHUP);
    wait_for_new_line(&log, "configuration not reloaded", refused);
    assert!(
        log.text().contains("max_allocations_per_user"),
        "the error does not name the key:\n{}",
        log.text()
    );
    assert!(turn_allocate(turn, "alice", "second-password"));
    assert_eq!(create_room(&node, "dave", "dave's password"), 201);
    assert_eq!(node.metric("confnode_turn_allocations"), 3.0);
}

#[test]
fn sighup_applies_new_turn_limits_to_new_allocations() {
    let (node, log) = Node::start_with_http("users = { bob = \"pw\" }\n", "", "");
    let turn = node.stun;
    assert!(turn_allocate(turn, "bob", "pw"));
    assert!(turn_allocate(turn, "bob", "pw"));
    // One allocation per user from now on: bob holds two, so a third is refused;
    // the two he holds stay.
    let path = node.dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path).expect("read config");
    let text = text.replace(
        "users = { bob = \"pw\" }\n",
        "users = { bob = \"pw\" }\nmax_allocations_per_user = 1\n",
    );
    std::fs::write(&path, text).expect("write config");
    let reloaded = count(&log, "configuration reloaded");
    node.signal(libc::SIGHUP);
    wait_for_new_line(&log, "configuration reloaded", reloaded);
    assert!(
        !turn_allocate(turn, "bob", "pw"),
        "a third allocation past the new per-user limit"
    );
    assert_eq!(node.metric("confnode_turn_allocations"), 2.0);
}
