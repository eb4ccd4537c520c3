//! `hako check --config FILE`.
use std::process::ExitCode;

use super::CheckArgs;

pub(super) fn run(_args: &CheckArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
