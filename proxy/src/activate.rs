//! The seam between the proxy and the supervisor: [`Activator`], [`Upstream`], [`Lease`].

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// How to open a fresh TCP connection to an upstream instance (it may live in another
/// network namespace).
pub trait Upstream: Send + Sync + 'static {
    /// Stable id of the instance, used as the connection-pool key.
    fn id(&self) -> u64;
    /// Opens a new connection to the instance.
    fn connect(&self) -> ConnectFuture;
}

/// Boxed future returned by [`Upstream::connect`].
pub type ConnectFuture =
    Pin<Box<dyn Future<Output = std::io::Result<tokio::net::TcpStream>> + Send + 'static>>;

/// A lease on a ready upstream. Dropping it releases the lease (the supervisor's guard inside
/// does the bookkeeping).
pub struct Lease {
    /// Where to send the request.
    pub upstream: Arc<dyn Upstream>,
    /// The upstream's connection generation. Idle pooled connections opened under another
    /// generation are never reused (they are closed on the next lease of the newer one). The
    /// activator changes it when the instance's idle connections must not be trusted any
    /// more, e.g. after the process was paused: its keep-alive timers, overdue, close them
    /// right as a request is written. `0` when it never changes.
    pub generation: u64,
    /// Opaque supervisor bookkeeping, dropped when the request (or tunnel) is finished.
    pub guard: Box<dyn Any + Send + Sync>,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("upstream_id", &self.upstream.id())
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Why [`Activator::acquire`] could not hand out a lease; each maps to one HTTP status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ActivateError {
    /// No such app (routes and supervisor disagree): 404.
    #[error("unknown app '{0}'")]
    UnknownApp(String),
    /// The instance could not be started: 502 with the reason in the body.
    #[error("app '{app}' failed to boot: {reason}")]
    BootFailed {
        /// The app.
        app: String,
        /// What went wrong, as the supervisor reports it.
        reason: String,
    },
    /// The instance could not be started for a reason that passes (the host was short of
    /// something, the launcher was restarting): 503 with `Retry-After` and the reason.
    #[error("app '{app}' cannot boot right now: {reason}; retry after {retry_after:?}")]
    BootRetrying {
        /// The app.
        app: String,
        /// What went wrong, as the supervisor reports it.
        reason: String,
        /// When the next boot will be attempted.
        retry_after: Duration,
    },
    /// Too many requests waiting: 503 with `Retry-After` (seconds, rounded up, min 1).
    #[error("app '{app}' is overloaded (queue full), retry after {retry_after:?}")]
    QueueFull {
        /// The app.
        app: String,
        /// Suggested delay before retrying.
        retry_after: Duration,
    },
    /// The request waited for a ready instance for too long: 504.
    #[error("app '{app}' not ready after {waited:?}")]
    NotReady {
        /// The app.
        app: String,
        /// How long the request waited.
        waited: Duration,
    },
    /// The supervisor is stopping: 503.
    #[error("hako is shutting down")]
    ShuttingDown,
}

/// Boxed future returned by [`Activator::acquire`].
pub type AcquireFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Lease, ActivateError>> + Send + 'a>>;

/// What the proxy needs from the supervisor.
pub trait Activator: Send + Sync + 'static {
    /// Returns a lease on a ready instance of `app`, booting one if needed; waits (bounded)
    /// otherwise.
    fn acquire(&self, app: &str) -> AcquireFuture<'_>;
    /// A lease right away if one can be had without waiting or booting (the common case: a
    /// ready instance with a free slot), else `None` and the caller uses
    /// [`Activator::acquire`]. Saves the boxed future on the hot path. The default never has
    /// one.
    fn try_acquire(&self, app: &str) -> Option<Lease> {
        let _ = app;
        None
    }
    /// Called once per finished request (after the response body ended or failed), for
    /// metrics/logs. `app` is None when no route matched. A client that went away before a
    /// response was produced is recorded with status 499.
    fn record(&self, app: Option<&str>, status: u16, elapsed: Duration);
    /// The upstream failed at connect or mid-request (connection refused/reset): the instance
    /// may have crashed.
    fn upstream_failed(&self, lease_upstream_id: u64, error: &std::io::Error) {
        let _ = (lease_upstream_id, error);
    }
}
