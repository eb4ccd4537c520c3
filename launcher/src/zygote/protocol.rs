//! What goes over the zygote's socket: requests, replies (JSON, one datagram each, tagged
//! with the request id) and the `SCM_RIGHTS` send/receive helpers.
use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use crate::cgroup::CgroupAttach;
use crate::error::LaunchError;
use crate::spawn::Output;
use crate::spec::ContainerSpec;

/// Largest request or reply (one datagram).
pub(super) const MAX_MESSAGE: usize = 1 << 20;

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
    /// With `log_path`: stderr goes here instead, and both are opened as they are (not
    /// created, not appended): the supervisor's pipes, as `/proc/PID/fd/N`.
    #[serde(default)]
    pub stderr_path: Option<PathBuf>,
}

impl SpawnRequest {
    pub fn output(&self) -> Output {
        match (&self.log_path, &self.stderr_path) {
            (Some(out), Some(err)) => Output::Split {
                stdout: out.clone(),
                stderr: err.clone(),
            },
            (out, _) => out.clone().map_or(Output::Null, Output::Append),
        }
    }
}

/// One message to the zygote (one datagram, JSON).
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Request {
    /// Boot a container.
    Spawn(SpawnRequest),
    /// Build and cache the app's [`PreparedSpec`](crate::PreparedSpec) and have its warm namespaces built in the
    /// background.
    Prepare {
        spec: ContainerSpec,
        spec_key: String,
    },
    /// Drop the app's prepared spec and release its warm namespaces.
    Forget { spec_key: String },
    /// Report [`ZygoteStats`].
    Stats,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Reply {
    Ok {
        pid: i32,
        /// The container joined warm namespaces.
        #[serde(default)]
        warm: bool,
    },
    /// A request without a result (prepare, forget) was accepted.
    Done,
    Stats(ZygoteStats),
    /// `pid` is set when a child exists (and is attached as a pidfd) and must be reaped.
    Failed {
        pid: Option<i32>,
        error: LaunchError,
    },
}

/// What the zygote holds right now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZygoteStats {
    /// Apps (`spec_key`s) whose [`PreparedSpec`](crate::PreparedSpec) is cached.
    pub prepared_specs: usize,
    /// Warm namespace sets ready, over all apps (each: a mount and, for an isolated network, a
    /// network namespace, plus the listening socket if the app is socket-activated).
    pub warm_namespaces: usize,
    /// Warm namespace sets ready per app (`spec_key`), apps with none left out.
    pub warm_by_app: BTreeMap<String, usize>,
}

/// One message on the socket, in either direction: replies carry the id of their request and
/// go out in completion order.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Tagged<T> {
    pub(super) id: u64,
    pub(super) msg: T,
}

/// The id of a message whose body cannot be decoded.
#[derive(Debug, Deserialize)]
pub(super) struct IdOnly {
    pub(super) id: u64,
}

pub(super) fn send(sock: RawFd, body: &[u8], fd: Option<RawFd>) -> nix::Result<()> {
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

/// Receives one message into `buf` (of [`MAX_MESSAGE`] bytes): its length and descriptor;
/// `None` on EOF.
pub(super) fn recv(sock: RawFd, buf: &mut [u8]) -> nix::Result<Option<(usize, Option<OwnedFd>)>> {
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    loop {
        let mut iov = [IoSliceMut::new(buf)];
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
            return Ok(None);
        }
        return Ok(Some((n, fd)));
    }
}
