//! Async-signal-safe (child only): the container's root and host name, as a cold boot or a
//! namespace holder builds them: the mount table, `/proc` masks, `pivot_root`, `sethostname`.
use super::records::{stage, ChildFds};
use super::sys::{errno, fail};
use crate::prepare::{Op, PreparedSpec};

/// Runs `p.ops[i]`, reporting a failure as [`stage::MOUNT`] with index `i`. An existing
/// directory or empty-file mount point and, for an optional mount, a missing target count as
/// success.
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
            Op::Mknod { path, mode, dev } => {
                // An empty file (a file volume's mount point) may exist already: on an
                // image's root, it is the image's file, covered by the mount.
                let r = libc::mknod(path, mode, dev);
                if r != 0 && mode & libc::S_IFMT == libc::S_IFREG && errno() == libc::EEXIST {
                    0
                } else {
                    r
                }
            }
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
pub(super) unsafe fn mask_proc(p: &PreparedSpec, fds: &ChildFds) {
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
pub(super) unsafe fn build_root(p: &PreparedSpec, fds: &ChildFds, skip_proc: bool) {
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
pub(super) unsafe fn set_hostname(p: &PreparedSpec, fds: &ChildFds) {
    let host = p.hostname.as_bytes();
    // SAFETY: sethostname reads `host.len()` bytes of a string owned by `p`.
    if unsafe { libc::sethostname(host.as_ptr().cast(), host.len()) } != 0 {
        fail(fds, stage::HOSTNAME, 0, errno());
    }
}
