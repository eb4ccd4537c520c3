//! Instance cgroups created ahead of their boots.
//!
//! Creating a group and writing its limits is a boot's largest cost after the namespaces
//! (measured on this project's cgroup v1 test host: 0.3–0.5 ms per boot, see
//! `docs/benchmarks.md`). A [`CgroupPool`] keeps a few groups per app ready, built by a
//! background thread at low priority in the quiet after a boot, so that a boot only takes
//! one. Groups are named `<app>-<id>` like any instance group; the ids come from the caller's
//! instance-id counter, reserved when the group is made, so a group handed out by
//! [`CgroupPool::claim`] comes with the id its instance must use.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::cgroup::{CgroupError, CgroupLimits, CgroupRoot, InstanceCgroup};
use crate::quiet::{lower_builder_priority, QuietGate};

/// Ready groups of one app.
#[derive(Debug)]
struct AppGroups {
    /// The limits the groups were made with; a claim with other limits takes none of them.
    limits: CgroupLimits,
    /// Keep this many ready.
    target: usize,
    ready: Vec<(u64, InstanceCgroup)>,
    /// Creating groups for this app failed: do not retry in a loop (a claim re-arms it).
    failed: bool,
    /// When the app was first wanted or last claimed (booted), to release the least recently
    /// used app beyond the cap. A later `want` (a reload) does not refresh it.
    used: Instant,
}

#[derive(Debug, Default)]
struct State {
    apps: HashMap<String, AppGroups>,
    /// Groups to remove (forgotten apps, changed limits), removed by the builder thread.
    trash: Vec<InstanceCgroup>,
    /// Builds wait for quiet after claims (boots).
    quiet: QuietGate,
    /// Apps claimed for once outside the pool: a second claim brings them in (an app woken
    /// only once, as in a thousand apps each booted once, would otherwise cost two groups made
    /// and later removed per boot).
    seen: HashSet<String>,
    stop: bool,
}

impl State {
    /// The app with the fewest ready groups below its target, and how many it has.
    fn next_to_build(&self) -> Option<(String, CgroupLimits, usize)> {
        self.apps
            .iter()
            .filter(|(_, a)| !a.failed && a.ready.len() < a.target)
            .min_by_key(|(_, a)| a.ready.len())
            .map(|(k, a)| (k.clone(), a.limits.clone(), a.ready.len()))
    }
}

#[derive(Debug)]
struct Shared {
    root: Arc<CgroupRoot>,
    ids: Arc<AtomicU64>,
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Pre-created instance cgroups per app, kept topped up by a background thread. Dropping the
/// pool (or [`CgroupPool::shutdown`]) stops the thread and removes every group it holds.
#[derive(Debug)]
pub struct CgroupPool {
    shared: Arc<Shared>,
    per_app: usize,
    max_apps: usize,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Default of the `max_apps` argument of [`CgroupPool::start`]: each group costs the kernel
/// some memory (a memory cgroup holds per-CPU statistics), so an idle hako with many apps
/// keeps groups only for the apps booted most recently.
pub const DEFAULT_MAX_POOLED_APPS: usize = 64;

impl CgroupPool {
    /// Starts the builder thread. `ids` is the instance-id counter the groups' ids are taken
    /// from (shared with whoever numbers instances); `per_app` groups are kept ready for each
    /// app passed to [`CgroupPool::want`] or claimed, for at most `max_apps` apps (the least
    /// recently used one is released beyond that).
    pub fn start(
        root: Arc<CgroupRoot>,
        ids: Arc<AtomicU64>,
        per_app: usize,
        max_apps: usize,
    ) -> std::io::Result<CgroupPool> {
        let shared = Arc::new(Shared {
            root,
            ids,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("hako-cgroup-pool".into())
            .spawn(move || builder(&s))?;
        Ok(CgroupPool {
            shared,
            per_app,
            max_apps: max_apps.max(1),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Keeps groups with `limits` ready for `app`; groups made with other limits are removed.
    pub fn want(&self, app: &str, limits: &CgroupLimits) {
        let mut st = self.shared.lock();
        let State { apps, trash, .. } = &mut *st;
        let now = Instant::now();
        match apps.get_mut(app) {
            Some(a) if a.limits == *limits => {
                a.target = self.per_app;
                a.failed = false;
            }
            Some(a) => {
                trash.extend(a.ready.drain(..).map(|(_, cg)| cg));
                a.limits = limits.clone();
                a.target = self.per_app;
                a.failed = false;
            }
            None => {
                while apps.len() >= self.max_apps {
                    let Some(oldest) = apps
                        .iter()
                        .min_by_key(|(_, a)| a.used)
                        .map(|(k, _)| k.clone())
                    else {
                        break;
                    };
                    if let Some(a) = apps.remove(&oldest) {
                        tracing::debug!(app = %oldest, "pooled cgroups released: least recently used");
                        trash.extend(a.ready.into_iter().map(|(_, cg)| cg));
                    }
                }
                apps.insert(
                    app.to_owned(),
                    AppGroups {
                        limits: limits.clone(),
                        target: self.per_app,
                        ready: Vec::new(),
                        failed: false,
                        used: now,
                    },
                );
            }
        }
        drop(st);
        self.shared.wake.notify_one();
    }

    /// Stops keeping groups for `app` and removes those ready.
    pub fn forget(&self, app: &str) {
        let mut st = self.shared.lock();
        if let Some(a) = st.apps.remove(app) {
            st.trash.extend(a.ready.into_iter().map(|(_, cg)| cg));
        }
        st.seen.remove(app);
        drop(st);
        self.shared.wake.notify_one();
    }

    /// A ready group for `app` made with exactly `limits`, with the instance id it is named
    /// after (`<app>-<id>`); `None` if there is none. Never blocks on cgroupfs. Also marks the
    /// app as wanted (from its second claim on, if it was never wanted), so its next boots find
    /// groups ready.
    pub fn claim(&self, app: &str, limits: &CgroupLimits) -> Option<(u64, InstanceCgroup)> {
        let (got, want) = {
            let mut st = self.shared.lock();
            st.quiet.boot(Instant::now());
            match st.apps.get_mut(app) {
                Some(a) if a.limits == *limits => {
                    a.target = self.per_app;
                    a.failed = false;
                    a.used = Instant::now();
                    (a.ready.pop(), false)
                }
                // Wanted with other limits (a reload): switch to these.
                Some(_) => (None, true),
                None => (None, !st.seen.insert(app.to_owned())),
            }
        };
        if want {
            self.want(app, limits);
        } else {
            self.shared.wake.notify_one();
        }
        got
    }

    /// Groups ready per app.
    pub fn ready(&self) -> HashMap<String, usize> {
        let st = self.shared.lock();
        st.apps
            .iter()
            .map(|(k, a)| (k.clone(), a.ready.len()))
            .collect()
    }

    /// Stops the builder and removes every group the pool holds; later calls do nothing.
    pub fn shutdown(&self) {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(thread) = thread else { return };
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        let _ = thread.join();
        let mut st = self.shared.lock();
        let mut left: Vec<InstanceCgroup> = st.trash.drain(..).collect();
        for (_, a) in st.apps.drain() {
            left.extend(a.ready.into_iter().map(|(_, cg)| cg));
        }
        drop(st);
        for cg in left {
            remove(cg);
        }
    }
}

impl Drop for CgroupPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn remove(cg: InstanceCgroup) {
    let name = cg.name().to_owned();
    if let Err(error) = cg.remove() {
        tracing::warn!(cgroup = %name, %error, "cannot remove a pooled cgroup");
    }
}

/// Makes one group for `app`, named after a freshly reserved instance id.
fn build(
    shared: &Shared,
    app: &str,
    limits: &CgroupLimits,
) -> Result<(u64, InstanceCgroup), CgroupError> {
    let id = shared.ids.fetch_add(1, Ordering::Relaxed);
    let cg = shared.root.create(&format!("{app}-{id}"), limits)?;
    Ok((id, cg))
}

/// The builder thread: removes trash, then tops up the app with the fewest ready groups,
/// one group at a time, in the quiet between boots.
fn builder(shared: &Shared) {
    lower_builder_priority();
    let mut st = shared.lock();
    loop {
        if st.stop {
            return;
        }
        if !st.trash.is_empty() {
            let trash: Vec<InstanceCgroup> = st.trash.drain(..).collect();
            drop(st);
            for cg in trash {
                remove(cg);
            }
            st = shared.lock();
            continue;
        }
        let Some((app, limits, ready)) = st.next_to_build() else {
            st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            continue;
        };
        let wait = st.quiet.hold(Instant::now(), ready);
        if !wait.is_zero() {
            st = shared
                .wake
                .wait_timeout(st, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
            continue;
        }
        drop(st);
        let made = build(shared, &app, &limits);
        st = shared.lock();
        let stopping = st.stop;
        match made {
            Ok(group) => match st.apps.get_mut(&app) {
                // Still wanted with the same limits: keep it.
                Some(a) if a.limits == limits && !stopping => a.ready.push(group),
                _ => st.trash.push(group.1),
            },
            Err(error) => {
                tracing::warn!(app = %app, %error, "cannot pre-create a cgroup; boots create their own");
                if let Some(a) = st.apps.get_mut(&app) {
                    a.failed = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeTree;
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    /// A fake cgroup v2 tree with the controllers hako uses.
    fn fake_v2() -> (FakeTree, Arc<CgroupRoot>) {
        let t = FakeTree::v2("cpu memory pids");
        let root = t.root("hako");
        (t, Arc::new(root))
    }

    fn limits(mem: u64) -> CgroupLimits {
        CgroupLimits {
            cpu: Some(0.5),
            memory_max: Some(mem),
            memory_high: None,
            pids: Some(32),
        }
    }

    /// Waits for `f`; the bound only catches a hang (generous for a loaded machine).
    fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn dirs(parent: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(parent)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn claims_take_ready_groups_named_after_reserved_ids_and_shutdown_removes_the_rest() {
        let (dir, root) = fake_v2();
        let parent = dir.join("hako");
        let ids = Arc::new(AtomicU64::new(7));
        let pool = CgroupPool::start(root, ids.clone(), 2, 2).unwrap();
        assert!(
            pool.claim("web", &limits(64 << 20)).is_none(),
            "nothing is ready at first"
        );
        // A first claim of an app never wanted does not bring it in; a second one does.
        std::thread::sleep(Duration::from_millis(20));
        assert!(pool.ready().is_empty(), "{:?}", pool.ready());
        assert!(pool.claim("web", &limits(64 << 20)).is_none());
        eventually("two groups ready", || pool.ready().get("web") == Some(&2));
        assert_eq!(dirs(&parent), vec!["web-7", "web-8"]);
        assert_eq!(
            std::fs::read_to_string(parent.join("web-7/memory.max"))
                .unwrap()
                .trim(),
            (64u64 << 20).to_string()
        );

        let (id, cg) = pool.claim("web", &limits(64 << 20)).expect("a ready group");
        assert_eq!(cg.name(), format!("web-{id}"));
        assert!(id == 7 || id == 8);
        // The claimed group is the caller's now; the pool makes another one with a new id.
        eventually("topped up again", || pool.ready().get("web") == Some(&2));
        assert_eq!(ids.load(Ordering::Relaxed), 10);
        assert!(dirs(&parent).contains(&"web-9".to_owned()));

        // Other limits: no ready group fits, and the old ones are replaced.
        assert!(pool.claim("web", &limits(32 << 20)).is_none());
        eventually("groups with the new limits", || {
            pool.ready().get("web") == Some(&2) && dirs(&parent).len() == 3
        });
        let ready: Vec<String> = dirs(&parent)
            .into_iter()
            .filter(|d| *d != cg.name())
            .collect();
        for d in &ready {
            assert_eq!(
                std::fs::read_to_string(parent.join(d).join("memory.max"))
                    .unwrap()
                    .trim(),
                (32u64 << 20).to_string(),
                "{d}"
            );
        }

        pool.forget("web");
        eventually("forgotten groups removed", || {
            dirs(&parent) == vec![cg.name().to_owned()]
        });
        pool.want("api", &limits(16 << 20));
        eventually("api groups", || pool.ready().get("api") == Some(&2));
        // A third app beyond max_apps = 2 releases the least recently used one.
        pool.want("b", &limits(16 << 20));
        pool.want("c", &limits(16 << 20));
        eventually("api released for b and c", || {
            let r = pool.ready();
            !r.contains_key("api") && r.get("b") == Some(&2) && r.get("c") == Some(&2)
        });
        assert!(!dirs(&parent).iter().any(|d| d.starts_with("api-")));
        pool.shutdown();
        assert_eq!(
            dirs(&parent),
            vec![cg.name().to_owned()],
            "only the claimed group is left"
        );
        cg.remove().unwrap();
    }

    #[test]
    fn a_failing_tree_is_reported_not_retried_in_a_loop() {
        let (dir, root) = fake_v2();
        let parent = dir.join("hako");
        // A regular file where the group would go makes creation fail.
        std::fs::write(parent.join("bad-1"), "").unwrap();
        let ids = Arc::new(AtomicU64::new(1));
        let pool = CgroupPool::start(root, ids.clone(), 1, 4).unwrap();
        pool.want("bad", &limits(1 << 20));
        eventually("the failure noted", || {
            pool.shared.lock().apps.get("bad").is_some_and(|a| a.failed)
        });
        assert_eq!(pool.ready().get("bad"), Some(&0));
        // One attempt (id 1), then no retry until a claim or want re-arms it.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            ids.load(Ordering::Relaxed),
            2,
            "creation was retried on its own"
        );
        drop(pool);
    }
}
