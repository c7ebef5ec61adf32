//! The `ferry` command's subcommands as a library: their arguments (clap), what they print
//! and their exit codes, so tests can reach them and `main.rs` stays a thin shell. One module
//! per group of commands; the work itself is in the library's other modules. Not here: the
//! fleet administration commands (`admin`, `devices`, `device`, `config`, `rollout`,
//! `audit`), which the binary's `cli_fleet` module defines beside these.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use ferry_store::Repository;

pub mod bundle;
pub mod ca;
pub mod channels;
pub mod export;
pub mod image;
mod output;
pub mod repo;
pub mod serve;

pub use output::{human, print_json, print_table, table, Bar};

/// The repository a command works on.
#[derive(Debug, Args)]
pub struct RepoArg {
    /// Repository path.
    #[arg(long, env = "FERRY_REPO", value_name = "PATH")]
    pub repo: PathBuf,
}

fn open_ro(repo: &RepoArg) -> Result<Repository> {
    Ok(Repository::open_read_only(&repo.repo)?)
}

/// The commands on a repository, in the order `ferry --help` lists them.
#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Creates a repository, recording its chunking parameters and compression level.
    ///
    /// Running it again on an existing repository with the same parameters does nothing;
    /// with other parameters it fails, naming both.
    Init(repo::InitArgs),
    /// Writes a new ed25519 signing key to FILE (mode 0600) and its public key to FILE.pub.
    Keygen(repo::KeygenArgs),
    /// Commits a directory tree to a branch, signed; prints the commit id as the last line.
    ///
    /// The commit id depends only on the tree's content and the given metadata (no mtimes,
    /// no clock): committing the same tree with the same metadata again returns the branch's
    /// current commit and writes nothing.
    Commit(repo::CommitArgs),
    /// Lists a branch's commits, newest first.
    Log(repo::LogArgs),
    /// Shows one commit. REV: a full id, a branch, or a unique prefix of 8+ hex digits.
    Show(repo::ShowArgs),
    /// Lists a directory (or shows one entry) of a commit.
    Ls(repo::LsArgs),
    /// Shows what changed from one commit to another and what a device on FROM downloads.
    Diff(repo::DiffArgs),
    /// Recreates a commit's tree in DIR (which must not exist or be empty).
    Checkout(repo::CheckoutArgs),
    /// Writes an offline bundle: everything a device needs to install a release without a
    /// network (`ferryd apply FILE`, the device's local page, or a USB stick).
    ///
    /// The bundle holds the key documents, the channel's signed document or the commit,
    /// and the trees and chunks a device on any --from commit lacks (all of them without
    /// --from). A device refuses a bundle that lacks what it needs, before writing anything.
    Bundle(bundle::BundleArgs),
    /// Writes the content of a device's SD-card image: a release already installed as the
    /// device agent keeps it, so first boot downloads nothing that release holds.
    ///
    /// The tree under --out gets the overlays, the device configuration, and the agent's
    /// state with the deployment of COMMIT, installed by `ferryd seed-image` (which checks
    /// every signature with the image's own keys). --raw also makes an ext4 image file of
    /// it (mkfs.ext4 -d). Boot it with `ferryd provision` as a unit that runs at boot.
    Image(image::ImageArgs),
    /// Writes the repository as static files to a directory or an S3 bucket, for a web
    /// server, CDN or object store to serve devices their bytes (`content_url` in
    /// ferryd.toml).
    ///
    /// Incremental: commits already exported are skipped, and a re-run writes nothing new.
    /// Content-addressed files (objects, packs of chunks, each commit's index of where its
    /// chunks lie) are written before the branch heads, channel and key documents that name
    /// them, so readers never see a head whose content is missing. Nothing is deleted.
    Export(export::ExportArgs),
    /// Serves the repository over HTTP (API v1, see docs/api.md) until SIGTERM or Ctrl-C.
    ///
    /// Prints `listening on http://ADDR` once bound. `ferry commit` may keep writing to the
    /// repository meanwhile; new branch heads are served as soon as they are committed.
    Serve(serve::ServeArgs),
    /// Verifies every chunk, object, branch and signature; exits 1 naming what is broken.
    Fsck(repo::FsckArgs),
    /// Adds a signature by another key to a stored commit (e.g. after rotating commit keys,
    /// so released commits stay valid for devices that trust only the new key).
    Sign(repo::SignArgs),
}

/// The commands on keys and channels, in the order `ferry --help` lists them.
#[derive(Debug, Subcommand)]
pub enum ChannelsCommand {
    /// Manages the key document: root keys, and the keys that may sign commits and channels.
    #[command(subcommand)]
    Keys(channels::KeysCommand),
    /// Points a channel at a commit (or at another channel's targets), signed.
    ///
    /// Every target must be a signed commit built for its hardware revision. A commit the
    /// channel's upstream (the channel it was first promoted --from) never had needs
    /// --force; moving a revision to an older version needs --rollback.
    Promote(channels::PromoteArgs),
    /// Shows, lists and refreshes channel documents.
    #[command(subcommand)]
    Channel(channels::ChannelCommand),
}

/// Runs one repository command; its exit code is 0, or 1 when `fsck` finds problems.
pub fn run(command: RepoCommand) -> Result<ExitCode> {
    match command {
        RepoCommand::Init(a) => repo::init(a)?,
        RepoCommand::Keygen(a) => repo::keygen(a)?,
        RepoCommand::Commit(a) => repo::commit(a)?,
        RepoCommand::Log(a) => repo::log(a)?,
        RepoCommand::Show(a) => repo::show(a)?,
        RepoCommand::Ls(a) => repo::ls(a)?,
        RepoCommand::Diff(a) => repo::diff(a)?,
        RepoCommand::Checkout(a) => repo::checkout(a)?,
        RepoCommand::Bundle(a) => bundle::bundle(a)?,
        RepoCommand::Image(a) => image::image(a)?,
        RepoCommand::Export(a) => export::export(a)?,
        RepoCommand::Serve(a) => serve::serve(a)?,
        RepoCommand::Fsck(a) => return repo::fsck(a),
        RepoCommand::Sign(a) => repo::sign(a)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs one key or channel command.
pub fn run_channels(command: ChannelsCommand) -> Result<()> {
    match command {
        ChannelsCommand::Keys(cmd) => channels::keys(cmd),
        ChannelsCommand::Promote(args) => channels::promote(args),
        ChannelsCommand::Channel(cmd) => channels::channel(cmd),
    }
}
