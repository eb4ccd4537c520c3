//! The default seccomp profile, in the spirit of Docker's: allow by default, deny with EPERM the
//! system calls a web workload never needs and that widen the kernel attack surface. Built once
//! with libseccomp, exported as classic BPF, loaded in the child with the raw `seccomp` syscall.
use std::io::{Read, Seek, SeekFrom};

use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};

use crate::error::LaunchError;

/// System calls denied with EPERM.
pub const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "personality",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// `clone` flags that create namespaces; `clone` with any of them is denied.
const NS_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];

fn err(e: impl std::fmt::Display) -> LaunchError {
    LaunchError::Seccomp(e.to_string())
}

/// Builds the default profile and returns it as BPF instructions for `SECCOMP_SET_MODE_FILTER`.
///
/// Compiled once per process and cached: every app with the default profile gets the same
/// program, and compiling it with libseccomp costs more than a whole warm boot.
pub fn default_profile_bpf() -> Result<Vec<libc::sock_filter>, LaunchError> {
    static CACHE: std::sync::OnceLock<Vec<libc::sock_filter>> = std::sync::OnceLock::new();
    if let Some(bpf) = CACHE.get() {
        return Ok(bpf.clone());
    }
    let bpf = compile_default_profile()?;
    Ok(CACHE.get_or_init(|| bpf).clone())
}

fn compile_default_profile() -> Result<Vec<libc::sock_filter>, LaunchError> {
    let mut ctx = ScmpFilterContext::new_filter(ScmpAction::Allow).map_err(err)?;
    // no_new_privs is set by the child itself, right before loading.
    ctx.set_ctl_nnp(false).map_err(err)?;
    // A binary tree over the syscall numbers instead of a linear chain: the kernel runs the
    // filter over every syscall number when it is loaded (to cache the always-allowed ones),
    // so a shorter path per number makes each container's load cheaper (about 70 us here).
    // libseccomp before 2.5 lacks the attribute; its linear filter is as correct, only slower.
    let _ = ctx.set_ctl_optimize(2);
    let eperm = ScmpAction::Errno(libc::EPERM);
    for name in DENIED_SYSCALLS {
        // Names unknown on this architecture (vm86 on x86_64, ...) are skipped.
        if let Ok(sc) = ScmpSyscall::from_name(name) {
            ctx.add_rule(eperm, sc).map_err(err)?;
        }
    }
    let clone = ScmpSyscall::from_name("clone").map_err(err)?;
    for flag in NS_FLAGS {
        ctx.add_rule_conditional(
            eperm,
            clone,
            &[ScmpArgCompare::new(
                0,
                ScmpCompareOp::MaskedEqual(*flag),
                *flag,
            )],
        )
        .map_err(err)?;
    }
    // clone3's flags live in memory where BPF cannot look: make libc fall back to clone.
    if let Ok(sc) = ScmpSyscall::from_name("clone3") {
        ctx.add_rule(ScmpAction::Errno(libc::ENOSYS), sc)
            .map_err(err)?;
    }
    let mut file = memfd()?;
    ctx.export_bpf(&mut file).map_err(err)?;
    file.seek(SeekFrom::Start(0)).map_err(err)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(err)?;
    let size = std::mem::size_of::<libc::sock_filter>();
    if bytes.is_empty() || bytes.len() % size != 0 {
        return Err(err(format!("exported BPF has {} bytes", bytes.len())));
    }
    Ok(bytes
        .chunks_exact(size)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

fn memfd() -> Result<std::fs::File, LaunchError> {
    let fd = nix::sys::memfd::memfd_create(
        c"hako-seccomp",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .map_err(|e| LaunchError::sys("memfd_create", "hako-seccomp", e))?;
    Ok(std::fs::File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_exports_nonempty_bpf_ending_in_a_return() {
        let bpf = default_profile_bpf().unwrap();
        assert!(
            bpf.len() > DENIED_SYSCALLS.len() / 2,
            "{} instructions",
            bpf.len()
        );
        // BPF_RET | BPF_K
        assert_eq!(bpf.last().unwrap().code, 0x06);
    }
}
