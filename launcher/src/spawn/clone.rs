//! The `clone3` calls: fork semantics ([`clone_pidfd`]) and the `posix_spawn`-like vfork path
//! on a stack of its own ([`clone_vfork_pidfd`]), both returning a pidfd.
use std::ffi::c_int;
use std::os::fd::{FromRawFd, OwnedFd};

use crate::child::{self, ChildFds};
use crate::prepare::PreparedSpec;

pub(super) const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

#[repr(C)]
#[derive(Default)]
pub(super) struct CloneArgs {
    pub(super) flags: u64,
    pub(super) pidfd: u64,
    pub(super) child_tid: u64,
    pub(super) parent_tid: u64,
    pub(super) exit_signal: u64,
    pub(super) stack: u64,
    pub(super) stack_size: u64,
    pub(super) tls: u64,
    pub(super) set_tid: u64,
    pub(super) set_tid_size: u64,
    pub(super) cgroup: u64,
}

/// Whether [`clone_vfork_pidfd`] really suspends the caller until `execve` (elsewhere it falls
/// back to fork semantics).
pub(super) const VFORK_SEMANTICS: bool = cfg!(target_arch = "x86_64");

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
pub(super) fn set_signal_mask(mask: u64) -> u64 {
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
pub(super) unsafe fn clone_vfork_pidfd(
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
pub(super) unsafe fn clone_pidfd(
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
