//! TLS termination: SNI selection (exact, wildcard, default, none), ALPN h2 and http/1.1,
//! protocol versions, stalled handshakes, certificate reload under open connections, the
//! https redirect and `X-Forwarded-Proto`. Certificates come from a CA generated per test.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hako_proxy::{
    serve_listeners, Listeners, ProxyOptions, Route, Routes, RoutesHandle, ServeReport,
    TlsCertificate, TlsHandle,
};
use http::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A leaf certificate for `names`; its DER is returned to compare with what a client saw.
    fn leaf(&self, names: &[&str], hosts: &[&str]) -> (TlsCertificate, CertificateDer<'static>) {
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let der = cert.der().clone();
        let tls = TlsCertificate::from_der(
            hosts.iter().map(|s| s.to_string()).collect(),
            vec![der.clone()],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
        (tls, der)
    }

    fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

struct TlsProxy {
    plain: SocketAddr,
    tls: SocketAddr,
    handle: Arc<TlsHandle>,
    _upstream: TestUpstream,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<ServeReport>>>,
}

impl TlsProxy {
    /// Proxy with a plain and a TLS listener; `app` (host `a.test` and `*.w.test` names)
    /// forwards to the test upstream, `secure` (host `secure.test`) redirects plain requests.
    async fn start(certs: &[TlsCertificate], opts: ProxyOptions) -> TlsProxy {
        let upstream = TestUpstream::start().await;
        let activator = Arc::new(FakeActivator::default());
        activator.set("app", serve_up(1, upstream.addr));
        activator.set("secure", serve_up(1, upstream.addr));
        let mut secure = route("secure", "secure.test", None);
        secure.redirect_https = true;
        let routes = vec![
            route("app", "a.test", None),
            route("app", "x.w.test", None),
            route("app", "other.test", None),
            secure,
        ];
        let routes = Arc::new(RoutesHandle::new(Routes::new(routes)));
        let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (plain_addr, tls_addr) = (plain.local_addr().unwrap(), tls.local_addr().unwrap());
        let handle = Arc::new(TlsHandle::new(certs).unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_listeners(
            Listeners {
                plain: Some(plain),
                tls: Some((tls, Arc::clone(&handle))),
            },
            routes,
            activator,
            opts,
            async move {
                let _ = rx.await;
            },
            Duration::from_secs(2),
        ));
        TlsProxy {
            plain: plain_addr,
            tls: tls_addr,
            handle,
            _upstream: upstream,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    async fn connect(
        &self,
        ca: &Ca,
        sni: &str,
        alpn: &[&[u8]],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.tls).await?;
        let connector = tokio_rustls::TlsConnector::from(ca.client_config(alpn));
        connector
            .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
            .await
    }

    async fn stop(mut self) -> ServeReport {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().unwrap().await.unwrap().unwrap()
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

fn peer_leaf(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// An HTTP/1.1 client over an established TLS stream.
async fn h1(s: TlsStream<TcpStream>) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

async fn h1_get(
    sender: &mut hyper::client::conn::http1::SendRequest<TestBody>,
    host: &str,
    path: &str,
) -> (StatusCode, http::HeaderMap, String) {
    sender.ready().await.unwrap();
    collect(sender.send_request(get_req(host, path)).await.unwrap()).await
}

#[tokio::test]
async fn sni_selects_exact_and_wildcard_certificates_and_forwarded_proto_is_https() {
    let ca = Ca::new();
    let (a, a_der) = ca.leaf(&["a.test"], &["a.test"]);
    let (w, w_der) = ca.leaf(&["*.w.test"], &["*.w.test"]);
    let proxy = TlsProxy::start(&[a, w], ProxyOptions::default()).await;

    let s = proxy.connect(&ca, "a.test", &[b"http/1.1"]).await.unwrap();
    assert_eq!(peer_leaf(&s), a_der, "exact name");
    let mut c = h1(s).await;
    let (status, _, body) = h1_get(&mut c, "a.test", "/headers").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("x-forwarded-proto: https"),
        "app sees https: {body}"
    );

    let s = proxy.connect(&ca, "x.w.test", &[]).await.unwrap();
    assert_eq!(peer_leaf(&s), w_der, "wildcard");
    let mut c = h1(s).await;
    let (status, _, body) = h1_get(&mut c, "x.w.test", "/x").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello /x"));

    // The same app over the plain listener is told http.
    let (status, _, body) = {
        let mut c = Client::connect(proxy.plain).await;
        collect(c.send(get_req("a.test", "/headers")).await).await
    };
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    proxy.stop().await;
}

#[tokio::test]
async fn unknown_sni_gets_the_default_certificate_or_a_handshake_alert() {
    let ca = Ca::new();
    let (a, _) = ca.leaf(&["a.test"], &["a.test"]);
    let proxy = TlsProxy::start(std::slice::from_ref(&a), ProxyOptions::default()).await;
    let err = proxy
        .connect(&ca, "other.test", &[])
        .await
        .expect_err("no certificate for other.test and no default");
    assert!(
        err.to_string().contains("alert") || err.to_string().contains("Alert"),
        "a TLS alert, not a closed socket: {err}"
    );
    // The proxy is unharmed: the known name still works.
    let s = proxy.connect(&ca, "a.test", &[]).await.unwrap();
    let (status, _, _) = h1_get(&mut h1(s).await, "a.test", "/").await;
    assert_eq!(status, StatusCode::OK);
    let report = proxy.stop().await;
    assert_eq!(report.tls_failed, 1, "{report:?}");

    // With a `*` entry, unknown names get that certificate (never a.test's).
    let (d, d_der) = ca.leaf(&["other.test"], &["*"]);
    let proxy = TlsProxy::start(&[a, d], ProxyOptions::default()).await;
    let s = proxy.connect(&ca, "other.test", &[]).await.unwrap();
    assert_eq!(peer_leaf(&s), d_der);
    let (status, _, _) = h1_get(&mut h1(s).await, "other.test", "/").await;
    assert_eq!(status, StatusCode::OK);
    proxy.stop().await;
}

#[tokio::test]
async fn alpn_h2_serves_http2_and_http11_is_offered_too() {
    let ca = Ca::new();
    let (a, _) = ca.leaf(&["a.test"], &["a.test"]);
    let proxy = TlsProxy::start(&[a], ProxyOptions::default()).await;

    let s = proxy
        .connect(&ca, "a.test", &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, TestBody>(
        TokioExecutor::new(),
        TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // Several streams on one connection, concurrently.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let req = Request::get(format!("https://a.test/n{i}"))
            .body(empty())
            .unwrap();
        let fut = sender.send_request(req);
        tasks.push(tokio::spawn(
            async move { collect(fut.await.unwrap()).await },
        ));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, _, body) = t.await.unwrap();
        assert_eq!((status, body), (StatusCode::OK, format!("hello /n{i}")));
    }
    let req = Request::get("https://a.test/headers")
        .body(empty())
        .unwrap();
    let (_, _, body) = collect(sender.send_request(req).await.unwrap()).await;
    assert!(body.contains("x-forwarded-proto: https"), "{body}");

    let s = proxy.connect(&ca, "a.test", &[b"http/1.1"]).await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, _, _) = h1_get(&mut h1(s).await, "a.test", "/").await;
    assert_eq!(status, StatusCode::OK);
    proxy.stop().await;
}

/// A TLS 1.1 ClientHello (no supported_versions extension) that a TLS 1.1 server with this
/// test's ECDSA P-256 certificate could accept: ECDHE-ECDSA CBC suites, P-256, uncompressed
/// points.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x09, 0xc0, 0x0a]);
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    let ext: [u8; 16] = [
        0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17, // supported_groups: secp256r1
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // ec_point_formats: uncompressed
        0xff, 0x01, // renegotiation_info (below)
    ];
    let mut exts = ext.to_vec();
    exts.extend_from_slice(&[0x00, 0x01, 0x00]);
    // server_name: a.test (a name the server has a certificate for)
    exts.extend_from_slice(&[0x00, 0x00, 0x00, 0x0b, 0x00, 0x09, 0x00, 0x00, 0x06]);
    exts.extend_from_slice(b"a.test");
    // signature_algorithms: ecdsa_secp256r1_sha256, ecdsa_sha1
    exts.extend_from_slice(&[0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x02, 0x03]);
    body.extend_from_slice(&[(exts.len() >> 8) as u8, exts.len() as u8]);
    body.extend_from_slice(&exts);
    let mut hs = vec![0x01, 0x00, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01, (hs.len() >> 8) as u8, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

#[tokio::test]
async fn tls_1_1_is_refused_with_a_protocol_version_alert() {
    let ca = Ca::new();
    let (a, _) = ca.leaf(&["a.test"], &["a.test"]);
    let proxy = TlsProxy::start(&[a], ProxyOptions::default()).await;
    let mut tcp = TcpStream::connect(proxy.tls).await.unwrap();
    tcp.write_all(&tls11_client_hello()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf))
        .await
        .expect("the server closes after its alert")
        .ok();
    assert!(buf.len() >= 7, "an alert record: {buf:?}");
    assert_eq!(buf[0], 0x15, "alert, not a ServerHello: {buf:?}");
    assert_eq!(buf[6], 70, "protocol_version: {buf:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_stalled_handshake_is_closed_at_the_header_timeout() {
    let ca = Ca::new();
    let (a, _) = ca.leaf(&["a.test"], &["a.test"]);
    let opts = ProxyOptions {
        header_read_timeout: Duration::from_millis(300),
        ..ProxyOptions::default()
    };
    let proxy = TlsProxy::start(&[a], opts).await;
    // One connection sends nothing, one stops in the middle of its ClientHello.
    let mut silent = TcpStream::connect(proxy.tls).await.unwrap();
    let mut partial = TcpStream::connect(proxy.tls).await.unwrap();
    partial
        .write_all(&tls11_client_hello()[..20])
        .await
        .unwrap();
    // Meanwhile a normal client is served.
    let s = proxy.connect(&ca, "a.test", &[]).await.unwrap();
    let (status, _, _) = h1_get(&mut h1(s).await, "a.test", "/").await;
    assert_eq!(status, StatusCode::OK);
    for stream in [&mut silent, &mut partial] {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf))
            .await
            .expect("closed by the proxy within the timeout")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
    }
    let report = proxy.stop().await;
    assert!(report.timed_out >= 2, "{report:?}");
}

#[tokio::test]
async fn reload_swaps_the_certificate_and_open_connections_keep_working() {
    let ca = Ca::new();
    let (old, old_der) = ca.leaf(&["a.test"], &["a.test"]);
    let proxy = TlsProxy::start(&[old], ProxyOptions::default()).await;
    let s = proxy.connect(&ca, "a.test", &[]).await.unwrap();
    assert_eq!(peer_leaf(&s), old_der);
    let mut open = h1(s).await;
    let (status, _, _) = h1_get(&mut open, "a.test", "/1").await;
    assert_eq!(status, StatusCode::OK);

    let (new, new_der) = ca.leaf(&["a.test"], &["a.test"]);
    assert_ne!(old_der, new_der);
    proxy.handle.store(&[new]);

    let s = proxy.connect(&ca, "a.test", &[]).await.unwrap();
    assert_eq!(
        peer_leaf(&s),
        new_der,
        "new handshakes get the new certificate"
    );
    let (status, _, _) = h1_get(&mut h1(s).await, "a.test", "/2").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = h1_get(&mut open, "a.test", "/3").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "hello /3"),
        "the connection opened before the reload still serves"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn redirect_https_answers_308_on_the_plain_listener_only() {
    let ca = Ca::new();
    let (s_cert, _) = ca.leaf(&["secure.test"], &["secure.test"]);
    let proxy = TlsProxy::start(&[s_cert], ProxyOptions::default()).await;
    let mut c = Client::connect(proxy.plain).await;
    let (status, headers, _) = collect(c.send(get_req("secure.test:80", "/p/q?x=1")).await).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        headers.get("location").unwrap(),
        &format!("https://secure.test:{}/p/q?x=1", proxy.tls.port())
    );
    // Over TLS the app is reached.
    let s = proxy.connect(&ca, "secure.test", &[]).await.unwrap();
    let (status, _, body) = h1_get(&mut h1(s).await, "secure.test", "/p").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello /p"));
    proxy.stop().await;
}

#[test]
fn routes_carry_redirect_https() {
    let r = Route {
        app: "x".into(),
        hosts: vec!["x.test".into()],
        path_prefix: None,
        redirect_https: true,
    };
    assert_eq!(Routes::new(vec![r]).resolve("x.test", "/"), Some("x"));
}
