//! Semantic validation: raw configuration → [`Config`], collecting every fault with its position.
//!
//! By concern: this module holds the context ([`Ctx`]: where each fault is reported) and the
//! entry point; [`top`] the top-level keys and the faults across apps, [`governor`] the
//! governor section, [`app`] an app and its hosts, [`app_sections`] an app's limits,
//! lifetime, scaling, readiness, spike and capabilities, [`values`] checks of single values,
//! [`names`] app names, hostnames and rootfs paths.
mod app;
mod app_sections;
mod egress;
mod governor;
mod names;
mod top;
mod values;
use std::fmt::Display;
use std::path::Path;
use std::time::Duration;

use crate::error::Diagnostic;
use crate::index::{join, Index, Pos};
use crate::model::*;
use crate::raw::*;

mod extras;
mod image;

/// Longest accepted app name (it becomes a cgroup and a directory name, plus a suffix).
pub const MAX_APP_NAME_LEN: usize = 64;
/// Shortest accepted governor sampling interval.
pub const MIN_GOVERNOR_INTERVAL: Duration = Duration::from_millis(10);
/// Default `spike.cpu_above`.
pub const DEFAULT_SPIKE_CPU_ABOVE: f64 = 0.9;
/// Default `spike.for`.
pub const DEFAULT_SPIKE_FOR: Duration = Duration::from_millis(300);

pub(crate) struct Ctx<'a> {
    index: &'a Index,
    file: &'a Path,
    base_dir: &'a Path,
    diags: Vec<Diagnostic>,
    /// Per app, for each accepted host, its index in the file's `hosts` list.
    host_written: Vec<Vec<usize>>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(index: &'a Index, file: &'a Path, base_dir: &'a Path) -> Self {
        Ctx {
            index,
            file,
            base_dir,
            diags: Vec::new(),
            host_written: Vec::new(),
        }
    }

    fn push(&mut self, pos: Pos, path: &str, msg: impl Display) {
        let message = if path.is_empty() {
            msg.to_string()
        } else {
            format!("{path}: {msg}")
        };
        self.diags.push(Diagnostic {
            file: self.file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            message,
        });
    }

    /// A fault in the value at `path` (located at the value, or its nearest written ancestor).
    fn fault(&mut self, path: &str, msg: impl Display) {
        let pos = self.index.value(path);
        self.push(pos, path, msg);
    }

    /// A required key `key` is missing from the mapping at `parent`.
    fn missing(&mut self, parent: &str, key: &str, msg: impl Display) {
        let pos = self.index.value(parent);
        self.push(pos, &join(parent, key), format!("missing; {msg}"));
    }

    /// A fault about the key at `path` itself (duplicates, missing companions).
    fn fault_key(&mut self, path: &str, msg: impl Display) {
        let pos = self.index.key(path);
        self.push(pos, path, msg);
    }

    fn line_of(&self, path: &str) -> usize {
        self.index.value(path).line
    }

    /// Validates everything; `Err` holds every fault, sorted by position.
    pub(crate) fn run(mut self, raw: RawConfig) -> Result<Config, Vec<Diagnostic>> {
        for dup in self.index.duplicates.clone() {
            self.push(
                dup.at,
                &dup.path,
                format!(
                    "duplicate key (first written at line {} column {})",
                    dup.first.line, dup.first.column
                ),
            );
        }
        let config = self.config(raw);
        if self.diags.is_empty() {
            Ok(config)
        } else {
            let mut diags = self.diags;
            diags.sort_by_key(|d| (d.line, d.column));
            Err(diags)
        }
    }
}

pub(crate) use names::check_app_name;
