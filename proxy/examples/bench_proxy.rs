//! Runs `hako_proxy::serve` in front of one fixed upstream, for load tests (wrk).
//!
//! `bench_proxy --listen 127.0.0.1:8081 --upstream 127.0.0.1:8090 [--host NAME]... [--threads N]`
//! Every `--host` (default: 127.0.0.1 and localhost) routes to the upstream. Ctrl-C stops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hako_proxy::{
    AcquireFuture, Activator, Lease, ProxyOptions, Route, Routes, RoutesHandle, Upstream,
};

struct Fixed(SocketAddr);

impl Upstream for Fixed {
    fn id(&self) -> u64 {
        1
    }
    fn connect(&self) -> hako_proxy::ConnectFuture {
        let addr = self.0;
        Box::pin(tokio::net::TcpStream::connect(addr))
    }
}

struct Static(Arc<Fixed>);

impl Activator for Static {
    fn acquire(&self, _app: &str) -> AcquireFuture<'_> {
        let upstream: Arc<dyn Upstream> = self.0.clone();
        Box::pin(async move {
            Ok(Lease {
                upstream,
                generation: 0,
                guard: Box::new(()),
            })
        })
    }
    fn try_acquire(&self, _app: &str) -> Option<Lease> {
        Some(Lease {
            upstream: self.0.clone(),
            generation: 0,
            guard: Box::new(()),
        })
    }
    fn record(&self, _app: Option<&str>, _status: u16, _elapsed: Duration) {}
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen: SocketAddr = "127.0.0.1:8081".parse()?;
    let mut upstream: Option<SocketAddr> = None;
    let mut hosts = Vec::new();
    let mut threads = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => listen = val()?.parse()?,
            "--upstream" => upstream = Some(val()?.parse()?),
            "--host" => hosts.push(val()?),
            "--threads" => threads = val()?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let upstream = upstream.ok_or("--upstream ADDR is required")?;
    if hosts.is_empty() {
        hosts = vec!["127.0.0.1".into(), "localhost".into()];
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        eprintln!("bench_proxy: {listen} -> {upstream} (hosts {hosts:?}, {threads} threads)");
        let routes = Arc::new(RoutesHandle::new(Routes::new(vec![Route {
            app: "bench".into(),
            hosts,
            path_prefix: None,
            redirect_https: false,
        }])));
        let activator = Arc::new(Static(Arc::new(Fixed(upstream))));
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        let report = hako_proxy::serve(
            listener,
            routes,
            activator,
            ProxyOptions::default(),
            shutdown,
            Duration::from_secs(5),
        )
        .await?;
        eprintln!("bench_proxy: {report:?}");
        Ok(())
    })
}
