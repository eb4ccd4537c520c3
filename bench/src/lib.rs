//! hako-bench.
#![forbid(unsafe_code)]
