//! The reference page as the real binary serves it: `/` and `/r/{room}` are HTML under a
//! strict Content-Security-Policy, `/app.js`, `/app.css` and `/icon.svg` have their types, and
//! nothing in the page refers to another host (no CDN, no outside fonts: a meeting reveals itself to no third party).
//! What it does in a browser is tests/browser.rs.

mod common;

use common::{HttpResponse, Node, http};

fn get(node: &Node, path: &str) -> HttpResponse {
    http(node.http, "GET", path, &[], b"")
}

fn assert_csp(r: &HttpResponse, path: &str) {
    let csp = r
        .header("content-security-policy")
        .unwrap_or_else(|| panic!("{path}: no Content-Security-Policy header"));
    let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
    assert!(
        directives.contains(&"default-src 'self'"),
        "{path}: CSP {csp:?} lacks default-src 'self'"
    );
    for loosening in [
        "unsafe-inline",
        "unsafe-eval",
        "*",
        "http:",
        "https:",
        "data:",
    ] {
        assert!(
            !csp.split_whitespace()
                .any(|w| w.trim_matches(['\'', ';']) == loosening.trim_matches('\'')),
            "{path}: CSP {csp:?} allows {loosening}"
        );
    }
    assert_eq!(
        r.header("x-content-type-options").as_deref(),
        Some("nosniff"),
        "{path}"
    );
    assert_eq!(
        r.header("referrer-policy").as_deref(),
        Some("no-referrer"),
        "{path}: the room id in the path must not leak as a Referer"
    );
}

/// The text without comments: `<!-- -->` (HTML), `/* */` (CSS, JS) and whole-line `//`
/// comments (JS). Rough, but the page's own files are written to suit it.
fn without_comments(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    loop {
        let html = rest.find("<!--").map(|i| (i, "-->"));
        let block = rest.find("/*").map(|i| (i, "*/"));
        let next = match (html, block) {
            (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        let Some((start, end)) = next else {
            out.push_str(rest);
            break;
        };
        out.push_str(&rest[..start]);
        rest = match rest[start..].find(end) {
            Some(e) => &rest[start + e + end.len()..],
            None => "",
        };
    }
    out.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_no_other_host(path: &str, body: &str) {
    let code = without_comments(body).to_ascii_lowercase();
    for needle in [
        "http://",
        "https://",
        "//cdn",
        "src=\"//",
        "href=\"//",
        "url(//",
        "url(\"//",
        "@import",
        "ws://",
        "wss://",
    ] {
        assert!(
            !code.contains(needle),
            "{path} refers to another host ({needle:?} outside comments)"
        );
    }
}

#[test]
fn the_page_is_served_under_a_strict_csp_and_loads_nothing_from_elsewhere() {
    let node = Node::start("");

    let index = get(&node, "/");
    assert_eq!(index.status, 200, "{}", index.body);
    assert_eq!(
        index.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert_csp(&index, "/");
    assert!(index.body.starts_with("<!doctype html>"));
    assert!(index.body.contains(r#"<html lang="en">"#));
    assert!(index.body.contains(r#"name="viewport""#));

    // The room view is the same document (the script picks the view from the path),
    // whatever the room id: the page looks the room up itself.
    for path in ["/r/x", "/r/Zm9vYmFyYmF6cXV4cXV1eA"] {
        let room = get(&node, path);
        assert_eq!(room.status, 200, "{path}");
        assert_eq!(
            room.header("content-type").as_deref(),
            Some("text/html; charset=utf-8")
        );
        assert_csp(&room, path);
        assert_eq!(room.body, index.body, "{path}");
    }

    let js = get(&node, "/app.js");
    assert_eq!(js.status, 200);
    assert_eq!(
        js.header("content-type").as_deref(),
        Some("text/javascript; charset=utf-8")
    );
    assert_csp(&js, "/app.js");
    let css = get(&node, "/app.css");
    assert_eq!(css.status, 200);
    assert_eq!(
        css.header("content-type").as_deref(),
        Some("text/css; charset=utf-8")
    );
    assert_csp(&css, "/app.css");

    let icon = get(&node, "/icon.svg");
    assert_eq!(icon.status, 200);
    assert_eq!(
        icon.header("content-type").as_deref(),
        Some("image/svg+xml")
    );
    assert_csp(&icon, "/icon.svg");
    // A standalone SVG must name its XML namespace; that name is no address.
    let icon_body = icon
        .body
        .replacen(r#"xmlns="http://www.w3.org/2000/svg""#, "", 1);

    for (path, body) in [
        ("/", &index.body),
        ("/app.js", &js.body),
        ("/app.css", &css.body),
        ("/icon.svg", &icon_body),
    ] {
        assert_no_other_host(path, body);
    }

    // Under `default-src 'self'` inline code would not run: the HTML has none.
    let html = without_comments(&index.body).to_ascii_lowercase();
    assert!(!html.contains("<style"), "inline <style> in the page");
    assert!(
        !html.contains(" style="),
        "inline style attribute in the page"
    );
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script src=\"/app.js\"").count(),
        "a <script> other than /app.js"
    );
    for handler in [
        " onclick=",
        " onload=",
        " onsubmit=",
        " oninput=",
        " onerror=",
    ] {
        assert!(
            !html.contains(handler),
            "inline handler {handler} in the page"
        );
    }
    assert!(
        !html.contains("javascript:"),
        "a javascript: URL in the page"
    );
    // Every src/href is a path on this node.
    for attr in ["src=\"", "href=\""] {
        for (i, _) in html.match_indices(attr) {
            let value = &html[i + attr.len()..];
            assert!(
                value.starts_with('/') && !value.starts_with("//") || value.starts_with('#'),
                "{attr}{}… is not a path on this node",
                &value[..value.len().min(40)]
            );
        }
    }
    // The names automated browsers rely on (the page's contract: data-participant on remote videos;
    // the query parameters).
    for name in [
        "data-participant",
        "autojoin",
        "maxHeight",
        "relay",
        "sendEncodings",
    ] {
        assert!(js.body.contains(name), "app.js does not mention {name}");
    }

    // Revalidation: the ETag answers 304 without a body.
    let etag = index.header("etag").expect("an ETag on /");
    let again = http(node.http, "GET", "/", &[("If-None-Match", &etag)], b"");
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());

    // The API's answers are unchanged around the page: unknown paths are JSON 404s.
    let missing = get(&node, "/r/");
    assert_eq!(missing.status, 404);
    assert_eq!(get(&node, "/nope.js").status, 404);
    let post = http(node.http, "POST", "/", &[], b"");
    assert_eq!(post.status, 405);
}
