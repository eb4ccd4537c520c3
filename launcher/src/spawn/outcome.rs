//! A cloned container whose setup is still running, and how its outcome is read: the
//! close-on-exec error pipe, and the child's error record turned into a [`LaunchError`].
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use crate::cgroup::CgroupAttach;
use crate::child::{listen_step, stage, ChildError};
use crate::error::LaunchError;
use crate::prepare::PreparedSpec;

/// A cloned container whose setup is still running: its outcome arrives on the error pipe
/// (EOF once `execve` succeeded, or a [`ChildError`] record).
pub(crate) struct Started {
    pub pid: i32,
    pub pidfd: OwnedFd,
    pub pipe: ErrorPipe,
    /// Cloned with vfork semantics: the outcome is final already ([`Started::outcome_now`]).
    pub vforked: bool,
}

impl Started {
    /// The outcome of a vfork-semantics clone, without waiting for the pipe's EOF: the child
    /// released us either by exiting, after writing its whole error record (12 bytes, one
    /// atomic pipe write), or by reaching `execve`'s point of no return, after which nothing
    /// can fail back to us (a late failure kills the process, seen as its exit status). The
    /// pipe's close-on-exec EOF comes a moment later, and waiting for it cost every boot a
    /// wake-up. `None` when the clone had fork semantics: then the pipe must be waited for.
    pub fn outcome_now(
        &mut self,
        p: &PreparedSpec,
        cgroup: Option<&CgroupAttach>,
    ) -> Option<Option<LaunchError>> {
        if !self.vforked {
            return None;
        }
        let mut pfd = [nix::poll::PollFd::new(
            self.pipe.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO) {
            Ok(0) => return Some(None),
            Ok(_) => {}
            // Unknown: let the caller wait for the pipe.
            Err(_) => return None,
        }
        // Readable: the record (complete) or EOF; one read tells which.
        Some(self.pipe.wait(p, cgroup, self.pid))
    }
}

/// The read end of a child's close-on-exec error pipe, and the part of the record read so far.
pub(crate) struct ErrorPipe {
    fd: OwnedFd,
    buf: [u8; ChildError::SIZE],
    got: usize,
}

impl ErrorPipe {
    pub(super) fn new(fd: OwnedFd) -> ErrorPipe {
        ErrorPipe {
            fd,
            buf: [0; ChildError::SIZE],
            got: 0,
        }
    }

    /// The descriptor to poll for readability.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// One `read` (blocks unless the pipe polled readable). `None` while the record is
    /// incomplete; `Some(None)` once the child exec'd (EOF); `Some(Some(error))` on failure.
    pub fn read_once(
        &mut self,
        p: &PreparedSpec,
        cgroup: Option<&CgroupAttach>,
        pid: i32,
    ) -> Option<Option<LaunchError>> {
        match nix::unistd::read(self.fd.as_raw_fd(), &mut self.buf[self.got..]) {
            Ok(0) if self.got == 0 => Some(None),
            Ok(0) => Some(Some(LaunchError::Zygote(format!(
                "short error record from child {pid}"
            )))),
            Ok(n) => {
                self.got += n;
                (self.got == ChildError::SIZE)
                    .then(|| Some(describe(p, cgroup, ChildError::decode(&self.buf))))
            }
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => None,
            Err(e) => Some(Some(LaunchError::sys("read", "error pipe", e))),
        }
    }

    /// Reads until the outcome is known.
    pub fn wait(
        &mut self,
        p: &PreparedSpec,
        cgroup: Option<&CgroupAttach>,
        pid: i32,
    ) -> Option<LaunchError> {
        loop {
            if let Some(outcome) = self.read_once(p, cgroup, pid) {
                return outcome;
            }
        }
    }
}

/// Turns a child's error record into a message naming the step and the path.
pub(super) fn describe(
    p: &PreparedSpec,
    cgroup: Option<&CgroupAttach>,
    e: ChildError,
) -> LaunchError {
    let idx = e.index as usize;
    let setup = |step: &str, path: &str| LaunchError::Setup {
        step: step.to_owned(),
        path: path.to_owned(),
        errno: e.errno,
    };
    let exec_path = || {
        p.exec_names
            .get(idx)
            .cloned()
            .unwrap_or_else(|| p.command0.clone())
    };
    match e.stage {
        stage::EXEC => LaunchError::Exec {
            path: exec_path(),
            errno: e.errno,
        },
        stage::INTERPRETER => LaunchError::BadInterpreter {
            path: exec_path(),
            errno: e.errno,
        },
        stage::MOUNT => {
            let (op, path) = p.op_names.get(idx).cloned().unwrap_or_default();
            setup(&op, &path)
        }
        stage::CGROUP => {
            let path = match cgroup {
                Some(CgroupAttach::V1 { procs }) => procs.get(idx).map(|p| p.display().to_string()),
                _ => None,
            };
            setup(
                "join cgroup",
                &path.unwrap_or_else(|| format!("hierarchy #{idx}")),
            )
        }
        stage::UNSHARE_CGROUP => setup("unshare", "cgroup namespace"),
        stage::STDIO => setup("stdio", &format!("fd {idx}")),
        stage::PIVOT => setup(
            ["chdir", "pivot_root", "umount old root", "chdir"]
                .get(idx)
                .copied()
                .unwrap_or("pivot"),
            "new root",
        ),
        stage::HOSTNAME => setup("sethostname", &p.hostname_name),
        stage::LOOPBACK => setup("bring up", "lo"),
        stage::RLIMIT => setup(
            "setrlimit",
            if idx == 0 {
                "RLIMIT_NOFILE"
            } else {
                "RLIMIT_NPROC"
            },
        ),
        stage::WORKDIR => setup("chdir", &p.workdir_name),
        stage::IDS => setup("set ids", &format!("uid {} gid {}", p.uid, p.gid)),
        stage::CAPS => setup(
            "capabilities",
            ["bounding set", "capset", "ambient set"]
                .get(idx)
                .copied()
                .unwrap_or(""),
        ),
        stage::NO_NEW_PRIVS => setup("prctl", "PR_SET_NO_NEW_PRIVS"),
        stage::SECCOMP => setup("seccomp", "default profile"),
        stage::SIGNALS => setup("signal mask", ""),
        stage::USERNS => setup(
            [
                "write uid_map",
                "write gid_map",
                "prlimit",
                "wait for id maps",
            ]
            .get(idx)
            .copied()
            .unwrap_or("user namespace"),
            "container's user namespace",
        ),
        stage::LISTEN => LaunchError::Listen {
            port: p.listen.map_or(0, |l| l.port),
            step: listen_step::name(e.index).to_owned(),
            errno: e.errno,
        },
        stage::WARM_NS => setup(
            "setns",
            match idx {
                0 => "warm network namespace",
                1 => "warm mount namespace",
                2 => "warm UTS namespace",
                _ => "warm IPC namespace",
            },
        ),
        other => setup("unknown step", &other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ContainerSpec, ListenSpec, RootfsSpec};

    #[test]
    fn child_listen_failures_name_the_port_step_and_errno() {
        let mut spec = ContainerSpec::new(RootfsSpec::Host, vec!["/bin/true".into()]);
        spec.seccomp = false;
        spec.listen = Some(ListenSpec::new(8080));
        let p = PreparedSpec::new(&spec).unwrap();
        let e = describe(
            &p,
            None,
            ChildError {
                stage: stage::LISTEN,
                index: listen_step::BIND,
                errno: libc::EADDRINUSE,
            },
        );
        assert_eq!(
            e.to_string(),
            "listening socket 0.0.0.0:8080: bind: Address already in use (EADDRINUSE)"
        );
        assert_eq!(e.errno(), Some(libc::EADDRINUSE));
    }
}
