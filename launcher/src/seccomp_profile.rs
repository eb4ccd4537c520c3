// The default seccomp profile: its rules, and their compilation with libseccomp into classic
// BPF. Shared, through `include!`, by the build script (which compiles the profile ahead of
// time when building for the host's own architecture) and by `seccomp.rs` (which compiles it
// at run time otherwise), so the two can never differ.

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
    // io_uring: a large kernel attack surface, and its operations bypass this filter (as
    // Docker's default profile since 25.0).
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
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
pub const NS_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// Builds the default profile with libseccomp and exports it: classic BPF, `sock_filter`
/// records in native byte order.
pub fn compile_profile_bytes() -> Result<Vec<u8>, String> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::fd::FromRawFd;

    use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};

    let err = |e: &dyn std::fmt::Display| e.to_string();
    let mut ctx = ScmpFilterContext::new_filter(ScmpAction::Allow).map_err(|e| err(&e))?;
    // no_new_privs is set by the child itself, right before loading.
    ctx.set_ctl_nnp(false).map_err(|e| err(&e))?;
    // A binary tree over the syscall numbers instead of a linear chain: the kernel runs the
    // filter over every syscall number when it is loaded (to cache the always-allowed ones),
    // so a shorter path per number makes each container's load cheaper (about 70 us here).
    // libseccomp before 2.5 lacks the attribute; its linear filter is as correct, only slower.
    let _ = ctx.set_ctl_optimize(2);
    let eperm = ScmpAction::Errno(libc::EPERM);
    for name in DENIED_SYSCALLS {
        // Names unknown on this architecture (vm86 on x86_64, ...) are skipped.
        if let Ok(sc) = ScmpSyscall::from_name(name) {
            ctx.add_rule(eperm, sc).map_err(|e| err(&e))?;
        }
    }
    let clone = ScmpSyscall::from_name("clone").map_err(|e| err(&e))?;
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
        .map_err(|e| err(&e))?;
    }
    // clone3's flags live in memory where BPF cannot look: make libc fall back to clone.
    if let Ok(sc) = ScmpSyscall::from_name("clone3") {
        ctx.add_rule(ScmpAction::Errno(libc::ENOSYS), sc)
            .map_err(|e| err(&e))?;
    }
    // SAFETY: memfd_create with a static C string; the descriptor it returns is fresh and
    // owned by the File from here on.
    let mut file = unsafe {
        let fd = libc::memfd_create(c"hako-seccomp".as_ptr(), libc::MFD_CLOEXEC);
        if fd < 0 {
            return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
        }
        std::fs::File::from_raw_fd(fd)
    };
    ctx.export_bpf(&mut file).map_err(|e| err(&e))?;
    file.seek(SeekFrom::Start(0)).map_err(|e| err(&e))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| err(&e))?;
    if bytes.is_empty() || bytes.len() % 8 != 0 {
        return Err(format!("exported BPF has {} bytes", bytes.len()));
    }
    Ok(bytes)
}
