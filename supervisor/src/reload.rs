//! Configuration reloads, coalesced: however many are asked for at once (admin requests,
//! SIGHUP), at most one runs, and every request asked for while it runs waits for, and shares
//! the result of, the single next one. The file is read, parsed and applied on a blocking
//! thread, never on the proxy's async workers.
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// The blocking work of one reload: read, validate and apply the configuration; a summary or
/// the errors.
pub type ReloadFn = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// What one reload answered, shared by every request it served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Which reload this was: 1 for the first since start-up.
    pub generation: u64,
    /// The summary, or the errors (the previous configuration then stays in force).
    pub result: Result<String, String>,
}

#[derive(Debug, Default)]
struct State {
    /// Reloads started so far.
    started: u64,
    running: bool,
    /// A request arrived while a reload was running: run one more after it.
    again: bool,
}

/// Runs reloads one at a time, coalescing concurrent requests.
pub struct Reloader {
    work: ReloadFn,
    state: Mutex<State>,
    done: watch::Sender<Option<Outcome>>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader running `work` (on tokio's blocking pool).
    pub fn new(work: ReloadFn) -> Arc<Reloader> {
        Arc::new(Reloader {
            work,
            state: Mutex::new(State::default()),
            done: watch::channel(None).0,
        })
    }

    /// Reloads started so far.
    pub fn generation(&self) -> u64 {
        self.lock().started
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for a reload and waits for the first one that starts after this call: the one it
    /// starts itself, or, while one is running, the next one (shared with everyone else who
    /// asked meanwhile). The reload runs to its end even if the caller stops waiting.
    pub async fn reload(self: &Arc<Self>) -> Outcome {
        let mut rx = self.done.subscribe();
        let target = {
            let mut st = self.lock();
            if st.running {
                st.again = true;
                st.started + 1
            } else {
                st.running = true;
                st.started += 1;
                let generation = st.started;
                let me = self.clone();
                tokio::spawn(async move { me.run(generation).await });
                generation
            }
        };
        let seen = rx
            .wait_for(|o| o.as_ref().is_some_and(|o| o.generation >= target))
            .await
            .map(|o| o.clone());
        match seen {
            Ok(Some(o)) => o,
            // The sender lives in `self`, which we hold.
            _ => Outcome {
                generation: target,
                result: Err("reload abandoned".to_owned()),
            },
        }
    }

    async fn run(self: Arc<Self>, mut generation: u64) {
        loop {
            let work = self.work.clone();
            let result = match tokio::task::spawn_blocking(move || work()).await {
                Ok(r) => r,
                Err(e) => Err(format!("reload failed: {e}")),
            };
            match &result {
                Ok(summary) => {
                    tracing::info!(reload = generation, summary = %summary, "configuration reloaded")
                }
                Err(errors) => tracing::error!(
                    reload = generation,
                    errors = %errors,
                    "reload rejected; the previous configuration stays in force"
                ),
            }
            // Publish and decide on the next one under the lock, so that a request arriving
            // now either sees this result (it is not its target) or sets `again`.
            let mut st = self.lock();
            self.done.send_replace(Some(Outcome { generation, result }));
            if st.again {
                st.again = false;
                st.started += 1;
                generation = st.started;
            } else {
                st.running = false;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_the_next_single_reload() {
        let runs = Arc::new(AtomicU64::new(0));
        let work: ReloadFn = {
            let runs = runs.clone();
            Arc::new(move || {
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                std::thread::sleep(Duration::from_millis(50));
                Ok(format!("run {n}"))
            })
        };
        let r = Reloader::new(work);
        // One alone runs once.
        let o = r.reload().await;
        assert_eq!(
            o,
            Outcome {
                generation: 1,
                result: Ok("run 1".into())
            }
        );
        // 48 at once: the first starts a reload, the others share the next one.
        let tasks: Vec<_> = (0..48)
            .map(|_| {
                let r = r.clone();
                tokio::spawn(async move { r.reload().await })
            })
            .collect();
        let mut generations = Vec::new();
        for t in tasks {
            let o = t.await.unwrap();
            assert!(o.result.is_ok());
            generations.push(o.generation);
        }
        let total = runs.load(Ordering::SeqCst);
        assert!(total <= 3, "48 concurrent requests ran {total} reloads");
        assert!(generations.iter().all(|g| *g >= 2));
        // A request made after a reload finished gets a fresh one.
        let o = r.reload().await;
        assert_eq!(o.generation, total + 1);
        assert_eq!(runs.load(Ordering::SeqCst), total + 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_during_a_reload_waits_for_the_next_one() {
        let runs = Arc::new(AtomicU64::new(0));
        let work: ReloadFn = {
            let runs = runs.clone();
            Arc::new(move || {
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                std::thread::sleep(Duration::from_millis(100));
                if n == 1 {
                    Err("old file".into())
                } else {
                    Ok("new file".into())
                }
            })
        };
        let r = Reloader::new(work);
        let first = tokio::spawn({
            let r = r.clone();
            async move { r.reload().await }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Asked while the first runs (which read the file before it changed): it must not
        // get the first's answer.
        let second = r.reload().await;
        assert_eq!(second.generation, 2);
        assert_eq!(second.result, Ok("new file".into()));
        assert_eq!(first.await.unwrap().result, Err("old file".into()));
    }
}
