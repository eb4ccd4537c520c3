//! How the proxy reaches an instance: inside its network namespace, or on a host port, with
//! short connect retries while a small accept queue overflows.
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hako_proxy::{ConnectFuture, Upstream};

use crate::netns::{NetnsSockets, NetnsTarget};

/// Connects with short per-attempt timeouts. Small apps listen with tiny backlogs (busybox
/// httpd: 9); when a burst overflows the accept queue the kernel drops the SYN and a plain
/// connect waits for the retransmission a full second later. A fresh SYN after 20, 40, 80 ms
/// ... gets in as soon as the app has accepted, so a burst costs milliseconds, not seconds.
pub(super) async fn connect_retrying<F, Fut>(mut attempt: F) -> io::Result<tokio::net::TcpStream>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = io::Result<tokio::net::TcpStream>>,
{
    let mut timeout = std::time::Duration::from_millis(20);
    for _ in 0..8 {
        match tokio::time::timeout(timeout, attempt()).await {
            Ok(result) => return result,
            Err(_) => timeout = (timeout * 2).min(std::time::Duration::from_millis(500)),
        }
    }
    // Last try without a short timeout: the kernel's own retransmissions apply.
    attempt().await
}

/// An app inside its own network namespace.
pub(super) struct NetnsUpstream {
    pub(super) id: u64,
    pub(super) target: Arc<NetnsTarget>,
    pub(super) addr: SocketAddr,
    pub(super) sockets: NetnsSockets,
}

impl Upstream for NetnsUpstream {
    fn id(&self) -> u64 {
        self.id
    }

    fn connect(&self) -> ConnectFuture {
        let sockets = self.sockets.clone();
        let target = self.target.clone();
        let addr = self.addr;
        Box::pin(connect_retrying(move || {
            let sockets = sockets.clone();
            let target = target.clone();
            async move { sockets.connect(&target, addr).await }
        }))
    }
}

/// An app on the host network (or, in tests, any TCP address).
pub struct HostUpstream {
    pub id: u64,
    pub addr: SocketAddr,
}

impl Upstream for HostUpstream {
    fn id(&self) -> u64 {
        self.id
    }

    fn connect(&self) -> ConnectFuture {
        let addr = self.addr;
        Box::pin(connect_retrying(move || async move {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(s)
        }))
    }
}
