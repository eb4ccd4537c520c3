//! Issue "real apps": volumes (read-only code, writable data kept across instances), the
//! bounded /tmp, secrets from env_file, lifecycle hooks, with a Flask app (gunicorn) and a
//! Node app on `rootfs: host`.
//!
//! Needs root, `python3-flask`, `gunicorn` and `nodejs` (installed by `.ci/run`); prints why
//! it skips otherwise.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use hako_tests::*;

const FLASK_APP: &str = r#"
import os
from flask import Flask
app = Flask(__name__)

@app.route("/")
def index():
    p = "/data/count"
    n = int(open(p).read()) if os.path.exists(p) else 0
    n += 1
    with open(p, "w") as f:
        f.write(str(n))
    ro = "ro-ok"
    try:
        open("/app/written", "w")
        ro = "ro-WRITABLE"
    except OSError:
        pass
    return "%d %s %s" % (n, ro, os.environ.get("SECRET_TOKEN", "-"))

@app.route("/fill")
def fill():
    try:
        with open("/tmp/big", "wb") as f:
            for _ in range(16):
                f.write(b"x" * (1 << 20))
        return "no-enospc"
    except OSError as e:
        return "errno %d" % e.errno
"#;

const NODE_APP: &str = r#"
const http = require('http');
const fs = require('fs');
http.createServer((req, res) => {
  let n = 0;
  try { n = parseInt(fs.readFileSync('/data/node-count', 'utf8')); } catch (e) {}
  n += 1;
  fs.writeFileSync('/data/node-count', String(n));
  let ro = 'ro-ok';
  try { fs.writeFileSync('/app/written', 'x'); ro = 'ro-WRITABLE'; } catch (e) {}
  res.end(n + ' ' + ro);
}).listen(8080, '0.0.0.0');
"#;

fn have(path: &str) -> bool {
    Path::new(path).exists()
}

/// Waits until `app` has no instance (its idle_timeout stopped it).
fn wait_stopped(h: &Hako, app: &str) {
    wait_for(Duration::from_secs(20), || {
        h.instances_of(app).is_empty().then_some(())
    })
    .unwrap_or_else(|| panic!("{app} did not stop"));
}

fn private_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("hako-real-apps-")
        .tempdir()
        .expect("tempdir");
    d
}

#[test]
fn flask_and_node_apps_with_volumes_secrets_hooks_and_a_bounded_tmp() {
    require_root!();
    for (p, pkg) in [
        ("/usr/bin/gunicorn", "gunicorn"),
        ("/usr/lib/python3/dist-packages/flask", "python3-flask"),
        ("/usr/bin/node", "nodejs"),
    ] {
        if !have(p) {
            println!("skipped: {p} missing (apt-get install {pkg})");
            return;
        }
    }
    let code = private_dir();
    let data = private_dir();
    let hooks = private_dir();
    let secrets = private_dir();
    let code_dir = code.path().canonicalize().unwrap();
    let data_dir = data.path().canonicalize().unwrap();
    let hook_dir = hooks.path().canonicalize().unwrap();
    std::fs::write(code_dir.join("app.py"), FLASK_APP).unwrap();
    std::fs::write(code_dir.join("server.js"), NODE_APP).unwrap();
    let secret = "s3cr3t-value-7f1c9";
    let env_file = secrets.path().canonicalize().unwrap().join("flask.env");
    std::fs::write(&env_file, format!("# the token\nSECRET_TOKEN={secret}\n")).unwrap();
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let hook = |_: &str| {
        format!(
            "[/bin/sh, -c, 'env | grep ^HAKO_ | sort > {}/$HAKO_HOOK.$HAKO_INSTANCE']",
            hook_dir.display()
        )
    };
    let apps = format!(
        r#"apps:
  - name: flask
    hosts: [flask.test]
    rootfs: host
    command: [/usr/bin/gunicorn, --bind, "0.0.0.0:8080", --chdir, /app, --workers, "1", "app:app"]
    env: {{PYTHONDONTWRITEBYTECODE: "1"}}
    env_file: {env}
    volumes:
      - {{source: {code}, target: /app, read_only: true}}
      - {{source: {data}, target: /data}}
    limits: {{disk: 4Mi, memory: 256Mi}}
    lifetime: {{idle_timeout: 1s, stop_timeout: 2s}}
    readiness: {{timeout: 20s}}
    hooks:
      before_boot: {hb}
      after_ready: {hr}
      before_stop: {hs}
      after_stop: {{command: {ha}, timeout: 3s}}
  - name: node
    hosts: [node.test]
    rootfs: host
    command: [/usr/bin/node, /app/server.js]
    volumes:
      - {{source: {code}, target: /app, read_only: true}}
      - {{source: {data}, target: /data}}
      - {{type: tmpfs, target: /cache, size: 1Mi}}
    lifetime: {{idle_timeout: 1s, stop_timeout: 2s}}
    readiness: {{timeout: 20s}}
  - name: gated
    hosts: [gated.test]
    rootfs: host
    command: [/bin/sleep, "60"]
    hooks:
      before_boot: [/bin/sh, -c, "echo 'database unreachable' >&2; exit 3"]
"#,
        env = env_file.display(),
        code = code_dir.display(),
        data = data_dir.display(),
        hb = hook("before_boot"),
        hr = hook("after_ready"),
        hs = hook("before_stop"),
        ha = hook("after_stop"),
    );
    let h = Hako::start(&apps, &[]);

    // Flask: code read-only, data writable, the secret reaches the app.
    let r = h.get("flask.test", "/");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), h.log());
    assert_eq!(r.text(), format!("1 ro-ok {secret}"));
    let listed = serde_json::to_string(&h.instances()).unwrap();
    assert!(!listed.contains(secret), "/v1/instances shows the secret");
    // /tmp is bounded by limits.disk (4Mi): ENOSPC inside, hako unharmed.
    let r = h.get("flask.test", "/fill");
    assert_eq!(r.text(), "errno 28", "{}", r.text());
    assert_eq!(h.get("flask.test", "/").text(), format!("2 ro-ok {secret}"));
    let first = h.the_instance_of("flask");
    let first_id: u64 = match &first["id"] {
        // `APP-N` in /v1/instances; hooks get N.
        serde_json::Value::String(s) => s.rsplit('-').next().unwrap().parse().expect("id"),
        v => v.as_u64().expect("numeric id"),
    };
    wait_stopped(&h, "flask");
    // The next instance reads what the previous one wrote.
    let r = h.get("flask.test", "/");
    assert_eq!(r.text(), format!("3 ro-ok {secret}"));
    assert_eq!(
        std::fs::read_to_string(data_dir.join("count")).unwrap(),
        "3"
    );
    assert!(!code_dir.join("written").exists());

    // Hooks of the first instance: every point ran with the documented environment.
    let read = |point: &str| {
        let p = hook_dir.join(format!("{point}.{first_id}"));
        wait_for(Duration::from_secs(5), || std::fs::read_to_string(&p).ok())
            .unwrap_or_else(|| panic!("{point} did not run: {}", h.log()))
    };
    for (point, reason) in [
        ("before_boot", "boot"),
        ("after_ready", "ready"),
        ("before_stop", "idle"),
        ("after_stop", "idle"),
    ] {
        let env = read(point);
        assert!(env.contains(&format!("HAKO_HOOK={point}\n")), "{env}");
        assert!(env.contains("HAKO_APP=flask\n"), "{env}");
        assert!(
            env.contains(&format!("HAKO_INSTANCE={first_id}\n")),
            "{env}"
        );
        assert!(
            env.contains(&format!("HAKO_REASON={reason}\n")),
            "{point}: {env}"
        );
        let pid_line = env.lines().find(|l| l.starts_with("HAKO_PID=")).unwrap();
        if point == "before_boot" {
            assert_eq!(pid_line, "HAKO_PID=", "{env}");
        } else {
            assert!(
                pid_line["HAKO_PID=".len()..].parse::<i32>().is_ok(),
                "{env}"
            );
        }
    }
    let m = h.metrics();
    for point in ["before_boot", "after_ready", "before_stop", "after_stop"] {
        assert!(
            m.sum(
                "hako_hook_runs_total",
                &[("app", "flask"), ("hook", point), ("result", "ok")]
            ) >= 1.0,
            "{point}: {}",
            m.text
        );
    }

    // Node: the same volumes, its own counter, the code read-only.
    let r = h.get("node.test", "/");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), h.log());
    assert_eq!(r.text(), "1 ro-ok");
    wait_stopped(&h, "node");
    assert_eq!(h.get("node.test", "/").text(), "2 ro-ok");

    // A failing before_boot fails the boot: 502 naming the hook.
    let r = h.get("gated.test", "/");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("before_boot"), "{}", r.text());
    assert!(
        h.metrics().sum(
            "hako_hook_runs_total",
            &[
                ("app", "gated"),
                ("hook", "before_boot"),
                ("result", "failed")
            ]
        ) >= 1.0
    );

    // The secret never reached hako's log.
    assert!(!h.log().contains(secret), "the secret is in hako's log");
}

#[test]
fn check_refuses_an_env_file_readable_by_others_and_a_missing_hook_or_source() {
    require_root!();
    let d = private_dir();
    let dir = d.path().canonicalize().unwrap();
    let env_file = dir.join("app.env");
    std::fs::write(&env_file, "TOKEN=hunter2-secret\n").unwrap();
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = dir.join("hako.yaml");
    std::fs::write(
        &config,
        format!(
            "apps:\n  - name: a\n    hosts: [a.test]\n    rootfs: host\n    command: [/bin/true]\n    env_file: {}\n    volumes:\n      - {{source: {}/missing, target: /data}}\n      - {{type: tmpfs, target: data/x}}\n    hooks:\n      before_boot: [no-such-hook-program]\n",
            env_file.display(),
            dir.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(hako_bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    let f = config.display().to_string();
    for (line, what) in [
        (6, "mode 0644 is readable by others; chmod 600"),
        (8, "does not exist"),
        (9, "must be an absolute path"),
        (11, "no-such-hook-program"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{f}:{line}:")) && l.contains(what)),
            "line {line} `{what}` in:\n{text}"
        );
    }
    assert!(!text.contains("hunter2"), "{text}");
    // A line without `=` is named by its number, its text never shown.
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&env_file, "A=1\nhunter2-secret\n").unwrap();
    let out = std::process::Command::new(hako_bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(text.contains("app.env:2: no `=`"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}
