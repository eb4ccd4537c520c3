//! Reader of the kernel's pressure stall information (PSI) files: `/proc/pressure/{cpu,memory,io}`
//! and, on cgroup v2, a cgroup's `cpu.pressure` / `memory.pressure` (same format):
//!
//! ```text
//! some avg10=0.00 avg60=0.00 avg300=0.00 total=0
//! full avg10=0.00 avg60=0.00 avg300=0.00 total=0
//! ```
//!
//! The `full` line is optional (older kernels have none for `cpu`); unknown `key=value` pairs
//! are ignored so that a future field does not break parsing.
use std::path::{Path, PathBuf};

use super::HostPressure;

/// One line of a PSI file: stall percentages over 10 s, 60 s, 300 s and the total stall time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PsiLine {
    /// Share of time stalled, percent, over the last 10 s.
    pub avg10: f64,
    /// ... over the last 60 s.
    pub avg60: f64,
    /// ... over the last 300 s.
    pub avg300: f64,
    /// Cumulative stall time in microseconds.
    pub total: u64,
}

/// A parsed PSI file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Psi {
    /// Some tasks stalled.
    pub some: PsiLine,
    /// All non-idle tasks stalled, where the kernel reports it.
    pub full: Option<PsiLine>,
}

/// Errors of [`read_psi`], with the path involved.
#[derive(Debug, thiserror::Error)]
pub enum PsiError {
    /// The file could not be read (missing, or PSI disabled: `EOPNOTSUPP`).
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The content is not in the PSI format.
    #[error("{path}:{line}: malformed PSI: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number (0 when the problem is the whole file).
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Reads and parses one PSI file.
pub fn read_psi(path: &Path) -> Result<Psi, PsiError> {
    let text = std::fs::read_to_string(path).map_err(|source| PsiError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_psi(&text).map_err(|(line, reason)| PsiError::Malformed {
        path: path.to_path_buf(),
        line,
        reason,
    })
}

/// Parses PSI text; errors carry (line number, reason).
fn parse_psi(text: &str) -> Result<Psi, (usize, String)> {
    let mut some = None;
    let mut full = None;
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let kind = words.next().unwrap_or_default();
        let slot = match kind {
            "some" => &mut some,
            "full" => &mut full,
            other => return Err((number, format!("unknown line kind {other:?}"))),
        };
        if slot.is_some() {
            return Err((number, format!("duplicate {kind:?} line")));
        }
        *slot = Some(parse_line(words).map_err(|reason| (number, reason))?);
    }
    let some = some.ok_or_else(|| (0, "no \"some\" line".to_string()))?;
    Ok(Psi { some, full })
}

fn parse_line<'a>(words: impl Iterator<Item = &'a str>) -> Result<PsiLine, String> {
    let (mut avg10, mut avg60, mut avg300, mut total) = (None, None, None, None);
    for word in words {
        let (key, value) = word
            .split_once('=')
            .ok_or_else(|| format!("expected key=value, got {word:?}"))?;
        let avg = || -> Result<f64, String> {
            value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("bad {key} value {value:?}"))
        };
        match key {
            "avg10" => avg10 = Some(avg()?),
            "avg60" => avg60 = Some(avg()?),
            "avg300" => avg300 = Some(avg()?),
            "total" => {
                total = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| format!("bad total value {value:?}"))?,
                )
            }
            _ => {}
        }
    }
    let missing = |name: &str| format!("missing {name}");
    Ok(PsiLine {
        avg10: avg10.ok_or_else(|| missing("avg10"))?,
        avg60: avg60.ok_or_else(|| missing("avg60"))?,
        avg300: avg300.ok_or_else(|| missing("avg300"))?,
        total: total.ok_or_else(|| missing("total"))?,
    })
}

/// Host pressure from `<proc_root>/pressure/cpu` and `<proc_root>/pressure/memory` (`some`
/// `avg10` and `total` of each) and the host's busy CPU time from `<proc_root>/stat`. A file
/// that is missing, unreadable or malformed gives `None` (logged at debug level): PSI is
/// optional (kernels built or booted without it).
pub fn read_host_pressure(proc_root: &Path) -> HostPressure {
    let read = |name: &str| {
        let path = proc_root.join("pressure").join(name);
        match read_psi(&path) {
            Ok(psi) => Some(psi.some),
            Err(error) => {
                tracing::debug!(%error, "host PSI unavailable");
                None
            }
        }
    };
    let (cpu, memory) = (read("cpu"), read("memory"));
    HostPressure {
        cpu_some_avg10: cpu.map(|l| l.avg10),
        memory_some_avg10: memory.map(|l| l.avg10),
        cpu_some_total_usec: cpu.map(|l| l.total),
        memory_some_total_usec: memory.map(|l| l.total),
        cpu_busy_usec: std::fs::read_to_string(proc_root.join("stat"))
            .ok()
            .and_then(|text| busy_usec(&text)),
    }
}

/// Clock ticks per second of `/proc/stat` (`USER_HZ`, 100 on every Linux architecture hako
/// runs on).
const USER_HZ: u64 = 100;

/// Busy CPU time of all CPUs (user, nice, system, irq, softirq, steal; not idle nor iowait)
/// from the aggregate `cpu` line of `/proc/stat`, in µs.
fn busy_usec(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    let ticks = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    Some(ticks * (1_000_000 / USER_HZ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU_WITH_FULL: &str = "some avg10=25.78 avg60=7.56 avg300=3.42 total=21128880\n\
                                 full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
    const CPU_SOME_ONLY: &str = "some avg10=1.50 avg60=0.25 avg300=0.05 total=123456\n";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn parses_some_and_full_lines() {
        let dir = tempfile::tempdir().unwrap();
        let psi = read_psi(&write(dir.path(), "cpu", CPU_WITH_FULL)).unwrap();
        assert_eq!(
            psi.some,
            PsiLine {
                avg10: 25.78,
                avg60: 7.56,
                avg300: 3.42,
                total: 21_128_880
            }
        );
        assert_eq!(
            psi.full,
            Some(PsiLine {
                avg10: 0.0,
                avg60: 0.0,
                avg300: 0.0,
                total: 0
            })
        );
    }

    #[test]
    fn parses_file_without_full_line() {
        let dir = tempfile::tempdir().unwrap();
        let psi = read_psi(&write(dir.path(), "cpu", CPU_SOME_ONLY)).unwrap();
        assert_eq!(psi.some.avg10, 1.5);
        assert_eq!(psi.some.total, 123_456);
        assert_eq!(psi.full, None);
    }

    #[test]
    fn ignores_unknown_keys() {
        let psi = parse_psi("some avg10=2.00 avg60=1.00 avg300=0.50 total=9 avg1=7.0\n").unwrap();
        assert_eq!(psi.some.avg10, 2.0);
    }

    #[test]
    fn malformed_input_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("empty", ""),
            ("garbage", "hello world\n"),
            ("missing_key", "some avg10=1.00 avg60=1.00 total=5\n"),
            (
                "bad_number",
                "some avg10=x avg60=1.00 avg300=1.00 total=5\n",
            ),
            ("negative", "some avg10=-1 avg60=1.00 avg300=1.00 total=5\n"),
            ("no_equals", "some avg10 avg60=1.00 avg300=1.00 total=5\n"),
            (
                "full_only",
                "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
            ),
            (
                "duplicate",
                "some avg10=0 avg60=0 avg300=0 total=0\nsome avg10=0 avg60=0 avg300=0 total=0\n",
            ),
        ];
        for (name, text) in cases {
            let path = write(dir.path(), name, text);
            let err = read_psi(&path).expect_err(name);
            assert!(matches!(err, PsiError::Malformed { .. }), "{name}: {err:?}");
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn missing_file_is_an_io_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope");
        let err = read_psi(&path).unwrap_err();
        assert!(matches!(err, PsiError::Io { .. }));
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn host_pressure_from_fake_proc_tree() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("pressure")).unwrap();
        write(&root.path().join("pressure"), "cpu", CPU_WITH_FULL);
        write(
            &root.path().join("pressure"),
            "memory",
            "some avg10=12.50 avg60=3.00 avg300=1.00 total=77\n\
             full avg10=4.00 avg60=1.00 avg300=0.20 total=33\n",
        );
        std::fs::write(
            root.path().join("stat"),
            "cpu  100 20 30 1000 50 4 6 2 0 0\ncpu0 50 10 15 500 25 2 3 1 0 0\nintr 1\n",
        )
        .unwrap();
        let host = read_host_pressure(root.path());
        assert_eq!(
            host,
            HostPressure {
                cpu_some_avg10: Some(25.78),
                memory_some_avg10: Some(12.5),
                cpu_some_total_usec: Some(21_128_880),
                memory_some_total_usec: Some(77),
                // (100 + 20 + 30 + 4 + 6 + 2) ticks of 10 ms
                cpu_busy_usec: Some(1_620_000),
            }
        );
    }

    #[test]
    fn host_pressure_missing_or_broken_files_are_none() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(read_host_pressure(root.path()), HostPressure::default());
        std::fs::create_dir(root.path().join("pressure")).unwrap();
        write(&root.path().join("pressure"), "cpu", CPU_SOME_ONLY);
        write(&root.path().join("pressure"), "memory", "not psi\n");
        std::fs::write(root.path().join("stat"), "cpu  garbage\n").unwrap();
        let host = read_host_pressure(root.path());
        assert_eq!(
            host,
            HostPressure {
                cpu_some_avg10: Some(1.5),
                cpu_some_total_usec: Some(123_456),
                ..Default::default()
            }
        );
    }

    #[test]
    fn the_real_host_file_parses_when_psi_is_enabled() {
        // PSI may be compiled out or disabled (the file is absent or reading fails with
        // EOPNOTSUPP): that is an Io error. What the kernel writes must never be Malformed.
        match read_psi(Path::new("/proc/pressure/cpu")) {
            Ok(psi) => assert!((0.0..=100.0).contains(&psi.some.avg10)),
            Err(PsiError::Io { .. }) => {}
            Err(err @ PsiError::Malformed { .. }) => panic!("{err}"),
        }
    }
}
