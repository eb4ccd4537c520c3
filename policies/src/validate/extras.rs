//! Validation of an app's `volumes`, `env_file`, `hooks` and `limits.disk`.
use std::path::PathBuf;

use super::Ctx;
use crate::env_file::{read_env_file, EnvFile};
use crate::hooks::{self, Hooks, RawHooks};
use crate::index::join;
use crate::units::{format_size, RawSize};
use crate::volumes::{self, RawVolume, Volume};

/// Smallest accepted `limits.disk` (1Mi): below it no program can write a temporary file.
const MIN_DISK: u64 = 1 << 20;

impl Ctx<'_> {
    /// `volumes`, `env_file` and `hooks` of the app at `at`.
    pub(super) fn app_extras(
        &mut self,
        at: &str,
        raw_volumes: Option<Vec<RawVolume>>,
        raw_env_file: Option<String>,
        raw_hooks: Option<RawHooks>,
    ) -> (Vec<Volume>, Option<EnvFile>, Hooks) {
        let vols = match raw_volumes {
            None => Vec::new(),
            Some(list) => {
                let (vols, faults) =
                    volumes::validate(&join(at, "volumes"), list, &|s| self.resolve(s));
                for f in faults {
                    self.fault(&f.path, f.message);
                }
                vols
            }
        };
        let env_file = raw_env_file.and_then(|p| {
            let path = join(at, "env_file");
            if p.is_empty() {
                self.fault(&path, "must name a file");
                return None;
            }
            let resolved: PathBuf = self.resolve(&p);
            match read_env_file(&resolved) {
                Ok(f) => Some(f),
                Err(e) => {
                    // The message names the path, the mode or the line number: never a value.
                    self.fault(&path, e);
                    None
                }
            }
        });
        let hooks = match raw_hooks {
            None => Hooks::default(),
            Some(raw) => {
                let (hooks, faults) = hooks::validate(&join(at, "hooks"), raw);
                for f in faults {
                    self.fault(&f.path, f.message);
                }
                hooks
            }
        };
        (vols, env_file, hooks)
    }

    /// `limits.disk` at `limits_path`.
    pub(super) fn disk(&mut self, limits_path: &str, raw: Option<RawSize>, default: u64) -> u64 {
        let path = join(limits_path, "disk");
        let disk = self.size(&path, raw, default);
        if raw.is_some_and(|d| !d.negative && d.bytes > 0) && disk < MIN_DISK {
            self.fault(
                &path,
                format!(
                    "{} is below the minimum of 1Mi (a unit is probably missing, e.g. `{disk}Mi`)",
                    format_size(disk)
                ),
            );
        }
        disk
    }
}
