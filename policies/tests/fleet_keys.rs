//! The top-level fleet keys `node_name` and `drain_timeout`: defaults, values, and faults at
//! their position.
use std::path::Path;
use std::time::Duration;

use hako_policies::{load_str, LoadError, DEFAULT_DRAIN_TIMEOUT};

const APP: &str =
    "apps:\n  - name: web\n    hosts: [web.test]\n    rootfs: host\n    command: [sh]\n";

#[test]
fn defaults_when_not_written() {
    let cfg = load_str(APP, Path::new("t.yaml")).unwrap();
    assert_eq!(cfg.node_name, None);
    assert_eq!(cfg.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
    assert_eq!(cfg.drain_timeout, Duration::from_secs(60));
}

#[test]
fn values_are_read() {
    let yaml = format!("node_name: edge-2.dc1\ndrain_timeout: 90s\n{APP}");
    let cfg = load_str(&yaml, Path::new("t.yaml")).unwrap();
    assert_eq!(cfg.node_name.as_deref(), Some("edge-2.dc1"));
    assert_eq!(cfg.drain_timeout, Duration::from_secs(90));
}

#[test]
fn bad_values_are_faults_at_their_position() {
    let yaml = format!("node_name: \"edge 2\"\ndrain_timeout: 0s\n{APP}");
    let err = load_str(&yaml, Path::new("t.yaml")).unwrap_err();
    let LoadError::Invalid(diags) = err else {
        panic!("expected validation errors, got {err}");
    };
    let got: Vec<(usize, usize, &str)> = diags
        .iter()
        .map(|d| (d.line, d.column, d.message.as_str()))
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!((got[0].0, got[0].1), (1, 12), "{got:?}");
    assert!(
        got[0]
            .2
            .starts_with("node_name: `edge 2` is not a node name"),
        "{got:?}"
    );
    assert_eq!((got[1].0, got[1].1), (2, 16), "{got:?}");
    assert!(
        got[1]
            .2
            .starts_with("drain_timeout: must be greater than zero"),
        "{got:?}"
    );
}

#[test]
fn an_empty_node_name_is_an_error() {
    let yaml = format!("node_name: \"\"\n{APP}");
    assert!(load_str(&yaml, Path::new("t.yaml")).is_err());
}
