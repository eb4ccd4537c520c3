//! Header rewriting: hop-by-hop removal, `X-Forwarded-*`, host extraction.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};
use smallvec::SmallVec;

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether a field named `name` (any case) describes one hop by itself (RFC 9110 §7.6.1),
/// without being listed in `Connection`: `Connection`, `Keep-Alive`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Upgrade`, or `Proxy-*`. Compared as bytes, a length check first:
/// this runs for every field of every request and response.
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 6] = [
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"proxy-"))
}

/// Removes hop-by-hop headers: `Connection` and every header it lists, `Keep-Alive`,
/// `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Runs on every request and response, so: one pass over the names, no allocation in the
    // usual case, and a removal (which hashes) only for a header that is there. The usual
    // case is a single `Connection: keep-alive`.
    let mut listed: SmallVec<[&str; 4]> = SmallVec::new();
    for (name, value) in headers.iter() {
        if name == header::CONNECTION {
            let tokens = value.to_str().unwrap_or_default().split(',');
            listed.extend(tokens.map(str::trim).filter(|t| !t.is_empty()));
        }
    }
    let doomed: SmallVec<[HeaderName; 4]> = headers
        .keys()
        .filter(|name| {
            is_hop_by_hop(name.as_str().as_bytes())
                || listed.iter().any(|t| t.eq_ignore_ascii_case(name.as_str()))
        })
        .cloned()
        .collect();
    drop(listed);
    for name in doomed {
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

/// The host a request asked for, as sent (may carry a port): a header value known to be
/// visible ASCII, so that it is forwarded as `Host` / `X-Forwarded-Host` without a copy.
#[derive(Debug, Clone)]
pub(crate) struct RequestHost(HeaderValue);

impl RequestHost {
    pub(crate) fn as_str(&self) -> &str {
        // Checked by `request_host`: every byte is visible ASCII.
        self.0.to_str().unwrap_or_default()
    }

    pub(crate) fn value(&self) -> &HeaderValue {
        &self.0
    }
}

/// The host the client asked for, as sent (may carry a port): the request-target authority
/// (HTTP/2 `:authority`, HTTP/1.1 absolute-form) or else the `Host` header.
pub(crate) fn request_host<B>(req: &Request<B>) -> Result<RequestHost, HostError> {
    if let Some(auth) = req.uri().authority() {
        // `user@host` in an http(s) URI is deprecated and a known spoofing trick
        // (RFC 9110 §4.2.4): refuse it rather than route by something the app reads otherwise.
        if auth.as_str().contains('@') {
            return Err(HostError::Invalid);
        }
        return HeaderValue::from_str(auth.as_str())
            .map(RequestHost)
            .map_err(|_| HostError::Invalid);
    }
    let mut values = req.headers().get_all(header::HOST).iter();
    let first = values.next().ok_or(HostError::Missing)?;
    if values.next().is_some() {
        return Err(HostError::Invalid);
    }
    let raw = first.to_str().map_err(|_| HostError::Invalid)?;
    let s = raw.trim();
    if s.is_empty() {
        return Err(HostError::Missing);
    }
    if s.len() == raw.len() {
        // The common case: the value as received (a reference count, no copy).
        return Ok(RequestHost(first.clone()));
    }
    HeaderValue::from_str(s)
        .map(RequestHost)
        .map_err(|_| HostError::Invalid)
}

/// A client address as `X-Forwarded-For` names it (IPv4-mapped IPv6 addresses as IPv4);
/// made once per connection.
pub(crate) fn forwarded_for(peer: IpAddr) -> HeaderValue {
    let text = peer.to_canonical().to_string();
    // An address's text is always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Sets `X-Forwarded-For` (appending the peer, as made by [`forwarded_for`]),
/// `X-Forwarded-Proto` (`https` when the client came over TLS, else `http`; a value the
/// client sent is replaced) and `X-Forwarded-Host` (the host the client asked for).
pub(crate) fn set_forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    host: &RequestHost,
    https: bool,
) {
    let xff = if headers.contains_key(&X_FORWARDED_FOR) {
        let previous: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if previous.is_empty() {
            peer.clone()
        } else {
            let peer_text = peer.to_str().unwrap_or_default();
            let joined = format!("{}, {peer_text}", previous.join(", "));
            HeaderValue::from_str(&joined).unwrap_or_else(|_| peer.clone())
        }
    } else {
        peer.clone()
    };
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    let proto = if https { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    headers.insert(X_FORWARDED_HOST.clone(), host.value().clone());
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
    fn strips_proxy_headers_when_nothing_else_is_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            "proxy-authorization",
            HeaderValue::from_static("Basic eDp5"),
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        let host = |s: &'static str| RequestHost(HeaderValue::from_static(s));
        let mapped = forwarded_for("::ffff:127.0.0.1".parse().unwrap());
        assert_eq!(mapped, "127.0.0.1");
        set_forwarded(&mut h, &mapped, &host("a.example:8080"), false);
        assert_eq!(
            h.get(&X_FORWARDED_FOR).unwrap(),
            "10.0.0.1, 10.0.0.2, 127.0.0.1"
        );
        assert_eq!(h.get(&X_FORWARDED_PROTO).unwrap(), "http");
        assert_eq!(h.get(&X_FORWARDED_HOST).unwrap(), "a.example:8080");
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        set_forwarded(&mut h, &mapped, &host("a.example"), true);
        assert_eq!(h.get(&X_FORWARDED_PROTO).unwrap(), "https");
        assert_eq!(h.get(&X_FORWARDED_HOST).unwrap(), "a.example");
        assert_eq!(
            h.get(&X_FORWARDED_FOR).unwrap(),
            "10.0.0.1, 10.0.0.2, 127.0.0.1, 127.0.0.1"
        );

        // No earlier proxy: the peer alone.
        let mut fresh = HeaderMap::new();
        set_forwarded(&mut fresh, &mapped, &host("a.example"), false);
        assert_eq!(fresh.get(&X_FORWARDED_FOR).unwrap(), "127.0.0.1");
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
