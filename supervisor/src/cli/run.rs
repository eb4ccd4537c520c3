//! `hako run`: one container in the foreground.
use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Command to run.
    #[arg(last = true)]
    pub command: Vec<String>,
}

pub(super) fn run(_args: RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
