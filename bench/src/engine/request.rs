//! What to connect to and what to send: the target, the request shape, and the prepared
//! request template cloned per send.
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::Full;

use super::EngineError;

/// Where to connect and what to ask for.
#[derive(Debug, Clone)]
pub struct Target {
    /// Resolved socket address of the URL's host.
    pub addr: SocketAddr,
    /// `host[:port]` of the URL.
    pub authority: String,
    /// Path and query (at least `/`).
    pub path: String,
}

impl Target {
    /// Parses an `http://host[:port]/path` URL and resolves its address.
    pub async fn resolve(url: &str) -> Result<Self, EngineError> {
        let bad = |reason: &str| EngineError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => return Err(bad(&format!("scheme {other} not supported (http only)"))),
            None => return Err(bad("missing scheme, expected http://")),
        }
        let auth = uri.authority().ok_or_else(|| bad("missing host"))?;
        let port = auth.port_u16().unwrap_or(80);
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        let lookup = format!("{host}:{port}");
        let addr = tokio::net::lookup_host(lookup.clone())
            .await
            .map_err(|source| EngineError::Resolve {
                authority: lookup.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| EngineError::Resolve {
                authority: lookup,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
            })?;
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        Ok(Self {
            addr,
            authority: auth.as_str().to_string(),
            path,
        })
    }
}

/// What every request looks like.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// Method (`-X`).
    pub method: Method,
    /// Extra headers (`-H`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body (`--body` / `--body-file`).
    pub body: Bytes,
    /// Host header override (`--host`); the connection still goes to the URL's address.
    pub host: Option<String>,
    /// h2c with prior knowledge instead of HTTP/1.1.
    pub http2: bool,
}

impl Default for RequestSpec {
    fn default() -> Self {
        Self {
            method: Method::GET,
            headers: Vec::new(),
            body: Bytes::new(),
            host: None,
            http2: false,
        }
    }
}

/// Parses `Name: value`.
pub fn parse_header(h: &str) -> Result<(HeaderName, HeaderValue), EngineError> {
    let bad = || EngineError::Header {
        header: h.to_string(),
    };
    let (k, v) = h.split_once(':').ok_or_else(bad)?;
    let name = HeaderName::from_bytes(k.trim().as_bytes()).map_err(|_| bad())?;
    let value = HeaderValue::from_str(v.trim()).map_err(|_| bad())?;
    Ok((name, value))
}

/// Serializes an HTTP/1.1 request (Host first, then the other headers, then Content-Length when
/// there is a body or the method usually carries one).
pub fn serialize_h1(method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut put = |k: &str, v: &[u8]| {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    };
    if let Some(h) = headers.get(HOST) {
        put("Host", h.as_bytes());
    }
    for (k, v) in headers.iter().filter(|(k, _)| *k != HOST) {
        put(k.as_str(), v.as_bytes());
    }
    let needs_length =
        !body.is_empty() || matches!(*method, Method::POST | Method::PUT | Method::PATCH);
    if needs_length && !headers.contains_key(http::header::CONTENT_LENGTH) {
        put("content-length", body.len().to_string().as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// A prepared request: cheap to clone per send.
#[derive(Debug, Clone)]
pub struct Template {
    pub(super) method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    pub(super) http2: bool,
    /// The whole HTTP/1.1 request, serialized once.
    pub(super) raw: Bytes,
}

impl Template {
    /// Prepares requests for `target` as described by `spec`.
    pub fn new(target: &Target, spec: &RequestSpec) -> Result<Self, EngineError> {
        let authority = spec
            .host
            .clone()
            .unwrap_or_else(|| target.authority.clone());
        let bad_host = || EngineError::Option {
            what: "host",
            reason: format!("{authority:?} is not a valid authority"),
        };
        let uri: Uri = if spec.http2 {
            format!("http://{authority}{}", target.path)
                .parse()
                .map_err(|_| bad_host())?
        } else {
            target.path.parse().map_err(|_| EngineError::Url {
                url: target.path.clone(),
                reason: "invalid path".into(),
            })?
        };
        let mut headers = HeaderMap::new();
        if !spec.http2 {
            headers.insert(
                HOST,
                HeaderValue::from_str(&authority).map_err(|_| bad_host())?,
            );
        }
        for (k, v) in &spec.headers {
            if k == HOST {
                // -H 'Host: x' is the same as --host x.
                if !spec.http2 {
                    headers.insert(HOST, v.clone());
                }
                continue;
            }
            headers.append(k.clone(), v.clone());
        }
        let raw = serialize_h1(&spec.method, &target.path, &headers, &spec.body);
        Ok(Self {
            method: spec.method.clone(),
            uri,
            headers,
            body: spec.body.clone(),
            http2: spec.http2,
            raw,
        })
    }

    /// Builds one request.
    pub fn build(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }

    /// The serialized HTTP/1.1 request.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Whether requests are sent over h2c.
    pub fn is_http2(&self) -> bool {
        self.http2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parsing() {
        let (k, v) = parse_header("X-Test:  hello world ").unwrap();
        assert_eq!(k.as_str(), "x-test");
        assert_eq!(v, "hello world");
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("bad name: x").is_err());
    }

    #[tokio::test]
    async fn h1_serialization() {
        let t = Target::resolve("http://127.0.0.1:8080/p?q=1")
            .await
            .unwrap();
        let spec = RequestSpec {
            headers: vec![
                parse_header("X-A: 1").unwrap(),
                parse_header("Host: other.local").unwrap(),
            ],
            ..Default::default()
        };
        let tpl = Template::new(&t, &spec).unwrap();
        assert_eq!(
            tpl.raw(),
            b"GET /p?q=1 HTTP/1.1\r\nHost: other.local\r\nx-a: 1\r\n\r\n"
        );
        let spec = RequestSpec {
            method: Method::POST,
            body: Bytes::from_static(b"{}"),
            ..Default::default()
        };
        let tpl = Template::new(&t, &spec).unwrap();
        assert_eq!(
            tpl.raw(),
            b"POST /p?q=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\ncontent-length: 2\r\n\r\n{}"
        );
    }

    #[tokio::test]
    async fn url_parsing() {
        let t = Target::resolve("http://127.0.0.1:8080/a?b=1")
            .await
            .unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path, "/a?b=1");
        let t = Target::resolve("http://127.0.0.1").await.unwrap();
        assert_eq!(t.addr.port(), 80);
        assert_eq!(t.path, "/");
        assert!(Target::resolve("https://127.0.0.1/").await.is_err());
        assert!(Target::resolve("127.0.0.1:80").await.is_err());
    }

    #[tokio::test]
    async fn template_sets_host_override() {
        let t = Target::resolve("http://127.0.0.1:8080/x").await.unwrap();
        let spec = RequestSpec {
            host: Some("app.local".into()),
            method: Method::POST,
            body: Bytes::from_static(b"hi"),
            ..Default::default()
        };
        let req = Template::new(&t, &spec).unwrap().build();
        assert_eq!(req.headers()[HOST], "app.local");
        assert_eq!(req.uri(), "/x");
        assert_eq!(req.method(), Method::POST);
        let spec2 = RequestSpec {
            http2: true,
            ..spec
        };
        let req = Template::new(&t, &spec2).unwrap().build();
        assert_eq!(req.uri(), "http://app.local/x");
        assert!(req.headers().get(HOST).is_none());
    }
}
