//! Volumes in the mount table: where each target's mount point comes from, computed before
//! clone (the child only runs the resulting steps).
//!
//! A target's mount point is never created on the app's rootfs directory nor on the host:
//! - under `/tmp` or `/run` (the instance's own tmpfs mounts): created there, after they are
//!   mounted;
//! - with `rootfs: host`, outside the host's `/usr`, `/etc`, `/lib*`... (e.g. `/app`, `/data`):
//!   created on the instance's root tmpfs ([`crate::prepare::HOST_ROOT_STAGING`]);
//! - otherwise (inside a directory rootfs, or inside the host's `/usr`...), if the target does
//!   not exist: its deepest existing ancestor gets an overlay "scaffold" (the ancestor as its
//!   read-only lower layer, an upper layer on a private tmpfs of the instance), the missing
//!   directories are made on it, and the overlay is made read-only afterwards. The ancestor's
//!   content stays visible; nothing reaches the image or the host.
//!
//! Every path a target walks through must be a real directory: a symlink on the way is
//! refused (it would be followed on the host's side, before `pivot_root`).
use std::path::{Component, Path, PathBuf};

use crate::error::LaunchError;
use crate::spec::{RootfsSpec, VolumeSpec};

/// Host directory over which the scaffold tmpfs is mounted in the container's own mount
/// namespace (created on the host once, empty; nothing is ever written to it there).
pub const SCAFFOLD_STAGING: &str = "/run/hako/scaffold";

/// One step of the volumes' part of the mount table; paths are host-side paths (before
/// `pivot_root`), that is under the container's root directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// A private tmpfs at [`SCAFFOLD_STAGING`] for the overlay upper layers.
    ScaffoldTmpfs,
    Mkdir(PathBuf),
    /// An empty regular file (mount point of a file volume).
    Touch(PathBuf),
    /// `dir` becomes an overlay of itself (lower) with an upper and work directory on the
    /// scaffold tmpfs.
    Overlay {
        dir: PathBuf,
        upper: PathBuf,
        work: PathBuf,
    },
    /// Bind-remount `dir` read-only (an overlay scaffold, once its mount points exist).
    ReadOnly(PathBuf),
    /// Bind `source` on `target`, then remount it `nosuid,nodev` (+`ro`) keeping `keep`
    /// (flags of the source's own mount that may not be dropped, e.g. `noexec`).
    Bind {
        source: PathBuf,
        target: PathBuf,
        read_only: bool,
        keep: libc::c_ulong,
    },
    Tmpfs {
        target: PathBuf,
        size: u64,
    },
}

/// The steps, in two phases: `early` right after the root is assembled (before `/proc`,
/// `/dev`, `/tmp`, `/run`), `late` after `/tmp` and `/run` are mounted.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub early: Vec<Step>,
    pub late: Vec<Step>,
}

fn invalid(msg: String) -> LaunchError {
    LaunchError::InvalidSpec(msg)
}

/// The normal components of an absolute container path (refusing `..`).
fn components(target: &Path) -> Result<Vec<PathBuf>, LaunchError> {
    if !target.is_absolute() {
        return Err(invalid(format!(
            "volume target {} is not absolute",
            target.display()
        )));
    }
    let mut out = Vec::new();
    for c in target.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(PathBuf::from(n)),
            _ => {
                return Err(invalid(format!(
                    "volume target {} must not contain `..`",
                    target.display()
                )))
            }
        }
    }
    if out.is_empty() {
        return Err(invalid("a volume cannot be mounted on `/`".into()));
    }
    let first = out[0].to_string_lossy();
    if matches!(first.as_ref(), "proc" | "dev" | "sys") {
        return Err(invalid(format!(
            "volume target {} is under /{first}, which hako mounts itself",
            target.display()
        )));
    }
    Ok(out)
}

/// Flags of the mount holding `path` that a bind of it must keep (`noexec`, `nosuid`,
/// `nodev`, `ro` locked in a user namespace; `noexec` honoured everywhere).
fn source_flags(path: &Path) -> libc::c_ulong {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => {
            use nix::sys::statvfs::FsFlags;
            let f = s.flags();
            let mut keep = 0;
            if f.contains(FsFlags::ST_NOEXEC) {
                keep |= libc::MS_NOEXEC;
            }
            if f.contains(FsFlags::ST_RDONLY) {
                keep |= libc::MS_RDONLY;
            }
            keep
        }
        Err(_) => 0,
    }
}

/// Computes the steps for `volumes` in a container whose root directory (host side, before
/// `pivot_root`) is `root`. `host_entries` are the top-level names bound from the host with
/// `rootfs: host` (each exists on the host as a directory or a symlink).
pub(crate) fn plan(
    rootfs: &RootfsSpec,
    root: &Path,
    host_entries: &[&str],
    volumes: &[VolumeSpec],
) -> Result<Plan, LaunchError> {
    let mut plan = Plan::default();
    let mut scaffolds: Vec<PathBuf> = Vec::new();
    let mut early_dirs: Vec<Step> = Vec::new();
    let mut late_dirs: Vec<Step> = Vec::new();
    let mut mounts: Vec<Step> = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    for v in volumes {
        let (target, is_file) = match v {
            VolumeSpec::Bind { source, target, .. } => {
                let real = source
                    .canonicalize()
                    .map_err(|e| LaunchError::io("volume source", source, &e))?;
                if real != *source {
                    return Err(invalid(format!(
                        "volume source {} leads to {} through a symlink",
                        source.display(),
                        real.display()
                    )));
                }
                (target, real.is_file())
            }
            VolumeSpec::Tmpfs { target, .. } => (target, false),
        };
        let parts = components(target)?;
        let rel: PathBuf = parts.iter().collect();
        if let Some(other) = seen
            .iter()
            .find(|o| o.starts_with(&rel) || rel.starts_with(o))
        {
            return Err(invalid(format!(
                "volume targets /{} and /{} overlap",
                rel.display(),
                other.display()
            )));
        }
        seen.push(rel.clone());
        let first = parts[0].to_string_lossy().into_owned();
        let leaf = |p: PathBuf| {
            if is_file {
                Step::Touch(p)
            } else {
                Step::Mkdir(p)
            }
        };
        // Everything from the first missing component down, as steps under `root`.
        let create_from = |from: usize, out: &mut Vec<Step>| {
            for i in from..parts.len() {
                let p = root.join(parts[..=i].iter().collect::<PathBuf>());
                out.push(if i + 1 == parts.len() {
                    leaf(p)
                } else {
                    Step::Mkdir(p)
                });
            }
        };
        let fresh_tmpfs = first == "tmp" || first == "run";
        let on_host_root_tmpfs =
            *rootfs == RootfsSpec::Host && !host_entries.contains(&first.as_str()) && !fresh_tmpfs;
        if fresh_tmpfs {
            // /tmp and /run are the instance's own; a plain directory rootfs may hold files
            // there, hidden by our mounts.
            create_from(1, &mut late_dirs);
        } else if on_host_root_tmpfs {
            create_from(0, &mut early_dirs);
        } else {
            // Walk the existing part as the host sees it.
            let host_base = match rootfs {
                RootfsSpec::Host => PathBuf::from("/"),
                RootfsSpec::Dir(_) => root.to_path_buf(),
            };
            let mut existing = 0;
            for i in 0..parts.len() {
                let p = host_base.join(parts[..=i].iter().collect::<PathBuf>());
                match std::fs::symlink_metadata(&p) {
                    Ok(m) if m.file_type().is_symlink() => {
                        return Err(invalid(format!(
                            "volume target {}: /{} is a symlink in the rootfs; mount on its \
                             real path",
                            target.display(),
                            parts[..=i].iter().collect::<PathBuf>().display()
                        )))
                    }
                    Ok(m) if i + 1 == parts.len() => {
                        if m.is_dir() == is_file {
                            return Err(invalid(format!(
                                "volume target {} exists as a {} but the source is a {}",
                                target.display(),
                                if m.is_dir() { "directory" } else { "file" },
                                if is_file { "file" } else { "directory" }
                            )));
                        }
                        existing = i + 1;
                    }
                    Ok(m) if m.is_dir() => existing = i + 1,
                    Ok(_) => {
                        return Err(invalid(format!(
                            "volume target {}: /{} is not a directory in the rootfs",
                            target.display(),
                            parts[..=i].iter().collect::<PathBuf>().display()
                        )))
                    }
                    Err(_) => break,
                }
            }
            if existing < parts.len() {
                let ancestor = root.join(parts[..existing].iter().collect::<PathBuf>());
                if !scaffolds.contains(&ancestor) {
                    scaffolds.push(ancestor);
                }
                create_from(existing, &mut early_dirs);
            }
        }
        mounts.push(match v {
            VolumeSpec::Bind {
                source, read_only, ..
            } => Step::Bind {
                source: source.clone(),
                target: root.join(&rel),
                read_only: *read_only,
                keep: source_flags(source),
            },
            VolumeSpec::Tmpfs { size, .. } => Step::Tmpfs {
                target: root.join(&rel),
                size: *size,
            },
        });
    }
    // Outer scaffolds first: an inner one's lower layer is then seen through the outer one.
    scaffolds.sort_by_key(|p| p.components().count());
    if !scaffolds.is_empty() {
        plan.early.push(Step::ScaffoldTmpfs);
        let staging = Path::new(SCAFFOLD_STAGING);
        for (k, dir) in scaffolds.iter().enumerate() {
            let s = dir.to_string_lossy();
            if s.contains([',', ':', '\\']) {
                return Err(invalid(format!(
                    "cannot create a volume's mount point under {s}: the path holds `,`, `:` \
                     or `\\`"
                )));
            }
            let base = staging.join(k.to_string());
            plan.early.push(Step::Mkdir(base.clone()));
            plan.early.push(Step::Mkdir(base.join("u")));
            plan.early.push(Step::Mkdir(base.join("w")));
            plan.early.push(Step::Overlay {
                dir: dir.clone(),
                upper: base.join("u"),
                work: base.join("w"),
            });
        }
    }
    plan.early.extend(early_dirs);
    plan.late.extend(late_dirs);
    // Outer mounts first (targets never nest, but keep a stable, shallow-first order).
    mounts.sort_by_key(|m| match m {
        Step::Bind { target, .. } | Step::Tmpfs { target, .. } => target.components().count(),
        _ => 0,
    });
    plan.late.extend(mounts);
    plan.late.extend(scaffolds.into_iter().map(Step::ReadOnly));
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(source: &Path, target: &str, read_only: bool) -> VolumeSpec {
        VolumeSpec::Bind {
            source: source.to_owned(),
            target: target.into(),
            read_only,
        }
    }

    #[test]
    fn host_rootfs_targets_outside_the_host_entries_are_made_on_the_root_tmpfs() {
        let src = tempfile::tempdir().unwrap();
        let src = src.path().canonicalize().unwrap();
        let root = Path::new("/run/hako/host-root");
        let p = plan(
            &RootfsSpec::Host,
            root,
            &["usr", "etc", "bin"],
            &[
                bind(&src, "/app/code", true),
                VolumeSpec::Tmpfs {
                    target: "/tmp/cache".into(),
                    size: 1 << 20,
                },
            ],
        )
        .unwrap();
        assert_eq!(
            p.early,
            [
                Step::Mkdir(root.join("app")),
                Step::Mkdir(root.join("app/code"))
            ]
        );
        assert_eq!(p.late[0], Step::Mkdir(root.join("tmp/cache")));
        assert!(
            matches!(&p.late[1], Step::Bind { target, read_only: true, .. } if *target == root.join("app/code"))
        );
        assert!(matches!(&p.late[2], Step::Tmpfs { size, .. } if *size == 1 << 20));
        assert_eq!(p.late.len(), 3);
    }

    #[test]
    fn a_missing_target_in_a_directory_rootfs_gets_a_scaffold_and_the_rootfs_is_untouched() {
        let rootfs = tempfile::tempdir().unwrap();
        let root = rootfs.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("srv/www")).unwrap();
        let src = tempfile::tempdir().unwrap();
        let src = src.path().canonicalize().unwrap();
        let p = plan(
            &RootfsSpec::Dir(root.clone()),
            &root,
            &[],
            &[
                bind(&src, "/srv/www", false),
                bind(&src, "/srv/data/x", true),
            ],
        )
        .unwrap();
        let base = Path::new(SCAFFOLD_STAGING).join("0");
        assert_eq!(
            p.early,
            [
                Step::ScaffoldTmpfs,
                Step::Mkdir(base.clone()),
                Step::Mkdir(base.join("u")),
                Step::Mkdir(base.join("w")),
                Step::Overlay {
                    dir: root.join("srv"),
                    upper: base.join("u"),
                    work: base.join("w")
                },
                Step::Mkdir(root.join("srv/data")),
                Step::Mkdir(root.join("srv/data/x")),
            ]
        );
        assert_eq!(p.late.last(), Some(&Step::ReadOnly(root.join("srv"))));
        // Nothing was created while planning.
        assert!(!root.join("srv/data").exists());
    }

    #[test]
    fn symlinks_overlaps_and_reserved_targets_are_refused() {
        let rootfs = tempfile::tempdir().unwrap();
        let root = rootfs.path().canonicalize().unwrap();
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        let src = tempfile::tempdir().unwrap();
        let src = src.path().canonicalize().unwrap();
        let dir = RootfsSpec::Dir(root.clone());
        let err = |vols: &[VolumeSpec]| plan(&dir, &root, &[], vols).unwrap_err().to_string();
        assert!(err(&[bind(&src, "/link/x", false)]).contains("symlink"));
        assert!(err(&[bind(&src, "/a", false), bind(&src, "/a/b", false)]).contains("overlap"));
        assert!(err(&[bind(&src, "/proc/x", false)]).contains("/proc"));
        assert!(err(&[bind(&src, "/a/../b", false)]).contains(".."));
        std::os::unix::fs::symlink(&src, root.join("srclink")).unwrap();
        assert!(err(&[bind(&root.join("srclink"), "/a", false)]).contains("symlink"));
    }
}
