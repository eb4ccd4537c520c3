//! The pipes of one instance: made before its boot (their write ends become its fds 1 and 2),
//! drained by one tokio task per stream for as long as anything holds a write end.
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use super::frame::{LineFramer, Tail};
use super::record::Stream;
use super::{lock, LogHub};

/// Pipe buffer asked for (the kernel's default is 64 KiB): room for a burst while the reader
/// is scheduled.
const PIPE_SIZE: i32 = 256 << 10;

/// One pipe per stream.
#[derive(Debug)]
pub struct Pipes {
    pub stdout_w: OwnedFd,
    pub stderr_w: OwnedFd,
    stdout_r: OwnedFd,
    stderr_r: OwnedFd,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let flags = OFlag::from_bits_truncate(fcntl(r.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(r.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    // A smaller buffer (pipe-max-size, or the user's pipe quota) is not an error.
    let _ = fcntl(r.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    Ok((r, w))
}

impl Pipes {
    /// Two pipes, close-on-exec, their read ends non-blocking.
    pub fn new() -> io::Result<Pipes> {
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        Ok(Pipes {
            stdout_w,
            stderr_w,
            stdout_r,
            stderr_r,
        })
    }

    /// Starts draining both read ends into `hub` as instance `instance` of `app` (inside a
    /// tokio runtime). The write ends stay with the caller, who drops them once the container
    /// holds its own copies.
    pub fn attach(
        self,
        hub: &Arc<LogHub>,
        app: &str,
        instance: &str,
    ) -> io::Result<(InstanceOutput, OwnedFd, OwnedFd)> {
        let tail = Arc::new(Mutex::new(Tail::default()));
        let mut tasks = Vec::with_capacity(2);
        for (fd, stream) in [
            (self.stdout_r, Stream::Stdout),
            (self.stderr_r, Stream::Stderr),
        ] {
            // SAFETY: the AsyncFd takes ownership of the File, so the descriptor stays open and
            // keeps its number for the AsyncFd's whole lifetime.
            let fd = unsafe {
                AsyncFd::register_with_interest(File::from(fd), tokio::io::Interest::READABLE)
            }?;
            tasks.push(tokio::spawn(pump(
                fd,
                hub.sender(app, instance, stream),
                tail.clone(),
            )));
        }
        Ok((InstanceOutput { tail, tasks }, self.stdout_w, self.stderr_w))
    }
}

/// Reads one pipe to its end.
async fn pump(fd: AsyncFd<File>, mut sender: super::LineSender, tail: Arc<Mutex<Tail>>) {
    let mut buf = vec![0u8; 64 << 10];
    let mut framer = LineFramer::default();
    loop {
        let mut guard = match fd.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::debug!(error = %e, "instance output: poll failed");
                break;
            }
        };
        match guard.try_io(|f| f.get_ref().read(&mut buf)) {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                let data = &buf[..n];
                lock(&tail).push(data);
                let mut lines = Vec::new();
                framer.push(data, |l| lines.push(l));
                sender.send(lines);
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "instance output: read failed");
                break;
            }
            Err(_would_block) => {}
        }
    }
    if let Some(last) = framer.finish() {
        sender.send(vec![last]);
    }
}

/// The readers of one instance's output.
#[derive(Debug)]
pub struct InstanceOutput {
    tail: Arc<Mutex<Tail>>,
    tasks: Vec<JoinHandle<()>>,
}

impl InstanceOutput {
    /// Waits (at most `timeout`) until both streams reached their end, i.e. every process
    /// holding them is gone; then returns the last output (up to 2 KiB, trimmed).
    pub async fn finish(&mut self, timeout: Duration) -> String {
        let tasks = std::mem::take(&mut self.tasks);
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        let _ = tokio::time::timeout(timeout, all).await;
        lock(&self.tail).text()
    }
}
