//! hako's configuration.
#![forbid(unsafe_code)]
