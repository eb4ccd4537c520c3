//! Helpers the scenarios that start their own `hako serve` share: a free loopback port, one
//! HTTP/1.1 GET on a fresh connection, polling for a condition with a deadline, and the
//! running `hako serve` itself ([`ServeProc`]).
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port nobody listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    TcpListener::bind("127.0.0.1:0")?
        .local_addr()
        .map(|a| a.port())
}

/// One `GET` with `Connection: close` on a new connection (connect timeout `connect`, read
/// timeout `read`): the status, the body, and the milliseconds from before the connect to the
/// end of the body.
pub fn http_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    connect: Duration,
    read: Duration,
) -> std::io::Result<(u16, String, f64)> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, connect)?;
    s.set_read_timeout(Some(read))?;
    s.set_nodelay(true)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    Ok((status, body, ms))
}

/// Calls `f` every `every` until it returns a value or `within` has passed (then `None`).
pub fn poll_until<T>(
    within: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// A `hako serve` a scenario started: stopped with SIGTERM on drop (killed if it has not
/// exited 30 s later), then its cgroup parent removed from every hierarchy.
pub struct ServeProc {
    child: Option<Child>,
    /// Its admin endpoint.
    pub admin: SocketAddr,
    /// Its proxy listener.
    pub listen: SocketAddr,
    cgroup_parent: String,
    log: PathBuf,
}

impl ServeProc {
    /// Starts `cmd` (a `hako ... serve --config FILE` whose config uses `listen`, `admin` and
    /// `cgroup_parent`) with stdout and stderr to `log`, and waits until `/healthz` answers 200
    /// (`Err` with the reason and the log if not within `within`).
    pub fn start(
        mut cmd: Command,
        log: &Path,
        listen: SocketAddr,
        admin: SocketAddr,
        cgroup_parent: String,
        within: Duration,
    ) -> Result<ServeProc, String> {
        let f = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let e = f
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(e)
            .spawn()
            .map_err(|e| format!("spawn {:?}: {e}", cmd.get_program()))?;
        let s = ServeProc {
            child: Some(child),
            admin,
            listen,
            cgroup_parent,
            log: log.to_owned(),
        };
        let healthy = poll_until(within, Duration::from_millis(50), || {
            http_get(
                s.admin,
                "127.0.0.1",
                "/healthz",
                Duration::from_secs(5),
                Duration::from_secs(30),
            )
            .ok()
            .filter(|r| r.0 == 200)
        });
        match healthy {
            Some(_) => Ok(s),
            None => Err(format!(
                "hako /healthz: not 200 within {within:?}\n{}",
                s.log_text()
            )),
        }
    }

    /// What hako has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, up to 30 s for the drain, then SIGKILL; the cgroup parent removed.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let exited = poll_until(Duration::from_secs(30), Duration::from_millis(50), || {
                c.try_wait().ok().flatten()
            });
            if exited.is_none() {
                eprintln!("hako did not stop within 30 s of SIGTERM: killing it");
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Ok(dir) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in dir.flatten() {
                let _ = std::fs::remove_dir(e.path().join(&self.cgroup_parent));
            }
        }
    }
}

impl Drop for ServeProc {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_until_returns_the_value_or_none_at_the_deadline() {
        let mut n = 0;
        let got = poll_until(Duration::from_secs(5), Duration::ZERO, || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(got, Some(3));
        let none: Option<()> =
            poll_until(Duration::from_millis(30), Duration::from_millis(5), || None);
        assert!(none.is_none());
    }

    #[test]
    fn a_get_reads_status_and_body() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            // The head may arrive in several writes: read up to its blank line.
            let mut req = Vec::new();
            let mut byte = [0u8; 1];
            while !req.ends_with(b"\r\n\r\n") && c.read(&mut byte).unwrap() == 1 {
                req.push(byte[0]);
            }
            assert!(String::from_utf8_lossy(&req).starts_with("GET /x HTTP/1.1\r\nHost: h\r\n"));
            c.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
        });
        let (status, body, ms) = http_get(
            addr,
            "h",
            "/x",
            Duration::from_secs(2),
            Duration::from_secs(5),
        )
        .unwrap();
        server.join().unwrap();
        assert_eq!((status, body.as_str()), (201, "ok"));
        assert!(ms >= 0.0);
        assert!(free_port().unwrap() > 0);
    }
}
