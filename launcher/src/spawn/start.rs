//! [`start_container`]: the descriptors a child needs (stdio, cgroup, listening socket, error
//! pipe), the clone, and the id maps of a user-namespaced child.
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::clone::{
    clone_pidfd, clone_vfork_pidfd, set_signal_mask, CloneArgs, CLONE_INTO_CGROUP, VFORK_SEMANTICS,
};
use super::outcome::{ErrorPipe, Started};
use super::warm::{WarmNs, WARM_NS_FLAGS};
use super::{open_fd, Output};
use crate::cgroup::CgroupAttach;
use crate::child::{self, listen_step, ChildFds, MAX_PROCS_FDS, USERNS_RELEASE_SIZE};
use crate::error::LaunchError;
use crate::prepare::PreparedSpec;
use crate::spec::ListenSpec;

/// Creates the listening socket of `l` in the calling thread's network namespace.
pub(crate) fn listen_socket(l: ListenSpec) -> Result<OwnedFd, LaunchError> {
    // SAFETY: `child::listen_socket` makes only raw system calls on stack values.
    match unsafe { child::listen_socket(l.port, l.backlog) } {
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err((step, errno)) => Err(LaunchError::Listen {
            port: l.port,
            step: listen_step::name(step).to_owned(),
            errno,
        }),
    }
}

/// Where and how [`start_container`] clones.
#[derive(Clone, Copy)]
pub(crate) enum Launch<'a> {
    /// From the zygote, as a child of its parent (`CLONE_PARENT`), in these warm namespaces
    /// if any.
    Zygote(Option<&'a WarmNs>),
    /// From the caller, returning once the child has called `execve` (the vfork path).
    Direct,
}

/// Clones a container from `p`; the caller learns the outcome from [`Started::pipe`]. A cold
/// boot from the zygote returns without waiting for the child's setup; every other boot
/// returns once the child has called `execve` or failed (see `clone_vfork_pidfd`), so its
/// outcome is already in the pipe. Every descriptor the child
/// needs (warm namespaces, listening socket) has been copied into it when this returns.
pub(crate) fn start_container(
    p: &PreparedSpec,
    cgroup: Option<&CgroupAttach>,
    output: &Output,
    launch: Launch<'_>,
) -> Result<Started, LaunchError> {
    let (clone_parent, warm) = match launch {
        Launch::Zygote(warm) => (true, warm),
        Launch::Direct => (false, None),
    };
    // Warm namespaces belong to the host's user namespace: a user-namespaced container could
    // not join them (the zygote builds none for it).
    let warm = warm.filter(|_| !p.user_namespace);
    let null = Path::new("/dev/null");
    let stdin = open_fd(null, OFlag::O_RDONLY, Mode::empty())?;
    let out_owned = match output {
        Output::Null => Some(open_fd(null, OFlag::O_WRONLY, Mode::empty())?),
        Output::Append(path) => Some(open_fd(
            path,
            OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT,
            Mode::from_bits_truncate(0o640),
        )?),
        Output::Split { stdout, .. } => Some(open_fd(stdout, OFlag::O_WRONLY, Mode::empty())?),
        Output::Inherit => None,
    };
    let err_owned = match output {
        Output::Split { stderr, .. } => Some(open_fd(stderr, OFlag::O_WRONLY, Mode::empty())?),
        _ => None,
    };
    let (stdout, mut stderr): (RawFd, RawFd) = match &out_owned {
        Some(fd) => (fd.as_raw_fd(), fd.as_raw_fd()),
        None => (1, 2),
    };
    if let Some(fd) = &err_owned {
        stderr = fd.as_raw_fd();
    }
    let mut cgroup_dir: Option<OwnedFd> = None;
    let mut procs: Vec<OwnedFd> = Vec::new();
    match cgroup {
        Some(CgroupAttach::V2 { dir }) => {
            cgroup_dir = Some(open_fd(
                dir,
                OFlag::O_PATH | OFlag::O_DIRECTORY,
                Mode::empty(),
            )?);
        }
        Some(CgroupAttach::V1 { procs: files }) => {
            if files.len() > MAX_PROCS_FDS {
                return Err(LaunchError::InvalidSpec(format!(
                    "{} cgroup hierarchies (max {MAX_PROCS_FDS})",
                    files.len()
                )));
            }
            for f in files {
                procs.push(open_fd(f, OFlag::O_WRONLY, Mode::empty())?);
            }
        }
        None => {}
    }
    // The inherited listening socket: from the warm network namespace, or made here in the
    // host's for host networking; on a cold isolated boot the child makes it (-1).
    let mut own_listen: Option<OwnedFd> = None;
    let listen = match (p.listen, warm.and_then(|w| w.listen.as_ref())) {
        (None, _) => -1,
        (Some(_), Some(fd)) => fd.as_raw_fd(),
        (Some(l), None) if !p.loopback => own_listen.insert(listen_socket(l)?).as_raw_fd(),
        (Some(_), None) => -1,
    };
    let (err_r, err_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| LaunchError::sys("pipe2", "", e))?;
    // A user-namespaced child waits on this pipe for its id maps.
    let userns_sync = if p.user_namespace {
        Some(nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| LaunchError::sys("pipe2", "", e))?)
    } else {
        None
    };
    // A direct (foreground) container dies with the calling thread; see `ChildFds`.
    let parent_pidfd = if clone_parent {
        None
    } else {
        Some(pidfd_open_self()?)
    };
    let mut fds = ChildFds {
        stdin: stdin.as_raw_fd(),
        stdout,
        stderr,
        err_pipe: err_w.as_raw_fd(),
        procs: [-1; MAX_PROCS_FDS],
        nprocs: procs.len(),
        netns: warm
            .and_then(|w| w.net.as_ref())
            .map_or(-1, |f| f.as_raw_fd()),
        mntns: warm.map_or(-1, |w| w.mnt.as_raw_fd()),
        utsns: warm.map_or(-1, |w| w.uts.as_raw_fd()),
        ipcns: warm.map_or(-1, |w| w.ipc.as_raw_fd()),
        listen,
        parent: std::process::id() as libc::pid_t,
        die_with_parent: parent_pidfd.is_some(),
        parent_pidfd: parent_pidfd.as_ref().map_or(-1, |f| f.as_raw_fd()),
        userns_sync: userns_sync.as_ref().map_or(-1, |(r, _)| r.as_raw_fd()),
        userns_sync_w: userns_sync.as_ref().map_or(-1, |(_, w)| w.as_raw_fd()),
    };
    let mut ns_flags = p.clone_flags;
    if warm.is_some() {
        ns_flags &= !WARM_NS_FLAGS;
    }
    for (slot, fd) in fds.procs.iter_mut().zip(&procs) {
        *slot = fd.as_raw_fd();
    }

    let mut args = CloneArgs {
        flags: ns_flags,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if clone_parent {
        args.flags |= libc::CLONE_PARENT as u64;
        // The kernel requires 0 here with CLONE_PARENT; the child inherits our exit signal.
        args.exit_signal = 0;
    }
    if let Some(d) = &cgroup_dir {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = d.as_raw_fd() as u64;
    }
    // A cold boot from the zygote builds the whole root in the child (bind mounts of the
    // rootfs source, which can block on a slow filesystem): fork semantics leave the zygote
    // free to serve other boots meanwhile. Every other boot takes the faster vfork path, which
    // holds this thread until the child has called execve. A user-namespaced child waits for
    // us to write its id maps, which a vfork-suspended parent could not do: fork semantics.
    let fork_semantics = (clone_parent && warm.is_none()) || p.user_namespace;
    let vforked = !fork_semantics && VFORK_SEMANTICS;
    let cloned = if fork_semantics {
        // Every signal blocked around the clone: none of our handlers may run in the child
        // before `child::run` has reset the dispositions (it then clears the mask).
        let old_mask = set_signal_mask(!0);
        // SAFETY: fork semantics; the child only runs `child::run`, which is
        // async-signal-safe and never returns.
        let cloned = unsafe { clone_pidfd(args, child::run, p, &fds) };
        set_signal_mask(old_mask);
        cloned
    } else {
        // SAFETY: `child::run` is async-signal-safe, writes no memory but its own stack and
        // `errno`, and never returns (see `clone_vfork_pidfd`).
        unsafe { clone_vfork_pidfd(args, p, &fds) }
    };
    let (pid, pidfd) =
        cloned.map_err(|e| LaunchError::sys("clone3", p.exec_names[0].as_str(), e))?;
    drop(err_w);
    if let Some((sync_r, sync_w)) = userns_sync {
        drop(sync_r);
        // A failure goes to the child, which reports it on the error pipe like its own.
        let (index, errno) = match set_up_userns(p, pid) {
            Ok(()) => (0u32, 0i32),
            Err(e) => e,
        };
        let mut rec = [0u8; USERNS_RELEASE_SIZE];
        rec[..4].copy_from_slice(&index.to_ne_bytes());
        rec[4..].copy_from_slice(&errno.to_ne_bytes());
        // A failed write leaves the child at EOF once `sync_w` is closed: it fails too.
        let _ = nix::unistd::write(&sync_w, &rec);
    }
    drop((
        stdin,
        out_owned,
        cgroup_dir,
        procs,
        own_listen,
        parent_pidfd,
    ));
    Ok(Started {
        pid,
        pidfd,
        pipe: ErrorPipe::new(err_r),
        vforked,
    })
}

/// The id map of a user-namespaced container: its ids `0..USERNS_SIZE` on the host's from
/// [`crate::prepare::USERNS_HOST_BASE`].
pub(crate) fn userns_id_map() -> String {
    format!(
        "0 {} {}\n",
        crate::prepare::USERNS_HOST_BASE,
        crate::prepare::USERNS_SIZE
    )
}

/// Writes the id maps of the user-namespaced child `pid` (still blocked before its first
/// step) and raises its rlimits, which it could not do itself (`CAP_SYS_RESOURCE` counts only
/// in the host's user namespace). `setgroups` stays allowed: the child must drop the
/// supplementary groups it inherited from us. On failure: the [`stage::USERNS`] index and
/// the errno.
fn set_up_userns(p: &PreparedSpec, pid: i32) -> Result<(), (u32, i32)> {
    let map = userns_id_map();
    for (i, file) in ["uid_map", "gid_map"].into_iter().enumerate() {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, &map)
            .map_err(|e| (i as u32, e.raw_os_error().unwrap_or(libc::EIO)))?;
    }
    let mut limits = vec![(libc::RLIMIT_NOFILE, p.nofile)];
    if let Some(n) = p.nproc {
        limits.push((libc::RLIMIT_NPROC, n));
    }
    for (resource, n) in limits {
        let lim = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        // SAFETY: prlimit on our child with a live rlimit and no old-value pointer.
        if unsafe { libc::prlimit(pid, resource, &lim, std::ptr::null_mut()) } != 0 {
            return Err((2, nix::errno::Errno::last() as i32));
        }
    }
    Ok(())
}

/// A pidfd of this process (close-on-exec, as every pidfd).
fn pidfd_open_self() -> Result<OwnedFd, LaunchError> {
    // SAFETY: pidfd_open takes plain integers; on success the result is a new descriptor
    // owned by nobody else.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    if fd < 0 {
        return Err(LaunchError::sys(
            "pidfd_open",
            "self",
            nix::errno::Errno::last(),
        ));
    }
    // SAFETY: see above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
