//! The mount table: the [`Op`]s a child runs between clone and `pivot_root` (and after, for
//! the `/proc` masks), built by [`Builder`] from paths and C strings prepared before the clone.
use std::ffi::{c_char, c_ulong, c_void, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::LaunchError;
use crate::spec::{ImageRootSpec, VolumeSpec};

use super::*;

/// One step of the mount table. Pointers point into `PreparedSpec::strings`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    Mount {
        src: *const c_char,
        target: *const c_char,
        fstype: *const c_char,
        flags: c_ulong,
        data: *const c_void,
        /// `ENOENT` (a `/proc` entry this kernel lacks) skips the op instead of failing.
        optional: bool,
    },
    Mkdir {
        path: *const c_char,
        mode: libc::mode_t,
    },
    Mknod {
        path: *const c_char,
        mode: libc::mode_t,
        dev: libc::dev_t,
    },
    Symlink {
        target: *const c_char,
        link: *const c_char,
    },
}

pub(super) struct Builder {
    pub(super) strings: Vec<CString>,
    pub(super) ops: Vec<Op>,
    pub(super) op_names: Vec<(String, String)>,
}

impl Builder {
    pub(super) fn s(&mut self, s: impl AsRef<[u8]>) -> Result<*const c_char, LaunchError> {
        let c = cstr(s)?;
        let p = c.as_ptr();
        self.strings.push(c);
        Ok(p)
    }
    pub(super) fn opt(&mut self, s: Option<&str>) -> Result<*const c_char, LaunchError> {
        match s {
            Some(s) => self.s(s),
            None => Ok(std::ptr::null()),
        }
    }
    pub(super) fn mount(
        &mut self,
        src: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: c_ulong,
        data: Option<&str>,
    ) -> Result<(), LaunchError> {
        self.mount_maybe(src, target, fstype, flags, data, false)
    }
    pub(super) fn mount_maybe(
        &mut self,
        src: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: c_ulong,
        data: Option<&str>,
        optional: bool,
    ) -> Result<(), LaunchError> {
        let op = Op::Mount {
            src: self.opt(src)?,
            target: self.s(target.as_os_str().as_bytes())?,
            fstype: self.opt(fstype)?,
            flags,
            data: self.opt(data)?.cast(),
            optional,
        };
        self.ops.push(op);
        self.op_names
            .push(("mount".into(), target.display().to_string()));
        Ok(())
    }
    pub(super) fn mkdir(&mut self, path: &Path, mode: libc::mode_t) -> Result<(), LaunchError> {
        let op = Op::Mkdir {
            path: self.s(path.as_os_str().as_bytes())?,
            mode,
        };
        self.ops.push(op);
        self.op_names
            .push(("mkdir".into(), path.display().to_string()));
        Ok(())
    }
    pub(super) fn mknod(&mut self, path: &Path, major: u32, minor: u32) -> Result<(), LaunchError> {
        let op = Op::Mknod {
            path: self.s(path.as_os_str().as_bytes())?,
            mode: libc::S_IFCHR | 0o666,
            dev: libc::makedev(major, minor),
        };
        self.ops.push(op);
        self.op_names
            .push(("mknod".into(), path.display().to_string()));
        Ok(())
    }
    /// Creates an empty regular file (a bind-mount target; allowed in a user namespace,
    /// unlike a device node).
    pub(super) fn touch(&mut self, path: &Path) -> Result<(), LaunchError> {
        let op = Op::Mknod {
            path: self.s(path.as_os_str().as_bytes())?,
            mode: libc::S_IFREG | 0o644,
            dev: 0,
        };
        self.ops.push(op);
        self.op_names
            .push(("create".into(), path.display().to_string()));
        Ok(())
    }
    pub(super) fn symlink(&mut self, target: &Path, link: &Path) -> Result<(), LaunchError> {
        let op = Op::Symlink {
            target: self.s(target.as_os_str().as_bytes())?,
            link: self.s(link.as_os_str().as_bytes())?,
        };
        self.ops.push(op);
        self.op_names
            .push(("symlink".into(), link.display().to_string()));
        Ok(())
    }
    /// Bind-mounts `src` on `target`, then makes that mount read-only.
    pub(super) fn bind_ro(&mut self, src: &Path, target: &Path) -> Result<(), LaunchError> {
        let s = src
            .to_str()
            .ok_or_else(|| LaunchError::InvalidSpec(format!("non-UTF-8 path {}", src.display())))?;
        self.mount(Some(s), target, None, libc::MS_BIND | libc::MS_REC, None)?;
        self.mount(
            None,
            target,
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            None,
        )
    }
    /// An image's root (see [`ImageRootSpec`]): a fresh tmpfs at [`IMAGE_ROOT_STAGING`] with
    /// the overlay's upper and work directories, the overlay of the layers on `merged`, and
    /// the mount points `/proc`, `/dev`, `/tmp`, `/run` made on it (in the writable layer, so
    /// they never reach the image). Returns `merged`, the root to pivot into.
    pub(super) fn image_root(
        &mut self,
        img: &ImageRootSpec,
        volumes: &[VolumeSpec],
    ) -> Result<PathBuf, LaunchError> {
        if img.layers.is_empty() {
            return Err(LaunchError::InvalidSpec("an image without layers".into()));
        }
        refuse_mount_point_symlinks(&img.layers, volumes)?;
        let size = if img.read_only {
            READ_ONLY_IMAGE_TMPFS
        } else {
            img.disk
        };
        if size < 4096 {
            return Err(LaunchError::InvalidSpec(format!(
                "image disk size {size} is below one page"
            )));
        }
        let staging = Path::new(IMAGE_ROOT_STAGING);
        std::fs::create_dir_all(staging).map_err(|e| LaunchError::io("mkdir", staging, &e))?;
        self.mount(
            Some("tmpfs"),
            staging,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(&format!("mode=755,size={size}")),
        )?;
        let (upper, work, merged) = (
            staging.join("upper"),
            staging.join("work"),
            staging.join("merged"),
        );
        for d in [&upper, &work, &merged] {
            self.mkdir(d, 0o755)?;
        }
        // overlayfs lists the uppermost lower directory first.
        let lower = img
            .layers
            .iter()
            .rev()
            .map(|l| {
                utf8(l).map(|l| {
                    l.replace('\\', "\\\\")
                        .replace(':', "\\:")
                        .replace(',', "\\,")
                })
            })
            .collect::<Result<Vec<_>, _>>()?
            .join(":");
        let data = format!(
            "lowerdir={lower},upperdir={},workdir={}",
            utf8(&upper)?,
            utf8(&work)?
        );
        // Mount options are one page at most.
        if data.len() >= 4000 {
            return Err(LaunchError::InvalidSpec(format!(
                "overlay options for {} layers exceed a page ({} bytes); the image has too \
                 many layers",
                img.layers.len(),
                data.len()
            )));
        }
        self.mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            libc::MS_NOSUID,
            Some(&data),
        )?;
        for d in hako_policies::ROOT_MOUNT_POINTS {
            self.mkdir(&merged.join(d), 0o755)?;
        }
        Ok(merged)
    }
    /// Adds the volumes' steps (see [`crate::volumes`]).
    pub(super) fn steps(&mut self, steps: &[crate::volumes::Step]) -> Result<(), LaunchError> {
        use crate::volumes::{Step, SCAFFOLD_STAGING};
        for step in steps {
            match step {
                Step::ScaffoldTmpfs => self.mount(
                    Some("tmpfs"),
                    Path::new(SCAFFOLD_STAGING),
                    Some("tmpfs"),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    Some("mode=755,size=1m"),
                )?,
                Step::Mkdir(p) => self.mkdir(p, 0o755)?,
                Step::Touch(p) => self.touch(p)?,
                Step::Overlay { dir, upper, work } => {
                    let data = format!(
                        "lowerdir={},upperdir={},workdir={}",
                        utf8(dir)?,
                        utf8(upper)?,
                        utf8(work)?
                    );
                    self.mount(
                        Some("overlay"),
                        dir,
                        Some("overlay"),
                        libc::MS_NOSUID | libc::MS_NODEV,
                        Some(&data),
                    )?
                }
                Step::ReadOnly(p) => self.mount(
                    None,
                    p,
                    None,
                    libc::MS_REMOUNT
                        | libc::MS_BIND
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV,
                    None,
                )?,
                Step::Bind {
                    source,
                    target,
                    read_only,
                    keep,
                } => {
                    self.mount(
                        Some(utf8(source)?),
                        target,
                        None,
                        libc::MS_BIND | libc::MS_REC,
                        None,
                    )?;
                    let ro = if *read_only { libc::MS_RDONLY } else { 0 };
                    self.mount(
                        None,
                        target,
                        None,
                        libc::MS_REMOUNT
                            | libc::MS_BIND
                            | libc::MS_NOSUID
                            | libc::MS_NODEV
                            | ro
                            | keep,
                        None,
                    )?
                }
                Step::Tmpfs { target, size } => self.mount(
                    Some("tmpfs"),
                    target,
                    Some("tmpfs"),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    Some(&format!("mode=1777,size={size}")),
                )?,
            }
        }
        Ok(())
    }
    /// Makes `path` read-only (bound over itself, then remounted `ro,nosuid,nodev,noexec`);
    /// skipped if it does not exist.
    pub(super) fn readonly_in_place(&mut self, path: &Path) -> Result<(), LaunchError> {
        let s = utf8(path)?;
        self.mount_maybe(
            Some(s),
            path,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
            true,
        )?;
        self.mount_maybe(None, path, None, RO_REMOUNT, None, true)
    }
    /// Writable again (bound over itself, then remounted `nosuid,nodev,noexec` without `ro`);
    /// skipped if it does not exist.
    pub(super) fn writable_in_place(&mut self, path: &Path) -> Result<(), LaunchError> {
        let s = utf8(path)?;
        self.mount_maybe(Some(s), path, None, libc::MS_BIND, None, true)?;
        self.mount_maybe(None, path, None, RO_REMOUNT & !libc::MS_RDONLY, None, true)
    }
    /// Hides the file `path` behind `null` (the container's `/dev/null`: reads empty, writes
    /// vanish); skipped if it does not exist.
    pub(super) fn mask_file(&mut self, null: &Path, path: &Path) -> Result<(), LaunchError> {
        let s = utf8(null)?;
        self.mount_maybe(Some(s), path, None, libc::MS_BIND, None, true)
    }
    /// Hides the directory `path` behind an empty read-only tmpfs; skipped if it does not
    /// exist.
    pub(super) fn mask_dir(&mut self, path: &Path) -> Result<(), LaunchError> {
        self.mount_maybe(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            Some("mode=555,size=4k"),
            true,
        )
    }
}

/// `MS_REMOUNT` flags of a read-only bind mount without suid, devices or executables.
pub(super) const RO_REMOUNT: c_ulong = libc::MS_BIND
    | libc::MS_REMOUNT
    | libc::MS_RDONLY
    | libc::MS_NOSUID
    | libc::MS_NODEV
    | libc::MS_NOEXEC;

/// Refuses a root (an image's layers, or a directory rootfs) that holds a symlink on the way to
/// a mount point (`/proc`, `/dev`, `/tmp`, `/run`, a volume's target): the mount table runs
/// before `pivot_root`, where an absolute symlink would lead to the host's file system.
pub(super) fn refuse_mount_point_symlinks(
    layers: &[PathBuf],
    volumes: &[VolumeSpec],
) -> Result<(), LaunchError> {
    let targets = hako_policies::ROOT_MOUNT_POINTS
        .iter()
        .map(PathBuf::from)
        .chain(volumes.iter().map(|v| {
            match v {
                VolumeSpec::Bind { target, .. } | VolumeSpec::Tmpfs { target, .. } => target
                    .components()
                    .filter(|c| matches!(c, std::path::Component::Normal(_)))
                    .collect(),
            }
        }));
    for target in targets {
        let mut prefix = PathBuf::new();
        for c in target.components() {
            prefix.push(c);
            for layer in layers {
                let p = layer.join(&prefix);
                if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(LaunchError::InvalidSpec(format!(
                        "/{} is a symlink in {}: cannot mount on /{} (a symlink there could \
                         lead the mount outside the root)",
                        prefix.display(),
                        layer.display(),
                        target.display()
                    )));
                }
            }
        }
    }
    Ok(())
}

pub(super) fn utf8(path: &Path) -> Result<&str, LaunchError> {
    path.to_str()
        .ok_or_else(|| LaunchError::InvalidSpec(format!("non-UTF-8 path {}", path.display())))
}

/// The host's secrets hidden with `rootfs: host` (paths relative to `/`): [`HOST_SECRETS`]
/// and the SSH host private keys, each as (path, is a directory). A symlink is refused: its
/// target, resolved before `pivot_root`, would be the host's path, not the container's.
pub(super) fn host_secrets(host_root: &Path) -> Result<Vec<(PathBuf, bool)>, LaunchError> {
    let mut files: Vec<PathBuf> = HOST_SECRETS.iter().map(PathBuf::from).collect();
    if let Ok(dir) = std::fs::read_dir(host_root.join("etc/ssh")) {
        let mut keys: Vec<PathBuf> = dir
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("ssh_host_") && n.ends_with("_key"))
            .map(|n| Path::new("etc/ssh").join(n))
            .collect();
        keys.sort();
        files.extend(keys);
    }
    let mut out = Vec::new();
    let all = files
        .into_iter()
        .map(|f| (f, false))
        .chain(HOST_SECRET_DIRS.iter().map(|d| (PathBuf::from(d), true)));
    for (rel, dir) in all {
        let host = host_root.join(&rel);
        let Ok(meta) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            return Err(LaunchError::InvalidSpec(format!(
                "{} is a symlink: cannot hide it with rootfs: host (set expose_host_secrets to \
                 show it)",
                host.display()
            )));
        }
        if meta.is_dir() == dir {
            out.push((rel, dir));
        }
    }
    Ok(out)
}
