//! `ferry bundle`: writes an offline bundle (format in `ferry_delta::bundle`) of a channel's
//! newest document or of one commit, for devices that cannot reach the server.
//!
//! A bundle holds the repository's key documents (a device walks them from the roots in its
//! image, as it does online), the channel document or commit, each target commit with its
//! signatures, and the trees and chunks a device on any of the `--from` commits lacks (all of
//! them without `--from`). Trees and chunks are written in the order a device walks them, so
//! the device streams the bundle and never holds more than one chunk of it.

use std::collections::HashSet;
use std::io::Write;

use anyhow::{anyhow, bail, Context, Result};
use ferry_delta::bundle::{BundleWriter, BundledCommit};
use ferry_store::channel::{ChannelDoc, Envelope};
use ferry_store::{EntryKind, Id, Repository};

use crate::import::Progress;

/// What a bundle carries a device to.
#[derive(Debug, Clone)]
pub enum BundleTo {
    /// A channel's newest document and its targets (those for `hardware` only, if not empty).
    Channel { name: String, hardware: Vec<String> },
    /// One commit.
    Commit(Id),
}

/// What `ferry bundle` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BundleSummary {
    pub channel: Option<String>,
    pub serial: Option<u64>,
    /// The commits the bundle installs, with their versions and hardware revisions.
    pub commits: Vec<BundledTarget>,
    pub from: Vec<String>,
    pub key_documents: usize,
    pub trees: u64,
    pub chunks: u64,
    /// Uncompressed bytes of those chunks.
    pub chunk_bytes: u64,
    /// Size of the bundle file.
    pub bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BundledTarget {
    pub commit: String,
    pub version: String,
    pub hardware: Vec<String>,
}

/// Resolves `--to`: `channel:NAME`, a channel's name, or a commit (any REV). A name that is
/// both a channel and a branch is refused as ambiguous.
pub fn resolve_to(repo: &Repository, to: &str, hardware: &[String]) -> Result<BundleTo> {
    if let Some(name) = to.strip_prefix("channel:") {
        repo.channel(name)?.ok_or_else(|| anyhow!("the repository has no channel {name:?}"))?;
        return Ok(BundleTo::Channel { name: name.to_string(), hardware: hardware.to_vec() });
    }
    let channel = match ferry_store::repo::check_branch_name(to) {
        Ok(()) => repo.channel(to)?,
        Err(_) => None,
    };
    match (channel, repo.resolve(to)) {
        (Some(_), Ok(id)) => {
            bail!("{to:?} names both a channel and a commit ({}); write channel:{to} or the commit id", id.short())
        }
        (Some(_), Err(_)) => Ok(BundleTo::Channel { name: to.to_string(), hardware: hardware.to_vec() }),
        (None, Ok(id)) => {
            if !hardware.is_empty() {
                bail!("--hardware selects a channel's targets; {to:?} is a commit");
            }
            Ok(BundleTo::Commit(id))
        }
        (None, Err(e)) => Err(anyhow!("{to:?} names no channel, and as a commit: {e}")),
    }
}

/// What a fleet's rollout says about bundling `channel`'s newest document. A bundle
/// installs what it carries on any device it is applied to, past the rollout's share and
/// its halt: bundling a document that a paused or aborted rollout holds back is refused
/// unless `force`. Returns a warning to print when the bundle goes ahead past a rollout
/// (one still running below 100%, or a halted one forced).
pub fn check_rollout(
    repo: &Repository,
    channel: &str,
    fleet: &crate::fleet::Fleet,
    force: bool,
) -> Result<Option<String>> {
    let Some(rollout) = fleet.rollout(channel)? else { return Ok(None) };
    let head = repo.channel(channel)?.ok_or_else(|| anyhow!("the repository has no channel {channel:?}"))?;
    let doc = ferry_store::channel::ChannelDoc::decode(&repo.read_envelope(&head)?.document)
        .map_err(|e| anyhow!("channel {channel}'s newest document {head} does not decode: {e}"))?;
    use crate::fleet::RolloutState;
    // A finished rollout gives the document to everyone; a halted one holds it back at any
    // share (the automatic halt fires at whatever percentage it has reached).
    if doc.serial <= rollout.base_serial || (rollout.state == RolloutState::Running && rollout.percent >= 100) {
        return Ok(None);
    }
    let why = rollout.halt_reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
    let halted = match rollout.state {
        RolloutState::Running => None,
        RolloutState::Paused => Some(format!("paused{why}")),
        RolloutState::Aborted => Some(format!("aborted{why}")),
    };
    match halted {
        Some(state) if !force => bail!(
            "channel {channel}'s rollout of document serial {} is {state}; a bundle of it would install it on any device it is applied to. Bundle the document the fleet still gives (promote it back with --rollback), resume the rollout, or pass --force",
            doc.serial
        ),
        Some(state) => Ok(Some(format!(
            "channel {channel}'s rollout of document serial {} is {state}; bundling it anyway (--force)",
            doc.serial
        ))),
        None => Ok(Some(format!(
            "channel {channel}'s rollout gives document serial {} to {}% of the devices; this bundle installs it on any device it is applied to",
            doc.serial, rollout.percent
        ))),
    }
}

/// Writes the bundle to `out`; returns what it holds.
pub fn write_bundle(
    repo: &Repository,
    to: &BundleTo,
    from: &[Id],
    out: impl Write,
    progress: &dyn Progress,
) -> Result<BundleSummary> {
    let mut summary = BundleSummary {
        channel: None,
        serial: None,
        commits: Vec::new(),
        from: from.iter().map(Id::to_hex).collect(),
        key_documents: 0,
        trees: 0,
        chunks: 0,
        chunk_bytes: 0,
        bytes: 0,
    };
    let keys = repo.key_chain()?;
    if keys.len() > ferry_delta::bundle::MAX_KEY_DOCS {
        bail!(
            "the repository has {} key documents; a bundle carries at most {} (devices would refuse it)",
            keys.len(),
            ferry_delta::bundle::MAX_KEY_DOCS
        );
    }
    let (channel, targets): (Option<Envelope>, Vec<Id>) = match to {
        BundleTo::Channel { name, hardware } => {
            let head = repo.channel(name)?.ok_or_else(|| anyhow!("the repository has no channel {name:?}"))?;
            let envelope = repo.read_envelope(&head)?;
            let doc = ChannelDoc::decode(&envelope.document)
                .with_context(|| format!("channel {name}'s newest document {head} does not decode"))?;
            for h in hardware {
                if doc.target(h).is_none() {
                    bail!(
                        "channel {name} has no target for hardware {h:?} (it has: {})",
                        doc.targets.iter().map(|t| t.hardware.as_str()).collect::<Vec<_>>().join(", ")
                    );
                }
            }
            let mut commits: Vec<Id> = doc
                .targets
                .iter()
                .filter(|t| hardware.is_empty() || hardware.contains(&t.hardware))
                .map(|t| t.commit)
                .collect();
            commits.sort();
            commits.dedup();
            summary.channel = Some(name.clone());
            summary.serial = Some(doc.serial);
            (Some(envelope), commits)
        }
        BundleTo::Commit(id) => (None, vec![*id]),
    };
    if targets.len() > ferry_delta::bundle::MAX_COMMITS {
        bail!("a bundle holds at most {} commits; choose targets with --hardware", ferry_delta::bundle::MAX_COMMITS);
    }
    if from.len() > ferry_delta::bundle::MAX_FROM {
        bail!("a bundle names at most {} --from commits", ferry_delta::bundle::MAX_FROM);
    }

    // What a device on any of the --from commits already holds.
    let (mut held_trees, mut held_chunks) = (HashSet::new(), HashSet::new());
    for f in from {
        let c = repo.read_commit(f).with_context(|| format!("--from {f}"))?;
        ferry_delta::plan::collect_chunks(repo, &c.root, &mut held_trees, &mut held_chunks)?;
    }

    // Trees parents first, and chunks in the order a device meets them.
    let mut trees: Vec<Id> = Vec::new();
    let mut manifest: Vec<(Id, u32)> = Vec::new();
    let mut seen_trees = held_trees.clone();
    let mut seen_chunks = held_chunks;
    let mut commits = Vec::new();
    for id in &targets {
        let commit = repo.read_commit(id)?;
        let signatures = repo.signatures(id)?;
        if signatures.is_empty() {
            bail!("commit {id} has no signature; a device would refuse it");
        }
        if signatures.len() > 255 {
            bail!("commit {id} has {} signatures; a bundle carries at most 255", signatures.len());
        }
        summary.commits.push(BundledTarget {
            commit: id.to_hex(),
            version: commit.version.to_string(),
            hardware: commit.hardware.clone(),
        });
        let mut queue = std::collections::VecDeque::from([commit.root]);
        while let Some(t) = queue.pop_front() {
            if !seen_trees.insert(t) {
                continue;
            }
            trees.push(t);
            for e in repo.read_tree(&t)?.entries {
                match e.kind {
                    EntryKind::Dir { tree } => queue.push_back(tree),
                    EntryKind::File { chunks, .. } => {
                        for c in chunks {
                            if seen_chunks.insert(c.id) {
                                manifest.push((c.id, c.len));
                            }
                        }
                    }
                    EntryKind::Symlink { .. } => {}
                }
            }
        }
        commits.push(BundledCommit {
            id: *id,
            signatures: signatures.into_iter().map(|s| (s.key, s.signature)).collect(),
            bytes: repo.read_object_bytes(id)?,
        });
    }
    if manifest.len() > ferry_delta::bundle::MAX_MANIFEST {
        bail!(
            "the bundle would hold {} chunks; the format's limit is {}",
            manifest.len(),
            ferry_delta::bundle::MAX_MANIFEST
        );
    }

    let mut total = 0u64;
    for (id, _) in &manifest {
        total += u64::from(
            repo.chunk_info(id)?.ok_or_else(|| anyhow!("chunk {id} is missing from the repository"))?.stored_len,
        );
    }
    progress.set_total(total);
    let mut w = BundleWriter::new(std::io::BufWriter::with_capacity(1 << 20, out))?;
    for k in &keys {
        w.key_document(&k.encode())?;
    }
    summary.key_documents = keys.len();
    if let Some(c) = &channel {
        w.channel(&c.encode())?;
    }
    for c in &commits {
        w.commit(c)?;
    }
    w.from(from)?;
    for t in &trees {
        w.tree(t, &repo.read_object_bytes(t)?)?;
    }
    w.manifest(&manifest)?;
    for (id, len) in &manifest {
        let frame = repo.read_chunk_stored(id)?;
        w.chunk(id, &frame)?;
        progress.advance(frame.len() as u64);
        summary.chunk_bytes += u64::from(*len);
    }
    summary.trees = trees.len() as u64;
    summary.chunks = manifest.len() as u64;
    summary.bytes = w.bytes_written() + 45;
    let mut out = w.finish()?;
    out.flush()?;
    Ok(summary)
}
