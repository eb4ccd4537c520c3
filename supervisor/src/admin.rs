//! The admin endpoint: `GET /metrics`, `GET /healthz`, `GET /v1/instances`, `POST /v1/reload`.
//!
//! It binds loopback by default (the configuration refuses a public address unless
//! `allow_public_admin` is set).
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::instances::Supervisor;

/// Asks the running process to reload its configuration; returns a summary or the errors.
pub type ReloadHook = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

/// `200 ok` when this node can serve; else `503` with one line per reason (e.g.
/// `cannot boot: zygote restart failed: ...`).
fn healthz(sup: &Supervisor) -> Response<Full<Bytes>> {
    let problems = sup.health_problems();
    if problems.is_empty() {
        return reply(StatusCode::OK, "text/plain", "ok\n");
    }
    let mut body = problems.join("\n");
    body.push('\n');
    reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", body)
}

fn handle(
    sup: &Supervisor,
    reload: Option<&ReloadHook>,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            sup.metrics().render(),
        ),
        (&Method::GET, "/healthz") => healthz(sup),
        (&Method::GET, "/v1/instances") => {
            let body = serde_json::to_vec(&sup.instances()).unwrap_or_else(|_| b"[]".to_vec());
            reply(StatusCode::OK, "application/json", body)
        }
        (&Method::POST, "/v1/reload") => match reload {
            Some(hook) => match hook() {
                Ok(summary) => reply(StatusCode::OK, "text/plain", format!("{summary}\n")),
                Err(errors) => reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "text/plain",
                    format!("{errors}\n"),
                ),
            },
            None => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "reload is not available\n",
            ),
        },
        (_, "/metrics" | "/healthz" | "/v1/instances" | "/v1/reload") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        ),
        (_, path) => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no such endpoint: {path}\n"),
        ),
    }
}

/// Time an admin client has to send a request head (and the most an idle connection stays).
const ADMIN_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the admin API until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    sup: Arc<Supervisor>,
    reload: Option<ReloadHook>,
    shutdown: impl Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let sup = sup.clone();
        let reload = reload.clone();
        tokio::spawn(async move {
            // A connection that never sends a byte is closed after ADMIN_HEADER_TIMEOUT (hyper's
            // own timer starts only once `auto` has seen the first bytes); after that, hyper
            // closes a request head not complete within it, and idle keep-alive connections.
            let mut first = [0u8; 1];
            match tokio::time::timeout(ADMIN_HEADER_TIMEOUT, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = handle(&sup, reload.as_ref(), &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT);
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
