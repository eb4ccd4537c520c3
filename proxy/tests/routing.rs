//! Routing table: case, port, prefixes, reload.

use hako_proxy::{Route, Routes, RoutesHandle};

fn r(app: &str, hosts: &[&str], prefix: Option<&str>) -> Route {
    Route {
        app: app.into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        path_prefix: prefix.map(Into::into),
        redirect_https: false,
    }
}

fn table() -> Routes {
    Routes::new(vec![
        r("site", &["example.com", "www.example.com"], None),
        r("api", &["example.com"], Some("/api")),
        r("api-v2", &["example.com"], Some("/api/v2/")),
        r("other", &["Other.Test"], Some("/")),
    ])
}

#[test]
fn host_match_ignores_case_and_port() {
    let t = table();
    assert_eq!(t.resolve("EXAMPLE.com", "/"), Some("site"));
    assert_eq!(t.resolve("example.com:8080", "/x"), Some("site"));
    assert_eq!(t.resolve("www.example.com:80", "/"), Some("site"));
    assert_eq!(t.resolve("other.test", "/anything"), Some("other"));
    assert_eq!(t.resolve("OTHER.TEST:1", "/"), Some("other"));
    assert_eq!(t.resolve("example.com.", "/"), Some("site"));
}

#[test]
fn unknown_host_is_none() {
    let t = table();
    assert_eq!(t.resolve("nope.example.com", "/"), None);
    assert_eq!(t.resolve("", "/"), None);
}

#[test]
fn longest_prefix_wins_on_segment_boundary() {
    let t = table();
    assert_eq!(t.resolve("example.com", "/api"), Some("api"));
    assert_eq!(t.resolve("example.com", "/api/users"), Some("api"));
    assert_eq!(t.resolve("example.com", "/api/v2"), Some("api-v2"));
    assert_eq!(t.resolve("example.com", "/api/v2/x"), Some("api-v2"));
    assert_eq!(t.resolve("example.com", "/api/v20"), Some("api"));
    assert_eq!(t.resolve("example.com", "/apix"), Some("site"));
    // www.example.com has no /api route.
    assert_eq!(t.resolve("www.example.com", "/api"), Some("site"));
}

#[test]
fn prefix_only_host_does_not_match_other_paths() {
    let t = Routes::new(vec![r("api", &["h.test"], Some("/api"))]);
    assert_eq!(t.resolve("h.test", "/api/x"), Some("api"));
    assert_eq!(t.resolve("h.test", "/"), None);
    assert_eq!(t.resolve("h.test", "/apix"), None);
}

#[test]
fn handle_swaps_tables() {
    let h = RoutesHandle::new(table());
    let before = h.load();
    h.store(Routes::new(vec![r("new", &["example.com"], None)]));
    assert_eq!(h.load().resolve("example.com", "/api"), Some("new"));
    // A snapshot taken earlier keeps its decision.
    assert_eq!(before.resolve("example.com", "/api"), Some("api"));
}
