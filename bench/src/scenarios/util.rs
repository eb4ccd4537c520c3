//! Helpers the scenarios that start their own `hako serve` share: a free loopback port, one
//! HTTP/1.1 GET on a fresh connection, and polling for a condition with a deadline.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
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
