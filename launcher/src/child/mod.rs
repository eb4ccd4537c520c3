//! The code that runs in the new process between `clone3` and `execve`.
//!
//! # Async-signal-safety (reviewed line by line)
//!
//! A container's child is usually created like `posix_spawn` does it: `clone3` with
//! `CLONE_VM | CLONE_VFORK` on a stack of its own (see `spawn::clone::clone_vfork_pidfd`), from a
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

mod exec;
mod holder;
mod net;
mod records;
mod root;
mod sys;

pub(crate) use exec::run;
pub(crate) use holder::run_holder;
pub(crate) use net::listen_socket;
pub(crate) use records::{
    listen_step, stage, ChildError, ChildFds, HOLDER_READY_SIZE, MAX_PROCS_FDS, USERNS_RELEASE_SIZE,
};
pub(crate) use sys::{close_from_except, set_death_signal};
