//! hako proxy: the HTTP front.
//!
//! Routes requests by `Host` (and optional path prefix) to an app, asks the supervisor for a
//! lease on a ready instance through the [`Activator`] trait, forwards the request over a
//! pooled keep-alive HTTP/1.1 connection (hako's own client, `upstream`, driven inside the
//! request's future) and streams both bodies. HTTP/1.1 and h2c clients
//! are served on the same port; a TLS listener ([`Listeners::tls`], certificates chosen by SNI
//! and swapped on reload, see [`tls`]) serves HTTP/1.1 and HTTP/2 by ALPN. HTTP/1.1 upgrades
//! (WebSocket) are tunnelled. The crate knows nothing about containers or cgroups.
//!
//! Responses the proxy produces itself are short `text/plain` pages naming the app and the
//! reason: 308 (a plain-HTTP request to an app with [`Route::redirect_https`]), 400 (no/invalid `Host`, or a malformed request body from the client, which is not
//! reported as a failure of the upstream), 405 (`CONNECT`, never forwarded), 404 (no route —
//! the body names the host — or [`ActivateError::UnknownApp`]), 502 (boot failed, upstream connect failed or the upstream
//! closed before answering, or answered with an invalid or ambiguous head: see [`UpstreamError`]),
//! 503 (queue full, with `Retry-After` in whole seconds rounded up,
//! or shutting down), 504 (not ready in time, or no upstream response headers within
//! [`ProxyOptions::upstream_timeout`]).
//!
//! Per request: [`Activator::acquire`] is called only when a route matched; the [`Lease`] is
//! held until the response body has been handed to the client completely (or the client went
//! away), for upgrades until the tunnel closes; [`Activator::record`] is called exactly once,
//! at that moment (status 101 for tunnels, 499 when the client left before a response).
#![forbid(unsafe_code)]

mod accept;
mod activate;
mod body;
mod conn;
mod connection;
mod forward;
mod headers;
mod pool;
mod routes;
mod server;
mod state;
pub mod tls;
mod upstream;
mod wake;
mod workers;

pub use activate::{AcquireFuture, ActivateError, Activator, ConnectFuture, Lease, Upstream};
pub use body::{BoxError, ProxyBody};
pub use forward::ProxyError;
pub use headers::HostError;
pub use pool::ConnectError;
pub use routes::{Route, Routes, RoutesHandle};
pub use server::{serve, serve_listeners, Listeners, ServeReport};
pub use state::{default_workers, ProxyOptions};
pub use tls::{TlsCertificate, TlsError, TlsHandle};
pub use upstream::UpstreamError;
