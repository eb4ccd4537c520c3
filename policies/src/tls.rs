//! The top-level `tls` key: `{listen, certificates: [{hosts, cert, key}]}`, and the checks of
//! the files it names (readable, key not world-readable, PEM, not expired, key matches the
//! certificate), each reported at its line.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTls {
    pub listen: Option<String>,
    pub certificates: Option<Vec<RawTlsCertificate>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTlsCertificate {
    pub hosts: Option<Vec<String>>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// TLS termination by the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// Address of the TLS listener.
    pub listen: SocketAddr,
    /// Certificates, in file order (the first one naming a host wins).
    pub certificates: Vec<TlsCertificate>,
}

/// One certificate entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCertificate {
    /// Names served with it, lowercased: exact names, `*.example.com` wildcards (one label),
    /// `*` for the default certificate (unknown names and clients without SNI).
    pub hosts: Vec<String>,
    /// PEM certificate chain, leaf first (absolute path).
    pub cert: PathBuf,
    /// PEM private key (absolute path), not readable by other users.
    pub key: PathBuf,
}

/// Checks a certificate entry's files as `hako check` and `hako serve` do; the error names
/// which file (`"cert"` or `"key"`) and why.
pub fn check_files(cert: &Path, key: &Path) -> Result<(), (&'static str, String)> {
    check_files_at(cert, key, SystemTime::now())
}

fn check_files_at(cert: &Path, key: &Path, now: SystemTime) -> Result<(), (&'static str, String)> {
    use std::os::unix::fs::PermissionsExt;
    let key_meta = std::fs::metadata(key)
        .map_err(|e| ("key", format!("cannot read {}: {e}", key.display())))?;
    if key_meta.permissions().mode() & 0o004 != 0 {
        return Err((
            "key",
            format!(
                "{} is readable by every user (mode {:o}); `chmod o-r` it",
                key.display(),
                key_meta.permissions().mode() & 0o777
            ),
        ));
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            (
                "cert",
                format!("{}: not a PEM certificate: {e}", cert.display()),
            )
        })?;
    let Some(leaf) = chain.first() else {
        return Err(("cert", format!("{}: no CERTIFICATE block", cert.display())));
    };
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        (
            "key",
            format!("{}: not a PEM private key: {e}", key.display()),
        )
    })?;
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    match validity(leaf) {
        Some((_, not_after)) if not_after < now_s => {
            return Err((
                "cert",
                format!(
                    "{} expired {} days ago",
                    cert.display(),
                    (now_s - not_after) / 86_400
                ),
            ))
        }
        Some((not_before, _)) if not_before > now_s => {
            return Err(("cert", format!("{} is not valid yet", cert.display())))
        }
        Some(_) => {}
        None => {
            return Err((
                "cert",
                format!("{}: cannot read the certificate's validity", cert.display()),
            ))
        }
    }
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, private, &provider).map_err(|e| {
        (
            "key",
            format!(
                "{} does not fit certificate {}: {e}",
                key.display(),
                cert.display()
            ),
        )
    })?;
    Ok(())
}

/// Validates `tls` after the rest of the top level: `listen` must differ from the plain
/// `listen` and `admin`; every certificate entry needs hosts, `cert` and `key`, and its files
/// must pass [`check_files`]. Faults go to `fault(path, message)`.
pub(crate) fn validate(
    raw: RawTls,
    taken: &[(&str, SocketAddr)],
    resolve: &dyn Fn(&str) -> PathBuf,
    fault: &mut dyn FnMut(String, String),
) -> Option<Tls> {
    let listen = match raw
        .listen
        .as_deref()
        .map(|t| (t, t.trim().parse::<SocketAddr>()))
    {
        None => {
            fault(
                "tls".into(),
                "missing `listen`; the TLS listener's address, like `0.0.0.0:443`".into(),
            );
            None
        }
        Some((text, Err(_))) => {
            fault(
                "tls.listen".into(),
                format!("`{text}` is not an IP address with a port, like `0.0.0.0:443`"),
            );
            None
        }
        Some((_, Ok(a))) => {
            for (key, other) in taken {
                if a.port() == other.port()
                    && a.port() != 0
                    && (a.ip() == other.ip()
                        || a.ip().is_unspecified()
                        || other.ip().is_unspecified())
                {
                    fault(
                        "tls.listen".into(),
                        format!("{a} overlaps with {key} {other}"),
                    );
                }
            }
            Some(a)
        }
    };
    let mut certificates = Vec::new();
    match raw.certificates {
        None => fault(
            "tls".into(),
            "missing `certificates`; list at least one {hosts, cert, key}".into(),
        ),
        Some(list) if list.is_empty() => fault(
            "tls.certificates".into(),
            "must list at least one {hosts, cert, key}".into(),
        ),
        Some(list) => {
            for (i, c) in list.into_iter().enumerate() {
                let at = format!("tls.certificates[{i}]");
                let hosts = match c.hosts {
                    Some(h) if !h.is_empty() => {
                        let mut out = Vec::new();
                        for (j, host) in h.iter().enumerate() {
                            let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
                            let name = host.strip_prefix("*.").unwrap_or(&host);
                            let ok = host == "*"
                                || (!name.is_empty()
                                    && !name.contains('*')
                                    && name.bytes().all(|b| {
                                        b.is_ascii_alphanumeric() || b == b'-' || b == b'.'
                                    }));
                            if ok {
                                out.push(host);
                            } else {
                                fault(
                                    format!("{at}.hosts[{j}]"),
                                    format!(
                                        "`{host}` is not a host name, a `*.example.com` \
                                         wildcard or `*` (the default certificate)"
                                    ),
                                );
                            }
                        }
                        out
                    }
                    _ => {
                        fault(
                            format!("{at}.hosts"),
                            "list the names served with this certificate (`*` for the default)"
                                .into(),
                        );
                        Vec::new()
                    }
                };
                let (Some(cert), Some(key)) = (c.cert, c.key) else {
                    fault(at, "needs both `cert` and `key` (PEM files)".into());
                    continue;
                };
                let (cert, key) = (resolve(&cert), resolve(&key));
                if let Err((which, why)) = check_files(&cert, &key) {
                    fault(format!("{at}.{which}"), why);
                }
                certificates.push(TlsCertificate { hosts, cert, key });
            }
        }
    }
    Some(Tls {
        listen: listen?,
        certificates,
    })
}

/// One DER element: (tag, content, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | usize::from(b);
        }
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// notBefore and notAfter of an X.509 certificate, in Unix seconds.
fn validity(cert: &[u8]) -> Option<(i64, i64)> {
    let (_, cert, _) = der(cert)?;
    let (_, tbs, _) = der(cert)?;
    let mut rest = tbs;
    // [0] version (optional), serial, signature algorithm, issuer, then validity.
    let (tag, _, r) = der(rest)?;
    rest = if tag == 0xa0 { r } else { rest };
    for _ in 0..3 {
        rest = der(rest)?.2;
    }
    let (_, validity, _) = der(rest)?;
    let (t1, nb, r) = der(validity)?;
    let (t2, na, _) = der(r)?;
    Some((asn1_time(t1, nb)?, asn1_time(t2, na)?))
}

fn asn1_time(tag: u8, v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = s.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        0x18 => (s.get(..4)?.parse().ok()?, &s[4..]),
        _ => return None,
    };
    let num = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (mo, d, h, mi, se) = (num(0)?, num(2)?, num(4)?, num(6)?, num(8)?);
    Some(days_from_civil(year, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(asn1_time(0x17, b"700101000010Z"), Some(10));
        assert_eq!(asn1_time(0x18, b"20000301000000Z"), Some(11_017 * 86_400));
    }

    fn write_pair(
        dir: &Path,
        name: &str,
        params: rcgen::CertificateParams,
        key_mode: u32,
    ) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(key_mode)).unwrap();
        (c, k)
    }

    #[test]
    fn files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let params = || rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        let (c, k) = write_pair(dir.path(), "good", params(), 0o600);
        assert_eq!(check_files(&c, &k), Ok(()));
        let (_, other_key) = write_pair(dir.path(), "other", params(), 0o600);
        let (which, why) = check_files(&c, &other_key).unwrap_err();
        assert_eq!(which, "key");
        assert!(why.contains("does not fit"), "{why}");
        let (c2, k2) = write_pair(dir.path(), "open", params(), 0o644);
        let (which, why) = check_files(&c2, &k2).unwrap_err();
        assert_eq!(which, "key");
        assert!(why.contains("readable by every user"), "{why}");
        let mut old = params();
        old.not_before = rcgen::date_time_ymd(2020, 1, 1);
        old.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let (c3, k3) = write_pair(dir.path(), "old", old, 0o600);
        let (which, why) = check_files(&c3, &k3).unwrap_err();
        assert_eq!(which, "cert");
        assert!(why.contains("expired"), "{why}");
        let (which, _) = check_files(&c, &dir.path().join("missing.key")).unwrap_err();
        assert_eq!(which, "key");
    }
}
