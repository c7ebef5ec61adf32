//! `ferry export`: the repository as static files, for any static web server, CDN or
//! S3-compatible store to serve beside (or instead of) `ferry serve`'s content routes.
//!
//! The layout mirrors the server's GET paths under `v1/`, so a device's `content_url` is the
//! export's root as `server` is the server's:
//!
//! ```text
//! v1/objects/<id>          commit and tree objects, canonical bytes       immutable
//! v1/packs/<id>            chunk frames, named by the BLAKE3 of the pack  immutable
//! v1/index/<commit>        where each chunk of the commit lies (FRYX)     immutable
//! v1/deltas/<from>/<to>    where each prepared patch, and each chunk no   immutable
//!                          patch covers, lies (FRYX)
//! v1/commits/<id>          the commit with its signatures (JSON)          short-lived
//! v1/versions/<version>    the commits of a version (JSON)                short-lived
//! v1/branches/<name>       the branch head (JSON)                         short-lived
//! v1/channels/<name>       the channel's newest signed document           short-lived
//! v1/keys                  the key documents, oldest first                short-lived
//! ```
//!
//! Order is what keeps readers safe: for each commit not exported yet (oldest first), its
//! objects, then its new packs, then its index; the mutable documents come last, so a head
//! never names a commit whose index is not there. A commit whose index is at the destination
//! was exported whole and is skipped, so a re-run writes nothing new and an interrupted run,
//! re-run, completes: packs are laid out deterministically (the same chunks in the same
//! order give the same pack and name), so a pack written before the interruption is found
//! and not written again. Nothing is ever deleted.
//!
//! Prepared patches: for each release (a branch head or a channel target) and each commit a
//! device may run before it (its previous commits on its branch, and the commits a fleet's
//! devices report), the patches a device on that commit plans (`ferry_delta::patch`, the
//! plan every device and the server share) are computed at the server's level, all cores,
//! and stored as frames in packs, named by their patch key, with an index under
//! `v1/deltas/<from>/<to>`: a device reads the ones it planned in a few ranges.
//!
//! Chunks are laid out in the order the commit's files name them, each stored once: a
//! commit's new chunks follow each other in its new packs, so a device updating from the
//! previous release reads them in few ranges. The chunks a commit shares with its parent
//! keep their parent's places (read back from the parent's index when an earlier run
//! exported it).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use ferry_api::repo::{BranchHead, Signature, SignedCommit, VersionCommits};
use ferry_delta::content::{delta_id, ContentIndex, PackWriter, Placement};
use ferry_delta::patch;
use ferry_store::read::{walk, Walked};
use ferry_store::{Commit, EntryKind, Id, Repository};
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as StorePath;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use rayon::prelude::*;

use crate::import::Progress;

/// Packs close once they reach this size: large enough that a release's new chunks take
/// few packs (and a device few requests), small enough to hold one in memory while it is
/// written.
pub const PACK_TARGET: usize = 32 << 20;

/// Cache-Control for files whose name is their content.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Cache-Control for heads and documents: caches ask the origin each time (devices protect
/// themselves with serials and expiry; a stale head only delays an update).
const MUTABLE: &str = "no-cache";

/// Objects written at once.
const CONCURRENCY: usize = 8;

/// Where an export goes: a local directory or an S3 bucket (and prefix).
#[derive(Debug)]
pub struct Destination {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// Whether the store keeps Cache-Control with each object (S3 does; a local directory
    /// leaves it to the web server's configuration, see `packaging/nginx/`).
    attributes: bool,
    /// As the user named it, for messages.
    pub name: String,
}

impl Destination {
    /// `s3://BUCKET[/PREFIX]` (credentials, region and endpoint from the usual `AWS_*`
    /// variables, e.g. `AWS_ENDPOINT` and `AWS_ALLOW_HTTP=true` for a local S3 server), or a
    /// directory, created if missing (files are written through a temporary file, synced and
    /// renamed).
    pub fn open(to: &str) -> Result<Destination> {
        Destination::open_with(to, None)
    }

    /// [`Destination::open`] for a server's shared patch store: every S3 request is given
    /// `wait` and retried once at most (a slow store must not hold a device's answer).
    pub fn open_quick(to: &str, wait: std::time::Duration) -> Result<Destination> {
        Destination::open_with(to, Some(wait))
    }

    fn open_with(to: &str, quick: Option<std::time::Duration>) -> Result<Destination> {
        if let Some(rest) = to.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!("--to {to:?} names no bucket: write s3://BUCKET or s3://BUCKET/PREFIX");
            }
            // object_store's HTTPS client needs a process-wide rustls provider: ring, as
            // everywhere in Ferry. Installing it twice is harmless.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Some(wait) = quick {
                builder = builder
                    .with_client_options(
                        object_store::ClientOptions::new().with_timeout(wait).with_connect_timeout(wait),
                    )
                    .with_retry(object_store::RetryConfig {
                        max_retries: 1,
                        retry_timeout: wait,
                        ..Default::default()
                    });
            }
            let store = builder
                .build()
                .with_context(|| format!("setting up S3 bucket {bucket:?} (from the AWS_* variables)"))?;
            return Ok(Destination {
                store: Arc::new(store),
                prefix: prefix.trim_matches('/').to_string(),
                attributes: true,
                name: to.to_string(),
            });
        }
        if to.contains("://") {
            bail!("--to {to:?}: only s3:// URLs and directories are supported");
        }
        let dir = std::path::Path::new(to);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .with_context(|| format!("opening {}", dir.display()))?
            .with_fsync(true);
        Ok(Destination { store: Arc::new(store), prefix: String::new(), attributes: false, name: to.to_string() })
    }

    fn path(&self, name: &str) -> StorePath {
        if self.prefix.is_empty() {
            StorePath::from(name)
        } else {
            StorePath::from(format!("{}/{name}", self.prefix))
        }
    }

    /// The names under `v1/<dir>/` with their sizes.
    async fn list(&self, dir: &str) -> Result<HashMap<String, u64>> {
        let base = self.path(&format!("v1/{dir}"));
        let skip = base.as_ref().len() + 1;
        let found: Vec<_> = self
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(|e| anyhow!("listing {} in {}: {e}", base, self.name))?;
        Ok(found.into_iter().filter_map(|m| m.location.as_ref().get(skip..).map(|n| (n.to_string(), m.size))).collect())
    }

    /// The size of `name`, `None` when it is not there.
    pub(crate) async fn size(&self, name: &str) -> Result<Option<u64>> {
        match self.store.head(&self.path(name)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(anyhow!("looking up {name} in {}: {e}", self.name)),
        }
    }

    pub(crate) async fn get(&self, name: &str) -> Result<Option<bytes::Bytes>> {
        match self.store.get(&self.path(name)).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| anyhow!("reading {name} from {}: {e}", self.name))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            // object_store's message already holds its causes: one line, not a chain.
            Err(e) => Err(anyhow!("reading {name} from {}: {e}", self.name)),
        }
    }

    pub(crate) async fn put(&self, name: &str, bytes: impl Into<PutPayload>, cache: &'static str) -> Result<()> {
        let mut opts = PutOptions::default();
        if self.attributes {
            opts.attributes = Attributes::from_iter([
                (Attribute::CacheControl, cache),
                (Attribute::ContentType, if is_json(name) { "application/json" } else { "application/octet-stream" }),
            ]);
        }
        self.store
            .put_opts(&self.path(name), bytes.into(), opts)
            .await
            .map_err(|e| anyhow!("writing {name} to {}: {e}", self.name))?;
        Ok(())
    }
}

fn is_json(name: &str) -> bool {
    ["v1/commits/", "v1/versions/", "v1/branches/"].iter().any(|p| name.starts_with(p))
}

/// What an export prepares besides the commits.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Prepared patches to each release from this many of its previous commits (0: none).
    pub patches_from: usize,
    /// Commits devices run (e.g. from the fleet's reports): prepared patches to each release
    /// from each of them too.
    pub running: Vec<Id>,
}

/// What an export wrote.
#[derive(Debug, Default, serde::Serialize)]
pub struct ExportSummary {
    pub to: String,
    /// Commits reachable from the branches.
    pub commits: usize,
    /// Of those, the ones this run exported (the rest were there).
    pub commits_exported: usize,
    pub objects_written: u64,
    pub packs_written: u64,
    pub pack_bytes_written: u64,
    /// Chunks placed in this run's packs.
    pub chunks_packed: u64,
    pub indexes_written: u64,
    /// Pairs of commits whose prepared patches this run wrote.
    pub deltas_written: u64,
    pub patches_prepared: u64,
    /// CPU time spent computing them, summed over the cores.
    pub patch_cpu_seconds: f64,
    /// Heads, channel and key documents, versions and commit documents written because
    /// they were missing or changed.
    pub documents_written: u64,
    pub bytes_written: u64,
}

/// A commit to export, with what it needs.
struct Pending {
    id: Id,
    commit: Commit,
    /// Its distinct chunks in the order its files name them.
    chunks: Vec<Id>,
    /// Its trees not written by an earlier commit of this run.
    trees: Vec<Id>,
}

/// Exports every commit reachable from the repository's branches (and the channels'
/// targets), then the branch heads, channel and key documents.
pub async fn export(
    repo: &Repository,
    to: &Destination,
    options: &ExportOptions,
    progress: &dyn Progress,
) -> Result<ExportSummary> {
    let mut s = ExportSummary { to: to.name.clone(), ..Default::default() };
    if !to.attributes {
        let branches: Vec<String> = repo.branches()?.into_iter().map(|(n, _)| n).collect();
        let channels: Vec<String> = repo.channels()?.into_iter().map(|(n, _)| n).collect();
        for (what, names) in [("branches", branches), ("channels", channels)] {
            if let Some((a, b)) = nested(&names) {
                bail!(
                    "{what} {a:?} and {b:?} cannot both be files of a directory export ({}): v1/{what}/{a} would be a file and a directory; export to s3:// or rename one",
                    to.name
                );
            }
        }
    }
    let order = commits_oldest_first(repo)?;
    s.commits = order.len();
    let exported: HashSet<Id> = names(to.list("index").await?.into_keys());
    let objects: HashSet<Id> = names(to.list("objects").await?.into_keys());
    let packs: HashSet<Id> = names(to.list("packs").await?.into_keys());

    // What is new, with its chunks and trees, and the bytes that makes for the progress bar.
    let mut pending = Vec::new();
    let mut seen_trees: HashSet<Id> = HashSet::new();
    let mut total = 0u64;
    for id in order.iter().filter(|id| !exported.contains(id)) {
        let commit = repo.read_commit(id)?;
        let chunks = chunks_in_file_order(repo, &commit)?;
        for c in &chunks {
            total += repo.chunk_info(c)?.map_or(0, |i| u64::from(i.stored_len));
        }
        let trees = new_trees(repo, &commit.root, &mut seen_trees)?;
        pending.push(Pending { id: *id, commit, chunks, trees });
    }
    progress.set_total(total);

    let mut writer = PackWriter::new(PACK_TARGET);
    // Places known from indexes written before this run (read back as needed).
    let mut known: HashMap<Id, Placement> = HashMap::new();
    let mut read_back: HashSet<Id> = HashSet::new();
    for p in &pending {
        // The chunks this commit shares with its parent keep their places.
        if let Some(parent) = p.commit.parent {
            if exported.contains(&parent) && read_back.insert(parent) {
                read_index(to, repo, &parent, &mut known).await?;
            }
        }
        write_objects(repo, to, p, &objects, &mut s).await?;
        for c in &p.chunks {
            if known.contains_key(c) || writer.has(c) {
                progress.advance(repo.chunk_info(c)?.map_or(0, |i| u64::from(i.stored_len)));
                continue;
            }
            let stored = verified_chunk(repo, c)?;
            progress.advance(stored.len() as u64);
            s.chunks_packed += 1;
            if let Some(pack) = writer.add(c, &stored)? {
                write_pack(to, pack, &packs, &mut s).await?;
            }
        }
        if let Some(pack) = writer.flush() {
            write_pack(to, pack, &packs, &mut s).await?;
        }
        let placements = p
            .chunks
            .iter()
            .map(|c| {
                known
                    .get(c)
                    .copied()
                    .or_else(|| writer.placement(c))
                    .map(|place| (*c, place))
                    .ok_or_else(|| anyhow!("chunk {c} of commit {} was not placed", p.id))
            })
            .collect::<Result<Vec<_>>>()?;
        let index = ContentIndex::new(p.id, placements)?.encode();
        s.bytes_written += index.len() as u64;
        to.put(&format!("v1/index/{}", p.id), index, IMMUTABLE).await?;
        s.indexes_written += 1;
        s.commits_exported += 1;
    }
    write_deltas(repo, to, options, &mut writer, &packs, &mut s).await?;
    write_documents(repo, to, &order, &mut s).await?;
    Ok(s)
}

/// The releases: branch heads and channel targets.
fn releases(repo: &Repository) -> Result<Vec<Id>> {
    let mut out: Vec<Id> = repo.branches()?.into_iter().map(|(_, id)| id).collect();
    for (name, head) in repo.channels()? {
        let envelope = repo.read_envelope(&head)?;
        let doc = ferry_store::channel::ChannelDoc::decode(&envelope.document)
            .with_context(|| format!("channel {name}'s newest document does not decode"))?;
        out.extend(doc.targets.iter().map(|t| t.commit));
    }
    let mut seen = HashSet::new();
    out.retain(|id| seen.insert(*id));
    Ok(out)
}

/// The commits a device may run before `release`: its `n` previous commits, and `running`.
fn sources(repo: &Repository, release: &Id, n: usize, running: &[Id]) -> Result<Vec<Id>> {
    let mut out = Vec::new();
    let mut next = repo.read_commit(release)?.parent;
    while let Some(id) = next.take().filter(|_| out.len() < n) {
        out.push(id);
        next = repo.read_commit(&id)?.parent;
    }
    out.extend(running.iter().filter(|r| *r != release && repo.has_object(r).unwrap_or(false)));
    let mut seen = HashSet::new();
    out.retain(|id| seen.insert(*id));
    Ok(out)
}

/// Prepared patches for every release from its sources, each pair once (a pair whose index
/// is at the destination was written whole before).
async fn write_deltas(
    repo: &Repository,
    to: &Destination,
    options: &ExportOptions,
    writer: &mut PackWriter,
    packs: &HashSet<Id>,
    s: &mut ExportSummary,
) -> Result<()> {
    if options.patches_from == 0 && options.running.is_empty() {
        return Ok(());
    }
    let there: HashSet<String> = to.list("deltas").await?.into_keys().collect();
    for release in releases(repo)? {
        for from in sources(repo, &release, options.patches_from, &options.running)? {
            if there.contains(&format!("{from}/{release}")) {
                continue;
            }
            let started = std::time::Instant::now();
            let (answers, plain) = prepare_patches(repo, &from, &release)?;
            s.patch_cpu_seconds += answers.iter().map(|a| a.2).sum::<f64>();
            tracing::info!(
                from = %from, to = %release, patches = answers.len(), seconds = started.elapsed().as_secs_f64(),
                "prepared patches"
            );
            for (key, answer, _) in &answers {
                if let Some(pack) = writer.add(key, answer)? {
                    write_pack(to, pack, packs, s).await?;
                }
            }
            if let Some(pack) = writer.flush() {
                write_pack(to, pack, packs, s).await?;
            }
            let mut placements = answers
                .iter()
                .map(|(key, _, _)| {
                    writer.placement(key).map(|p| (*key, p)).ok_or_else(|| anyhow!("patch {key} was not placed"))
                })
                .collect::<Result<Vec<_>>>()?;
            // The chunks no patch covers, where the release's index puts them: a device on
            // `from` then needs this index only, not the whole release's.
            if !plain.is_empty() {
                let release_index = read_commit_index(to, repo, &release).await?;
                for id in &plain {
                    let at = release_index
                        .locate(id)
                        .ok_or_else(|| anyhow!("chunk {id} is not in the index of {release}"))?;
                    placements.push((*id, at));
                }
            }
            let index = ContentIndex::new(delta_id(&from, &release), placements)?.encode();
            s.bytes_written += index.len() as u64;
            to.put(&format!("v1/deltas/{from}/{release}"), index, IMMUTABLE).await?;
            s.deltas_written += 1;
            s.patches_prepared += answers.len() as u64;
        }
    }
    Ok(())
}

/// The patches a device on `from` plans for `to` (holding `from`'s chunks), each with its
/// answer at the server's level and the CPU seconds it took, in plan order.
/// The answers, with the chunks of the plan no patch covers.
type Prepared = (Vec<(Id, Vec<u8>, f64)>, Vec<Id>);

fn prepare_patches(repo: &Repository, from: &Id, to: &Id) -> Result<Prepared> {
    let (old, new) = (repo.read_commit(from)?, repo.read_commit(to)?);
    let planned = ferry_delta::plan::planned_patches(repo, &old, &new)?;
    let answers = planned
        .patches
        .par_iter()
        .map(|p| {
            let started = std::time::Instant::now();
            let answer = patch::answer(repo, &p.request(), patch::DEFAULT_LEVEL)?;
            Ok((p.key(), answer, started.elapsed().as_secs_f64()))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((answers, planned.plain.iter().map(|c| c.id).collect()))
}

/// A commit's index as the destination holds it (written by this run or an earlier one).
async fn read_commit_index(to: &Destination, repo: &Repository, commit: &Id) -> Result<ContentIndex> {
    let name = format!("v1/index/{commit}");
    let bytes = to.get(&name).await?.ok_or_else(|| anyhow!("{name} is missing from {}", to.name))?;
    let max = chunks_in_file_order(repo, &repo.read_commit(commit)?)?.len();
    ContentIndex::decode(&bytes, commit, max).with_context(|| format!("reading back {name}"))
}

/// Two names of which one is a directory of the other (`a` and `a/b`), if any.
fn nested(names: &[String]) -> Option<(String, String)> {
    let set: HashSet<&str> = names.iter().map(String::as_str).collect();
    names.iter().find_map(|n| {
        n.match_indices('/')
            .filter_map(|(i, _)| n.get(..i))
            .find(|p| set.contains(p))
            .map(|p| (p.to_string(), n.clone()))
    })
}

fn names(it: impl Iterator<Item = String>) -> HashSet<Id> {
    it.filter_map(|n| n.parse::<Id>().ok()).collect()
}

/// Every commit reachable from a branch head or a channel target, parents before children.
fn commits_oldest_first(repo: &Repository) -> Result<Vec<Id>> {
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    for head in releases(repo)? {
        let mut line = Vec::new();
        let mut next = Some(head);
        while let Some(id) = next.take() {
            if !seen.insert(id) {
                break;
            }
            let c = repo.read_commit(&id).with_context(|| format!("reading commit {id}"))?;
            line.push(id);
            next = c.parent;
        }
        order.extend(line.into_iter().rev());
    }
    Ok(order)
}

/// The commit's distinct chunks, in the order its files name them.
fn chunks_in_file_order(repo: &Repository, commit: &Commit) -> Result<Vec<Id>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    walk(repo, &commit.root, |_, w| {
        if let Walked::File { chunks, .. } = w {
            out.extend(chunks.iter().map(|c| c.id).filter(|id| seen.insert(*id)));
        }
        Ok(())
    })?;
    Ok(out)
}

/// The trees under `root` not in `seen` (which gains them), parents first.
fn new_trees(repo: &Repository, root: &Id, seen: &mut HashSet<Id>) -> Result<Vec<Id>> {
    let mut out = Vec::new();
    let mut stack = vec![*root];
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        out.push(id);
        for e in repo.read_tree(&id)?.entries {
            if let EntryKind::Dir { tree } = e.kind {
                stack.push(tree);
            }
        }
    }
    Ok(out)
}

/// A chunk's stored frame, checked against its id as the server checks what it sends.
fn verified_chunk(repo: &Repository, id: &Id) -> Result<Vec<u8>> {
    let info = repo.chunk_info(id)?.ok_or_else(|| anyhow!("chunk {id} is missing from the repository"))?;
    let stored = repo.read_chunk_stored(id)?;
    ferry_store::chunk::decode_chunk(id, &stored, info.len)
        .with_context(|| format!("chunk {id} is damaged in the repository (run `ferry fsck`)"))?;
    Ok(stored)
}

/// Adds the places an earlier run's index of `commit` gives.
async fn read_index(
    to: &Destination,
    repo: &Repository,
    commit: &Id,
    known: &mut HashMap<Id, Placement>,
) -> Result<()> {
    let name = format!("v1/index/{commit}");
    let Some(bytes) = to.get(&name).await? else {
        return Ok(());
    };
    let c = repo.read_commit(commit)?;
    let max = chunks_in_file_order(repo, &c)?.len();
    let index = ContentIndex::decode(&bytes, commit, max).with_context(|| format!("reading back {name}"))?;
    known.extend(index.placements());
    Ok(())
}

async fn write_objects(
    repo: &Repository,
    to: &Destination,
    p: &Pending,
    there: &HashSet<Id>,
    s: &mut ExportSummary,
) -> Result<()> {
    let wanted: Vec<Id> = p.trees.iter().chain([&p.id]).filter(|id| !there.contains(id)).copied().collect();
    let written: Vec<u64> = futures_util::stream::iter(wanted)
        .map(|id| async move {
            let bytes = repo.read_object_bytes(&id)?;
            let n = bytes.len() as u64;
            to.put(&format!("v1/objects/{id}"), bytes, IMMUTABLE).await?;
            Ok::<_, anyhow::Error>(n)
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    s.objects_written += written.len() as u64;
    s.bytes_written += written.iter().sum::<u64>();
    Ok(())
}

async fn write_pack(
    to: &Destination,
    (name, bytes): (Id, Vec<u8>),
    there: &HashSet<Id>,
    s: &mut ExportSummary,
) -> Result<()> {
    if there.contains(&name) {
        return Ok(());
    }
    let n = bytes.len() as u64;
    to.put(&format!("v1/packs/{name}"), bytes, IMMUTABLE).await?;
    s.packs_written += 1;
    s.pack_bytes_written += n;
    s.bytes_written += n;
    Ok(())
}

/// The mutable files, last: each commit's signatures, versions, branch heads, channel and
/// key documents; each written only when missing or different.
async fn write_documents(repo: &Repository, to: &Destination, order: &[Id], s: &mut ExportSummary) -> Result<()> {
    let mut docs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut versions: HashMap<String, Vec<String>> = HashMap::new();
    for id in order {
        let commit = repo.read_commit(id)?;
        let signatures = repo
            .signatures(id)?
            .iter()
            .map(|g| Signature { key: hex::encode(g.key), signature: hex::encode(g.signature) })
            .collect();
        let doc = SignedCommit { bytes: hex::encode(repo.read_object_bytes(id)?), commit: id.to_hex(), signatures };
        docs.push((format!("v1/commits/{id}"), serde_json::to_vec(&doc)?));
        versions.entry(commit.version.to_string()).or_default().push(id.to_hex());
    }
    for (version, mut commits) in versions {
        commits.sort();
        commits.dedup();
        docs.push((format!("v1/versions/{version}"), serde_json::to_vec(&VersionCommits { commits, version })?));
    }
    // Heads after everything they name: the key documents before the channel documents
    // their keys sign, the branch heads last.
    docs.push(("v1/keys".to_string(), repo.key_chain()?.iter().flat_map(|e| e.encode()).collect()));
    for (name, head) in repo.channels()? {
        docs.push((format!("v1/channels/{name}"), repo.read_envelope(&head)?.encode()));
    }
    for (branch, id) in repo.branches()? {
        let head = BranchHead { branch: branch.clone(), commit: id.to_hex() };
        docs.push((format!("v1/branches/{branch}"), serde_json::to_vec(&head)?));
    }

    let mut sizes: HashMap<String, u64> = HashMap::new();
    for dir in ["commits", "versions", "branches", "channels"] {
        sizes.extend(to.list(dir).await?.into_iter().map(|(n, size)| (format!("v1/{dir}/{n}"), size)));
    }
    // The key chain is one file, listed with its parent.
    if let Some(keys) = to.get("v1/keys").await? {
        sizes.insert("v1/keys".into(), keys.len() as u64);
    }
    // Documents in order, heads last: each waits for the ones before it.
    for (name, bytes) in docs {
        // A commit's document only grows (signatures are added, each of one length): for
        // it a size tells. The rest (a version's commits can change without growing) are
        // compared byte for byte.
        let grows_only = name.starts_with("v1/commits/");
        let changed = match sizes.get(&name) {
            None => true,
            Some(&size) if size != bytes.len() as u64 => true,
            Some(_) if grows_only => false,
            Some(_) => to.get(&name).await?.as_deref() != Some(&bytes[..]),
        };
        if changed {
            s.bytes_written += bytes.len() as u64;
            to.put(&name, bytes, MUTABLE).await?;
            s.documents_written += 1;
        }
    }
    Ok(())
}
