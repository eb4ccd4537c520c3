//! Readers of a cgroup's usage counters, for building an [`InstanceSample`](super::InstanceSample).
//! The caller passes the file path, so cgroup v1 and v2 layouts (and tests) are all covered:
//!
//! | what | cgroup v2 | cgroup v1 |
//! |---|---|---|
//! | CPU time | `<cg>/cpu.stat` → [`read_cpu_stat_usage_usec`] | `<cpuacct>/cpuacct.usage` (ns) → [`read_cpuacct_usage_usec`] |
//! | memory | `<cg>/memory.current` → [`read_memory_bytes`] | `<memory>/memory.usage_in_bytes` → [`read_memory_bytes`] |
use std::path::{Path, PathBuf};

/// Errors reading a cgroup usage file, with the path involved.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The content is not what the kernel writes there.
    #[error("{path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn read(path: &Path) -> Result<String, UsageError> {
    std::fs::read_to_string(path).map_err(|source| UsageError::Io {
        path: path.into(),
        source,
    })
}

fn malformed(path: &Path, reason: String) -> UsageError {
    UsageError::Malformed {
        path: path.into(),
        reason,
    }
}

fn single_number(path: &Path) -> Result<u64, UsageError> {
    let text = read(path)?;
    let value = text.trim();
    value
        .parse()
        .map_err(|_| malformed(path, format!("expected a number, got {value:?}")))
}

/// CPU time in microseconds from a cgroup v2 `cpu.stat` (its `usage_usec` line).
pub fn read_cpu_stat_usage_usec(path: &Path) -> Result<u64, UsageError> {
    let text = read(path)?;
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("usage_usec "))
        .ok_or_else(|| malformed(path, "no usage_usec line".into()))?;
    let value = line.trim();
    value
        .parse()
        .map_err(|_| malformed(path, format!("bad usage_usec {value:?}")))
}

/// CPU time in microseconds from a cgroup v1 `cpuacct.usage` (which is in nanoseconds).
pub fn read_cpuacct_usage_usec(path: &Path) -> Result<u64, UsageError> {
    Ok(single_number(path)? / 1000)
}

/// Bytes from a single-number memory file: v2 `memory.current`, v1 `memory.usage_in_bytes`.
pub fn read_memory_bytes(path: &Path) -> Result<u64, UsageError> {
    single_number(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn reads_usage_counters_of_both_hierarchies() {
        let dir = tempfile::tempdir().unwrap();
        let stat = write(
            dir.path(),
            "cpu.stat",
            "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\nnr_periods 0\n",
        );
        assert_eq!(read_cpu_stat_usage_usec(&stat).unwrap(), 1_234_567);
        let acct = write(dir.path(), "cpuacct.usage", "225267408881\n");
        assert_eq!(read_cpuacct_usage_usec(&acct).unwrap(), 225_267_408);
        let mem = write(dir.path(), "memory.current", "52428800\n");
        assert_eq!(read_memory_bytes(&mem).unwrap(), 50 * 1024 * 1024);
    }

    #[test]
    fn malformed_or_missing_usage_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let stat = write(dir.path(), "cpu.stat", "nr_periods 0\n");
        let mem = write(dir.path(), "memory.current", "max\n");
        let missing = dir.path().join("cpuacct.usage");
        for (path, err) in [
            (&stat, read_cpu_stat_usage_usec(&stat).unwrap_err()),
            (&mem, read_memory_bytes(&mem).unwrap_err()),
            (&missing, read_cpuacct_usage_usec(&missing).unwrap_err()),
        ] {
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
        }
    }
}
