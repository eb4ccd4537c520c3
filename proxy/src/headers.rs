//! Header rewriting: hop-by-hop removal, `X-Forwarded-*`, host extraction.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};

/// Headers that describe one hop and never travel through a proxy (RFC 9110 §7.6.1).
/// `Proxy-*` headers are removed by prefix in [`strip_hop_by_hop`].
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers: `Connection` and every header it lists, `Keep-Alive`,
/// `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    let proxy_named: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy_named {
        headers.remove(name);
    }
}

/// [`strip_hop_by_hop`] for a protocol switch: the `Upgrade` value survives and
/// `Connection: upgrade` is set, when there was an `Upgrade` header.
pub(crate) fn strip_hop_by_hop_keep_upgrade(headers: &mut HeaderMap) {
    let proto = headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(headers);
    if let Some(proto) = proto {
        headers.insert(header::UPGRADE, proto);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether `Connection` lists `token` (case-insensitive).
pub(crate) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// An HTTP/1.1 upgrade request (`Connection: upgrade` + `Upgrade: ...`).
pub(crate) fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_has(req.headers(), "upgrade")
}

/// Why no host could be taken from a request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    /// Neither `Host` nor an authority in the request target.
    #[error("missing Host header")]
    Missing,
    /// More than one `Host` header, or a value that is not visible ASCII.
    #[error("invalid Host header")]
    Invalid,
}

/// The host the client asked for, as sent (may carry a port): the request-target authority
/// (HTTP/2 `:authority`, HTTP/1.1 absolute-form) or else the `Host` header.
pub(crate) fn request_host<B>(req: &Request<B>) -> Result<String, HostError> {
    if let Some(auth) = req.uri().authority() {
        // `user@host` in an http(s) URI is deprecated and a known spoofing trick
        // (RFC 9110 §4.2.4): refuse it rather than route by something the app reads otherwise.
        if auth.as_str().contains('@') {
            return Err(HostError::Invalid);
        }
        return Ok(auth.as_str().to_string());
    }
    let mut values = req.headers().get_all(header::HOST).iter();
    let first = values.next().ok_or(HostError::Missing)?;
    if values.next().is_some() {
        return Err(HostError::Invalid);
    }
    let s = first.to_str().map_err(|_| HostError::Invalid)?.trim();
    if s.is_empty() {
        return Err(HostError::Missing);
    }
    Ok(s.to_string())
}

/// Sets `X-Forwarded-For` (appending the peer), `X-Forwarded-Proto` (`https` when the client
/// came over TLS, else `http`; a value the client sent is replaced) and `X-Forwarded-Host`
/// (the host the client asked for).
pub(crate) fn set_forwarded(headers: &mut HeaderMap, peer: IpAddr, host: &str, https: bool) {
    let peer = peer.to_canonical().to_string();
    let previous: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let xff = if previous.is_empty() {
        peer
    } else {
        format!("{}, {peer}", previous.join(", "))
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    let proto = if https { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Ok(v) = HeaderValue::from_str(host) {
        headers.insert(X_FORWARDED_HOST.clone(), v);
    }
}

/// The `Location` of a redirect to https: same host (its port replaced by `https_port`,
/// omitted when 443), path and query.
pub(crate) fn https_location(host: &str, uri: &http::Uri, https_port: u16) -> String {
    let host = crate::routes::normalize_host(host);
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let pq = if pq.starts_with('/') { pq } else { "/" };
    if https_port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{https_port}{pq}")
    }
}

/// HTTP/2 may split `Cookie` into several fields; HTTP/1.1 wants one, joined by `; `.
pub(crate) fn join_cookies(headers: &mut HeaderMap) {
    let values: Vec<&str> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.len() > 1 {
        if let Ok(v) = HeaderValue::from_str(&values.join("; ")) {
            headers.insert(header::COOKIE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_listed_and_standard_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h.get("x-keep").unwrap(), "yes");
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        set_forwarded(
            &mut h,
            "::ffff:127.0.0.1".parse().unwrap(),
            "a.example:8080",
            false,
        );
        assert_eq!(
            h.get(&X_FORWARDED_FOR).unwrap(),
            "10.0.0.1, 10.0.0.2, 127.0.0.1"
        );
        assert_eq!(h.get(&X_FORWARDED_PROTO).unwrap(), "http");
        assert_eq!(h.get(&X_FORWARDED_HOST).unwrap(), "a.example:8080");
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        set_forwarded(&mut h, "127.0.0.1".parse().unwrap(), "a.example", true);
        assert_eq!(h.get(&X_FORWARDED_PROTO).unwrap(), "https");
    }

    #[test]
    fn https_location_keeps_path_and_query_and_names_the_port() {
        let uri: http::Uri = "/a/b?x=1".parse().unwrap();
        assert_eq!(
            https_location("Example.com:8080", &uri, 443),
            "https://example.com/a/b?x=1"
        );
        assert_eq!(
            https_location("example.com", &uri, 8443),
            "https://example.com:8443/a/b?x=1"
        );
        let bare: http::Uri = "http://example.com".parse().unwrap();
        assert_eq!(
            https_location("[::1]:80", &bare, 8443),
            "https://[::1]:8443/"
        );
    }
}
