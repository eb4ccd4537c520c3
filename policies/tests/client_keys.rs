//! The top-level `client_*` keys: defaults, values, and faults at their position.
use std::path::Path;
use std::time::Duration;

use hako_policies::{load_str, Clients, LoadError};

const APP: &str =
    "apps:\n  - name: web\n    hosts: [web.test]\n    rootfs: host\n    command: [sh]\n";

#[test]
fn defaults_when_not_written() {
    let cfg = load_str(APP, Path::new("t.yaml")).unwrap();
    assert_eq!(cfg.clients, Clients::default());
    assert_eq!(cfg.clients.header_timeout, Duration::from_secs(10));
    assert_eq!(cfg.clients.idle_timeout, Duration::from_secs(60));
    assert_eq!(cfg.clients.max_connections_per_client, 1024);
}

#[test]
fn values_are_read() {
    let yaml = format!(
        "client_header_timeout: 2500ms\nclient_idle_timeout: 2m\nmax_connections_per_client: 20000\n{APP}"
    );
    let cfg = load_str(&yaml, Path::new("t.yaml")).unwrap();
    assert_eq!(cfg.clients.header_timeout, Duration::from_millis(2500));
    assert_eq!(cfg.clients.idle_timeout, Duration::from_secs(120));
    assert_eq!(cfg.clients.max_connections_per_client, 20000);
}

#[test]
fn zero_and_negative_values_are_faults_at_their_position() {
    let yaml = format!(
        "client_header_timeout: 0s\nclient_idle_timeout: 0s\nmax_connections_per_client: 0\n{APP}"
    );
    let err = load_str(&yaml, Path::new("t.yaml")).unwrap_err();
    let LoadError::Invalid(diags) = err else {
        panic!("expected validation errors, got {err}");
    };
    let got: Vec<(usize, usize, &str)> = diags
        .iter()
        .map(|d| (d.line, d.column, d.message.as_str()))
        .collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!((got[0].0, got[0].1), (1, 24), "{got:?}");
    assert!(got[0]
        .2
        .starts_with("client_header_timeout: must be greater than zero"));
    assert_eq!((got[1].0, got[1].1), (2, 22), "{got:?}");
    assert!(got[1].2.starts_with("client_idle_timeout:"));
    assert_eq!((got[2].0, got[2].1), (3, 29), "{got:?}");
    assert!(got[2]
        .2
        .contains("max_connections_per_client: must be at least 1"));
}

#[test]
fn a_misspelt_key_is_an_error() {
    let yaml = format!("client_header_timout: 5s\n{APP}");
    let err = load_str(&yaml, Path::new("t.yaml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("t.yaml:1:1"), "{err}");
    assert!(err.contains("client_header_timeout"), "{err}");
}
