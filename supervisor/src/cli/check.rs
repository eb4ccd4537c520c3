//! `hako check --config FILE`: validate a configuration, print a summary or every fault.
use std::process::ExitCode;

use hako_policies::{load_file, LoadError};

use super::CheckArgs;

pub(super) fn run(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let file = args.config.display();
    match load_file(&args.config) {
        Ok(config) => {
            let apps = config.apps.len();
            let hosts: usize = config.apps.iter().map(|a| a.hosts.len()).sum();
            println!(
                "{file}: ok ({apps} app{}, {hosts} host{}, listen {}, admin {})",
                plural(apps),
                plural(hosts),
                config.listen,
                config.admin
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(LoadError::Invalid(diagnostics)) => {
            for d in &diagnostics {
                eprintln!("{d}");
            }
            Ok(ExitCode::from(1))
        }
        Err(err @ LoadError::Io { .. }) => {
            eprintln!("{err}");
            Ok(ExitCode::from(1))
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
