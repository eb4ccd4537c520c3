//! `hako logs APP [-f] [--since D] [--instance ID] [--admin ADDR]`: an app's instance output
//! from the admin endpoint (`GET /v1/apps/APP/logs`), printed as it arrives.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The app (its `name` in the configuration).
    #[arg(value_name = "APP")]
    pub app: String,
    /// Keep printing new lines as the app's instances write them (until interrupted).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only lines written in this last span, like `30s`, `10m`, `2h`.
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
    /// Only lines of this instance: its id as `hako ps` shows it (`web-3`) or its number (`3`).
    #[arg(long, value_name = "ID")]
    pub instance: Option<String>,
    /// Address of the admin endpoint.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// The request path for `args`.
fn path(args: &LogsArgs) -> String {
    let mut q = Vec::new();
    if let Some(s) = &args.since {
        q.push(format!("since={}", encode(s)));
    }
    if let Some(i) = &args.instance {
        q.push(format!("instance={}", encode(i)));
    }
    if args.follow {
        q.push("follow=1".to_owned());
    }
    let mut p = format!("/v1/apps/{}/logs", encode(&args.app));
    if !q.is_empty() {
        p.push('?');
        p.push_str(&q.join("&"));
    }
    p
}

pub fn run(args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let addr = args.admin;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).with_context(|| {
        format!("cannot reach hako's admin endpoint at {addr} (is `hako serve` running?)")
    })?;
    // Following waits for lines as long as it takes; a plain read gets everything at once.
    s.set_read_timeout((!args.follow).then_some(Duration::from_secs(30)))?;
    // HTTP/1.0: the body ends when the connection closes (no chunk framing to undo).
    write!(s, "GET {} HTTP/1.0\r\nHost: {addr}\r\n\r\n", path(args))?;
    let mut buf = vec![0u8; 64 << 10];
    let mut head = Vec::new();
    let body_start = loop {
        let n = s
            .read(&mut buf)
            .with_context(|| format!("read reply from {addr}"))?;
        anyhow::ensure!(n > 0, "{addr} closed the connection without an answer");
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        anyhow::ensure!(head.len() < 64 << 10, "malformed reply from {addr}");
    };
    let text = String::from_utf8_lossy(&head[..body_start]);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("malformed reply from {addr}"))?;
    let rest = head[body_start..].to_vec();
    if status != 200 {
        let mut body = rest;
        let _ = s.read_to_end(&mut body);
        eprintln!("hako logs: {}", String::from_utf8_lossy(&body).trim_end());
        return Ok(ExitCode::from(1));
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if out.write_all(&rest).and_then(|()| out.flush()).is_err() {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("read logs from {addr}")),
        };
        // A closed stdout (`| head`) ends the command quietly.
        if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_path_carries_the_options() {
        let mut a = LogsArgs {
            app: "web".into(),
            follow: false,
            since: None,
            instance: None,
            admin: "127.0.0.1:9090".parse().expect("addr"),
        };
        assert_eq!(path(&a), "/v1/apps/web/logs");
        a.follow = true;
        a.since = Some("10m".into());
        a.instance = Some("web 3".into());
        assert_eq!(
            path(&a),
            "/v1/apps/web/logs?since=10m&instance=web%203&follow=1"
        );
    }
}
