//! Keep-alive HTTP/1.1 connections to upstream instances, pooled by upstream id and
//! connection generation (see [`Lease::generation`](crate::Lease::generation)).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::activate::Upstream;
use crate::upstream::UpstreamConn;

struct Idle {
    conn: UpstreamConn,
    /// When it stops being handed out (and the reaper closes it).
    until: Instant,
}

/// Idle connections kept per upstream beyond `max_idle_per_upstream`, as a multiple of it.
/// When more requests run at once than the pool keeps (320 h2 streams in flight against 32
/// kept), each one beyond the cap closed its connection at the end and the next request
/// opened a new one: 14 070 connections in 5 s to one upstream, each left in TIME_WAIT. The
/// surplus is kept briefly instead, so a steady concurrency reuses its connections.
const SURPLUS_FACTOR: usize = 16;
/// How long a connection pooled beyond `max_idle_per_upstream` stays: long enough to be
/// reused while the concurrency lasts, short enough to be gone soon after it.
pub(crate) const SURPLUS_IDLE: Duration = Duration::from_secs(2);

/// Which pooled connections a request may use: those to upstream `id` opened under
/// `generation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    pub(crate) id: u64,
    pub(crate) generation: u64,
}

/// The idle connections to one upstream, all of one generation.
struct Slot {
    generation: u64,
    idle: Vec<Idle>,
}

/// Hashes an upstream id (a small counter the supervisor hands out) with one multiply
/// instead of SipHash: the pool is looked up twice per request, and ids are not chosen by
/// clients.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        // Fibonacci hashing: spreads consecutive ids over the high bits hashbrown uses.
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Idle connections per upstream id (LIFO: the most recently used is reused first): up to
/// `max_idle_per_upstream` for `idle_timeout`, and up to [`SURPLUS_FACTOR`] times as many
/// more for [`SURPLUS_IDLE`]. Only the newest generation seen for an id is kept: a checkout or checkin under a newer generation
/// drops the older connections, and a connection of an older generation is never pooled.
pub(crate) struct Pool {
    idle: Mutex<IdMap<Slot>>,
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
            idle: Mutex::new(IdMap::default()),
            max_idle_per_upstream,
            idle_timeout,
        })
    }

    fn lock(&self) -> MutexGuard<'_, IdMap<Slot>> {
        match self.idle.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A ready idle connection for `key`, if one is pooled. Expired or closed ones are
    /// dropped, and so are all of an older generation.
    pub(crate) fn checkout(&self, key: Key) -> Option<UpstreamConn> {
        let now = Instant::now();
        let mut map = self.lock();
        let slot = map.get_mut(&key.id)?;
        if slot.generation != key.generation {
            if slot.generation < key.generation {
                let stale = slot.idle.len();
                map.remove(&key.id);
                tracing::debug!(
                    upstream = key.id,
                    generation = key.generation,
                    stale,
                    "dropped idle connections of an older generation"
                );
            }
            return None;
        }
        let list = &mut slot.idle;
        let mut found = None;
        while let Some(mut idle) = list.pop() {
            if now < idle.until && idle.conn.is_idle_usable() {
                found = Some(idle.conn);
                break;
            }
        }
        if list.is_empty() {
            map.remove(&key.id);
        }
        found
    }

    /// Returns a connection whose previous exchange has completed.
    pub(crate) fn checkin(&self, key: Key, conn: UpstreamConn) {
        if self.max_idle_per_upstream == 0 {
            return;
        }
        self.put(key, conn);
    }

    fn put(&self, key: Key, conn: UpstreamConn) {
        let mut map = self.lock();
        let slot = map.entry(key.id).or_insert_with(|| Slot {
            generation: key.generation,
            idle: Vec::new(),
        });
        if slot.generation > key.generation {
            // Opened before the upstream's connections were retired: never reused.
            return;
        }
        if slot.generation < key.generation {
            slot.generation = key.generation;
            slot.idle.clear();
        }
        let list = &mut slot.idle;
        let keep = if list.len() < self.max_idle_per_upstream {
            self.idle_timeout
        } else if list.len() < self.max_idle_per_upstream * (1 + SURPLUS_FACTOR) {
            SURPLUS_IDLE.min(self.idle_timeout)
        } else {
            return;
        };
        list.push(Idle {
            conn,
            until: Instant::now() + keep,
        });
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
        map.retain(|_, slot| {
            slot.idle
                .retain_mut(|i| now < i.until && i.conn.is_idle_usable());
            !slot.idle.is_empty()
        });
    }

    /// Opens a fresh connection to `upstream`.
    pub(crate) async fn connect(upstream: &dyn Upstream) -> Result<UpstreamConn, ConnectError> {
        UpstreamConn::connect(upstream).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::activate::ConnectFuture;

    /// A TCP server that counts the connections it accepted and those the client closed.
    struct Server {
        addr: std::net::SocketAddr,
        accepted: Arc<AtomicUsize>,
        closed: Arc<AtomicUsize>,
    }

    async fn server() -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (a, c) = (Arc::clone(&accepted), Arc::clone(&closed));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let c = Arc::clone(&c);
                tokio::spawn(async move {
                    let mut chunk = [0u8; 1024];
                    while let Ok(n) = s.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Server {
            addr,
            accepted,
            closed,
        }
    }

    struct Local(std::net::SocketAddr);

    impl Upstream for Local {
        fn id(&self) -> u64 {
            7
        }
        fn connect(&self) -> ConnectFuture {
            Box::pin(tokio::net::TcpStream::connect(self.0))
        }
    }

    /// A fresh connection to `up`.
    async fn connect(up: &Local) -> UpstreamConn {
        Pool::connect(up).await.expect("connect")
    }

    async fn wait_for(count: &AtomicUsize, want: usize) -> usize {
        for _ in 0..200 {
            if count.load(Ordering::SeqCst) >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        count.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_newer_generation_never_reuses_and_closes_older_idle_connections() {
        let srv = server().await;
        let up = Local(srv.addr);
        let pool = Pool::new(4, Duration::from_secs(90));
        let old = Key {
            id: 7,
            generation: 0,
        };
        let new = Key {
            id: 7,
            generation: 1,
        };
        pool.checkin(old, connect(&up).await);
        // Same generation: the idle connection is reused.
        let sender = pool.checkout(old).expect("pooled connection reused");
        pool.checkin(old, sender);
        assert_eq!(wait_for(&srv.accepted, 1).await, 1);

        // The upstream's connections were retired (e.g. its process is about to be paused).
        assert!(
            pool.checkout(new).is_none(),
            "an older connection was handed out"
        );
        assert_eq!(
            wait_for(&srv.closed, 1).await,
            1,
            "the retired connection stays open"
        );
        assert!(
            pool.checkout(old).is_none(),
            "the retired connection is still pooled"
        );

        // A connection of the old generation coming back late is not pooled either.
        let late = connect(&up).await;
        pool.checkin(new, connect(&up).await);
        pool.checkin(old, late);
        assert_eq!(
            wait_for(&srv.closed, 2).await,
            2,
            "the late old connection stays open"
        );
        let sender = pool.checkout(new).expect("the new generation's connection");
        assert!(
            pool.checkout(new).is_none(),
            "more than one connection pooled"
        );
        assert_eq!(wait_for(&srv.accepted, 3).await, 3);
        drop(sender);
    }

    #[tokio::test(start_paused = true)]
    async fn a_concurrency_above_the_cap_keeps_its_connections_briefly() {
        let srv = server().await;
        let up = Local(srv.addr);
        let pool = Pool::new(4, Duration::from_secs(90));
        let key = Key {
            id: 7,
            generation: 0,
        };
        // Ten requests ran at once against a cap of four: all ten come back to the pool.
        for _ in 0..10 {
            pool.checkin(key, connect(&up).await);
        }
        let mut out = Vec::new();
        while let Some(c) = pool.checkout(key) {
            out.push(c);
        }
        assert_eq!(
            out.len(),
            10,
            "connections over the cap were closed at once"
        );
        for c in out {
            pool.checkin(key, c);
        }
        // The concurrency is over: after SURPLUS_IDLE the reaper keeps the cap's four.
        tokio::time::advance(SURPLUS_IDLE + Duration::from_millis(1)).await;
        pool.reap();
        let mut left = 0;
        while pool.checkout(key).is_some() {
            left += 1;
        }
        assert_eq!(left, 4);
        assert_eq!(wait_for(&srv.accepted, 10).await, 10);

        // The surplus has a bound: 4 + 16 x 4 at most.
        let mut many = Vec::new();
        for _ in 0..100 {
            many.push(connect(&up).await);
        }
        for c in many {
            pool.checkin(key, c);
        }
        let mut kept = 0;
        while pool.checkout(key).is_some() {
            kept += 1;
        }
        assert_eq!(kept, 4 * (1 + SURPLUS_FACTOR));
    }
}
