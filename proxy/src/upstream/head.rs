//! Request head encoding and response head parsing (with the response's body framing).

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Method, Response, StatusCode, Version};

use smallvec::SmallVec;

use super::{RequestBody, UpstreamError, MAX_HEADERS};

/// How the request body travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body.
    None,
    /// `Content-Length`.
    Length,
    /// `Transfer-Encoding: chunked` (length unknown).
    Chunked,
}

/// An encoded request head, ready to be written (again, on another connection, if the first
/// one was stale).
pub(crate) struct RequestHead {
    bytes: Vec<u8>,
    framing: RequestFraming,
    head_method: bool,
    upgrade: bool,
}

impl RequestHead {
    /// Encodes `parts` (origin-form target, hop-by-hop headers removed, `Host` set) as an
    /// HTTP/1.1 head, with the body framing `body` needs. `upgrade`: the request asks for a
    /// protocol switch (its `Connection`/`Upgrade` headers are in `parts`).
    pub(crate) fn encode<B: http_body::Body<Data = bytes::Bytes> + Unpin>(
        parts: &request::Parts,
        body: &RequestBody<B>,
        upgrade: bool,
    ) -> Self {
        let (framing, length) = if body.is_end_stream() {
            (RequestFraming::None, 0)
        } else if let Some(n) = body.exact_len() {
            (RequestFraming::Length, n)
        } else {
            (RequestFraming::Chunked, 0)
        };
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut size = parts.method.as_str().len() + target.len() + 48;
        for (name, value) in &parts.headers {
            size += name.as_str().len() + value.len() + 4;
        }
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(parts.method.as_str().as_bytes());
        bytes.push(b' ');
        bytes.extend_from_slice(target.as_bytes());
        bytes.extend_from_slice(b" HTTP/1.1\r\n");
        let mut had_length = false;
        for (name, value) in &parts.headers {
            if name == header::CONTENT_LENGTH {
                // Written below from the body's actual length.
                had_length = true;
                continue;
            }
            if name == header::TRANSFER_ENCODING {
                continue;
            }
            bytes.extend_from_slice(name.as_str().as_bytes());
            bytes.extend_from_slice(b": ");
            bytes.extend_from_slice(value.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        match framing {
            RequestFraming::Length => {
                bytes.extend_from_slice(b"content-length: ");
                bytes.extend_from_slice(length.to_string().as_bytes());
                bytes.extend_from_slice(b"\r\n");
            }
            RequestFraming::Chunked => {
                bytes.extend_from_slice(b"transfer-encoding: chunked\r\n");
            }
            RequestFraming::None => {
                if had_length || matches!(parts.method, Method::POST | Method::PUT | Method::PATCH)
                {
                    bytes.extend_from_slice(b"content-length: 0\r\n");
                }
            }
        }
        bytes.extend_from_slice(b"\r\n");
        RequestHead {
            bytes,
            framing,
            head_method: parts.method == Method::HEAD,
            upgrade,
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub(crate) fn framing(&self) -> RequestFraming {
        self.framing
    }
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (`HEAD`, `204`, `304`, `Content-Length: 0`).
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the app closes the connection.
    Close,
    /// `101 Switching Protocols`: the connection now carries another protocol.
    Switch,
}

/// A final response head.
pub(crate) struct Parsed {
    pub(crate) response: Response<()>,
    pub(crate) framing: Framing,
    /// HTTP/1.1 without `Connection: close`.
    pub(crate) keep_alive: bool,
}

pub(crate) enum HeadStatus {
    /// More bytes are needed.
    Partial,
    /// An interim `1xx` response was consumed from the buffer.
    Interim,
    /// The final head, consumed from the buffer.
    Done(Parsed),
}

/// Parses a response head at the start of `buf`, consuming it when complete.
pub(crate) fn parse_response_head(
    buf: &mut BytesMut,
    req: &RequestHead,
) -> Result<HeadStatus, UpstreamError> {
    // Left uninitialised (not zeroed: 3 KiB per response).
    let mut slots = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)?
    {
        httparse::Status::Partial => return Ok(HeadStatus::Partial),
        httparse::Status::Complete(len) => len,
    };
    let code = resp
        .code
        .ok_or(UpstreamError::InvalidHead("no status code"))?;
    let status =
        StatusCode::from_u16(code).map_err(|_| UpstreamError::InvalidHead("status code"))?;
    let version = match resp.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        buf.advance(len);
        return Ok(HeadStatus::Interim);
    }
    // One pass over the raw fields: the framing and keep-alive facts, and which fields go to
    // the client. Hop-by-hop fields (and those `Connection` names) are left out here, so the
    // response needs no stripping later; a 101 keeps all of them (its `Upgrade` travels on).
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let mut facts = Facts::default();
    for h in resp.headers.iter() {
        facts.note(h.name.as_bytes(), h.value);
    }
    let framing = framing(req, status, &facts)?;
    let keep_alive = version == Version::HTTP_11 && !facts.close;
    // Values are sliced from the head's bytes without copying: note where they are first.
    let base = buf.as_ptr() as usize;
    let mut fields: SmallVec<[(HeaderName, usize, usize); 16]> = SmallVec::new();
    for h in resp.headers.iter() {
        if !switching && facts.is_hop_by_hop(h.name.as_bytes()) {
            continue;
        }
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| UpstreamError::InvalidHead("header name"))?;
        let start = if h.value.is_empty() {
            0
        } else {
            (h.value.as_ptr() as usize)
                .checked_sub(base)
                .ok_or(UpstreamError::InvalidHead("header value"))?
        };
        fields.push((name, start, start + h.value.len()));
    }
    drop(facts);
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(fields.len());
    for (name, start, end) in fields {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| UpstreamError::InvalidHead("header value"))?;
        headers.append(name, value);
    }
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(HeadStatus::Done(Parsed {
        response,
        framing,
        keep_alive,
    }))
}

/// What a response head's fields say about framing and the connection, gathered from the raw
/// fields (names compared case-insensitively, no `HeaderMap` lookups).
#[derive(Default)]
struct Facts<'a> {
    /// `Transfer-Encoding` values.
    transfer_encoding: SmallVec<[&'a [u8]; 1]>,
    /// `Content-Length` values.
    content_length: SmallVec<[&'a [u8]; 1]>,
    /// The tokens `Connection` lists.
    connection: SmallVec<[&'a [u8]; 2]>,
    /// `Connection: close`.
    close: bool,
}

impl<'a> Facts<'a> {
    fn note(&mut self, name: &[u8], value: &'a [u8]) {
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encoding.push(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            self.content_length.push(value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.is_empty() {
                    continue;
                }
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                }
                self.connection.push(token);
            }
        }
    }

    /// Whether a field is hop-by-hop (RFC 9110 §7.6.1): one that describes this connection
    /// only, `Proxy-*`, or one that `Connection` names.
    fn is_hop_by_hop(&self, name: &[u8]) -> bool {
        crate::headers::is_hop_by_hop(name)
            || self.connection.iter().any(|t| name.eq_ignore_ascii_case(t))
    }
}

/// The response body's framing (RFC 9112 §6.3), refusing anything ambiguous.
fn framing(
    req: &RequestHead,
    status: StatusCode,
    facts: &Facts<'_>,
) -> Result<Framing, UpstreamError> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return if req.upgrade {
            Ok(Framing::Switch)
        } else {
            Err(UpstreamError::UnexpectedSwitch)
        };
    }
    if req.head_method || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Empty);
    }
    if !facts.transfer_encoding.is_empty() {
        if !facts.content_length.is_empty() {
            return Err(UpstreamError::Framing(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        let mut codings = facts
            .transfer_encoding
            .iter()
            .flat_map(|v| v.split(|&b| b == b','))
            .map(|t| t.trim_ascii())
            .filter(|t| !t.is_empty());
        return match (codings.next(), codings.next()) {
            (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
            _ => Err(UpstreamError::Framing(
                "a transfer coding other than chunked",
            )),
        };
    }
    let mut length: Option<u64> = None;
    for value in &facts.content_length {
        for token in value.split(|&b| b == b',') {
            let n = parse_length(token.trim_ascii())
                .ok_or(UpstreamError::Framing("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(UpstreamError::Framing("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

/// A decimal length: digits only, no sign, no overflow.
fn parse_length(token: &[u8]) -> Option<u64> {
    if token.is_empty() || token.len() > 19 {
        return None;
    }
    token.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}
