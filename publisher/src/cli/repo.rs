//! `ferry init`, `keygen`, `commit`, `log`, `show`, `ls`, `diff`, `checkout`, `fsck` and
//! `sign`: the commands that create, fill, inspect and verify a repository. Their arguments
//! and output; the work is in [`crate::import`], [`crate::checkout`], [`crate::fsck`],
//! [`crate::show`] and the store.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use ferry_store::{ChunkParams, EntryKind, PublicKey, RepoConfig, Repository, SecretKey, StoreError, Version};

use super::{human, open_ro, print_json, Bar, RepoArg};
use crate::import::{CommitRequest, NoProgress};
use crate::{checkout, fsck, import, show};

#[derive(Debug, Args)]
pub struct InitArgs {
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
}

pub fn init(a: InitArgs) -> Result<()> {
    let InitArgs { repo, chunk_min, chunk_avg, chunk_max, compression_level } = a;
    let params = ChunkParams { min_size: chunk_min, avg_size: chunk_avg, max_size: chunk_max };
    let config = RepoConfig::new(params, compression_level);
    config.validate().map_err(|e| anyhow!("{e}"))?;
    match Repository::init(&repo.repo, &config) {
        Ok(_) => {
            eprintln!("created repository {} (chunking {params}, zstd level {compression_level})", repo.repo.display())
        }
        // Running init again with the same parameters is not an error.
        Err(e @ StoreError::AlreadyARepository { .. }) => eprintln!("{e}"),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the secret key (mode 0600); the public key goes beside it as FILE.pub.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub fn keygen(a: KeygenArgs) -> Result<()> {
    let key = SecretKey::generate()?;
    key.save(&a.out)?;
    eprintln!(
        "wrote secret key {} and public key {}",
        a.out.display(),
        ferry_store::sign::public_path(&a.out).display()
    );
    println!("{}", key.public().to_hex());
    Ok(())
}

#[derive(Debug, Args)]
pub struct CommitArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// The branch the commit goes on (made by its first commit), e.g. main or rev-a/main.
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
    /// A one-line description of the release, shown by `ferry log` and `ferry show`.
    #[arg(long, default_value = "")]
    subject: String,
    /// A longer description (release notes), shown by `ferry show`.
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
    /// Commit a version lower than the branch head's (refused without it: devices
    /// following the branch would not take it).
    #[arg(long)]
    allow_downgrade: bool,
    /// Print the summary as JSON on stdout instead of text on stderr.
    #[arg(long)]
    json: bool,
}

pub fn commit(a: CommitArgs) -> Result<()> {
    let CommitArgs {
        repo,
        branch,
        tree,
        version,
        sign_key,
        subject,
        body,
        meta,
        mut hardware,
        timestamp,
        allow_downgrade,
        json,
    } = a;
    let version: Version = version
        .parse()
        .map_err(|_| anyhow!("--version {version:?} is neither a number (42) nor a semantic version (1.4.0)"))?;
    let mut metadata = BTreeMap::new();
    for m in meta {
        let (k, v) = m.split_once('=').ok_or_else(|| anyhow!("--meta {m:?} is not KEY=VALUE"))?;
        if k.is_empty() {
            bail!("--meta {m:?} has an empty key");
        }
        metadata.insert(k.to_string(), v.to_string());
    }
    hardware.sort();
    hardware.dedup();
    let timestamp = match timestamp {
        Some(t) => Some(t),
        None => match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(s) => Some(s.trim().parse().map_err(|_| anyhow!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds"))?),
            Err(_) => None,
        },
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    if let Some(t) = timestamp.filter(|t| *t > now.saturating_add(ferry_store::channel::MAX_AHEAD)) {
        bail!(
            "the commit time {t} is more than a day after now ({now}); devices would take it for their clock floor (is SOURCE_DATE_EPOCH in milliseconds?)"
        );
    }
    let key = SecretKey::load(&sign_key)?;
    let repository = Repository::open(&repo.repo)?;
    let req = CommitRequest {
        tree,
        branch,
        version,
        subject,
        body,
        metadata,
        hardware,
        timestamp,
        key: &key,
        allow_downgrade,
    };
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
    Ok(())
}

#[derive(Debug, Args)]
pub struct LogArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// The branch whose commits to list, newest first.
    #[arg(long)]
    branch: String,
    /// Print the result as JSON on stdout, for scripts.
    #[arg(long)]
    json: bool,
}

pub fn log(a: LogArgs) -> Result<()> {
    let LogArgs { repo, branch, json } = a;
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
    Ok(())
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// A commit: its id, a unique prefix of 8+ digits, a branch or a version.
    rev: String,
    /// Print the result as JSON on stdout, for scripts.
    #[arg(long)]
    json: bool,
}

pub fn show(a: ShowArgs) -> Result<()> {
    let r = open_ro(&a.repo)?;
    let id = r.resolve(&a.rev)?;
    let c = r.read_commit(&id)?;
    let sigs = show::signature_status(&r, &id)?;
    if a.json {
        print_json(&show::commit_json(&id, &c, &sigs))?;
    } else {
        print!("{}", show::commit_text(&id, &c, &sigs));
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// A commit: its id, a unique prefix of 8+ digits, a branch or a version.
    rev: String,
    /// Path inside the commit, `/`-separated; the root when omitted.
    path: Option<String>,
    /// Print the result as JSON on stdout, for scripts.
    #[arg(long)]
    json: bool,
}

pub fn ls(a: LsArgs) -> Result<()> {
    let r = open_ro(&a.repo)?;
    let id = r.resolve(&a.rev)?;
    let c = r.read_commit(&id)?;
    let mut tree_id = c.root;
    let mut single = None;
    let path = a.path.unwrap_or_default();
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
    if a.json {
        let v: Vec<_> = entries.iter().map(|e| show::entry_json(&r, e)).collect::<Result<_, _>>()?;
        print_json(&v)?;
    } else {
        for e in &entries {
            println!("{}", show::entry_text(&r, e)?);
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// The older commit (id, prefix of 8+ digits, branch or version).
    from: String,
    /// The newer commit, the same ways.
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
}

pub fn diff(a: DiffArgs) -> Result<()> {
    use ferry_delta::ChangeKind;
    let r = open_ro(&a.repo)?;
    let (fid, tid) = (r.resolve(&a.from)?, r.resolve(&a.to)?);
    let (fc, tc) = (r.read_commit(&fid)?, r.read_commit(&tid)?);
    let changes = ferry_delta::diff_commits(&r, &fc, &tc)?;
    let cost = ferry_delta::transfer_cost(&r, Some(&fc), &tc)?;
    let patched = if a.no_patches { None } else { Some(ferry_delta::patch_cost(&r, &fc, &tc, a.patch_level)?) };
    let list =
        |k: ChangeKind| -> Vec<&str> { changes.iter().filter(|c| c.kind == k).map(|c| c.path.as_str()).collect() };
    if a.json {
        return print_json(&serde_json::json!({
            "from": fid.to_hex(),
            "to": tid.to_hex(),
            "added": list(ChangeKind::Added),
            "removed": list(ChangeKind::Removed),
            "changed": list(ChangeKind::Changed),
            "transfer_chunks": cost.chunks,
            "transfer_compressed_bytes": cost.compressed_bytes,
            "transfer_raw_bytes": cost.raw_bytes,
            "patch": patched,
        }));
    }
    for c in &changes {
        let mark = match c.kind {
            ChangeKind::Added => 'A',
            ChangeKind::Removed => 'D',
            ChangeKind::Changed => 'M',
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
    Ok(())
}

#[derive(Debug, Args)]
pub struct CheckoutArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// A commit: its id, a unique prefix of 8+ digits, a branch or a version.
    rev: String,
    /// The directory to write the commit's files into (absent or empty).
    dir: PathBuf,
}

pub fn checkout(a: CheckoutArgs) -> Result<()> {
    let r = open_ro(&a.repo)?;
    let id = r.resolve(&a.rev)?;
    let summary = {
        let bar = Bar::new("checking out");
        checkout::checkout(&r, &id, &a.dir, &bar)?
    };
    eprintln!(
        "checked out {} into {}: {} files, {} dirs, {} symlinks, {}",
        id.short(),
        a.dir.display(),
        summary.files,
        summary.directories,
        summary.symlinks,
        human(summary.bytes)
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct FsckArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// Public key file; when given, every reachable commit must be signed by one of them.
    #[arg(long = "trusted-key", value_name = "FILE")]
    trusted_keys: Vec<PathBuf>,
    /// Print the result as JSON on stdout, for scripts.
    #[arg(long)]
    json: bool,
}

/// Exits 1 when the repository has problems (each printed on stdout).
pub fn fsck(a: FsckArgs) -> Result<ExitCode> {
    let trusted = a.trusted_keys.iter().map(|p| PublicKey::load(p)).collect::<Result<Vec<_>, _>>()?;
    let r = open_ro(&a.repo)?;
    let report = fsck::fsck(&r, &trusted, &NoProgress)?;
    if a.json {
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
            if report.problems.is_empty() { "ok".to_string() } else { format!("{} problems", report.problems.len()) }
        );
    }
    Ok(if report.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

#[derive(Debug, Args)]
pub struct SignArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// The commit: id, unique prefix or branch.
    rev: String,
    /// The secret key (`ferry keygen`) that adds its signature to the commit.
    #[arg(long, value_name = "FILE")]
    sign_key: PathBuf,
}

pub fn sign(a: SignArgs) -> Result<()> {
    let key = SecretKey::load(&a.sign_key)?;
    let r = Repository::open(&a.repo.repo)?;
    let id = r.resolve(&a.rev)?;
    r.add_signature(&id, &key.public(), &key.sign_commit(&id))?;
    eprintln!("signed commit {id} with key {}", key.public().to_hex());
    Ok(())
}
