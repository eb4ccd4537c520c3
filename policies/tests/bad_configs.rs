//! Table-driven: each bad configuration must fail with exactly one diagnostic at the expected
//! line and column, naming the expected key.
use std::path::Path;

use hako_policies::{load_slice, load_str, Diagnostic, LoadError};

/// A valid app; `extra` lines (already indented by 4 spaces) start at line 6.
fn app(extra: &str) -> String {
    format!(
        "apps:\n  - name: web\n    hosts: [web.test]\n    rootfs: host\n    command: [sh, -c, 'exit 0']\n{extra}"
    )
}

/// Two valid apps; `second_extra` lines start at line 10.
fn two_apps(first_name: &str, second_name: &str, second_hosts: &str, second_extra: &str) -> String {
    format!(
        "apps:\n  - name: {first_name}\n    hosts: [web.test, www.test]\n    rootfs: host\n    command: [sh]\n  - name: {second_name}\n    hosts: {second_hosts}\n    rootfs: host\n    command: [sh]\n{second_extra}"
    )
}

struct Case {
    what: &'static str,
    yaml: String,
    line: usize,
    column: usize,
    /// Must appear in the message: the key path, plus a word of the explanation.
    needles: &'static [&'static str],
}

fn case(
    what: &'static str,
    yaml: impl Into<String>,
    line: usize,
    column: usize,
    needles: &'static [&'static str],
) -> Case {
    Case {
        what,
        yaml: yaml.into(),
        line,
        column,
        needles,
    }
}

fn cases() -> Vec<Case> {
    vec![
        // --- syntax -------------------------------------------------------------------------
        case("unclosed flow sequence", "apps: [\n", 2, 1, &["syntax error"]),
        case("tab indentation", "apps:\n\t- name: a\n", 2, 1, &["syntax error"]),
        case(
            "unterminated quoted scalar",
            "listen: \"127.0.0.1:80\napps: []\n",
            3,
            1,
            &["syntax error", "quoted scalar"],
        ),
        case("mapping value in plain scalar", "listen: a: b\n", 1, 10, &["syntax error"]),
        // --- wrong types ----------------------------------------------------------------------
        case("top level is a list", "- a\n- b\n", 1, 1, &["expected a mapping"]),
        case("port is a word", app("    port: abc\n"), 6, 11, &["apps[0].port", "invalid type"]),
        case(
            "cpu is a word",
            app("    limits:\n      cpu: fast\n"),
            7,
            12,
            &["apps[0].limits.cpu", "invalid type"],
        ),
        case(
            "hosts is a string",
            "apps:\n  - name: web\n    hosts: web.test\n",
            3,
            12,
            &["apps[0].hosts", "expected a sequence"],
        ),
        case(
            "duration without unit",
            app("    lifetime:\n      idle_timeout: 30\n"),
            7,
            21,
            &["apps[0].lifetime.idle_timeout", "unit"],
        ),
        case(
            "size with unknown unit",
            app("    limits: {memory: 12Zi}\n"),
            6,
            22,
            &["apps[0].limits.memory", "unknown unit `Zi`"],
        ),
        case(
            "unknown network mode",
            app("    network: bridge\n"),
            6,
            14,
            &["apps[0].network", "unknown variant `bridge`"],
        ),
        case(
            "boolean expected",
            "allow_public_admin: maybe\n",
            1,
            21,
            &["allow_public_admin", "invalid type"],
        ),
        case(
            "key given twice in a struct",
            "apps:\n  - name: a\n    name: b\n",
            3,
            5,
            &["apps[0].name", "duplicate key"],
        ),
        // --- unknown keys at several depths ----------------------------------------------------
        case("unknown top-level key", "lsten: 1\n", 1, 1, &["lsten", "unknown key", "`listen`"]),
        case("unknown app key", app("    nmae: x\n"), 6, 5, &["apps[0].nmae", "unknown key"]),
        case(
            "unknown limits key",
            app("    limits:\n      cpus: 1\n"),
            7,
            7,
            &["apps[0].limits.cpus", "did you mean `cpu`"],
        ),
        case(
            "unknown readiness key",
            app("    readiness: {probe: http, probe_path: /x}\n"),
            6,
            30,
            &["apps[0].readiness.probe_path", "unknown key"],
        ),
        case(
            "unknown user key",
            app("    user: {uid: 1, name: bob}\n"),
            6,
            20,
            &["apps[0].user.name", "unknown key"],
        ),
        case(
            "unknown governor key",
            "governor:\n  intervl: 1s\n",
            2,
            3,
            &["governor.intervl", "did you mean `interval`"],
        ),
        // --- semantic faults ------------------------------------------------------------------
        case("no apps", "apps: []\n", 1, 7, &["apps", "at least one app"]),
        case(
            "empty command",
            "apps:\n  - name: web\n    hosts: [web.test]\n    rootfs: host\n    command: []\n",
            5,
            14,
            &["apps[0].command", "must not be empty"],
        ),
        case(
            "missing command",
            "apps:\n  - name: web\n    hosts: [web.test]\n    rootfs: host\n",
            2,
            5,
            &["apps[0].command", "missing"],
        ),
        case(
            "duplicate app names",
            two_apps("web", "web", "[api.test]", ""),
            6,
            11,
            &["apps[1].name", "duplicate app name `web`", "line 2"],
        ),
        case(
            "host routed to two apps (case-insensitively)",
            two_apps("web", "api", "[api.test, WWW.test]", ""),
            7,
            23,
            &["apps[1].hosts[1]", "`www.test` is already routed to app `web`"],
        ),
        case(
            "missing rootfs directory",
            "apps:\n  - name: web\n    hosts: [web.test]\n    rootfs: ./no-such-rootfs\n    command: [sh]\n",
            4,
            13,
            &["apps[0].rootfs", "does not exist", "/nonexistent-hako-dir/no-such-rootfs"],
        ),
        case("port zero", app("    port: 0\n"), 6, 11, &["apps[0].port", "out of range"]),
        case("port too large", app("    port: 70000\n"), 6, 11, &["apps[0].port", "out of range"]),
        case(
            "zero cpu",
            app("    limits: {cpu: 0}\n"),
            6,
            19,
            &["apps[0].limits.cpu", "greater than zero"],
        ),
        case(
            "burst_cpu below cpu",
            app("    limits: {cpu: 1.0, burst_cpu: 0.5}\n"),
            6,
            35,
            &["apps[0].limits.burst_cpu", "at least limits.cpu"],
        ),
        case(
            "burst_cpu not a number",
            app("    limits:\n      cpu: 1\n      burst_cpu: lots\n"),
            8,
            18,
            &["apps[0].limits.burst_cpu", "invalid type"],
        ),
        case(
            "negative cpu",
            app("    limits: {cpu: -0.5}\n"),
            6,
            19,
            &["apps[0].limits.cpu", "greater than zero"],
        ),
        case(
            "zero memory",
            app("    limits: {memory: 0}\n"),
            6,
            22,
            &["apps[0].limits.memory", "greater than zero"],
        ),
        case(
            "negative memory",
            app("    limits: {memory: -1Gi}\n"),
            6,
            22,
            &["apps[0].limits.memory", "greater than zero"],
        ),
        case(
            "memory without unit",
            app("    limits: {memory: 256}\n"),
            6,
            22,
            &["apps[0].limits.memory", "256Mi"],
        ),
        case(
            "negative pids",
            app("    limits: {pids: -3}\n"),
            6,
            20,
            &["apps[0].limits.pids", "greater than zero"],
        ),
        case(
            "idle timeout longer than max lifetime",
            app("    lifetime:\n      idle_timeout: 10m\n      max_lifetime: 1m\n"),
            7,
            21,
            &["apps[0].lifetime.idle_timeout", "longer than max_lifetime 1m"],
        ),
        case(
            "hibernate_after not shorter than idle_timeout",
            app("    lifetime:\n      idle_timeout: 30s\n      hibernate_after: 30s\n"),
            8,
            24,
            &["apps[0].lifetime.hibernate_after", "shorter than idle_timeout 30s"],
        ),
        case(
            "hibernate_after zero",
            app("    lifetime: {hibernate_after: 0s}\n"),
            6,
            33,
            &["apps[0].lifetime.hibernate_after", "greater than zero"],
        ),
        case(
            "prestart successor without max lifetime",
            app("    lifetime: {prestart_successor: true}\n"),
            6,
            36,
            &["apps[0].lifetime.prestart_successor", "max_lifetime"],
        ),
        case(
            "app name `..`",
            "apps:\n  - name: ..\n    hosts: [a.test]\n    rootfs: host\n    command: [sh]\n",
            2,
            11,
            &["apps[0].name", "cgroup"],
        ),
        case(
            "app name with a slash",
            "apps:\n  - name: a/b\n    hosts: [a.test]\n    rootfs: host\n    command: [sh]\n",
            2,
            11,
            &["apps[0].name", "cgroup"],
        ),
        case(
            "app name with a space",
            "apps:\n  - name: my app\n    hosts: [a.test]\n    rootfs: host\n    command: [sh]\n",
            2,
            11,
            &["apps[0].name", "cgroup"],
        ),
        case(
            "public admin address",
            format!("admin: 0.0.0.0:9090\n{}", app("")),
            1,
            8,
            &["admin", "not a loopback", "allow_public_admin"],
        ),
        case(
            "listen not an address",
            format!("listen: localhost\n{}", app("")),
            1,
            9,
            &["listen", "not an IP address with a port"],
        ),
        case(
            "path prefix without slash",
            app("    path_prefix: api\n"),
            6,
            18,
            &["apps[0].path_prefix", "must start with `/`"],
        ),
        case(
            "relative workdir",
            app("    workdir: srv\n"),
            6,
            14,
            &["apps[0].workdir", "absolute"],
        ),
        case(
            "host with a port",
            "apps:\n  - name: web\n    hosts: [web.test:8080]\n    rootfs: host\n    command: [sh]\n",
            3,
            13,
            &["apps[0].hosts[0]", "port"],
        ),
        case(
            "readiness path without http probe",
            app("    readiness:\n      path: /health\n"),
            7,
            7,
            &["apps[0].readiness.path", "probe: http"],
        ),
        case(
            "max instances zero",
            app("    scaling: {max_instances: 0}\n"),
            6,
            30,
            &["apps[0].scaling.max_instances", "at least 1"],
        ),
        case(
            "spike tighten cpu not below the limit",
            app("    limits: {cpu: 0.5}\n    spike: {tighten_cpu: 0.5}\n"),
            7,
            26,
            &["apps[0].spike.tighten_cpu", "below limits.cpu"],
        ),
        case(
            "spike tighten memory not below the limit",
            app("    spike:\n      tighten_memory_high: 1Gi\n"),
            7,
            28,
            &["apps[0].spike.tighten_memory_high", "below limits.memory 256Mi"],
        ),
        case(
            "spike threshold above one",
            app("    spike: {cpu_above: 1.5, tighten_cpu: 0.5}\n"),
            6,
            24,
            &["apps[0].spike.cpu_above", "fraction"],
        ),
        case(
            "spike that tightens nothing",
            app("    spike: {cpu_above: 0.5}\n"),
            6,
            12,
            &["apps[0].spike", "neither"],
        ),
        case(
            "expose_host_secrets with a directory rootfs",
            "apps:\n  - name: web\n    hosts: [web.test]\n    rootfs: /usr\n    command: [sh]\n    expose_host_secrets: false\n".to_owned(),
            6,
            26,
            &["apps[0].expose_host_secrets", "rootfs: host"],
        ),
        case(
            "the host's root as rootfs",
            "apps:\n  - name: web\n    hosts: [web.test]\n    rootfs: /\n    command: [sh]\n",
            4,
            13,
            &["apps[0].rootfs", "host's root directory", "rootfs: host"],
        ),
        case(
            "the host's root as rootfs, spelled otherwise",
            "apps:\n  - name: web\n    hosts: [web.test]\n    rootfs: /usr/..\n    command: [sh]\n",
            4,
            13,
            &["apps[0].rootfs", "`/usr/..`", "rootfs: host"],
        ),
        // --- limits on the text itself ------------------------------------------------------
        case(
            "flow nesting too deep",
            format!("{}    env: {{A: {}\n", app(""), "[".repeat(100_000)),
            6,
            77,
            &["nesting deeper than 64"],
        ),
        case(
            "block nesting too deep",
            format!(
                "{}    env:\n{}",
                app(""),
                (0..70).map(|i| format!("{}k{i}:\n", " ".repeat(6 + 2 * i))).collect::<String>()
            ),
            68,
            129,
            &["nesting deeper than 64"],
        ),
        case(
            "aliases expanding a large string",
            format!(
                "apps:\n  - name: web\n    hosts: [web.test]\n    rootfs: host\n    command: [&big '{}', {}]\n",
                "x".repeat(1 << 20),
                vec!["*big"; 5000].join(", ")
            ),
            5,
            1048600,
            &["aliases expand to more than 1Mi"],
        ),
        case(
            "unknown capability",
            app("    capabilities: [CAP_NET_BIND_SERVICE, CAP_FLY]\n"),
            6,
            42,
            &["apps[0].capabilities[1]", "not a Linux capability"],
        ),
        case(
            "environment variable given twice",
            app("    env:\n      A: 1\n      A: 2\n"),
            8,
            7,
            &["apps[0].env.A", "duplicate key", "line 7"],
        ),
        case(
            "negative uid",
            app("    user: {uid: -1, gid: 0}\n"),
            6,
            17,
            &["apps[0].user.uid", "not a valid id"],
        ),
        case(
            "governor relax step above one",
            format!("{}governor:\n  relax_step: 2\n", app("")),
            7,
            15,
            &["governor.relax_step", "fraction"],
        ),
        case(
            "cgroup_parent reserved for hako run",
            format!("cgroup_parent: hako-run\n{}", app("")),
            1,
            16,
            &["cgroup_parent", "reserved", "hako run"],
        ),
        case(
            "app memory above the host budget",
            format!("{}    limits: {{memory: 1Gi}}\ngovernor: {{max_memory: 512Mi}}\n", app("")),
            6,
            22,
            &["apps[0].limits.memory", "governor.max_memory 512Mi"],
        ),
    ]
}

fn single(diags: &[Diagnostic], what: &str, yaml: &str) -> Diagnostic {
    assert_eq!(
        diags.len(),
        1,
        "case `{what}`: expected exactly one diagnostic, got {diags:#?}\n--- yaml ---\n{yaml}"
    );
    diags[0].clone()
}

#[test]
fn each_bad_config_is_reported_at_its_key() {
    let file = Path::new("/nonexistent-hako-dir/bad.yaml");
    let all = cases();
    assert!(all.len() >= 25);
    let mut failures = Vec::new();
    for c in &all {
        let diags = match load_str(&c.yaml, file) {
            Ok(_) => {
                failures.push(format!("`{}`: accepted\n{}", c.what, c.yaml));
                continue;
            }
            Err(LoadError::Invalid(d)) => d,
            Err(e) => panic!("`{}`: unexpected {e}", c.what),
        };
        let d = single(&diags, c.what, &c.yaml);
        assert_eq!(d.file, file);
        let rendered = d.to_string();
        assert!(rendered.starts_with(&format!("{}:{}:{}: ", file.display(), d.line, d.column)));
        if (d.line, d.column) != (c.line, c.column) {
            failures.push(format!(
                "`{}`: at {}:{}, expected {}:{} ({})",
                c.what, d.line, d.column, c.line, c.column, d.message
            ));
        }
        for needle in c.needles {
            if !d.message.contains(needle) {
                failures.push(format!(
                    "`{}`: message lacks `{needle}`: {}",
                    c.what, d.message
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn invalid_utf8_is_located() {
    let bytes = b"listen: 127.0.0.1:80\nadmin: \xff\n";
    let err = load_slice(bytes, Path::new("x.yaml")).unwrap_err();
    let d = &err.diagnostics()[0];
    assert_eq!((d.line, d.column), (2, 8));
    assert!(d.message.contains("UTF-8"));
}

#[test]
fn absolute_command_must_exist_in_the_rootfs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("root/bin")).unwrap();
    std::fs::write(dir.path().join("root/bin/app"), "").unwrap();
    let ok =
        "apps:\n  - name: web\n    hosts: [web.test]\n    rootfs: root\n    command: [/bin/app]\n";
    let file = dir.path().join("hako.yaml");
    let config = load_str(ok, &file).unwrap();
    assert_eq!(
        config.apps[0].rootfs,
        hako_policies::Rootfs::Dir(dir.path().join("root"))
    );
    let bad = ok.replace("/bin/app", "/bin/nope");
    let err = load_str(&bad, &file).unwrap_err();
    let d = single(err.diagnostics(), "missing program", &bad);
    assert_eq!((d.line, d.column), (5, 15));
    assert!(d
        .message
        .starts_with("apps[0].command[0]: `/bin/nope` does not exist in rootfs"));
    // A file where a directory is expected.
    let not_dir = ok.replace("rootfs: root", "rootfs: root/bin/app");
    let err = load_str(&not_dir, &file).unwrap_err();
    let d = single(err.diagnostics(), "rootfs is a file", &not_dir);
    assert_eq!((d.line, d.column), (4, 13));
    assert!(d.message.contains("is not a directory"));
}

/// A directory rootfs whose /proc, /dev, /tmp or /run is a symlink is refused at its line: the
/// launcher mounts there before pivot_root, where an absolute link leads to the host.
#[test]
fn a_rootfs_with_a_symlinked_mount_point_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("root/bin")).unwrap();
    let ok = "apps:\n  - name: web\n    hosts: [web.test]\n    rootfs: root\n    command: [sh]\n";
    let file = dir.path().join("hako.yaml");
    load_str(ok, &file).expect("no mount point yet: fine");
    for d in ["proc", "tmp"] {
        let link = dir.path().join("root").join(d);
        std::os::unix::fs::symlink("/", &link).unwrap();
        let err = load_str(ok, &file).unwrap_err();
        let diag = single(err.diagnostics(), "symlinked mount point", ok);
        assert_eq!((diag.line, diag.column), (4, 13), "{d}");
        assert!(
            diag.message.contains(&format!("root/{d}` is a symlink")),
            "{}",
            diag.message
        );
        std::fs::remove_file(&link).unwrap();
        std::fs::create_dir(&link).unwrap();
        load_str(ok, &file).expect("a real directory is fine");
    }
}

#[test]
fn io_errors_name_the_file() {
    let err = hako_policies::load_file(Path::new("/nonexistent-hako-dir/x.yaml")).unwrap_err();
    assert!(matches!(err, LoadError::Io { .. }));
    assert!(err
        .to_string()
        .starts_with("/nonexistent-hako-dir/x.yaml: cannot read:"));
}

/// Texts that cost the parsers minutes or gigabytes before these limits are refused with the
/// limit they cross (the fix is measured in docs/configuration.md; a regression would make
/// this test take minutes, not fail an assertion).
#[test]
fn hostile_texts_are_refused_at_the_limit_they_cross() {
    let file = Path::new("hostile.yaml");
    let one = |text: &str| -> Diagnostic {
        let err = load_str(text, file).expect_err("a hostile text was accepted");
        single(err.diagnostics(), "hostile", &text[..text.len().min(200)])
    };
    // 200 KB of `[`: quadratic in both YAML parsers.
    let d = one(&format!("apps: {}\n", "[".repeat(200_000)));
    assert_eq!((d.line, d.column), (1, 71), "{d}");
    assert!(d.message.contains("nesting deeper than 64"), "{d}");
    // Nested flow mappings.
    let d = one(&format!("apps: {}\n", "{a: ".repeat(100_000)));
    assert_eq!((d.line, d.column), (1, 263), "{d}");
    assert!(d.message.contains("nesting deeper than 64"), "{d}");
    // Block sequences nested on one line.
    let d = one(&format!("apps:\n{}x\n", "- ".repeat(1_000_000)));
    assert!(d.message.contains("nesting deeper than 64"), "{d}");
    // A billion laughs: each level aliases the previous one ten times.
    let mut laughs = String::from("apps:\n  - name: a\n    hosts: [a.test]\n    rootfs: host\n    command: [sh]\n    env:\n      L0: &l0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9 {
        let prev = format!("*l{}", i - 1);
        laughs.push_str(&format!(
            "      L{i}: &l{i} [{}]\n",
            [prev.as_str(); 10].join(", ")
        ));
    }
    let d = one(&laughs);
    assert!(d.message.contains("aliases expand to more than 1Mi"), "{d}");
    assert!(d.line >= 12, "{d}");
    // Larger than 4 MiB, as text and as a file (refused before it is read whole).
    let big = format!("apps: []\n#{}\n", "x".repeat(4 << 20));
    let d = one(&big);
    assert_eq!((d.line, d.column), (1, 1));
    assert!(
        d.message
            .contains(&format!("too large ({} bytes)", big.len())),
        "{d}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    std::fs::write(&path, &big).unwrap();
    let err = hako_policies::load_file(&path).unwrap_err();
    let d = single(err.diagnostics(), "big file", "");
    assert_eq!(d.file, path);
    assert!(d.message.contains("at most 4194304 bytes (4 MiB)"), "{d}");
    // Right under the limits everything still loads.
    let ok = format!(
        "apps:\n  - name: web\n    hosts: [web.test]\n    rootfs: host\n    command: [sh]\n    env: {{A: {}x{}}}\n",
        "[".repeat(60),
        "]".repeat(60)
    );
    // (env values must be strings: the depth is accepted, the type is then refused.)
    let d = one(&ok);
    assert!(!d.message.contains("nesting"), "{d}");
}

#[test]
fn the_default_idle_timeout_never_conflicts_with_a_short_lifetime() {
    let yaml = app("    lifetime: {max_lifetime: 2s}\n");
    let c = load_str(&yaml, Path::new("x.yaml")).expect("max_lifetime alone is accepted");
    assert_eq!(
        c.apps[0].lifetime.max_lifetime,
        Some(std::time::Duration::from_secs(2))
    );
}
