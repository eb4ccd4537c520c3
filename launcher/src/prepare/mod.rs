//! Turning a [`ContainerSpec`] into everything the child needs, computed once per app:
//! C strings, argv/envp pointer arrays, the mount table, capability masks and the seccomp BPF.
//! The child (see `crate::child`) only reads this data.
use std::ffi::{c_char, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::LaunchError;
use crate::spec::{
    ContainerSpec, ListenSpec, NetworkMode, RootfsSpec, DEFAULT_PATH, LISTEN_FD_NAME,
};

mod capabilities;
mod mounts;

pub use capabilities::capability_mask;
use capabilities::{available_capabilities, cap_last_cap};
pub(crate) use mounts::Op;
use mounts::*;

/// Directory over which a `host` rootfs is assembled (in the child's own mount namespace).
pub const HOST_ROOT_STAGING: &str = "/run/hako/host-root";

/// Directory over which an image's root ([`ImageRootSpec`]) is assembled, in the container's
/// own mount namespace: a tmpfs holding `upper` and `work`, and the overlay on `merged`.
pub const IMAGE_ROOT_STAGING: &str = "/run/hako/image-root";

/// Size of the tmpfs under a read-only image root: it only holds the mount points.
const READ_ONLY_IMAGE_TMPFS: u64 = 1 << 20;

/// Entries of the host's `/` exposed read-only with `rootfs: host`.
const HOST_ENTRIES: &[&str] = &[
    "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc",
];

/// Entries of the container's `/proc` made read-only (bound over themselves, then remounted
/// `ro,nosuid,nodev,noexec`): runc's default `readonlyPaths`. `/proc/sys` holds every host-wide
/// sysctl (`kernel.core_pattern` runs a program as root on the host at the next crash).
/// With an isolated network, `/proc/sys/net` (only the container's own network namespace's
/// sysctls) is made writable again afterwards.
pub const PROC_READONLY: &[&str] = &["sys", "sysrq-trigger", "irq", "bus", "fs"];

/// Files of the container's `/proc` masked by the container's `/dev/null` (they read empty):
/// runc's default `maskedPaths` files, plus `interrupts` (host-wide interrupt counts, a known
/// side channel) and `kpagecount`, `kpageflags`, `kpagecgroup` (physical page information).
pub const PROC_MASKED_FILES: &[&str] = &[
    "kcore",
    "keys",
    "timer_list",
    "timer_stats",
    "sched_debug",
    "latency_stats",
    "interrupts",
    "kpagecount",
    "kpageflags",
    "kpagecgroup",
];

/// Directories of the container's `/proc` masked by an empty read-only tmpfs (runc's default
/// `maskedPaths` directories).
pub const PROC_MASKED_DIRS: &[&str] = &["acpi", "asound", "scsi"];

/// Host files masked by the container's `/dev/null` with `rootfs: host` unless the spec sets
/// `expose_host_secrets` (besides these, every `/etc/ssh/ssh_host_*_key`, the SSH host
/// private keys, found when the spec is prepared).
pub const HOST_SECRETS: &[&str] = &["etc/shadow", "etc/shadow-", "etc/gshadow", "etc/gshadow-"];

/// Host directories masked by an empty read-only tmpfs with `rootfs: host` unless the spec
/// sets `expose_host_secrets`.
pub const HOST_SECRET_DIRS: &[&str] = &["etc/ssl/private"];

/// First host uid (and gid) of a user-namespaced container ([`ContainerSpec::user_namespace`]):
/// its ids `0..USERNS_SIZE` are host ids `USERNS_HOST_BASE..USERNS_HOST_BASE + USERNS_SIZE`.
/// One range for every such container: they are unprivileged on the host, but not apart from
/// each other by uid.
pub const USERNS_HOST_BASE: u32 = 100_000;

/// Number of ids mapped into a user-namespaced container (uids and gids `0..65536`).
pub const USERNS_SIZE: u32 = 65_536;

/// Host device nodes bind-mounted into a user-namespaced container's `/dev` (it may not
/// `mknod`); the other containers get fresh nodes with these numbers.
const DEV_NODES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// A spec prepared for fast, allocation-free boots. It holds raw pointers into its own heap
/// strings, which never move and are never mutated after `new`, so it is `Send` and `Sync`
/// (see the impls below); a child process reads it between clone and execve.
#[derive(Debug)]
pub struct PreparedSpec {
    strings: Vec<CString>,
    pub(crate) ops: Vec<Op>,
    /// Human description of each op, for error messages (`mount /proc`).
    pub(crate) op_names: Vec<(String, String)>,
    pub(crate) new_root: *const c_char,
    /// Index of the `/proc` mount in `ops`: skipped when a warm namespace is prepared.
    pub(crate) proc_op: usize,
    /// `/proc`, the proc mount target inside a warm (already pivoted) mount namespace.
    pub(crate) proc_in_root: *const c_char,
    /// Index in `ops` of the first op run once the root is pivoted and `/proc` mounted:
    /// `ops[proc_masks..]` makes `/proc` entries read-only or masks them, with paths as seen
    /// inside the container. A cold child runs them after `pivot_root`, a warm child after its
    /// `/proc` mount, a namespace holder (no `/proc`) never.
    pub(crate) proc_masks: usize,
    pub(crate) workdir: *const c_char,
    pub(crate) hostname: CString,
    pub(crate) exec_candidates: Vec<*const c_char>,
    pub(crate) exec_names: Vec<String>,
    pub(crate) argv: Vec<*const c_char>,
    pub(crate) envp: Vec<*const c_char>,
    pub(crate) bpf: Vec<libc::sock_filter>,
    pub(crate) cap_keep: u64,
    pub(crate) cap_last: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) nofile: u64,
    pub(crate) nproc: Option<u64>,
    /// Namespaces created by clone3 on a cold boot (pid, mount, uts, ipc, and net if isolated).
    pub(crate) clone_flags: u64,
    /// `CLONE_NEWUSER` is in `clone_flags`: the parent writes the id maps
    /// ([`USERNS_HOST_BASE`]) before releasing the child; no warm namespaces.
    pub(crate) user_namespace: bool,
    pub(crate) loopback: bool,
    /// Outbound link (`network: egress`): built with each warm namespace set (a boot always
    /// joins one).
    pub(crate) egress: Option<crate::egress::EgressSpec>,
    /// The socket to hand over as fd 3 (created by a warm-namespace holder, by the caller for
    /// host networking, or by the child itself on a cold isolated boot).
    pub(crate) listen: Option<ListenSpec>,
    pub(crate) command0: String,
    pub(crate) workdir_name: String,
    pub(crate) hostname_name: String,
}

// SAFETY: a PreparedSpec is immutable after `new`; its raw pointers point into C strings it
// owns (heap buffers that never move), so sharing or sending it between threads is sound.
unsafe impl Send for PreparedSpec {}
// SAFETY: as above: no interior mutability, only reads through the pointers.
unsafe impl Sync for PreparedSpec {}

fn cstr(s: impl AsRef<[u8]>) -> Result<CString, LaunchError> {
    CString::new(s.as_ref()).map_err(|_| {
        LaunchError::InvalidSpec(format!(
            "NUL byte in {:?}",
            String::from_utf8_lossy(s.as_ref())
        ))
    })
}

impl PreparedSpec {
    /// Validates `spec` and computes everything a boot needs.
    pub fn new(spec: &ContainerSpec) -> Result<Self, LaunchError> {
        if spec.command.is_empty() || spec.command[0].is_empty() {
            return Err(LaunchError::InvalidSpec("empty command".into()));
        }
        if spec.listen.is_some_and(|l| l.port == 0) {
            return Err(LaunchError::InvalidSpec(
                "listen port 0: the app's port must be known to the supervisor".into(),
            ));
        }
        let mut b = Builder {
            strings: Vec::new(),
            ops: Vec::new(),
            op_names: Vec::new(),
        };
        // Nothing we do may propagate to the host.
        b.mount(
            None,
            Path::new("/"),
            None,
            libc::MS_REC | libc::MS_PRIVATE,
            None,
        )?;
        // Top-level names of a `host` rootfs that come from the host.
        let mut host_entries: Vec<&str> = Vec::new();
        let root: PathBuf = match (&spec.image, &spec.rootfs) {
            (Some(img), _) => b.image_root(img, &spec.volumes)?,
            (None, RootfsSpec::Dir(dir)) => {
                let root = dir
                    .canonicalize()
                    .map_err(|e| LaunchError::io("rootfs", dir, &e))?;
                if !root.is_dir() {
                    return Err(LaunchError::InvalidSpec(format!(
                        "rootfs {} is not a directory",
                        root.display()
                    )));
                }
                // A mount point that is a symlink would take the mount wherever it points,
                // resolved against the host's root before the pivot.
                mounts::refuse_mount_point_symlinks(std::slice::from_ref(&root), &spec.volumes)?;
                // Mount points must exist in the (read-only) rootfs: create them now, once.
                for d in hako_policies::ROOT_MOUNT_POINTS {
                    let p = root.join(d);
                    if !p.is_dir() {
                        std::fs::create_dir(&p).map_err(|e| LaunchError::io("mkdir", &p, &e))?;
                    }
                }
                let s = root
                    .to_str()
                    .ok_or_else(|| LaunchError::InvalidSpec("non-UTF-8 rootfs path".into()))?;
                b.mount(Some(s), &root, None, libc::MS_BIND | libc::MS_REC, None)?;
                root
            }
            (None, RootfsSpec::Host) => {
                let root = PathBuf::from(HOST_ROOT_STAGING);
                std::fs::create_dir_all(&root).map_err(|e| LaunchError::io("mkdir", &root, &e))?;
                b.mount(
                    Some("tmpfs"),
                    &root,
                    Some("tmpfs"),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    Some("mode=755,size=64k"),
                )?;
                for e in HOST_ENTRIES {
                    let host = Path::new("/").join(e);
                    let Ok(meta) = std::fs::symlink_metadata(&host) else {
                        continue;
                    };
                    host_entries.push(*e);
                    if meta.file_type().is_symlink() {
                        let t = std::fs::read_link(&host)
                            .map_err(|err| LaunchError::io("readlink", &host, &err))?;
                        b.symlink(&t, &root.join(e))?;
                    } else if meta.is_dir() {
                        b.mkdir(&root.join(e), 0o755)?;
                        b.bind_ro(&host, &root.join(e))?;
                    }
                }
                for d in hako_policies::ROOT_MOUNT_POINTS {
                    b.mkdir(&root.join(d), 0o755)?;
                }
                root
            }
        };
        // Volumes: their mount points (made on the instance's own tmpfs or overlay scaffold,
        // never on the rootfs or the host), mounted once /tmp and /run exist.
        // An image's root is writable while the mount table runs (its writable layer, or with
        // `read_only` a small one made read-only with the root below): mount points are made
        // on it like on a `host` root's tmpfs.
        let plan_rootfs = match spec.image {
            Some(_) => &RootfsSpec::Host,
            None => &spec.rootfs,
        };
        let volumes = crate::volumes::plan(plan_rootfs, &root, &host_entries, &spec.volumes)?;
        if volumes.early.contains(&crate::volumes::Step::ScaffoldTmpfs) {
            let staging = Path::new(crate::volumes::SCAFFOLD_STAGING);
            std::fs::create_dir_all(staging).map_err(|e| LaunchError::io("mkdir", staging, &e))?;
        }
        b.steps(&volumes.early)?;
        // Fresh /proc of the new pid namespace (a warm namespace gets it in the child only).
        let proc_op = b.ops.len();
        b.mount(
            Some("proc"),
            &root.join("proc"),
            Some("proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        )?;
        // Minimal /dev.
        let dev = root.join("dev");
        b.mount(
            Some("tmpfs"),
            &dev,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_STRICTATIME,
            Some("mode=755,size=64k"),
        )?;
        for &(name, major, minor) in DEV_NODES {
            if spec.user_namespace {
                // No mknod in a user namespace: the host's node, bound over an empty file.
                let node = dev.join(name);
                let host = format!("/dev/{name}");
                b.touch(&node)?;
                b.mount(Some(&host), &node, None, libc::MS_BIND, None)?;
            } else {
                b.mknod(&dev.join(name), major, minor)?;
            }
        }
        b.mkdir(&dev.join("pts"), 0o755)?;
        b.mount(
            Some("devpts"),
            &dev.join("pts"),
            Some("devpts"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        )?;
        b.symlink(Path::new("pts/ptmx"), &dev.join("ptmx"))?;
        b.mkdir(&dev.join("shm"), 0o1777)?;
        b.mount(
            Some("shm"),
            &dev.join("shm"),
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
        )?;
        // The host's secrets, behind the container's /dev/null (made just above).
        if spec.rootfs == RootfsSpec::Host && !spec.expose_host_secrets {
            for (rel, dir) in host_secrets(Path::new("/"))? {
                if dir {
                    b.mask_dir(&root.join(rel))?;
                } else {
                    b.mask_file(&dev.join("null"), &root.join(rel))?;
                }
            }
        }
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            b.symlink(Path::new(target), &dev.join(link))?;
        }
        // Writable scratch space, bounded (`limits.disk`; /run at most MAX_RUN_SIZE).
        if spec.tmp_size < 4096 {
            return Err(LaunchError::InvalidSpec(format!(
                "tmp_size {} is below one page",
                spec.tmp_size
            )));
        }
        b.mount(
            Some("tmpfs"),
            &root.join("tmp"),
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(&format!("mode=1777,size={}", spec.tmp_size)),
        )?;
        b.mount(
            Some("tmpfs"),
            &root.join("run"),
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(&format!(
                "mode=755,size={}",
                spec.tmp_size.min(crate::spec::MAX_RUN_SIZE)
            )),
        )?;
        b.steps(&volumes.late)?;
        // The root itself read-only (its sub-mounts above stay as they are), unless it is an
        // image's overlay with a writable layer of its own.
        let writable = match &spec.image {
            Some(img) => !img.read_only,
            None => spec.writable_root && matches!(spec.rootfs, RootfsSpec::Dir(_)),
        };
        let root_ro = if writable { 0 } else { libc::MS_RDONLY };
        b.mount(
            None,
            &root,
            None,
            libc::MS_REMOUNT | libc::MS_BIND | root_ro | libc::MS_NOSUID | libc::MS_NODEV,
            None,
        )?;
        let new_root = b.s(root.as_os_str().as_bytes())?;
        let proc_in_root = b.s("/proc")?;

        // Once pivoted with /proc mounted (paths inside the container): read-only and masked
        // /proc entries, as runc's defaults. Entries this kernel lacks are skipped.
        let proc_masks = b.ops.len();
        let proc = Path::new("/proc");
        for e in PROC_READONLY {
            b.readonly_in_place(&proc.join(e))?;
        }
        if spec.network == NetworkMode::Isolated {
            // Only this network namespace's own sysctls live there.
            b.writable_in_place(&proc.join("sys/net"))?;
        }
        for e in PROC_MASKED_FILES {
            b.mask_file(Path::new("/dev/null"), &proc.join(e))?;
        }
        for e in PROC_MASKED_DIRS {
            b.mask_dir(&proc.join(e))?;
        }

        let workdir = b.s(spec.workdir.as_os_str().as_bytes())?;
        let argv_storage: Vec<*const c_char> = spec
            .command
            .iter()
            .map(|a| b.s(a))
            .collect::<Result<_, _>>()?;
        let mut argv = argv_storage;
        argv.push(std::ptr::null());
        // Socket activation (systemd protocol): the app is PID 1 of its own pid namespace, so
        // LISTEN_PID is known before the clone. The spec's own LISTEN_* entries are replaced.
        let activation: Vec<(String, String)> = match spec.listen {
            Some(_) => vec![
                ("LISTEN_FDS".into(), "1".into()),
                ("LISTEN_PID".into(), "1".into()),
                ("LISTEN_FDNAMES".into(), LISTEN_FD_NAME.into()),
            ],
            None => Vec::new(),
        };
        let mut envp: Vec<*const c_char> = spec
            .env
            .iter()
            .filter(|(k, _)| !activation.iter().any(|(a, _)| a == k))
            .chain(activation.iter())
            .map(|(k, v)| {
                if k.contains('=') || k.is_empty() {
                    return Err(LaunchError::InvalidSpec(format!(
                        "bad environment variable name {k:?}"
                    )));
                }
                b.s(format!("{k}={v}"))
            })
            .collect::<Result<_, _>>()?;
        envp.push(std::ptr::null());

        let cmd = &spec.command[0];
        let exec_names: Vec<String> = if cmd.contains('/') {
            vec![cmd.clone()]
        } else {
            let path = spec
                .env
                .iter()
                .rev()
                .find(|(k, _)| k == "PATH")
                .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
            path.split(':')
                .filter(|d| !d.is_empty())
                .map(|d| format!("{}/{cmd}", d.trim_end_matches('/')))
                .collect()
        };
        if exec_names.is_empty() {
            return Err(LaunchError::InvalidSpec(format!("{cmd}: empty PATH")));
        }
        let exec_candidates = exec_names
            .iter()
            .map(|n| b.s(n))
            .collect::<Result<_, _>>()?;

        let bpf = if spec.seccomp {
            crate::seccomp::default_profile_bpf()?
        } else {
            Vec::new()
        };
        let mut clone_flags =
            (libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC)
                as u64;
        let loopback = spec.network == NetworkMode::Isolated;
        if loopback {
            clone_flags |= libc::CLONE_NEWNET as u64;
        }
        if let Some(e) = &spec.egress {
            if spec.user_namespace || !loopback {
                return Err(LaunchError::InvalidSpec(
                    "an egress link needs an isolated network namespace built ahead, in the \
                     host's user namespace: not with host networking or user_namespace"
                        .into(),
                ));
            }
            crate::egress::check_spec(e).map_err(|e| LaunchError::InvalidSpec(e.to_string()))?;
        }
        if spec.user_namespace && spec.image.is_some() {
            return Err(LaunchError::InvalidSpec(
                "an image root is built in the host's user namespace: with user_namespace, \
                 mount the overlay beforehand and pass it as a directory rootfs"
                    .into(),
            ));
        }
        if spec.user_namespace {
            if spec.uid >= USERNS_SIZE || spec.gid >= USERNS_SIZE {
                return Err(LaunchError::InvalidSpec(format!(
                    "uid {} gid {}: a user namespace maps only ids 0-{}",
                    spec.uid,
                    spec.gid,
                    USERNS_SIZE - 1
                )));
            }
            clone_flags |= libc::CLONE_NEWUSER as u64;
        }
        let hostname = cstr(&spec.hostname)?;
        if spec.hostname.len() > 64 {
            return Err(LaunchError::InvalidSpec(format!(
                "hostname {:?} longer than 64 bytes",
                spec.hostname
            )));
        }
        Ok(Self {
            strings: b.strings,
            ops: b.ops,
            op_names: b.op_names,
            new_root,
            proc_op,
            proc_in_root,
            proc_masks,
            workdir,
            hostname,
            exec_candidates,
            exec_names,
            argv,
            envp,
            bpf,
            cap_keep: capability_mask(&spec.capabilities)? & available_capabilities(),
            cap_last: cap_last_cap(),
            uid: spec.uid,
            gid: spec.gid,
            nofile: spec.nofile,
            nproc: spec.nproc,
            clone_flags,
            user_namespace: spec.user_namespace,
            loopback,
            egress: spec.egress.clone(),
            listen: spec.listen,
            command0: cmd.clone(),
            workdir_name: spec.workdir.display().to_string(),
            hostname_name: spec.hostname.clone(),
        })
    }

    /// Number of C strings held (for tests and debugging).
    pub fn string_count(&self) -> usize {
        self.strings.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ImageRootSpec, VolumeSpec};

    #[test]
    fn capability_names_map_to_bits() {
        let m = capability_mask(&["CAP_CHOWN".into(), "net_bind_service".into()]).unwrap();
        assert_eq!(m, (1 << 0) | (1 << 10));
        assert!(capability_mask(&["CAP_NOPE".into()]).is_err());
    }

    #[test]
    fn command_is_looked_up_in_path_and_argv_is_null_terminated() {
        let t = tempfile::tempdir().unwrap();
        let mut spec = ContainerSpec::new(
            RootfsSpec::Dir(t.path().to_owned()),
            vec!["sh".into(), "-c".into(), "true".into()],
        );
        spec.env = vec![("PATH".into(), "/bin:/usr/bin/".into())];
        spec.seccomp = false;
        let p = PreparedSpec::new(&spec).unwrap();
        assert_eq!(
            p.exec_names,
            vec!["/bin/sh".to_owned(), "/usr/bin/sh".to_owned()]
        );
        assert_eq!(p.argv.len(), 4);
        assert!(p.argv[3].is_null());
        assert!(p.envp.last().unwrap().is_null());
        // The mount points were created in the rootfs.
        assert!(t.path().join("proc").is_dir() && t.path().join("tmp").is_dir());
        assert_ne!(p.clone_flags & libc::CLONE_NEWNET as u64, 0);
    }

    #[test]
    fn listen_adds_the_socket_activation_environment() {
        let t = tempfile::tempdir().unwrap();
        let mut spec = ContainerSpec::new(RootfsSpec::Dir(t.path().to_owned()), vec!["x".into()]);
        spec.seccomp = false;
        spec.env.push(("LISTEN_FDS".into(), "7".into()));
        let env = |p: &PreparedSpec| -> Vec<String> {
            p.envp
                .iter()
                .take_while(|e| !e.is_null())
                .map(|e| {
                    // SAFETY: envp entries point into the spec's C strings, alive with `p`.
                    unsafe { std::ffi::CStr::from_ptr(*e) }
                        .to_string_lossy()
                        .into_owned()
                })
                .collect()
        };
        let without = PreparedSpec::new(&spec).unwrap();
        assert!(env(&without).contains(&"LISTEN_FDS=7".to_owned()));
        assert!(!env(&without).iter().any(|e| e.starts_with("LISTEN_PID=")));
        spec.listen = Some(ListenSpec::new(8080));
        let with = PreparedSpec::new(&spec).unwrap();
        let e = env(&with);
        for want in [
            "LISTEN_FDS=1",
            "LISTEN_PID=1",
            "LISTEN_FDNAMES=http",
            "HOME=/",
        ] {
            assert_eq!(
                e.iter().filter(|x| *x == want).count(),
                1,
                "{want} in {e:?}"
            );
        }
        assert!(!e.contains(&"LISTEN_FDS=7".to_owned()), "{e:?}");
        spec.listen = Some(ListenSpec::new(0));
        assert!(matches!(
            PreparedSpec::new(&spec),
            Err(LaunchError::InvalidSpec(m)) if m.contains("port 0")
        ));
    }

    #[test]
    fn user_namespace_binds_the_host_devices_and_maps_only_65536_ids() {
        let t = tempfile::tempdir().unwrap();
        let mut spec = ContainerSpec::new(RootfsSpec::Dir(t.path().to_owned()), vec!["x".into()]);
        spec.seccomp = false;
        let char_nodes = |p: &PreparedSpec| {
            p.ops
                .iter()
                .filter(|op| matches!(op, Op::Mknod { mode, .. } if mode & libc::S_IFMT == libc::S_IFCHR))
                .count()
        };
        let plain = PreparedSpec::new(&spec).unwrap();
        assert_eq!(plain.clone_flags & libc::CLONE_NEWUSER as u64, 0);
        assert_eq!(char_nodes(&plain), DEV_NODES.len());
        spec.user_namespace = true;
        let userns = PreparedSpec::new(&spec).unwrap();
        assert_ne!(userns.clone_flags & libc::CLONE_NEWUSER as u64, 0);
        assert_eq!(char_nodes(&userns), 0);
        let null = t.path().canonicalize().unwrap().join("dev/null");
        assert!(userns
            .op_names
            .iter()
            .any(|(op, path)| op == "create" && Path::new(path) == null));
        assert!(userns
            .op_names
            .iter()
            .any(|(op, path)| op == "mount" && Path::new(path) == null));
        spec.uid = USERNS_SIZE;
        assert!(matches!(
            PreparedSpec::new(&spec),
            Err(LaunchError::InvalidSpec(m)) if m.contains("65535")
        ));
    }

    #[test]
    fn an_image_root_is_a_fresh_tmpfs_and_an_overlay_in_the_namespace() {
        let t = tempfile::tempdir().unwrap();
        let (l1, l2) = (t.path().join("l1"), t.path().join("l2"));
        std::fs::create_dir_all(l1.join("bin")).unwrap();
        std::fs::create_dir_all(&l2).unwrap();
        let mut spec = ContainerSpec::new(RootfsSpec::Host, vec!["/bin/sh".into()]);
        spec.seccomp = false;
        spec.image = Some(ImageRootSpec {
            layers: vec![l1.clone(), l2.clone()],
            disk: 2 << 20,
            read_only: false,
        });
        spec.volumes.push(VolumeSpec::Tmpfs {
            target: "/data/x".into(),
            size: 4096,
        });
        let data = |p: &PreparedSpec, target: &str| -> Vec<String> {
            p.ops
                .iter()
                .filter_map(|op| match *op {
                    Op::Mount {
                        target: tg, data, ..
                    } if !data.is_null() => {
                        // SAFETY: the spec's own C strings, alive with `p`.
                        unsafe {
                            (std::ffi::CStr::from_ptr(tg).to_str().unwrap() == target).then(|| {
                                std::ffi::CStr::from_ptr(data.cast())
                                    .to_string_lossy()
                                    .into_owned()
                            })
                        }
                    }
                    _ => None,
                })
                .collect()
        };
        let p = PreparedSpec::new(&spec).unwrap();
        let staging = Path::new(IMAGE_ROOT_STAGING);
        assert_eq!(data(&p, IMAGE_ROOT_STAGING), vec!["mode=755,size=2097152"]);
        let merged = staging.join("merged");
        assert_eq!(
            data(&p, merged.to_str().unwrap()),
            vec![format!(
                "lowerdir={}:{},upperdir={}/upper,workdir={}/work",
                l2.display(),
                l1.display(),
                staging.display(),
                staging.display()
            )]
        );
        // SAFETY: the spec's own C string.
        let root = unsafe { std::ffi::CStr::from_ptr(p.new_root) };
        assert_eq!(root.to_str().unwrap(), merged.to_str().unwrap());
        // Mount points are made on the overlay (its writable layer), never in the layers.
        let mkdirs: Vec<&str> = p
            .op_names
            .iter()
            .filter(|(op, _)| op == "mkdir")
            .map(|(_, path)| path.as_str())
            .collect();
        for want in ["proc", "dev", "tmp", "run", "data", "data/x"] {
            let want = merged.join(want);
            assert!(
                mkdirs.contains(&want.to_str().unwrap()),
                "{want:?} in {mkdirs:?}"
            );
        }
        assert!(!l1.join("proc").exists() && !l2.join("data").exists());
        // The spec key's input does not depend on an instance: two preparations agree.
        let again = PreparedSpec::new(&spec).unwrap();
        assert_eq!(again.op_names, p.op_names);

        // read_only: a small tmpfs, the root remounted read-only.
        spec.image.as_mut().unwrap().read_only = true;
        let p = PreparedSpec::new(&spec).unwrap();
        assert_eq!(data(&p, IMAGE_ROOT_STAGING), vec!["mode=755,size=1048576"]);
        let root_remount = p.ops[..p.proc_masks].iter().rev().find_map(|op| match *op {
            Op::Mount { flags, .. } if flags & libc::MS_REMOUNT != 0 => Some(flags),
            _ => None,
        });
        assert_ne!(root_remount.unwrap() & libc::MS_RDONLY, 0);

        // A symlink on the way to a mount point is refused; so is a user namespace.
        std::os::unix::fs::symlink("/etc", l2.join("data")).unwrap();
        let e = PreparedSpec::new(&spec).unwrap_err().to_string();
        assert!(e.contains("/data is a symlink"), "{e}");
        std::fs::remove_file(l2.join("data")).unwrap();
        spec.user_namespace = true;
        let e = PreparedSpec::new(&spec).unwrap_err().to_string();
        assert!(e.contains("user_namespace"), "{e}");
    }

    #[test]
    fn bad_specs_are_rejected_with_the_value() {
        let t = tempfile::tempdir().unwrap();
        let spec = ContainerSpec::new(RootfsSpec::Dir(t.path().to_owned()), vec![]);
        assert!(matches!(
            PreparedSpec::new(&spec),
            Err(LaunchError::InvalidSpec(_))
        ));
        let mut spec =
            ContainerSpec::new(RootfsSpec::Dir(t.path().to_owned()), vec!["a\0b".into()]);
        spec.seccomp = false;
        assert!(PreparedSpec::new(&spec)
            .unwrap_err()
            .to_string()
            .contains("NUL"));
        let spec = ContainerSpec::new(RootfsSpec::Dir(t.path().join("missing")), vec!["x".into()]);
        assert!(PreparedSpec::new(&spec)
            .unwrap_err()
            .to_string()
            .contains("missing"));
        // A mount point that is a symlink (here to the host's root) is refused, not followed.
        let linked = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", linked.path().join("proc")).unwrap();
        let mut spec =
            ContainerSpec::new(RootfsSpec::Dir(linked.path().to_owned()), vec!["x".into()]);
        spec.seccomp = false;
        let err = PreparedSpec::new(&spec).unwrap_err().to_string();
        assert!(err.contains("/proc is a symlink in"), "{err}");
    }
}
