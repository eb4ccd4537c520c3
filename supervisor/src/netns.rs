//! Reaching apps that live in their own network namespace, without veth or iptables.
//!
//! A socket belongs to the network namespace of the thread that created it. One dedicated
//! thread enters the app's namespace (`setns`), creates a non-blocking TCP socket, and returns
//! to the host namespace; the socket is then connected from tokio like any other. The thread is
//! never used for anything else, so a failed switch back cannot leak a wrong namespace into
//! the runtime's worker threads: it aborts the process instead.
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::sync::Arc;

use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use tokio::sync::oneshot;

struct Job {
    netns: Arc<OwnedFd>,
    family: AddressFamily,
    reply: oneshot::Sender<io::Result<OwnedFd>>,
}

/// Creates sockets inside other network namespaces.
#[derive(Debug, Clone)]
pub struct NetnsSockets {
    tx: mpsc::Sender<Job>,
}

impl NetnsSockets {
    /// Starts the namespace thread. `self_netns` is this thread's own namespace file
    /// (normally `/proc/thread-self/ns/net`).
    pub fn start() -> io::Result<Self> {
        let home = std::fs::File::open("/proc/thread-self/ns/net")?;
        let home = OwnedFd::from(home);
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("hako-netns".into())
            .spawn(move || {
                for job in rx {
                    let result = make_socket(&job, &home);
                    let _ = job.reply.send(result);
                }
            })?;
        Ok(NetnsSockets { tx })
    }

    /// Opens a TCP connection to `addr` inside the network namespace `netns`.
    pub async fn connect(
        &self,
        netns: Arc<OwnedFd>,
        addr: SocketAddr,
    ) -> io::Result<tokio::net::TcpStream> {
        let (reply, rx) = oneshot::channel();
        let family = if addr.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        self.tx
            .send(Job {
                netns,
                family,
                reply,
            })
            .map_err(|_| io::Error::other("network namespace thread is gone"))?;
        let fd = rx
            .await
            .map_err(|_| io::Error::other("network namespace thread dropped the request"))??;
        let std_stream = std::net::TcpStream::from(fd);
        let socket = tokio::net::TcpSocket::from_std_stream(std_stream);
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

fn make_socket(job: &Job, home: &OwnedFd) -> io::Result<OwnedFd> {
    setns(job.netns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let sock = socket(
        job.family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from);
    if let Err(e) = setns(home.as_fd(), CloneFlags::CLONE_NEWNET) {
        // This thread would now create every later socket in the wrong namespace.
        tracing::error!(error = %e, "cannot return to the host network namespace; aborting");
        std::process::abort();
    }
    sock
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[tokio::test]
    async fn connects_inside_a_fresh_namespace_only() {
        if !is_root() {
            eprintln!("skipped: needs root to create a network namespace");
            return;
        }
        // A thread that owns a new network namespace with lo up and a listener on it.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare netns");
            let st = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status();
            assert!(
                st.map(|s| s.success()).unwrap_or(false),
                "ip link set lo up"
            );
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind in netns");
            let ns = OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").expect("ns"));
            tx.send((ns, l.local_addr().expect("addr"))).expect("send");
            let (mut s, _) = l.accept().expect("accept");
            use std::io::Write;
            s.write_all(b"inside").expect("write");
            drop(s);
            let _ = done_rx.recv();
        });
        let (ns, addr) = rx.recv().expect("netns ready");
        // The host namespace has no listener on that port.
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
        let sockets = NetnsSockets::start().expect("start");
        let mut s = sockets
            .connect(Arc::new(ns), addr)
            .await
            .expect("connect inside");
        let mut buf = Vec::new();
        use tokio::io::AsyncReadExt;
        s.read_to_end(&mut buf).await.expect("read");
        assert_eq!(buf, b"inside");
        done_tx.send(()).expect("done");
        t.join().expect("thread");
    }
}
