//! hako launcher.
