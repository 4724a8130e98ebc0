//! Issue 13: the Grafana dashboard (`grafana/confnode.json`) asks only for series the
//! node exports, so it cannot drift from `/metrics` unnoticed.

mod common;

use common::Node;
use serde_json::Value;

/// The `confnode_…` series names in a PromQL expression.
fn series(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("confnode_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_grafana_dashboard_asks_for_series_the_node_exports() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/confnode.json");
    let text = std::fs::read_to_string(path).expect("grafana/confnode.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let node = Node::start("");
    let metrics = node.metrics();
    let exported: Vec<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "a dashboard of {} panels", panels.len());
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(
            !targets.is_empty(),
            "panel {} asks for nothing",
            panel["title"]
        );
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            for name in series(expr) {
                assert!(
                    exported.contains(&name.as_str()),
                    "panel {} asks for {name}, which /metrics does not have",
                    panel["title"]
                );
            }
        }
    }
}
