//! Helpers for hako end-to-end tests.
