//! Socket activation (`ContainerSpec::listen`, systemd's LISTEN_FDS): the app inherits a
//! listening socket as fd 3, so a connection made as soon as the spawn returns is queued by the
//! kernel — no readiness polling. Root only. Apps are `python3 -c` on the host rootfs view.
mod common;

use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use hako_launcher::{
    pidfd_signal, spawn_prepared, wait_pidfd, ContainerSpec, ExitStatusInfo, LaunchError,
    ListenSpec, NetworkMode, Output, PreparedSpec, RootfsSpec, SpawnRequest, Spawned, Zygote,
    ZygoteOptions,
};

macro_rules! root_only {
    ($name:expr) => {
        if !is_root($name) {
            return;
        }
    };
}

/// Accepts `argv[1]` connections on the inherited fd 3 (or reports that it has none) and
/// answers each with one line describing what the app saw: the activation environment, the
/// descriptors open above stdio, and its pid.
const APP: &str = r#"
import os, socket, sys
env_ok = (os.environ.get("LISTEN_FDS") == "1"
          and os.environ.get("LISTEN_PID") == str(os.getpid())
          and os.environ.get("LISTEN_FDNAMES") == "http")
fds = []
for fd in range(3, 256):
    try:
        os.fstat(fd)
        fds.append(fd)
    except OSError:
        pass
if "LISTEN_FDS" not in os.environ:
    print("no-activation fds=%s" % fds, flush=True)
    sys.exit(0)
s = socket.socket(fileno=3)
for i in range(int(sys.argv[1])):
    c, _ = s.accept()
    c.sendall(("hello %d env_ok=%s fds=%s pid=%d listening=%s\n" % (
        i, env_ok, fds, os.getpid(),
        s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))).encode())
    c.close()
"#;

fn app_spec(network: NetworkMode, port: Option<u16>, accepts: usize) -> ContainerSpec {
    let mut spec = ContainerSpec::new(
        RootfsSpec::Host,
        vec![
            "/usr/bin/python3".into(),
            "-c".into(),
            APP.into(),
            accepts.to_string(),
        ],
    );
    spec.network = network;
    spec.listen = port.map(ListenSpec::new);
    spec
}

/// A host port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `f` in a thread that has joined the network namespace of process `pid`.
fn in_netns_of<T: Send + 'static>(pid: i32, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// Connects once, with no retry, to 127.0.0.1:`port`.
fn connect_now(port: u16) -> std::io::Result<TcpStream> {
    TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

fn read_line(stream: TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line
}

/// Kills and reaps a container when the test ends, also on failure.
struct Reap(Option<Spawned>);

impl Reap {
    fn wait(mut self) -> ExitStatusInfo {
        let s = self.0.take().unwrap();
        wait_pidfd(s.pidfd.as_fd(), false).unwrap().unwrap()
    }
}

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            let _ = pidfd_signal(s.pidfd.as_raw_fd(), libc::SIGKILL);
            let _ = wait_pidfd(s.pidfd.as_fd(), false);
        }
    }
}

fn assert_served(line: &str, i: usize) {
    assert_eq!(
        line,
        format!("hello {i} env_ok=True fds=[3] pid=1 listening=1\n"),
        "what the app saw"
    );
}

/// Connects from inside the container's network namespace immediately after the spawn
/// returned (no retry, no sleep) and reads the app's answer.
fn check_isolated(spawned: Spawned, port: u16) {
    let pid = spawned.pid;
    let reap = Reap(Some(spawned));
    let line = in_netns_of(pid, move || read_line(connect_now(port).unwrap()));
    assert_served(&line, 0);
    assert_eq!(reap.wait(), ExitStatusInfo::Exited(0));
}

#[test]
fn isolated_cold_boot_inherits_a_listening_socket_on_fd_3() {
    let _one = one_at_a_time();
    root_only!("listen_fds isolated cold");
    let p = PreparedSpec::new(&app_spec(NetworkMode::Isolated, Some(8080), 1)).unwrap();
    let s = spawn_prepared(&p, None, &Output::Inherit).unwrap();
    check_isolated(s, 8080);
}

#[test]
fn isolated_boots_through_the_zygote_warm_and_cold() {
    let _one = one_at_a_time();
    root_only!("listen_fds zygote");
    for warm in [2, 0] {
        let zygote = Zygote::start_with(ZygoteOptions {
            warm_namespaces: warm,
            ..ZygoteOptions::default()
        })
        .unwrap();
        for i in 0..3 {
            // Give the helper thread time to build the warm namespaces (and their sockets).
            std::thread::sleep(Duration::from_millis(if warm > 0 { 200 } else { 0 }));
            let req = SpawnRequest {
                spec: app_spec(NetworkMode::Isolated, Some(8000 + i), 1),
                spec_key: format!("listen-{warm}-{i}"),
                cgroup: None,
                log_path: None,
                stderr_path: None,
            };
            // Same key twice: the second spawn of each key takes a warm namespace.
            let first = zygote.spawn(&req).unwrap();
            check_isolated(first, 8000 + i);
            std::thread::sleep(Duration::from_millis(if warm > 0 { 200 } else { 0 }));
            let second = zygote.spawn(&req).unwrap();
            check_isolated(second, 8000 + i);
        }
    }
}

#[test]
fn host_network_socket_is_bound_on_the_host_and_closed_with_the_app() {
    let _one = one_at_a_time();
    root_only!("listen_fds host");
    let zygote = Zygote::start().unwrap();
    for via_zygote in [false, true] {
        let port = free_port();
        let spec = app_spec(NetworkMode::Host, Some(port), 1);
        let spawned = if via_zygote {
            zygote
                .spawn(&SpawnRequest {
                    spec,
                    spec_key: format!("host-{port}"),
                    cgroup: None,
                    log_path: None,
                    stderr_path: None,
                })
                .unwrap()
        } else {
            spawn_prepared(&PreparedSpec::new(&spec).unwrap(), None, &Output::Inherit).unwrap()
        };
        let reap = Reap(Some(spawned));
        assert_served(&read_line(connect_now(port).unwrap()), 0);
        assert_eq!(reap.wait(), ExitStatusInfo::Exited(0));
        // Nobody (not the zygote, not us) kept a copy of the socket.
        let after = connect_now(port).map(|_| ()).unwrap_err();
        assert_eq!(after.kind(), ErrorKind::ConnectionRefused, "{after}");
    }
}

#[test]
fn port_in_use_on_the_host_is_an_error_naming_port_and_errno() {
    let _one = one_at_a_time();
    root_only!("listen_fds port in use");
    let taken = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let spec = app_spec(NetworkMode::Host, Some(port), 1);
    let want = LaunchError::Listen {
        port,
        step: "bind".into(),
        errno: libc::EADDRINUSE,
    };
    let err = spawn_prepared(&PreparedSpec::new(&spec).unwrap(), None, &Output::Null).unwrap_err();
    assert_eq!(err, want);
    assert!(
        err.to_string().contains(&format!("0.0.0.0:{port}"))
            && err.to_string().contains("EADDRINUSE"),
        "{err}"
    );
    let zygote = Zygote::start().unwrap();
    let err = zygote
        .spawn(&SpawnRequest {
            spec,
            spec_key: "taken".into(),
            cgroup: None,
            log_path: None,
            stderr_path: None,
        })
        .unwrap_err();
    assert_eq!(err, want);
    drop(taken);
}

#[test]
fn without_listen_no_descriptor_3_and_no_activation_environment() {
    let _one = one_at_a_time();
    root_only!("listen_fds none");
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("out.log");
    let zygote = Zygote::start().unwrap();
    for i in 0..2 {
        std::thread::sleep(Duration::from_millis(150 * i));
        let s = zygote
            .spawn(&SpawnRequest {
                spec: app_spec(NetworkMode::Isolated, None, 1),
                spec_key: "no-listen".into(),
                cgroup: None,
                log_path: Some(log.clone()),
                stderr_path: None,
            })
            .unwrap();
        assert_eq!(Reap(Some(s)).wait(), ExitStatusInfo::Exited(0));
    }
    let p = PreparedSpec::new(&app_spec(NetworkMode::Host, None, 1)).unwrap();
    let s = spawn_prepared(&p, None, &Output::Append(log.clone())).unwrap();
    assert_eq!(Reap(Some(s)).wait(), ExitStatusInfo::Exited(0));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "no-activation fds=[]\n".repeat(3)
    );
}

/// Waits until `path` contains `needle` (the app tells it is ready to be signalled).
fn wait_for(path: &Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(needle)
    {
        assert!(Instant::now() < deadline, "app never wrote {needle:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `(rx_queue)` of the listening socket on `port` in `/proc/PID/net/tcp` (the netns of PID):
/// for a listener, the number of connections waiting in its accept queue.
fn accept_queue(pid: i32, port: u16) -> Option<u32> {
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    tcp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let local = format!("00000000:{port:04X}");
        (f[1] == local && f[3] == "0A").then(|| u32::from_str_radix(&f[4][9..], 16).unwrap())
    })
}

#[test]
fn backlog_queues_a_burst_of_200_before_the_app_accepts() {
    let _one = one_at_a_time();
    root_only!("listen_fds backlog");
    const N: usize = 200;
    let app = format!(
        r#"
import signal, socket
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("waiting", flush=True)
signal.sigwait([signal.SIGUSR1])
s = socket.socket(fileno=3)
for i in range({N}):
    c, _ = s.accept()
    c.sendall(b"ok\n")
    c.close()
"#
    );
    let mut spec = ContainerSpec::new(
        RootfsSpec::Host,
        vec!["/usr/bin/python3".into(), "-c".into(), app],
    );
    spec.listen = Some(ListenSpec::new(8080));
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("out.log");
    let p = PreparedSpec::new(&spec).unwrap();
    let s = spawn_prepared(&p, None, &Output::Append(log.clone())).unwrap();
    let pid = s.pid;
    let reap = Reap(Some(s));
    wait_for(&log, "waiting\n");
    let (streams, took) = in_netns_of(pid, || {
        let t = Instant::now();
        let streams: Vec<TcpStream> = (0..N).map(|_| connect_now(8080).unwrap()).collect();
        (streams, t.elapsed())
    });
    eprintln!("{N} connects completed before the app accepted any, in {took:?}");
    assert_eq!(
        accept_queue(pid, 8080),
        Some(N as u32),
        "all {N} connections wait in the accept queue"
    );
    pidfd_signal(reap.0.as_ref().unwrap().pidfd.as_raw_fd(), libc::SIGUSR1).unwrap();
    for s in streams {
        assert_eq!(read_line(s), "ok\n");
    }
    assert_eq!(reap.wait(), ExitStatusInfo::Exited(0));
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Spawn → first byte, with the inherited socket (one connect, no polling) and without it
/// (the app binds its own socket; a connect probe backing off from 100 µs to 5 ms like the
/// supervisor's), interleaved run by run. Also spawn → probe success (when a supervisor would
/// call the instance ready; with listen_fds that is when the spawn returns). Run with
/// `--ignored --nocapture` (`RUNS=N`, default 50); prints p50s, asserts nothing about time.
#[test]
#[ignore = "measurement: cargo test -p hako-launcher --test listen_fds -- --ignored --nocapture"]
fn measure_spawn_to_first_byte() {
    let _one = one_at_a_time();
    root_only!("listen_fds measure");
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let own_socket = r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(16)
c, _ = s.accept()
c.sendall(b"x\n")
"#;
    let inherited = r#"
import socket
c, _ = socket.socket(fileno=3).accept()
c.sendall(b"x\n")
"#;
    let zygote = Zygote::start().unwrap();
    let variants: Vec<(&str, SpawnRequest)> = [
        ("listen_fds", inherited, true),
        ("connect-probe", own_socket, false),
    ]
    .into_iter()
    .map(|(name, app, listen)| {
        let mut spec = ContainerSpec::new(
            RootfsSpec::Host,
            // -I -S: no site packages, so the interpreter's own start-up weighs less.
            vec![
                "/usr/bin/python3".into(),
                "-I".into(),
                "-S".into(),
                "-c".into(),
                app.into(),
            ],
        );
        spec.listen = listen.then(|| ListenSpec::new(8080));
        let req = SpawnRequest {
            spec,
            spec_key: name.into(),
            cgroup: None,
            log_path: None,
            stderr_path: None,
        };
        (name, req)
    })
    .collect();
    // Per variant: spawn->first byte, spawn->connected, connect attempts.
    let mut results: Vec<(Vec<Duration>, Vec<Duration>, Vec<usize>)> =
        vec![Default::default(); variants.len()];
    for _ in 0..runs {
        for ((_, req), (total, ready, attempts)) in variants.iter().zip(results.iter_mut()) {
            std::thread::sleep(Duration::from_millis(30));
            let t = Instant::now();
            let s = zygote.spawn(req).unwrap();
            let pid = s.pid;
            let reap = Reap(Some(s));
            let (n, connected, line) = in_netns_of(pid, move || {
                let mut delay = Duration::from_micros(100);
                let mut n = 1;
                loop {
                    match connect_now(8080) {
                        Ok(c) => return (n, t.elapsed(), read_line(c)),
                        Err(_) => {
                            std::thread::sleep(delay);
                            delay = (delay * 2).min(Duration::from_millis(5));
                            n += 1;
                        }
                    }
                }
            });
            total.push(t.elapsed());
            ready.push(connected);
            attempts.push(n);
            assert_eq!(line, "x\n");
            assert_eq!(reap.wait(), ExitStatusInfo::Exited(0));
        }
    }
    for ((name, _), (total, ready, mut attempts)) in variants.iter().zip(results) {
        attempts.sort_unstable();
        println!(
            "{name:14} runs {runs}: spawn->first byte p50 {:?} (min {:?}); spawn->connected p50 {:?}; connect attempts p50 {} max {}",
            p50(total.clone()),
            total.iter().min().unwrap(),
            p50(ready),
            attempts[runs / 2],
            attempts[runs - 1]
        );
    }
}
