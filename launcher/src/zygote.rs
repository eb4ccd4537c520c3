//! The zygote: a single-threaded process forked from `main()` before any runtime thread
//! exists. It receives spawn requests over a `SOCK_SEQPACKET` socketpair, keeps one
//! [`PreparedSpec`] per `spec_key`, clones each container with `CLONE_PARENT | CLONE_PIDFD`
//! (so the container is a child of the hako process, which reaps it via the pidfd) and answers
//! with the pid and the pidfd (`SCM_RIGHTS`).
use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Mutex;

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use serde::{Deserialize, Serialize};

use crate::cgroup::CgroupAttach;
use crate::error::LaunchError;
use crate::prepare::PreparedSpec;
use crate::spawn::{clone_container, wait_pidfd, Output, Spawned};
use crate::spec::ContainerSpec;

/// Largest request or reply (one datagram).
const MAX_MESSAGE: usize = 1 << 20;

/// One spawn request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpawnRequest {
    pub spec: ContainerSpec,
    /// Cache key: an identical key reuses the prepared strings, mount table and BPF.
    pub spec_key: String,
    /// Where to place the process before its first instruction ([`crate::InstanceCgroup::attach`]).
    pub cgroup: Option<CgroupAttach>,
    /// stdout and stderr appended here; `None` means `/dev/null`.
    pub log_path: Option<PathBuf>,
}

impl SpawnRequest {
    pub fn output(&self) -> Output {
        self.log_path.clone().map_or(Output::Null, Output::Append)
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Ok { pid: i32 },
    /// `pid` is set when a child exists (and is attached as a pidfd) and must be reaped.
    Failed { pid: Option<i32>, error: LaunchError },
}

/// Handle on the zygote. `Send + Sync`; calls are blocking and serialized internally.
#[derive(Debug)]
pub struct Zygote {
    sock: Mutex<OwnedFd>,
    pid: i32,
}

impl Zygote {
    /// Forks the single-threaded zygote. MUST be called while the process is single-threaded
    /// (from `main()`, before tokio), and from the thread that lives as long as the process
    /// (the zygote dies with that thread through `PR_SET_PDEATHSIG`).
    pub fn start() -> Result<Zygote, LaunchError> {
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| LaunchError::sys("socketpair", "", e))?;
        let parent = std::process::id() as i32;
        // SAFETY: fork in a process the caller guarantees to be single-threaded (and even with
        // other threads, glibc's fork keeps malloc usable in the child).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(LaunchError::sys("fork", "zygote", nix::errno::Errno::last()));
        }
        if pid == 0 {
            drop(ours);
            zygote_main(theirs, parent);
        }
        drop(theirs);
        tracing::debug!(pid, "zygote started");
        Ok(Zygote { sock: Mutex::new(ours), pid })
    }

    /// The zygote's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Spawns one container; blocking. On a setup or exec failure the child has already been
    /// reaped when the error is returned.
    pub fn spawn(&self, req: &SpawnRequest) -> Result<Spawned, LaunchError> {
        let body = serde_json::to_vec(req).map_err(|e| LaunchError::Zygote(format!("encode request: {e}")))?;
        if body.len() > MAX_MESSAGE {
            return Err(LaunchError::InvalidSpec(format!("request of {} bytes is too large", body.len())));
        }
        let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        send(sock.as_raw_fd(), &body, None).map_err(|e| LaunchError::Zygote(format!("send: {e}")))?;
        let (reply, fd) = recv(sock.as_raw_fd()).map_err(|e| LaunchError::Zygote(format!("receive: {e}")))?;
        drop(sock);
        let Some(reply) = reply else {
            return Err(LaunchError::Zygote("zygote exited".into()));
        };
        let reply: Reply =
            serde_json::from_slice(&reply).map_err(|e| LaunchError::Zygote(format!("decode reply: {e}")))?;
        match (reply, fd) {
            (Reply::Ok { pid }, Some(pidfd)) => Ok(Spawned { pid, pidfd }),
            (Reply::Ok { pid }, None) => Err(LaunchError::Zygote(format!("no pidfd for pid {pid}"))),
            (Reply::Failed { error, .. }, fd) => {
                if let Some(fd) = fd {
                    let _ = wait_pidfd(fd.as_fd(), false);
                }
                Err(error)
            }
        }
    }
}

impl Drop for Zygote {
    /// Closes the socket (the zygote exits on EOF) and reaps it.
    fn drop(&mut self) {
        let sock = self.sock.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = nix::sys::socket::shutdown(sock.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(self.pid), None);
    }
}

fn send(sock: RawFd, body: &[u8], fd: Option<RawFd>) -> nix::Result<()> {
    let iov = [IoSlice::new(body)];
    let fds;
    let cmsgs: Vec<ControlMessage<'_>> = match fd {
        Some(f) => {
            fds = [f];
            vec![ControlMessage::ScmRights(&fds)]
        }
        None => Vec::new(),
    };
    loop {
        match sendmsg::<()>(sock, &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r.map(|_| ()),
        }
    }
}

/// Receives one message; `None` on EOF.
fn recv(sock: RawFd) -> nix::Result<(Option<Vec<u8>>, Option<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => r?,
        };
        let mut fd = None;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for f in fds {
                    // SAFETY: SCM_RIGHTS installed this descriptor in our table just now.
                    let owned = unsafe { OwnedFd::from_raw_fd(f) };
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
            }
        }
        let n = msg.bytes;
        if n == 0 && fd.is_none() {
            return Ok((None, None));
        }
        buf.truncate(n);
        return Ok((Some(buf), fd));
    }
}

/// The zygote's loop. Never returns.
fn zygote_main(sock: OwnedFd, parent: i32) -> ! {
    // SAFETY: prctl/signal/getppid/_exit are plain syscalls on constants.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
        if libc::getppid() != parent {
            libc::_exit(0);
        }
        // Ctrl-C on the terminal is for the supervisor, which shuts us down by closing the socket.
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let mut cache: HashMap<String, PreparedSpec> = HashMap::new();
    loop {
        let body = match recv(sock.as_raw_fd()) {
            Ok((Some(b), _)) => b,
            Ok((None, _)) | Err(_) => break,
        };
        let (reply, fd) = handle(&mut cache, &body);
        let reply = serde_json::to_vec(&reply).unwrap_or_else(|_| b"{\"Failed\":{\"pid\":null,\"error\":{\"Zygote\":\"encode\"}}}".to_vec());
        if send(sock.as_raw_fd(), &reply, fd.as_ref().map(|f| f.as_raw_fd())).is_err() {
            break;
        }
    }
    // SAFETY: leaving the forked process without running the parent's atexit handlers.
    unsafe { libc::_exit(0) }
}

fn handle(cache: &mut HashMap<String, PreparedSpec>, body: &[u8]) -> (Reply, Option<OwnedFd>) {
    let req: SpawnRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return (Reply::Failed { pid: None, error: LaunchError::Zygote(format!("bad request: {e}")) }, None),
    };
    if !cache.contains_key(&req.spec_key) {
        match PreparedSpec::new(&req.spec) {
            Ok(p) => {
                cache.insert(req.spec_key.clone(), p);
            }
            Err(error) => return (Reply::Failed { pid: None, error }, None),
        }
    }
    let Some(prepared) = cache.get(&req.spec_key) else {
        return (Reply::Failed { pid: None, error: LaunchError::Zygote("cache".into()) }, None);
    };
    match clone_container(prepared, req.cgroup.as_ref(), &req.output(), true) {
        Ok(raw) => match raw.error {
            None => (Reply::Ok { pid: raw.pid }, Some(raw.pidfd)),
            Some(error) => (Reply::Failed { pid: Some(raw.pid), error }, Some(raw.pidfd)),
        },
        Err(error) => (Reply::Failed { pid: None, error }, None),
    }
}
