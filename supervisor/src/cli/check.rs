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
            let hibernating: Vec<&str> = config
                .apps
                .iter()
                .filter(|a| a.lifetime.hibernate_after.is_some())
                .map(|a| a.name.as_str())
                .collect();
            if !hibernating.is_empty() && !crate::container::hibernate::host_has_swap() {
                eprintln!(
                    "note: this host has no swap: {} (lifetime.hibernate_after) will be frozen when hibernated but keep their memory (docs/operations.md: compressed swap for hibernation)",
                    hibernating.join(", ")
                );
            }
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
