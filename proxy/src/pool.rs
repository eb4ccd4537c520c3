//! Keep-alive HTTP/1.1 connections to upstream instances, pooled by upstream id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::activate::Upstream;
use crate::reqbody::ClientBody;

/// Sender half of one upstream connection.
pub(crate) type Sender = SendRequest<ClientBody>;

struct Idle {
    sender: Sender,
    since: Instant,
}

/// Idle connections per upstream id (LIFO: the most recently used is reused first).
pub(crate) struct Pool {
    idle: Mutex<HashMap<u64, Vec<Idle>>>,
    max_idle_per_upstream: usize,
    idle_timeout: Duration,
}

/// Why a new upstream connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `Upstream::connect` failed.
    #[error("connect to upstream {id} failed: {source}")]
    Io {
        /// Upstream id.
        id: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The HTTP/1.1 handshake failed.
    #[error("HTTP/1.1 handshake with upstream {id} failed: {source}")]
    Handshake {
        /// Upstream id.
        id: u64,
        /// hyper's error.
        source: hyper::Error,
    },
}

impl ConnectError {
    /// The instance refused the connection (it is gone, or not listening yet).
    pub(crate) fn is_refused(&self) -> bool {
        matches!(self, ConnectError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::ConnectionRefused)
    }
}

impl Pool {
    pub(crate) fn new(max_idle_per_upstream: usize, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Pool {
            idle: Mutex::new(HashMap::new()),
            max_idle_per_upstream,
            idle_timeout,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Vec<Idle>>> {
        match self.idle.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A ready idle connection to `id`, if one is pooled. Expired or closed ones are dropped.
    pub(crate) fn checkout(&self, id: u64) -> Option<Sender> {
        let now = Instant::now();
        let mut map = self.lock();
        let list = map.get_mut(&id)?;
        let mut found = None;
        while let Some(idle) = list.pop() {
            if now.duration_since(idle.since) < self.idle_timeout && idle.sender.is_ready() {
                found = Some(idle.sender);
                break;
            }
        }
        if list.is_empty() {
            map.remove(&id);
        }
        found
    }

    /// Returns a connection whose previous exchange has completed. Not-yet-ready connections
    /// are parked in a task until hyper reports them ready (or they close).
    pub(crate) fn checkin(self: &Arc<Self>, id: u64, mut sender: Sender) {
        if self.max_idle_per_upstream == 0 || sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            self.put(id, sender);
            return;
        }
        let pool = Arc::clone(self);
        let wait = self.idle_timeout;
        tokio::spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(wait, sender.ready()).await {
                pool.put(id, sender);
            }
        });
    }

    fn put(&self, id: u64, sender: Sender) {
        let mut map = self.lock();
        let list = map.entry(id).or_default();
        if list.len() < self.max_idle_per_upstream {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Drops every pooled connection to `id` (its instance failed or went away).
    pub(crate) fn purge(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Drops every pooled connection.
    pub(crate) fn purge_all(&self) {
        self.lock().clear();
    }

    /// Drops expired and closed idle connections everywhere.
    pub(crate) fn reap(&self) {
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, list| {
            list.retain(|i| {
                now.duration_since(i.since) < self.idle_timeout && !i.sender.is_closed()
            });
            !list.is_empty()
        });
    }

    /// Opens a fresh connection to `upstream` and spawns its connection task.
    pub(crate) async fn connect(upstream: &dyn Upstream) -> Result<Sender, ConnectError> {
        let id = upstream.id();
        let stream = upstream
            .connect()
            .await
            .map_err(|source| ConnectError::Io { id, source })?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ConnectError::Handshake { id, source })?;
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(upstream = id, %error, "upstream connection ended with error");
            }
        });
        tracing::debug!(upstream = id, "opened upstream connection");
        Ok(sender)
    }
}

/// The connection-level failure behind a hyper error (refused, reset, closed early), if any.
pub(crate) fn connection_failure(error: &hyper::Error) -> Option<std::io::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(std::io::Error::new(io.kind(), error.to_string()));
        }
        source = e.source();
    }
    if error.is_incomplete_message() || error.is_closed() || error.is_canceled() {
        return Some(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            error.to_string(),
        ));
    }
    None
}
