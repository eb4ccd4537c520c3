//! Async-signal-safe system-call helpers of the child: `write`/`close` through `syscall(2)`,
//! `errno`, the failure report ([`fail`]), descriptor cleanup and the death signal.
use std::ffi::c_int;

use super::records::{ChildError, ChildFds};

/// `write(2)` through `syscall(2)`: glibc's `write` and `close` are cancellation points that,
/// in a multi-threaded process, update the calling thread's cancellation state, which for a
/// vfork child is its parent thread's.
///
/// # Safety
/// `fd` is any descriptor; `buf` is readable.
pub(super) unsafe fn sys_write(fd: c_int, buf: &[u8]) -> isize {
    // SAFETY: the kernel reads `buf.len()` bytes of `buf`.
    unsafe { libc::syscall(libc::SYS_write, fd, buf.as_ptr(), buf.len()) as isize }
}

/// `close(2)` through `syscall(2)` (see [`sys_write`]).
///
/// # Safety
/// `fd` must not be used afterwards.
pub(super) unsafe fn sys_close(fd: c_int) {
    // SAFETY: closing a descriptor has no memory effects.
    unsafe {
        libc::syscall(libc::SYS_close, fd);
    }
}

pub(super) fn errno() -> i32 {
    // SAFETY: reads the calling thread's errno location, always valid.
    unsafe { *libc::__errno_location() }
}

/// Reports a failure to the parent and exits. Never returns.
pub(super) fn fail(fds: &ChildFds, stage: u32, index: u32, err: i32) -> ! {
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
