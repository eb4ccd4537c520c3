//! Namespaces built ahead of a boot by a short-lived holder process ([`WarmNs`]).
use std::ffi::c_int;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::clone::{clone_pidfd, CloneArgs};
use super::outcome::describe;
use super::{open_fd, pidfd_signal, wait_pidfd};
use crate::child::{self, ChildError, ChildFds, HOLDER_READY_SIZE, MAX_PROCS_FDS};
use crate::error::LaunchError;
use crate::prepare::PreparedSpec;

/// The namespaces a holder builds ahead of a boot (all but pid and cgroup, which must be new
/// for the container itself). Creating them is most of a cold boot's kernel work: the network
/// and IPC namespaces each register their sysctl tables, the mount namespace takes the whole
/// mount table.
pub(super) const WARM_NS_FLAGS: u64 =
    (libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC) as u64;

/// Namespaces built ahead of a boot by a holder process (mount: the container's root, pivoted,
/// without `/proc`; uts: the hostname set; ipc: fresh; net: `lo` up). Each is used by exactly
/// one container.
#[derive(Debug)]
pub(crate) struct WarmNs {
    /// The outbound link of `net` (`network: egress`); held for its `Drop`, which deletes the
    /// veth pair. Declared first, so dropped first: the pair is deleted by the zygote's dropper
    /// thread (at a lowered priority) while `net` is still open, instead of by the kernel's
    /// namespace cleanup worker (at normal priority, competing with boots) once `net` is
    /// closed.
    #[allow(dead_code)]
    pub egress: Option<crate::egress::EgressLink>,
    pub mnt: OwnedFd,
    pub uts: OwnedFd,
    pub ipc: OwnedFd,
    pub net: Option<OwnedFd>,
    /// The listening socket, made in `net` (isolated network with `ContainerSpec::listen`).
    pub listen: Option<OwnedFd>,
}

/// Builds a [`WarmNs`] for `p` with a short-lived holder process (off the boot path).
pub(crate) fn create_warm(p: &PreparedSpec) -> Result<WarmNs, LaunchError> {
    let (err_r, err_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| LaunchError::sys("pipe2", "", e))?;
    let fds = ChildFds {
        stdin: -1,
        stdout: -1,
        stderr: -1,
        err_pipe: err_w.as_raw_fd(),
        procs: [-1; MAX_PROCS_FDS],
        nprocs: 0,
        netns: -1,
        mntns: -1,
        utsns: -1,
        ipcns: -1,
        listen: -1,
        parent: std::process::id() as libc::pid_t,
        die_with_parent: false,
        parent_pidfd: -1,
        userns_sync: -1,
        userns_sync_w: -1,
    };
    let args = CloneArgs {
        flags: p.clone_flags & WARM_NS_FLAGS,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: fork semantics; the child runs only async-signal-safe code
    // (`child::run_holder`) and never returns.
    let cloned = unsafe { clone_pidfd(args, child::run_holder, p, &fds) };
    let (pid, pidfd) = cloned.map_err(|e| LaunchError::sys("clone3", "namespace holder", e))?;
    drop(err_w);
    let mut buf = [0u8; ChildError::SIZE];
    let mut got = 0;
    let ready = loop {
        match nix::unistd::read(err_r.as_raw_fd(), &mut buf[got..]) {
            Ok(0) => {
                break Err(LaunchError::Zygote(format!(
                    "namespace holder {pid} exited early"
                )))
            }
            Ok(n) => {
                got += n;
                // An error record starts with a small stage number, never with `R`.
                if got == HOLDER_READY_SIZE && buf[0] == b'R' {
                    break Ok(c_int::from_ne_bytes([buf[1], buf[2], buf[3], buf[4]]));
                }
                if got == ChildError::SIZE {
                    break Err(describe(p, None, ChildError::decode(&buf)));
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => break Err(LaunchError::sys("read", "holder pipe", e)),
        }
    };
    let opened = ready.and_then(|sock| {
        let ns = |kind: &str| {
            open_fd(
                Path::new(&format!("/proc/{pid}/ns/{kind}")),
                OFlag::O_RDONLY,
                Mode::empty(),
            )
        };
        let (mnt, uts, ipc) = (ns("mnt")?, ns("uts")?, ns("ipc")?);
        let net = if p.loopback { Some(ns("net")?) } else { None };
        let listen = if sock >= 0 {
            // SAFETY: pidfd_getfd copies descriptor `sock` of our (stopped-in-pause) child into
            // our table, with FD_CLOEXEC set; the result is a fresh descriptor we own.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), sock, 0u32) };
            if fd < 0 {
                return Err(LaunchError::sys(
                    "pidfd_getfd",
                    format!("listening socket of namespace holder {pid}"),
                    nix::errno::Errno::last(),
                ));
            }
            // SAFETY: as above, a fresh descriptor nothing else owns.
            Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
        } else {
            None
        };
        // The link out (network: egress), while the holder still pins the namespace.
        let egress = match (&p.egress, &net) {
            (Some(spec), Some(n)) => Some(
                crate::egress::setup(n.as_raw_fd(), spec)
                    .map_err(|e| LaunchError::Zygote(format!("egress link: {e}")))?,
            ),
            _ => None,
        };
        Ok(WarmNs {
            mnt,
            uts,
            ipc,
            net,
            listen,
            egress,
        })
    });
    let _ = pidfd_signal(pidfd.as_raw_fd(), libc::SIGKILL);
    let _ = wait_pidfd(pidfd.as_fd(), false);
    opened
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ContainerSpec, ListenSpec, NetworkMode, RootfsSpec};

    fn inode(fd: RawFd) -> u64 {
        // SAFETY: fstat on a descriptor we own, into a zeroed stack struct.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            assert_eq!(libc::fstat(fd, &mut st), 0);
            st.st_ino
        }
    }

    /// The warm path: the holder makes the socket inside the warm network namespace and the
    /// zygote keeps a copy that already listens on the port.
    #[test]
    fn warm_namespace_carries_a_listening_socket_of_its_own_netns() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED warm listen socket: needs root");
            return;
        }
        let mut spec = ContainerSpec::new(RootfsSpec::Host, vec!["/bin/true".into()]);
        spec.listen = Some(ListenSpec {
            port: 8123,
            backlog: 77,
        });
        let p = PreparedSpec::new(&spec).unwrap();
        let warm = create_warm(&p).unwrap();
        let sock = warm
            .listen
            .as_ref()
            .expect("a listening socket")
            .as_raw_fd();
        let net = warm.net.as_ref().expect("a network namespace").as_raw_fd();
        let accepting: bool = nix::sys::socket::getsockopt(
            warm.listen.as_ref().unwrap(),
            nix::sys::socket::sockopt::AcceptConn,
        )
        .unwrap();
        assert!(accepting);
        let addr: nix::sys::socket::SockaddrIn = nix::sys::socket::getsockname(sock).unwrap();
        assert_eq!(
            (addr.ip(), addr.port()),
            (std::net::Ipv4Addr::UNSPECIFIED, 8123)
        );
        // SAFETY: SIOCGSKNS returns a new descriptor for the socket's network namespace.
        let sk_ns = unsafe {
            libc::ioctl(sock, 0x894C /* SIOCGSKNS */)
        };
        assert!(sk_ns >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor we own.
        let sk_ns = unsafe { OwnedFd::from_raw_fd(sk_ns) };
        assert_eq!(inode(sk_ns.as_raw_fd()), inode(net));
        assert_ne!(
            inode(net),
            inode(
                open_fd(
                    Path::new("/proc/self/ns/net"),
                    OFlag::O_RDONLY,
                    Mode::empty()
                )
                .unwrap()
                .as_raw_fd()
            )
        );
        // Host networking: no netns of its own, so no socket either (the caller makes it).
        spec.network = NetworkMode::Host;
        let warm = create_warm(&PreparedSpec::new(&spec).unwrap()).unwrap();
        assert!(warm.net.is_none() && warm.listen.is_none());
    }
}
