//! What the supervisor's fake-runtime tests share: an in-process "instance" (a loopback HTTP
//! server answering `200 ok`), an app with test defaults, and reading one metric.
#![allow(dead_code)] // each test binary uses its own subset

use std::net::SocketAddr;
use std::sync::Arc;

use hako_policies::{App, Rootfs};
use hako_supervisor::container::HostUpstream;
use hako_supervisor::instances::{BoxFuture, ExitInfo, Supervisor};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A loopback server that answers every connection with `200 ok`, as a booted app would: its
/// address and the task serving it (abort it to make the "app" stop listening).
pub async fn ok_server() -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    Ok((addr, task))
}

/// An app `name` serving `name.test`, `rootfs: host`, command `/bin/true`, defaults elsewhere.
pub fn app(name: &str) -> App {
    let mut a = App::with_defaults(name, Rootfs::Host, vec!["/bin/true".into()]);
    a.hosts = vec![format!("{name}.test")];
    a
}

/// The value of the first metric line starting with `needle` (0 when there is none).
pub fn metric(sup: &Supervisor, needle: &str) -> f64 {
    let text = sup.metrics().render();
    text.lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A fake instance's pid: 1000 + its id.
pub fn fake_pid(id: u64) -> i32 {
    1000 + id as i32
}

/// The upstream of a fake instance listening on `addr`.
pub fn upstream(id: u64, addr: SocketAddr) -> Arc<dyn hako_proxy::Upstream> {
    Arc::new(HostUpstream { id, addr })
}

/// The exit of a process killed by `signal`.
pub fn signaled(signal: i32) -> ExitInfo {
    ExitInfo {
        code: None,
        signal: Some(signal),
        oom: false,
    }
}

/// Resolves with the exit once one is sent on `exit_tx`.
pub fn wait_exit(exit_tx: &watch::Sender<Option<ExitInfo>>) -> BoxFuture<'static, ExitInfo> {
    let mut rx = exit_tx.subscribe();
    Box::pin(async move {
        let _ = rx.wait_for(Option::is_some).await;
        rx.borrow().expect("set")
    })
}
