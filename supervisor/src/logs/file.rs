//! The file sink: `DIR/APP.log` with size-based rotation (`APP.log.1`, `APP.log.2`, ...), and
//! reading it back for `hako logs`.
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Size at which `APP.log` is rotated.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 10 << 20;
/// Files kept per app, the live one included (`APP.log`, `APP.log.1`, `APP.log.2`).
pub const DEFAULT_MAX_FILES: usize = 3;

/// `DIR/APP.log`, or its `n`th rotated predecessor.
pub fn log_path(dir: &Path, app: &str, n: usize) -> PathBuf {
    if n == 0 {
        dir.join(format!("{app}.log"))
    } else {
        dir.join(format!("{app}.log.{n}"))
    }
}

/// One app's log file, appended to and rotated by size.
#[derive(Debug)]
pub struct RotatingFile {
    dir: PathBuf,
    app: String,
    max_bytes: u64,
    max_files: usize,
    size: u64,
    out: BufWriter<File>,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

impl RotatingFile {
    /// Opens (appending to) `dir/APP.log`.
    pub fn open(dir: &Path, app: &str, max_bytes: u64, max_files: usize) -> io::Result<Self> {
        let path = log_path(dir, app, 0);
        let f = open_append(&path)?;
        let size = f.metadata()?.len();
        Ok(RotatingFile {
            dir: dir.to_owned(),
            app: app.to_owned(),
            max_bytes: max_bytes.max(1),
            max_files: max_files.max(1),
            size,
            out: BufWriter::with_capacity(64 << 10, f),
        })
    }

    /// Appends one line (buffered: see [`RotatingFile::flush`]), rotating first when it would
    /// take the file past its size.
    pub fn write_line(&mut self, line: &str) -> io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(line.as_bytes())?;
        self.size += line.len() as u64;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// `APP.log.(n)` -> `APP.log.(n+1)` (the oldest is replaced), `APP.log` -> `APP.log.1`, a
    /// new `APP.log`.
    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let path = log_path(&self.dir, &self.app, 0);
        if self.max_files == 1 {
            self.out = BufWriter::with_capacity(64 << 10, File::create(&path)?);
        } else {
            for n in (1..self.max_files - 1).rev() {
                let from = log_path(&self.dir, &self.app, n);
                if from.exists() {
                    std::fs::rename(&from, log_path(&self.dir, &self.app, n + 1))?;
                }
            }
            std::fs::rename(&path, log_path(&self.dir, &self.app, 1))?;
            self.out = BufWriter::with_capacity(64 << 10, open_append(&path)?);
        }
        self.size = 0;
        Ok(())
    }

    /// The app's files, oldest first, opened now (a rotation afterwards does not disturb a
    /// reader), with the length of each to read (the live file's length now, so that lines
    /// written later are not read twice by a follower that gets them live). Flushes first.
    pub fn snapshot(&mut self) -> io::Result<Vec<(File, u64)>> {
        self.out.flush()?;
        let mut out = Vec::new();
        for n in (0..self.max_files).rev() {
            if let Ok(f) = File::open(log_path(&self.dir, &self.app, n)) {
                let len = if n == 0 {
                    self.size
                } else {
                    f.metadata().map_or(0, |m| m.len())
                };
                out.push((f, len));
            }
        }
        Ok(out)
    }
}

/// The files of an app nobody writes to right now (no instance printed since hako started),
/// oldest first.
pub fn snapshot_idle(dir: &Path, app: &str, max_files: usize) -> Vec<(File, u64)> {
    (0..max_files.max(1))
        .rev()
        .filter_map(|n| {
            let f = File::open(log_path(dir, app, n)).ok()?;
            let len = f.metadata().ok()?.len();
            Some((f, len))
        })
        .collect()
}

/// Reads the lines of `files` (each up to its length), calling `line` for each complete one;
/// stops early when `line` returns false.
pub fn read_lines(files: Vec<(File, u64)>, mut line: impl FnMut(&str) -> bool) {
    for (f, len) in files {
        let mut r = BufReader::with_capacity(64 << 10, f.take(len));
        let mut buf = String::new();
        loop {
            buf.clear();
            match r.read_line(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) if !buf.ends_with('\n') => break,
                Ok(_) => {
                    if !line(&buf) {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(files: Vec<(File, u64)>) -> Vec<String> {
        let mut out = Vec::new();
        read_lines(files, |l| {
            out.push(l.trim_end().to_owned());
            true
        });
        out
    }

    #[test]
    fn rotation_keeps_the_newest_files_within_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = RotatingFile::open(dir.path(), "web", 100, 3).expect("open");
        for i in 0..100 {
            f.write_line(&format!("line {i:04} xxxxxxxxxx\n"))
                .expect("write");
        }
        f.flush().expect("flush");
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["web.log", "web.log.1", "web.log.2"]);
        let total: u64 = names
            .iter()
            .map(|n| std::fs::metadata(dir.path().join(n)).expect("meta").len())
            .sum();
        assert!(total <= 300, "{total} bytes on disk");
        // The newest lines, in order, across the files.
        let lines = lines_of(f.snapshot().expect("snapshot"));
        assert_eq!(
            lines.last().map(String::as_str),
            Some("line 0099 xxxxxxxxxx")
        );
        let nums: Vec<u32> = lines
            .iter()
            .map(|l| l[5..9].parse().expect("num"))
            .collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
        assert!(nums.len() >= 10, "{nums:?}");
        // Appending after a restart continues the live file.
        drop(f);
        let mut f = RotatingFile::open(dir.path(), "web", 100, 3).expect("reopen");
        f.write_line("after\n").expect("write");
        let lines = lines_of(f.snapshot().expect("snapshot"));
        assert_eq!(lines.last().map(String::as_str), Some("after"));
    }

    #[test]
    fn a_snapshot_ignores_what_is_written_after_it_and_survives_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = RotatingFile::open(dir.path(), "api", 1 << 20, 2).expect("open");
        f.write_line("one\n").expect("write");
        let snap = f.snapshot().expect("snapshot");
        f.write_line("two\n").expect("write");
        f.rotate().expect("rotate");
        f.write_line("three\n").expect("write");
        f.flush().expect("flush");
        assert_eq!(lines_of(snap), ["one"]);
        assert_eq!(
            lines_of(snapshot_idle(dir.path(), "api", 2)),
            ["one", "two", "three"]
        );
    }

    #[test]
    fn one_file_only_truncates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = RotatingFile::open(dir.path(), "w", 10, 1).expect("open");
        f.write_line("aaaaaaaa\n").expect("write");
        f.write_line("bbbbbbbb\n").expect("write");
        assert_eq!(lines_of(f.snapshot().expect("snapshot")), ["bbbbbbbb"]);
    }
}
