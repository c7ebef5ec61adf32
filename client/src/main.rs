//! `ferryd`: the device agent. Parses arguments, calls the library, prints the result.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry_client::Config;

#[derive(Parser)]
#[command(name = "ferryd", version, about = "Ferry's device agent")]
struct Cli {
    /// Configuration file (TOML); see the ferry-client crate docs for every key.
    #[arg(long, env = "FERRYD_CONFIG", default_value = "/etc/ferry/ferryd.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Checks the configuration and the trusted keys; prints the effective configuration.
    CheckConfig {
        #[arg(long)]
        json: bool,
    },
    /// Shows what this device runs now.
    Status {
        #[arg(long)]
        json: bool,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::CheckConfig { json } => {
            let keys = config.keys()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&config)?);
            } else {
                println!("{}", toml::to_string(&config)?);
                eprintln!("configuration ok; {} trusted key(s)", keys.len());
            }
        }
        Command::Status { json } => {
            let s = ferry_client::status::status(&config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                match &s.deployment {
                    Some(d) => println!("running {} (via {})", d.display(), s.current_link.display()),
                    None => println!("no deployment yet ({} does not exist)", s.current_link.display()),
                }
                println!("following branch {} on {}", s.branch, s.server);
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
