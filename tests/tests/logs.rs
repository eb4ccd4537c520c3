//! Instance logs end to end: a real `hako serve`, busybox apps printing to stdout and stderr,
//! `hako logs` (plain, --instance, --since, -f), the file sink's rotation under a flood, hako's
//! RSS while an app prints as fast as it can, and the "last output" of a dead instance.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hako_tests::*;

/// `hako logs ARGS --admin ADDR`, waited for: (exit code, stdout, stderr).
fn hako_logs(h: &Hako, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(hako_bin())
        .arg("logs")
        .args(args)
        .arg("--admin")
        .arg(h.admin.to_string())
        .output()
        .expect("run hako logs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A FIFO in the rootfs: the app copies what the test writes into it to its stdout.
fn mkfifo(path: &std::path::Path) -> std::fs::File {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0, "mkfifo");
    // Read-write: never blocks on open, and the app's reader never sees EOF while we hold it.
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open fifo")
}

/// `hako logs -f`, its stdout lines delivered with their arrival time.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl Follower {
    fn start(h: &Hako, app: &str) -> Follower {
        let mut child = Command::new(hako_bin())
            .args(["logs", app, "-f", "--admin", &h.admin.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn hako logs -f");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Follower { child, lines }
    }

    /// Waits for a line containing `needle`; its arrival time.
    fn wait_for(&self, needle: &str, timeout: Duration) -> Instant {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((t, l)) if l.contains(needle) => return t,
                Ok(_) => {}
                Err(_) => panic!("`hako logs -f` did not print `{needle}` within {timeout:?}"),
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn app_output_reaches_hako_logs_quickly_and_filters_work() {
    hako_tests::require_root!();
    let rootfs = Rootfs::new();
    rootfs.cgi("say", "echo \"cgi says $QUERY_STRING\" >&2\necho ok");
    let mut feed = mkfifo(&rootfs.path().join("feed"));
    let web = app_with_command(
        "web",
        &rootfs,
        r#"["/bin/sh", "-c", "httpd -f -p 8080 -h /www & echo started on stdout; echo started on stderr >&2; exec cat /feed"]"#,
        &[],
    );
    let crash = app_with_command(
        "crash",
        &rootfs,
        r#"["/bin/sh", "-c", "echo 'fatal: boom at start' >&2; sleep 0.3; exit 3"]"#,
        &[],
    );
    let mut h = Hako::start(&apps(&[web, crash]), &[&rootfs]);

    // Unknown app: 404, exit 1, the reason printed.
    let (code, _, err) = hako_logs(&h, &["nope"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no such app: nope"), "{err}");

    assert_eq!(h.get("web.test", "/cgi-bin/say?hello").status, 200);
    let id = h.instances_of("web")[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (code, out, err) = hako_logs(&h, &["web"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(" {id} stdout started on stdout\n")),
        "{out}"
    );
    assert!(
        out.contains(&format!(" {id} stderr started on stderr\n")),
        "{out}"
    );
    assert!(
        out.contains(&format!(" {id} stderr cgi says hello\n")),
        "{out}"
    );

    // Latency from the app's print to `hako logs -f`'s output.
    let f = Follower::start(&h, "web");
    f.wait_for("cgi says hello", Duration::from_secs(5));
    let mut lat = Vec::new();
    for i in 0..40 {
        let t0 = Instant::now();
        writeln!(feed, "latency probe {i}").expect("write feed");
        let t1 = f.wait_for(&format!("stdout latency probe {i}"), Duration::from_secs(2));
        lat.push(t1 - t0);
        std::thread::sleep(Duration::from_millis(20));
    }
    lat.sort();
    let (p50, p90, max) = (
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        lat[lat.len() - 1],
    );
    println!(
        "print -> `hako logs -f` latency over {} lines: p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms",
        lat.len(),
        p50.as_secs_f64() * 1e3,
        p90.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    assert!(p50 < Duration::from_millis(100), "p50 {p50:?}: {lat:?}");
    drop(f);

    // --instance: by id and by number; another instance's filter finds nothing.
    let num = id.rsplit('-').next().expect("number");
    for want in [id.as_str(), num] {
        let (code, out, _) = hako_logs(&h, &["web", "--instance", want]);
        assert_eq!(code, 0);
        assert!(out.contains("latency probe 39"), "--instance {want}: {out}");
    }
    let (_, out, _) = hako_logs(&h, &["web", "--instance", "web-999999"]);
    assert_eq!(out, "", "--instance of another instance");
    // --since: only the lines of the last span.
    std::thread::sleep(Duration::from_millis(1500));
    writeln!(feed, "recent line").expect("write feed");
    wait_until("the recent line", Duration::from_secs(5), || {
        hako_logs(&h, &["web"])
            .1
            .contains("recent line")
            .then_some(())
    });
    let (code, out, err) = hako_logs(&h, &["web", "--since", "1s"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("recent line") && !out.contains("latency probe"),
        "{out}"
    );
    let (code, _, err) = hako_logs(&h, &["web", "--since", "soon"]);
    assert_eq!(code, 1);
    assert!(err.contains("since=soon"), "{err}");

    // The stored file: state_dir/logs/web.log.
    let file = std::fs::read_to_string(h.state_dir().join("logs/web.log")).expect("web.log");
    assert!(file.contains(" stderr cgi says hello\n"), "{file}");

    // A dead instance's last output is still in hako's log, and its lines in `hako logs`.
    let r = h.get("crash.test", "/");
    assert!(r.status >= 500, "crash app answered {}", r.status);
    wait_until(
        "the last output in hako's log",
        Duration::from_secs(10),
        || {
            h.log()
                .lines()
                .any(|l| {
                    l.contains("last output of the instance") && l.contains("fatal: boom at start")
                })
                .then_some(())
        },
    );
    let (_, out, _) = hako_logs(&h, &["crash"]);
    assert!(out.contains(" stderr fatal: boom at start\n"), "{out}");

    drop(feed);
    h.stop();
    h.assert_clean();
}

#[test]
fn a_log_flood_neither_blocks_the_app_nor_grows_hako() {
    hako_tests::require_root!();
    let rootfs = Rootfs::new();
    rootfs.cgi("count", "cat /tmp/chunks 2>/dev/null || echo 0");
    // 20,000 lines of 101 bytes per chunk (2 MB), as fast as `yes` writes them; the chunk
    // count is the app's own measure of its progress.
    let flood = app_with_command(
        "flood",
        &rootfs,
        r#"["/bin/sh", "-c", "httpd -f -p 8080 -h /www & i=0; while :; do yes 'flood 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890' | head -n 20000; i=$((i+1)); echo $i > /tmp/chunks; done"]"#,
        &[],
    );
    let mut h = Hako::start(&apps(&[flood]), &[&rootfs]);
    let pid = h.pid();
    let rss_before = vm_rss_kib(pid).expect("rss");
    let t0 = Instant::now();
    assert_eq!(h.get("flood.test", "/cgi-bin/count").status, 200);
    let mut peak = rss_before;
    let mut slowest = Duration::ZERO;
    let mut answered = 0;
    while t0.elapsed() < Duration::from_secs(5) {
        let t = Instant::now();
        let r = request_timeout(
            h.listen,
            &Request::get("flood.test", "/cgi-bin/count"),
            Duration::from_secs(2),
        )
        .expect("the flooding app answers within 2 s");
        assert_eq!(r.status, 200);
        answered += 1;
        slowest = slowest.max(t.elapsed());
        peak = peak.max(vm_rss_kib(pid).expect("rss"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let elapsed = t0.elapsed();
    let chunks: u64 = h
        .get("flood.test", "/cgi-bin/count")
        .text()
        .trim()
        .parse()
        .expect("chunk count");
    let rss_after = vm_rss_kib(pid).expect("rss");
    let dir = h.state_dir().join("logs");
    let mut files: Vec<(String, u64)> = std::fs::read_dir(&dir)
        .expect("logs dir")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().expect("meta").len(),
            )
        })
        .collect();
    files.sort();
    let disk: u64 = files.iter().map(|f| f.1).sum();
    let dropped_markers = std::fs::read_to_string(dir.join("flood.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("lines dropped (log sink behind)"))
        .count();
    let mb = (chunks * 20_000 * 101) as f64 / 1e6;
    println!(
        "flood: the app wrote {chunks} chunks = {mb:.0} MB in {:.1} s ({:.1} MB/s); \
         {answered} requests answered meanwhile, slowest {:.1} ms",
        elapsed.as_secs_f64(),
        mb / elapsed.as_secs_f64(),
        slowest.as_secs_f64() * 1e3
    );
    println!(
        "hako RSS: before {rss_before} KiB, peak {peak} KiB, after {rss_after} KiB (growth at peak {} KiB)",
        peak.saturating_sub(rss_before)
    );
    println!("log files: {files:?} = {disk} bytes; drop markers in flood.log: {dropped_markers}");
    assert!(chunks >= 5, "the app made little progress: {chunks} chunks");
    // Bounded: the queue (4 MiB), buffers and allocator slack; far below what was printed.
    assert!(
        peak.saturating_sub(rss_before) < 64 * 1024,
        "hako grew by {} KiB",
        peak - rss_before
    );
    // Rotation keeps the disk bounded: 3 files of at most 10 MiB.
    assert!(disk <= 3 * (10 << 20), "{files:?}");
    if mb > 40.0 {
        assert!(
            files.iter().any(|f| f.0 == "flood.log.2"),
            "{mb} MB written but no rotation: {files:?}"
        );
    }
    h.stop();
    h.assert_clean();
}
