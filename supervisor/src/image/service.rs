//! Images for `hako serve`: pulled in the background when a configuration is loaded, awaited
//! by a boot whose image is still coming (like a cold boot), a failed pull retried with
//! backoff; and the instance roots (overlays) of image-based apps.
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hako_policies::{App, ImageSource, Registry, Rootfs, User};

use super::pull::{PullError, Puller, Quiet, ResolvedImage};
use super::registry::RegistrySettings;
use super::store::{Store, StoreError};

/// Longest wait between retries of a failed pull.
pub const MAX_PULL_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Default)]
enum Slot {
    #[default]
    Empty,
    Ready(Arc<ResolvedImage>),
    Failed {
        reason: String,
        attempts: u32,
        at: tokio::time::Instant,
    },
}

fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(9)).min(MAX_PULL_BACKOFF)
}

/// Pull counters for the metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct PullStats {
    pub ok: u64,
    pub failed: u64,
}

/// Hook called after each pull: (ok, seconds).
pub type PullObserver = Arc<dyn Fn(bool, f64) + Send + Sync>;

/// The images of one state directory.
pub struct Images {
    store: Store,
    puller: Mutex<Arc<Puller>>,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    wanted: Mutex<HashSet<String>>,
    observer: Mutex<Option<PullObserver>>,
}

fn settings(r: &[Registry]) -> Vec<RegistrySettings> {
    r.iter()
        .map(|r| RegistrySettings {
            host: r.host.clone(),
            insecure: r.insecure,
            ca_file: r.ca_file.clone(),
            username: r.username.clone(),
            password_file: r.password_file.clone(),
        })
        .collect()
}

/// The registries of a configuration, for the puller.
pub fn registries_of(cfg: &hako_policies::Config) -> Vec<RegistrySettings> {
    settings(&cfg.registries)
}

impl Images {
    /// The shared instance for `state_dir` (one per process and directory).
    pub fn for_state_dir(state_dir: &Path) -> Result<Arc<Images>, StoreError> {
        static ALL: OnceLock<Mutex<HashMap<PathBuf, Arc<Images>>>> = OnceLock::new();
        let mut all = ALL.get_or_init(Default::default).lock().expect("lock");
        if let Some(i) = all.get(state_dir) {
            return Ok(i.clone());
        }
        let store = Store::open(state_dir)?;
        launcher_clean(state_dir);
        let i = Arc::new(Images {
            puller: Mutex::new(Arc::new(Puller::new(store.clone(), Vec::new()))),
            store,
            slots: Mutex::new(HashMap::new()),
            wanted: Mutex::new(HashSet::new()),
            observer: Mutex::new(None),
        });
        all.insert(state_dir.to_owned(), i.clone());
        Ok(i)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn set_observer(&self, o: PullObserver) {
        *self.observer.lock().expect("lock") = Some(o);
    }

    fn slot(&self, reference: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        self.slots
            .lock()
            .expect("lock")
            .entry(reference.to_owned())
            .or_default()
            .clone()
    }

    /// A configuration was loaded: new registries, and the images of its apps pulled in the
    /// background (a failed pull retried with backoff while the image is still wanted).
    pub fn configure(self: &Arc<Self>, registries: &[Registry], apps: &[App]) {
        *self.puller.lock().expect("lock") =
            Arc::new(Puller::new(self.store.clone(), settings(registries)));
        let refs: HashSet<String> = apps
            .iter()
            .filter_map(|a| match &a.rootfs {
                Rootfs::Image(s) => Some(s.reference.to_string()),
                _ => None,
            })
            .collect();
        let new: Vec<String> = {
            let mut w = self.wanted.lock().expect("lock");
            let new = refs.difference(&w).cloned().collect();
            *w = refs;
            new
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for reference in new {
            let me = self.clone();
            rt.spawn(async move {
                loop {
                    if !me.wanted.lock().expect("lock").contains(&reference) {
                        return;
                    }
                    match me.get(&reference).await {
                        Ok(_) => return,
                        Err(e) => {
                            let wait = match &*me.slot(&reference).lock().await {
                                Slot::Failed { attempts, .. } => backoff(*attempts),
                                _ => backoff(0),
                            };
                            tracing::warn!(image = %reference, error = %e, retry_in_s = wait.as_secs(), "image pull failed");
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
            });
        }
    }

    /// The image, pulled if needed; waits for a pull in progress. A failed pull is tried
    /// again only once its backoff has passed (else its error is returned at once).
    pub async fn get(&self, reference: &str) -> Result<Arc<ResolvedImage>, String> {
        let slot = self.slot(reference);
        let mut s = slot.lock().await;
        match &*s {
            Slot::Ready(i) => return Ok(i.clone()),
            Slot::Failed {
                reason,
                attempts,
                at,
            } if at.elapsed() < backoff(*attempts) => return Err(reason.clone()),
            _ => {}
        }
        let r = hako_policies::ImageRef::parse(reference).map_err(|e| e.to_string())?;
        let puller = self.puller.lock().expect("lock").clone();
        let started = tokio::time::Instant::now();
        let res = match puller.cached(&r) {
            Ok(Some(img)) => Ok(img),
            _ => {
                let res = puller.pull(&r, Arc::new(Quiet)).await;
                let obs = self.observer.lock().expect("lock").clone();
                if let Some(o) = obs {
                    o(res.is_ok(), started.elapsed().as_secs_f64());
                }
                res
            }
        };
        match res {
            Ok(img) => {
                tracing::info!(image = reference, digest = %img.record.manifest_digest, layers = img.layers.len(), "image ready");
                let img = Arc::new(img);
                *s = Slot::Ready(img.clone());
                Ok(img)
            }
            Err(e) => {
                let reason = error_chain(&e);
                let attempts = match &*s {
                    Slot::Failed { attempts, .. } => attempts + 1,
                    _ => 0,
                };
                *s = Slot::Failed {
                    reason: reason.clone(),
                    attempts,
                    at: tokio::time::Instant::now(),
                };
                Err(reason)
            }
        }
    }
}

fn launcher_clean(state_dir: &Path) {
    hako_launcher::overlay::OverlayRoot::clean_stale(&state_dir.join("rootfs"));
}

/// An error and its causes on one line.
pub fn error_chain(e: &PullError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// The app as an image-based instance runs it: the image config's defaults where the app
/// wrote nothing (command, env per name, workdir, user, port).
pub fn effective_app(app: &App, src: &ImageSource, img: &ResolvedImage) -> Result<App, String> {
    let d = img.defaults().map_err(|e| e.to_string())?;
    let mut out = app.clone();
    if !src.command_set {
        if d.command.is_empty() {
            return Err(format!(
                "{}: the image has no Entrypoint or Cmd; give the app a `command`",
                src.reference
            ));
        }
        out.command = d.command;
    }
    let mut env: std::collections::BTreeMap<String, String> = d.env.into_iter().collect();
    for (k, v) in &app.env {
        env.insert(k.clone(), v.clone());
    }
    out.env = env;
    if !src.workdir_set {
        if let Some(w) = d.workdir {
            out.workdir = w;
        }
    }
    if !src.user_set {
        if let Some((uid, gid)) = d.user {
            out.user = User { uid, gid };
        }
    }
    if !src.port_set {
        if let Some(p) = d.port {
            out.port = p;
        }
    }
    Ok(out)
}
