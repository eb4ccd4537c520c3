//! One zygote process and the connection to it: calls by request id, and the reader thread
//! that hands each reply to the caller waiting for it.
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::protocol::{recv, send, IdOnly, Reply, Tagged, MAX_MESSAGE};
use crate::error::LaunchError;

/// A reply as the reader thread hands it to the caller waiting for it.
pub(super) type Delivery = (Reply, Option<OwnedFd>);

/// Callers waiting for their reply, by request id.
#[derive(Debug, Default)]
struct Waiters {
    by_id: HashMap<u64, Sender<Delivery>>,
    /// The zygote exited: no reply will ever come.
    closed: bool,
}

type SharedWaiters = Arc<Mutex<Waiters>>;

fn lock_waiters(w: &Mutex<Waiters>) -> std::sync::MutexGuard<'_, Waiters> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One zygote process and the connection to it.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) pid: i32,
    /// Readable once the zygote has exited; the keeper reaps it through this.
    pub(super) pidfd: OwnedFd,
    pub(super) sock: Arc<OwnedFd>,
    /// Held only while one request datagram is sent.
    send_lock: Mutex<()>,
    waiters: SharedWaiters,
    reader: Mutex<Option<JoinHandle<()>>>,
}

/// What one call on a connection came to.
pub(super) enum CallError {
    /// The request never reached this zygote (it was gone already): safe to retry elsewhere.
    NotSent,
    /// Sent, but the zygote died before it answered.
    Died,
    Other(LaunchError),
}

impl Conn {
    pub(super) fn new(pid: i32, pidfd: OwnedFd, sock: OwnedFd) -> Result<Conn, LaunchError> {
        let sock = Arc::new(sock);
        let waiters = SharedWaiters::default();
        let reader = {
            let (sock, waiters) = (sock.clone(), waiters.clone());
            std::thread::Builder::new()
                .name("hako-zygote-rx".into())
                .spawn(move || read_replies(&sock, &waiters))
                .map_err(|e| LaunchError::Zygote(format!("start the reply thread: {e}")))?
        };
        Ok(Conn {
            pid,
            pidfd,
            sock,
            send_lock: Mutex::new(()),
            waiters,
            reader: Mutex::new(Some(reader)),
        })
    }

    pub(super) fn call(
        &self,
        id: u64,
        body: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Delivery, CallError> {
        let (tx, rx) = channel();
        {
            let mut w = lock_waiters(&self.waiters);
            if w.closed {
                return Err(CallError::NotSent);
            }
            w.by_id.insert(id, tx);
        }
        let sent = {
            let _send = lock(&self.send_lock);
            send(self.sock.as_raw_fd(), body, None)
        };
        if let Err(e) = sent {
            lock_waiters(&self.waiters).by_id.remove(&id);
            return Err(match e {
                nix::errno::Errno::EPIPE
                | nix::errno::Errno::ECONNRESET
                | nix::errno::Errno::ENOTCONN => CallError::NotSent,
                e => CallError::Other(LaunchError::Zygote(format!("send: {e}"))),
            });
        }
        // The reader drops every sender when the zygote is gone.
        match timeout {
            None => rx.recv().map_err(|_| CallError::Died),
            Some(t) => rx.recv_timeout(t).map_err(|e| match e {
                RecvTimeoutError::Timeout => {
                    lock_waiters(&self.waiters).by_id.remove(&id);
                    CallError::Other(LaunchError::Zygote(format!(
                        "no answer within {} ms",
                        t.as_millis()
                    )))
                }
                RecvTimeoutError::Disconnected => CallError::Died,
            }),
        }
    }

    /// Closes our end (the zygote exits on EOF; the reader thread stops) and joins the reader.
    pub(super) fn close(&self) {
        let _ = nix::sys::socket::shutdown(self.sock.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        if let Some(r) = lock(&self.reader).take() {
            let _ = r.join();
        }
    }

    /// Whether the process has exited (its pidfd polls readable).
    pub(super) fn exited(&self) -> bool {
        let mut pfd = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut pfd, PollTimeout::ZERO), Ok(n) if n > 0)
    }
}

/// The reader thread: hands each reply (and its descriptor) to the caller waiting for its id;
/// when the zygote is gone, wakes every waiter with an error.
fn read_replies(sock: &OwnedFd, waiters: &Mutex<Waiters>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, fd) = match recv(sock.as_raw_fd(), &mut buf) {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "zygote socket");
                break;
            }
        };
        let body = &buf[..n];
        let (id, reply) = match serde_json::from_slice::<Tagged<Reply>>(body) {
            Ok(t) => (t.id, t.msg),
            Err(e) => match serde_json::from_slice::<IdOnly>(body) {
                Ok(t) => (
                    t.id,
                    Reply::Failed {
                        pid: None,
                        error: LaunchError::Zygote(format!("decode reply: {e}")),
                    },
                ),
                Err(_) => {
                    tracing::warn!(error = %e, "undecodable zygote reply dropped");
                    continue;
                }
            },
        };
        let tx = lock_waiters(waiters).by_id.remove(&id);
        match tx {
            // A send error means the caller is gone; the descriptor is closed with the reply.
            Some(tx) => {
                let _ = tx.send((reply, fd));
            }
            None => tracing::warn!(id, "zygote reply for no pending request"),
        }
    }
    let mut w = lock_waiters(waiters);
    w.closed = true;
    w.by_id.clear();
}
