//! Instance output: every instance's stdout and stderr reach hako through a pipe each, are
//! cut into lines and go to one sink — journald when it runs, else `state_dir/logs/APP.log`
//! with size-based rotation — and to the admin endpoint's readers (`hako logs`).
//!
//! Memory is bounded and the app is never blocked by hako:
//!
//! - each pipe is drained continuously by a tokio task ([`pipe`]); it holds one 64 KiB read
//!   buffer, at most one unfinished line ([`frame::MAX_LINE`] = 16 KiB; a longer line is split,
//!   not lost) and the 2 KiB tail used for the "last output" of a dead instance;
//! - lines wait for the sink in ONE queue of at most [`LogOptions::queue_bytes`] (default
//!   4 MiB); when the sink is behind, a reader drops lines instead of waiting, counts them, and
//!   writes `hako: N lines dropped (log sink behind)` once there is room again;
//! - a single writer thread empties the queue into the sink (a blocking write never stalls a
//!   tokio worker), flushing after each batch, so a line reaches the file within milliseconds;
//! - `follow` readers of an app share one broadcast ring of [`FOLLOW_CAPACITY`] lines; a reader
//!   that falls behind gets `hako: N lines dropped (reader too slow)` instead of holding memory;
//! - with journald, the admin endpoint serves from a ring of the last
//!   [`LogOptions::ring_bytes`] (default 1 MiB) per app (older lines: `journalctl`).
//!
//! Worst case over all this: 4 MiB queue + 1 MiB ring per app (journald only) + ~4 MiB per
//! followed app + ~100 KiB per running instance.
pub mod file;
pub mod frame;
pub mod journal;
pub mod pipe;
pub mod query;
pub mod record;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::broadcast;

use self::file::RotatingFile;
use self::journal::Journal;
use self::record::{now_us, weight, Record, Stream};

/// Lines a `follow` reader may fall behind before it loses some.
pub const FOLLOW_CAPACITY: usize = 256;

/// Where logs go and how much they may hold.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// The file sink's directory (`state_dir/logs`).
    pub dir: PathBuf,
    /// journald's native socket; used when it exists.
    pub journal_socket: PathBuf,
    /// Size at which `APP.log` is rotated.
    pub max_file_bytes: u64,
    /// Files kept per app, the live one included.
    pub max_files: usize,
    /// Bytes of lines waiting for the sink, over all instances.
    pub queue_bytes: usize,
    /// With journald: bytes of recent lines kept per app for the admin endpoint.
    pub ring_bytes: usize,
}

impl LogOptions {
    /// The defaults, files under `state_dir/logs`.
    pub fn new(state_dir: &std::path::Path) -> Self {
        LogOptions {
            dir: state_dir.join("logs"),
            journal_socket: PathBuf::from(journal::JOURNAL_SOCKET),
            max_file_bytes: file::DEFAULT_MAX_FILE_BYTES,
            max_files: file::DEFAULT_MAX_FILES,
            queue_bytes: 4 << 20,
            ring_bytes: 1 << 20,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Record>,
    bytes: usize,
    closed: bool,
}

#[derive(Debug, Default)]
struct AppInner {
    file: Option<RotatingFile>,
    /// journald only: the newest lines, at most `ring_bytes`.
    ring: VecDeque<Arc<Record>>,
    ring_bytes: usize,
    follow: Option<broadcast::Sender<Arc<Record>>>,
    /// The file could not be opened (logged once).
    broken: bool,
}

#[derive(Debug)]
struct Shared {
    opts: LogOptions,
    journal: Option<Journal>,
    queue: Mutex<Queue>,
    wake: Condvar,
    apps: Mutex<HashMap<String, Arc<Mutex<AppInner>>>>,
    dropped: AtomicU64,
    written: AtomicU64,
}

/// The log sink of one `hako serve`: readers submit lines, a writer thread stores them.
#[derive(Debug)]
pub struct LogHub {
    shared: Arc<Shared>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What a reader of an app's logs gets: the stored lines, then (when following) new ones.
#[derive(Debug)]
pub struct Snapshot {
    pub history: History,
    pub live: Option<broadcast::Receiver<Arc<Record>>>,
}

/// The stored part of a [`Snapshot`].
#[derive(Debug)]
pub enum History {
    /// The app's files, oldest first, each to be read up to its length.
    Files(Vec<(File, u64)>),
    /// journald: the app's recent lines kept in memory.
    Records(Vec<Arc<Record>>),
}

impl LogHub {
    /// Creates `opts.dir`, picks the sink and starts the writer thread.
    pub fn start(opts: LogOptions) -> std::io::Result<Arc<LogHub>> {
        std::fs::create_dir_all(&opts.dir)?;
        let journal = Journal::detect(&opts.journal_socket);
        match &journal {
            Some(j) => {
                tracing::info!(socket = %j.path().display(), "instance logs go to journald")
            }
            None => {
                tracing::info!(dir = %opts.dir.display(), max_file_bytes = opts.max_file_bytes, max_files = opts.max_files, "instance logs go to files")
            }
        }
        let shared = Arc::new(Shared {
            opts,
            journal,
            queue: Mutex::default(),
            wake: Condvar::new(),
            apps: Mutex::default(),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
        });
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("hako-logs".into())
                .spawn(move || write_loop(&shared))?
        };
        Ok(Arc::new(LogHub {
            shared,
            writer: Mutex::new(Some(writer)),
        }))
    }

    /// `journald` or `file`.
    pub fn sink(&self) -> &'static str {
        if self.shared.journal.is_some() {
            "journald"
        } else {
            "file"
        }
    }

    /// Lines dropped because the sink was behind, since start.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Lines handed to the sink, since start.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// A submitter for one stream of one instance.
    pub fn sender(self: &Arc<Self>, app: &str, instance: &str, stream: Stream) -> LineSender {
        LineSender {
            hub: self.clone(),
            app: app.into(),
            instance: instance.into(),
            stream,
            dropped: 0,
        }
    }

    fn app(&self, app: &str) -> Arc<Mutex<AppInner>> {
        lock(&self.shared.apps)
            .entry(app.to_owned())
            .or_default()
            .clone()
    }

    /// The app's stored lines and, with `follow`, a subscription to new ones, taken together
    /// (no line is missed or seen twice between them).
    pub fn snapshot(&self, app: &str, follow: bool) -> Snapshot {
        let entry = self.app(app);
        let mut a = lock(&entry);
        let live = follow.then(|| match &a.follow {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = broadcast::channel(FOLLOW_CAPACITY);
                a.follow = Some(tx);
                rx
            }
        });
        let history = if self.shared.journal.is_some() {
            History::Records(a.ring.iter().cloned().collect())
        } else {
            let files = match a.file.as_mut().map(RotatingFile::snapshot) {
                Some(Ok(files)) => files,
                _ => file::snapshot_idle(&self.shared.opts.dir, app, self.shared.opts.max_files),
            };
            History::Files(files)
        };
        Snapshot { history, live }
    }

    /// Stops the writer once the queue is empty (the lines still queued are written).
    pub fn shutdown(&self) {
        lock(&self.shared.queue).closed = true;
        self.shared.wake.notify_all();
        if let Some(w) = lock(&self.writer).take() {
            let _ = w.join();
        }
    }
}

impl Drop for LogHub {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Hands one stream's lines to the hub, never waiting: what does not fit the queue is dropped
/// and counted, and a marker says so once lines fit again.
#[derive(Debug)]
pub struct LineSender {
    hub: Arc<LogHub>,
    app: Arc<str>,
    instance: Arc<str>,
    stream: Stream,
    dropped: u64,
}

impl LineSender {
    fn record(&self, text: String, ts_us: u64) -> Record {
        Record {
            ts_us,
            app: self.app.clone(),
            instance: self.instance.clone(),
            stream: self.stream,
            text,
        }
    }

    /// Queues `lines` (read just now), as many as fit.
    pub fn send(&mut self, lines: Vec<String>) {
        if lines.is_empty() {
            return;
        }
        let ts = now_us();
        let shared = &self.hub.shared;
        let budget = shared.opts.queue_bytes;
        let mut q = lock(&shared.queue);
        if q.closed {
            return;
        }
        let before = q.items.len();
        if self.dropped > 0 {
            let marker = self.record(
                format!("hako: {} lines dropped (log sink behind)", self.dropped),
                ts,
            );
            if q.bytes + weight(&marker) <= budget {
                q.bytes += weight(&marker);
                q.items.push_back(marker);
                self.dropped = 0;
            }
        }
        let mut lost = 0u64;
        for text in lines {
            let r = self.record(text, ts);
            let w = weight(&r);
            // While an earlier drop is not reported yet, nothing newer goes in (the marker
            // comes first).
            if self.dropped == 0 && q.bytes + w <= budget {
                q.bytes += w;
                q.items.push_back(r);
            } else {
                self.dropped += 1;
                lost += 1;
            }
        }
        let pushed = q.items.len() > before;
        drop(q);
        if lost > 0 {
            shared.dropped.fetch_add(lost, Ordering::Relaxed);
        }
        if pushed {
            shared.wake.notify_one();
        }
    }
}

/// The writer thread: empties the queue into the sink, batch by batch.
fn write_loop(shared: &Shared) {
    let mut batch: VecDeque<Record> = VecDeque::new();
    let mut warned_journal = false;
    loop {
        {
            let mut q = lock(&shared.queue);
            while q.items.is_empty() && !q.closed {
                q = shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            if q.items.is_empty() && q.closed {
                break;
            }
            std::mem::swap(&mut batch, &mut q.items);
            q.bytes = 0;
        }
        let mut touched: Vec<Arc<Mutex<AppInner>>> = Vec::new();
        let mut last_app: Option<(Arc<str>, Arc<Mutex<AppInner>>)> = None;
        for r in batch.drain(..) {
            let entry = match &last_app {
                Some((name, e)) if *name == r.app => e.clone(),
                _ => {
                    let e = lock(&shared.apps)
                        .entry(r.app.to_string())
                        .or_default()
                        .clone();
                    if !touched.iter().any(|t| Arc::ptr_eq(t, &e)) {
                        touched.push(e.clone());
                    }
                    last_app = Some((r.app.clone(), e.clone()));
                    e
                }
            };
            let mut a = lock(&entry);
            let r = Arc::new(r);
            match &shared.journal {
                Some(j) => {
                    if let Err(e) = j.send(&r) {
                        if !warned_journal {
                            tracing::warn!(error = %e, "cannot write to journald; lines dropped");
                            warned_journal = true;
                        }
                        shared.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    a.ring_bytes += weight(&r);
                    a.ring.push_back(r.clone());
                    while a.ring_bytes > shared.opts.ring_bytes {
                        match a.ring.pop_front() {
                            Some(old) => a.ring_bytes -= weight(&old),
                            None => break,
                        }
                    }
                }
                None => write_file(shared, &mut a, &r),
            }
            shared.written.fetch_add(1, Ordering::Relaxed);
            if let Some(tx) = &a.follow {
                if tx.send(r).is_err() {
                    // Nobody follows any more.
                    a.follow = None;
                }
            }
        }
        for e in touched {
            if let Some(f) = lock(&e).file.as_mut() {
                let _ = f.flush();
            }
        }
    }
    for e in lock(&shared.apps).values() {
        if let Some(f) = lock(e).file.as_mut() {
            let _ = f.flush();
        }
    }
}

fn write_file(shared: &Shared, a: &mut AppInner, r: &Record) {
    if a.file.is_none() && !a.broken {
        match RotatingFile::open(
            &shared.opts.dir,
            &r.app,
            shared.opts.max_file_bytes,
            shared.opts.max_files,
        ) {
            Ok(f) => a.file = Some(f),
            Err(e) => {
                tracing::warn!(app = %r.app, dir = %shared.opts.dir.display(), error = %e, "cannot open the app's log file; its lines are dropped");
                a.broken = true;
            }
        }
    }
    match a.file.as_mut() {
        Some(f) => {
            if let Err(e) = f.write_line(&record::to_line(r)) {
                tracing::warn!(app = %r.app, error = %e, "cannot write the app's log file");
                shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        None => {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests;
