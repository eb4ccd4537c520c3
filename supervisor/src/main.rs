//! The `hako` binary: argument parsing and dispatch only; the logic lives in the library.
//!
//! `main` stays synchronous on purpose: `hako serve` starts the launcher's zygote (a
//! single-threaded forked helper) before any tokio runtime thread exists.
use std::process::ExitCode;

use clap::Parser;
use hako_supervisor::cli::{self, Cli};

fn main() -> ExitCode {
    let args = Cli::parse();
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("hako: {err:#}");
            ExitCode::from(1)
        }
    }
}
