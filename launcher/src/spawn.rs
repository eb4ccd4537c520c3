//! `clone3` of a container from a [`PreparedSpec`], and reaping through the pidfd.
use std::ffi::c_int;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

use crate::cgroup::CgroupAttach;
use crate::child::{
    self, listen_step, stage, ChildError, ChildFds, HOLDER_READY_SIZE, MAX_PROCS_FDS,
    USERNS_RELEASE_SIZE,
};
use crate::error::LaunchError;
use crate::prepare::PreparedSpec;
use crate::spec::ListenSpec;

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
const P_PIDFD: libc::idtype_t = 3;

/// A started container: its pid (in the caller's pid namespace) and a pidfd for it.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// The container joined namespaces built ahead of time (the zygote's warm pool) instead of
    /// creating its own.
    pub warm: bool,
}

/// Where the container's stdout and stderr go (stdin is always `/dev/null`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// `/dev/null`.
    Null,
    /// Appended to this file (created 0640 if missing).
    Append(PathBuf),
    /// The caller's own stdout and stderr (`hako run`).
    Inherit,
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatusInfo {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatusInfo {
    /// The exit code, if the process exited.
    pub fn code(&self) -> Option<i32> {
        match *self {
            ExitStatusInfo::Exited(c) => Some(c),
            ExitStatusInfo::Signaled(_) => None,
        }
    }

    /// The signal that killed the process, if any.
    pub fn signal(&self) -> Option<i32> {
        match *self {
            ExitStatusInfo::Exited(_) => None,
            ExitStatusInfo::Signaled(s) => Some(s),
        }
    }

    /// Shell convention: the exit code, or 128+signal.
    pub fn shell_code(&self) -> i32 {
        match *self {
            ExitStatusInfo::Exited(c) => c,
            ExitStatusInfo::Signaled(s) => 128 + s,
        }
    }
}

/// Sends `signal` to the process behind `pidfd` (`pidfd_send_signal(2)`: no pid reuse race).
pub fn pidfd_signal(pidfd: impl AsRawFd, signal: i32) -> Result<(), LaunchError> {
    let fd = pidfd.as_raw_fd();
    // SAFETY: pidfd_send_signal with a descriptor number, a signal number and a NULL siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd,
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if r != 0 {
        return Err(LaunchError::sys(
            "pidfd_send_signal",
            format!("pidfd {fd} signal {signal}"),
            nix::errno::Errno::last(),
        ));
    }
    Ok(())
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Reaps (or with `nohang`, polls) the child behind `pidfd`. The caller must be its parent.
/// `Ok(None)` only with `nohang` when it is still running.
pub fn wait_pidfd(
    pidfd: BorrowedFd<'_>,
    nohang: bool,
) -> Result<Option<ExitStatusInfo>, LaunchError> {
    loop {
        // SAFETY: siginfo_t is plain data; all-zero is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | if nohang { libc::WNOHANG } else { 0 };
        // SAFETY: waitid with a valid pidfd and a live siginfo_t out-pointer.
        let r = unsafe { libc::waitid(P_PIDFD, pidfd.as_raw_fd() as libc::id_t, &mut info, flags) };
        if r != 0 {
            let e = nix::errno::Errno::last();
            if e == nix::errno::Errno::EINTR {
                continue;
            }
            return Err(LaunchError::sys(
                "waitid",
                format!("pidfd {}", pidfd.as_raw_fd()),
                e,
            ));
        }
        // SAFETY: waitid filled `info` for a child state change (or left si_pid 0 with WNOHANG).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        return Ok(Some(match info.si_code {
            libc::CLD_EXITED => ExitStatusInfo::Exited(status),
            _ => ExitStatusInfo::Signaled(status),
        }));
    }
}

fn open_fd(path: &Path, flags: OFlag, mode: Mode) -> Result<OwnedFd, LaunchError> {
    let fd = open(path, flags | OFlag::O_CLOEXEC, mode)
        .map_err(|e| LaunchError::sys("open", path, e))?;
    // SAFETY: `open` returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

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

/// A cloned container whose setup is still running: its outcome arrives on the error pipe
/// (EOF once `execve` succeeded, or a [`ChildError`] record).
pub(crate) struct Started {
    pub pid: i32,
    pub pidfd: OwnedFd,
    pub pipe: ErrorPipe,
    /// Cloned with vfork semantics: the outcome is final already ([`Started::outcome_now`]).
    pub vforked: bool,
}

/// Whether [`clone_vfork_pidfd`] really suspends the caller until `execve` (elsewhere it falls
/// back to fork semantics).
const VFORK_SEMANTICS: bool = cfg!(target_arch = "x86_64");

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

/// Where and how [`start_container`] clones.
#[derive(Clone, Copy)]
pub(crate) enum Launch<'a> {
    /// From the zygote, as a child of its parent (`CLONE_PARENT`), in these warm namespaces
    /// if any.
    Zygote(Option<&'a WarmNs>),
    /// From the caller, returning once the child has called `execve` (the vfork path).
    Direct,
}

/// The read end of a child's close-on-exec error pipe, and the part of the record read so far.
pub(crate) struct ErrorPipe {
    fd: OwnedFd,
    buf: [u8; ChildError::SIZE],
    got: usize,
}

impl ErrorPipe {
    fn new(fd: OwnedFd) -> ErrorPipe {
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

/// Size of the stack a container's child runs on between `clone3` and `execve`
/// (`child::run` needs a few KiB), below it one guard page.
#[cfg(target_arch = "x86_64")]
const CHILD_STACK_SIZE: usize = 64 * 1024;

/// A stack for [`clone_vfork_pidfd`] children: one per thread, reused for every spawn since
/// the thread is suspended while its child runs on it.
#[cfg(target_arch = "x86_64")]
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

#[cfg(target_arch = "x86_64")]
impl ChildStack {
    fn new() -> Result<Self, nix::errno::Errno> {
        // SAFETY: sysconf has no memory effects.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let guard = page.max(4096);
        let len = CHILD_STACK_SIZE + guard;
        // SAFETY: a fresh anonymous private mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(nix::errno::Errno::last());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the lowest page of the mapping we own becomes the guard page.
        if unsafe { libc::mprotect(base, guard, libc::PROT_NONE) } != 0 {
            return Err(nix::errno::Errno::last());
        }
        Ok(stack)
    }

    /// clone3's `stack` and `stack_size`: the usable part above the guard page.
    fn clone_args(&self) -> (u64, u64) {
        let guard = self.len - CHILD_STACK_SIZE;
        (self.base as u64 + guard as u64, CHILD_STACK_SIZE as u64)
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: our own mapping; no child runs on it any more (its thread is exiting, and a
        // vfork child always left it before its parent resumed).
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    static CHILD_STACK: std::cell::OnceCell<ChildStack> = const { std::cell::OnceCell::new() };
}

/// Serializes vfork spawns process-wide; see [`clone_vfork_pidfd`] (dumpability).
static VFORK_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What a [`clone_vfork_pidfd`] child receives: pointers into its suspended parent's frame.
#[cfg(target_arch = "x86_64")]
struct VforkArg {
    p: *const PreparedSpec,
    fds: *const ChildFds,
}

/// Entry point of a [`clone_vfork_pidfd`] child, on the child stack.
///
/// # Safety
/// `arg` points to a live [`VforkArg`] whose pointers are valid for the whole call: the parent
/// is suspended (`CLONE_VFORK`) until this process calls `execve` or exits.
#[cfg(target_arch = "x86_64")]
unsafe extern "C" fn vfork_child(arg: *const VforkArg) -> ! {
    // SAFETY: see above; `child::run` only reads through these references.
    unsafe {
        let a = &*arg;
        child::run(&*a.p, &*a.fds)
    }
}

/// Sets the calling thread's signal mask with the raw system call (glibc's `pthread_sigmask`
/// silently keeps its two internal signals unblocked); returns the old mask.
fn set_signal_mask(mask: u64) -> u64 {
    let mut old: u64 = 0;
    // SAFETY: rt_sigprocmask with 8-byte kernel masks on our stack.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &mask as *const u64,
            &mut old as *mut u64,
            8usize,
        );
    }
    old
}

/// Spawns a container the way `posix_spawn` does: `clone3` with `CLONE_VM | CLONE_VFORK` on
/// a separate stack, plus `CLONE_PIDFD`. Sharing the address space spares the copy of the
/// parent's page tables at clone and its teardown at `execve` (with the write-protect faults
/// and TLB shootdowns of copy-on-write in between), which was the largest single cost of a
/// warm boot. `CLONE_VFORK` suspends the calling thread until the child has called `execve`
/// or exited, so this returns only then: the child's stack and the data it reads stay valid,
/// and the parent state it writes (the calling thread's `errno`, through libc's wrappers) is
/// not in use meanwhile.
///
/// - Signals: every signal is blocked around the call, so none of the parent's handlers can
///   run in the child before `child::run` has reset the dispositions.
/// - Dumpability: when the child changes its uid or gid, the kernel marks the memory map
///   non-dumpable, and with `CLONE_VM` that map is ours, which would forbid core dumps and
///   `/proc/PID/ns` access to our later (forked) children. The flag is what keeps a host user
///   with the container's uid from ptracing the child before `execve`, so it is restored
///   only after the child has left our memory, under [`VFORK_LOCK`], which keeps any other
///   thread's vfork child from being in that window at the same time.
///
/// On architectures without the entry trampoline below, falls back to fork semantics.
///
/// # Safety
/// The child runs `child::run`, which must stay async-signal-safe, write no memory but its
/// stack and `errno`, and never return.
unsafe fn clone_vfork_pidfd(
    #[allow(unused_mut)] mut args: CloneArgs,
    p: &PreparedSpec,
    fds: &ChildFds,
) -> Result<(i32, OwnedFd), nix::errno::Errno> {
    let _serial = VFORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let old_mask = set_signal_mask(!0);
    // SAFETY: prctl on constants.
    let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
    #[cfg(target_arch = "x86_64")]
    let cloned = (|| {
        let (stack, stack_size) = CHILD_STACK.with(|c| match c.get() {
            Some(s) => Ok(s.clone_args()),
            None => ChildStack::new().map(|s| c.get_or_init(|| s).clone_args()),
        })?;
        let mut pidfd: c_int = -1;
        args.flags |= (libc::CLONE_PIDFD | libc::CLONE_VM | libc::CLONE_VFORK) as u64;
        args.pidfd = &mut pidfd as *mut c_int as u64;
        args.stack = stack;
        args.stack_size = stack_size;
        let arg = VforkArg { p, fds };
        let ret: isize;
        // SAFETY: `args` is a valid clone_args of the size passed; `pidfd` and `arg` outlive
        // the call. In the parent the instruction after `syscall` continues with nothing
        // changed but rax, rcx and r11 (declared; flags are assumed clobbered). In the child
        // (rax = 0) rsp is the top of the child stack (the kernel does not align it: the
        // trampoline does), the frame pointer is cleared, and `vfork_child(arg)` is called
        // with r12, r13 (preserved by the syscall); it never returns (`ud2` would trap).
        // `nostack`: the parent path pushes nothing.
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "and rsp, -16",
                "xor ebp, ebp",
                "mov rdi, r12",
                "call r13",
                "ud2",
                "2:",
                inlateout("rax") libc::SYS_clone3 as isize => ret,
                in("rdi") &args as *const CloneArgs,
                in("rsi") std::mem::size_of::<CloneArgs>(),
                in("r12") &arg as *const VforkArg,
                in("r13") vfork_child as unsafe extern "C" fn(*const VforkArg) -> !,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        if ret < 0 {
            return Err(nix::errno::Errno::from_raw(-ret as i32));
        }
        // SAFETY: CLONE_PIDFD stored a fresh pidfd owned by nobody else.
        Ok((ret as i32, unsafe { OwnedFd::from_raw_fd(pidfd) }))
    })();
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: fork semantics; `child::run` is async-signal-safe and never returns.
    let cloned = unsafe { clone_pidfd(args, child::run, p, fds) };
    // The child has called execve or exited: our memory map is ours alone again.
    // SAFETY: prctl on constants.
    unsafe {
        if dumpable >= 0 && libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) != dumpable {
            libc::prctl(libc::PR_SET_DUMPABLE, dumpable as libc::c_ulong, 0, 0, 0);
        }
    }
    // Failing to restore the mask changes nothing for the child that now exists.
    set_signal_mask(old_mask);
    cloned
}

/// `clone3(2)` without a new stack (fork semantics) and with `CLONE_PIDFD` added to `args`:
/// the new process runs `child(p, fds)` (on its copies of them); the caller gets its pid and
/// pidfd, or the errno.
///
/// # Safety
///
/// `child` shares nothing with the parent's threads: it may run only async-signal-safe code
/// and never returns into the caller's Rust code (hence `-> !`).
unsafe fn clone_pidfd(
    mut args: CloneArgs,
    child: unsafe fn(&PreparedSpec, &ChildFds) -> !,
    p: &PreparedSpec,
    fds: &ChildFds,
) -> Result<(i32, OwnedFd), nix::errno::Errno> {
    let mut pidfd: c_int = -1;
    args.flags |= libc::CLONE_PIDFD as u64;
    args.pidfd = &mut pidfd as *mut c_int as u64;
    // SAFETY: `args` is a valid, fully initialized clone_args of exactly the size passed, and
    // `pidfd` outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret == 0 {
        // SAFETY: we are the freshly cloned child; see the contract of `child` above.
        unsafe { child(p, fds) }
    }
    if ret < 0 {
        return Err(nix::errno::Errno::last());
    }
    // SAFETY: CLONE_PIDFD stored a fresh pidfd owned by nobody else.
    Ok((ret as i32, unsafe { OwnedFd::from_raw_fd(pidfd) }))
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
        Output::Inherit => None,
    };
    let (stdout, stderr): (RawFd, RawFd) = match &out_owned {
        Some(fd) => (fd.as_raw_fd(), fd.as_raw_fd()),
        None => (1, 2),
    };
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

/// Turns a child's error record into a message naming the step and the path.
fn describe(p: &PreparedSpec, cgroup: Option<&CgroupAttach>, e: ChildError) -> LaunchError {
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

/// Prepares nothing, spawns directly from the calling process (no zygote): for `hako run`
/// and single-threaded callers. The container is the caller's child, and gets SIGKILL when
/// the calling *thread* exits (`PR_SET_PDEATHSIG`): spawn from a thread that outlives the
/// container (the one that waits for it), not from a short-lived worker.
pub fn spawn_prepared(
    p: &PreparedSpec,
    cgroup: Option<&CgroupAttach>,
    output: &Output,
) -> Result<Spawned, LaunchError> {
    let mut s = start_container(p, cgroup, output, Launch::Direct)?;
    let outcome = match s.outcome_now(p, cgroup) {
        Some(o) => o,
        None => s.pipe.wait(p, cgroup, s.pid),
    };
    match outcome {
        None => Ok(Spawned {
            pid: s.pid,
            pidfd: s.pidfd,
            warm: false,
        }),
        Some(e) => {
            let _ = wait_pidfd(s.pidfd.as_fd(), false);
            Err(e)
        }
    }
}

/// The namespaces a holder builds ahead of a boot (all but pid and cgroup, which must be new
/// for the container itself). Creating them is most of a cold boot's kernel work: the network
/// and IPC namespaces each register their sysctl tables, the mount namespace takes the whole
/// mount table.
const WARM_NS_FLAGS: u64 =
    (libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC) as u64;

/// Namespaces built ahead of a boot by a holder process (mount: the container's root, pivoted,
/// without `/proc`; uts: the hostname set; ipc: fresh; net: `lo` up). Each is used by exactly
/// one container.
#[derive(Debug)]
pub(crate) struct WarmNs {
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
        Ok(WarmNs {
            mnt,
            uts,
            ipc,
            net,
            listen,
        })
    });
    let _ = pidfd_signal(pidfd.as_raw_fd(), libc::SIGKILL);
    let _ = wait_pidfd(pidfd.as_fd(), false);
    opened
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ContainerSpec, NetworkMode, RootfsSpec};

    fn inode(fd: RawFd) -> u64 {
        // SAFETY: fstat on a descriptor we own, into a zeroed stack struct.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            assert_eq!(libc::fstat(fd, &mut st), 0);
            st.st_ino
        }
    }

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
