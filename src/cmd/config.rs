//! `tandem config check|show`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use tandem_common::config::{self, Sources};

#[derive(Subcommand)]
pub(crate) enum ConfigCommand {
    /// Load the configuration and print every problem at once; exit 1 if there is one.
    Check,
    /// Print the configuration in effect, secrets hidden.
    Show,
}

pub(crate) fn config_command(cmd: &ConfigCommand, sources: &Sources) -> Result<ExitCode> {
    match (cmd, config::load(sources)) {
        (ConfigCommand::Check, Ok(_)) => {
            println!("configuration is valid");
            Ok(ExitCode::SUCCESS)
        }
        (ConfigCommand::Show, Ok(c)) => {
            print!("{}", c.to_redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
        (_, Err(e)) => {
            eprint!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
