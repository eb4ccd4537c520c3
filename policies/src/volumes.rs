//! Per-app `volumes`: host directories (or files) bind-mounted into the container, and
//! tmpfs mounts of a given size.
//!
//! ```yaml
//! volumes:
//!   - {source: /srv/app/code, target: /app, read_only: true}
//!   - {source: ./data, target: /data}            # relative to the configuration's directory
//!   - {type: tmpfs, target: /cache, size: 32Mi}
//! ```
//!
//! Rules (each fault reported at its line): `source` exists, is a directory or a regular file
//! and is written as its real path (a path through a symlink is refused, naming where it
//! leads); `target` is absolute, without `..`, not `/` and not under `/proc`, `/dev` or
//! `/sys`; no two volumes share a target and none is inside another's.
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::units::{de_opt_size, format_size, RawSize};

/// Default `size` of a tmpfs volume (64Mi).
pub const DEFAULT_TMPFS_VOLUME_SIZE: u64 = 64 << 20;

/// Container paths no volume may cover (hako mounts its own there).
pub const RESERVED_TARGETS: &[&str] = &["/proc", "/dev", "/sys"];

/// The directories of every container root that hako mounts on (relative to the root): they
/// must be directories or absent in a rootfs, never symlinks (the mounts run before
/// `pivot_root`, where a link would lead outside the root).
pub const ROOT_MOUNT_POINTS: [&str; 4] = ["proc", "dev", "tmp", "run"];

/// One volume of an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Volume {
    /// A host path bind-mounted `nosuid,nodev` (and `ro` when `read_only`).
    Bind {
        /// Absolute, symlink-free host path (a directory or a regular file).
        source: PathBuf,
        /// Absolute path inside the container, normalized.
        target: PathBuf,
        read_only: bool,
    },
    /// A fresh tmpfs of `size` bytes, `nosuid,nodev`, mode 1777, private to the instance.
    Tmpfs { target: PathBuf, size: u64 },
}

impl Volume {
    /// Where it is mounted inside the container.
    pub fn target(&self) -> &Path {
        match self {
            Volume::Bind { target, .. } | Volume::Tmpfs { target, .. } => target,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawVolumeType {
    Bind,
    Tmpfs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawVolume {
    #[serde(rename = "type")]
    pub type_: Option<RawVolumeType>,
    pub source: Option<String>,
    pub target: Option<String>,
    pub read_only: Option<bool>,
    #[serde(deserialize_with = "de_opt_size")]
    pub size: Option<RawSize>,
}

/// A fault found while validating: the key path (relative to the app) and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fault {
    pub path: String,
    pub message: String,
}

fn fault(path: String, message: impl Into<String>) -> Fault {
    Fault {
        path,
        message: message.into(),
    }
}

/// Normalizes a container target: absolute, `.` and repeated `/` dropped, no `..`.
pub(crate) fn normalize_target(t: &str) -> Result<PathBuf, String> {
    if !t.starts_with('/') {
        return Err(format!(
            "`{t}` must be an absolute path inside the container"
        ));
    }
    if t.contains('\0') {
        return Err("must not contain a NUL byte".into());
    }
    let mut out = PathBuf::from("/");
    for c in Path::new(t).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err(format!("`{t}` must not contain `..`")),
            Component::Normal(n) => out.push(n),
            Component::Prefix(_) => return Err(format!("`{t}` is not a Linux path")),
        }
    }
    if out == Path::new("/") {
        return Err("`/` cannot be a volume's target (the root is the app's rootfs)".into());
    }
    for r in RESERVED_TARGETS {
        if out.starts_with(r) {
            return Err(format!(
                "`{t}` is under {r}, which hako mounts itself; choose another target"
            ));
        }
    }
    Ok(out)
}

/// Checks a bind volume's source (already resolved to an absolute path).
pub(crate) fn check_source(resolved: &Path) -> Result<(), String> {
    let meta = match std::fs::symlink_metadata(resolved) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("`{}` does not exist", resolved.display()))
        }
        Err(e) => return Err(format!("cannot use `{}`: {e}", resolved.display())),
    };
    let real = resolved
        .canonicalize()
        .map_err(|e| format!("cannot use `{}`: {e}", resolved.display()))?;
    if real != resolved {
        return Err(format!(
            "`{}` leads to `{}` through a symlink; write the real path",
            resolved.display(),
            real.display()
        ));
    }
    if !(meta.is_dir() || meta.is_file()) {
        return Err(format!(
            "`{}` is neither a directory nor a regular file",
            resolved.display()
        ));
    }
    Ok(())
}

/// Validates an app's `volumes` (written at `at`, e.g. `apps[0].volumes`); `resolve` makes a
/// relative source absolute (against the configuration's directory).
pub(crate) fn validate(
    at: &str,
    raw: Vec<RawVolume>,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> (Vec<Volume>, Vec<Fault>) {
    let mut out: Vec<(usize, Volume)> = Vec::new();
    let mut faults = Vec::new();
    for (i, v) in raw.into_iter().enumerate() {
        let vp = format!("{at}[{i}]");
        let key = |k: &str| format!("{vp}.{k}");
        let target = match v.target.as_deref() {
            None => {
                faults.push(fault(
                    key("target"),
                    "missing; every volume needs a target path inside the container",
                ));
                None
            }
            Some(t) => match normalize_target(t) {
                Ok(p) => Some(p),
                Err(e) => {
                    faults.push(fault(key("target"), e));
                    None
                }
            },
        };
        let volume = match v.type_.unwrap_or(RawVolumeType::Bind) {
            RawVolumeType::Bind => {
                if v.size.is_some() {
                    faults.push(fault(key("size"), "is only for `type: tmpfs` volumes"));
                }
                let source = match v.source.as_deref() {
                    None | Some("") => {
                        faults.push(fault(
                            key("source"),
                            "missing; a bind volume needs the host path to mount \
                             (or write `type: tmpfs`)",
                        ));
                        None
                    }
                    Some(s) => {
                        let resolved = resolve(s);
                        match check_source(&resolved) {
                            Ok(()) => Some(resolved),
                            Err(e) => {
                                faults.push(fault(key("source"), e));
                                None
                            }
                        }
                    }
                };
                match (source, target) {
                    (Some(source), Some(target)) => Some(Volume::Bind {
                        source,
                        target,
                        read_only: v.read_only.unwrap_or(false),
                    }),
                    _ => None,
                }
            }
            RawVolumeType::Tmpfs => {
                if v.source.is_some() {
                    faults.push(fault(
                        key("source"),
                        "a tmpfs volume has no source (it starts empty)",
                    ));
                }
                if v.read_only.is_some() {
                    faults.push(fault(
                        key("read_only"),
                        "a tmpfs volume starts empty: read-only it would stay so",
                    ));
                }
                let size = match v.size {
                    None => DEFAULT_TMPFS_VOLUME_SIZE,
                    Some(RawSize {
                        negative: true,
                        bytes,
                    }) => {
                        faults.push(fault(
                            key("size"),
                            format!("must be greater than zero (got -{})", format_size(bytes)),
                        ));
                        DEFAULT_TMPFS_VOLUME_SIZE
                    }
                    Some(RawSize { bytes, .. }) if bytes < 4096 => {
                        faults.push(fault(
                            key("size"),
                            format!("{bytes} bytes is below one page (4Ki); a unit is probably missing, e.g. `{bytes}Mi`"),
                        ));
                        DEFAULT_TMPFS_VOLUME_SIZE
                    }
                    Some(RawSize { bytes, .. }) => bytes,
                };
                target.map(|target| Volume::Tmpfs { target, size })
            }
        };
        let Some(volume) = volume else { continue };
        let t = volume.target().to_path_buf();
        if let Some((j, other)) = out.iter().find(|(_, o)| {
            let ot = o.target();
            ot == t || ot.starts_with(&t) || t.starts_with(ot)
        }) {
            let ot = other.target();
            let msg = if ot == t {
                format!("`{}` is already the target of {at}[{j}]", t.display())
            } else {
                format!(
                    "`{}` and the target `{}` of {at}[{j}] are nested; a volume cannot be \
                     mounted inside another",
                    t.display(),
                    ot.display()
                )
            };
            faults.push(fault(key("target"), msg));
            continue;
        }
        out.push((i, volume));
    }
    (out.into_iter().map(|(_, v)| v).collect(), faults)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_normalized_and_checked() {
        assert_eq!(normalize_target("/a//b/./c/").unwrap(), Path::new("/a/b/c"));
        for bad in ["a", "/a/../b", "/", "/proc/x", "/dev", "/sys/fs", "//"] {
            assert!(normalize_target(bad).is_err(), "{bad}");
        }
        assert!(normalize_target("/devices").is_ok());
    }

    #[test]
    fn sources_must_exist_and_not_go_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("data")).unwrap();
        std::os::unix::fs::symlink(real.join("data"), real.join("link")).unwrap();
        assert!(check_source(&real.join("data")).is_ok());
        let e = check_source(&real.join("link")).unwrap_err();
        assert!(e.contains("through a symlink") && e.contains("data"), "{e}");
        let e = check_source(&real.join("missing")).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn duplicate_and_nested_targets_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().canonicalize().unwrap();
        let src = real.to_str().unwrap().to_owned();
        let bind = |t: &str| RawVolume {
            source: Some(src.clone()),
            target: Some(t.into()),
            ..Default::default()
        };
        let tmpfs = |t: &str| RawVolume {
            type_: Some(RawVolumeType::Tmpfs),
            target: Some(t.into()),
            ..Default::default()
        };
        let resolve = |s: &str| PathBuf::from(s);
        let (vols, faults) = validate(
            "v",
            vec![bind("/a"), tmpfs("/a/"), tmpfs("/a/b"), tmpfs("/c")],
            &resolve,
        );
        assert_eq!(vols.len(), 2, "{vols:?}");
        assert_eq!(faults.len(), 2, "{faults:?}");
        assert_eq!(faults[0].path, "v[1].target");
        assert!(faults[0].message.contains("already the target of v[0]"));
        assert!(faults[1].message.contains("nested"));
        assert_eq!(
            vols[1],
            Volume::Tmpfs {
                target: "/c".into(),
                size: DEFAULT_TMPFS_VOLUME_SIZE
            }
        );
    }
}
