//! Hostile HTTP clients against a real `hako serve`: thousands of idle connections, slowloris,
//! one address hogging connections, broken framing, absolute-form targets and `CONNECT`.
//!
//! Needs root; prints `skipped: needs root` otherwise.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hako_tests::*;

const STOP_FAST: &str = "lifetime: {stop_timeout: 500ms}";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Lifts this process's open-files soft limit to the hard one (raising the hard one to
/// `want` when allowed); returns the soft limit in force.
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_max < want {
        let wider = libc::rlimit {
            rlim_cur: want,
            rlim_max: want,
        };
        // SAFETY: setrlimit reads the rlimit we own; failure (no CAP_SYS_RESOURCE) is fine.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wider) } == 0 {
            return want;
        }
    }
    let soft = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } == 0 {
        lim.rlim_max
    } else {
        lim.rlim_cur
    }
}

/// Whether the peer has closed `s` already (non-blocking look).
fn closed_now(s: &TcpStream) -> bool {
    s.set_nonblocking(true).expect("non-blocking");
    let mut b = [0u8; 256];
    let mut r = s;
    let closed = loop {
        match r.read(&mut b) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    let _ = s.set_nonblocking(false);
    closed
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Whether the peer closed `s` (EOF or reset) within `wait`.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).expect("read timeout");
    let mut b = [0u8; 256];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Sends `raw` and returns what came back until hako closed the connection (at most 10 s).
fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).expect("send");
    let mut out = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&b[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn statuses(answer: &str) -> Vec<u16> {
    answer
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| answer[i + 9..].get(..3)?.parse().ok())
        .collect()
}

fn requests_of(h: &Hako, app: &str) -> f64 {
    h.metrics().sum("hako_requests_total", &[("app", app)])
}

/// 10,000 connections that send nothing are held while a normal client keeps being served,
/// each request within 2 s; hako closes the idle ones after `client_header_timeout`.
#[test]
fn ten_thousand_idle_connections_do_not_starve_normal_requests() {
    require_root!();
    let soft = raise_nofile(40_000);
    // Room for the test's own sockets, files and threads besides the idle connections.
    let idle_target = 10_000usize.min(soft.saturating_sub(600) as usize);
    if idle_target < 10_000 {
        println!(
            "note: open-files limit {soft}: holding {idle_target} idle connections, not 10000"
        );
    }
    let rootfs = Rootfs::new();
    let h = Hako::start_with(
        &apps(&[httpd_app("web", &rootfs, &[STOP_FAST])]),
        &[&rootfs],
        "governor: {enabled: false}\nclient_header_timeout: 5s\nmax_connections_per_client: 40000",
    );
    assert_eq!(h.get("web.test", "/").status, 200, "warm-up boot");
    let addr = h.listen;

    let stop = Arc::new(AtomicBool::new(false));
    let normal = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut lat = Vec::new();
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) && lat.len() < 5_000 {
                let t = Instant::now();
                match request_timeout(addr, &Request::get("web.test", "/"), Duration::from_secs(2))
                {
                    Ok(r) if r.status == 200 => lat.push(t.elapsed()),
                    Ok(r) => failures.push(format!("status {}", r.status)),
                    Err(e) => failures.push(format!("{e} after {:?}", t.elapsed())),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (lat, failures)
        })
    };

    let t_open = Instant::now();
    let openers: Vec<_> = (0..4)
        .map(|k| {
            let n = idle_target / 4 + usize::from(k < idle_target % 4);
            std::thread::spawn(move || {
                let mut mine = Vec::with_capacity(n);
                let mut errors = 0;
                while mine.len() < n && t_open.elapsed() < Duration::from_secs(20) {
                    match TcpStream::connect(addr) {
                        Ok(s) => mine.push(s),
                        Err(_) => errors += 1,
                    }
                }
                (mine, errors)
            })
        })
        .collect();
    let mut idle = Vec::with_capacity(idle_target);
    let mut connect_errors = 0;
    for o in openers {
        let (mine, errors) = o.join().expect("opener");
        idle.extend(mine);
        connect_errors += errors;
    }
    let opened_in = t_open.elapsed();
    // A connect succeeds once the kernel queued it; hako may still be accepting the last ones.
    // Give it a moment, well inside the 5 s header timeout that will close them.
    let held_by_hako = wait_for(Duration::from_secs(3), || {
        let n = open_fds(h.pid());
        (n >= idle_target * 9 / 10).then_some(n)
    })
    .unwrap_or_else(|| open_fds(h.pid()));
    println!(
        "opened {} idle connections in {:.0} ms ({connect_errors} connect errors); hako holds {held_by_hako} descriptors",
        idle.len(),
        ms(opened_in)
    );
    assert_eq!(
        idle.len(),
        idle_target,
        "could not open the idle connections"
    );
    assert!(
        held_by_hako >= idle_target * 9 / 10,
        "hako holds {held_by_hako} descriptors; the idle connections were not held"
    );

    // Hold them until hako closes them (header timeout 5 s from accept), at most 15 s.
    let t_hold = Instant::now();
    let mut still_open = idle.len();
    while t_hold.elapsed() < Duration::from_secs(15) {
        still_open = idle.iter().filter(|s| !closed_now(s)).count();
        if still_open == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let closed_after = t_open.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (mut lat, failures) = normal.join().expect("normal client");
    drop(idle);

    assert_eq!(
        still_open, 0,
        "hako kept {still_open} silent connections open past client_header_timeout"
    );
    assert!(
        failures.is_empty(),
        "normal requests failed or exceeded 2 s during the hold: {failures:?}"
    );
    assert!(lat.len() >= 20, "only {} normal requests ran", lat.len());
    lat.sort();
    let p50 = lat[lat.len() / 2];
    let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)];
    let max = lat[lat.len() - 1];
    assert!(
        max < Duration::from_secs(2),
        "slowest normal request {max:?}"
    );
    println!(
        "figure: {} normal requests while {} idle connections were held: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; every idle connection closed by hako {:.1} s after the first was opened",
        lat.len(),
        idle_target,
        ms(p50),
        ms(p99),
        ms(max),
        closed_after.as_secs_f64()
    );
    let report = h.metrics();
    assert_eq!(
        report.sum("hako_requests_total", &[("app", "web"), ("code", "502")]),
        0.0
    );
}

/// A request head sent one byte per second is cut off after `client_header_timeout`.
#[test]
fn slowloris_is_closed_after_the_header_timeout() {
    require_root!();
    let rootfs = Rootfs::new();
    let h = Hako::start_with(
        &apps(&[httpd_app("web", &rootfs, &[STOP_FAST])]),
        &[&rootfs],
        "governor: {enabled: false}\nclient_header_timeout: 2s",
    );
    let mut s = TcpStream::connect(h.listen).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let head = b"GET / HTTP/1.1\r\nHost: web.test\r\nX-Slow: aaaaaaaaaaaaaaaa\r\n\r\n";
    let t = Instant::now();
    let mut closed_at = None;
    for (i, b) in head.iter().enumerate() {
        if s.write_all(&[*b]).is_err() {
            closed_at = Some((i, t.elapsed()));
            break;
        }
        // Waits a second for bytes from hako: an EOF means it closed the connection.
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {
                closed_at = Some((i, t.elapsed()));
                break;
            }
            Ok(_) => panic!("hako answered a head it had not received in full"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                closed_at = Some((i, t.elapsed()));
                break;
            }
        }
    }
    let (sent, after) = closed_at.expect("hako accepted a head trickled over a minute");
    println!(
        "slowloris closed after {sent} bytes, {:.1} s",
        after.as_secs_f64()
    );
    assert!(after >= Duration::from_millis(1500), "{after:?}");
    assert!(after < Duration::from_secs(6), "{after:?}");
    assert_eq!(requests_of(&h, "web"), 0.0, "nothing reached the app");
    // hako still serves.
    assert_eq!(h.get("web.test", "/").status, 200);
}

fn curl_from(source: &str, addr: SocketAddr, host: &str) -> String {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            "--interface",
            source,
            "-H",
            &format!("Host: {host}"),
            &format!("http://{addr}/"),
        ])
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One address holding `max_connections_per_client` connections gets further ones closed at
/// once, while another address (127.0.0.2) is still served.
#[test]
fn one_address_cannot_take_every_connection() {
    require_root!();
    let rootfs = Rootfs::new();
    let h = Hako::start_with(
        &apps(&[httpd_app("web", &rootfs, &[STOP_FAST])]),
        &[&rootfs],
        "governor: {enabled: false}\nmax_connections_per_client: 40",
    );
    assert_eq!(h.get("web.test", "/").status, 200, "warm-up boot");
    // The warm-up connection is closed; wait until hako has let go of it.
    std::thread::sleep(Duration::from_millis(200));
    let mut held: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(h.listen).expect("connect"))
        .collect();
    // Let hako accept them all before the extra ones arrive.
    std::thread::sleep(Duration::from_millis(300));
    let mut refused = 0;
    for _ in 0..60 {
        let mut s = TcpStream::connect(h.listen).expect("connect");
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n");
        if closed_within(&mut s, Duration::from_secs(2)) {
            refused += 1;
        }
    }
    assert_eq!(
        refused, 60,
        "connections over the limit must be closed at once"
    );
    assert_eq!(curl_from("127.0.0.2", h.listen, "web.test"), "200");
    assert_eq!(
        curl_from("127.0.0.1", h.listen, "web.test"),
        "000",
        "127.0.0.1 is at its limit"
    );
    // A held connection is served normally.
    let s = &mut held[0];
    s.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert_eq!(statuses(&answer), vec![200], "{answer}");
    drop(held);
    let mut served_again = false;
    for _ in 0..50 {
        if curl_from("127.0.0.1", h.listen, "web.test") == "200" {
            served_again = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        served_again,
        "127.0.0.1 is served again once its connections closed"
    );
    assert!(
        h.log().contains("client connection refused at accept"),
        "{}",
        h.log()
    );
}

/// Ambiguous or broken framing never reaches the app as a second request, and broken
/// chunked bodies are the client's fault (400), not the app's (502).
#[test]
fn broken_framing_is_refused_and_nothing_is_smuggled() {
    require_root!();
    let rootfs = Rootfs::new();
    let h = Hako::start_httpd("web", &rootfs, &[STOP_FAST]);
    assert_eq!(h.get("web.test", "/").status, 200, "warm-up boot");
    let pid_before = h.the_instance_of("web")["pid"].as_i64();
    let mut expected = requests_of(&h, "web");

    // Two different Content-Lengths: 400 from hako, nothing forwarded.
    let answer = exchange(
        h.listen,
        b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcdGET /smuggled HTTP/1.1\r\nHost: web.test\r\n\r\n",
    );
    assert_eq!(statuses(&answer), vec![400], "{answer}");
    assert_eq!(requests_of(&h, "web"), expected);

    // A bad chunk size: 400, recorded for the app, not a failure of the app.
    let answer = exchange(
        h.listen,
        b"POST /index.html HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nGET /smuggled HTTP/1.1\r\nHost: web.test\r\n\r\n",
    );
    assert_eq!(statuses(&answer), vec![400], "{answer}");
    assert!(answer.contains("invalid request body"), "{answer}");
    expected += 1.0;
    assert_eq!(requests_of(&h, "web"), expected);
    assert_eq!(
        h.metrics()
            .sum("hako_requests_total", &[("app", "web"), ("code", "502")]),
        0.0
    );

    // Content-Length with Transfer-Encoding: the chunked framing wins (RFC 9112 §6.3),
    // Content-Length is dropped, and the connection closes after the one response, so the
    // bytes after the chunked body are never read as a request.
    let answer = exchange(
        h.listen,
        b"POST /index.html HTTP/1.1\r\nHost: web.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web.test\r\n\r\n",
    );
    let got = statuses(&answer);
    assert_eq!(got.len(), 1, "one answer, no smuggled second: {answer}");
    if got[0] != 400 {
        expected += 1.0;
    }
    assert_eq!(
        requests_of(&h, "web"),
        expected,
        "the smuggled request was forwarded"
    );

    // Nothing blamed the instance: the same one still serves.
    assert_eq!(h.get("web.test", "/").status, 200);
    assert_eq!(h.the_instance_of("web")["pid"].as_i64(), pid_before);
    assert!(!h.log().contains("status=502"), "{}", h.log());
}

/// `GET http://web.test/... ` with another `Host` reaches web.test's app with `Host: web.test`;
/// `CONNECT` is 405 with `Allow` and boots nothing.
#[test]
fn absolute_form_and_connect() {
    require_root!();
    let rootfs = Rootfs::with_cgi("host", "echo \"host=$HTTP_HOST\"");
    let other = Rootfs::with_cgi("host", "echo \"other=$HTTP_HOST\"");
    let h = Hako::start(
        &apps(&[
            httpd_app("web", &rootfs, &[STOP_FAST]),
            httpd_app("other", &other, &[STOP_FAST]),
        ]),
        &[&rootfs, &other],
    );
    let answer = exchange(
        h.listen,
        b"CONNECT web.test:443 HTTP/1.1\r\nHost: web.test:443\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(statuses(&answer), vec![405], "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nallow: get, head, post"),
        "{answer}"
    );
    assert!(h.instances().is_empty(), "CONNECT booted an instance");

    let answer = exchange(
        h.listen,
        b"GET http://web.test/cgi-bin/host HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(statuses(&answer), vec![200], "{answer}");
    assert!(answer.contains("\nhost=web.test\n"), "{answer}");
    assert!(!answer.contains("other"), "{answer}");
    assert!(
        h.instances_of("other").is_empty(),
        "the Host header, not the authority, chose the app"
    );
}
