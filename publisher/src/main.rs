//! `ferry`: the CI and operator command. Parses arguments, sets up logging, calls the
//! library, prints results and the error chain.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ferry_publisher::import::{CommitRequest, NoProgress, Progress};
use ferry_publisher::{checkout, fsck, import, show};
use ferry_store::{ChunkParams, EntryKind, PublicKey, RepoConfig, Repository, SecretKey, StoreError, Version};
use indicatif::{ProgressBar, ProgressStyle};

mod cli_channels;
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

#[derive(Args)]
pub(crate) struct RepoArg {
    /// Repository path.
    #[arg(long, env = "FERRY_REPO", value_name = "PATH")]
    pub(crate) repo: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Creates a repository, recording its chunking parameters and compression level.
    ///
    /// Running it again on an existing repository with the same parameters does nothing;
    /// with other parameters it fails, naming both.
    Init {
        #[command(flatten)]
        repo: RepoArg,
        /// Smallest chunk, in bytes (FastCDC v2020: 64..=1048576, even).
        #[arg(long, default_value_t = ChunkParams::default().min_size)]
        chunk_min: u32,
        /// Average chunk, in bytes (256..=4194304, even).
        #[arg(long, default_value_t = ChunkParams::default().avg_size)]
        chunk_avg: u32,
        /// Largest chunk, in bytes (1024..=16777216, even).
        #[arg(long, default_value_t = ChunkParams::default().max_size)]
        chunk_max: u32,
        /// zstd level for stored chunks.
        #[arg(long, default_value_t = ferry_store::config::DEFAULT_COMPRESSION_LEVEL, allow_negative_numbers = true)]
        compression_level: i32,
    },
    /// Writes a new ed25519 signing key to FILE (mode 0600) and its public key to FILE.pub.
    Keygen {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Commits a directory tree to a branch, signed; prints the commit id as the last line.
    ///
    /// The commit id depends only on the tree's content and the given metadata (no mtimes,
    /// no clock): committing the same tree with the same metadata again returns the branch's
    /// current commit and writes nothing.
    Commit {
        #[command(flatten)]
        repo: RepoArg,
        #[arg(long)]
        branch: String,
        /// Directory to commit.
        #[arg(long, value_name = "DIR")]
        tree: PathBuf,
        /// Release version: a number (42) or a semantic version (1.4.0-rc.1).
        #[arg(long)]
        version: String,
        /// Secret key file from `ferry keygen`.
        #[arg(long, value_name = "FILE")]
        sign_key: PathBuf,
        #[arg(long, default_value = "")]
        subject: String,
        #[arg(long, default_value = "")]
        body: String,
        /// Metadata, e.g. --meta git=3f2a9c1 (repeatable).
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        meta: Vec<String>,
        /// Hardware revision this release supports (repeatable).
        #[arg(long = "hardware", value_name = "REV")]
        hardware: Vec<String>,
        /// Commit time, Unix seconds; defaults to $SOURCE_DATE_EPOCH, else none is recorded.
        #[arg(long, allow_negative_numbers = true)]
        timestamp: Option<i64>,
        /// Print the summary as JSON on stdout instead of text on stderr.
        #[arg(long)]
        json: bool,
    },
    /// Lists a branch's commits, newest first.
    Log {
        #[command(flatten)]
        repo: RepoArg,
        #[arg(long)]
        branch: String,
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Shows one commit. REV: a full id, a branch, or a unique prefix of 8+ hex digits.
    Show {
        #[command(flatten)]
        repo: RepoArg,
        rev: String,
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Lists a directory (or shows one entry) of a commit.
    Ls {
        #[command(flatten)]
        repo: RepoArg,
        rev: String,
        /// Path inside the commit, `/`-separated; the root when omitted.
        path: Option<String>,
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Shows what changed from one commit to another and what a device on FROM downloads.
    Diff {
        #[command(flatten)]
        repo: RepoArg,
        from: String,
        to: String,
        /// zstd level of the patches whose size is reported (what `ferry serve --patch-level` uses).
        #[arg(long, default_value_t = ferry_delta::patch::DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
        patch_level: i32,
        /// Skip computing the patches (seconds of CPU on a large update); report plain chunks only.
        #[arg(long)]
        no_patches: bool,
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Recreates a commit's tree in DIR (which must not exist or be empty).
    Checkout {
        #[command(flatten)]
        repo: RepoArg,
        rev: String,
        dir: PathBuf,
    },
    /// Writes an offline bundle: everything a device needs to install a release without a
    /// network (`ferryd apply FILE`, the device's local page, or a USB stick).
    ///
    /// The bundle holds the key documents, the channel's signed document or the commit,
    /// and the trees and chunks a device on any --from commit lacks (all of them without
    /// --from). A device refuses a bundle that lacks what it needs, before writing anything.
    Bundle {
        #[command(flatten)]
        repo: RepoArg,
        /// A channel (its newest document; `channel:NAME` if a branch has the same name) or
        /// a commit (id, unique prefix, or branch).
        #[arg(long, value_name = "CHANNEL|COMMIT")]
        to: String,
        /// A commit the devices run: chunks and trees it holds are left out. Repeatable;
        /// the bundle then serves devices on any of them.
        #[arg(long, value_name = "COMMIT")]
        from: Vec<String>,
        /// For a channel: only this hardware revision's target (repeatable).
        #[arg(long, value_name = "REV")]
        hardware: Vec<String>,
        /// The fleet's state directory (`ferry serve --fleet DIR`; read only, also while the
        /// server runs): a channel whose rollout is paused or aborted on its newest document
        /// is refused, since a bundle installs past the rollout.
        #[arg(long, value_name = "DIR")]
        fleet: Option<PathBuf>,
        /// Bundle a channel's document that a halted rollout holds back anyway.
        #[arg(long)]
        force: bool,
        /// The bundle file (written atomically), or - for stdout.
        #[arg(short = 'o', long, value_name = "FILE")]
        output: PathBuf,
        /// Print the summary as JSON on stdout (not with -o -).
        #[arg(long)]
        json: bool,
    },
    /// Writes the content of a device's SD-card image: a release already installed as the
    /// device agent keeps it, so first boot downloads nothing that release holds.
    ///
    /// The tree under --out gets the overlays, the device configuration, and the agent's
    /// state with the deployment of COMMIT, installed by `ferryd seed-image` (which checks
    /// every signature with the image's own keys). --raw also makes an ext4 image file of
    /// it (mkfs.ext4 -d). Boot it with `ferryd provision` as a unit that runs at boot.
    Image {
        #[command(flatten)]
        repo: RepoArg,
        /// The release the image holds (id, unique prefix, or branch).
        #[arg(long, value_name = "REV")]
        commit: String,
        /// The hardware revision the image is for; the commit must be built for it.
        #[arg(long, value_name = "REV")]
        hardware: String,
        /// The image tree (created; must be empty).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The device's ferryd.toml; its paths are the device's.
        #[arg(long, value_name = "FILE")]
        device_config: PathBuf,
        /// Where the device reads its configuration.
        #[arg(long, value_name = "PATH", default_value = "/etc/ferry/ferryd.toml")]
        config_path: PathBuf,
        /// A directory copied into the image first (keys, enrollment token, units).
        /// Repeatable.
        #[arg(long, value_name = "DIR")]
        overlay: Vec<PathBuf>,
        /// Also write an ext4 file system image of the tree to FILE (needs --size).
        #[arg(long, value_name = "FILE", requires = "size")]
        raw: Option<PathBuf>,
        /// Size of the --raw image: bytes, or with K, M, G (e.g. 512M).
        #[arg(long, value_name = "SIZE", requires = "raw")]
        size: Option<String>,
        /// The agent binary (default: ferryd beside ferry, else on PATH).
        #[arg(long, value_name = "PATH")]
        ferryd: Option<PathBuf>,
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Serves the repository over HTTP (API v1, see docs/api.md) until SIGTERM or Ctrl-C.
    ///
    /// Prints `listening on http://ADDR` once bound. `ferry commit` may keep writing to the
    /// repository meanwhile; new branch heads are served as soon as they are committed.
    Serve {
        #[command(flatten)]
        repo: RepoArg,
        /// Address to listen on; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Directory for the server's own files: RocksDB follower logs and, unless
        /// --patch-cache says otherwise, the patch cache (default: a temporary directory,
        /// removed at exit).
        #[arg(long, value_name = "DIR")]
        scratch: Option<PathBuf>,
        /// zstd level of chunk patches (1-22); higher is smaller and slower to compute once.
        #[arg(long, default_value_t = ferry_delta::patch::DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
        patch_level: i32,
        /// Directory caching computed patches across restarts (default: DIR/patch-cache of --scratch).
        #[arg(long, value_name = "DIR")]
        patch_cache: Option<PathBuf>,
        /// Bound of the patch cache in MiB; the least recently used patches go first.
        #[arg(long, default_value_t = 1024, value_name = "MIB")]
        patch_cache_mib: u64,
        /// Patches computed at once (default: the number of cores).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        patch_workers: Option<u16>,
        /// Directory of the fleet's state (devices, tokens, audit log): enables the device
        /// and admin APIs. Create the first admin token with `ferry admin token create --fleet DIR`.
        #[arg(long, value_name = "DIR")]
        fleet: Option<PathBuf>,
        /// Newly enrolled devices wait for `ferry device accept SERIAL`.
        #[arg(long, requires = "fleet")]
        require_approval: bool,
        /// Enrollments one enrollment token may make at once and then per minute (all tokens
        /// together: 6 times as many); more are answered 429 with Retry-After.
        #[arg(long, value_name = "N", default_value_t = ferry_publisher::fleet::ENROLLMENTS_PER_MINUTE, requires = "fleet")]
        enrollments_per_minute: u32,
        /// An online channel key (secret key file): lets the admin API and the web UI promote
        /// and roll back. Without it, channels are changed only with `ferry promote`.
        #[arg(long, value_name = "FILE", requires = "fleet")]
        channel_key: Option<PathBuf>,
    },
    /// Verifies every chunk, object, branch and signature; exits 1 naming what is broken.
    Fsck {
        #[command(flatten)]
        repo: RepoArg,
        /// Public key file; when given, every reachable commit must be signed by one of them.
        #[arg(long = "trusted-key", value_name = "FILE")]
        trusted_keys: Vec<PathBuf>,
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Adds a signature by another key to a stored commit (e.g. after rotating commit keys,
    /// so released commits stay valid for devices that trust only the new key).
    Sign {
        #[command(flatten)]
        repo: RepoArg,
        /// The commit: id, unique prefix or branch.
        rev: String,
        #[arg(long, value_name = "FILE")]
        sign_key: PathBuf,
    },
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
    /// Manages the key document: root keys, and the keys that may sign commits and channels.
    #[command(subcommand)]
    Keys(cli_channels::KeysCommand),
    /// Points a channel at a commit (or at another channel's targets), signed.
    ///
    /// Every target must be a signed commit built for its hardware revision. A commit the
    /// channel's upstream (the channel it was first promoted --from) never had needs
    /// --force; moving a revision to an older version needs --rollback.
    Promote(cli_channels::PromoteArgs),
    /// Shows, lists and refreshes channel documents.
    #[command(subcommand)]
    Channel(cli_channels::ChannelCommand),
}

/// A progress bar on stderr when it is a terminal; nothing otherwise.
struct Bar(ProgressBar);

impl Bar {
    fn new(what: &str) -> Bar {
        let bar = if std::io::stderr().is_terminal() { ProgressBar::new(0) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        Bar(bar)
    }
}

impl Progress for Bar {
    fn set_total(&self, bytes: u64) {
        self.0.set_length(bytes);
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

pub(crate) fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn open_ro(repo: &RepoArg) -> Result<Repository> {
    Ok(Repository::open_read_only(&repo.repo)?)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Init { repo, chunk_min, chunk_avg, chunk_max, compression_level } => {
            let params = ChunkParams { min_size: chunk_min, avg_size: chunk_avg, max_size: chunk_max };
            let config = RepoConfig::new(params, compression_level);
            config.validate().map_err(|e| anyhow!("{e}"))?;
            match Repository::read_config(&repo.repo) {
                Ok(existing) => {
                    if existing.chunking.params != params {
                        return Err(StoreError::ChunkParamsMismatch {
                            path: repo.repo.clone(),
                            existing: existing.chunking.params.to_string(),
                            requested: params.to_string(),
                        }
                        .into());
                    }
                    if existing.compression.level != compression_level {
                        bail!(
                            "{} was created with zstd level {}, not {compression_level}",
                            repo.repo.display(),
                            existing.compression.level
                        );
                    }
                    eprintln!("{} is already a ferry repository with these parameters", repo.repo.display());
                }
                Err(StoreError::NotARepository { .. }) => {
                    Repository::init(&repo.repo, &config)?;
                    eprintln!(
                        "created repository {} (chunking {params}, zstd level {compression_level})",
                        repo.repo.display()
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        Command::Keygen { out } => {
            let key = SecretKey::generate()?;
            key.save(&out)?;
            eprintln!(
                "wrote secret key {} and public key {}",
                out.display(),
                ferry_store::sign::public_path(&out).display()
            );
            println!("{}", key.public().to_hex());
        }
        Command::Commit { repo, branch, tree, version, sign_key, subject, body, meta, hardware, timestamp, json } => {
            let version: Version = version.parse().map_err(|_| {
                anyhow!("--version {version:?} is neither a number (42) nor a semantic version (1.4.0)")
            })?;
            let mut metadata = BTreeMap::new();
            for m in meta {
                let (k, v) = m.split_once('=').ok_or_else(|| anyhow!("--meta {m:?} is not KEY=VALUE"))?;
                if k.is_empty() {
                    bail!("--meta {m:?} has an empty key");
                }
                metadata.insert(k.to_string(), v.to_string());
            }
            let mut hardware = hardware;
            hardware.sort();
            hardware.dedup();
            let timestamp = match timestamp {
                Some(t) => Some(t),
                None => match std::env::var("SOURCE_DATE_EPOCH") {
                    Ok(s) => Some(
                        s.trim().parse().map_err(|_| anyhow!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds"))?,
                    ),
                    Err(_) => None,
                },
            };
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
            if let Some(t) = timestamp.filter(|t| *t > now.saturating_add(ferry_store::channel::MAX_AHEAD)) {
                bail!(
                    "the commit time {t} is more than a day after now ({now}); devices would take it for their clock floor (is SOURCE_DATE_EPOCH in milliseconds?)"
                );
            }
            let key = SecretKey::load(&sign_key)?;
            let repository = Repository::open(&repo.repo)?;
            let req = CommitRequest { tree, branch, version, subject, body, metadata, hardware, timestamp, key: &key };
            let summary = {
                let bar = Bar::new("committing");
                import::commit_tree(&repository, &req, &bar)?
            };
            if json {
                print_json(&summary)?;
            } else {
                eprintln!(
                    "{} {} files, {} dirs, {} symlinks, {} in {} chunks; new: {} chunks, {} -> {} compressed; {:.1} s, {:.1} MB/s",
                    if summary.unchanged { "unchanged:" } else { "committed" },
                    summary.files,
                    summary.directories,
                    summary.symlinks,
                    human(summary.bytes),
                    summary.chunks,
                    summary.new_chunks,
                    human(summary.new_bytes),
                    human(summary.new_compressed_bytes),
                    summary.seconds,
                    summary.mb_per_s
                );
                println!("{}", summary.commit);
            }
        }
        Command::Log { repo, branch, json } => {
            let r = open_ro(&repo)?;
            let head = r.branch(&branch)?.ok_or_else(|| anyhow!("no branch {branch:?} in {}", repo.repo.display()))?;
            let mut next = Some(head);
            let mut all = Vec::new();
            while let Some(id) = next {
                let c = r.read_commit(&id)?;
                let sigs = show::signature_status(&r, &id)?;
                if json {
                    all.push(show::commit_json(&id, &c, &sigs));
                } else {
                    println!("{}", show::commit_text(&id, &c, &sigs));
                }
                next = c.parent;
            }
            if json {
                print_json(&all)?;
            }
        }
        Command::Show { repo, rev, json } => {
            let r = open_ro(&repo)?;
            let id = r.resolve(&rev)?;
            let c = r.read_commit(&id)?;
            let sigs = show::signature_status(&r, &id)?;
            if json {
                print_json(&show::commit_json(&id, &c, &sigs))?;
            } else {
                print!("{}", show::commit_text(&id, &c, &sigs));
            }
        }
        Command::Ls { repo, rev, path, json } => {
            let r = open_ro(&repo)?;
            let id = r.resolve(&rev)?;
            let c = r.read_commit(&id)?;
            let mut tree_id = c.root;
            let mut single = None;
            let path = path.unwrap_or_default();
            let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
            for (i, part) in parts.iter().enumerate() {
                let tree = r.read_tree(&tree_id)?;
                let e = tree
                    .entries
                    .into_iter()
                    .find(|e| e.name == part.as_bytes())
                    .ok_or_else(|| anyhow!("{path:?}: no such file or directory in commit {}", id.short()))?;
                match &e.kind {
                    EntryKind::Dir { tree } => tree_id = *tree,
                    _ if i + 1 == parts.len() => single = Some(e),
                    _ => bail!("{path:?}: {part} is not a directory in commit {}", id.short()),
                }
            }
            let entries = match single {
                Some(e) => vec![e],
                None => r.read_tree(&tree_id)?.entries,
            };
            if json {
                let v: Vec<_> = entries.iter().map(|e| show::entry_json(&r, e)).collect::<Result<_, _>>()?;
                print_json(&v)?;
            } else {
                for e in &entries {
                    println!("{}", show::entry_text(&r, e)?);
                }
            }
        }
        Command::Diff { repo, from, to, patch_level, no_patches, json } => {
            let r = open_ro(&repo)?;
            let (fid, tid) = (r.resolve(&from)?, r.resolve(&to)?);
            let (fc, tc) = (r.read_commit(&fid)?, r.read_commit(&tid)?);
            let changes = ferry_delta::diff_commits(&r, &fc, &tc)?;
            let cost = ferry_delta::transfer_cost(&r, Some(&fc), &tc)?;
            let patched = if no_patches { None } else { Some(ferry_delta::patch_cost(&r, &fc, &tc, patch_level)?) };
            let list = |k: ferry_delta::ChangeKind| -> Vec<&str> {
                changes.iter().filter(|c| c.kind == k).map(|c| c.path.as_str()).collect()
            };
            if json {
                print_json(&serde_json::json!({
                    "from": fid.to_hex(),
                    "to": tid.to_hex(),
                    "added": list(ferry_delta::ChangeKind::Added),
                    "removed": list(ferry_delta::ChangeKind::Removed),
                    "changed": list(ferry_delta::ChangeKind::Changed),
                    "transfer_chunks": cost.chunks,
                    "transfer_compressed_bytes": cost.compressed_bytes,
                    "transfer_raw_bytes": cost.raw_bytes,
                    "patch": patched,
                }))?;
            } else {
                for c in &changes {
                    let mark = match c.kind {
                        ferry_delta::ChangeKind::Added => 'A',
                        ferry_delta::ChangeKind::Removed => 'D',
                        ferry_delta::ChangeKind::Changed => 'M',
                    };
                    println!("{mark} {}", c.path);
                }
                println!(
                    "transfer {} -> {}: {} chunks, {} compressed ({} uncompressed) that {} lacks",
                    fid.short(),
                    tid.short(),
                    cost.chunks,
                    human(cost.compressed_bytes),
                    human(cost.raw_bytes),
                    fid.short()
                );
                if let Some(patched) = patched {
                    println!(
                        "with patches against {}'s files: {} on the wire ({} patches, {} smaller than plain; {} chunks plain); computing them took {:.2}s",
                        fid.short(),
                        human(patched.transfer_bytes),
                        patched.patches,
                        patched.patched,
                        patched.plain_chunks,
                        patched.seconds
                    );
                }
            }
        }
        Command::Bundle { repo, to, from, hardware, fleet, force, output, json } => {
            let r = open_ro(&repo)?;
            let target = ferry_publisher::bundle::resolve_to(&r, &to, &hardware)?;
            if let (ferry_publisher::bundle::BundleTo::Channel { name, .. }, Some(dir)) = (&target, &fleet) {
                let f = ferry_publisher::fleet::Fleet::open_read_only(dir)
                    .map_err(|e| anyhow!("reading the fleet's rollouts in {}: {e}", dir.display()))?;
                if let Some(warning) = ferry_publisher::bundle::check_rollout(&r, name, &f, force)? {
                    eprintln!("warning: {warning}");
                }
            }
            let from = from.iter().map(|f| r.resolve(f)).collect::<Result<Vec<_>, _>>()?;
            let to_stdout = output.as_os_str() == "-";
            if to_stdout && json {
                bail!("--json prints on stdout, where -o - writes the bundle; choose one");
            }
            let summary = if to_stdout {
                if std::io::stdout().is_terminal() {
                    bail!("refusing to write a bundle to a terminal; redirect stdout or use -o FILE");
                }
                let bar = Bar::new("bundling");
                ferry_publisher::bundle::write_bundle(&r, &target, &from, std::io::stdout().lock(), &bar)?
            } else {
                let bar = Bar::new("bundling");
                ferry_durable::replace_with::<_, anyhow::Error>(&output, ferry_durable::PUBLIC, |f| {
                    ferry_publisher::bundle::write_bundle(&r, &target, &from, f, &bar)
                })
                .with_context(|| format!("writing {}", output.display()))?
            };
            if json {
                print_json(&summary)?;
            } else {
                let what = match (&summary.channel, summary.serial) {
                    (Some(c), Some(n)) => format!("channel {c} (document serial {n}): "),
                    _ => "commit ".to_string(),
                };
                eprintln!(
                    "wrote {}: {what}{}; {} trees and {} chunks ({} uncompressed), {}{}",
                    output.display(),
                    summary
                        .commits
                        .iter()
                        .map(|c| format!(
                            "{} {} for {}",
                            &c.commit[..12],
                            c.version,
                            if c.hardware.is_empty() { "any hardware".into() } else { c.hardware.join(", ") }
                        ))
                        .collect::<Vec<_>>()
                        .join("; "),
                    summary.trees,
                    summary.chunks,
                    human(summary.chunk_bytes),
                    human(summary.bytes),
                    if summary.from.is_empty() {
                        String::new()
                    } else {
                        format!(", for devices on {} commit(s)", summary.from.len())
                    }
                );
            }
        }
        Command::Image {
            repo,
            commit,
            hardware,
            out,
            device_config,
            config_path,
            overlay,
            raw,
            size,
            ferryd,
            json,
        } => {
            let r = open_ro(&repo)?;
            let raw = match (raw, size) {
                (Some(f), Some(s)) => Some((f, ferry_publisher::image::parse_size(&s)?)),
                _ => None,
            };
            let req = ferry_publisher::image::ImageRequest {
                commit: r.resolve(&commit)?,
                hardware,
                out,
                device_config,
                config_path,
                overlays: overlay,
                raw,
                ferryd: match ferryd {
                    Some(p) => p,
                    None => ferry_publisher::image::find_ferryd()?,
                },
            };
            let s = ferry_publisher::image::build(&r, &req)?;
            if json {
                print_json(&s)?;
            } else {
                eprintln!(
                    "image tree {}: release {} ({}) for {}, {} files{}",
                    s.out.display(),
                    s.version,
                    &s.commit[..12],
                    s.hardware,
                    s.files,
                    s.raw
                        .as_ref()
                        .map(|r| format!("; ext4 image {} ({})", r.display(), human(s.raw_bytes.unwrap_or(0))))
                        .unwrap_or_default()
                );
            }
        }
        Command::Checkout { repo, rev, dir } => {
            let r = open_ro(&repo)?;
            let id = r.resolve(&rev)?;
            let summary = {
                let bar = Bar::new("checking out");
                checkout::checkout(&r, &id, &dir, &bar)?
            };
            eprintln!(
                "checked out {} into {}: {} files, {} dirs, {} symlinks, {}",
                id.short(),
                dir.display(),
                summary.files,
                summary.directories,
                summary.symlinks,
                human(summary.bytes)
            );
        }
        Command::Serve {
            repo,
            listen,
            scratch,
            patch_level,
            patch_cache,
            patch_cache_mib,
            patch_workers,
            fleet,
            require_approval,
            enrollments_per_minute,
            channel_key,
        } => {
            let (scratch, temporary) = match scratch {
                Some(dir) => (dir, false),
                None => (std::env::temp_dir().join(format!("ferry-serve-{}", std::process::id())), true),
            };
            let mut patches = ferry_publisher::serve::PatchConfig {
                level: patch_level,
                cache_dir: patch_cache,
                cache_bytes: patch_cache_mib.saturating_mul(1 << 20),
                ..Default::default()
            };
            if let Some(n) = patch_workers {
                patches.workers = usize::from(n);
            }
            let config = ferry_publisher::serve::ServeConfig {
                patches,
                fleet: fleet.map(|path| ferry_publisher::serve::FleetConfig {
                    path,
                    settings: ferry_publisher::fleet::Settings { require_approval, enrollments_per_minute },
                    channel_key,
                }),
                ..Default::default()
            };
            let runtime = tokio::runtime::Runtime::new()?;
            let result = runtime.block_on(ferry_publisher::serve::serve_with(
                repo.repo.clone(),
                scratch.clone(),
                listen,
                &config,
                |addr| {
                    println!("listening on http://{addr}");
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                },
                shutdown_signal(),
            ));
            if temporary {
                let _ = std::fs::remove_dir_all(&scratch);
            }
            result?;
        }
        Command::Sign { repo, rev, sign_key } => {
            let key = SecretKey::load(&sign_key)?;
            let r = Repository::open(&repo.repo)?;
            let id = r.resolve(&rev)?;
            r.add_signature(&id, &key.public(), &key.sign_commit(&id))?;
            eprintln!("signed commit {id} with key {}", key.public().to_hex());
        }
        Command::Admin(cmd) => cli_fleet::admin(cmd)?,
        Command::Devices(args) => cli_fleet::devices(args)?,
        Command::Device(cmd) => cli_fleet::device(cmd)?,
        Command::Audit(args) => cli_fleet::audit(args)?,
        Command::Config(cmd) => cli_fleet::config(cmd)?,
        Command::Rollout(cmd) => cli_fleet::rollout(cmd)?,
        Command::Keys(cmd) => cli_channels::keys(cmd)?,
        Command::Promote(args) => cli_channels::promote(args)?,
        Command::Channel(cmd) => cli_channels::channel(cmd)?,
        Command::Fsck { repo, trusted_keys, json } => {
            let trusted = trusted_keys.iter().map(|p| PublicKey::load(p)).collect::<Result<Vec<_>, _>>()?;
            let r = open_ro(&repo)?;
            let report = fsck::fsck(&r, &trusted, &NoProgress)?;
            if json {
                print_json(&report)?;
            } else {
                for p in &report.problems {
                    println!("{}: {}", p.object, p.message);
                }
                eprintln!(
                    "checked {} chunks, {} objects, {} commits on {} branches: {}",
                    report.chunks,
                    report.objects,
                    report.commits,
                    report.branches,
                    if report.problems.is_empty() {
                        "ok".to_string()
                    } else {
                        format!("{} problems", report.problems.len())
                    }
                );
            }
            if !report.problems.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
