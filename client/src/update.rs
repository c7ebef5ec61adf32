//! One check-and-update: from whatever the device runs (or nothing) to the branch's head.
//!
//! Order of work, and what a crash at each step leaves (see `crash::STEPS`):
//! 1. branch head (ETag: an unchanged head costs a 304 and nothing else);
//! 2. the commit and its signatures; the signature is verified with a trusted key **before**
//!    the commit is decoded or anything it names is fetched (`commit-stored`);
//! 3. the trees the device lacks, one batched request per tree depth (`tree-stored`);
//! 4. the plan: chunks of files whose object the device lacks, minus chunks it holds;
//! 5. those chunks, in batched requests with bounded concurrency, each verified and staged
//!    as it arrives, so a broken connection costs at most the chunk in flight (`chunk-staged`);
//! 6. the deployment, built beside the current one: an unchanged file is a hardlink to its
//!    existing object, a changed one is built from verified chunks (`object-written`), synced,
//!    then renamed from `deploy/<id>.tmp-*` to `deploy/<id>` (`deployment-complete`);
//! 7. the atomic switch of `current_link` (`switched`), state (`state-saved`), and garbage
//!    collection of older deployments, unreferenced objects and staging (`gc`).
//!
//! A crash before 7 leaves the old deployment current and everything fetched so far reusable;
//! recovery at the next start removes only temporary files. Steps 2–6 are retried on network
//! errors, each retry asking only for what is still missing.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ferry_delta::pack::{self, MAX_IDS_PER_REQUEST};
use ferry_delta::patch::{self as patch, Patch, PatchPayload};
use ferry_store::{ChunkRef, Commit, EntryKind, Id, Meta, PublicKey, Xattr};
use futures_util::StreamExt;

use crate::config::Config;
use crate::crash;
use crate::http::{Answered, Head, Server, Traffic};
use crate::local::{file_object_id, make_writable, Local};
use crate::state::{self, Outcome};

/// Largest commit and tree the agent accepts (the format's own limits are higher).
pub(crate) const MAX_COMMIT: usize = 2 << 20;
const MAX_TREE: u32 = 64 << 20;

/// What one `ferryd update` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UpdateSummary {
    pub from: Option<String>,
    pub to: String,
    pub version: String,
    pub up_to_date: bool,
    /// HTTP body bytes received, everything included.
    pub bytes_downloaded: u64,
    /// Of those, the bytes of chunk frames (36-byte header + zstd frame each).
    pub chunk_bytes_downloaded: u64,
    pub chunks_downloaded: u64,
    /// Patches asked for (missing chunks compressed against files the device holds).
    pub patches: u64,
    /// Of the chunks downloaded, those that came in patches.
    pub chunks_patched: u64,
    /// Chunks whose patch could not be used (reference damaged on the device, patch
    /// refused by the server or not decoding) and that were fetched plain instead.
    pub patch_fallbacks: u64,
    /// Distinct chunks of the new commit the device already held.
    pub chunks_reused: u64,
    pub requests: u64,
    pub files: u64,
    /// Files of the new deployment that are hardlinks to objects that existed before.
    pub files_reused: u64,
    pub attempts: u32,
    pub seconds: f64,
    /// The branch points at a commit that failed its trial here before: not installed again.
    pub skipped_bad_commit: Option<String>,
    /// The release asked for a reboot (`reboot=required` in its metadata); its trial goes on
    /// after the reboot.
    pub rebooting: bool,
    /// The device is pinned: nothing was looked for or downloaded.
    pub pinned: bool,
}

/// What an update goes to.
#[derive(Debug, Clone, Copy)]
enum Goal<'a> {
    /// The channel's (or branch's) head, unless the device is pinned.
    Follow,
    /// A developer's choice: a commit id, a version, or a branch; the device is pinned after.
    Deploy(&'a str),
    /// A pinned device downloading the head's missing chunks (kept in staging for later),
    /// without deploying or switching.
    Prefetch,
}

/// Runs one check-and-update.
pub async fn update(config: &Config) -> Result<UpdateSummary> {
    update_to(config, Goal::Follow).await
}

/// On a pinned device: fetches what the channel's (or branch's) head lacks, keeps it in
/// staging, and deploys nothing; unpinned, it is an ordinary update.
pub async fn prefetch(config: &Config) -> Result<UpdateSummary> {
    update_to(config, Goal::Prefetch).await
}

/// Deploys any commit of the repository (by id, version or branch), fetching what is
/// missing, and pins the device to it.
pub async fn deploy(config: &Config, rev: &str) -> Result<UpdateSummary> {
    // A working copy or unlocked copy makes way first: the deployment it replaced is
    // current again, and the deploy goes from there.
    if state::read(config)?.dev.is_some() {
        crate::devboard::off(config)?;
    }
    update_to(config, Goal::Deploy(rev)).await
}

/// The commit a developer names: a full id, a version (exactly one commit on the server's
/// branches has it), or a branch.
async fn resolve(server: &Server, rev: &str, t: &mut Traffic) -> Result<Id> {
    if let Ok(id) = rev.parse::<Id>() {
        return Ok(id);
    }
    if ferry_store::repo::check_branch_name(rev).is_ok() {
        if let Ok(Head::At(id)) = server.branch(rev, None, t).await {
            return Ok(id);
        }
    }
    let found = server.version(rev, t).await?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(Refused(format!("{rev:?} names no commit, version or branch on the server")).into()),
        many => Err(Refused(format!(
            "version {rev} has {} commits on the server ({}); name one by id",
            many.len(),
            many.iter().map(|c| c.short()).collect::<Vec<_>>().join(", ")
        ))
        .into()),
    }
}

/// The new release was installed, failed its trial and was rolled back.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TrialFailed(pub String);

/// An error no retry can fix: untrusted or wrong content.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The commit `current_link` points at, if it is one of our deployments.
pub fn current_commit(config: &Config, local: &Local) -> Result<Option<Id>> {
    let Some(target) = ferry_boot::current_target(&config.current_link)? else { return Ok(None) };
    if target.parent() != Some(local.deploy_dir().as_path()) || !target.is_dir() {
        // A working copy or an unlocked copy stands in for the deployment it replaced.
        let state = state::read(config)?;
        return Ok(state.dev.filter(|d| d.link == target).and_then(|d| d.back_to).and_then(|b| b.parse().ok()));
    }
    Ok(target.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok()))
}

pub(crate) struct FilePlan {
    pub(crate) path: PathBuf,
    meta: Meta,
    pub(crate) chunks: Vec<ChunkRef>,
    pub(crate) object: Id,
}

struct SymlinkPlan {
    path: PathBuf,
    uid: u32,
    gid: u32,
    xattrs: Vec<Xattr>,
    target: Vec<u8>,
}

pub(crate) struct Plan {
    dirs: Vec<(PathBuf, Meta)>,
    symlinks: Vec<SymlinkPlan>,
    pub(crate) files: Vec<FilePlan>,
}

fn os(b: &[u8]) -> &std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(b)
}

fn plan(local: &Local, commit: &Commit) -> Result<Plan> {
    plan_with(&commit.root, |id| local.tree(id)?.ok_or_else(|| anyhow!("tree {id} is missing on the device")))
}

/// The deployment a commit's trees describe, reading each tree with `read`.
pub(crate) fn plan_with(root: &Id, read: impl Fn(&Id) -> Result<ferry_store::Tree>) -> Result<Plan> {
    let mut p = Plan { dirs: Vec::new(), symlinks: Vec::new(), files: Vec::new() };
    fn walk(read: &dyn Fn(&Id) -> Result<ferry_store::Tree>, id: &Id, rel: &Path, p: &mut Plan) -> Result<()> {
        if rel.components().count() > ferry_store::object::MAX_DEPTH {
            bail!("tree {id} is nested deeper than {} directories", ferry_store::object::MAX_DEPTH);
        }
        let tree = read(id)?;
        p.dirs.push((rel.to_path_buf(), tree.meta.clone()));
        for e in tree.entries {
            let path = rel.join(os(&e.name));
            match e.kind {
                EntryKind::Dir { tree } => walk(read, &tree, &path, p)?,
                EntryKind::File { meta, chunks, .. } => {
                    let object = file_object_id(&meta, &chunks);
                    p.files.push(FilePlan { path, meta, chunks, object });
                }
                EntryKind::Symlink { uid, gid, xattrs, target } => {
                    p.symlinks.push(SymlinkPlan { path, uid, gid, xattrs, target })
                }
            }
        }
        Ok(())
    }
    walk(&read, root, Path::new(""), &mut p)?;
    // The lists live through the whole update: give back what doubling over-allocated.
    p.files.shrink_to_fit();
    p.dirs.shrink_to_fit();
    p.symlinks.shrink_to_fit();
    Ok(p)
}

async fn fetch_commit(server: &Server, local: &Local, id: &Id, keys: &[PublicKey], t: &mut Traffic) -> Result<Commit> {
    if let Some(c) = local.commit(id)? {
        return Ok(c);
    }
    let (bytes, sigs) = server.commit(id, MAX_COMMIT, t).await?;
    let trusted = sigs.iter().any(|(key, sig)| keys.iter().any(|k| k.to_bytes() == *key && k.verify_commit(id, sig)));
    if !trusted {
        return Err(Refused(format!("commit {id} is not signed by a trusted key; refusing it")).into());
    }
    // Only now, with the signature checked, are the bytes decoded.
    let commit = Commit::decode(&bytes).map_err(|e| Refused(format!("commit {id} does not decode: {e}")))?;
    local.put_object(id, &bytes)?;
    crash::point("commit-stored");
    Ok(commit)
}

/// Channel mode: brings the key documents up to date, then fetches and checks the channel
/// document ([`ferry_store::channel::accept_channel`]). Returns this device's target and the
/// keys commits must be signed by. Each refusal is a [`Refused`] error and leaves the
/// channel's serial and the clock floor as they were; a newer valid key document is recorded
/// at once, the channel document once its commit passed ([`Accepted::record`]).
async fn follow_channel(
    config: &Config,
    server: &Server,
    local: &Local,
    hardware: &str,
    current: Option<Id>,
    given: Option<&[u8]>,
    t: &mut Traffic,
) -> Result<(ferry_store::channel::Target, Vec<PublicKey>, Accepted)> {
    use ferry_store::channel::{accept_channel, Envelope, Running};
    let channel = config.channel.as_deref().ok_or_else(|| anyhow!("the configuration names no channel"))?;
    let mut state = state::read_trust(config)?;
    let trust = state.trust()?;
    let chain = server.keys(t).await?;
    let chain =
        Envelope::decode_all(&chain).map_err(|e| Refused(format!("the server's key documents do not decode: {e}")))?;
    let trust_now = trust.advance_all(&chain).map_err(|e| Refused(format!("{e}; refusing it")))?;
    if trust_now != trust {
        tracing::info!(serial = trust_now.serial, "accepted a new key document");
        state.set_trust(&trust_now);
        state::save_trust(config, &state)?;
    }
    let bytes = match given {
        // From the check-in: trusted no more than one fetched on its own.
        Some(b) => b.to_vec(),
        // With a fleet server, its answer decides (a rollout may hold the head back).
        None if config.fleet.is_some() => {
            return Err(Refused(format!("the fleet server gave no document for channel {channel}")).into())
        }
        None => {
            server.channel(channel, t).await?.ok_or_else(|| Refused(format!("the server has no channel {channel}")))?
        }
    };
    let envelope = Envelope::decode(&bytes)
        .map_err(|e| Refused(format!("channel {channel}: the document does not decode: {e}")))?;
    let keys = trust_now.commit_keys.iter().map(PublicKey::from_bytes).collect::<Result<Vec<_>, _>>()?;
    // The running release's version and build time bound what is accepted: never skip them.
    let running =
        match current {
            Some(c) => Some(fetch_commit(server, local, &c, &keys, t).await.with_context(|| {
                format!("the running commit {c} is not in the device database and cannot be fetched")
            })?),
            None => None,
        };
    let clock = crate::trust::clock()?;
    let seen = state.seen(channel, running.as_ref().and_then(|c| c.timestamp), clock);
    let (doc, target) = accept_channel(
        &envelope,
        channel,
        &trust_now,
        seen,
        clock,
        &Running { version: running.as_ref().map(|c| &c.version), hardware },
    )
    .map_err(|e| Refused(format!("{e}; refusing it")))?;
    state.accept(&doc, seen, clock, &envelope.signed_by(ferry_store::Signed::Channel, &trust_now.channel_keys));
    Ok((target, keys, Accepted(state)))
}

/// A channel document that passed its checks, recorded (`trust.json`) only once the commit
/// it names passed its own: a refused target leaves the device as it was.
struct Accepted(crate::trust::TrustState);

impl Accepted {
    fn record(self, config: &Config) -> Result<()> {
        state::save_trust(config, &self.0)
    }
}

/// True if the device holds every tree under `root` (read locally, no request).
fn trees_complete(local: &Local, root: &Id) -> Result<bool> {
    let mut stack = vec![*root];
    let mut seen = HashSet::new();
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        let Some(tree) = local.tree(&id)? else { return Ok(false) };
        stack.extend(tree.entries.iter().filter_map(|e| match e.kind {
            EntryKind::Dir { tree } => Some(tree),
            _ => None,
        }));
    }
    Ok(true)
}

/// Stores a tree received from the server after checking it against its id; returns the
/// subtrees it names.
fn store_tree(local: &Local, frame: &pack::Frame) -> Result<Vec<Id>> {
    if Id::of(&frame.bytes) != frame.id {
        bail!("tree {} is corrupt: the server sent bytes that hash to {}", frame.id, Id::of(&frame.bytes));
    }
    let tree = ferry_store::Tree::decode(&frame.bytes).with_context(|| format!("tree {} does not decode", frame.id))?;
    if !local.has_object(&frame.id)? {
        local.put_object(&frame.id, &frame.bytes)?;
        crash::point("tree-stored");
    }
    Ok(tree
        .entries
        .iter()
        .filter_map(|e| match e.kind {
            EntryKind::Dir { tree } => Some(tree),
            _ => None,
        })
        .collect())
}

/// Largest compressed or decompressed trees answer the agent accepts.
pub(crate) const MAX_TREES: usize = 256 << 20;

/// Fetches every tree under `root` not under `old_root` as one zstd frame compressed
/// against the device's own old trees, and stores them. `Ok(false)`: the answer was refused
/// or did not decode (the caller asks again uncompressed); `Err`: the network failed.
async fn fetch_trees_compressed(
    server: &Server,
    local: &Local,
    root: &Id,
    old_root: &Id,
    t: &mut Traffic,
) -> Result<bool> {
    let prefix = match patch::tree_prefix(old_root, |id| {
        local.tree_bytes(id)?.ok_or_else(|| anyhow!("tree {id} is missing on the device"))
    }) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot rebuild the old trees; asking for the trees uncompressed");
            return Ok(false);
        }
    };
    // Decompressed as it arrives, each tree checked against the id its parent names as soon
    // as it is whole: a bomb or garbage stops at its first wrong frame, holding no more
    // than one piece of output and the tree being read.
    let mut inflate = match patch::PrefixDecoder::new(&prefix, MAX_TREES as u64) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot decompress trees here; asking for them uncompressed");
            return Ok(false);
        }
    };
    let mut decoder = pack::FrameDecoder::new([(*root, MAX_TREE)]);
    let mut unusable: Option<anyhow::Error> = None;
    let r = server
        .trees_compressed(root, old_root, MAX_TREES, t, |piece| {
            let r = inflate.feed(piece, |out| {
                decoder
                    .feed_expanding(out, MAX_TREE, |frame| store_tree(local, &frame))
                    .map_err(|e: anyhow::Error| std::io::Error::other(format!("{e:#}")))
            });
            r.map_err(|e| {
                let e = anyhow!("decompressing the trees: {e}");
                unusable = Some(anyhow!("{e:#}"));
                e
            })
        })
        .await;
    let unusable = match (r, unusable) {
        (_, Some(e)) => Some(e),
        (Ok(()), None) => inflate.finish().map_err(anyhow::Error::from).and_then(|()| Ok(decoder.finish()?)).err(),
        (Err(e), None) if e.downcast_ref::<Answered>().is_some() => {
            tracing::warn!(error = %format!("{e:#}"), "compressed trees refused; asking for them uncompressed");
            return Ok(false);
        }
        (Err(e), None) => return Err(e),
    };
    match unusable {
        None => Ok(true),
        Some(e) => {
            tracing::warn!(error = %format!("{e:#}"), "compressed trees unusable; asking for them uncompressed");
            Ok(false)
        }
    }
}

/// Fetches the trees of `root` the device lacks: first in one request for everything not
/// under the current deployment's root (`old_root`), compressed against the device's own
/// old trees when it has them, then, for whatever is still missing (an interrupted
/// response, a server without `/v1/trees`), one batched request per depth.
async fn fetch_trees(server: &Server, local: &Local, root: &Id, old_root: Option<Id>, t: &mut Traffic) -> Result<()> {
    if !trees_complete(local, root)? {
        let done = match &old_root {
            Some(old) => fetch_trees_compressed(server, local, root, old, t).await?,
            None => false,
        };
        if !done {
            let r = server.trees(root, old_root.as_ref(), MAX_TREE, t, |frame| store_tree(local, &frame)).await;
            match r {
                Ok(()) => {}
                Err(e) if e.downcast_ref::<Answered>().is_some() => {
                    tracing::warn!(error = %format!("{e:#}"), "the server cannot send trees in one request; asking level by level");
                }
                Err(e) => return Err(e),
            }
        }
    }
    let mut level = vec![*root];
    while !level.is_empty() {
        let mut missing = Vec::new();
        for id in &level {
            if !local.has_object(id)? {
                missing.push((*id, MAX_TREE));
            }
        }
        for batch in missing.chunks(MAX_IDS_PER_REQUEST) {
            server.pack("objects", batch, t, |frame| store_tree(local, &frame).map(|_| ())).await?;
        }
        let mut next = Vec::new();
        for id in &level {
            let tree = local.tree(id)?.ok_or_else(|| anyhow!("tree {id} is missing on the device"))?;
            next.extend(tree.entries.iter().filter_map(|e| match e.kind {
                EntryKind::Dir { tree } => Some(tree),
                _ => None,
            }));
        }
        next.sort();
        next.dedup();
        level = next;
    }
    Ok(())
}

pub(crate) fn stage_chunk(local: &Local, id: &Id, frame: &[u8], len: u32) -> Result<()> {
    ferry_store::chunk::decode_chunk(id, frame, len).map_err(|e| anyhow!("{e} (as sent by the server)"))?;
    let path = local.staging_path(id);
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, frame).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    crash::point("chunk-staged");
    Ok(())
}

/// How often chunks staged during a batch are made durable (`syncfs`).
pub(crate) const STAGING_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Makes the staged chunks durable.
pub(crate) fn sync_staging(local: &Local) {
    if let Ok(dir) = fs::File::open(local.layout.staging()) {
        let _ = nix::unistd::syncfs(&dir);
    }
}

/// Downloads `missing` (id → length) into staging; returns the number of chunk frames and
/// their bytes received, even when some batches failed (the error comes last).
async fn fetch_chunks(
    server: &Server,
    local: &Local,
    missing: &[(Id, u32)],
    config: &Config,
    t: &mut Traffic,
) -> (u64, u64, Result<()>) {
    let mut batches: Vec<Vec<(Id, u32)>> = Vec::new();
    let mut current: Vec<(Id, u32)> = Vec::new();
    let mut bytes = 0u64;
    for &(id, len) in missing {
        if current.len() == MAX_IDS_PER_REQUEST || (bytes + u64::from(len) > config.batch_bytes && !current.is_empty())
        {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += u64::from(len);
        current.push((id, len));
    }
    if !current.is_empty() {
        batches.push(current);
    }
    let results: Vec<(Traffic, u64, u64, Result<()>)> = futures_util::stream::iter(batches)
        .map(|batch| async move {
            let lens: HashMap<Id, u32> = batch.iter().copied().collect();
            let expected: Vec<(Id, u32)> = batch.iter().map(|(id, len)| (*id, pack::max_stored_len(*len))).collect();
            let mut t = Traffic::default();
            let (mut n, mut b) = (0u64, 0u64);
            let mut synced = Instant::now();
            let r = server
                .pack("chunks", &expected, &mut t, |frame| {
                    let len = lens.get(&frame.id).copied().unwrap_or(0);
                    stage_chunk(local, &frame.id, &frame.bytes, len)?;
                    // A power cut loses at most about a second of a batch, not all of it.
                    if synced.elapsed() >= STAGING_SYNC_INTERVAL {
                        sync_staging(local);
                        synced = Instant::now();
                    }
                    n += 1;
                    b += (frame.bytes.len() + pack::FRAME_HEADER) as u64;
                    Ok(())
                })
                .await;
            // Make what arrived durable, whether or not the batch completed.
            sync_staging(local);
            (t, n, b, r)
        })
        .buffer_unordered(config.concurrency.max(1))
        .collect()
        .await;
    let (mut n, mut b, mut first_err) = (0, 0, None);
    for (bt, bn, bb, r) in results {
        t.requests += bt.requests;
        t.bytes += bt.bytes;
        n += bn;
        b += bb;
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    (n, b, first_err.map_or(Ok(()), Err))
}

/// What to fetch: patches against files the device holds, and plain chunks.
struct FetchPlan {
    patches: Vec<Patch>,
    plain: Vec<(Id, u32)>,
}

/// Splits `missing` into patches against the current deployment's files (the rule of
/// `ferry_delta::patch::plan_patches`, which the server and `ferry diff` share) and plain
/// chunks. A patch whose reference chunks the device does not hold is fetched plain.
fn plan_fetch(
    config: &Config,
    local: &Local,
    current: Option<Id>,
    new: &Plan,
    missing: &[(Id, u32)],
) -> Result<FetchPlan> {
    let plain_only = || FetchPlan { patches: Vec::new(), plain: missing.to_vec() };
    if !config.patches || missing.is_empty() {
        return Ok(plain_only());
    }
    let Some(old) = current.map(|c| local.commit(&c)).transpose()?.flatten() else { return Ok(plain_only()) };
    let read = |id: &Id| local.tree(id)?.ok_or_else(|| anyhow!("tree {id} is missing on the device"));
    let old_files = match patch::walk_files(&old.root, read) {
        Ok(files) => files,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot list the current deployment's files; fetching plain chunks");
            return Ok(plain_only());
        }
    };
    let wanted: HashSet<Id> = missing.iter().map(|(id, _)| *id).collect();
    // The new commit's files in walk order: `plan` walked its trees the way `walk_files` does.
    use std::os::unix::ffi::OsStrExt;
    let new_files = new.files.iter().map(|f| (f.path.as_os_str().as_bytes(), f.chunks.as_slice()));
    let planned = patch::plan_patches_by_ref(&old_files, new_files, |id| wanted.contains(id));
    let mut out = FetchPlan { patches: Vec::new(), plain: planned.plain.iter().map(|c| (c.id, c.len)).collect() };
    for p in planned.patches {
        let mut held = true;
        for c in &p.reference {
            held &= local.has_chunk(&c.id)?;
        }
        if held {
            out.patches.push(p);
        } else {
            out.plain.extend(p.target.iter().map(|c| (c.id, c.len)));
        }
    }
    Ok(out)
}

/// Stages a chunk rebuilt from a patch: its bytes are checked against its id, then stored
/// as a zstd frame like a downloaded chunk.
fn stage_raw(local: &Local, id: &Id, bytes: &[u8]) -> Result<()> {
    if Id::of(bytes) != *id {
        bail!("the patch rebuilt chunk {id} wrongly (its bytes hash to {})", Id::of(bytes));
    }
    let frame = zstd::bulk::compress(bytes, 1).context("compressing a patched chunk")?;
    let path = local.staging_path(id);
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, &frame).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    crash::point("chunk-staged");
    Ok(())
}

/// Applies one patch answer: the reference is rebuilt from the device's own chunks, each
/// verified as it is read; every resulting chunk is verified before it is staged. `staged`
/// counts the chunks staged, also when a later one fails.
fn apply_patch(local: &Local, p: &Patch, answer: &[u8], staged: &mut u64) -> Result<()> {
    let mut reference = Some(Vec::with_capacity(p.reference_len() as usize));
    for c in &p.reference {
        match local.read_chunk(&c.id, c.len)? {
            Some(bytes) => {
                if let Some(r) = reference.as_mut() {
                    r.extend_from_slice(&bytes);
                }
            }
            None => {
                tracing::warn!(chunk = %c.id, "a reference chunk is missing or damaged on the device");
                reference = None;
                break;
            }
        }
    }
    match patch::decode_patch_response(p, reference.as_deref(), answer)? {
        PatchPayload::Patched(bytes) => {
            let mut offset = 0usize;
            for c in &p.target {
                let end = offset + c.len as usize;
                stage_raw(local, &c.id, &bytes[offset..end])?;
                *staged += 1;
                offset = end;
            }
        }
        PatchPayload::Plain(frames) => {
            for (c, frame) in p.target.iter().zip(frames) {
                stage_chunk(local, &c.id, frame, c.len)?;
                *staged += 1;
            }
        }
    }
    Ok(())
}

/// What fetching patches did.
#[derive(Default)]
struct PatchOutcome {
    chunks: u64,
    bytes: u64,
    /// Chunks to fetch plain instead.
    fallback: Vec<(Id, u32)>,
}

/// Fetches `patches` in batched requests, one at a time: the server computes ahead in
/// parallel, and the device holds one patch's window, answer and output at once, which
/// keeps its memory bounded (about 16 MiB above the rest). A patch that cannot be
/// used, or a batch the server refuses, turns into plain chunks (in the outcome's
/// `fallback`); a broken connection is an error, and the next attempt plans again with
/// what is still missing.
async fn fetch_patches(
    server: &Server,
    local: &Local,
    patches: &[Patch],
    config: &Config,
    t: &mut Traffic,
) -> (PatchOutcome, Result<()>) {
    let mut batches: Vec<Vec<&Patch>> = Vec::new();
    let mut current: Vec<&Patch> = Vec::new();
    let (mut ids, mut bytes) = (0usize, 0u64);
    for p in patches {
        let (p_ids, p_bytes) = (p.reference.len() + p.target.len(), p.target_len());
        if !current.is_empty()
            && (current.len() == patch::MAX_PATCHES_PER_REQUEST
                || ids + p_ids > patch::MAX_PATCH_IDS
                || bytes + p_bytes > config.batch_bytes.min(patch::MAX_REQUEST_TARGET_BYTES))
        {
            batches.push(std::mem::take(&mut current));
            (ids, bytes) = (0, 0);
        }
        ids += p_ids;
        bytes += p_bytes;
        current.push(p);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    let results: Vec<(Traffic, PatchOutcome, Result<()>)> = futures_util::stream::iter(batches)
        .map(|batch| async move {
            let by_key: HashMap<Id, &Patch> = batch.iter().map(|p| (p.key(), *p)).collect();
            let expected: Vec<(Id, u32)> = batch.iter().map(|p| (p.key(), p.max_response_len())).collect();
            let body = patch::encode_patch_request(batch.iter().copied());
            let mut t = Traffic::default();
            let mut out = PatchOutcome::default();
            let mut received: HashSet<Id> = HashSet::new();
            let mut synced = Instant::now();
            let r = server
                .post_pack("patches", body, &expected, &mut t, |frame| {
                    let Some(p) = by_key.get(&frame.id) else { bail!("the server sent patch {} unasked", frame.id) };
                    received.insert(frame.id);
                    out.bytes += (frame.bytes.len() + pack::FRAME_HEADER) as u64;
                    let mut staged = 0;
                    let applied = apply_patch(local, p, &frame.bytes, &mut staged);
                    out.chunks += staged;
                    match applied {
                        Ok(()) => {}
                        Err(e) => {
                            tracing::warn!(patch = %frame.id, error = %format!("{e:#}"), "patch unusable; fetching its chunks plain");
                            out.fallback.extend(p.target.iter().filter(|c| !local.staging_path(&c.id).exists()).map(|c| (c.id, c.len)));
                        }
                    }
                    if synced.elapsed() >= STAGING_SYNC_INTERVAL {
                        sync_staging(local);
                        synced = Instant::now();
                    }
                    Ok(())
                })
                .await;
            sync_staging(local);
            let r = match r {
                Err(e) if e.downcast_ref::<Answered>().is_some() => {
                    tracing::warn!(error = %format!("{e:#}"), "the server refused patches; fetching their chunks plain");
                    for p in batch.iter().filter(|p| !received.contains(&p.key())) {
                        out.fallback.extend(p.target.iter().map(|c| (c.id, c.len)));
                    }
                    Ok(())
                }
                r => r,
            };
            (t, out, r)
        })
        .buffer_unordered(1)
        .collect()
        .await;
    let mut total = PatchOutcome::default();
    let mut first_err = None;
    for (bt, o, r) in results {
        t.requests += bt.requests;
        t.bytes += bt.bytes;
        total.chunks += o.chunks;
        total.bytes += o.bytes;
        total.fallback.extend(o.fallback);
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    (total, first_err.map_or(Ok(()), Err))
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn apply_meta(path: &Path, file: &fs::File, meta: &Meta) -> Result<()> {
    if is_root() {
        std::os::unix::fs::fchown(file, Some(meta.uid), Some(meta.gid))
            .with_context(|| format!("setting owner of {}", path.display()))?;
    }
    for x in &meta.xattrs {
        xattr::set(path, os(&x.name), &x.value).with_context(|| format!("setting xattrs on {}", path.display()))?;
    }
    file.set_permissions(fs::Permissions::from_mode(meta.mode))
        .with_context(|| format!("setting mode of {}", path.display()))
}

/// Builds a file object from local chunks. A chunk missing or damaged on the device is
/// forgotten and reported, so the next attempt downloads it.
fn build_object(local: &Local, f: &FilePlan) -> Result<()> {
    let path = local.object_path(&f.object);
    let tmp = path.with_extension("tmp");
    let mut out = fs::File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    for c in &f.chunks {
        let Some(bytes) = local.read_chunk(&c.id, c.len)? else {
            drop(out);
            let _ = fs::remove_file(&tmp);
            bail!(
                "chunk {} of {} is missing or damaged on the device; it will be downloaded again",
                c.id,
                f.path.display()
            );
        };
        out.write_all(&bytes).with_context(|| format!("writing {}", tmp.display()))?;
    }
    apply_meta(&tmp, &out, &f.meta)?;
    out.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("renaming {}", tmp.display()))?;
    local.index_object(&f.object, &f.chunks)?;
    crash::point("object-written");
    Ok(())
}

/// Refuses the update before anything is downloaded if the state directory's file system
/// cannot hold it: the chunks still to download (their uncompressed size bounds the staged
/// frames), the new file objects, and `min_free_bytes` of headroom.
pub(crate) fn check_space(config: &Config, local: &Local, p: &Plan, missing: &[(Id, u32)]) -> Result<()> {
    let mut seen = HashSet::new();
    let objects: u64 = p
        .files
        .iter()
        .filter(|f| seen.insert(f.object) && !local.object_path(&f.object).exists())
        .map(|f| f.chunks.iter().map(|c| u64::from(c.len)).sum::<u64>())
        .sum();
    let staging: u64 = missing.iter().map(|(_, len)| u64::from(*len)).sum();
    let need = objects + staging + config.min_free_bytes;
    let root = local.layout.root();
    let st = nix::sys::statvfs::statvfs(root).with_context(|| format!("checking free space on {}", root.display()))?;
    let free = st.blocks_available().saturating_mul(st.fragment_size());
    if need > free {
        return Err(Refused(format!(
            "not enough space on {}: the update needs {} MiB ({} MiB of new files, {} MiB to download, {} MiB kept free) and {} MiB are available; nothing was changed",
            root.display(),
            need >> 20,
            objects >> 20,
            staging >> 20,
            config.min_free_bytes >> 20,
            free >> 20
        ))
        .into());
    }
    Ok(())
}

/// Builds `deploy/<id>` (if not already complete). Returns (files, files reused).
pub(crate) fn assemble(local: &Local, id: &Id, p: &Plan) -> Result<(u64, u64)> {
    let final_dir = local.deploy_dir().join(id.to_hex());
    if final_dir.is_dir() {
        return Ok((p.files.len() as u64, p.files.len() as u64));
    }
    let tmp = local.deploy_dir().join(format!("{}.tmp-{}", id.to_hex(), std::process::id()));
    if tmp.exists() {
        make_writable(&tmp);
        fs::remove_dir_all(&tmp)?;
    }
    let mut reused = 0;
    for (rel, _) in &p.dirs {
        let d = tmp.join(rel);
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    for l in &p.symlinks {
        let path = tmp.join(&l.path);
        symlink(os(&l.target), &path).with_context(|| format!("creating {}", path.display()))?;
        if is_root() {
            std::os::unix::fs::lchown(&path, Some(l.uid), Some(l.gid))?;
        }
        for x in &l.xattrs {
            xattr::set(&path, os(&x.name), &x.value)?;
        }
    }
    // Objects the device lacks, each built once (two files may share one), in parallel:
    // building is reading, verifying, writing and fsyncing, and the fsyncs overlap.
    let mut missing: HashMap<Id, &FilePlan> = HashMap::new();
    for f in &p.files {
        if local.object_path(&f.object).exists() {
            reused += 1;
        } else {
            missing.entry(f.object).or_insert(f);
        }
    }
    {
        use rayon::prelude::*;
        let todo: Vec<&FilePlan> = missing.into_values().collect();
        todo.par_iter().try_for_each(|f| build_object(local, f))?;
    }
    for f in &p.files {
        let object = local.object_path(&f.object);
        let dest = tmp.join(&f.path);
        fs::hard_link(&object, &dest).with_context(|| format!("linking {} to {}", dest.display(), object.display()))?;
    }
    for (rel, meta) in p.dirs.iter().rev() {
        let d = tmp.join(rel);
        let handle = fs::File::open(&d).with_context(|| format!("opening {}", d.display()))?;
        apply_meta(&d, &handle, meta)?;
    }
    let deploy = fs::File::open(local.deploy_dir())?;
    nix::unistd::syncfs(&deploy).context("syncing the new deployment")?;
    fs::rename(&tmp, &final_dir).with_context(|| format!("completing {}", final_dir.display()))?;
    deploy.sync_all().context("syncing the deployment directory")?;
    crash::point("deployment-complete");
    Ok((p.files.len() as u64, reused))
}

/// Removes deployments other than `keep`, objects no deployment links to, staged chunks,
/// index entries of removed objects, and trees and commits of removed deployments.
pub fn collect_garbage(local: &Local, keep: &[Id]) -> Result<()> {
    let keep_names: HashSet<String> = keep.iter().map(|k| k.to_hex()).collect();
    for e in fs::read_dir(local.deploy_dir())? {
        let e = e?;
        if !keep_names.contains(&*e.file_name().to_string_lossy()) {
            make_writable(&e.path());
            fs::remove_dir_all(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    use std::os::unix::fs::MetadataExt;
    for e in fs::read_dir(local.layout.objects())? {
        let e = e?;
        if e.metadata()?.nlink() <= 1 {
            fs::remove_file(e.path())?;
        }
    }
    for e in fs::read_dir(local.layout.staging())? {
        fs::remove_file(e?.path())?;
    }
    local.prune_index()?;
    let mut objects = HashSet::new();
    for id in keep {
        if let Some(c) = local.commit(id)? {
            objects.insert(*id);
            let mut stack = vec![c.root];
            while let Some(t) = stack.pop() {
                if objects.insert(t) {
                    if let Some(tree) = local.tree(&t)? {
                        stack.extend(tree.entries.iter().filter_map(|e| match e.kind {
                            EntryKind::Dir { tree } => Some(tree),
                            _ => None,
                        }));
                    }
                }
            }
        }
    }
    local.retain_objects(&objects)?;
    local.sync()?;
    crash::point("gc");
    Ok(())
}

/// Switches to the built deployment `head` and tries it: the pre-switch hook, the trial
/// made durable, the atomic switch, the restart, the post-switch hook and the health
/// checks, rolling back on a failure (a [`TrialFailed`] error). Returns true if the release
/// asked for a reboot (its trial goes on after it). Network updates and bundles share it.
pub(crate) async fn install(
    config: &Config,
    local: &Local,
    head: Id,
    commit: &Commit,
    current: Option<Id>,
) -> Result<bool> {
    let (new_hex, old_hex) = (head.to_hex(), current.map(|c| c.to_hex()));
    let version = commit.version.to_string();
    if let Err(e) = crate::trial::hook(config, crate::trial::Hook::PreSwitch, &new_hex, &version, old_hex.as_deref()) {
        // Nothing was switched; the release is not tried again.
        state::change(config, |s| {
            s.mark_bad(&new_hex);
            s.record(Outcome::Aborted, Some(format!("release {version} ({new_hex}) not installed: {e:#}")));
        })?;
        collect_garbage(local, &current.into_iter().collect::<Vec<_>>())?;
        return Err(TrialFailed(format!("release {version} ({new_hex}) not installed: {e:#}")).into());
    }
    // The trial is durable before the switch, so a crash after it is finished at restart.
    crate::trial::begin(config, &new_hex, old_hex.clone())?;
    ferry_boot::switch_symlink(&config.current_link, &local.deploy_dir().join(head.to_hex()))?;
    crash::point("switched");
    crate::trial::mark_switched(config)?;
    // An unlocked copy the switch replaced goes (unless it is to be kept).
    if let Ok(st) = state::read(config) {
        crate::devboard::drop_unlocked(&st, config)?;
    }
    state::change(config, |s| {
        s.dev = None;
        s.previous = current.map(|c| c.to_hex());
        s.record_attempt(Outcome::Ok, None);
    })?;
    crash::point("state-saved");
    if commit.metadata.get("reboot").map(String::as_str) == Some("required") {
        // Firmware or kernel changed: the trial continues after the reboot.
        let keep: Vec<Id> = std::iter::once(head).chain(current).collect();
        collect_garbage(local, &keep)?;
        crate::trial::reboot(config)?;
        return Ok(true);
    }
    if let Err(e) = crate::trial::restart(config) {
        // The health checks decide: a deployment that cannot start fails them.
        tracing::warn!(error = %format!("{e:#}"), "restart after the switch failed");
    }
    // After a failed trial the device runs `current` again, or, with nothing to go back
    // to, still the failed release (which the collection must then keep).
    let failed = |reason: String| -> Result<bool> {
        collect_garbage(local, &[current.unwrap_or(head)])?;
        Err(TrialFailed(match current {
            Some(c) => format!("release {version} ({head}) failed its trial and was rolled back to {c}: {reason}"),
            None => format!(
                "release {version} ({head}) failed its trial; there is no earlier deployment to roll back to, so it stays, marked bad, until a newer release: {reason}"
            ),
        })
        .into())
    };
    if let Err(e) = crate::trial::hook(config, crate::trial::Hook::PostSwitch, &new_hex, &version, old_hex.as_deref()) {
        let reason = format!("{e:#}");
        crate::trial::rollback(config, &reason)?;
        return failed(reason);
    }
    if let Some(crate::trial::Outcome::RolledBack(reason)) = crate::trial::run(config).await? {
        return failed(reason);
    }
    let keep: Vec<Id> = std::iter::once(head).chain(current).collect();
    collect_garbage(local, &keep)?;
    Ok(false)
}

/// Branch mode: a head older than the running commit is refused. The server names a
/// branch's head without a signature, so it could otherwise serve any commit the trusted
/// keys ever signed, from any branch, however old (`allow_downgrade` or `ferryd deploy`
/// for a developer who means it).
fn refuse_branch_downgrade(local: &Local, current: Option<Id>, head: &Id, commit: &Commit) -> Result<()> {
    let Some(running) = current.map(|c| local.commit(&c)).transpose()?.flatten() else { return Ok(()) };
    match commit.version.compare(&running.version) {
        Some(std::cmp::Ordering::Less) => Err(Refused(format!(
            "the branch's head {head} is version {}, older than the running {}; refusing a downgrade (set allow_downgrade = true, or `ferryd deploy` it)",
            commit.version, running.version
        ))
        .into()),
        None => Err(Refused(format!(
            "the branch's head {head} is version {}, which cannot be ordered against the running {}; refusing it (set allow_downgrade = true, or `ferryd deploy` it)",
            commit.version, running.version
        ))
        .into()),
        _ => Ok(()),
    }
}

async fn update_to(config: &Config, goal: Goal<'_>) -> Result<UpdateSummary> {
    let started = Instant::now();
    if config.channel.is_none() {
        tracing::warn!(
            "following branch {} (development mode): any commit the trusted keys signed is installed, without a channel document's expiry, rollout and rollback rules; devices in the field follow a channel",
            config.branch.as_deref().unwrap_or("?")
        );
    }
    let keys = if config.channel.is_some() { Vec::new() } else { config.keys()? };
    let hardware = config.hardware_revision()?;
    let local = Local::open(&config.state_dir)?;
    let server = Server::new(&config.server, Duration::from_secs(config.read_timeout))?;
    // A trial interrupted by a crash or a reboot is finished before anything else.
    if let Some(outcome) = crate::trial::run(config).await? {
        tracing::info!(?outcome, "finished a pending trial");
    }
    let state = state::read(config)?;
    let bad = state.bad_commits.clone();
    let mut skipped: Option<Id> = None;
    let current = current_commit(config, &local)?;
    let mut s = UpdateSummary { from: current.map(|c| c.to_hex()), ..Default::default() };
    let mut t = Traffic::default();

    let result = async {
        // With a fleet server: report first; the answer carries the channel's document.
        let checked_in = crate::fleet::check_in(config, &server, &mut t).await?;
        // A fleet server serves the repository to its devices only.
        let server = match &checked_in.token {
            Some(token) => server.clone().with_token(token),
            None => server.clone(),
        };
        if matches!(goal, Goal::Follow) && state.pinned {
            s.pinned = true;
            return Ok(None);
        }
        let _reporter = crate::fleet::Reporter::start(config, &server);
        let mut attempt = 0;
        let (head, commit, files, reused) = loop {
            attempt += 1;
            s.attempts = attempt;
            let r: Result<Option<(Id, Commit, u64, u64)>> = async {
                let (head, target, keys, accepted) = match (goal, &config.channel, &config.branch) {
                    (Goal::Deploy(rev), channel, _) => {
                        let keys = if channel.is_some() {
                            // The commit keys of the newest key document this device accepted.
                            let trust = state::read_trust(config)?.trust()?;
                            if trust.serial == 0 {
                                return Err(Refused(
                                    "this device has not accepted a key document yet: run `ferryd update` once".into(),
                                )
                                .into());
                            }
                            trust.commit_keys.iter().map(PublicKey::from_bytes).collect::<Result<Vec<_>, _>>()?
                        } else {
                            keys.clone()
                        };
                        (resolve(&server, rev, &mut t).await?, None, keys, None)
                    }
                    (Goal::Follow | Goal::Prefetch, ..) => match (&config.channel, &config.branch) {
                        (Some(_), _) => {
                            let hw = hardware.as_deref().ok_or_else(|| anyhow!("no hardware revision configured"))?;
                            let given = checked_in.channel_document.as_deref();
                            let (target, keys, accepted) =
                                follow_channel(config, &server, &local, hw, current, given, &mut t).await?;
                            (target.commit, Some(target), keys, Some(accepted))
                        }
                        (None, Some(branch)) => match server.branch(branch, current, &mut t).await? {
                            Head::Unchanged => return Ok(None),
                            Head::At(id) => (id, None, keys.clone(), None),
                        },
                        (None, None) => bail!("the configuration names no channel or branch"),
                    },
                };
                let deploying = matches!(goal, Goal::Deploy(_));
                if Some(head) == current || (bad.contains(&head.to_hex()) && !deploying) {
                    if let Some(a) = accepted {
                        a.record(config)?;
                    }
                    if Some(head) != current {
                        skipped = Some(head);
                    }
                    return Ok(None);
                }
                let commit = fetch_commit(&server, &local, &head, &keys, &mut t).await?;
                if target.is_none() && !deploying && !config.allow_downgrade {
                    refuse_branch_downgrade(&local, current, &head, &commit)?;
                }
                match (&target, &hardware) {
                    (Some(target), Some(hw)) => {
                        ferry_store::channel::check_target_commit(target, &commit, hw)
                            .map_err(|e| Refused(format!("{e}; refusing it")))?;
                        if let Some(a) = accepted {
                            a.record(config)?;
                        }
                    }
                    (None, Some(hw)) if !commit.hardware.is_empty() && !commit.hardware.contains(hw) => {
                        return Err(Refused(format!(
                            "commit {head} is built for {} only, not for this device's {hw}; refusing it",
                            commit.hardware.join(", ")
                        ))
                        .into());
                    }
                    _ => {}
                }
                let old_root = match current {
                    Some(c) => local.commit(&c)?.map(|c| c.root),
                    None => None,
                };
                fetch_trees(&server, &local, &commit.root, old_root, &mut t).await?;
                let p = plan(&local, &commit)?;
                let mut needed: HashMap<Id, u32> = HashMap::new();
                let mut all: HashSet<Id> = HashSet::new();
                for f in &p.files {
                    all.extend(f.chunks.iter().map(|c| c.id));
                    if !local.object_path(&f.object).exists() {
                        for c in &f.chunks {
                            if !local.has_intact_chunk(&c.id, c.len)? {
                                needed.insert(c.id, c.len);
                            }
                        }
                    }
                }
                let mut missing: Vec<(Id, u32)> = needed.into_iter().collect();
                missing.sort();
                check_space(config, &local, &p, &missing)?;
                let staged_before = fs::read_dir(local.layout.staging()).map_or(0, |d| d.count() as u64);
                crate::fleet::set_progress_total(missing.len() as u64, staged_before);
                let plan = plan_fetch(config, &local, current, &p, &missing)?;
                crate::release_free_memory();
                let (patched, r) = fetch_patches(&server, &local, &plan.patches, config, &mut t).await;
                s.patches += plan.patches.len() as u64;
                s.chunks_downloaded += patched.chunks;
                s.chunks_patched += patched.chunks;
                s.chunk_bytes_downloaded += patched.bytes;
                s.patch_fallbacks += patched.fallback.len() as u64;
                r?;
                let mut plain = plan.plain;
                plain.extend(patched.fallback);
                let (n, b, r) = fetch_chunks(&server, &local, &plain, config, &mut t).await;
                s.chunks_downloaded += n;
                s.chunk_bytes_downloaded += b;
                r?;
                s.chunks_reused = (all.len() as u64).saturating_sub(s.chunks_downloaded);
                if matches!(goal, Goal::Prefetch) && state.pinned {
                    // Everything is staged for when the device is unpinned; nothing deployed.
                    s.pinned = true;
                    return Ok(None);
                }
                let (files, reused) = assemble(&local, &head, &p)?;
                Ok(Some((head, commit, files, reused)))
            }
            .await;
            match r {
                Ok(Some(done)) => break done,
                Ok(None) => return Ok(None),
                Err(e) if e.is::<Refused>() || attempt >= config.retries => return Err(e),
                Err(e) => {
                    let wait = Duration::from_millis(250 << attempt.min(6));
                    tracing::warn!(attempt, error = %format!("{e:#}"), "update attempt failed; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        s.rebooting = install(config, &local, head, &commit, current).await?;
        Ok(Some((head, commit, files, reused)))
    }
    .await;

    s.requests = t.requests;
    s.bytes_downloaded = t.bytes;
    s.seconds = started.elapsed().as_secs_f64();
    s.skipped_bad_commit = skipped.map(|id| id.to_hex());
    let out = match result {
        Ok(Some((head, commit, files, reused))) => {
            s.to = head.to_hex();
            s.version = commit.version.to_string();
            s.files = files;
            s.files_reused = reused;
            if matches!(goal, Goal::Deploy(_)) {
                state::change(config, |st| st.pinned = true)?;
                s.pinned = true;
            }
            Ok(s)
        }
        Ok(None) => {
            let c = current.ok_or_else(|| anyhow!("the server reports no change but the device has no deployment"))?;
            s.up_to_date = true;
            s.to = c.to_hex();
            s.version = local.commit(&c)?.map(|c| c.version.to_string()).unwrap_or_default();
            let deploying = matches!(goal, Goal::Deploy(_));
            let outcome = if s.pinned { Outcome::Pinned } else { Outcome::UpToDate };
            state::change(config, |st| {
                st.record_attempt(outcome, None);
                st.pinned |= deploying;
            })?;
            s.pinned |= deploying;
            Ok(s)
        }
        Err(e) if e.is::<TrialFailed>() => Err(e),
        Err(e) => {
            let _ = state::record_attempt(config, Outcome::Error, Some(format!("{e:#}")));
            Err(e)
        }
    };
    // Tell the fleet server how it went (not counted in the update's own traffic).
    if config.fleet.is_some() {
        drop(local);
        if let Err(e) = crate::fleet::check_in(config, &server, &mut Traffic::default()).await {
            tracing::warn!(error = %format!("{e:#}"), "reporting the update's outcome to the fleet server");
        }
    }
    out
}
