//! Layer extraction: our own loop over the tar entries (never `tar::Archive::unpack`).
//!
//! Every path is resolved inside the layer root by walking its components with
//! `openat(O_NOFOLLOW|O_DIRECTORY)` from a descriptor of the root: `..` is refused, a leading
//! `/` is dropped, and a symlink used as a path component is refused (never followed). What is
//! written:
//! - regular files, directories, symlinks (their target stored verbatim: it is only ever
//!   resolved inside the container) and hardlinks to regular files of the same layer (a
//!   hardlink to a symlink, a directory or a missing file is refused);
//! - ownership as recorded, modes without the setuid and setgid bits;
//! - extended attributes in the `user.` namespace only: `trusted.*` (overlayfs' own, which
//!   could fake whiteouts or redirects), `security.*` (file capabilities, SELinux labels) and
//!   the rest are dropped;
//! - whiteouts converted to overlayfs form: `.wh.NAME` becomes a character device 0/0 named
//!   NAME, `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory. Both hide lower
//!   layers only: an entry of the same layer with the whiteout's name wins.
//!
//! Device nodes and FIFOs are skipped. A later entry with the same name replaces the earlier
//! one (a directory merges with an earlier directory).
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, mknodat, Mode, SFlag};
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

/// What went wrong while unpacking a layer; carries the entry's path.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("layer entry {path:?}: {reason}")]
    Refused { path: String, reason: &'static str },
    #[error("layer entry {path:?}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("reading the layer: {0}")]
    Read(#[source] io::Error),
}

/// What an extraction did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExtractStats {
    pub entries: u64,
    pub bytes: u64,
    pub skipped_devices: u64,
    pub dropped_xattrs: u64,
    pub stripped_setid: u64,
    pub whiteouts: u64,
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

fn errno_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Normalises an entry path: components split on `/`, empty and `.` dropped; `None` when a
/// component is `..`.
fn components(raw: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

fn display(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

struct Extractor {
    root: OwnedFd,
    root_path: PathBuf,
    /// The last parent directory opened, by its components: most entries share it.
    cached: Option<(Vec<Vec<u8>>, OwnedFd)>,
    stats: ExtractStats,
}

impl Extractor {
    fn open_dir_at(dir: &OwnedFd, name: &[u8]) -> nix::Result<OwnedFd> {
        let fd = openat(
            Some(dir.as_raw_fd()),
            OsStr::from_bytes(name),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        // SAFETY: `openat` just returned this descriptor; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Opens (creating missing directories 0755, owned by root) the directory `parent`
    /// inside the root, never following a symlink.
    fn parent_dir(&mut self, parent: &[&[u8]], path: &str) -> Result<&OwnedFd, ExtractError> {
        let hit = matches!(&self.cached, Some((p, _)) if p.len() == parent.len() && p.iter().zip(parent).all(|(a, b)| a == b));
        if !hit {
            let mut cur = self.root.try_clone().map_err(|e| ExtractError::Io {
                path: path.to_owned(),
                source: e,
            })?;
            for comp in parent {
                let next = match Self::open_dir_at(&cur, comp) {
                    Ok(fd) => fd,
                    Err(Errno::ENOENT) => {
                        mkdirat(
                            Some(cur.as_raw_fd()),
                            OsStr::from_bytes(comp),
                            Mode::from_bits_truncate(0o755),
                        )
                        .map_err(|e| ExtractError::Io {
                            path: path.to_owned(),
                            source: errno_io(e),
                        })?;
                        Self::open_dir_at(&cur, comp).map_err(|e| ExtractError::Io {
                            path: path.to_owned(),
                            source: errno_io(e),
                        })?
                    }
                    Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                        return Err(ExtractError::Refused {
                            path: path.to_owned(),
                            reason: "a path component is a symlink or not a directory",
                        })
                    }
                    Err(e) => {
                        return Err(ExtractError::Io {
                            path: path.to_owned(),
                            source: errno_io(e),
                        })
                    }
                };
                cur = next;
            }
            self.cached = Some((parent.iter().map(|c| c.to_vec()).collect(), cur));
        }
        Ok(&self.cached.as_ref().expect("set above").1)
    }

    /// Removes what exists at `name` in `dir` unless it is a directory and `keep_dir`; returns
    /// whether a directory was kept.
    fn clear(
        &mut self,
        dir_fd: i32,
        rel: &[&[u8]],
        keep_dir: bool,
        path: &str,
    ) -> Result<bool, ExtractError> {
        let name = OsStr::from_bytes(rel[rel.len() - 1]);
        match fstatat(Some(dir_fd), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(ExtractError::Io {
                path: path.to_owned(),
                source: errno_io(e),
            }),
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                if keep_dir {
                    return Ok(true);
                }
                // The parent was reached without symlinks and nothing else writes to this
                // tree; std's remove_dir_all does not follow symlinks inside it.
                let mut p = self.root_path.clone();
                for c in rel {
                    p.push(OsStr::from_bytes(c));
                }
                std::fs::remove_dir_all(&p).map_err(|e| ExtractError::Io {
                    path: path.to_owned(),
                    source: e,
                })?;
                Ok(false)
            }
            Ok(_) => {
                unlinkat(Some(dir_fd), name, UnlinkatFlags::NoRemoveDir).map_err(|e| {
                    ExtractError::Io {
                        path: path.to_owned(),
                        source: errno_io(e),
                    }
                })?;
                Ok(false)
            }
        }
    }
}

fn safe_mode(mode: u32, stats: &mut ExtractStats) -> Mode {
    if mode & 0o6000 != 0 {
        stats.stripped_setid += 1;
    }
    Mode::from_bits_truncate(mode & 0o1777)
}

/// Unpacks the uncompressed tar stream `input` into `root`, an existing empty directory.
/// The caller hashes `input` (the diff_id) and reads it to its end afterwards.
pub fn extract_layer<R: Read>(input: R, root: &Path) -> Result<ExtractStats, ExtractError> {
    let root_fd = File::open(root).map_err(|e| ExtractError::Io {
        path: root.display().to_string(),
        source: e,
    })?;
    let mut ex = Extractor {
        root: OwnedFd::from(root_fd),
        root_path: root.to_owned(),
        cached: None,
        stats: ExtractStats::default(),
    };
    let mut archive = tar::Archive::new(EofPad {
        inner: input,
        count: 0,
        pad: None,
    });
    let entries = archive.entries().map_err(ExtractError::Read)?;
    for entry in entries {
        let mut entry = entry.map_err(ExtractError::Read)?;
        ex.stats.entries += 1;
        let raw = entry.path_bytes().into_owned();
        let path = display(&raw);
        let comps = components(&raw).ok_or_else(|| ExtractError::Refused {
            path: path.clone(),
            reason: "`..` in the path",
        })?;
        let Some((&last, parent)) = comps.split_last() else {
            continue; // the layer root itself
        };
        let kind = entry.header().entry_type();
        // Whiteouts.
        if last == OPAQUE {
            let dir = ex.parent_dir(parent, &path)?;
            set_xattr(dir, "trusted.overlay.opaque", b"y").map_err(|e| ExtractError::Io {
                path: path.clone(),
                source: e,
            })?;
            ex.stats.whiteouts += 1;
            continue;
        }
        if let Some(hidden) = last.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(ExtractError::Refused {
                    path,
                    reason: "a whiteout without a name",
                });
            }
            let dfd = ex.parent_dir(parent, &path)?.as_raw_fd();
            // An entry of this layer with that name wins over the whiteout.
            match fstatat(
                Some(dfd),
                OsStr::from_bytes(hidden),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(_) => continue,
                Err(Errno::ENOENT) => {}
                Err(e) => {
                    return Err(ExtractError::Io {
                        path,
                        source: errno_io(e),
                    })
                }
            }
            mknodat(
                Some(dfd),
                OsStr::from_bytes(hidden),
                SFlag::S_IFCHR,
                Mode::empty(),
                0,
            )
            .map_err(|e| ExtractError::Io {
                path: path.clone(),
                source: errno_io(e),
            })?;
            ex.stats.whiteouts += 1;
            continue;
        }
        let name = OsStr::from_bytes(last);
        let header = entry.header();
        // An empty or unreadable numeric field (some writers leave them blank) counts as 0.
        let mode = header.mode().unwrap_or(0o644);
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let mtime = header.mtime().unwrap_or(0);
        let io_err = |e: Errno| ExtractError::Io {
            path: path.clone(),
            source: errno_io(e),
        };
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous | T::GNUSparse => {
                let xattrs = entry_xattrs(&mut entry, &mut ex.stats).map_err(ExtractError::Read)?;
                let size = entry.size();
                let dfd = ex.parent_dir(parent, &path)?.as_raw_fd();
                ex.clear(dfd, &comps, false, &path)?;
                let fd = openat(
                    Some(dfd),
                    name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(io_err)?;
                // SAFETY: `openat` just returned this descriptor; nothing else owns it.
                let mut file = unsafe { File::from_raw_fd(fd) };
                let n = io::copy(&mut entry, &mut file).map_err(|e| ExtractError::Io {
                    path: path.clone(),
                    source: e,
                })?;
                if n != size {
                    return Err(ExtractError::Refused {
                        path,
                        reason: "the entry's data is shorter than its size",
                    });
                }
                ex.stats.bytes += n;
                fchown(
                    file.as_raw_fd(),
                    Some(Uid::from_raw(uid)),
                    Some(Gid::from_raw(gid)),
                )
                .map_err(io_err)?;
                fchmod(file.as_raw_fd(), safe_mode(mode, &mut ex.stats)).map_err(io_err)?;
                for (k, v) in xattrs {
                    set_xattr(&file, &k, &v).map_err(|e| ExtractError::Io {
                        path: path.clone(),
                        source: e,
                    })?;
                }
                let t = libc::timespec {
                    tv_sec: mtime as libc::time_t,
                    tv_nsec: 0,
                };
                // SAFETY: a valid descriptor and a pointer to two initialised timespecs.
                unsafe { libc::futimens(file.as_raw_fd(), [t, t].as_ptr()) };
            }
            T::Directory => {
                let xattrs = entry_xattrs(&mut entry, &mut ex.stats).map_err(ExtractError::Read)?;
                let dfd = ex.parent_dir(parent, &path)?.as_raw_fd();
                if !ex.clear(dfd, &comps, true, &path)? {
                    mkdirat(Some(dfd), name, Mode::from_bits_truncate(0o700)).map_err(io_err)?;
                }
                let dfd = ex.parent_dir(parent, &path)?;
                let dir = Extractor::open_dir_at(dfd, last).map_err(io_err)?;
                fchown(
                    dir.as_raw_fd(),
                    Some(Uid::from_raw(uid)),
                    Some(Gid::from_raw(gid)),
                )
                .map_err(io_err)?;
                fchmod(dir.as_raw_fd(), safe_mode(mode, &mut ex.stats)).map_err(io_err)?;
                for (k, v) in xattrs {
                    set_xattr(&dir, &k, &v).map_err(|e| ExtractError::Io {
                        path: path.clone(),
                        source: e,
                    })?;
                }
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ExtractError::Refused {
                        path: path.clone(),
                        reason: "a symlink without a target",
                    })?
                    .into_owned();
                let dfd = ex.parent_dir(parent, &path)?.as_raw_fd();
                ex.clear(dfd, &comps, false, &path)?;
                symlinkat(OsStr::from_bytes(&target), Some(dfd), name).map_err(io_err)?;
                fchownat(
                    Some(dfd),
                    name,
                    Some(Uid::from_raw(uid)),
                    Some(Gid::from_raw(gid)),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(io_err)?;
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ExtractError::Refused {
                        path: path.clone(),
                        reason: "a hardlink without a target",
                    })?
                    .into_owned();
                let tcomps = components(&target).ok_or_else(|| ExtractError::Refused {
                    path: path.clone(),
                    reason: "a hardlink target with `..`",
                })?;
                let Some((&tlast, tparent)) = tcomps.split_last() else {
                    return Err(ExtractError::Refused {
                        path,
                        reason: "a hardlink to the layer root",
                    });
                };
                let tdir =
                    ex.parent_dir(tparent, &path)?
                        .try_clone()
                        .map_err(|e| ExtractError::Io {
                            path: path.clone(),
                            source: e,
                        })?;
                match fstatat(
                    Some(tdir.as_raw_fd()),
                    OsStr::from_bytes(tlast),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                ) {
                    Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {}
                    Ok(_) => {
                        return Err(ExtractError::Refused {
                            path,
                            reason: "a hardlink to something other than a regular file",
                        })
                    }
                    Err(_) => {
                        return Err(ExtractError::Refused {
                            path,
                            reason: "a hardlink to a file not in this layer",
                        })
                    }
                }
                if tcomps == comps {
                    continue; // a link to itself
                }
                let dfd = ex.parent_dir(parent, &path)?.as_raw_fd();
                ex.clear(dfd, &comps, false, &path)?;
                linkat(
                    Some(tdir.as_raw_fd()),
                    OsStr::from_bytes(tlast),
                    Some(dfd),
                    name,
                    nix::fcntl::AtFlags::empty(),
                )
                .map_err(io_err)?;
            }
            T::Char | T::Block | T::Fifo => {
                ex.stats.skipped_devices += 1;
            }
            // PAX and GNU long-name headers are consumed by the tar crate; anything else
            // (sockets, unknown types) carries nothing a container needs.
            _ => {}
        }
    }
    Ok(ex.stats)
}

/// Ends a stream cut right after an entry's data (some writers omit the block padding and the
/// end-of-archive blocks) with the zeros the format wants: up to the next 512-byte block plus
/// two empty blocks, and no more.
struct EofPad<R> {
    inner: R,
    count: u64,
    pad: Option<u64>,
}

impl<R: Read> Read for EofPad<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pad.is_none() {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.count += n as u64;
                return Ok(n);
            }
            self.pad = Some((512 - self.count % 512) % 512 + 1024);
        }
        let left = self.pad.as_mut().expect("set above");
        let n = (*left).min(buf.len() as u64) as usize;
        buf[..n].fill(0);
        *left -= n as u64;
        Ok(n)
    }
}

/// The `user.` extended attributes of an entry (PAX `SCHILY.xattr.`); others are counted
/// and dropped.
fn entry_xattrs<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    stats: &mut ExtractStats,
) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                if name.starts_with("user.") && !name.contains('\0') {
                    out.push((name.to_owned(), ext.value_bytes().to_vec()));
                } else {
                    stats.dropped_xattrs += 1;
                }
            }
        }
    }
    Ok(out)
}

fn set_xattr(fd: &impl AsRawFd, name: &str, value: &[u8]) -> io::Result<()> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid descriptor, a NUL-terminated name and a pointer/length pair of a live
    // slice.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How a layer blob is compressed, by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A decompressing reader over a layer blob.
pub fn decompress<'a, R: io::BufRead + 'a>(mut r: R) -> io::Result<Box<dyn Read + 'a>> {
    let head = r.fill_buf()?;
    Ok(match Compression::sniff(head) {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        Compression::None => Box::new(r),
    })
}

#[cfg(test)]
#[path = "extract_tests.rs"]
mod tests;
