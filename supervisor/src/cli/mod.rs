//! Command line of the `hako` binary.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod check;
mod run;

/// hako: a FastContainer supervisor. Boots a container per app on the first request, holds the
/// request until the app is ready, forwards it, and stops the container when its time is up.
#[derive(Debug, Parser)]
#[command(name = "hako", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy, the supervisor and the admin endpoint (the built-in demo without --config).
    Serve(ServeArgs),
    /// Validate a configuration file; print every error as FILE:LINE:COLUMN: message.
    Check(CheckArgs),
    /// Run one container in the foreground; exit with its status (128+signal if killed).
    Run(run::RunArgs),
    /// List instances from a running hako's admin API.
    Ps(PsArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (YAML). Without it, a built-in demo configuration is served.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Configuration file (YAML) to validate.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Address of the admin endpoint.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub admin: String,
}

/// Runs the parsed command line and returns the process exit code.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check(args) => check::run(&args),
        Command::Run(args) => run::run(args),
        Command::Serve(_) | Command::Ps(_) => {
            anyhow::bail!("not implemented yet")
        }
    }
}
