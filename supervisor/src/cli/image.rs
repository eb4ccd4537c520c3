//! `hako image pull|ls|rm|prune`: the image store from the command line.
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::image::{ImageRef, PullProgress, Puller, Store};

#[derive(Debug, Args)]
pub struct ImageArgs {
    /// Configuration file: its `state_dir` holds the store, its `registries` say how to reach
    /// registries. Without it: the default state_dir, registries over TLS, anonymous.
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// The state directory (overrides the config's).
    #[arg(long, value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image into the store: docker://HOST[:PORT]/NAME[:TAG|@sha256:DIGEST],
    /// oci:PATH[:TAG] or docker-archive:PATH. Layers already in the store are not fetched
    /// again. On a terminal, one progress bar per layer.
    Pull {
        /// The image reference.
        reference: String,
    },
    /// List the pulled images: reference, manifest digest, layers, size on disk.
    Ls,
    /// Forget a pulled reference and remove the layers and blobs only it used.
    Rm {
        /// The image reference, as `hako image ls` prints it.
        reference: String,
    },
    /// Remove every layer and blob that no pulled reference uses (left by `rm`, by a pull
    /// that changed a tag, or by an interrupted pull).
    Prune,
}

struct Bars {
    multi: indicatif::MultiProgress,
    bars: Mutex<std::collections::HashMap<String, indicatif::ProgressBar>>,
}

fn short(d: &str) -> String {
    d.trim_start_matches("sha256:").chars().take(12).collect()
}

impl PullProgress for Bars {
    fn layer_start(&self, digest: &str, size: Option<u64>) {
        let bar = self
            .multi
            .add(indicatif::ProgressBar::new(size.unwrap_or(0)));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(short(digest));
        self.bars
            .lock()
            .expect("lock")
            .insert(digest.to_owned(), bar);
    }
    fn layer_bytes(&self, digest: &str, n: u64) {
        if let Some(b) = self.bars.lock().expect("lock").get(digest) {
            b.inc(n);
        }
    }
    fn layer_done(&self, digest: &str, cached: bool) {
        if cached {
            let _ = self
                .multi
                .println(format!("{} already in the store", short(digest)));
        } else if let Some(b) = self.bars.lock().expect("lock").get(digest) {
            b.finish();
        }
    }
}

struct Lines;
impl PullProgress for Lines {
    fn layer_done(&self, digest: &str, cached: bool) {
        eprintln!(
            "{} {}",
            short(digest),
            if cached {
                "already in the store"
            } else {
                "unpacked"
            }
        );
    }
}

fn human(bytes: u64) -> String {
    let mut v = bytes as f64;
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if v < 1024.0 {
            return format!("{v:.1} {unit}");
        }
        v /= 1024.0;
    }
    format!("{v:.1} TiB")
}

pub fn run(args: ImageArgs) -> anyhow::Result<ExitCode> {
    let (state_dir, registries) = match &args.config {
        Some(p) => {
            let cfg = hako_policies::load_file(p).map_err(|e| anyhow::anyhow!("{e}"))?;
            (cfg.state_dir.clone(), crate::image::registries_of(&cfg))
        }
        None => (PathBuf::from(hako_policies::DEFAULT_STATE_DIR), Vec::new()),
    };
    let state_dir = args.state_dir.unwrap_or(state_dir);
    let store = Store::open(&state_dir)
        .with_context(|| format!("open the image store in {}", state_dir.display()))?;
    match args.command {
        ImageCommand::Pull { reference } => {
            let r = ImageRef::parse(&reference)?;
            let puller = Puller::new(store, registries);
            let progress: Arc<dyn PullProgress> = if std::io::stderr().is_terminal() {
                Arc::new(Bars {
                    multi: indicatif::MultiProgress::new(),
                    bars: Mutex::new(Default::default()),
                })
            } else {
                Arc::new(Lines)
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let started = std::time::Instant::now();
            match rt.block_on(puller.pull(&r, progress)) {
                Ok(img) => {
                    println!(
                        "{} {} ({} layers) in {:.2} s",
                        img.record.reference,
                        img.record.manifest_digest,
                        img.record.layers.len(),
                        started.elapsed().as_secs_f64()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    let mut src = std::error::Error::source(&e);
                    while let Some(s) = src {
                        eprintln!("  caused by: {s}");
                        src = s.source();
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
        ImageCommand::Ls => {
            println!(
                "{:<50} {:<20} {:>6} {:>10}",
                "REFERENCE", "DIGEST", "LAYERS", "SIZE"
            );
            for r in store.list_refs()? {
                let size: u64 = r.layers.iter().map(|l| store.layer_bytes(&l.diff_id)).sum();
                println!(
                    "{:<50} {:<20} {:>6} {:>10}",
                    r.reference,
                    format!("sha256:{}", short(&r.manifest_digest)),
                    r.layers.len(),
                    human(size)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Rm { reference } => {
            let canonical = ImageRef::parse(&reference)
                .map(|r| r.to_string())
                .unwrap_or(reference);
            let _lock = store.lock_exclusive()?;
            if !store.remove_ref(&canonical)? {
                eprintln!("error: {canonical}: not in the store (see `hako image ls`)");
                return Ok(ExitCode::from(1));
            }
            let (n, bytes) = store.prune()?;
            println!(
                "removed {canonical}; freed {n} layers and blobs, {}",
                human(bytes)
            );
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Prune => {
            let _lock = store.lock_exclusive()?;
            let (n, bytes) = store.prune()?;
            println!("removed {n} layers and blobs, {}", human(bytes));
            Ok(ExitCode::SUCCESS)
        }
    }
}
