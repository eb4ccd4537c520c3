//! `POST /v1/reload` under a storm and from the wrong places: concurrent reloads of a large
//! configuration are coalesced (far fewer reloads run than were asked for) while a neighbour
//! app keeps answering; requests a web page could forge (no `X-Hako-Reload` header, a foreign
//! Host or Origin) are refused with 403 and reload nothing.
//!
//! Needs root; prints `skipped: needs root` otherwise.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hako_tests::*;

/// Status, headers (lowercased names) and body of a raw `POST /v1/reload` with `headers`
/// (each line ending in `\r\n`).
fn post_reload(admin: SocketAddr, headers: &str) -> (u16, String, String) {
    let req = format!(
        "POST /v1/reload HTTP/1.1\r\n{headers}Connection: close\r\nContent-Length: 0\r\n\r\n"
    );
    let raw = raw_exchange(admin, req.as_bytes()).expect("admin request");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("malformed reply: {text}"));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// The reload generation a reply names (`x-hako-reload: N`).
fn generation(head: &str) -> u64 {
    head.lines()
        .find_map(|l| l.strip_prefix("x-hako-reload: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no x-hako-reload header in {head}"))
}

fn reloads_in_log(h: &Hako) -> usize {
    h.log().matches("configuration reloaded").count()
}

#[test]
fn concurrent_reloads_of_a_large_config_are_coalesced_and_the_neighbour_keeps_serving() {
    require_root!();
    let rootfs = Rootfs::new();
    let mut entries = vec![httpd_app("web", &rootfs, &[])];
    entries.extend((0..200).map(|i| httpd_app(&format!("tenant{i}"), &rootfs, &[])));
    let h = Hako::start(&apps(&entries), &[&rootfs]);
    let r = h.get("web.test", "/");
    assert_eq!(r.status, 200, "{}", r.text());
    let host = format!("Host: {}\r\nX-Hako-Reload: 1\r\n", h.admin);

    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        let addr = h.listen;
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                match request(addr, &Request::get("web.test", "/")) {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => failed.push(format!("{} {}", r.status, r.text())),
                    Err(e) => failed.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (ok, failed)
        })
    };

    let before = reloads_in_log(&h);
    let admin = h.admin;
    let replies = concurrently(48, move |_| {
        post_reload(admin, &format!("Host: {admin}\r\nX-Hako-Reload: 1\r\n"))
    });
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = poller.join().expect("poller");

    let mut generations: Vec<u64> = Vec::new();
    for (status, head, body) in &replies {
        assert_eq!(*status, 200, "a reload answered {status}: {body}");
        assert!(body.contains("201 apps"), "{body}");
        generations.push(generation(head));
    }
    generations.sort_unstable();
    generations.dedup();
    let ran = wait_for(Duration::from_secs(5), || {
        let n = reloads_in_log(&h) - before;
        (n >= generations.len()).then_some(n)
    })
    .unwrap_or_else(|| panic!("fewer reloads logged than answered:\n{}", h.log()));
    println!(
        "figure: 48 concurrent reloads of 201 apps ran {ran} reloads; neighbour {ok} ok, {} failed",
        failed.len()
    );
    assert!(
        ran <= 8,
        "48 concurrent reloads ran {ran} reloads (generations {generations:?})"
    );
    assert!(ok > 0, "the neighbour was never polled");
    assert!(
        failed.is_empty(),
        "the neighbour failed {} of {} requests during the storm: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    let log = h.log();
    assert!(
        log.contains("admin reload request") && log.contains("peer=127.0.0.1:"),
        "admin reloads are logged with their peer:\n{log}"
    );

    // A reload asked for alone afterwards runs once more, and `hako reload` is accepted.
    let out = std::process::Command::new(hako_bin())
        .args(["reload", "--admin", &h.admin.to_string()])
        .output()
        .expect("run hako reload");
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("reloaded: 201 apps"),
        "{}",
        output_text(&out)
    );
    let (status, head, _) = post_reload(h.admin, &host);
    assert_eq!(status, 200);
    assert_eq!(
        generation(&head),
        generations.last().copied().unwrap_or(0) + 2
    );
}

#[test]
fn reload_requests_a_web_page_could_forge_are_refused() {
    require_root!();
    let rootfs = Rootfs::new();
    let h = Hako::start_httpd("web", &rootfs, &[]);
    let admin = h.admin;
    let port = admin.port();
    let before = reloads_in_log(&h);
    let refused = [
        // A cross-site form or fetch without preflight: text/plain, no custom header.
        format!("Host: {admin}\r\nContent-Type: text/plain\r\n"),
        format!("Host: {admin}\r\nOrigin: http://evil.example\r\nContent-Type: text/plain\r\n"),
        // DNS rebinding: the right header, but the attacker's host name.
        format!("Host: evil.example:{port}\r\nX-Hako-Reload: 1\r\n"),
        // The header, the right Host, a foreign Origin.
        format!("Host: {admin}\r\nX-Hako-Reload: 1\r\nOrigin: http://evil.example\r\n"),
        // No Host at all.
        "X-Hako-Reload: 1\r\n".to_owned(),
    ];
    for headers in &refused {
        let (status, _, body) = post_reload(admin, headers);
        assert_eq!(status, 403, "{headers:?} answered {status}: {body}");
    }
    // The admin's own names, the header or a JSON body, and its own Origin are accepted.
    for headers in [
        format!("Host: {admin}\r\nX-Hako-Reload: 1\r\n"),
        format!("Host: localhost:{port}\r\nContent-Type: application/json\r\n"),
        format!(
            "Host: 127.0.0.1:{port}\r\nX-Hako-Reload: 1\r\nOrigin: http://127.0.0.1:{port}\r\n"
        ),
    ] {
        let (status, _, body) = post_reload(admin, &headers);
        assert_eq!(status, 200, "{headers:?} answered {status}: {body}");
    }
    let ran = wait_for(Duration::from_secs(3), || {
        let n = reloads_in_log(&h) - before;
        (n >= 3).then_some(n)
    });
    assert_eq!(
        ran,
        Some(3),
        "only the three accepted requests reloaded:\n{}",
        h.log()
    );
    assert_eq!(
        h.log().matches("admin reload request refused").count(),
        refused.len(),
        "every refusal is logged:\n{}",
        h.log()
    );
}
