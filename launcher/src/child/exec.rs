//! Async-signal-safe (child only): the container's child from `clone3` to `execve`.
use std::ffi::c_int;

use super::net::{install_listen_fd, listen_socket, loopback_up};
use super::records::{stage, ChildFds, MAX_PROCS_FDS, USERNS_RELEASE_SIZE};
use super::root::{build_root, mask_proc, set_hostname};
use super::sys::{errno, fail, set_death_signal, sys_close, sys_write};
use crate::prepare::PreparedSpec;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;

/// Blocks until the parent's release record arrives on `fds.userns_sync`; a failure it
/// reports, or EOF (the parent died), ends the child.
///
/// # Safety
/// Child only (see the module documentation).
unsafe fn wait_for_id_maps(fds: &ChildFds) {
    let mut rec = [0u8; USERNS_RELEASE_SIZE];
    let mut got = 0usize;
    // SAFETY: close and read on descriptors, into a live stack buffer whose remaining length
    // is passed along.
    unsafe {
        if fds.userns_sync_w >= 0 {
            sys_close(fds.userns_sync_w);
        }
        while got < USERNS_RELEASE_SIZE {
            let rest = rec.get_mut(got..).unwrap_or_default();
            let r = libc::syscall(
                libc::SYS_read,
                fds.userns_sync,
                rest.as_mut_ptr(),
                rest.len(),
            );
            if r > 0 {
                got += r as usize;
            } else if r == 0 {
                fail(fds, stage::USERNS, 3, libc::EPIPE);
            } else if errno() != libc::EINTR {
                fail(fds, stage::USERNS, 3, errno());
            }
        }
        sys_close(fds.userns_sync);
    }
    let index = u32::from_ne_bytes([rec[0], rec[1], rec[2], rec[3]]);
    let err = i32::from_ne_bytes([rec[4], rec[5], rec[6], rec[7]]);
    if err != 0 {
        fail(fds, stage::USERNS, index, err);
    }
}

/// Runs in the child; never returns: either `execve` succeeds or the child exits with 127.
///
/// # Safety
/// Must only be called in the child of `clone3`, with `p` and `fds` valid: the parent's memory,
/// shared with its thread suspended (vfork path) or copied on write (fork path).
pub(crate) unsafe fn run(p: &PreparedSpec, fds: &ChildFds) -> ! {
    // A stack copy: the error pipe may have to move (see `install_listen_fd`).
    let mut fds = *fds;
    let fds = &mut fds;
    // SAFETY: every call below is a raw system call on pointers into `p` (NUL-terminated C
    // strings and NULL-terminated arrays built by PreparedSpec::new and alive for the whole
    // call) or on local stack values; see the module documentation for the review.
    unsafe {
        // A foreground container dies with the thread that runs it: set before anything slow,
        // and again after the id change below, which clears it. A parent that died before
        // this line sends nothing: its pidfd, readable once it has exited, tells.
        if fds.die_with_parent {
            set_death_signal();
            let mut pfd = libc::pollfd {
                fd: fds.parent_pidfd,
                events: libc::POLLIN,
                revents: 0,
            };
            let now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let ready = libc::syscall(
                libc::SYS_ppoll,
                &mut pfd as *mut libc::pollfd,
                1 as libc::nfds_t,
                &now as *const libc::timespec,
                std::ptr::null::<libc::sigset_t>(),
                8usize,
            );
            if ready != 0 {
                libc::_exit(1);
            }
        }
        // 0. Signals: default dispositions (SIG_IGN survives execve, and until execve a
        // parent's handler would run here), then an empty mask. In this order: the parent
        // blocked every signal around clone3, so none is delivered before the reset.
        // Every signal up to SIGRTMAX, through the raw system call: libc's sigaction refuses
        // the two real-time signals it reserves for itself, which may have handlers. An
        // all-zero kernel `struct sigaction` is SIG_DFL, no flags, an empty mask.
        let dfl = [0u64; 4];
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(libc::SYS_rt_sigaction, sig, dfl.as_ptr(), 0usize, 8usize);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
            fail(fds, stage::SIGNALS, 0, errno());
        }

        // 0b. A user namespace: nothing happens until the parent has written our id maps
        // (until then we are nobody in it and no mount or id change may succeed).
        if fds.userns_sync >= 0 {
            wait_for_id_maps(fds);
        }

        // New session: terminal signals go to the supervisor, which forwards them.
        libc::setsid();

        // 1. cgroup v1: join every hierarchy before anything else runs ("0" = self).
        let mut i = 0;
        while i < fds.nprocs && i < MAX_PROCS_FDS {
            if sys_write(fds.procs[i], b"0") != 1 {
                fail(fds, stage::CGROUP, i as u32, errno());
            }
            i += 1;
        }
        // ... then root our cgroup view at our own group.
        if libc::unshare(libc::CLONE_NEWCGROUP) != 0 {
            fail(fds, stage::UNSHARE_CGROUP, 0, errno());
        }
        // 1b. In a user namespace: become its root (host uid USERNS_HOST_BASE), keeping every
        // capability in it; until now our ids were unmapped there, and the filesystems it
        // mounts refuse to create files for unmapped owners (EOVERFLOW). Also drops the
        // supplementary groups inherited from the parent (host root's).
        if fds.userns_sync >= 0 {
            if libc::syscall(
                libc::SYS_setgroups,
                0 as libc::size_t,
                std::ptr::null::<libc::gid_t>(),
            ) != 0
            {
                fail(fds, stage::IDS, 1, errno());
            }
            if libc::syscall(libc::SYS_setresgid, 0, 0, 0) != 0 {
                fail(fds, stage::IDS, 2, errno());
            }
            if libc::syscall(libc::SYS_setresuid, 0, 0, 0) != 0 {
                fail(fds, stage::IDS, 3, errno());
            }
        }
        // 2. stdio, then mark every other descriptor close-on-exec.
        for (i, (from, to)) in [(fds.stdin, 0), (fds.stdout, 1), (fds.stderr, 2)]
            .into_iter()
            .enumerate()
        {
            if from != to && libc::dup2(from, to) < 0 {
                fail(fds, stage::STDIO, i as u32, errno());
            }
        }
        if libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) != 0
        {
            fail(fds, stage::STDIO, 3, errno());
        }

        // 3. Filesystem and network: either join the warm namespaces (already pivoted, lo up)
        // and mount this pid namespace's /proc, or build them now.
        if fds.mntns >= 0 {
            if fds.netns >= 0 && libc::setns(fds.netns, libc::CLONE_NEWNET) != 0 {
                fail(fds, stage::WARM_NS, 0, errno());
            }
            // Also sets our root and working directory to the namespace's root.
            if libc::setns(fds.mntns, libc::CLONE_NEWNS) != 0 {
                fail(fds, stage::WARM_NS, 1, errno());
            }
            if fds.utsns >= 0 && libc::setns(fds.utsns, libc::CLONE_NEWUTS) != 0 {
                fail(fds, stage::WARM_NS, 2, errno());
            }
            if fds.ipcns >= 0 && libc::setns(fds.ipcns, libc::CLONE_NEWIPC) != 0 {
                fail(fds, stage::WARM_NS, 3, errno());
            }
            let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            if libc::mount(
                c"proc".as_ptr(),
                p.proc_in_root,
                c"proc".as_ptr(),
                flags,
                std::ptr::null(),
            ) != 0
            {
                fail(fds, stage::MOUNT, p.proc_op as u32, errno());
            }
            mask_proc(p, fds);
        } else {
            build_root(p, fds, false);
            if p.loopback {
                loopback_up(fds);
            }
        }

        // 3b. The inherited listening socket (LISTEN_FDS): handed over by the parent (warm
        // network namespace, or host networking), or created now in our fresh namespace.
        if let Some(l) = p.listen {
            let sock = if fds.listen >= 0 {
                fds.listen
            } else {
                match listen_socket(l.port, l.backlog) {
                    Ok(s) => s,
                    Err((step, e)) => fail(fds, stage::LISTEN, step, e),
                }
            };
            install_listen_fd(fds, sock);
        }

        // 4. Hostname (a warm UTS namespace has it already).
        if fds.utsns < 0 {
            set_hostname(p, fds);
        }

        // 5. rlimits and working directory.
        let lim = libc::rlimit {
            rlim_cur: p.nofile,
            rlim_max: p.nofile,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            fail(fds, stage::RLIMIT, 0, errno());
        }
        if let Some(n) = p.nproc {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NPROC, &lim) != 0 {
                fail(fds, stage::RLIMIT, 1, errno());
            }
        }
        if libc::chdir(p.workdir) != 0 {
            fail(fds, stage::WORKDIR, 0, errno());
        }

        // 6. Capabilities: bounding set first (needs CAP_SETPCAP), then ids, then the rest.
        let mut cap = 0u32;
        while cap <= p.cap_last && cap < 64 {
            if p.cap_keep & (1u64 << cap) == 0
                && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
                && errno() != libc::EINVAL
            {
                fail(fds, stage::CAPS, 0, errno());
            }
            cap += 1;
        }
        if p.uid != 0 && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
            fail(fds, stage::IDS, 0, errno());
        }
        // Raw system calls, not glibc's setgroups/setresgid/setresuid: those broadcast the
        // change to every thread glibc knows of (the parent's, which do not exist here) and
        // wait on a futex for them forever.
        if libc::syscall(
            libc::SYS_setgroups,
            0 as libc::size_t,
            std::ptr::null::<libc::gid_t>(),
        ) != 0
        {
            fail(fds, stage::IDS, 1, errno());
        }
        if libc::syscall(libc::SYS_setresgid, p.gid, p.gid, p.gid) != 0 {
            fail(fds, stage::IDS, 2, errno());
        }
        if libc::syscall(libc::SYS_setresuid, p.uid, p.uid, p.uid) != 0 {
            fail(fds, stage::IDS, 3, errno());
        }
        let mut hdr = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let lo = p.cap_keep as u32;
        let hi = (p.cap_keep >> 32) as u32;
        let data = [
            CapData {
                effective: lo,
                permitted: lo,
                inheritable: lo,
            },
            CapData {
                effective: hi,
                permitted: hi,
                inheritable: hi,
            },
        ];
        if libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) != 0 {
            fail(fds, stage::CAPS, 1, errno());
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        if p.uid != 0 {
            let mut cap = 0u32;
            while cap <= p.cap_last && cap < 64 {
                if p.cap_keep & (1u64 << cap) != 0
                    && libc::prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::PR_CAP_AMBIENT_RAISE,
                        cap as libc::c_ulong,
                        0,
                        0,
                    ) != 0
                {
                    fail(fds, stage::CAPS, 2, errno());
                }
                cap += 1;
            }
        }

        // Again: the id change cleared it.
        if fds.die_with_parent {
            set_death_signal();
        }

        // 7. no_new_privs, then seccomp as the very last step before execve.
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(fds, stage::NO_NEW_PRIVS, 0, errno());
        }
        if !p.bpf.is_empty() {
            let prog = libc::sock_fprog {
                len: p.bpf.len() as u16,
                filter: p.bpf.as_ptr() as *mut libc::sock_filter,
            };
            if libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                0 as libc::c_ulong,
                &prog as *const libc::sock_fprog,
            ) != 0
            {
                fail(fds, stage::SECCOMP, 0, errno());
            }
        }

        // 8. execve, trying each PATH candidate like execvp.
        let mut eacces: Option<u32> = None;
        for (i, path) in p.exec_candidates.iter().enumerate() {
            libc::execve(*path, p.argv.as_ptr(), p.envp.as_ptr());
            let e = errno();
            match e {
                libc::ENOENT | libc::ENOTDIR => {
                    // The file exists but execve says ENOENT: its interpreter is missing.
                    if e == libc::ENOENT
                        && libc::faccessat(libc::AT_FDCWD, *path, libc::F_OK, 0) == 0
                    {
                        fail(fds, stage::INTERPRETER, i as u32, e);
                    }
                }
                libc::EACCES => {
                    if eacces.is_none() {
                        eacces = Some(i as u32);
                    }
                }
                _ => fail(fds, stage::EXEC, i as u32, e),
            }
        }
        match eacces {
            Some(i) => fail(fds, stage::EXEC, i, libc::EACCES),
            None => fail(fds, stage::EXEC, u32::MAX, libc::ENOENT),
        }
    }
}
