//! Issue 13: the OpenAPI 3 document of the room API (`src/http/openapi.json`, served at
//! `GET /api/openapi.json`) matches what the server does: schemathesis (PyPI; installed by
//! tests/run.sh into `target/schemathesis`) fuzzes every operation of a live node and
//! finds no server error, no undocumented status, content type or header, and no body
//! that breaks the schema.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Node, cheap_hash, http_get, run_with_timeout};
use serde_json::Value;

const HOST: &str = "olga";
const PASSWORD: &str = "a password for the schema run";
/// The whole schemathesis run; it ends well within (about a minute here).
const LIMIT: Duration = Duration::from_secs(600);

/// schemathesis: `SCHEMATHESIS`, else the one tests/run.sh installs, else on PATH.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let venv =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/schemathesis/bin/schemathesis");
    if venv.is_file() {
        return venv;
    }
    let found = Command::new("schemathesis").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "schemathesis is missing: run tests/run.sh (it installs the version it pins into \
         target/schemathesis), or `pip install schemathesis`, or set SCHEMATHESIS"
    );
    PathBuf::from("schemathesis")
}

#[test]
fn the_served_document_names_every_route_of_the_api() {
    let http = format!(
        "[[http.hosts]]\nname = \"{HOST}\"\npassword_hash = \"{}\"\n",
        cheap_hash(PASSWORD)
    );
    let (node, _log) = Node::start_with_http("", &http, "");
    let (status, body) = http_get(node.http, "/api/openapi.json").expect("GET openapi.json");
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&body).expect("the document is JSON");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let mut paths: Vec<&str> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort_unstable();
    let p = "/api/rooms/{room}/participants/{participant}";
    let mut expected = vec![
        "/api/health".to_owned(),
        "/api/openapi.json".to_owned(),
        "/api/rooms".to_owned(),
        "/api/rooms/{room}".to_owned(),
        "/api/rooms/{room}/participants".to_owned(),
        p.to_owned(),
        format!("{p}/chat"),
        format!("{p}/events"),
        format!("{p}/hand"),
        format!("{p}/preferences"),
        format!("{p}/publish"),
        format!("{p}/subscribe"),
        "/metrics".to_owned(),
    ];
    expected.sort_unstable();
    assert_eq!(paths, expected);
}

#[test]
fn schemathesis_finds_the_api_as_documented() {
    let tool = schemathesis();
    let http = format!(
        "[[http.hosts]]\nname = \"{HOST}\"\npassword_hash = \"{}\"\n",
        cheap_hash(PASSWORD)
    );
    let (node, log) = Node::start_with_http("", &http, "");
    let reports = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(&tool);
    cmd.arg("run")
        .arg(format!("http://{}/api/openapi.json", node.http))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            "40",
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--seed",
            "1",
            "--no-color",
        ])
        .arg("--auth")
        .arg(format!("{HOST}:{PASSWORD}"))
        .current_dir(reports.path())
        // application/sdp bodies are sent as text.
        .env(
            "SCHEMATHESIS_HOOKS",
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openapi_hooks.py"),
        )
        .env("NO_COLOR", "1");
    let (status, output) = run_with_timeout(&mut cmd, LIMIT);
    assert!(
        status.success(),
        "schemathesis found the API other than documented ({status}):\n{output}\n\
         node output:\n{}",
        log.text()
    );
    println!("{output}");
}
