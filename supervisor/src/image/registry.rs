//! A client of the OCI distribution API: manifests and blobs, anonymous, bearer-token
//! (`WWW-Authenticate: Bearer realm=…,service=…,scope=…`) or basic auth. TLS by rustls with
//! the system's roots plus an optional `ca_file`; plain HTTP only for `insecure` registries.
//! Credentials are never logged.
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// Where and how to reach one registry (`registries:` in the config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrySettings {
    pub host: String,
    pub insecure: bool,
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
}

/// A registry failure; carries the URL (never a credential).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{url}: HTTP {status}{detail}")]
    Status {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("{url}: not found (HTTP 404)")]
    NotFound { url: String },
    #[error("registry {host}: {reason}")]
    Setup { host: String, reason: String },
}

/// The accepted manifest media types, index types first.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Longest wait for a TCP connection to the registry.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a response's head once the request is sent.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a response body may go without a byte before the pull is abandoned (a stalled
/// registry or network must not hold a boot, or `hako image pull`, for ever).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A client for one registry host and repository.
pub struct RegistryClient {
    base: String,
    name: String,
    settings: RegistrySettings,
    client: HttpsClient,
    auth: tokio::sync::Mutex<Option<String>>,
}

/// A manifest as fetched: its bytes, its media type and the digest the registry claims (the
/// caller verifies).
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub media_type: Option<String>,
}

fn tls_config(s: &RegistrySettings) -> Result<rustls::ClientConfig, RegistryError> {
    let setup = |reason: String| RegistryError::Setup {
        host: s.host.clone(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        let _ = roots.add(c);
    }
    if let Some(ca) = &s.ca_file {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(ca)
            .map_err(|e| setup(format!("ca_file {}: {e}", ca.display())))?;
        for c in certs {
            let c = c.map_err(|e| setup(format!("ca_file {}: {e}", ca.display())))?;
            roots
                .add(c)
                .map_err(|e| setup(format!("ca_file {}: {e}", ca.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Parses `Bearer realm="…",service="…",scope="…"` (or `Basic …`).
pub fn parse_challenge(h: &str) -> Option<(String, Vec<(String, String)>)> {
    let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    let mut params = Vec::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            match after.find(',') {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            }
        };
        params.push((k.trim().to_ascii_lowercase(), v.to_owned()));
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some((scheme.to_ascii_lowercase(), params))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl RegistryClient {
    pub fn new(name: &str, settings: RegistrySettings) -> Result<RegistryClient, RegistryError> {
        let tls = tls_config(&settings)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let scheme = if settings.insecure { "http" } else { "https" };
        Ok(RegistryClient {
            base: format!("{scheme}://{}", settings.host),
            name: name.to_owned(),
            settings,
            client,
            auth: tokio::sync::Mutex::new(None),
        })
    }

    fn credentials(&self) -> Result<Option<(String, String)>, RegistryError> {
        let (Some(u), Some(pf)) = (&self.settings.username, &self.settings.password_file) else {
            return Ok(None);
        };
        let pw = std::fs::read_to_string(pf).map_err(|e| RegistryError::Setup {
            host: self.settings.host.clone(),
            reason: format!("password_file {}: {e}", pf.display()),
        })?;
        Ok(Some((
            u.clone(),
            pw.trim_end_matches(['\n', '\r']).to_owned(),
        )))
    }

    fn basic(&self) -> Result<Option<String>, RegistryError> {
        Ok(self.credentials()?.map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        }))
    }

    async fn send(
        &self,
        url: &str,
        accept: Option<&str>,
        auth: Option<&str>,
    ) -> Result<http::Response<hyper::body::Incoming>, RegistryError> {
        let mut url = url.to_owned();
        let mut auth = auth.map(str::to_owned);
        for _ in 0..6 {
            let uri: Uri = url.parse().map_err(|e| RegistryError::Http {
                url: url.clone(),
                reason: format!("bad URL: {e}"),
            })?;
            if uri.scheme_str() == Some("http") && !self.settings.insecure {
                return Err(RegistryError::Http {
                    url,
                    reason: "plain HTTP refused (set insecure: true for this registry)".into(),
                });
            }
            let mut req = Request::get(uri.clone()).header(header::USER_AGENT, "hako");
            if let Some(a) = accept {
                req = req.header(header::ACCEPT, a);
            }
            if let Some(a) = &auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            let req = req.body(Empty::new()).expect("a valid request");
            let resp = tokio::time::timeout(RESPONSE_TIMEOUT, self.client.request(req))
                .await
                .map_err(|_| RegistryError::Http {
                    url: url.clone(),
                    reason: format!("no response within {} s", RESPONSE_TIMEOUT.as_secs()),
                })?
                .map_err(|e| RegistryError::Http {
                    url: url.clone(),
                    reason: format!(
                        "{e}: {}",
                        std::error::Error::source(&e)
                            .map(|s| s.to_string())
                            .unwrap_or_default()
                    ),
                })?;
            if resp.status().is_redirection() {
                let loc = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| RegistryError::Http {
                        url: url.clone(),
                        reason: "redirect without Location".into(),
                    })?;
                let next = if loc.starts_with("http://") || loc.starts_with("https://") {
                    loc.to_owned()
                } else {
                    format!(
                        "{}://{}{loc}",
                        uri.scheme_str().unwrap_or("https"),
                        uri.authority().map(|a| a.as_str()).unwrap_or("")
                    )
                };
                // Credentials go only to the registry itself.
                let same = next
                    .parse::<Uri>()
                    .ok()
                    .and_then(|u| u.authority().cloned())
                    == uri.authority().cloned();
                if !same {
                    auth = None;
                }
                url = next;
                continue;
            }
            return Ok(resp);
        }
        Err(RegistryError::Http {
            url,
            reason: "too many redirects".into(),
        })
    }

    /// Obtains an Authorization value after a 401 with `challenge`.
    async fn authorize(&self, challenge: &str, url: &str) -> Result<String, RegistryError> {
        let (scheme, params) = parse_challenge(challenge).ok_or_else(|| RegistryError::Http {
            url: url.to_owned(),
            reason: "unreadable WWW-Authenticate".into(),
        })?;
        let get = |k: &str| {
            params
                .iter()
                .find(|(pk, _)| pk == k)
                .map(|(_, v)| v.clone())
        };
        match scheme.as_str() {
            "basic" => self.basic()?.ok_or_else(|| RegistryError::Status {
                url: url.to_owned(),
                status: 401,
                detail: " (the registry wants a username and password_file)".into(),
            }),
            "bearer" => {
                let realm = get("realm").ok_or_else(|| RegistryError::Http {
                    url: url.to_owned(),
                    reason: "Bearer challenge without realm".into(),
                })?;
                let scope =
                    get("scope").unwrap_or_else(|| format!("repository:{}:pull", self.name));
                let mut turl = format!("{realm}?scope={}", urlencode(&scope));
                if let Some(s) = get("service") {
                    turl.push_str(&format!("&service={}", urlencode(&s)));
                }
                let basic = self.basic()?;
                let resp = self.send(&turl, None, basic.as_deref()).await?;
                if !resp.status().is_success() {
                    return Err(RegistryError::Status {
                        url: realm,
                        status: resp.status().as_u16(),
                        detail: " (token request refused)".into(),
                    });
                }
                let body = collect(resp, &realm, 1 << 20).await?;
                #[derive(serde::Deserialize)]
                struct Tok {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let t: Tok = serde_json::from_slice(&body).map_err(|e| RegistryError::Http {
                    url: realm.clone(),
                    reason: format!("token response: {e}"),
                })?;
                let tok = t
                    .token
                    .or(t.access_token)
                    .ok_or_else(|| RegistryError::Http {
                        url: realm,
                        reason: "token response without a token".into(),
                    })?;
                Ok(format!("Bearer {tok}"))
            }
            other => Err(RegistryError::Http {
                url: url.to_owned(),
                reason: format!("unsupported auth scheme {other:?}"),
            }),
        }
    }

    /// GET with auth handling; a non-2xx answer is an error.
    async fn get(
        &self,
        path: &str,
        accept: Option<&str>,
    ) -> Result<http::Response<hyper::body::Incoming>, RegistryError> {
        let url = format!("{}/v2/{}/{path}", self.base, self.name);
        let auth = self.auth.lock().await.clone();
        let mut resp = self.send(&url, accept, auth.as_deref()).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let ch = resp
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let a = self.authorize(&ch, &url).await?;
            *self.auth.lock().await = Some(a.clone());
            resp = self.send(&url, accept, Some(&a)).await?;
        }
        match resp.status() {
            s if s.is_success() => Ok(resp),
            StatusCode::NOT_FOUND => Err(RegistryError::NotFound { url }),
            s => {
                let body = collect(resp, &url, 4096).await.unwrap_or_default();
                let detail = String::from_utf8_lossy(&body);
                let detail: String = detail.chars().take(200).collect();
                Err(RegistryError::Status {
                    url,
                    status: s.as_u16(),
                    detail: if detail.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", detail.trim())
                    },
                })
            }
        }
    }

    /// A manifest or index by tag or digest (at most 4 MiB).
    pub async fn manifest(&self, reference: &str) -> Result<Fetched, RegistryError> {
        let resp = self
            .get(&format!("manifests/{reference}"), Some(MANIFEST_ACCEPT))
            .await?;
        let media_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_owned());
        let url = format!("{}/v2/{}/manifests/{reference}", self.base, self.name);
        let bytes = collect(resp, &url, 4 << 20).await?;
        Ok(Fetched { bytes, media_type })
    }

    /// A small blob (a config), at most `limit` bytes.
    pub async fn blob_bytes(&self, digest: &str, limit: usize) -> Result<Vec<u8>, RegistryError> {
        let resp = self.get(&format!("blobs/{digest}"), None).await?;
        let url = format!("{}/v2/{}/blobs/{digest}", self.base, self.name);
        collect(resp, &url, limit).await
    }

    /// A blob as a blocking reader fed by a task (a bounded queue of chunks: memory stays
    /// small whatever the blob's size). `progress` is called with each chunk's length.
    pub async fn blob_reader(
        &self,
        digest: &str,
        progress: Arc<dyn Fn(u64) + Send + Sync>,
    ) -> Result<ChannelReader, RegistryError> {
        let resp = self.get(&format!("blobs/{digest}"), None).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(16);
        let mut body = resp.into_body();
        tokio::spawn(async move {
            loop {
                let Ok(frame) = tokio::time::timeout(STALL_TIMEOUT, body.frame()).await else {
                    let _ = tx
                        .send(Err(io::Error::new(io::ErrorKind::TimedOut, stalled())))
                        .await;
                    break;
                };
                match frame {
                    None => break,
                    Some(Ok(f)) => {
                        if let Ok(data) = f.into_data() {
                            progress(data.len() as u64);
                            if tx.send(Ok(data)).await.is_err() {
                                break;
                            }
                        }
                    }
                    Some(Err(e)) => {
                        let _ = tx.send(Err(io::Error::other(e))).await;
                        break;
                    }
                }
            }
        });
        Ok(ChannelReader {
            rx,
            cur: Bytes::new(),
        })
    }
}

/// The body of a response, refused past `limit` bytes.
async fn collect(
    resp: http::Response<hyper::body::Incoming>,
    url: &str,
    limit: usize,
) -> Result<Vec<u8>, RegistryError> {
    let mut body = resp.into_body();
    let mut out = Vec::new();
    loop {
        let f = tokio::time::timeout(STALL_TIMEOUT, body.frame())
            .await
            .map_err(|_| RegistryError::Http {
                url: url.to_owned(),
                reason: stalled(),
            })?;
        let Some(f) = f else { break };
        let f = f.map_err(|e| RegistryError::Http {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        if let Ok(d) = f.into_data() {
            if out.len() + d.len() > limit {
                return Err(RegistryError::Http {
                    url: url.to_owned(),
                    reason: format!("response larger than {limit} bytes"),
                });
            }
            out.extend_from_slice(&d);
        }
    }
    Ok(out)
}

fn stalled() -> String {
    format!("no data for {} s", STALL_TIMEOUT.as_secs())
}

/// A blocking `Read` over chunks sent by an async task; use from a blocking thread.
pub struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        )
        .unwrap();
        assert_eq!(s, "bearer");
        assert_eq!(p[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(p[1], ("service".into(), "registry.example".into()));
        assert_eq!(p[2], ("scope".into(), "repository:a/b:pull".into()));
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(s, "basic");
        assert_eq!(p[0].1, "Registry Realm");
        assert_eq!(
            urlencode("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
    }

    fn insecure_client(addr: std::net::SocketAddr) -> RegistryClient {
        let settings = RegistrySettings {
            host: addr.to_string(),
            insecure: true,
            ..RegistrySettings::default()
        };
        RegistryClient::new("app", settings).expect("client")
    }

    /// A registry that accepts the connection and never answers: the pull fails naming the
    /// URL once `RESPONSE_TIMEOUT` has passed (paused time: no real wait), instead of hanging.
    #[tokio::test(start_paused = true)]
    async fn a_silent_registry_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
            drop(sock);
        });
        let Err(err) = insecure_client(addr).manifest("latest").await else {
            panic!("a silent registry gave a manifest");
        };
        let text = err.to_string();
        assert!(text.contains("no response within 30 s"), "{text}");
        assert!(
            text.contains(&format!("http://{addr}/v2/app/manifests/latest")),
            "{text}"
        );
        hold.abort();
    }

    /// A registry that sends the head and then stalls in the body: the blob read fails after
    /// `STALL_TIMEOUT` with a timed-out error.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
                .await
                .unwrap();
            std::future::pending::<()>().await;
            drop(sock);
        });
        let err = insecure_client(addr)
            .blob_bytes("sha256:00", 1000)
            .await
            .expect_err("stalled");
        assert!(err.to_string().contains("no data for 60 s"), "{err}");
        hold.abort();
    }
}
