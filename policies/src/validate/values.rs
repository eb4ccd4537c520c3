//! Checks of single values shared by every section: percentages, fractions, sizes, counts, ids.

use super::*;
use crate::units::{format_size, RawSize};

impl Ctx<'_> {
    pub(super) fn percentage(&mut self, path: &str, v: f64) {
        if !(v > 0.0 && v <= 100.0) {
            self.fault(path, format!("{v} is not a percentage in (0, 100]"));
        }
    }

    pub(super) fn fraction(&mut self, path: &str, v: f64) {
        if !(v > 0.0 && v <= 1.0) {
            self.fault(path, format!("{v} is not a fraction in (0, 1]"));
        }
    }

    pub(super) fn positive_f64(&mut self, path: &str, v: f64) {
        if v.is_nan() || v.is_infinite() {
            self.fault(path, format!("{v} is not a finite number"));
        } else if v <= 0.0 {
            self.fault(path, format!("must be greater than zero (got {v})"));
        }
    }

    /// A size that must be > 0; returns `default` when not written.
    pub(super) fn size(&mut self, path: &str, raw: Option<RawSize>, default: u64) -> u64 {
        match raw {
            None => default,
            Some(RawSize {
                negative: true,
                bytes,
            }) => {
                self.fault(
                    path,
                    format!("must be greater than zero (got -{})", format_size(bytes)),
                );
                default
            }
            Some(RawSize { bytes: 0, .. }) => {
                self.fault(path, "must be greater than zero");
                default
            }
            Some(RawSize { bytes, .. }) => bytes,
        }
    }

    /// An integer that must be ≥ `min` and fit in u32.
    pub(super) fn count(&mut self, path: &str, v: i64, min: i64) -> u32 {
        if v < min {
            let what = if min == 1 {
                "must be at least 1".to_owned()
            } else {
                format!("must be at least {min}")
            };
            self.fault(path, format!("{what} (got {v})"));
            return min.max(0) as u32;
        }
        match u32::try_from(v) {
            Ok(n) => n,
            Err(_) => {
                self.fault(path, format!("{v} is too large (maximum {})", u32::MAX));
                u32::MAX
            }
        }
    }

    pub(super) fn id(&mut self, path: &str, v: Option<i64>) -> u32 {
        let Some(v) = v else { return 0 };
        match u32::try_from(v) {
            Ok(n) if n != u32::MAX => n,
            _ => {
                self.fault(path, format!("{v} is not a valid id (0..=4294967294)"));
                0
            }
        }
    }
}
