//! hako proxy.
#![forbid(unsafe_code)]
