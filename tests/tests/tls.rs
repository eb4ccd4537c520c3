//! Issue 18, the front door: a real `hako serve` terminating TLS for busybox apps, driven by
//! `curl` (HTTP/1.1 and HTTP/2 by ALPN, SNI by `--resolve`), and `hako check` refusing bad
//! certificate files at their lines. Certificates come from a CA generated per test (rcgen).
//!
//! Needs root (skips otherwise) and `curl` with HTTP2 (skips with a printed reason otherwise).

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hako_tests::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

const STOP_FAST: &str = "lifetime: {stop_timeout: 500ms}";

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "hako e2e test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// Writes `<dir>/<file>.crt` (signed by this CA, subject CN `cn`, SANs `names`) and
    /// `<dir>/<file>.key` (mode 0600).
    fn leaf(&self, dir: &Path, file: &str, cn: &str, names: &[&str]) {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        write_pair(dir, file, &cert.pem(), &key.serialize_pem(), 0o600);
    }

    fn write(&self, path: &Path) {
        fs::write(path, self.cert.pem()).unwrap();
    }
}

/// Writes the pair through a temporary name and renames it, as an ACME client's deploy hook does.
fn write_pair(dir: &Path, file: &str, cert: &str, key: &str, key_mode: u32) {
    let tmp = dir.join(format!(".{file}.key.tmp"));
    fs::write(&tmp, key).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(key_mode)).unwrap();
    fs::rename(&tmp, dir.join(format!("{file}.key"))).unwrap();
    let tmp = dir.join(format!(".{file}.crt.tmp"));
    fs::write(&tmp, cert).unwrap();
    fs::rename(&tmp, dir.join(format!("{file}.crt"))).unwrap();
}

/// True when the host's curl speaks HTTP/2 (else prints why the test is skipped).
fn curl_with_http2() -> bool {
    match Command::new("curl").arg("-V").output() {
        Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).contains("HTTP2") => true,
        Ok(_) => {
            println!("skipped: this curl has no HTTP2 feature (curl -V)");
            false
        }
        Err(e) => {
            println!("skipped: no curl ({e})");
            false
        }
    }
}

/// `curl -sS --max-time 20 --resolve HOST:PORT:127.0.0.1 <args> URL`, output collected.
fn curl(host: &str, port: u16, args: &[&str], url: &str) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20", "--resolve"])
        .arg(format!("{host}:{port}:127.0.0.1"))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run curl")
}

fn ok_text(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: curl failed ({}):\n{}",
        out.status,
        output_text(out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The subject CN of the certificate curl was shown (`curl -v` prints `subject: CN=...`).
fn subject_cn(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .find_map(|l| l.split("subject: CN=").nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no subject in curl -v output:\n{err}"))
}

fn post_reload(admin: SocketAddr) -> String {
    let req = format!(
        "POST /v1/reload HTTP/1.1\r\nHost: {admin}\r\nX-Hako-Reload: 1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    let raw = raw_exchange(admin, req.as_bytes()).expect("admin request");
    String::from_utf8_lossy(&raw).into_owned()
}

fn tls_section(port: u16, default_entry: bool) -> String {
    let mut s = format!(
        "tls:\n  listen: 127.0.0.1:{port}\n  certificates:\n    - hosts: [web.test]\n      cert: web.crt\n      key: web.key\n    - hosts: ['*.wild.test']\n      cert: wild.crt\n      key: wild.key\n"
    );
    if default_entry {
        s.push_str("    - hosts: ['*']\n      cert: default.crt\n      key: default.key\n");
    }
    s
}

#[test]
fn tls_front_door_with_sni_h2_redirect_forwarded_proto_and_reload() {
    require_root!();
    if !curl_with_http2() {
        return;
    }
    let certs = tempfile::Builder::new()
        .prefix("hako-e2e-tls-")
        .tempdir()
        .unwrap();
    let dir = certs.path();
    let ca = Ca::new();
    let ca_file = dir.join("ca.pem");
    ca.write(&ca_file);
    ca.leaf(dir, "web", "web-v1", &["web.test"]);
    ca.leaf(dir, "wild", "wild", &["*.wild.test"]);
    ca.leaf(dir, "default", "default", &["default.test"]);

    let rootfs = Rootfs::new();
    rootfs.cgi("env", "echo \"proto=$HTTP_X_FORWARDED_PROTO\"");
    rootfs.cgi("slow", "sleep 3; echo slow done");
    let tls_port = free_port();
    // Certificate paths are relative to the config file: hako's config lives in its own
    // tempdir, so the section names absolute paths.
    let top = format!(
        "governor:\n  enabled: false\n{}",
        tls_section_abs(tls_port, dir, false)
    );
    let yaml = apps(&[
        httpd_app("web", &rootfs, &[STOP_FAST, "redirect_https: true"]),
        app_with_command(
            "wild",
            &rootfs,
            r#"["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]"#,
            &[STOP_FAST],
        )
        .replace("hosts: [wild.test]", "hosts: [x.wild.test]"),
    ]);
    let h = Hako::start_with(&yaml, &[&rootfs], &top);
    let cacert = ca_file.to_str().unwrap();
    let url = |host: &str, path: &str| format!("https://{host}:{tls_port}{path}");

    // HTTP/1.1 and HTTP/2 by ALPN, the certificate verified against the test CA.
    let out = curl(
        "web.test",
        tls_port,
        &["--cacert", cacert, "--http1.1", "-w", "\n%{http_version}"],
        &url("web.test", "/"),
    );
    let text = ok_text(&out, "https over HTTP/1.1");
    assert_eq!(text, format!("{INDEX_BODY}\n1.1"), "{text}");
    let out = curl(
        "web.test",
        tls_port,
        &["--cacert", cacert, "--http2", "-w", "\n%{http_version}"],
        &url("web.test", "/"),
    );
    let text = ok_text(&out, "https over HTTP/2");
    assert_eq!(text, format!("{INDEX_BODY}\n2"), "{text}");

    // The app sees X-Forwarded-Proto: https over TLS.
    let out = curl(
        "web.test",
        tls_port,
        &["--cacert", cacert, "-H", "X-Forwarded-Proto: forged"],
        &url("web.test", "/cgi-bin/env"),
    );
    assert_eq!(ok_text(&out, "CGI over TLS").trim(), "proto=https");

    // The plain listener redirects web (redirect_https) with 308 to the TLS port.
    let plain = h.listen.port();
    let out = curl(
        "web.test",
        plain,
        &["-o", "/dev/null", "-w", "%{http_code} %{redirect_url}"],
        &format!("http://web.test:{plain}/cgi-bin/env?a=1"),
    );
    assert_eq!(
        ok_text(&out, "plain request to a redirect_https app"),
        format!("308 https://web.test:{tls_port}/cgi-bin/env?a=1")
    );
    // An app without redirect_https is served on the plain listener, told it is http.
    let r = h.get("x.wild.test", "/cgi-bin/env");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text().trim(), "proto=http");

    // Wildcard SNI: x.wild.test gets the *.wild.test certificate, which curl verifies.
    let out = curl(
        "x.wild.test",
        tls_port,
        &["--cacert", cacert, "-v"],
        &url("x.wild.test", "/"),
    );
    assert_eq!(ok_text(&out, "wildcard SNI"), INDEX_BODY);
    assert_eq!(subject_cn(&out), "wild");

    // Unknown SNI without a '*' entry: a handshake failure, no certificate of another name,
    // and hako goes on serving.
    let out = curl(
        "nobody.test",
        tls_port,
        &["-k", "-v"],
        &url("nobody.test", "/"),
    );
    assert!(
        !out.status.success(),
        "an unknown name was served:\n{}",
        output_text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("subject: CN="),
        "a certificate was sent for an unknown name:\n{err}"
    );
    let out = curl(
        "web.test",
        tls_port,
        &["--cacert", cacert],
        &url("web.test", "/"),
    );
    assert_eq!(ok_text(&out, "after an unknown SNI"), INDEX_BODY);

    // A connection opened before the reload: curl fetches two URLs on one connection; the
    // first is slow, and the certificates are replaced and reloaded meanwhile.
    let open = Command::new("curl")
        .args([
            "-sS",
            "-v",
            "--max-time",
            "30",
            "--http1.1",
            "--cacert",
            cacert,
        ])
        .arg("--resolve")
        .arg(format!("web.test:{tls_port}:127.0.0.1"))
        .arg(url("web.test", "/cgi-bin/slow"))
        .arg(url("web.test", "/cgi-bin/env"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn curl");
    wait_until("the slow CGI runs", Duration::from_secs(10), || {
        h.descendants()
            .iter()
            .any(|(_, cmd)| cmd.starts_with("sleep"))
            .then_some(())
    });
    ca.leaf(dir, "web", "web-v2", &["web.test"]);
    let cur = fs::read_to_string(&h.config_path).unwrap();
    let (head, _) = cur.split_once("tls:\n").expect("config has tls");
    let (_, rest) = cur.split_once("\napps:").expect("config has apps");
    let with_default = tls_section_abs(tls_port, dir, true);
    fs::write(&h.config_path, format!("{head}{with_default}apps:{rest}")).unwrap();
    let reply = post_reload(h.admin);
    assert!(reply.starts_with("HTTP/1.1 200"), "reload: {reply}");
    let kept = open.wait_with_output().expect("curl");
    let text = ok_text(&kept, "the connection opened before the reload");
    assert_eq!(text, "slow done\nproto=https\n", "{text}");
    let err = String::from_utf8_lossy(&kept.stderr);
    assert!(
        err.contains("Re-using existing connection"),
        "curl did not keep its connection:\n{err}"
    );
    assert_eq!(subject_cn(&kept), "web-v1");

    // New handshakes get the new certificate; the '*' entry added by the reload answers
    // unknown names with the default certificate.
    let out = curl(
        "web.test",
        tls_port,
        &["--cacert", cacert, "-v"],
        &url("web.test", "/"),
    );
    assert_eq!(ok_text(&out, "after the reload"), INDEX_BODY);
    assert_eq!(subject_cn(&out), "web-v2");
    let out = curl(
        "nobody.test",
        tls_port,
        &["-k", "-v", "-o", "/dev/null", "-w", "%{http_code}"],
        &url("nobody.test", "/"),
    );
    assert_eq!(subject_cn(&out), "default");
    assert_eq!(ok_text(&out, "unknown name, default certificate"), "404");
}

/// The tls section with absolute certificate paths under `dir`.
fn tls_section_abs(port: u16, dir: &Path, default_entry: bool) -> String {
    tls_section(port, default_entry)
        .replace("cert: ", &format!("cert: {}/", dir.display()))
        .replace("key: ", &format!("key: {}/", dir.display()))
}

#[test]
fn hako_check_reports_bad_certificate_files_at_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let ca = Ca::new();
    ca.leaf(p, "good", "good", &["good.test"]);
    ca.leaf(p, "other", "other", &["other.test"]);
    ca.leaf(p, "open", "open", &["open.test"]);
    fs::set_permissions(p.join("open.key"), fs::Permissions::from_mode(0o644)).unwrap();
    let mut old = CertificateParams::new(vec!["old.test".to_string()]).unwrap();
    old.not_before = rcgen::date_time_ymd(2019, 1, 1);
    old.not_after = rcgen::date_time_ymd(2020, 1, 1);
    let old_key = KeyPair::generate().unwrap();
    let old_cert = old.signed_by(&old_key, &ca.cert, &ca.key).unwrap();
    write_pair(p, "old", &old_cert.pem(), &old_key.serialize_pem(), 0o600);

    let good = "listen: 127.0.0.1:18080\nadmin: 127.0.0.1:19090\n\
        tls:\n  listen: 127.0.0.1:18443\n  certificates:\n    - hosts: [good.test]\n      cert: good.crt\n      key: good.key\n\
        apps:\n  - name: web\n    hosts: [good.test]\n    rootfs: host\n    command: [sh]\n    redirect_https: true\n";
    let file = p.join("good.yaml");
    fs::write(&file, good).unwrap();
    let out = Command::new(hako_bin())
        .args(["check", "--config"])
        .arg(&file)
        .env_remove("RUST_LOG")
        .output()
        .expect("hako check");
    assert!(out.status.success(), "{}", output_text(&out));

    // Line 11: a key that is not the certificate's; 13: expired; 17: world-readable key.
    let bad = "listen: 127.0.0.1:18080\nadmin: 127.0.0.1:19090\n\
        tls:\n  listen: 127.0.0.1:18443\n  certificates:\n\
        \x20   - hosts: [good.test]\n      cert: good.crt\n      key: good.key\n\
        \x20   - hosts: [other.test]\n      cert: other.crt\n      key: good.key\n\
        \x20   - hosts: [old.test]\n      cert: old.crt\n      key: old.key\n\
        \x20   - hosts: [open.test]\n      cert: open.crt\n      key: open.key\n\
        apps:\n  - name: web\n    hosts: [good.test]\n    rootfs: host\n    command: [sh]\n";
    let file = p.join("bad.yaml");
    fs::write(&file, bad).unwrap();
    let out = Command::new(hako_bin())
        .args(["check", "--config"])
        .arg(&file)
        .env_remove("RUST_LOG")
        .output()
        .expect("hako check");
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let f = file.display();
    let at = |line: usize| {
        text.lines()
            .find(|l| l.starts_with(&format!("{f}:{line}:")))
            .unwrap_or_else(|| panic!("no error at line {line}:\n{text}"))
            .to_string()
    };
    assert!(at(11).contains("does not fit certificate"), "{}", at(11));
    assert!(at(13).contains("expired"), "{}", at(13));
    assert!(at(17).contains("readable by every user"), "{}", at(17));
    assert_eq!(
        text.lines().filter(|l| !l.trim().is_empty()).count(),
        3,
        "{text}"
    );
}
