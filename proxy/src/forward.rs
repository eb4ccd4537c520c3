//! One request: route, acquire a lease, forward over a pooled connection, stream back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::activate::{ActivateError, Upstream};
use crate::body::{PooledConn, ProxyBody, RequestGuard};
use crate::conn::InFlight;
use crate::headers::{self, HostError};
use crate::pool::{ConnectError, Key, Pool};
use crate::state::{wait_phase, Phase, Shared};
use crate::upstream::{
    self, Exchange, RequestBody, RequestHead, SendError, Stall, UpstreamConn, UpstreamError,
};

/// What an app that did not accept a connection in time was not doing (the 504's text).
const CONNECTING: &str = "accepting a connection";

/// Methods `Allow` names when a `CONNECT` is refused: every method is forwarded but
/// `CONNECT` (hako is not a tunnelling proxy).
pub(crate) const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS";

/// Why a request was answered by the proxy itself rather than by the app.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No usable `Host`: 400.
    #[error("{0}")]
    BadHost(#[from] HostError),
    /// `CONNECT`: never forwarded; 405 with `Allow`.
    #[error("CONNECT is not supported (hako is not a forward proxy)")]
    ConnectMethod,
    /// Reading the client's request body failed (malformed chunked framing, body cut short):
    /// 400. The instance is not blamed.
    #[error("app '{app}': invalid request body from the client: {source}")]
    ClientBody {
        /// The app.
        app: String,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// No route for this host and path: 404.
    #[error("no app for host '{host}' and path '{path}'")]
    UnknownHost {
        /// Host as the client sent it.
        host: String,
        /// Request path.
        path: String,
    },
    /// The supervisor could not lease an instance.
    #[error(transparent)]
    Activate(#[from] ActivateError),
    /// Opening a connection to the instance failed: 502.
    #[error("app '{app}': {source}")]
    Connect {
        /// The app.
        app: String,
        /// What failed.
        #[source]
        source: ConnectError,
    },
    /// The instance made no progress for `upstream_timeout`: it did not accept a connection,
    /// stopped reading the request, or sent no response headers: 504.
    #[error("app '{app}': upstream was not {doing} for {timeout:?}")]
    UpstreamTimeout {
        /// The app.
        app: String,
        /// What the instance was not doing: "accepting a connection", "reading the request",
        /// "sending response headers".
        doing: &'static str,
        /// The configured `upstream_timeout`.
        timeout: Duration,
    },
    /// The client's request body stalled (no byte for `upstream_timeout`) before the app
    /// answered: 408, and the connection is closed. The instance is not blamed.
    #[error("app '{app}': the client sent no request body bytes for {timeout:?}")]
    ClientBodyTimeout {
        /// The app.
        app: String,
        /// The configured `upstream_timeout`.
        timeout: Duration,
    },
    /// The exchange with the instance failed before a response arrived: 502.
    #[error("app '{app}': upstream request failed: {source}")]
    Upstream {
        /// The app.
        app: String,
        /// What failed.
        #[source]
        source: UpstreamError,
    },
}

impl ProxyError {
    /// The HTTP status the client sees.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadHost(_) | ProxyError::ClientBody { .. } => StatusCode::BAD_REQUEST,
            ProxyError::ConnectMethod => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::UnknownHost { .. } => StatusCode::NOT_FOUND,
            ProxyError::Activate(e) => match e {
                ActivateError::UnknownApp(_) => StatusCode::NOT_FOUND,
                ActivateError::BootFailed { .. } => StatusCode::BAD_GATEWAY,
                ActivateError::QueueFull { .. }
                | ActivateError::BootRetrying { .. }
                | ActivateError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
                ActivateError::NotReady { .. } => StatusCode::GATEWAY_TIMEOUT,
            },
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ClientBodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The short text/plain error page.
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let body = format!(
            "{} {}: {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            self
        );
        let mut resp = Response::new(ProxyBody::full(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let ProxyError::ConnectMethod = &self {
            h.insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
        }
        if let ProxyError::ClientBody { .. } | ProxyError::ClientBodyTimeout { .. } = &self {
            // The request's framing is broken: nothing after it on this connection can be
            // trusted.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let ProxyError::Activate(
            ActivateError::QueueFull { retry_after, .. }
            | ActivateError::BootRetrying { retry_after, .. },
        ) = &self
        {
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(*retry_after)),
            );
        }
        resp
    }
}

/// Seconds for `Retry-After`: rounded up, at least 1.
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// The client end of a connection, as every request on it is forwarded (made once per
/// connection).
pub(crate) struct Client {
    /// Whether the client came over TLS.
    pub(crate) https: bool,
    /// The client's address as `X-Forwarded-For` names it.
    pub(crate) forwarded_for: HeaderValue,
}

impl Client {
    pub(crate) fn new(peer: SocketAddr, https: bool) -> Arc<Self> {
        Arc::new(Client {
            https,
            forwarded_for: headers::forwarded_for(peer.ip()),
        })
    }
}

/// The hyper service: never fails, every problem becomes an error page.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    client: Arc<Client>,
    in_flight: InFlight,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let mut guard = Some(RequestGuard::new(Arc::clone(&shared), in_flight));
    let resp = match forward(&shared, &client, req, &mut guard).await {
        Ok(resp) => resp,
        Err(error) => {
            // The instance is not needed to send an error page: release it now.
            if let Some(g) = guard.as_mut() {
                g.lease = None;
            }
            let status = error.status();
            let app = guard.as_ref().and_then(|g| g.app.as_deref()).unwrap_or("-");
            if status.is_server_error() {
                tracing::warn!(app, %status, %error, "proxy error");
            } else {
                tracing::debug!(app, %status, %error, "proxy error");
            }
            error.into_response()
        }
    };
    Ok(match guard {
        Some(mut g) => {
            g.status = resp.status().as_u16();
            resp.map(|b| b.with_guard(g))
        }
        None => resp,
    })
}

async fn forward(
    shared: &Arc<Shared>,
    client: &Client,
    mut req: Request<Incoming>,
    guard_slot: &mut Option<RequestGuard>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::ConnectMethod);
    }
    let host = headers::request_host(&req)?;
    let (app, redirect_https) = shared
        .routes
        .load()
        .resolve_entry(host.as_str(), req.uri().path())
        .map(|(app, redirect)| (Arc::clone(app), redirect))
        .ok_or_else(|| ProxyError::UnknownHost {
            host: host.as_str().to_string(),
            path: req.uri().path().to_string(),
        })?;
    let Some(guard) = guard_slot.as_mut() else {
        unreachable_guard()
    };
    guard.app = Some(Arc::clone(&app));
    if redirect_https && !client.https {
        // Before any lease: a redirect never boots the app.
        let location = headers::https_location(host.as_str(), req.uri(), shared.https_port);
        let mut resp = Response::new(ProxyBody::empty());
        *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        return Ok(resp);
    }

    // Lease an instance and make sure it takes connections before the request body is
    // touched. A refused connect means the instance died a moment ago (before the supervisor
    // noticed): report it and retry once with a fresh lease, which is safe since no byte of
    // the request reached the app.
    let mut retried = false;
    let (lease, first) = loop {
        let lease = match shared.activator.try_acquire(&app) {
            Some(lease) => lease,
            None => shared.activator.acquire(&app).await?,
        };
        let id = lease.upstream.id();
        let key = Key {
            id,
            generation: lease.generation,
        };
        if let Some(conn) = shared.pool.checkout(key) {
            break (lease, conn);
        }
        let timeout = shared.opts.upstream_timeout;
        match tokio::time::timeout(timeout, Pool::connect(&*lease.upstream)).await {
            Ok(Ok(conn)) => break (lease, conn),
            Ok(Err(source)) => {
                connect_failed(shared, id, &source);
                if !retried && source.is_refused() {
                    tracing::debug!(app = %app, upstream = id, "upstream refused; retrying with a new lease");
                    retried = true;
                    drop(lease);
                    continue;
                }
                return Err(ProxyError::Connect {
                    app: app.to_string(),
                    source,
                });
            }
            Err(_) => {
                return Err(ProxyError::UpstreamTimeout {
                    app: app.to_string(),
                    doing: CONNECTING,
                    timeout,
                })
            }
        }
    };
    let upstream = Arc::clone(&lease.upstream);
    let key = Key {
        id: upstream.id(),
        generation: lease.generation,
    };
    guard.lease = Some(lease);

    // Rewrite the request for the upstream (HTTP/1.1, origin-form).
    let upgrading = headers::is_upgrade_request(&req);
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    let client_version = req.version();
    let (mut parts, body) = req.into_parts();
    if upgrading {
        headers::strip_hop_by_hop_keep_upgrade(&mut parts.headers);
    } else {
        headers::strip_hop_by_hop(&mut parts.headers);
    }
    // hyper already answered `100-continue` to the client when the body is first read.
    parts.headers.remove(header::EXPECT);
    if client_version == Version::HTTP_2 {
        headers::join_cookies(&mut parts.headers);
    }
    // The request-target's authority (HTTP/1.1 absolute-form, HTTP/2 `:authority`) chose the
    // route, so the app gets it as `Host` too, whatever `Host` the client sent
    // (RFC 9112 §3.2.2).
    if parts.uri.authority().is_some() || !parts.headers.contains_key(header::HOST) {
        parts.headers.insert(header::HOST, host.value().clone());
    }
    headers::set_forwarded(
        &mut parts.headers,
        &client.forwarded_for,
        &host,
        client.https,
    );
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|pq| Uri::from(pq.clone()))
        .unwrap_or_else(|| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    let mut body = RequestBody::new(body);
    let head = RequestHead::encode(&parts, &body, upgrading);
    drop(parts);

    // No overall deadline: `upstream::send` gives up after `upstream_timeout` without
    // progress, so an upload of any length at a steady pace goes through.
    let timeout = shared.opts.upstream_timeout;
    let id = key.id;
    let exchange = match send(shared, &*upstream, key, &head, &mut body, first).await {
        Err(SendFailure::Send(SendError::TimedOut(stall))) => {
            return Err(if stall == Stall::Client {
                ProxyError::ClientBodyTimeout {
                    app: app.to_string(),
                    timeout,
                }
            } else {
                ProxyError::UpstreamTimeout {
                    app: app.to_string(),
                    doing: stall.app_was_not(),
                    timeout,
                }
            })
        }
        Err(SendFailure::ConnectTimeout) => {
            return Err(ProxyError::UpstreamTimeout {
                app: app.to_string(),
                doing: CONNECTING,
                timeout,
            })
        }
        Err(SendFailure::Connect(source)) => {
            connect_failed(shared, id, &source);
            return Err(ProxyError::Connect {
                app: app.to_string(),
                source,
            });
        }
        Err(SendFailure::Send(SendError::Client(source))) => {
            return Err(ProxyError::ClientBody {
                app: app.to_string(),
                source,
            });
        }
        Err(SendFailure::Send(SendError::Upstream(source))) => {
            if let Some(io) = source.connection_failure() {
                shared.upstream_failed(id, &io);
            }
            return Err(ProxyError::Upstream {
                app: app.to_string(),
                source,
            });
        }
        Err(SendFailure::Send(SendError::Stale)) => {
            // Only a reused connection is ever found stale; `send` ends on a fresh one.
            return Err(ProxyError::Upstream {
                app: app.to_string(),
                source: UpstreamError::Closed {
                    during: "before the response head",
                },
            });
        }
        Ok(exchange) => exchange,
    };

    let resp = match exchange {
        Exchange::Switched(resp, conn) => {
            let Some(client_upgrade) = client_upgrade else {
                // `send` only accepts a switch for an upgrade request.
                return Err(ProxyError::Upstream {
                    app: app.to_string(),
                    source: UpstreamError::UnexpectedSwitch,
                });
            };
            let (mut parts, ()) = resp.into_parts();
            headers::strip_hop_by_hop_keep_upgrade(&mut parts.headers);
            let mut tunnel_guard = guard_slot.take().unwrap_or_else(|| unreachable_guard());
            tunnel_guard.status = 101;
            spawn_tunnel(shared, client_upgrade, conn, tunnel_guard);
            return Ok(Response::from_parts(parts, ProxyBody::empty()));
        }
        Exchange::Response(resp) => resp,
    };

    // Hop-by-hop fields were left out when the head was parsed
    // (`upstream::head::parse_response_head`).
    let (parts, body) = resp.into_parts();
    let conn = PooledConn {
        pool: Arc::clone(&shared.pool),
        key,
    };
    Ok(Response::from_parts(parts, ProxyBody::stream(body, conn)))
}

/// A new connection to `id` could not be made: its pooled connections are dropped, and the
/// supervisor is told.
fn connect_failed(shared: &Shared, id: u64, error: &ConnectError) {
    shared.purge(id);
    let ConnectError::Io { source, .. } = error;
    shared.activator.upstream_failed(id, source);
}

#[cold]
fn unreachable_guard() -> ! {
    // The guard slot is only emptied when a tunnel takes it, which ends `forward`.
    panic!("request guard taken twice")
}

enum SendFailure {
    Connect(ConnectError),
    /// A fresh connection (after stale pooled ones) took longer than `upstream_timeout`.
    ConnectTimeout,
    Send(SendError),
}

/// Sends on `first` (a pooled or fresh connection); if that turns out stale before any byte
/// of the request reached the app, on another idle pooled connection, otherwise on a fresh
/// one.
async fn send(
    shared: &Shared,
    upstream: &dyn Upstream,
    key: Key,
    head: &RequestHead,
    body: &mut RequestBody,
    first: UpstreamConn,
) -> Result<Exchange, SendFailure> {
    let id = key.id;
    let idle = shared.opts.upstream_timeout;
    let ctx = upstream::Ctx {
        tasks: &shared.tracker,
        idle,
        phase: &shared.phase,
    };
    let mut next = Some(first);
    while let Some(conn) = next.take().or_else(|| shared.pool.checkout(key)) {
        match upstream::send(conn, head, body, &ctx).await {
            Err(SendError::Stale) => {
                tracing::debug!(upstream = id, "stale pooled connection, retrying");
            }
            other => return other.map_err(SendFailure::Send),
        }
    }
    let conn = tokio::time::timeout(idle, Pool::connect(upstream))
        .await
        .map_err(|_| SendFailure::ConnectTimeout)?
        .map_err(SendFailure::Connect)?;
    upstream::send(conn, head, body, &ctx)
        .await
        .map_err(SendFailure::Send)
}

/// Joins the client's upgraded connection and the app's switched one; the bytes the app
/// sent right after its `101` head go to the client first.
fn spawn_tunnel(
    shared: &Arc<Shared>,
    client: hyper::upgrade::OnUpgrade,
    upstream: UpstreamConn,
    guard: RequestGuard,
) {
    let mut phase = shared.phase.clone();
    let stats = Arc::clone(shared);
    shared.tracker.spawn(async move {
        let _guard = guard;
        let client = match client.await {
            Ok(c) => c,
            Err(error) => {
                tracing::debug!(%error, "client upgrade failed");
                return;
            }
        };
        let Some((mut upstream, early)) = upstream.into_parts() else {
            return;
        };
        let mut client = TokioIo::new(client);
        let relay = async {
            if !early.is_empty() {
                tokio::io::AsyncWriteExt::write_all(&mut client, &early).await?;
            }
            tokio::io::copy_bidirectional(&mut client, &mut upstream).await
        };
        tokio::select! {
            res = relay => {
                match res {
                    Ok((up, down)) => tracing::debug!(up, down, "tunnel closed"),
                    Err(error) => tracing::debug!(%error, "tunnel closed with error"),
                }
            }
            _ = wait_phase(&mut phase, Phase::Force) => {
                stats.stats.forced_closes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_with_minimum_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }
}
