//! Helpers for hako end-to-end tests: a busybox root filesystem, a `hako serve` process guard
//! that checks that nothing is left behind, a tiny HTTP/1.1 client and a metrics scraper.
//!
//! Every test that uses [`Hako`] runs serially (a process-wide lock is held by the guard) and
//! gets its own ports, state directory and `cgroup_parent`, so hako's orphan recovery at start-up
//! can never touch another run's cgroups.
//!
//! hako's log of each run goes to a file in the run's tempdir and is printed when a test fails;
//! `HAKO_E2E_LOG` sets hako's `RUST_LOG` (default `info`).
//!
//! The tests need root. [`skip_unless_root`] prints `skipped: needs root` and returns true when
//! the suite runs unprivileged.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Timeout applied to every socket read/write of the client.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

static SERIAL: Mutex<()> = Mutex::new(());
static RUN_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Serializes the tests of one test binary (they all share the host's cgroups and CPU).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// True when the effective user is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Prints `skipped: needs root` and returns true when not running as root.
pub fn skip_unless_root() -> bool {
    if is_root() {
        false
    } else {
        println!("skipped: needs root");
        true
    }
}

/// Returns from the calling test (printing `skipped: needs root`) when not running as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if $crate::skip_unless_root() {
            return;
        }
    };
}

/// The workspace root (the parent of this crate's directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// stdout followed by stderr of a finished command, lossily decoded.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Ok when the command succeeded; Err carries its stdout and stderr.
pub fn output_result(out: &std::process::Output) -> Result<(), String> {
    if out.status.success() {
        Ok(())
    } else {
        Err(output_text(out))
    }
}

/// The `hako` binary built into the same target directory as the running test binary
/// (`target/<profile>/deps/test-xxx` → `target/<profile>/hako`).
pub fn hako_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("hako");
    assert!(
        bin.is_file(),
        "hako binary not found at {}: run `cargo build -p hako-supervisor` (with the same \
         CARGO_TARGET_DIR and profile) first",
        bin.display()
    );
    bin
}

/// A free loopback port (bound to port 0, read, released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

// ---------------------------------------------------------------------------------------------
// Root filesystem
// ---------------------------------------------------------------------------------------------

/// A busybox root filesystem in a temporary directory: `/bin/<applet>` links for every applet,
/// the usual mount points, `/www/index.html` and `/www/cgi-bin/`.
#[derive(Debug)]
pub struct Rootfs {
    dir: tempfile::TempDir,
}

/// The host's static busybox, copied (linked) into every [`Rootfs`].
pub const HOST_BUSYBOX: &str = "/usr/bin/busybox";

/// Body of `/www/index.html` in every [`Rootfs`].
pub const INDEX_BODY: &str = "hello from the e2e rootfs\n";

impl Rootfs {
    /// Builds the rootfs. Applet links are relative (`sh -> busybox`), so they resolve inside
    /// the container (`busybox --install -s` would write absolute host paths).
    pub fn new() -> Rootfs {
        let dir = tempfile::Builder::new()
            .prefix("hako-e2e-rootfs-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        for d in [
            "bin",
            "proc",
            "dev",
            "sys",
            "tmp",
            "run",
            "etc",
            "www/cgi-bin",
        ] {
            fs::create_dir_all(root.join(d)).expect("mkdir rootfs dir");
        }
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))
            .expect("chmod tmp");
        // A hard link where possible: a copy is a file open for writing, and a thread forking
        // at that moment keeps the descriptor until its exec, which makes executing the copy
        // fail with ETXTBSY ("Text file busy") in parallel tests.
        let busybox = root.join("bin/busybox");
        if fs::hard_link(HOST_BUSYBOX, &busybox).is_err() {
            let tmp = root.join("bin/.busybox.tmp");
            fs::copy(HOST_BUSYBOX, &tmp).expect("copy /usr/bin/busybox (install busybox-static)");
            fs::rename(&tmp, &busybox).expect("rename busybox");
        }
        let out = Command::new(HOST_BUSYBOX)
            .arg("--list")
            .output()
            .expect("busybox --list (install busybox-static)");
        assert!(out.status.success(), "busybox --list failed");
        for applet in String::from_utf8_lossy(&out.stdout).lines() {
            let applet = applet.trim();
            if applet.is_empty() || applet == "busybox" {
                continue;
            }
            let link = root.join("bin").join(applet);
            if !link.exists() {
                std::os::unix::fs::symlink("busybox", &link).expect("symlink applet");
            }
        }
        fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").expect("passwd");
        fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
        fs::write(root.join("www/index.html"), INDEX_BODY).expect("index.html");
        Rootfs { dir }
    }

    /// The rootfs directory on the host.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file (relative to the rootfs), creating parent directories.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.dir.path().join(rel.trim_start_matches('/'));
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("mkdir parent");
        }
        fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    /// Writes an executable file.
    pub fn write_exec(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.write(rel, contents);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod +x");
        p
    }

    /// Writes `/www/cgi-bin/<name>`: a shell CGI that runs `body` after printing a
    /// `text/plain` header. `body` writes the response body to stdout.
    pub fn cgi(&self, name: &str, body: &str) -> PathBuf {
        let script = format!("#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\n{body}\n");
        self.write_exec(&format!("www/cgi-bin/{name}"), script)
    }

    /// A new rootfs with one CGI, `/www/cgi-bin/<name>` (see [`Rootfs::cgi`]).
    pub fn with_cgi(name: &str, body: &str) -> Rootfs {
        let rootfs = Rootfs::new();
        rootfs.cgi(name, body);
        rootfs
    }

    /// Writes `len` pseudo-random bytes (seeded by `seed`) to `rel`; returns their FNV-1a hash.
    pub fn write_random(&self, rel: &str, len: u64, seed: u64) -> u64 {
        let p = self.dir.path().join(rel.trim_start_matches('/'));
        let mut f = io::BufWriter::with_capacity(1 << 20, fs::File::create(&p).expect("create"));
        let mut gen = PseudoRandom::new(seed);
        let mut hash = Fnv::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            gen.fill(&mut buf[..n]);
            hash.update(&buf[..n]);
            f.write_all(&buf[..n]).expect("write");
            left -= n as u64;
        }
        f.flush().expect("flush");
        hash.finish()
    }
}

impl Default for Rootfs {
    fn default() -> Self {
        Rootfs::new()
    }
}

/// xorshift64* byte generator (deterministic test data).
#[derive(Debug, Clone)]
pub struct PseudoRandom(u64);

impl PseudoRandom {
    pub fn new(seed: u64) -> Self {
        PseudoRandom(seed | 1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// 64-bit FNV-1a, good enough to detect corrupted, reordered or truncated transfers.
#[derive(Debug, Clone)]
pub struct Fnv(u64);

impl Fnv {
    pub fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub fn update(&mut self, data: &[u8]) {
        let mut h = self.0;
        for &b in data {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv {
    fn default() -> Self {
        Fnv::new()
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------------------------

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Where a request failed, so load tests can tell "never reached hako" from "dropped".
#[derive(Debug)]
pub enum RequestError {
    /// The TCP connection could not be established (listener closed, refused).
    Connect(io::Error),
    /// Connected, but writing the request failed.
    Send(io::Error),
    /// The request was sent but no complete response came back.
    Receive(io::Error),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Connect(e) => write!(f, "connect: {e}"),
            RequestError::Send(e) => write!(f, "send: {e}"),
            RequestError::Receive(e) => write!(f, "receive: {e}"),
        }
    }
}

impl std::error::Error for RequestError {}

/// What to send: method, Host (None: no Host header), path, body.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub body: &'a [u8],
}

impl<'a> Request<'a> {
    pub fn get(host: &'a str, path: &'a str) -> Self {
        Request {
            method: "GET",
            host: Some(host),
            path,
            body: b"",
        }
    }
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    connect_timeout(addr, Duration::from_secs(10), IO_TIMEOUT)
}

fn connect_timeout(addr: SocketAddr, connect: Duration, io: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, connect)?;
    s.set_read_timeout(Some(io))?;
    s.set_write_timeout(Some(io))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Sends one HTTP/1.1 request with `Connection: close` and reads the whole response.
pub fn request(addr: SocketAddr, req: &Request<'_>) -> Result<Response, RequestError> {
    send(connect(addr), req)
}

/// Like [`request`], with `timeout` for the connect and for every socket read/write.
pub fn request_timeout(
    addr: SocketAddr,
    req: &Request<'_>,
    timeout: Duration,
) -> Result<Response, RequestError> {
    send(connect_timeout(addr, timeout, timeout), req)
}

fn send(stream: io::Result<TcpStream>, req: &Request<'_>) -> Result<Response, RequestError> {
    let mut s = stream.map_err(RequestError::Connect)?;
    write_head(
        &mut s,
        req.method,
        req.host,
        req.path,
        req.body.len() as u64,
    )
    .map_err(RequestError::Send)?;
    s.write_all(req.body).map_err(RequestError::Send)?;
    let mut body = Vec::new();
    let (status, headers) = read_response(BufReader::new(s), &mut |chunk| {
        body.extend_from_slice(chunk)
    })
    .map_err(RequestError::Receive)?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// `GET path` with the given Host; panics on transport errors.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> Response {
    request(addr, &Request::get(host, path))
        .unwrap_or_else(|e| panic!("GET {host}{path} via {addr}: {e}"))
}

/// Like [`request`], but records the instant the request was completely written: load tests
/// use it to decide whether a request was "in flight" before an event.
pub fn request_timed(
    addr: SocketAddr,
    req: &Request<'_>,
) -> (Option<Instant>, Result<Response, RequestError>) {
    let mut s = match connect(addr) {
        Ok(s) => s,
        Err(e) => return (None, Err(RequestError::Connect(e))),
    };
    if let Err(e) = write_head(
        &mut s,
        req.method,
        req.host,
        req.path,
        req.body.len() as u64,
    )
    .and_then(|()| s.write_all(req.body))
    {
        return (None, Err(RequestError::Send(e)));
    }
    let sent = Instant::now();
    let mut body = Vec::new();
    let r = read_response(BufReader::new(s), &mut |chunk| {
        body.extend_from_slice(chunk)
    })
    .map(|(status, headers)| Response {
        status,
        headers,
        body,
    })
    .map_err(RequestError::Receive);
    (Some(sent), r)
}

/// Status, headers and body length of a response whose body went to a sink.
#[derive(Debug, Clone)]
pub struct Streamed {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
}

/// Streams a GET response body into `sink` without buffering it.
pub fn get_streaming(
    addr: SocketAddr,
    host: &str,
    path: &str,
    sink: &mut dyn FnMut(&[u8]),
) -> io::Result<Streamed> {
    let mut s = connect(addr)?;
    write_head(&mut s, "GET", Some(host), path, 0)?;
    let mut n = 0u64;
    let (status, headers) = read_response(BufReader::with_capacity(1 << 16, s), &mut |c| {
        n += c.len() as u64;
        sink(c)
    })?;
    Ok(Streamed {
        status,
        headers,
        body_len: n,
    })
}

/// POSTs `len` bytes produced by `fill` (called per chunk) and reads the whole response.
pub fn post_streaming(
    addr: SocketAddr,
    host: &str,
    path: &str,
    len: u64,
    fill: &mut dyn FnMut(&mut [u8]),
) -> io::Result<Response> {
    let mut s = connect(addr)?;
    write_head(&mut s, "POST", Some(host), path, len)?;
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        fill(&mut buf[..n]);
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    let mut body = Vec::new();
    let (status, headers) = read_response(BufReader::new(s), &mut |c| body.extend_from_slice(c))?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Writes raw bytes and reads until the server closes; returns everything read.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut s = connect(addr)?;
    s.write_all(bytes)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

fn write_head(
    s: &mut TcpStream,
    method: &str,
    host: Option<&str>,
    path: &str,
    len: u64,
) -> io::Result<()> {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if let Some(h) = host {
        head.push_str(&format!("Host: {h}\r\n"));
    }
    head.push_str("Connection: close\r\nUser-Agent: hako-e2e\r\n");
    if len > 0 || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {len}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one response (status line, headers, body by Content-Length, chunked, or until EOF),
/// handing body bytes to `sink` as they arrive.
fn read_response<R: Read>(
    mut r: BufReader<R>,
    sink: &mut dyn FnMut(&[u8]),
) -> io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "eof in headers",
            ));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let chunked =
        find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let mut buf = vec![0u8; 1 << 16];
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size_hex = line.trim().split(';').next().unwrap_or("");
            let size = u64::from_str_radix(size_hex, 16)
                .map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers until an empty line.
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            copy_exact(&mut r, size, &mut buf, sink)?;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(len) = find("content-length") {
        let len: u64 = len
            .parse()
            .map_err(|_| invalid(format!("bad content-length {len:?}")))?;
        copy_exact(&mut r, len, &mut buf, sink)?;
    } else if status != 204 && status != 304 {
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sink(&buf[..n]);
        }
    }
    Ok((status, headers))
}

fn copy_exact<R: Read>(
    r: &mut R,
    mut left: u64,
    buf: &mut [u8],
    sink: &mut dyn FnMut(&[u8]),
) -> io::Result<()> {
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("body truncated, {left} bytes missing"),
            ));
        }
        sink(&buf[..n]);
        left -= n as u64;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// One scrape of `/metrics`.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    /// Parses Prometheus text format (comments skipped).
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = match line.rsplit_once(' ') {
                Some(x) => x,
                None => continue,
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n.to_string(), parse_labels(rest.trim_end_matches('}'))),
                None => (series.to_string(), BTreeMap::new()),
            };
            samples.push((name, labels, value));
        }
        Metrics {
            text: text.to_string(),
            samples,
        }
    }

    /// The sum of every sample named `name` whose labels include all of `labels`; 0 if none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// The value of the one sample with exactly these labels, if present.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 1..];
        let Some(after) = after.strip_prefix('"') else {
            break;
        };
        let mut val = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => val.push(c),
            }
        }
        out.insert(key, val);
        rest = &after[end..];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Process, cgroup and mount inspection
// ---------------------------------------------------------------------------------------------

/// Start time (clock ticks since boot, field 22 of /proc/PID/stat) of a live process.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    // Fields after the command: state(3) ppid(4) ... starttime(22) → index 19.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Parent pid and state of a process.
pub fn ppid_and_state(pid: i32) -> Option<(i32, char)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let mut it = after.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((ppid, state))
}

/// True if `pid` still names the same (non-zombie) process.
pub fn alive(pid: i32, start: Option<u64>) -> bool {
    match (start_time(pid), ppid_and_state(pid)) {
        (Some(now), Some((_, state))) => state != 'Z' && start.is_none_or(|s| s == now),
        _ => false,
    }
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Every live descendant of `root` (children, grandchildren, ...).
pub fn descendants(root: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = all_pids()
        .into_iter()
        .filter_map(|p| ppid_and_state(p).map(|(pp, _)| (p, pp)))
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(c, pp) in &parents {
            if pp == p && !out.contains(&c) {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

/// Live processes whose cgroup path (any controller) lies under `/<parent>/`.
pub fn processes_in_cgroup_parent(parent: &str) -> Vec<(i32, String)> {
    let needle = format!("/{parent}/");
    let needle_leaf = format!("/{parent}\n");
    all_pids()
        .into_iter()
        .filter_map(|p| {
            let cg = fs::read_to_string(format!("/proc/{p}/cgroup")).ok()?;
            if (cg.contains(&needle) || cg.contains(&needle_leaf)) && alive(p, None) {
                Some((p, cmdline(p)))
            } else {
                None
            }
        })
        .collect()
}

/// `/proc/PID/cmdline` with spaces.
pub fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// kill(2): sends `sig` to `pid`.
pub fn send_signal(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// True on a pure cgroup v2 host (`/sys/fs/cgroup` is cgroup2).
pub fn cgroup_v2_unified() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// Directories that are (or would be) `<cgroup_parent>` in every mounted hierarchy.
pub fn cgroup_parent_dirs(parent: &str) -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if cgroup_v2_unified() {
        return vec![base.join(parent)];
    }
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(base) {
        for e in rd.flatten() {
            let p = e.path();
            // Skip the symlinks (cpu -> cpu,cpuacct) so each hierarchy is seen once.
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.push(p.join(parent));
            }
        }
    }
    out
}

/// Removes `<parent>` from every hierarchy where it is empty (`hako run` keeps its parent for
/// the next run; a test suite leaves nothing). One that is busy stays.
pub fn remove_empty_cgroup_parent(parent: &str) {
    for d in cgroup_parent_dirs(parent) {
        let _ = fs::remove_dir(d);
    }
}

/// Child cgroups (instance cgroups) under `<cgroup_parent>` in any hierarchy.
pub fn child_cgroups(parent: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in cgroup_parent_dirs(parent) {
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    out.push(e.path());
                }
            }
        }
    }
    out
}

/// A file of an instance cgroup: `/sys/fs/cgroup/<parent>/<instance>/<v2_file>` on pure v2,
/// `/sys/fs/cgroup/<v1_controller>/<parent>/<instance>/<v1_file>` on v1.
fn instance_cgroup_file(
    parent: &str,
    instance: &str,
    v2_file: &str,
    v1_controller: &str,
    v1_file: &str,
) -> PathBuf {
    if cgroup_v2_unified() {
        PathBuf::from(format!("/sys/fs/cgroup/{parent}/{instance}/{v2_file}"))
    } else {
        PathBuf::from(format!(
            "/sys/fs/cgroup/{v1_controller}/{parent}/{instance}/{v1_file}"
        ))
    }
}

fn read_trimmed(p: PathBuf) -> Option<String> {
    Some(fs::read_to_string(p).ok()?.trim().to_string())
}

/// The memory limit in bytes of an instance cgroup (`memory.limit_in_bytes` on v1,
/// `memory.max` on v2), if the file exists.
pub fn cgroup_memory_limit(parent: &str, instance: &str) -> Option<u64> {
    let p = instance_cgroup_file(
        parent,
        instance,
        "memory.max",
        "memory",
        "memory.limit_in_bytes",
    );
    read_trimmed(p)?.parse().ok()
}

/// The CPU limit in cores of an instance cgroup (`cpu.max` on v2, `cpu.cfs_quota_us` /
/// `cpu.cfs_period_us` on v1); None when unlimited or unreadable.
pub fn cgroup_cpu_limit(parent: &str, instance: &str) -> Option<f64> {
    if cgroup_v2_unified() {
        let s = read_trimmed(instance_cgroup_file(parent, instance, "cpu.max", "", ""))?;
        let mut it = s.split_whitespace();
        let q: f64 = it.next()?.parse().ok()?;
        let p: f64 = it.next()?.parse().ok()?;
        Some(q / p)
    } else {
        let file = |f: &str| instance_cgroup_file(parent, instance, "", "cpu", f);
        let q: i64 = read_trimmed(file("cpu.cfs_quota_us"))?.parse().ok()?;
        let p: i64 = read_trimmed(file("cpu.cfs_period_us"))?.parse().ok()?;
        (q > 0 && p > 0).then(|| q as f64 / p as f64)
    }
}

/// CPU weight of an instance cgroup on the v2 scale (1..=10000, kernel default 100): v2
/// `cpu.weight` as is; v1 `cpu.shares` converted back (`shares × 100 / 1024`, rounded), so the
/// default 1024 reads 100 and the minimum the supervisor writes for weight 1 (10) reads 1.
pub fn cgroup_cpu_weight(parent: &str, instance: &str) -> Option<u32> {
    if cgroup_v2_unified() {
        read_trimmed(instance_cgroup_file(parent, instance, "cpu.weight", "", ""))?
            .parse()
            .ok()
    } else {
        let f = instance_cgroup_file(parent, instance, "", "cpu", "cpu.shares");
        let shares: u64 = read_trimmed(f)?.parse().ok()?;
        u32::try_from((shares * 100 + 512) / 1024).ok()
    }
}

/// Cumulative CPU time of an instance cgroup in microseconds (`cpu.stat` `usage_usec` on v2,
/// `cpuacct.usage` on v1).
pub fn cgroup_cpu_usage_usec(parent: &str, instance: &str) -> Option<u64> {
    let p = instance_cgroup_file(parent, instance, "cpu.stat", "cpuacct", "cpuacct.usage");
    let s = read_trimmed(p)?;
    if cgroup_v2_unified() {
        s.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
    } else {
        let ns: u64 = s.parse().ok()?;
        Some(ns / 1000)
    }
}

/// Lines of /proc/self/mountinfo that mention any of `paths`.
pub fn mounts_mentioning(paths: &[&Path]) -> Vec<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter(|l| paths.iter().any(|p| l.contains(&*p.to_string_lossy())))
        .map(str::to_string)
        .collect()
}

/// Resident set size high-water mark (VmHWM) of a process, in KiB.
pub fn vm_hwm_kib(pid: i32) -> Option<u64> {
    status_field_kib(pid, "VmHWM:")
}

/// Current resident set size (VmRSS) of a process, in KiB.
pub fn vm_rss_kib(pid: i32) -> Option<u64> {
    status_field_kib(pid, "VmRSS:")
}

fn status_field_kib(pid: i32, field: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Like [`wait_for`], but panics with "timed out after ... waiting for `what`".
pub fn wait_until<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_for(timeout, f).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Polls `f` every 20 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// The hako process guard
// ---------------------------------------------------------------------------------------------

/// A running `hako serve --config FILE` with its own ports, state directory and cgroup parent.
///
/// On drop (and in [`Hako::stop`]) it sends SIGTERM, waits up to 20 s (then SIGKILL), and
/// checks that no process, cgroup or mount of the run remains; the log is printed when the
/// test failed. Holds the suite's serial lock for its whole life: create one at a time.
pub struct Hako {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub cgroup_parent: String,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    state_dir: PathBuf,
    rootfs_paths: Vec<PathBuf>,
    apps_yaml: String,
    /// Global options given to `hako` before `serve` (e.g. `--log-format json`).
    global_args: Vec<String>,
    child: Option<Child>,
    /// Pids seen during the run (hako's descendants, instance pids) with their start times.
    tracked: Mutex<Vec<(i32, Option<u64>, String)>>,
    /// Status of the last hako process that exited.
    last_exit: Option<ExitStatus>,
    /// Set when the test killed hako on purpose (the exit status is then not checked).
    killed_on_purpose: bool,
    cleanup_checked: bool,
    _dir: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

impl std::fmt::Debug for Hako {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hako")
            .field("listen", &self.listen)
            .field("admin", &self.admin)
            .field("cgroup_parent", &self.cgroup_parent)
            .finish()
    }
}

impl Hako {
    /// Writes a configuration with fresh ports, a fresh state_dir and a unique cgroup_parent
    /// followed by `apps_yaml` (the `apps:` list, starting with `apps:`), then starts hako and
    /// waits for /healthz. `rootfs` are the rootfs directories used (checked for leftover mounts).
    pub fn start(apps_yaml: &str, rootfs: &[&Rootfs]) -> Hako {
        Self::start_with(apps_yaml, rootfs, "")
    }

    /// Starts hako with one busybox httpd app (see [`httpd_app`]) on `rootfs`.
    pub fn start_httpd(name: &str, rootfs: &Rootfs, extra: &[&str]) -> Hako {
        Self::start(&apps(&[httpd_app(name, rootfs, extra)]), &[rootfs])
    }

    /// Like [`Hako::start`], with extra top-level YAML (e.g. a `governor:` section). With
    /// `extra_top_level` empty, the governor is disabled (`governor: {enabled: false}`) so that
    /// host pressure never changes the limits under test.
    pub fn start_with(apps_yaml: &str, rootfs: &[&Rootfs], extra_top_level: &str) -> Hako {
        Self::start_with_args(apps_yaml, rootfs, extra_top_level, &[])
    }

    /// Like [`Hako::start_with`], running `hako <global_args> serve --config FILE` (e.g.
    /// `&["--log-format", "json"]`).
    pub fn start_with_args(
        apps_yaml: &str,
        rootfs: &[&Rootfs],
        extra_top_level: &str,
        global_args: &[&str],
    ) -> Hako {
        let serial = serial();
        hako_bin();
        let n = RUN_COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = tempfile::Builder::new()
            .prefix("hako-e2e-run-")
            .tempdir()
            .expect("tempdir");
        let state_dir = dir.path().join("state");
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        while admin.port() == listen.port() {
            admin.set_port(free_port());
        }
        let cgroup_parent = format!("hako-e2e-{}-{n}", std::process::id());
        let extra = if extra_top_level.trim().is_empty() {
            "governor:\n  enabled: false\n".to_string()
        } else {
            format!("{}\n", extra_top_level.trim_end())
        };
        let config = format!(
            "listen: {listen}\nadmin: {admin}\nstate_dir: {}\ncgroup_parent: {cgroup_parent}\n{extra}{}\n",
            state_dir.display(),
            apps_yaml.trim_end()
        );
        let config_path = dir.path().join("hako.yaml");
        fs::write(&config_path, &config).expect("write config");
        let log_path = dir.path().join("hako.log");
        let mut h = Hako {
            listen,
            admin,
            cgroup_parent,
            config_path,
            log_path,
            state_dir,
            rootfs_paths: rootfs.iter().map(|r| r.path().to_path_buf()).collect(),
            apps_yaml: apps_yaml.to_string(),
            global_args: global_args.iter().map(|a| a.to_string()).collect(),
            child: None,
            tracked: Mutex::new(Vec::new()),
            last_exit: None,
            killed_on_purpose: false,
            cleanup_checked: false,
            _dir: dir,
            _serial: serial,
        };
        h.spawn();
        h
    }

    /// The YAML apps section this hako was started with.
    pub fn apps_yaml(&self) -> &str {
        &self.apps_yaml
    }

    /// Starts (or restarts) the hako process with the current config file; waits for /healthz.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "hako is already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open log");
        let err = log.try_clone().expect("clone log fd");
        let child = Command::new(hako_bin())
            .args(&self.global_args)
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env(
                "RUST_LOG",
                std::env::var("HAKO_E2E_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn hako");
        self.child = Some(child);
        self.killed_on_purpose = false;
        let admin = self.admin;
        let ok = wait_for(Duration::from_secs(15), || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    return Some(Err(st));
                }
            }
            match request(admin, &Request::get("admin", "/healthz")) {
                Ok(r) if r.status == 200 => Some(Ok(())),
                _ => None,
            }
        });
        match ok {
            Some(Ok(())) => {}
            Some(Err(st)) => {
                self.child = None;
                panic!(
                    "hako exited during start-up with {st}\n--- hako log ---\n{}",
                    self.log()
                );
            }
            None => panic!(
                "hako did not answer /healthz within 15 s\n--- hako log ---\n{}",
                self.log()
            ),
        }
        self.track();
    }

    /// The pid of the running hako process.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("hako is running").id() as i32
    }

    /// Everything hako wrote so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The proxy address, for requests.
    pub fn get(&self, host: &str, path: &str) -> Response {
        get(self.listen, host, path)
    }

    /// Scrapes /metrics.
    pub fn metrics(&self) -> Metrics {
        let r = get(self.admin, "admin", "/metrics");
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        Metrics::parse(&r.text())
    }

    /// GET /v1/instances (also records the instance pids for the leftover check).
    pub fn instances(&self) -> Vec<serde_json::Value> {
        let r = get(self.admin, "admin", "/v1/instances");
        assert_eq!(r.status, 200, "GET /v1/instances: {}", r.text());
        let v: Vec<serde_json::Value> = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("/v1/instances is not a JSON array: {e}: {}", r.text()));
        self.track_instances(&v);
        v
    }

    /// Records the pids of `/v1/instances` entries for the leftover check.
    fn track_instances(&self, instances: &[serde_json::Value]) {
        let mut t = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
        for i in instances {
            if let Some(pid) = i["pid"].as_i64() {
                let pid = pid as i32;
                if pid > 0 && !t.iter().any(|(p, _, _)| *p == pid) {
                    t.push((pid, start_time(pid), format!("instance {}", i["id"])));
                }
            }
        }
    }

    /// The one instance of `app`; panics unless there is exactly one.
    pub fn the_instance_of(&self, app: &str) -> serde_json::Value {
        let all = self.instances();
        let mine: Vec<_> = all.iter().filter(|i| i["app"] == app).cloned().collect();
        assert_eq!(
            mine.len(),
            1,
            "exactly one instance of {app} expected: {all:?}"
        );
        mine[0].clone()
    }

    /// Instances of `app`.
    pub fn instances_of(&self, app: &str) -> Vec<serde_json::Value> {
        self.instances()
            .into_iter()
            .filter(|i| i["app"] == app)
            .collect()
    }

    /// Records hako's current descendants (zygote, containers) for the leftover check.
    pub fn track(&self) {
        let Some(c) = self.child.as_ref() else { return };
        let root = c.id() as i32;
        let mut t = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
        for p in descendants(root) {
            if !t.iter().any(|(q, _, _)| *q == p) {
                t.push((p, start_time(p), cmdline(p)));
            }
        }
    }

    /// Pids recorded so far (hako's descendants and instance pids).
    pub fn tracked_pids(&self) -> Vec<i32> {
        self.tracked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(p, _, _)| *p)
            .collect()
    }

    /// Sends a signal to hako.
    pub fn signal(&self, sig: i32) {
        let pid = self.pid();
        // A pid we spawned and still own (not yet reaped).
        if let Err(e) = send_signal(pid, sig) {
            panic!("kill({pid}, {sig}) failed: {e}");
        }
    }

    /// SIGKILLs hako (a crash); its containers are left to the next start's orphan recovery.
    pub fn kill9(&mut self) {
        self.track();
        self.signal(libc::SIGKILL);
        let mut c = self.child.take().expect("running");
        let st = c.wait().expect("wait hako");
        self.last_exit = Some(st);
        self.killed_on_purpose = true;
    }

    /// SIGTERM, wait up to 20 s, SIGKILL if needed; returns hako's exit status.
    /// Does not check for leftovers (see [`Hako::assert_clean`]).
    pub fn stop(&mut self) -> ExitStatus {
        self.track();
        let _ = self.instances_quiet();
        let mut c = self.child.take().expect("hako is running");
        // Our own, not yet reaped child.
        let _ = send_signal(c.id() as i32, libc::SIGTERM);
        let end = Instant::now() + Duration::from_secs(20);
        let st = loop {
            if let Some(st) = c.try_wait().expect("wait hako") {
                break st;
            }
            if Instant::now() >= end {
                eprintln!("hako did not exit within 20 s of SIGTERM: SIGKILL");
                let _ = c.kill();
                let st = c.wait().expect("wait hako");
                self.last_exit = Some(st);
                return st;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.last_exit = Some(st);
        st
    }

    /// Waits up to `timeout` for hako to exit on its own (after a signal the test sent);
    /// SIGKILLs and panics if it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let end = Instant::now() + timeout;
        let c = self.child.as_mut().expect("hako is running");
        loop {
            if let Some(st) = c.try_wait().expect("wait hako") {
                self.child = None;
                self.last_exit = Some(st);
                return st;
            }
            if Instant::now() >= end {
                let _ = c.kill();
                let st = c.wait().expect("wait hako");
                self.child = None;
                self.last_exit = Some(st);
                self.killed_on_purpose = true;
                panic!(
                    "hako did not exit within {timeout:?} ({st})\n--- hako log ---\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn instances_quiet(&self) -> Option<()> {
        let r = request(self.admin, &Request::get("admin", "/v1/instances")).ok()?;
        let v: Vec<serde_json::Value> = serde_json::from_slice(&r.body).ok()?;
        self.track_instances(&v);
        Some(())
    }

    /// What is left of this run: live tracked processes, processes in its cgroups, instance
    /// cgroups, and mounts mentioning its state_dir or rootfs. Empty when clean.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        let own = self.child.as_ref().map(|c| c.id() as i32);
        for (pid, start, what) in self
            .tracked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if Some(*pid) != own && alive(*pid, *start) {
                // Descendants of a still-running hako are its zygote/instances: only count them
                // once hako is gone (callers check leftovers after stop).
                if own.is_some() && descendants(own.unwrap_or(0)).contains(pid) {
                    continue;
                }
                out.push(format!(
                    "process {pid} still alive ({what}: {})",
                    cmdline(*pid)
                ));
            }
        }
        for (pid, cmd) in processes_in_cgroup_parent(&self.cgroup_parent) {
            out.push(format!(
                "process {pid} still in cgroup parent {}: {cmd}",
                self.cgroup_parent
            ));
        }
        for cg in child_cgroups(&self.cgroup_parent) {
            out.push(format!("cgroup {} still exists", cg.display()));
        }
        let mut paths: Vec<&Path> = vec![self.state_dir.as_path()];
        paths.extend(self.rootfs_paths.iter().map(PathBuf::as_path));
        for m in mounts_mentioning(&paths) {
            out.push(format!("mount still present: {m}"));
        }
        out
    }

    /// Container processes of the running hako: descendants other than the zygote are not
    /// distinguished, so this returns every descendant pid with its command line.
    pub fn descendants(&self) -> Vec<(i32, String)> {
        descendants(self.pid())
            .into_iter()
            .map(|p| (p, cmdline(p)))
            .collect()
    }

    /// Waits up to 3 s for the run to be clean, then panics listing what is left.
    pub fn assert_clean(&mut self) {
        assert!(
            self.child.is_none(),
            "assert_clean needs hako stopped (call stop() first)"
        );
        let left = wait_for(Duration::from_secs(3), || {
            let l = self.leftovers();
            l.is_empty().then_some(())
        });
        self.cleanup_checked = true;
        if left.is_none() {
            let l = self.leftovers();
            self.force_cleanup();
            panic!(
                "hako left things behind:\n  {}\n--- hako log ---\n{}",
                l.join("\n  "),
                self.log()
            );
        }
    }

    /// Kills whatever is left of the run and removes its cgroups (never panics).
    fn force_cleanup(&self) {
        for (pid, start, _) in self
            .tracked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            // A pid whose start time was verified just now.
            if alive(*pid, *start) {
                let _ = send_signal(*pid, libc::SIGKILL);
            }
        }
        for (pid, _) in processes_in_cgroup_parent(&self.cgroup_parent) {
            // The process is in this run's private cgroup parent.
            let _ = send_signal(pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut paths: Vec<&Path> = vec![self.state_dir.as_path()];
        paths.extend(self.rootfs_paths.iter().map(PathBuf::as_path));
        for m in mounts_mentioning(&paths) {
            // mountinfo field 5 is the mount point.
            if let Some(mp) = m.split_whitespace().nth(4) {
                let _ = Command::new("umount").arg("-l").arg(mp).status();
            }
        }
        for cg in child_cgroups(&self.cgroup_parent) {
            let _ = fs::remove_dir(&cg);
        }
    }

    /// Removes this run's cgroup parent directories (and any instance cgroup left in them),
    /// retrying for up to 1 s; returns the directories that still exist.
    pub fn remove_cgroup_parent(&self) -> Vec<PathBuf> {
        let left = || {
            cgroup_parent_dirs(&self.cgroup_parent)
                .into_iter()
                .filter(|d| d.exists())
                .collect::<Vec<_>>()
        };
        let removed = wait_for(Duration::from_secs(1), || {
            for dir in left() {
                for cg in child_cgroups(&self.cgroup_parent) {
                    let _ = fs::remove_dir(&cg);
                }
                let _ = fs::remove_dir(&dir);
            }
            left().is_empty().then_some(())
        });
        if removed.is_some() {
            Vec::new()
        } else {
            left()
        }
    }

    /// The exit status of the last hako process that exited, if any.
    pub fn last_exit(&self) -> Option<ExitStatus> {
        self.last_exit
    }

    /// The state directory of this run.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Rewrites the configuration file with new `apps:` YAML (same ports, state and cgroups).
    pub fn rewrite_apps(&mut self, apps_yaml: &str) {
        let cur = fs::read_to_string(&self.config_path).expect("read config");
        let head = cur
            .split("\napps:")
            .next()
            .expect("config has apps")
            .to_string();
        fs::write(
            &self.config_path,
            format!("{head}\n{}\n", apps_yaml.trim_end()),
        )
        .expect("write config");
        self.apps_yaml = apps_yaml.to_string();
    }

    /// Overwrites the configuration file with arbitrary text.
    pub fn write_config_raw(&self, text: &str) {
        fs::write(&self.config_path, text).expect("write config");
    }
}

impl Drop for Hako {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let mut problems = Vec::new();
        if self.child.is_some() {
            let st = self.stop();
            if !st.success() && !self.killed_on_purpose {
                problems.push(format!(
                    "hako exited with {st} after SIGTERM (signal {:?})",
                    st.signal()
                ));
            }
        }
        if !self.cleanup_checked {
            let clean = wait_for(Duration::from_secs(3), || {
                self.leftovers().is_empty().then_some(())
            });
            if clean.is_none() {
                problems.extend(self.leftovers());
            }
        }
        self.force_cleanup();
        let _ = self.remove_cgroup_parent();
        if panicking || !problems.is_empty() {
            eprintln!(
                "--- hako log ({}) ---\n{}",
                self.log_path.display(),
                self.log()
            );
        }
        if !problems.is_empty() {
            let msg = format!("hako run was not clean:\n  {}", problems.join("\n  "));
            if panicking {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// Runs `f` on `n` threads at once (released together) and collects the results in order.
pub fn concurrently<T: Send + 'static>(
    n: usize,
    f: impl Fn(usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let f = std::sync::Arc::new(f);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let f = f.clone();
            let b = barrier.clone();
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    b.wait();
                    f(i)
                })
                .expect("spawn thread")
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("worker thread panicked"))
        .collect()
}

/// One app entry (YAML, indented for the `apps:` list) running busybox httpd on port 8080 with
/// `/www` as document root. `host` is `<name>.test`. `extra` are more keys of the app, one per
/// line (e.g. `"lifetime: {stop_timeout: 500ms}"`).
pub fn httpd_app(name: &str, rootfs: &Rootfs, extra: &[&str]) -> String {
    app_with_command(
        name,
        rootfs,
        r#"["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]"#,
        extra,
    )
}

/// One app entry with an explicit `command` (a YAML flow list).
pub fn app_with_command(name: &str, rootfs: &Rootfs, command: &str, extra: &[&str]) -> String {
    let mut s = format!(
        "  - name: {name}\n    hosts: [{name}.test]\n    rootfs: {}\n    command: {command}\n    port: 8080\n",
        rootfs.path().display()
    );
    for e in extra {
        s.push_str("    ");
        s.push_str(e);
        s.push('\n');
    }
    s
}

/// The `apps:` section of a configuration made of app entries (see [`httpd_app`]).
pub fn apps(entries: &[String]) -> String {
    format!("apps:\n{}", entries.concat())
}
