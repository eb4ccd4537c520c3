//! TLS termination: certificates chosen by SNI, swapped in place on reload.
//!
//! The server configuration is built once (TLS 1.2 and 1.3 only, ALPN `h2` then `http/1.1`,
//! the `ring` provider); the certificates live behind a lock in [`CertResolver`], so a reload
//! replaces them for new handshakes while established connections keep the session they have.
//!
//! Selection by the client's SNI name: an exact host first, then a wildcard `*.example.com`
//! (one label, as browsers match), then the catch-all entry `*` (the default certificate, also
//! used when the client sends no SNI); with no match and no default the handshake fails with
//! an alert (`unrecognized_name` / `handshake_failure`), never another tenant's certificate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// ALPN protocols offered, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The key does not fit the certificate, or is of a type rustls cannot sign with.
    #[error("certificate {cert} and key {key}: {message}")]
    Key {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A host name in an entry is not usable for SNI matching.
    #[error("certificate host '{0}' is not a name, a `*.` wildcard or `*`")]
    BadHost(String),
    /// rustls refused the server configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// One certificate entry: the names it serves (lowercase; `*.example.com` wildcards, `*` for
/// the default) and the certified key.
#[derive(Clone)]
pub struct TlsCertificate {
    /// Names the certificate is used for.
    pub hosts: Vec<String>,
    /// Chain and signing key.
    pub key: Arc<CertifiedKey>,
}

impl std::fmt::Debug for TlsCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCertificate")
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsCertificate {
    /// Reads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or
    /// SEC1) and checks that the key belongs to the leaf certificate.
    pub fn from_pem_files(hosts: Vec<String>, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let pem = |path: &Path, message: String| TlsError::Pem {
            path: path.to_path_buf(),
            message,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| pem(cert, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| pem(cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(pem(cert, "no CERTIFICATE block".to_string()));
        }
        let private = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e.to_string()))?;
        Self::from_der(hosts, chain, private).map_err(|e| match e {
            TlsError::Config(e) => TlsError::Key {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                message: e.to_string(),
            },
            other => other,
        })
    }

    /// The same from DER values.
    pub fn from_der(
        hosts: Vec<String>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let key = CertifiedKey::from_der(chain, key, &provider())?;
        let hosts = hosts
            .into_iter()
            .map(|h| {
                let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
                let name = h.strip_prefix("*.").unwrap_or(&h);
                let ok = h == "*"
                    || (!name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
                if ok {
                    Ok(h)
                } else {
                    Err(TlsError::BadHost(h))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(TlsCertificate {
            hosts,
            key: Arc::new(key),
        })
    }
}

/// Certificates by name; immutable, swapped whole.
#[derive(Default)]
struct Table {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl Table {
    /// First entry wins for a name written twice.
    fn new(certs: &[TlsCertificate]) -> Self {
        let mut t = Table::default();
        for c in certs {
            for h in &c.hosts {
                if h == "*" {
                    t.default.get_or_insert_with(|| Arc::clone(&c.key));
                } else if let Some(parent) = h.strip_prefix("*.") {
                    t.wildcard
                        .entry(parent.to_string())
                        .or_insert_with(|| Arc::clone(&c.key));
                } else {
                    t.exact
                        .entry(h.clone())
                        .or_insert_with(|| Arc::clone(&c.key));
                }
            }
        }
        t
    }

    fn select(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some(Arc::clone(k));
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(k) = self.wildcard.get(parent) {
                    return Some(Arc::clone(k));
                }
            }
        }
        self.default.clone()
    }
}

/// The SNI resolver behind every TLS handshake; [`TlsHandle::store`] swaps its table.
struct CertResolver {
    table: RwLock<Arc<Table>>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertResolver")
    }
}

impl CertResolver {
    fn load(&self) -> Arc<Table> {
        match self.table.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name();
        let found = self.load().select(sni);
        if found.is_none() {
            tracing::debug!(
                sni = sni.unwrap_or("-"),
                "TLS: no certificate for this name"
            );
        }
        found
    }
}

/// The TLS side of the proxy: a server configuration whose certificates can be replaced while
/// it serves.
pub struct TlsHandle {
    resolver: Arc<CertResolver>,
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsHandle").finish_non_exhaustive()
    }
}

impl TlsHandle {
    /// A handle serving `certs`.
    pub fn new(certs: &[TlsCertificate]) -> Result<Self, TlsError> {
        let resolver = Arc::new(CertResolver {
            table: RwLock::new(Arc::new(Table::new(certs))),
        });
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(TlsHandle {
            resolver,
            config: Arc::new(config),
        })
    }

    /// Replaces the certificates for new handshakes; open connections are not touched.
    pub fn store(&self, certs: &[TlsCertificate]) {
        let table = Arc::new(Table::new(certs));
        match self.resolver.table.write() {
            Ok(mut g) => *g = table,
            Err(p) => *p.into_inner() = table,
        }
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(names: &[&str]) -> TlsCertificate {
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        TlsCertificate::from_der(
            names.iter().map(|s| s.to_string()).collect(),
            vec![ck.cert.der().clone()],
            PrivateKeyDer::try_from(ck.key_pair.serialize_der()).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let a = key(&["a.example.com"]);
        let w = key(&["*.example.com"]);
        let d = key(&["*"]);
        let t = Table::new(&[a.clone(), w.clone(), d.clone()]);
        let is = |got: Option<Arc<CertifiedKey>>, want: &TlsCertificate| {
            Arc::ptr_eq(&got.unwrap(), &want.key)
        };
        assert!(is(t.select(Some("A.Example.com")), &a));
        assert!(is(t.select(Some("b.example.com")), &w));
        // A wildcard covers one label only.
        assert!(is(t.select(Some("x.b.example.com")), &d));
        assert!(is(t.select(Some("example.com")), &d));
        assert!(is(t.select(None), &d));
        let no_default = Table::new(&[a, w]);
        assert!(no_default.select(Some("other.org")).is_none());
        assert!(no_default.select(None).is_none());
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let one = rcgen::generate_simple_self_signed(vec!["one.test".to_string()]).unwrap();
        let two = rcgen::generate_simple_self_signed(vec!["two.test".to_string()]).unwrap();
        let err = TlsCertificate::from_der(
            vec!["one.test".into()],
            vec![one.cert.der().clone()],
            PrivateKeyDer::try_from(two.key_pair.serialize_der()).unwrap(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("key"), "{err}");
    }
}
