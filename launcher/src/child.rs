//! The code that runs in the new process between `clone3` and `execve`.
//!
//! # Async-signal-safety (reviewed line by line)
//!
//! A container's child is usually created like `posix_spawn` does it: `clone3` with
//! `CLONE_VM | CLONE_VFORK` on a stack of its own (see `spawn::clone_vfork_pidfd`), from a
//! process that may have other threads (the zygote's helper, tests, a supervisor that does
//! not use the zygote). It shares the parent's memory until `execve`, so besides being
//! async-signal-safe it must write no user memory but its own stack and `errno` (its
//! suspended parent thread's, unused meanwhile). The kernel-side state of that shared memory
//! map is touched once: changing uid/gid makes it non-dumpable, which the parent undoes after
//! `execve` (see `clone_vfork_pidfd`). A cold boot from the zygote and a namespace holder
//! ([`run_holder`]) are cloned with fork semantics instead. Only async-signal-safe operations
//! are allowed here, and this module keeps to that:
//! - no allocation: every string, pointer array, mount op and BPF program was built beforehand
//!   in [`PreparedSpec`]; this module only reads it through shared references and raw pointers;
//!   the only new data are plain stack values (`sigset_t`, `Ifreq`, `sock_fprog`, `CapData`);
//! - no locks, no `std` I/O, no `tracing`, no panics on any path: no indexing that can fail
//!   (loops are bounded by slice lengths), no `unwrap`, no formatting;
//! - the container's `/proc` gets read-only and masked entries (`PreparedSpec::proc_masks`,
//!   runc's defaults) right after it is mounted, on the cold path after `pivot_root` and on
//!   the warm path after the child's own `/proc` mount; a holder has no `/proc` to mask;
//! - only system calls through `libc` (`dup2`, `mount`, `mkdir`, `mknod`, `symlink`,
//!   `chdir`, `unshare`, `setns`, `setsid`, `sethostname`, `socket`, `ioctl`,
//!   `setsockopt`, `bind`, `listen`, `fcntl`, `setrlimit`, `prctl`, `getppid`, `umask`,
//!   `sigprocmask`, `faccessat`, `execve`, `pause`, `_exit`, and `syscall(write|read|close|
//!   pivot_root|capset|seccomp|close_range|setgroups|setresgid|setresuid|rt_sigaction|
//!   ppoll)`);
//!   glibc's wrappers for the former are plain syscall stubs that touch only `errno`, which
//!   belongs to the one parent thread suspended while we run (or, after a fork, is our own
//!   copy). `write` and `close` go through `syscall(2)` because glibc's are cancellation
//!   points that update the calling thread's cancellation state. The credential calls go
//!   through `syscall(2)` on purpose: glibc's `setresuid` & co. synchronize every thread it
//!   knows of (the parent's), taking locks and waiting on futexes that nobody will release
//!   in a fork-like child — a deadlock this module once hit;
//! - the inherited listening socket (`ContainerSpec::listen`, systemd's `LISTEN_FDS`) is, on a
//!   cold isolated boot, created here right after `lo` is up with `socket`, `setsockopt`,
//!   `bind` and `listen` on a stack `sockaddr_in` ([`listen_socket`], also used by the holder
//!   and, for host networking, by the parent); then, on every path, moved onto fd 3 with
//!   `dup2` (which leaves the new descriptor without `FD_CLOEXEC`) and the original closed
//!   ([`install_listen_fd`]). If the error pipe itself sits on fd 3 it is first moved away with
//!   `fcntl(F_DUPFD_CLOEXEC)`; the environment (`LISTEN_FDS=1`, `LISTEN_PID=1`: the app is PID 1
//!   of its pid namespace) was prepared beforehand;
//! - a child with a user namespace of its own (`CLONE_NEWUSER`, always fork semantics) first
//!   blocks in `read` on a pipe until the parent has written its `uid_map` and `gid_map`
//!   ([`wait_for_id_maps`]);
//! - errors are reported as a fixed 12-byte record written to a CLOEXEC pipe, then `_exit(127)`
//!   (not `exit`: no atexit handlers, no stdio flushing).
use std::ffi::{c_int, c_void};

use crate::prepare::{Op, PreparedSpec};

/// Steps reported back to the parent in [`ChildError::stage`].
pub(crate) mod stage {
    pub const CGROUP: u32 = 1;
    pub const UNSHARE_CGROUP: u32 = 2;
    pub const STDIO: u32 = 3;
    pub const MOUNT: u32 = 4;
    pub const PIVOT: u32 = 5;
    pub const HOSTNAME: u32 = 6;
    pub const LOOPBACK: u32 = 7;
    pub const RLIMIT: u32 = 8;
    pub const WORKDIR: u32 = 9;
    pub const IDS: u32 = 10;
    pub const CAPS: u32 = 11;
    pub const NO_NEW_PRIVS: u32 = 12;
    pub const SECCOMP: u32 = 13;
    pub const EXEC: u32 = 14;
    pub const INTERPRETER: u32 = 15;
    pub const SIGNALS: u32 = 16;
    pub const WARM_NS: u32 = 17;
    /// `index` is a [`super::listen_step`] value.
    pub const LISTEN: u32 = 18;
    /// The parent could not set up the user namespace; `index`: 0 `uid_map`, 1 `gid_map`,
    /// 2 `prlimit`, 3 the release read.
    pub const USERNS: u32 = 19;
}

/// Steps of creating and installing the listening socket (the `index` of a
/// [`stage::LISTEN`] error).
pub(crate) mod listen_step {
    pub const SOCKET: u32 = 0;
    pub const REUSEADDR: u32 = 1;
    pub const BIND: u32 = 2;
    pub const LISTEN: u32 = 3;
    pub const DUP2: u32 = 4;
    pub const MOVE_PIPE: u32 = 5;
    pub const CLEAR_CLOEXEC: u32 = 6;

    /// Human name of a step, for [`crate::LaunchError::Listen`].
    pub fn name(step: u32) -> &'static str {
        match step {
            SOCKET => "socket",
            REUSEADDR => "setsockopt SO_REUSEADDR",
            BIND => "bind",
            LISTEN => "listen",
            DUP2 => "dup2 to fd 3",
            MOVE_PIPE => "move error pipe off fd 3",
            CLEAR_CLOEXEC => "clear FD_CLOEXEC on fd 3",
            _ => "listening socket",
        }
    }
}

/// The descriptor number the app finds its listening socket on (`SD_LISTEN_FDS_START`).
pub(crate) const LISTEN_FD: c_int = 3;

/// The record the child writes on failure: native-endian `stage, index, errno`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChildError {
    pub stage: u32,
    pub index: u32,
    pub errno: i32,
}

impl ChildError {
    pub const SIZE: usize = 12;
    pub fn decode(b: &[u8; Self::SIZE]) -> Self {
        Self {
            stage: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            index: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            errno: i32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        }
    }
}

/// Maximum number of v1 `cgroup.procs` files (one per hierarchy).
pub(crate) const MAX_PROCS_FDS: usize = 8;

/// Per-boot file descriptors, opened by the parent before `clone3`.
#[derive(Clone, Copy)]
pub(crate) struct ChildFds {
    pub stdin: c_int,
    pub stdout: c_int,
    pub stderr: c_int,
    pub err_pipe: c_int,
    pub procs: [c_int; MAX_PROCS_FDS],
    pub nprocs: usize,
    /// Warm namespaces (prepared by a holder, see `run_holder`), or -1 for a cold boot.
    pub netns: c_int,
    pub mntns: c_int,
    /// Warm UTS (hostname already set) and IPC namespaces, or -1 (joined only with `mntns`).
    pub utsns: c_int,
    pub ipcns: c_int,
    /// The listening socket to install as fd 3 (from a warm namespace or, for host networking,
    /// created by the parent), or -1: then the child creates it if the spec asks for one.
    pub listen: c_int,
    /// Pid of the process cloning us (holders check it after setting their death signal).
    pub parent: libc::pid_t,
    /// SIGKILL when the cloning thread dies (`PR_SET_PDEATHSIG`): a foreground container
    /// (`hako run`) must not outlive a `hako run` killed with SIGKILL.
    pub die_with_parent: bool,
    /// With `die_with_parent`: a pidfd of the cloning process (readable once it has exited),
    /// to catch a parent that died before the death signal was set; else -1.
    pub parent_pidfd: c_int,
    /// With a user namespace: the read end of the release pipe (the parent writes the id maps,
    /// then a [`USERNS_RELEASE_SIZE`] record), and the write end, which the child closes so
    /// that a dead parent reads as EOF; else -1.
    pub userns_sync: c_int,
    pub userns_sync_w: c_int,
}

/// The parent's release record for a user-namespaced child: native-endian `index, errno`
/// (a [`stage::USERNS`] failure), all zero when the id maps are written.
pub(crate) const USERNS_RELEASE_SIZE: usize = 8;

#[repr(C)]
struct Ifreq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

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

/// `write(2)` through `syscall(2)`: glibc's `write` and `close` are cancellation points that,
/// in a multi-threaded process, update the calling thread's cancellation state, which for a
/// vfork child is its parent thread's.
///
/// # Safety
/// `fd` is any descriptor; `buf` is readable.
unsafe fn sys_write(fd: c_int, buf: &[u8]) -> isize {
    // SAFETY: the kernel reads `buf.len()` bytes of `buf`.
    unsafe { libc::syscall(libc::SYS_write, fd, buf.as_ptr(), buf.len()) as isize }
}

/// `close(2)` through `syscall(2)` (see [`sys_write`]).
///
/// # Safety
/// `fd` must not be used afterwards.
unsafe fn sys_close(fd: c_int) {
    // SAFETY: closing a descriptor has no memory effects.
    unsafe {
        libc::syscall(libc::SYS_close, fd);
    }
}

fn errno() -> i32 {
    // SAFETY: reads the calling thread's errno location, always valid.
    unsafe { *libc::__errno_location() }
}

/// Reports a failure to the parent and exits. Never returns.
fn fail(fds: &ChildFds, stage: u32, index: u32, err: i32) -> ! {
    let mut rec = [0u8; ChildError::SIZE];
    let (a, rest) = rec.split_at_mut(4);
    let (b, c) = rest.split_at_mut(4);
    a.copy_from_slice(&stage.to_ne_bytes());
    b.copy_from_slice(&index.to_ne_bytes());
    c.copy_from_slice(&err.to_ne_bytes());
    // SAFETY: `rec` is a live 12-byte stack buffer; write(2) and _exit(2) are
    // async-signal-safe. A short or failed write cannot be helped: the parent then sees EOF
    // and learns the failure from the exit status 127.
    unsafe {
        sys_write(fds.err_pipe, &rec);
        libc::_exit(127)
    }
}

/// Runs `p.ops[i]`, reporting a failure as [`stage::MOUNT`] with index `i`. An existing
/// directory and, for an optional mount, a missing target count as success.
///
/// # Safety
/// Child only (see the module documentation).
unsafe fn run_op(fds: &ChildFds, i: usize, op: &Op) {
    // SAFETY: raw system calls on C strings owned by the prepared spec; see the module documentation.
    unsafe {
        let r = match *op {
            Op::Mount {
                src,
                target,
                fstype,
                flags,
                data,
                optional,
            } => {
                let r = libc::mount(src, target, fstype, flags, data);
                if r != 0 && optional && errno() == libc::ENOENT {
                    0
                } else {
                    r
                }
            }
            Op::Mkdir { path, mode } => {
                let r = libc::mkdir(path, mode);
                if r != 0 && errno() == libc::EEXIST {
                    0
                } else {
                    r
                }
            }
            Op::Mknod { path, mode, dev } => libc::mknod(path, mode, dev),
            Op::Symlink { target, link } => libc::symlink(target, link),
        };
        if r != 0 {
            fail(fds, stage::MOUNT, i as u32, errno());
        }
    }
}

/// Makes `/proc` entries read-only or masks them (`p.ops[p.proc_masks..]`), once the root is
/// pivoted and this pid namespace's `/proc` is mounted.
///
/// # Safety
/// Child only (see the module documentation).
unsafe fn mask_proc(p: &PreparedSpec, fds: &ChildFds) {
    let first = p.proc_masks;
    for (i, op) in p.ops.iter().enumerate().skip(first) {
        // SAFETY: as in `run_op`.
        unsafe { run_op(fds, i, op) };
    }
}

/// Runs the mount table (without the `/proc` mount and its masks when `skip_proc`) and pivots
/// into the new root with the old one detached.
///
/// # Safety
/// Child only (see the module documentation).
unsafe fn build_root(p: &PreparedSpec, fds: &ChildFds, skip_proc: bool) {
    // SAFETY: raw system calls on C strings owned by `p`; see the module documentation.
    unsafe {
        libc::umask(0);
        for (i, op) in p.ops.iter().enumerate().take(p.proc_masks) {
            if skip_proc && i == p.proc_op {
                continue;
            }
            run_op(fds, i, op);
        }
        let dot = c".".as_ptr();
        if libc::chdir(p.new_root) != 0 {
            fail(fds, stage::PIVOT, 0, errno());
        }
        if libc::syscall(libc::SYS_pivot_root, dot, dot) != 0 {
            fail(fds, stage::PIVOT, 1, errno());
        }
        if libc::umount2(dot, libc::MNT_DETACH) != 0 {
            fail(fds, stage::PIVOT, 2, errno());
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            fail(fds, stage::PIVOT, 3, errno());
        }
        if !skip_proc {
            mask_proc(p, fds);
        }
        libc::umask(0o022);
    }
}

/// Sets the spec's hostname in the current UTS namespace.
///
/// # Safety
/// Child only (see the module documentation).
unsafe fn set_hostname(p: &PreparedSpec, fds: &ChildFds) {
    let host = p.hostname.as_bytes();
    // SAFETY: sethostname reads `host.len()` bytes of a string owned by `p`.
    if unsafe { libc::sethostname(host.as_ptr().cast(), host.len()) } != 0 {
        fail(fds, stage::HOSTNAME, 0, errno());
    }
}

/// Brings up `lo` in the current network namespace.
///
/// # Safety
/// Child only (see the module documentation).
unsafe fn loopback_up(fds: &ChildFds) {
    // SAFETY: socket/ioctl/close on a local socket and a stack `Ifreq`.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            fail(fds, stage::LOOPBACK, 0, errno());
        }
        let mut req = Ifreq {
            name: [0; 16],
            flags: 0,
            _pad: [0; 22],
        };
        req.name[0] = b'l';
        req.name[1] = b'o';
        if libc::ioctl(s, libc::SIOCGIFFLAGS, &mut req as *mut Ifreq as *mut c_void) != 0 {
            fail(fds, stage::LOOPBACK, 1, errno());
        }
        req.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(s, libc::SIOCSIFFLAGS, &mut req as *mut Ifreq as *mut c_void) != 0 {
            fail(fds, stage::LOOPBACK, 2, errno());
        }
        sys_close(s);
    }
}

/// Creates a TCP socket listening on `0.0.0.0:port` in the caller's network namespace
/// (`SO_REUSEADDR`, `SOCK_CLOEXEC`). On failure returns the [`listen_step`] and the errno,
/// with nothing left open. Async-signal-safe: raw system calls on stack values only, so the
/// child, the holder and the parent all use it.
///
/// # Safety
/// None beyond the system calls themselves; `unsafe` because it is called in the child.
pub(crate) unsafe fn listen_socket(port: u16, backlog: u32) -> Result<c_int, (u32, i32)> {
    // SAFETY: socket/setsockopt/bind/listen/close on a descriptor we own and on stack values
    // whose sizes are passed along.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err((listen_step::SOCKET, errno()));
        }
        let one: c_int = 1;
        if libc::setsockopt(
            s,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const c_int).cast(),
            std::mem::size_of::<c_int>() as libc::socklen_t,
        ) != 0
        {
            let e = errno();
            sys_close(s);
            return Err((listen_step::REUSEADDR, e));
        }
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_port = port.to_be();
        addr.sin_addr.s_addr = libc::INADDR_ANY.to_be();
        if libc::bind(
            s,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 0
        {
            let e = errno();
            sys_close(s);
            return Err((listen_step::BIND, e));
        }
        let backlog = backlog.min(c_int::MAX as u32) as c_int;
        if libc::listen(s, backlog) != 0 {
            let e = errno();
            sys_close(s);
            return Err((listen_step::LISTEN, e));
        }
        Ok(s)
    }
}

/// Moves the listening socket `sock` onto fd 3 without `FD_CLOEXEC` and closes the original.
/// The error pipe is moved first if it occupies fd 3 (hence `fds` is mutable).
///
/// # Safety
/// Child only (see the module documentation), after stdio is in place.
unsafe fn install_listen_fd(fds: &mut ChildFds, sock: c_int) {
    // SAFETY: fcntl/dup2/close on descriptors of our own table.
    unsafe {
        if fds.err_pipe == LISTEN_FD {
            let moved = libc::fcntl(fds.err_pipe, libc::F_DUPFD_CLOEXEC, LISTEN_FD + 1);
            if moved < 0 {
                fail(fds, stage::LISTEN, listen_step::MOVE_PIPE, errno());
            }
            fds.err_pipe = moved;
        }
        if sock == LISTEN_FD {
            // dup2(3, 3) would keep FD_CLOEXEC: clear it explicitly.
            if libc::fcntl(LISTEN_FD, libc::F_SETFD, 0) != 0 {
                fail(fds, stage::LISTEN, listen_step::CLEAR_CLOEXEC, errno());
            }
        } else {
            if libc::dup2(sock, LISTEN_FD) < 0 {
                fail(fds, stage::LISTEN, listen_step::DUP2, errno());
            }
            sys_close(sock);
        }
    }
}

/// Closes every descriptor from `first` up, except `keep` (two `close_range(2)` calls, errors
/// ignored). Async-signal-safe: raw system calls only, so the holder uses it too.
///
/// # Safety
/// None beyond closing descriptors that other code may still use; `unsafe` because it is
/// called in the child.
pub(crate) unsafe fn close_from_except(first: libc::c_uint, keep: libc::c_uint) {
    // SAFETY: close_range on plain integers; no pointers involved.
    unsafe {
        if keep > first {
            libc::syscall(libc::SYS_close_range, first, keep - 1, 0 as libc::c_uint);
        }
        libc::syscall(
            libc::SYS_close_range,
            keep + 1,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        );
    }
}

/// Size of a holder's readiness record: `R` and a native-endian `c_int` (the listening socket).
pub(crate) const HOLDER_READY_SIZE: usize = 5;

/// SIGKILL when the thread that cloned us exits (`PR_SET_PDEATHSIG`). Async-signal-safe: the
/// zygote uses it too.
///
/// # Safety
/// A raw system call on constants; `unsafe` because it is called in the child.
pub(crate) unsafe fn set_death_signal() {
    // SAFETY: prctl on constants.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
}

/// A namespace holder: cloned with `CLONE_NEWNS`, `CLONE_NEWUTS`, `CLONE_NEWIPC` (and
/// `CLONE_NEWNET`), it builds the root (everything but `/proc`), sets the hostname, brings up
/// `lo` and makes the listening socket if any, reports readiness with a
/// [`HOLDER_READY_SIZE`] record on the error pipe, then
/// waits to be killed once the zygote has opened `/proc/PID/ns/{mnt,uts,ipc,net}`. Never
/// returns.
///
/// # Safety
/// Child only (see the module documentation).
pub(crate) unsafe fn run_holder(p: &PreparedSpec, fds: &ChildFds) -> ! {
    // SAFETY: raw system calls only, as in `run`.
    unsafe {
        set_death_signal();
        // The zygote may have died before the line above ran: then nobody would kill us.
        if libc::getppid() != fds.parent {
            libc::_exit(0);
        }
        // Forked while a vfork child of the zygote had made the shared memory map
        // non-dumpable, we would keep that flag, and the zygote could not open our
        // /proc/PID/ns files without CAP_SYS_PTRACE. We never change ids: be dumpable.
        libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
        // Keep nothing of the zygote's open (its socket, other warm namespaces) but the pipe.
        close_from_except(0, fds.err_pipe as libc::c_uint);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        build_root(p, fds, true);
        set_hostname(p, fds);
        if p.loopback {
            loopback_up(fds);
        }
        // Ready: `R` and the number of the listening socket made in this network namespace
        // (-1 if none), which the zygote copies with pidfd_getfd before killing us.
        let mut ready = [0u8; HOLDER_READY_SIZE];
        let (tag, num) = ready.split_at_mut(1);
        tag[0] = b'R';
        let mut sock: c_int = -1;
        if let (Some(l), true) = (p.listen, p.loopback) {
            match listen_socket(l.port, l.backlog) {
                Ok(s) => sock = s,
                Err((step, e)) => fail(fds, stage::LISTEN, step, e),
            }
        }
        num.copy_from_slice(&sock.to_ne_bytes());
        sys_write(fds.err_pipe, &ready);
        loop {
            libc::pause();
        }
    }
}

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
