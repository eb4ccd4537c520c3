//! Processes of the scenario: CPU accounting from `/proc`, ports, commands, the guard that
//! stops a child, and the configurations and rootfs the runs start from.
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// A process tree to account CPU for: a pid and its direct children, but `exclude` (hako's
/// backend app is its child: its CPU is the app's, not the front's).
pub(super) fn tree_cpu_ticks(pid: u32, exclude: Option<u32>) -> u64 {
    let mut total = own_ticks(pid).unwrap_or(0);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if Some(p) == exclude {
                continue;
            }
            if stat_fields(p).is_some_and(|f| f.get(1).and_then(|s| s.parse().ok()) == Some(pid)) {
                total += own_ticks(p).unwrap_or(0);
            }
        }
    }
    total
}

/// Fields of /proc/PID/stat after the command name (field 3, state, is index 0).
pub(super) fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// utime + stime of one process (all its threads), in clock ticks.
pub(super) fn own_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    // utime is field 14, stime 15 (1-based): indexes 11 and 12 here.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub(super) fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as f64
}

pub(super) fn free_port() -> Result<u16, FrontError> {
    crate::scenarios::util::free_port().map_err(|e| FrontError::Setup(format!("free port: {e}")))
}

pub(super) fn write(path: &Path, text: &str) -> Result<(), FrontError> {
    std::fs::write(path, text).map_err(|source| FrontError::Io {
        path: path.display().to_string(),
        source,
    })
}

pub(super) fn run(cmd: &mut Command) -> Result<Output, FrontError> {
    let name = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| FrontError::Spawn { cmd: name, source })
}

pub(super) fn run_ok(cmd: &mut Command) -> Result<String, FrontError> {
    let name = format!("{cmd:?}");
    let out = run(cmd)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(FrontError::Failed {
            cmd: name,
            reason: format!("{}: {text}", out.status),
        })
    }
}

/// One HTTP/1.1 GET over a fresh connection; the status and body.
pub(super) fn http_get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let (status, body, _) = crate::scenarios::util::http_get(
        addr,
        host,
        path,
        Duration::from_secs(2),
        Duration::from_secs(30),
    )?;
    Ok((status, body))
}

pub(super) fn wait_for<T>(
    what: &str,
    secs: u64,
    f: impl FnMut() -> Option<T>,
) -> Result<T, FrontError> {
    crate::scenarios::util::poll_until(Duration::from_secs(secs), Duration::from_millis(50), f)
        .ok_or_else(|| FrontError::Setup(format!("{what}: not within {secs} s")))
}

/// The TCP port `pid` listens on (its socket inodes matched in /proc/PID/net/tcp).
pub(super) fn listening_port(pid: u32) -> Option<u16> {
    let mut inodes = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if let Ok(t) = std::fs::read_link(e.path()) {
            let t = t.to_string_lossy().into_owned();
            if let Some(i) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                inodes.push(i.to_string());
            }
        }
    }
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    tcp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // local_address, st == 0A (LISTEN), inode at index 9.
        (f.get(3) == Some(&"0A") && f.get(9).is_some_and(|i| inodes.iter().any(|x| x == i)))
            .then(|| f[1].split(':').nth(1))
            .flatten()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    })
}

/// Kills (SIGTERM, then SIGKILL after 10 s) and reaps a child on drop.
pub(super) struct Guard {
    name: &'static str,
    child: Option<Child>,
}

impl Guard {
    pub(super) fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub(super) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("front: {} did not stop on SIGTERM, killing it", self.name);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(super) fn spawn(
    name: &'static str,
    cmd: &mut Command,
    log: &Path,
) -> Result<Guard, FrontError> {
    let f = std::fs::File::create(log).map_err(|source| FrontError::Io {
        path: log.display().to_string(),
        source,
    })?;
    let e = f.try_clone().map_err(|source| FrontError::Io {
        path: log.display().to_string(),
        source,
    })?;
    let cmdline = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(e)
        .spawn()
        .map_err(|source| FrontError::Spawn {
            cmd: cmdline,
            source,
        })?;
    Ok(Guard {
        name,
        child: Some(child),
    })
}

/// The backend nginx (`return 200`), written by the app's shell into its own /tmp with the
/// `PORT` hako assigned.
pub(super) fn backend_script(nginx: &Path) -> String {
    format!(
        "mkdir -p /tmp/ngx && cat > /tmp/ngx/nginx.conf <<EOF\n\
daemon off; master_process off; worker_processes 1; pid /tmp/ngx/nginx.pid;\n\
error_log /tmp/ngx/error.log;\n\
events {{ worker_connections 4096; }}\n\
http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 300s;\n\
client_body_temp_path /tmp/ngx/b; proxy_temp_path /tmp/ngx/p; fastcgi_temp_path /tmp/ngx/f;\n\
uwsgi_temp_path /tmp/ngx/u; scgi_temp_path /tmp/ngx/s;\n\
server {{ listen 127.0.0.1:$PORT; location / {{ return 200 'ok\\n'; }} }} }}\n\
EOF\n\
exec {} -e /tmp/ngx/error.log -p /tmp/ngx -c /tmp/ngx/nginx.conf\n",
        nginx.display()
    )
}

/// The front nginx with `workers` workers.
pub(super) fn front_conf(dir: &Path, workers: usize, plain: u16, tls: u16, backend: u16) -> String {
    let d = dir.display();
    format!(
        "daemon off; user root; worker_processes {workers}; pid {d}/nginx-{workers}.pid;\n\
error_log {d}/nginx-{workers}.err;\n\
events {{ worker_connections 8192; }}\n\
http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 300s;\n\
client_body_temp_path {d}/b{workers}; proxy_temp_path {d}/p{workers};\n\
fastcgi_temp_path {d}/f{workers}; uwsgi_temp_path {d}/u{workers}; scgi_temp_path {d}/s{workers};\n\
upstream be {{ server 127.0.0.1:{backend}; keepalive 64; keepalive_requests 100000000; }}\n\
ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem; ssl_protocols TLSv1.2 TLSv1.3;\n\
server {{ listen 127.0.0.1:{plain}; listen 127.0.0.1:{tls} ssl http2;\n\
  location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
    proxy_set_header X-Forwarded-Proto $scheme;\n\
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }} }}\n"
    )
}

/// A busybox root filesystem serving /www/index.html (the cold apps).
pub(super) fn busybox_rootfs(root: &Path) -> Result<(), FrontError> {
    let io = |p: &Path, source| FrontError::Io {
        path: p.display().to_string(),
        source,
    };
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "www"] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| io(&root.join(d), e))?;
    }
    let bb = root.join("bin/busybox");
    if std::fs::hard_link("/usr/bin/busybox", &bb).is_err() {
        std::fs::copy("/usr/bin/busybox", &bb).map_err(|e| io(&bb, e))?;
    }
    for applet in ["sh", "httpd"] {
        let l = root.join("bin").join(applet);
        std::os::unix::fs::symlink("busybox", &l).map_err(|e| io(&l, e))?;
    }
    write(&root.join("www/index.html"), "cold\n")
}
