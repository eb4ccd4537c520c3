//! An image-based instance's root: the image's layers as overlayfs lower directories and a
//! writable upper directory on a tmpfs of the app's `limits.disk`, both discarded with the
//! instance; or, with `read_only`, the layers alone. Mounted by the supervisor before the
//! spawn (in the host's mount namespace, under the state directory), only for an app with
//! `user_namespace` (whose own mount namespace cannot build it); the container then pivots
//! into `merged` like into any rootfs directory. Other image-based apps get their overlay in
//! their own mount namespace ([`crate::spec::ImageRootSpec`]).
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A failed mount; carries the path.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("{path}: {op}: {source}")]
    Mount {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("overlay options for {layers} layers exceed a page ({len} bytes); the image has too many layers")]
    TooManyLayers { layers: usize, len: usize },
    #[error("an image without layers")]
    NoLayers,
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

fn mount(
    src: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), OverlayError> {
    let (s, t, f) = (
        CString::new(src).unwrap_or_default(),
        cstr(target),
        CString::new(fstype).unwrap_or_default(),
    );
    let d = data.map(|d| CString::new(d).unwrap_or_default());
    // SAFETY: NUL-terminated strings that outlive the call; data is a C string or null.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ptr(),
            flags,
            d.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    if rc != 0 {
        return Err(OverlayError::Mount {
            path: target.to_owned(),
            op: "mount",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn detach(p: &Path) {
    let c = cstr(p);
    // SAFETY: a NUL-terminated path.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

/// A mounted instance root; unmounted and removed on drop.
#[derive(Debug)]
pub struct OverlayRoot {
    base: PathBuf,
    merged: PathBuf,
    read_only: bool,
}

impl OverlayRoot {
    /// Mounts at `base` (created; must not exist): a tmpfs of `disk` bytes holding
    /// `upper`/`work` (unless `read_only`) and the overlay of `layers` (lowest first) on
    /// `merged`.
    pub fn mount(
        base: &Path,
        layers: &[PathBuf],
        disk: u64,
        read_only: bool,
    ) -> Result<OverlayRoot, OverlayError> {
        if layers.is_empty() {
            return Err(OverlayError::NoLayers);
        }
        let io_err = |op, source| OverlayError::Mount {
            path: base.to_owned(),
            op,
            source,
        };
        std::fs::create_dir_all(base).map_err(|e| io_err("mkdir", e))?;
        let root = OverlayRoot {
            base: base.to_owned(),
            merged: base.join("merged"),
            read_only,
        };
        mount(
            "hako-rootfs",
            base,
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(&format!("size={disk},mode=0755")),
        )?;
        for d in ["upper", "work", "merged"] {
            std::fs::create_dir(base.join(d)).map_err(|e| io_err("mkdir", e))?;
        }
        // Read-only: the mount points the launcher needs (proc, dev, tmp, run) come from one
        // more lower directory on the tmpfs, above the image's layers.
        let mut lowers: Vec<PathBuf> = layers.to_vec();
        if read_only {
            let m = base.join("mountpoints");
            for d in hako_policies::ROOT_MOUNT_POINTS {
                std::fs::create_dir_all(m.join(d)).map_err(|e| io_err("mkdir", e))?;
            }
            lowers.push(m);
        }
        // overlayfs lists the uppermost lower directory first.
        let lower: Vec<String> = lowers
            .iter()
            .rev()
            .map(|l| {
                l.to_string_lossy()
                    .replace('\\', "\\\\")
                    .replace(':', "\\:")
                    .replace(',', "\\,")
            })
            .collect();
        let lower = lower.join(":");
        let data = if read_only {
            format!("lowerdir={lower}")
        } else {
            format!(
                "lowerdir={lower},upperdir={},workdir={}",
                base.join("upper").display(),
                base.join("work").display()
            )
        };
        if data.len() >= 4000 {
            return Err(OverlayError::TooManyLayers {
                layers: layers.len(),
                len: data.len(),
            });
        }
        let flags = libc::MS_NOSUID | if read_only { libc::MS_RDONLY } else { 0 };
        mount("overlay", &root.merged, "overlay", flags, Some(&data))?;
        Ok(root)
    }

    /// Whether the root has no writable layer.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The directory to use as the container's rootfs.
    pub fn merged(&self) -> &Path {
        &self.merged
    }

    /// Unmounts and removes one leftover instance root at `base`, if any.
    pub fn clean_stale_one(base: &Path) {
        if base.exists() {
            detach(&base.join("merged"));
            detach(base);
            let _ = std::fs::remove_dir_all(base);
        }
    }

    /// Unmounts whatever an earlier process left under `dir` (instance roots of a hako
    /// killed with SIGKILL) and removes it.
    pub fn clean_stale(dir: &Path) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            detach(&p.join("merged"));
            detach(&p);
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

impl Drop for OverlayRoot {
    fn drop(&mut self) {
        detach(&self.merged);
        detach(&self.base);
        let _ = std::fs::remove_dir_all(&self.base);
    }
}
