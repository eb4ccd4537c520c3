use std::time::Duration;

use super::file::read_lines;
use super::record::parse_line;
use super::*;

fn options(dir: &std::path::Path) -> LogOptions {
    LogOptions {
        dir: dir.join("logs"),
        journal_socket: dir.join("no-journal.sock"),
        ..LogOptions::new(dir)
    }
}

fn history_lines(h: History) -> Vec<String> {
    match h {
        History::Files(files) => {
            let mut out = Vec::new();
            read_lines(files, |l| {
                out.push(l.trim_end().to_owned());
                true
            });
            out
        }
        History::Records(rs) => rs
            .iter()
            .map(|r| record::to_line(r).trim_end().to_owned())
            .collect(),
    }
}

fn texts(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| parse_line(l).map_or_else(|| format!("unparsable: {l}"), |p| p.3.to_owned()))
        .collect()
}

fn wait_written(hub: &LogHub, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while hub.written() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {n} lines written",
            hub.written()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn lines_reach_the_file_with_instance_and_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = LogHub::start(options(dir.path())).expect("start");
    assert_eq!(hub.sink(), "file");
    let mut out = hub.sender("web", "web-1", Stream::Stdout);
    let mut err = hub.sender("web", "web-1", Stream::Stderr);
    out.send(vec!["hello".into(), "world".into()]);
    err.send(vec!["oops".into()]);
    wait_written(&hub, 3);
    let lines = history_lines(hub.snapshot("web", false).history);
    assert_eq!(texts(&lines), ["hello", "world", "oops"]);
    let parsed: Vec<_> = lines
        .iter()
        .map(|l| parse_line(l).expect("parse"))
        .collect();
    assert_eq!(parsed[0].1, "web-1");
    assert_eq!(parsed[0].2, Stream::Stdout);
    assert_eq!(parsed[2].2, Stream::Stderr);
    let on_disk = std::fs::read_to_string(dir.path().join("logs/web.log")).expect("read");
    assert!(on_disk.ends_with(" web-1 stderr oops\n"), "{on_disk}");
    // Another app has its own file; an app without lines has none.
    assert!(history_lines(hub.snapshot("api", false).history).is_empty());
}

#[test]
fn a_full_queue_drops_lines_and_says_how_many() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = LogOptions {
        queue_bytes: 10 * (100 + 96),
        ..options(dir.path())
    };
    let hub = LogHub::start(opts).expect("start");
    // Hold the writer: it blocks on the app's lock while we keep it.
    let entry = hub.app("web");
    let held = lock(&entry);
    let mut s = hub.sender("web", "web-2", Stream::Stdout);
    s.send(vec!["x".repeat(100)]);
    // The writer takes this first line and waits for the app's lock; the queue is empty again.
    std::thread::sleep(Duration::from_millis(50));
    let batch: Vec<String> = (0..50).map(|i| format!("{i:0>100}")).collect();
    s.send(batch);
    assert_eq!(hub.dropped(), 40, "ten fit the budget, forty are dropped");
    drop(held);
    wait_written(&hub, 11);
    s.send(vec!["after".into()]);
    wait_written(&hub, 13);
    let t = texts(&history_lines(hub.snapshot("web", false).history));
    assert_eq!(t.len(), 13, "{t:?}");
    assert_eq!(t[11], "hako: 40 lines dropped (log sink behind)");
    assert_eq!(t[12], "after");
}

#[test]
fn journald_gets_entries_and_the_ring_serves_readers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("journal.sock");
    let server = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind");
    let opts = LogOptions {
        journal_socket: sock_path,
        ring_bytes: 3 * (5 + 96),
        ..options(dir.path())
    };
    let hub = LogHub::start(opts).expect("start");
    assert_eq!(hub.sink(), "journald");
    let mut s = hub.sender("web", "web-9", Stream::Stderr);
    s.send((0..5).map(|i| format!("line{i}")).collect());
    wait_written(&hub, 5);
    let mut buf = vec![0u8; 65536];
    let n = server.recv(&mut buf).expect("recv");
    let dgram = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        dgram.contains("MESSAGE=line0\n") && dgram.contains("PRIORITY=3\n"),
        "{dgram}"
    );
    assert!(
        dgram.contains("HAKO_APP=web\n") && dgram.contains("HAKO_INSTANCE=web-9\n"),
        "{dgram}"
    );
    // The ring keeps the newest lines within its bound; nothing goes to files.
    let t = texts(&history_lines(hub.snapshot("web", false).history));
    assert_eq!(t, ["line2", "line3", "line4"]);
    assert!(!dir.path().join("logs/web.log").exists());
}

#[tokio::test]
async fn followers_get_new_lines_once_after_the_stored_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = LogHub::start(options(dir.path())).expect("start");
    let mut s = hub.sender("web", "web-1", Stream::Stdout);
    s.send(vec!["old".into()]);
    wait_written(&hub, 1);
    let snap = hub.snapshot("web", true);
    s.send(vec!["new".into()]);
    let mut live = snap.live.expect("following");
    let r = tokio::time::timeout(Duration::from_secs(5), live.recv())
        .await
        .expect("a new line in time")
        .expect("received");
    assert_eq!(r.text, "new");
    assert_eq!(texts(&history_lines(snap.history)), ["old"]);
}

#[tokio::test]
async fn a_pipe_is_drained_into_lines_and_its_tail_kept() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = LogHub::start(options(dir.path())).expect("start");
    let pipes = pipe::Pipes::new().expect("pipes");
    let (mut output, out_w, err_w) = pipes.attach(&hub, "web", "web-4").expect("attach");
    let mut out = std::fs::File::from(out_w);
    let mut err = std::fs::File::from(err_w);
    // More than a pipe's buffer: the reader keeps up, the writer never blocks for long.
    let big = "y".repeat(frame::MAX_LINE + 10);
    let writer = std::thread::spawn(move || {
        for i in 0..2000 {
            writeln!(out, "line {i}").expect("write");
        }
        writeln!(out, "{big}").expect("write");
        write!(out, "no newline at the end").expect("write");
        writeln!(err, "to stderr").expect("write");
    });
    writer.join().expect("writer");
    let tail = output.finish(Duration::from_secs(5)).await;
    assert!(tail.ends_with("to stderr"), "{tail}");
    wait_written(&hub, 2004);
    let lines = history_lines(hub.snapshot("web", false).history);
    let t = texts(&lines);
    assert_eq!(
        t.len(),
        2004,
        "2000 lines, a long line in two pieces, the last piece, stderr"
    );
    assert_eq!(t[0], "line 0");
    assert_eq!(t[1999], "line 1999");
    assert!(t.contains(&"no newline at the end".to_owned()));
    let err_line = lines
        .iter()
        .find(|l| l.ends_with("to stderr"))
        .expect("stderr line");
    assert_eq!(parse_line(err_line).expect("parse").2, Stream::Stderr);
}
