//! `tls` and `redirect_https`: accepted, and every fault of the certificate files reported at
//! the line of the key that names them.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use hako_policies::*;

fn pair(dir: &Path, name: &str, expired: bool, key_mode: u32) {
    let mut params = rcgen::CertificateParams::new(vec![format!("{name}.test")]).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
    let k = dir.join(format!("{name}.key"));
    std::fs::write(&k, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(key_mode)).unwrap();
}

const APP: &str = "apps:\n  - name: web\n    hosts: [a.test]\n    rootfs: host\n    command: [sh]\n    redirect_https: true\n";

#[test]
fn tls_is_loaded_with_paths_relative_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    pair(dir.path(), "a", false, 0o600);
    let text = format!(
        "tls:\n  listen: 127.0.0.1:8443\n  certificates:\n    - hosts: [A.test, '*.w.test', '*']\n      cert: a.crt\n      key: a.key\n{APP}"
    );
    let c = load_str(&text, &dir.path().join("hako.yaml")).unwrap();
    let tls = c.tls.unwrap();
    assert_eq!(tls.listen, "127.0.0.1:8443".parse().unwrap());
    assert_eq!(tls.certificates[0].hosts, ["a.test", "*.w.test", "*"]);
    assert_eq!(tls.certificates[0].cert, dir.path().join("a.crt"));
    assert!(c.apps[0].redirect_https);
}

#[test]
fn bad_certificates_are_reported_at_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    pair(dir.path(), "a", false, 0o600);
    pair(dir.path(), "b", false, 0o600);
    pair(dir.path(), "old", true, 0o600);
    pair(dir.path(), "open", false, 0o644);
    let text = "tls:\n  listen: 127.0.0.1:8443\n  certificates:\n    - hosts: [a.test]\n      cert: a.crt\n      key: b.key\n    - hosts: [old.test]\n      cert: old.crt\n      key: old.key\n    - hosts: [open.test]\n      cert: open.crt\n      key: open.key\n    - hosts: [x.test]\n      cert: a.crt\n      key: missing.key\n".to_string() + APP;
    let file = dir.path().join("hako.yaml");
    let LoadError::Invalid(diags) = load_str(&text, &file).unwrap_err() else {
        panic!("not a validation error")
    };
    let at = |line: usize| {
        diags
            .iter()
            .find(|d| d.line == line)
            .map(|d| d.message.clone())
            .unwrap_or_else(|| panic!("no fault at line {line}: {diags:?}"))
    };
    assert!(at(6).contains("does not fit certificate"), "{}", at(6));
    assert!(at(8).contains("expired"), "{}", at(8));
    assert!(at(12).contains("readable by every user"), "{}", at(12));
    assert!(at(15).contains("cannot read"), "{}", at(15));
    assert_eq!(diags.len(), 4, "{diags:?}");
}

#[test]
fn redirect_https_needs_tls() {
    let LoadError::Invalid(diags) = load_str(APP, Path::new("/etc/hako/hako.yaml")).unwrap_err()
    else {
        panic!("not a validation error")
    };
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!(diags[0].line, 6);
    assert!(diags[0].message.contains("tls"), "{}", diags[0].message);
}
