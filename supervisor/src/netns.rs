//! Reaching apps that live in their own network namespace, without veth or iptables.
//!
//! A socket belongs to the network namespace of the thread that created it. One dedicated
//! thread enters the app's namespace (`setns`), creates a non-blocking TCP socket, and returns
//! to the host namespace; the socket is then connected from tokio like any other. The thread is
//! never used for anything else, so a failed switch back cannot leak a wrong namespace into
//! the runtime's worker threads: it aborts the process instead. Sockets are made a few at a
//! time per trip, so most connections take a spare socket without any thread hop.
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use tokio::sync::oneshot;

/// Sockets made per trip into a namespace: one pair of `setns` calls serves this many
/// connections (the spares wait, unconnected, in [`NetnsTarget`]).
const BATCH: usize = 4;

struct Job {
    netns: Arc<OwnedFd>,
    family: AddressFamily,
    count: usize,
    reply: oneshot::Sender<io::Result<Vec<OwnedFd>>>,
}

/// One network namespace to connect into, with a few spare sockets already created in it.
#[derive(Debug)]
pub struct NetnsTarget {
    netns: Arc<OwnedFd>,
    spare: Mutex<Vec<OwnedFd>>,
    refilling: AtomicBool,
}

impl NetnsTarget {
    /// `netns` is an open `/proc/PID/ns/net` (or any network namespace file).
    pub fn new(netns: OwnedFd) -> Arc<Self> {
        Arc::new(NetnsTarget {
            netns: Arc::new(netns),
            spare: Mutex::new(Vec::new()),
            refilling: AtomicBool::new(false),
        })
    }

    fn take_spare(&self) -> (Option<OwnedFd>, usize) {
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        let fd = spare.pop();
        (fd, spare.len())
    }

    fn add_spares(&self, fds: Vec<OwnedFd>) {
        self.spare
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(fds);
    }
}

/// Creates sockets inside other network namespaces.
#[derive(Debug, Clone)]
pub struct NetnsSockets {
    tx: mpsc::Sender<Job>,
}

impl NetnsSockets {
    /// Starts the namespace thread (it remembers its own namespace to return to).
    pub fn start() -> io::Result<Self> {
        let home = std::fs::File::open("/proc/thread-self/ns/net")?;
        let home = OwnedFd::from(home);
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("hako-netns".into())
            .spawn(move || {
                for job in rx {
                    let result = make_sockets(&job, &home);
                    let _ = job.reply.send(result);
                }
            })?;
        Ok(NetnsSockets { tx })
    }

    fn request(
        &self,
        netns: Arc<OwnedFd>,
        count: usize,
    ) -> io::Result<oneshot::Receiver<io::Result<Vec<OwnedFd>>>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                netns,
                family: AddressFamily::Inet,
                count,
                reply,
            })
            .map_err(|_| io::Error::other("network namespace thread is gone"))?;
        Ok(rx)
    }

    /// Opens a TCP connection to the IPv4 `addr` inside `target`'s network namespace. A spare
    /// socket is used when one is there (no thread hop); the spares are topped up in the
    /// background.
    pub async fn connect(
        &self,
        target: &Arc<NetnsTarget>,
        addr: SocketAddr,
    ) -> io::Result<tokio::net::TcpStream> {
        if !addr.is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{addr}: only IPv4 upstreams are reachable inside a namespace"),
            ));
        }
        let (spare, left) = target.take_spare();
        let fd = match spare {
            Some(fd) => {
                if left == 0 && !target.refilling.swap(true, Ordering::AcqRel) {
                    if let Ok(rx) = self.request(target.netns.clone(), BATCH) {
                        let target = target.clone();
                        tokio::spawn(async move {
                            if let Ok(Ok(fds)) = rx.await {
                                target.add_spares(fds);
                            }
                            target.refilling.store(false, Ordering::Release);
                        });
                    } else {
                        target.refilling.store(false, Ordering::Release);
                    }
                }
                fd
            }
            None => {
                let mut fds =
                    self.request(target.netns.clone(), BATCH)?
                        .await
                        .map_err(|_| {
                            io::Error::other("network namespace thread dropped the request")
                        })??;
                let fd = fds
                    .pop()
                    .ok_or_else(|| io::Error::other("no socket was created"))?;
                target.add_spares(fds);
                fd
            }
        };
        let std_stream = std::net::TcpStream::from(fd);
        let socket = tokio::net::TcpSocket::from_std_stream(std_stream);
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

fn make_sockets(job: &Job, home: &OwnedFd) -> io::Result<Vec<OwnedFd>> {
    setns(job.netns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let mut out = Vec::with_capacity(job.count);
    let mut result = Ok(());
    for _ in 0..job.count.max(1) {
        match socket(
            job.family,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        ) {
            Ok(fd) => out.push(fd),
            Err(e) => {
                result = Err(io::Error::from(e));
                break;
            }
        }
    }
    if let Err(e) = setns(home.as_fd(), CloneFlags::CLONE_NEWNET) {
        // This thread would now create every later socket in the wrong namespace.
        tracing::error!(error = %e, "cannot return to the host network namespace; aborting");
        std::process::abort();
    }
    match (out.is_empty(), result) {
        (true, Err(e)) => Err(e),
        _ => Ok(out),
    }
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
        let target = NetnsTarget::new(ns);
        let mut s = sockets
            .connect(&target, addr)
            .await
            .expect("connect inside");
        // A second connection takes a spare socket made on the first trip.
        let s2 = sockets
            .connect(&target, addr)
            .await
            .expect("second connect inside");
        drop(s2);
        let mut buf = Vec::new();
        use tokio::io::AsyncReadExt;
        s.read_to_end(&mut buf).await.expect("read");
        assert_eq!(buf, b"inside");
        done_tx.send(()).expect("done");
        t.join().expect("thread");
    }
}
