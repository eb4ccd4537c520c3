//! Exclusive ownership of what a `hako serve` manages: its cgroup parent and its state
//! directory. A second serve on either would take the first one's pooled cgroups and records
//! for orphans of a crashed hako and remove them, so it refuses to start instead, naming the
//! pid that holds them.
//!
//! Each resource is an `flock`ed file holding the holder's pid: the cgroup parent's under a
//! fixed host directory ([`LOCK_DIR`], so that two serves with different state directories
//! still meet), the state directory's inside it. The kernel releases a lock when its holder
//! dies, `kill -9` included, so the next serve takes over and recovers the orphans. A holder
//! that stops normally removes its lock file while still holding the lock; a contender checks,
//! once it has the lock, that the path still names the file it locked.
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Where the cgroup parent locks live: one file per parent name, `cgroup-<name>.lock`.
pub const LOCK_DIR: &str = "/run/hako-locks";

/// Why a serve cannot own its resources.
#[derive(Debug, thiserror::Error)]
pub enum ExclusiveError {
    /// Another process holds the lock.
    #[error(
        "{what} is in use by another hako serve ({}); give this one its own \
         cgroup_parent and state_dir, or stop the other (lock {})",
        holder(*.pid),
        lock.display()
    )]
    InUse {
        /// `cgroup parent "hako"` or `state_dir /run/hako`.
        what: String,
        /// The lock file.
        lock: PathBuf,
        /// The holder's pid, as it wrote it.
        pid: Option<i32>,
    },
    /// The lock file could not be made or locked.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// The operation.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn holder(pid: Option<i32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown".to_owned(),
    }
}

/// An exclusive lock on one file, with our pid written in it; removed on drop.
#[derive(Debug)]
pub struct PidLock {
    path: PathBuf,
    lock: Option<Flock<std::fs::File>>,
}

impl PidLock {
    /// Takes the lock at `path` without waiting; `what` names the resource in the error.
    pub fn acquire(path: &Path, what: &str) -> Result<PidLock, ExclusiveError> {
        let io = |what: &'static str, source| ExclusiveError::Io {
            what,
            path: path.to_path_buf(),
            source,
        };
        loop {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| io("open lock file", e))?;
            let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => lock,
                Err((file, Errno::EWOULDBLOCK)) => {
                    return Err(ExclusiveError::InUse {
                        what: what.to_owned(),
                        lock: path.to_path_buf(),
                        pid: holder_pid(file),
                    })
                }
                Err((_, e)) => return Err(io("lock", std::io::Error::from(e))),
            };
            // The previous holder may have removed the file between our open and our lock:
            // then we locked a file nobody else will ever look at; start again.
            let ours = lock.metadata().map_err(|e| io("stat lock file", e))?;
            match std::fs::metadata(path) {
                Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => {}
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("stat lock file", e)),
            }
            lock.set_len(0).map_err(|e| io("write lock file", e))?;
            lock.rewind().map_err(|e| io("write lock file", e))?;
            writeln!(lock, "{}", std::process::id()).map_err(|e| io("write lock file", e))?;
            return Ok(PidLock {
                path: path.to_path_buf(),
                lock: Some(lock),
            });
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidLock {
    fn drop(&mut self) {
        // Removed while still held (see the module documentation), then released.
        let _ = std::fs::remove_file(&self.path);
        drop(self.lock.take());
    }
}

/// The pid written in a lock file whose lock someone else holds. A holder that has just taken
/// the lock may not have written it yet: wait a little for it.
fn holder_pid(mut file: std::fs::File) -> Option<i32> {
    for _ in 0..20 {
        let mut text = String::new();
        if file.rewind().is_ok() && file.read_to_string(&mut text).is_ok() {
            if let Ok(pid) = text.trim().parse() {
                return Some(pid);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    None
}

/// What a serve owns while it runs: its cgroup parent and its state directory.
#[derive(Debug)]
pub struct ServeLocks {
    _cgroup_parent: PidLock,
    _state_dir: PidLock,
}

impl ServeLocks {
    /// Locks `cgroup_parent` (a file under `lock_dir`, normally [`LOCK_DIR`]) and `state_dir`
    /// (its `lock` file; the directory is created). Takes nothing if either is in use.
    pub fn acquire(
        lock_dir: &Path,
        cgroup_parent: &str,
        state_dir: &Path,
    ) -> Result<ServeLocks, ExclusiveError> {
        std::fs::create_dir_all(lock_dir).map_err(|source| ExclusiveError::Io {
            what: "create lock directory",
            path: lock_dir.to_path_buf(),
            source,
        })?;
        let cgroup = PidLock::acquire(
            &lock_dir.join(format!("cgroup-{cgroup_parent}.lock")),
            &format!("cgroup parent {cgroup_parent:?}"),
        )?;
        std::fs::create_dir_all(state_dir).map_err(|source| ExclusiveError::Io {
            what: "create state_dir",
            path: state_dir.to_path_buf(),
            source,
        })?;
        let state = PidLock::acquire(
            &state_dir.join("lock"),
            &format!("state_dir {}", state_dir.display()),
        )?;
        Ok(ServeLocks {
            _cgroup_parent: cgroup,
            _state_dir: state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_owner_is_refused_naming_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        let first = ServeLocks::acquire(&locks, "p1", &dir.path().join("s1")).unwrap();
        let pid = std::process::id() as i32;
        let text = std::fs::read_to_string(locks.join("cgroup-p1.lock")).unwrap();
        assert_eq!(text, format!("{pid}\n"));

        // Same cgroup parent, another state_dir.
        let err = ServeLocks::acquire(&locks, "p1", &dir.path().join("s2")).unwrap_err();
        assert!(
            matches!(&err, ExclusiveError::InUse { pid: Some(p), .. } if *p == pid),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "cgroup parent \"p1\" is in use by another hako serve (pid {pid})"
            )),
            "{msg}"
        );
        // Another cgroup parent, the same state_dir; the parent's lock is not kept.
        let err = ServeLocks::acquire(&locks, "p2", &dir.path().join("s1")).unwrap_err();
        assert!(err.to_string().starts_with("state_dir "), "{err}");
        assert!(err.to_string().contains(&format!("(pid {pid})")), "{err}");
        assert!(!locks.join("cgroup-p2.lock").exists());

        // Released: the files are gone and the next owner gets both.
        drop(first);
        assert!(!locks.join("cgroup-p1.lock").exists());
        assert!(!dir.path().join("s1/lock").exists());
        let again = ServeLocks::acquire(&locks, "p1", &dir.path().join("s2")).unwrap();
        drop(again);
    }

    #[test]
    fn a_stale_file_of_a_dead_holder_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        // What a kill -9'd holder leaves: the file with its pid, no lock.
        std::fs::write(&path, "999999\n").unwrap();
        let lock = PidLock::acquire(&path, "x").unwrap();
        assert_eq!(
            std::fs::read_to_string(lock.path()).unwrap(),
            format!("{}\n", std::process::id())
        );
    }
}
