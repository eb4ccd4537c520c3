//! The `hako` binary: argument parsing and dispatch only; the logic lives in the library.
//!
//! `main` stays synchronous on purpose: `hako serve` starts the launcher's zygote (a
//! single-threaded forked helper) before any tokio runtime thread exists.
use std::process::ExitCode;

use clap::Parser;
use hako_supervisor::cli::{self, Cli};

fn main() -> ExitCode {
    // `hako __zygote ...`: a launcher zygote restarted by a running `hako serve` (hidden; see
    // `hako_launcher::zygote`). Before anything else: no thread may exist in a zygote.
    match hako_launcher::zygote_mode() {
        Ok(Some(zygote)) => {
            cli::init_logging(cli::inherited_log_format());
            zygote.run()
        }
        Ok(None) => {}
        Err(err) => {
            eprintln!("hako: {err}");
            return ExitCode::from(2);
        }
    }
    let args = Cli::parse();
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("hako: {err:#}");
            ExitCode::from(1)
        }
    }
}
