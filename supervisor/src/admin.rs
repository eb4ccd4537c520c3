//! The admin endpoint: `GET /metrics`, `GET /healthz`, `GET /v1/instances`, `POST /v1/reload`,
//! `POST /v1/drain`, `POST /v1/undrain`, `GET /v1/apps/APP/logs` (see [`crate::logs::query`]).
//!
//! It binds loopback by default (the configuration refuses a public address unless
//! `allow_public_admin` is set).
//!
//! The POSTs change what the node does, so one rule refuses what a web page could send
//! (a cross-site "simple" POST, or a DNS-rebound host name): each needs the header
//! `X-Hako-Admin: 1` (or its older name `X-Hako-Reload: 1`) or a JSON content type (neither
//! can be sent cross-site without a CORS preflight, which this endpoint never answers), a
//! `Host` naming the admin address itself and no foreign `Origin`; else 403. Every such
//! request is logged with its peer and result.
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::instances::Supervisor;

/// Reloads the running process's configuration (coalesced; see [`crate::reload`]).
pub type ReloadHook = Arc<crate::reload::Reloader>;

/// The header that makes a reload request one a browser cannot send cross-site unasked (also
/// accepted on every other admin POST; the reply to a reload carries the generation in it).
pub const RELOAD_HEADER: &str = "x-hako-reload";

/// The header that makes an admin POST (drain, undrain, reload) one a browser cannot send
/// cross-site unasked.
pub const ADMIN_HEADER: &str = "x-hako-admin";

/// The two ends of an admin connection and the configured admin address.
#[derive(Debug, Clone, Copy)]
struct Conn {
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
    admin: Option<SocketAddr>,
}

impl Conn {
    /// The `host:port` names a request to this endpoint may carry in `Host`: the configured
    /// address, the address the client connected to, and the loopback names, on our port.
    fn allowed_hosts(&self) -> Vec<String> {
        let mut out = Vec::new();
        for a in [self.admin, self.local].into_iter().flatten() {
            out.push(a.to_string());
            let port = a.port();
            out.extend([
                format!("localhost:{port}"),
                format!("127.0.0.1:{port}"),
                format!("[::1]:{port}"),
            ]);
        }
        out
    }

    /// Why a state-changing request (reload, drain, undrain) is refused, if it is.
    fn refuse_post(&self, req: &Request<Incoming>) -> Option<String> {
        let headers = req.headers();
        let header = |name| {
            headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
        };
        let json = header(http::header::CONTENT_TYPE.as_str())
            .is_some_and(|t| t.to_ascii_lowercase().starts_with("application/json"));
        let marked = [ADMIN_HEADER, RELOAD_HEADER]
            .into_iter()
            .any(|name| header(name).is_some_and(|v| !v.is_empty()));
        if !json && !marked {
            return Some(
                "an admin POST needs the header `X-Hako-Admin: 1` (sent by `hako reload`, \
                 `hako drain`, `hako undrain`) or a JSON content type"
                    .to_owned(),
            );
        }
        let allowed = self.allowed_hosts();
        let host = header(http::header::HOST.as_str())
            .or_else(|| req.uri().authority().map(|a| a.to_string()));
        match host {
            Some(h) if allowed.iter().any(|a| a.eq_ignore_ascii_case(&h)) => {}
            Some(h) => return Some(format!("Host `{h}` is not this admin endpoint")),
            None => return Some("an admin POST needs a Host header".to_owned()),
        }
        if let Some(origin) = header(http::header::ORIGIN.as_str()) {
            let own = allowed
                .iter()
                .any(|a| origin.eq_ignore_ascii_case(&format!("http://{a}")));
            if !own {
                return Some(format!("Origin `{origin}` is not this admin endpoint"));
            }
        }
        None
    }
}

/// `POST /v1/reload`: checked, coalesced, logged.
async fn reload_request(
    reload: &ReloadHook,
    req: &Request<Incoming>,
    conn: Conn,
) -> Response<Full<Bytes>> {
    let peer = conn
        .peer
        .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    if let Some(why) = conn.refuse_post(req) {
        tracing::warn!(peer = %peer, reason = %why, "admin reload request refused");
        return reply(StatusCode::FORBIDDEN, "text/plain", format!("{why}\n"));
    }
    let outcome = reload.reload().await;
    let (status, body) = match &outcome.result {
        Ok(summary) => {
            tracing::info!(peer = %peer, reload = outcome.generation, result = "ok", summary = %summary, "admin reload request");
            (StatusCode::OK, format!("{summary}\n"))
        }
        Err(errors) => {
            tracing::warn!(peer = %peer, reload = outcome.generation, result = "rejected", "admin reload request");
            (StatusCode::UNPROCESSABLE_ENTITY, format!("{errors}\n"))
        }
    };
    let mut resp = reply(status, "text/plain", body);
    resp.headers_mut()
        .insert(RELOAD_HEADER, http::HeaderValue::from(outcome.generation));
    resp
}

/// `POST /v1/drain` and `POST /v1/undrain`: checked like a reload, logged.
fn drain_request(
    sup: &Supervisor,
    req: &Request<Incoming>,
    conn: Conn,
    drain: bool,
) -> Response<Full<Bytes>> {
    use crate::drain::DrainChange;
    let peer = conn
        .peer
        .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    let what = if drain { "drain" } else { "undrain" };
    if let Some(why) = conn.refuse_post(req) {
        tracing::warn!(peer = %peer, request = what, reason = %why, "admin request refused");
        return reply(StatusCode::FORBIDDEN, "text/plain", format!("{why}\n"));
    }
    let node = sup.node();
    let change = if drain { node.drain() } else { node.undrain() };
    tracing::info!(peer = %peer, request = what, result = ?change, "admin request");
    let (status, body) = match (drain, change) {
        (true, DrainChange::Changed) => (StatusCode::OK, "draining\n"),
        (true, _) => (StatusCode::OK, "already draining\n"),
        (false, DrainChange::Changed) => (StatusCode::OK, "serving again\n"),
        (false, DrainChange::Already) => (StatusCode::OK, "not draining\n"),
        (false, DrainChange::TooLate) => (
            StatusCode::CONFLICT,
            "too late: the drain is over and the node is exiting\n",
        ),
    };
    reply(status, "text/plain", body)
}

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
        // With a hook, answered by `reload_request` before `handle` is called.
        (&Method::POST, "/v1/reload") => match reload {
            Some(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "reload\n"),
            None => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "reload is not available\n",
            ),
        },
        (
            _,
            "/metrics" | "/healthz" | "/v1/instances" | "/v1/reload" | "/v1/drain" | "/v1/undrain",
        ) => reply(
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

/// A response body: a whole reply, or a stream (logs).
type AdminBody = BoxBody<Bytes, Infallible>;

/// `GET /v1/apps/APP/logs[?since=D][&instance=ID][&follow=1]`: 404 for an app that is not
/// configured, 400 for a bad query, else the lines (streamed).
fn logs_request(
    sup: &Supervisor,
    logs: Option<&Arc<crate::logs::LogHub>>,
    req: &Request<Incoming>,
    app: &str,
) -> Response<AdminBody> {
    use crate::logs::query::{stream, LogQuery};
    let plain = |status, body: String| reply(status, "text/plain", body).map(BodyExt::boxed);
    if req.method() != Method::GET {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        );
    }
    if !sup.app_names().iter().any(|a| a == app) {
        return plain(StatusCode::NOT_FOUND, format!("no such app: {app}\n"));
    }
    let Some(hub) = logs else {
        return plain(
            StatusCode::NOT_FOUND,
            "this process does not collect instance logs\n".into(),
        );
    };
    let q = match LogQuery::parse(req.uri().query(), crate::logs::record::now_us()) {
        Ok(q) => q,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header("x-hako-log-sink", hub.sink())
        .body(stream(hub, app, q).boxed())
        .expect("static response parts are valid")
}

/// Time an admin client has to send a request head (and the most an idle connection stays).
const ADMIN_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the admin API until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    sup: Arc<Supervisor>,
    reload: Option<ReloadHook>,
    logs: Option<Arc<crate::logs::LogHub>>,
    shutdown: impl Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    let admin = listener.local_addr().ok();
    loop {
        let (stream, peer) = tokio::select! {
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
        let logs = logs.clone();
        let conn = Conn {
            peer: Some(peer),
            local: stream.local_addr().ok(),
            admin,
        };
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
                let sup = sup.clone();
                let reload = reload.clone();
                let logs = logs.clone();
                async move {
                    let path = req.uri().path();
                    let logs_of = path
                        .strip_prefix("/v1/apps/")
                        .and_then(|r| r.strip_suffix("/logs"))
                        .filter(|a| !a.is_empty() && !a.contains('/'));
                    if let Some(app) = logs_of {
                        return Ok::<_, Infallible>(logs_request(&sup, logs.as_ref(), &req, app));
                    }
                    let resp = match (&reload, req.method(), req.uri().path()) {
                        (Some(r), &Method::POST, "/v1/reload") => {
                            reload_request(r, &req, conn).await
                        }
                        (_, &Method::POST, "/v1/drain") => drain_request(&sup, &req, conn, true),
                        (_, &Method::POST, "/v1/undrain") => drain_request(&sup, &req, conn, false),
                        _ => handle(&sup, reload.as_ref(), &req),
                    };
                    Ok::<_, Infallible>(resp.map(BodyExt::boxed))
                }
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
