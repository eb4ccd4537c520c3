//! Image references; parsed in `hako-policies` so `hako check` reports a bad one at its line.
pub use hako_policies::{is_sha256_digest, ImageRef, ReferenceError, RegistryRef};
