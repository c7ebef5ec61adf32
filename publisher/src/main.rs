//! `ferry`: the CI and operator command. Parses arguments, sets up logging, calls the
//! library (`ferry_publisher::cli`, and `cli_fleet` for the fleet's administration), prints
//! the error chain and sets the exit code: 0, 1 when `fsck` finds problems, 2 on an error.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use ferry_publisher::cli::{self, print_json, ChannelsCommand, RepoCommand};

mod cli_fleet;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Ferry: signed, content-addressed releases for fleets of embedded Linux devices",
    long_about = "Ferry stores each release as a signed commit of content-defined chunks. \
                  `ferry` is the command for CI and operators: create a repository, commit \
                  build outputs, inspect, compare, check out and verify them."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Repo(RepoCommand),
    /// Fleet administration: tokens.
    #[command(subcommand)]
    Admin(cli_fleet::AdminCommand),
    /// Lists the fleet's devices: serial, hardware, state, channel, version, trial, last seen,
    /// last error.
    Devices(cli_fleet::DevicesArgs),
    /// Shows, accepts, revokes or removes one device.
    #[command(subcommand)]
    Device(cli_fleet::DeviceCommand),
    /// Per-device configuration: key/value pairs at the fleet, group and device levels.
    #[command(subcommand)]
    Config(cli_fleet::ConfigCommand),
    /// Staged rollouts: a new release to a share of the fleet first, halting by itself.
    #[command(subcommand)]
    Rollout(cli_fleet::RolloutCommand),
    /// The fleet's audit log: who did what, when.
    Audit(cli_fleet::AuditArgs),
    #[command(flatten)]
    Channels(ChannelsCommand),
    /// The fleet's own certificate authority: the CA devices pin, and the server
    /// certificates it issues for `ferry serve --tls-cert`.
    #[command(subcommand)]
    Ca(cli::ca::CaCommand),
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Repo(cmd) => return cli::run(cmd),
        Command::Channels(cmd) => cli::run_channels(cmd)?,
        Command::Admin(cmd) => cli_fleet::admin(cmd)?,
        Command::Devices(args) => cli_fleet::devices(args)?,
        Command::Device(cmd) => cli_fleet::device(cmd)?,
        Command::Audit(args) => cli_fleet::audit(args)?,
        Command::Config(cmd) => cli_fleet::config(cmd)?,
        Command::Rollout(cmd) => cli_fleet::rollout(cmd)?,
        Command::Ca(cmd) => cli::ca::run(cmd)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Logs on stderr (`FERRY_LOG` filters them, default `info`): at a terminal in colour, with
/// times; otherwise (a file, a pipe, the journal) without escapes; and under systemd, whose
/// journal stamps every line, without a time of its own.
fn init_logging() {
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let journal = stderr_is_the_journal();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    if journal {
        logs.without_time().init();
    } else {
        logs.init();
    }
}

/// Whether stderr is the journal's stream: `JOURNAL_STREAM` names its device and inode
/// (systemd sets it; a child whose stderr went elsewhere inherits it all the same).
fn stderr_is_the_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var("JOURNAL_STREAM").ok() else { return false };
    let Some((dev, ino)) = stream.split_once(':') else { return false };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else { return false };
    let Ok(meta) = std::fs::File::from(fd).metadata() else { return false };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every command and every argument of `ferry` says what it is for in `--help`.
    #[test]
    fn every_command_and_flag_is_explained() {
        use clap::CommandFactory;
        let missing = ferry_fixtures::cli_help::unexplained(&super::Cli::command());
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}
