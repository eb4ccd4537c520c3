//! Valid configurations, defaults, and several faults reported in one run.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hako_policies::*;

#[test]
fn minimal_config_gets_every_default() {
    let text = "apps:\n  - name: web\n    hosts: [Web.Example.TEST]\n    rootfs: host\n    command: [sh]\n";
    let c = load_str(text, Path::new("/etc/hako/hako.yaml")).unwrap();
    assert_eq!(c.listen, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
    assert_eq!(c.admin, "127.0.0.1:9090".parse::<SocketAddr>().unwrap());
    assert!(!c.allow_public_admin);
    assert_eq!(c.state_dir, PathBuf::from("/run/hako"));
    assert_eq!(c.governor, Governor::default());
    assert_eq!(c.governor.interval, Duration::from_millis(100));
    assert_eq!(c.governor.floor_memory, 32 << 20);
    let a = &c.apps[0];
    let mut expected = App::with_defaults("web", Rootfs::Host, vec!["sh".into()]);
    expected.hosts = vec!["web.example.test".into()];
    assert_eq!(*a, expected);
    assert_eq!(a.port, 8080);
    assert_eq!(a.workdir, PathBuf::from("/"));
    assert_eq!(
        a.limits,
        Limits {
            cpu: 1.0,
            burst_cpu: None,
            memory: 256 << 20,
            pids: 256,
            disk: 64 << 20
        }
    );
    assert_eq!(a.lifetime.idle_timeout, Duration::from_secs(60));
    assert_eq!(a.lifetime.grace, Duration::from_secs(10));
    assert_eq!(a.lifetime.stop_timeout, Duration::from_secs(5));
    assert_eq!(
        a.scaling,
        Scaling {
            max_instances: 1,
            concurrency: 50,
            queue: 1000,
            queue_timeout: Duration::from_secs(30)
        }
    );
    assert_eq!(
        a.readiness,
        Readiness {
            probe: Probe::Connect,
            timeout: Duration::from_secs(10)
        }
    );
    assert_eq!(a.effective_capabilities().len(), DEFAULT_CAPABILITIES.len());
    assert_eq!(c.app("web"), Some(a));
}

#[test]
fn every_key_is_read() {
    let text = r#"
listen: 0.0.0.0:8000
admin: 10.0.0.1:9999
allow_public_admin: true
state_dir: state
apps:
  - name: api.v2
    hosts: [api.test]
    path_prefix: /v2
    rootfs: host
    command: [sh, -c, "exec app"]
    env: {A: "1", B: two}
    workdir: /srv
    port: 3000
    network: host
    user: {uid: 1000, gid: 100}
    limits: {cpu: 0.5, burst_cpu: 2, memory: 1.5Gi, pids: 10}
    lifetime: {idle_timeout: 250ms, max_lifetime: 1h, grace: 0, stop_timeout: 1s, prestart_successor: true, hibernate_after: 100ms}
    scaling: {max_instances: 3, concurrency: 7, queue: 0, queue_timeout: 2s}
    readiness: {probe: http, path: /health, timeout: 3s}
    spike: {cpu_above: 0.8, for: 1s, tighten_cpu: 0.25, tighten_memory_high: 512Mi}
    capabilities: [net_bind_service, CAP_KILL]
    seccomp: unconfined
  - name: fds
    hosts: [fds.test]
    rootfs: host
    command: [sh]
    readiness: {probe: listen_fds}
    lifetime: {max_lifetime: ~}
governor:
  enabled: false
  interval: 50ms
  cpu_pressure: 40
  memory_pressure: 5.5
  relax_after: 10s
  relax_step: 0.5
  floor_cpu: 0.1
  floor_memory: 64Mi
  max_live_instances: 8
  max_memory: 4Gi
"#;
    let c = load_str(text, Path::new("/etc/hako/hako.yaml")).unwrap();
    assert_eq!(c.listen.port(), 8000);
    assert!(c.allow_public_admin);
    assert_eq!(c.state_dir, PathBuf::from("/etc/hako/state"));
    let a = &c.apps[0];
    assert_eq!(a.path_prefix.as_deref(), Some("/v2"));
    assert_eq!(a.command, vec!["sh", "-c", "exec app"]);
    assert_eq!(a.env.get("A").map(String::as_str), Some("1"));
    assert_eq!(a.workdir, PathBuf::from("/srv"));
    assert_eq!(a.port, 3000);
    assert_eq!(a.network, Network::Host);
    assert_eq!(
        a.user,
        User {
            uid: 1000,
            gid: 100
        }
    );
    assert_eq!(
        a.limits,
        Limits {
            cpu: 0.5,
            burst_cpu: Some(2.0),
            memory: 3 << 29,
            pids: 10,
            disk: 64 << 20
        }
    );
    assert_eq!(
        a.lifetime,
        Lifetime {
            idle_timeout: Duration::from_millis(250),
            max_lifetime: Some(Duration::from_secs(3600)),
            grace: Duration::ZERO,
            stop_timeout: Duration::from_secs(1),
            prestart_successor: true,
            hibernate_after: Some(Duration::from_millis(100)),
        }
    );
    assert_eq!(a.scaling.queue, 0);
    assert_eq!(
        a.readiness.probe,
        Probe::Http {
            path: "/health".into()
        }
    );
    assert_eq!(
        a.spike,
        Some(Spike {
            cpu_above: 0.8,
            for_: Duration::from_secs(1),
            tighten_cpu: Some(0.25),
            tighten_memory_high: Some(512 << 20),
        })
    );
    assert_eq!(
        a.capabilities,
        Some(vec![
            "CAP_NET_BIND_SERVICE".to_owned(),
            "CAP_KILL".to_owned()
        ])
    );
    assert_eq!(a.seccomp, SeccompMode::Unconfined);
    assert_eq!(c.apps[1].readiness.probe, Probe::ListenFds);
    assert_eq!(c.apps[1].lifetime.max_lifetime, None);
    let g = &c.governor;
    assert!(!g.enabled);
    assert_eq!(g.interval, Duration::from_millis(50));
    assert_eq!(
        (g.cpu_pressure, g.memory_pressure, g.relax_step, g.floor_cpu),
        (40.0, 5.5, 0.5, 0.1)
    );
    assert_eq!(g.relax_after, Duration::from_secs(10));
    assert_eq!(g.floor_memory, 64 << 20);
    assert_eq!(g.max_live_instances, Some(8));
    assert_eq!(g.max_memory, Some(4 << 30));
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rootfs")).unwrap();
    let file = dir.path().join("hako.yaml");
    std::fs::write(
        &file,
        "state_dir: ./state\napps:\n  - name: web\n    hosts: [web.test]\n    rootfs: ./rootfs\n    command: [sh]\n",
    )
    .unwrap();
    let c = load_file(&file).unwrap();
    assert_eq!(c.state_dir, dir.path().join("state"));
    assert_eq!(c.apps[0].rootfs, Rootfs::Dir(dir.path().join("rootfs")));
}

#[test]
fn same_host_on_different_prefixes_is_fine() {
    let text = "apps:\n  - {name: a, hosts: [x.test], rootfs: host, command: [sh]}\n  - {name: b, hosts: [x.test], path_prefix: /api, rootfs: host, command: [sh]}\n";
    load_str(text, Path::new("x.yaml")).unwrap();
    let clash = text.replace("/api", "/");
    let err = load_str(&clash, Path::new("x.yaml")).unwrap_err();
    assert_eq!(err.diagnostics().len(), 1, "{err}");
    assert!(err.diagnostics()[0]
        .message
        .contains("already routed to app `a`"));
}

/// One file, many semantic faults: all reported in one run, each at its own key, in file order.
#[test]
fn every_semantic_fault_is_reported_in_one_run() {
    let text = "\
listen: 127.0.0.1:8080
admin: 0.0.0.0:9090
apps:
  - name: \"my app\"
    hosts: [web.test]
    rootfs: ./missing-rootfs
    command: []
    port: 0
    limits:
      cpu: 0
      memory: -64Mi
      pids: 0
    lifetime:
      idle_timeout: 2h
      max_lifetime: 1h
  - name: api
    hosts: [WEB.test]
    rootfs: host
    command: [sh]
  - name: api
    hosts: [other.test]
    rootfs: host
    command: [sh]
    path_prefix: v1
governor:
  relax_step: 0
";
    let err = load_str(text, Path::new("/nonexistent-hako-dir/multi.yaml")).unwrap_err();
    let diags = err.diagnostics();
    let got: Vec<(usize, usize, &str)> = diags
        .iter()
        .map(|d| (d.line, d.column, d.message.as_str()))
        .collect();
    let expected: &[(usize, usize, &str)] = &[
        (2, 8, "admin: "),
        (4, 11, "apps[0].name: "),
        (6, 13, "apps[0].rootfs: "),
        (7, 14, "apps[0].command: "),
        (8, 11, "apps[0].port: "),
        (10, 12, "apps[0].limits.cpu: "),
        (11, 15, "apps[0].limits.memory: "),
        (12, 13, "apps[0].limits.pids: "),
        (14, 21, "apps[0].lifetime.idle_timeout: "),
        (17, 13, "apps[1].hosts[0]: "),
        (20, 11, "apps[2].name: "),
        (24, 18, "apps[2].path_prefix: "),
        (26, 15, "governor.relax_step: "),
    ];
    assert_eq!(got.len(), expected.len(), "{err}");
    for ((line, col, msg), (el, ec, prefix)) in got.iter().zip(expected) {
        assert_eq!((line, col), (el, ec), "{msg}");
        assert!(
            msg.starts_with(prefix),
            "`{msg}` should start with `{prefix}`"
        );
    }
    // Display: one line per diagnostic, each FILE:LINE:COLUMN: message.
    let shown = err.to_string();
    assert_eq!(shown.lines().count(), expected.len());
    for line in shown.lines() {
        assert!(
            line.starts_with("/nonexistent-hako-dir/multi.yaml:"),
            "{line}"
        );
    }
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

#[test]
fn the_example_is_valid_and_uses_every_key() {
    let path = repo_file("examples/hako.yaml");
    let c = load_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(!c.apps.is_empty());
    let text = std::fs::read_to_string(&path).unwrap();
    for key in [
        "listen:",
        "admin:",
        "allow_public_admin:",
        "state_dir:",
        "apps:",
        "governor:",
        "name:",
        "hosts:",
        "path_prefix:",
        "rootfs:",
        "command:",
        "env:",
        "workdir:",
        "port:",
        "network:",
        "user:",
        "uid:",
        "gid:",
        "limits:",
        "cpu:",
        "memory:",
        "pids:",
        "lifetime:",
        "idle_timeout:",
        "max_lifetime:",
        "grace:",
        "stop_timeout:",
        "prestart_successor:",
        "hibernate_after:",
        "scaling:",
        "max_instances:",
        "concurrency:",
        "queue:",
        "queue_timeout:",
        "readiness:",
        "probe:",
        "path:",
        "timeout:",
        "spike:",
        "cpu_above:",
        "for:",
        "tighten_cpu:",
        "tighten_memory_high:",
        "capabilities:",
        "seccomp:",
        "enabled:",
        "interval:",
        "cpu_pressure:",
        "memory_pressure:",
        "relax_after:",
        "relax_step:",
        "floor_cpu:",
        "floor_memory:",
        "max_live_instances:",
        "max_memory:",
    ] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().trim_start_matches("- ").starts_with(key)),
            "examples/hako.yaml does not use `{key}`"
        );
    }
}

/// Every ```yaml block of docs/configuration.md is a complete, valid configuration (blocks
/// fenced ```yaml partial are fragments, see docs/README.md; `tests/tests/docs.rs` checks the
/// qualifiers themselves).
#[test]
fn documentation_examples_are_valid() {
    let path = repo_file("docs/configuration.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    let mut in_other_block = false;
    for (n, line) in text.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        if in_other_block {
            in_other_block = !fence;
            continue;
        }
        match &mut current {
            None if line.trim() == "```yaml" => current = Some((n + 1, String::new())),
            None if fence => in_other_block = true,
            Some((start, body)) if line.trim_start().starts_with("```") => {
                blocks.push((*start, std::mem::take(body)));
                current = None;
            }
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    assert!(
        blocks.len() >= 3,
        "docs/configuration.md should carry examples"
    );
    for (line, block) in blocks {
        if let Err(e) = load_str(&block, &path) {
            panic!("docs/configuration.md block at line {line} is not valid:\n{e}");
        }
    }
}
