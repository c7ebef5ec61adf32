//! `ferryd apply`: installs a release from an offline bundle (`ferry bundle`; format in
//! `ferry_delta::bundle`) read from a file, a pipe or an upload, with no network.
//!
//! The bundle passes the same checks as a network update, in the same order: key documents
//! from the roots in the image, the channel document (serial, expiry, hardware, downgrade),
//! the commit's signature before it is decoded, its hardware list, every tree against its
//! id. Then, before anything is written, the chunks the device lacks are compared with the
//! bundle's manifest: a bundle made for devices on another release is refused, naming the
//! files it cannot build. Chunks are then verified and staged one at a time as they are
//! read, the end of the bundle is checked (a cut or damaged file is refused and nothing is
//! switched), and the deployment is built, switched to and tried exactly as after a
//! download ([`crate::update::install`]).
//!
//! A channel bundle moves the device like a fleet update would (a pinned device refuses
//! it); a commit bundle is a technician's or developer's choice, like `ferryd deploy`: any
//! signed commit for this hardware, and the device is pinned to it afterwards.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::time::Instant;

use anyhow::{anyhow, Result};
use ferry_delta::bundle::{BundleReader, BundledCommit, Section};
use ferry_store::channel::{accept_channel, Envelope, Running};
use ferry_store::{Commit, EntryKind, Id, PublicKey, Tree};

use crate::config::Config;
use crate::local::Local;
use crate::state::{self, Outcome};
use crate::update::{Refused, StagingSync, TrialFailed};

/// What one `ferryd apply` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ApplySummary {
    pub from: Option<String>,
    pub to: String,
    pub version: String,
    /// The device already ran the bundle's release; nothing was changed.
    pub up_to_date: bool,
    /// The channel whose document the bundle carried, and that document's serial.
    pub channel: Option<String>,
    pub serial: Option<u64>,
    /// Bytes of the bundle read.
    pub bundle_bytes: u64,
    /// Chunks taken from the bundle; chunks in it the device already held or does not need.
    pub chunks_used: u64,
    pub chunks_skipped: u64,
    /// Distinct chunks of the new commit the device already held.
    pub chunks_reused: u64,
    pub files: u64,
    pub files_reused: u64,
    pub seconds: f64,
    /// A commit bundle pins the device, like `ferryd deploy`.
    pub pinned: bool,
    pub rebooting: bool,
}

fn refused(msg: impl std::fmt::Display) -> anyhow::Error {
    Refused(format!("bundle refused: {msg}")).into()
}

/// The sections before the trees: what the bundle says it installs.
#[derive(Default)]
struct Header {
    keys: Vec<Vec<u8>>,
    channel: Option<Vec<u8>>,
    commits: Vec<BundledCommit>,
    from: Vec<Id>,
}

/// How `ferryd apply` may go beyond what a fleet update does.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Pin the device afterwards (a developer's board), as `ferryd deploy` does.
    pub pin: bool,
    /// For a commit bundle: allow one on a device that follows a channel, a commit that names
    /// no hardware revision, a version older than the running one, or a release that failed
    /// its trial here before. A channel bundle's rules never bend (its rollback mark is how an
    /// operator allows a downgrade). Only `ferryd apply --force` on the device sets it: the
    /// local page and the USB script never do.
    pub force: bool,
}

/// Applies the bundle read from `input`. A refusal is a [`Refused`] error; a release that
/// fails its trial is a [`TrialFailed`] error, after the rollback.
pub async fn apply(config: &Config, input: impl Read, opts: ApplyOptions) -> Result<ApplySummary> {
    let started = Instant::now();
    let local = Local::open(&config.state_dir)?;
    if let Some(outcome) = crate::trial::run(config).await? {
        tracing::info!(?outcome, "finished a pending trial");
    }
    let result = apply_inner(config, &local, input, started, None, opts).await;
    if let Err(e) = &result {
        if !e.is::<TrialFailed>() {
            state::record_attempt(config, Outcome::Error, Some(format!("{e:#}")))?;
        }
    }
    result
}

/// Installs the bundle read from `input` into an image tree rooted at `root` (for `ferry
/// image`): `config` is the device's configuration [`Config::rooted`] at `root`. The same
/// checks as [`apply`], with the image's own keys; no trial, hook or bootloader (the
/// build machine's are not the device's), and `current_link` names the deployment by
/// the path the device will see. The tree must not hold a deployment yet.
pub async fn seed(config: &Config, root: &std::path::Path, input: impl Read) -> Result<ApplySummary> {
    if !nix::unistd::geteuid().is_root() {
        // Without root every file would belong to the builder, on every device, for good
        // (the object ids record the intended owners, so updates keep the wrong ones).
        anyhow::bail!("seeding an image sets each file's owner, which needs root: run ferry image as root");
    }
    if config.current_link.symlink_metadata().is_ok() {
        anyhow::bail!("{} exists already: build an image into an empty directory", config.current_link.display());
    }
    if let Some(parent) = config.current_link.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let local = Local::open(&config.state_dir)?;
    apply_inner(config, &local, input, Instant::now(), Some(root), ApplyOptions::default()).await
}

async fn apply_inner(
    config: &Config,
    local: &Local,
    input: impl Read,
    started: Instant,
    seed_root: Option<&std::path::Path>,
    opts: ApplyOptions,
) -> Result<ApplySummary> {
    let hardware = config.hardware_revision()?;
    let current = crate::update::current_commit(config, local)?;
    let mut s = ApplySummary { from: current.map(|c| c.to_hex()), ..Default::default() };
    let mut reader = BundleReader::new(input).map_err(refused)?;

    // 1. The header: key documents, channel document, commits, from. Nothing else is held
    //    before the target commit's signature is checked.
    //    The from section ends the header (the format requires it before any tree), and the
    //    reader bounds the header's bytes in all (`MAX_HEADER`).
    let mut header = Header::default();
    loop {
        match reader.next_section().map_err(refused)? {
            Some(Section::Keys(k)) => header.keys.push(k),
            Some(Section::Channel(c)) => header.channel = Some(c),
            Some(Section::Commit(c)) => header.commits.push(c),
            Some(Section::From(f)) => {
                header.from = f;
                break;
            }
            Some(_) => return Err(refused("its header has no from section")),
            None => return Err(refused("it has no manifest")),
        }
    }

    // 2. What it installs here, checked like an update's target.
    // An image is built by whoever holds the repository: its seed may be any signed commit.
    let force = opts.force || seed_root.is_some();
    let target = decide(config, local, &header, current, hardware.as_deref(), force)?;
    let head = target.commit_id;
    let commit = &target.commit;
    s.to = head.to_hex();
    s.version = commit.version.to_string();
    s.channel = target.channel.clone();
    s.serial = target.serial;

    // 3. The trees the signed root reaches (parents come first), each checked against the
    //    id its parent names; trees for other hardware are skipped unread.
    //    Trees nobody asked for are read past unheld, and the manifest may list no more
    //    chunks than the trees name (`chunk_refs`).
    let mut expected: HashSet<Id> = HashSet::from([commit.root]);
    let mut chunk_refs = 0usize;
    let mut walk = vec![commit.root];
    while let Some(id) = walk.pop() {
        if let Some(tree) = local.tree(&id)? {
            chunk_refs += count_chunk_refs(&tree);
            for e in &tree.entries {
                if let EntryKind::Dir { tree } = e.kind {
                    if expected.insert(tree) {
                        walk.push(tree);
                    }
                }
            }
        }
    }
    let mut trees: HashMap<Id, Vec<u8>> = HashMap::new();
    let mut tree_bytes = 0usize;
    loop {
        reader.limit_manifest(chunk_refs);
        let section = reader
            .next_section_wanting(|id| expected.contains(id) && !trees.contains_key(id))
            .map_err(refused)?
            .ok_or_else(|| refused("it has no manifest"))?;
        match section {
            Section::Tree { id, bytes } if expected.contains(&id) && !trees.contains_key(&id) => {
                if Id::of(&bytes) != id {
                    return Err(refused(format!("tree {id} is damaged (its bytes hash to {})", Id::of(&bytes))));
                }
                tree_bytes += bytes.len();
                if tree_bytes > crate::update::MAX_TREES {
                    return Err(refused(format!("its trees exceed {} MiB", crate::update::MAX_TREES >> 20)));
                }
                let tree = Tree::decode(&bytes).map_err(|e| refused(format!("tree {id} does not decode: {e}")))?;
                chunk_refs += count_chunk_refs(&tree);
                for e in &tree.entries {
                    if let EntryKind::Dir { tree } = e.kind {
                        expected.insert(tree);
                    }
                }
                trees.insert(id, bytes);
            }
            Section::Tree { .. } => {}
            Section::Manifest(_) => break,
            _ => return Err(refused("it has no manifest")),
        }
    }

    let state = state::read(config)?;
    if target.channel.is_some() && state.pinned && seed_root.is_none() {
        return Err(refused(format!(
            "this device is pinned, and the bundle carries channel {}'s release {}: run `ferryd unpin` first, or apply a commit bundle",
            target.channel.as_deref().unwrap_or_default(),
            commit.version
        )));
    }
    if target.channel.is_none() && !opts.force && seed_root.is_none() && Some(head) != current {
        let running = match current {
            Some(c) => local.commit(&c)?,
            None => None,
        };
        if let Some(r) = running {
            if commit.version.compare(&r.version) != Some(std::cmp::Ordering::Greater) {
                return Err(refused(format!(
                    "it carries release {}, not newer than the running {}: a downgrade from a commit bundle needs `ferryd apply --force`",
                    commit.version, r.version
                )));
            }
        }
    }
    if (target.channel.is_some() || !opts.force) && Some(head) != current && state.bad_commits.contains(&head.to_hex())
    {
        return Err(refused(format!(
            "release {} ({head}) failed its trial on this device before; it is not installed again",
            commit.version
        )));
    }

    // 3. The deployment it describes, from the bundle's trees and the device's own.
    let read = |id: &Id| -> Result<Tree> {
        if let Some(bytes) = trees.get(id) {
            return Tree::decode(bytes).map_err(|e| refused(format!("tree {id} does not decode: {e}")));
        }
        local.tree(id)?.ok_or_else(|| refused(format!("it lacks tree {id}")))
    };
    let up_to_date = Some(head) == current;
    let absent = missing_trees(local, &trees, &commit.root)?;
    if !absent.is_empty() {
        let shown = absent.iter().take(5).map(|(path, id)| format!("{path} ({})", id.short())).collect::<Vec<_>>();
        let more = if absent.len() > 5 { format!(" and {} more", absent.len() - 5) } else { String::new() };
        return Err(refused(format!(
            "it lacks the listings of {} directories of release {} that this device does not hold either: {}{more}; {}. Nothing was changed",
            absent.len(),
            commit.version,
            shown.join(", "),
            made_for(&header.from, current)
        )));
    }
    let p = crate::update::plan_with(&commit.root, read)?;
    let in_bundle: HashMap<Id, u32> = reader.manifest().iter().copied().collect();
    let wanted = if up_to_date { Vec::new() } else { crate::update::missing_chunks(local, &p)? };
    let mut needed: HashMap<Id, u32> = HashMap::new();
    let mut lacking: HashSet<Id> = HashSet::new();
    for &(id, len) in &wanted {
        match in_bundle.get(&id) {
            Some(l) if *l == len => {
                needed.insert(id, len);
            }
            Some(l) => {
                return Err(refused(format!(
                    "it lists chunk {id} as {l} bytes, and release {}'s tree says {len}",
                    commit.version
                )))
            }
            None => {
                lacking.insert(id);
            }
        }
    }
    if !lacking.is_empty() {
        // Each lacking chunk named by the first file that needs it, in the tree's order.
        let mut named: HashSet<Id> = HashSet::new();
        let mut files: Vec<String> = Vec::new();
        for f in p.files.iter().filter(|f| !local.object_path(&f.object).exists()) {
            for c in &f.chunks {
                if lacking.contains(&c.id) && named.insert(c.id) {
                    files.push(format!("/{}", f.path.display()));
                }
            }
        }
        files.dedup();
        let shown = files.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        let more = if files.len() > 5 { format!(" and {} more", files.len() - 5) } else { String::new() };
        return Err(refused(format!(
            "it lacks {} chunks this device needs for release {} (in {shown}{more}); {}. Nothing was changed",
            lacking.len(),
            commit.version,
            made_for(&header.from, current)
        )));
    }
    let mut missing: Vec<(Id, u32)> = needed.iter().map(|(id, len)| (*id, *len)).collect();
    missing.sort();
    crate::update::check_space(config, local, &p, &missing)?;

    // 4. From here on the device writes: the commit and trees (all verified), then each
    //    chunk it needs, verified as it is read.
    if !up_to_date {
        if !local.has_object(&head)? {
            local.put_object(&head, &target.bytes)?;
        }
        let mut stack = vec![commit.root];
        let mut seen = HashSet::new();
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            if let Some(bytes) = trees.get(&id) {
                if !local.has_object(&id)? {
                    local.put_object(&id, bytes)?;
                }
            }
            if let Some(tree) = local.tree(&id)? {
                stack.extend(tree.entries.iter().filter_map(|e| match e.kind {
                    EntryKind::Dir { tree } => Some(tree),
                    _ => None,
                }));
            }
        }
    }
    drop(trees);
    let mut sync = StagingSync::new(local);
    loop {
        match reader.next_section() {
            Ok(Some(Section::Chunk { id, frame })) => match needed.get(&id) {
                Some(len) if !local.staging_path(&id).exists() => {
                    crate::update::stage_chunk(local, &id, &frame, *len)
                        .map_err(|e| refused(format!("its chunk {id} is damaged: {e:#}")))?;
                    s.chunks_used += 1;
                    sync.tick();
                }
                _ => s.chunks_skipped += 1,
            },
            Ok(Some(_)) => return Err(refused("it has a section after its chunks")),
            Ok(None) => break,
            Err(e) => {
                drop(sync);
                let kept = match s.chunks_used {
                    0 => String::new(),
                    n => format!("the {n} chunks verified so far are kept for the next try, and "),
                };
                return Err(refused(format!("{e}; {kept}nothing was switched")));
            }
        }
    }
    drop(sync);
    s.bundle_bytes = reader.bytes_read();
    s.chunks_reused = crate::update::distinct_chunks(&p).saturating_sub(s.chunks_used);
    if let Some(accepted) = target.accepted {
        state::save_trust(config, &accepted)?;
    }

    // 5. Build, switch and try, as after a download.
    if let Some(root) = seed_root {
        let (files, reused) = crate::update::assemble(local, &head, &p)?;
        s.files = files;
        s.files_reused = reused;
        let built = local.deploy_dir().join(head.to_hex());
        let on_device = std::path::Path::new("/").join(built.strip_prefix(root)?);
        link_durably(&config.current_link, &on_device)?;
        // The staged chunks are in the objects now: the image does not carry them twice.
        crate::update::collect_garbage(local, &[head])?;
        state::change(config, |s| {
            s.last_result = Some(Outcome::Ok);
            s.last_attempt = Some(state::now());
        })?;
        local.sync()?;
        s.seconds = started.elapsed().as_secs_f64();
        return Ok(s);
    }
    if state.dev.is_some() {
        crate::devboard::off(config)?;
    }
    let pin = opts.pin;
    if up_to_date {
        s.up_to_date = true;
    } else {
        let (files, reused) = crate::update::assemble(local, &head, &p)?;
        s.files = files;
        s.files_reused = reused;
        s.rebooting = crate::update::install(config, local, head, commit, current).await?;
    }
    state::change(config, |st| {
        st.record_attempt(if up_to_date { Outcome::UpToDate } else { Outcome::Ok }, None);
        st.pinned |= pin;
    })?;
    s.pinned |= pin;
    s.seconds = started.elapsed().as_secs_f64();
    Ok(s)
}

/// Points `link` at `target` (which need not exist here: it is the device's path) through a
/// temporary link renamed over it, then syncs the directory.
fn link_durably(link: &std::path::Path, target: &std::path::Path) -> Result<()> {
    let dir = link.parent().ok_or_else(|| anyhow!("{} has no parent directory", link.display()))?;
    let tmp = dir.join(format!(".ferry-link-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// The directories under `root` whose trees neither the bundle nor the device holds, with
/// their paths (the walk stops at each).
/// How many chunk references a tree's files hold (an upper bound of the distinct chunks
/// they need).
fn count_chunk_refs(tree: &Tree) -> usize {
    tree.entries
        .iter()
        .map(|e| match &e.kind {
            EntryKind::File { chunks, .. } => chunks.len(),
            _ => 0,
        })
        .sum()
}

fn missing_trees(local: &Local, trees: &HashMap<Id, Vec<u8>>, root: &Id) -> Result<Vec<(String, Id)>> {
    let mut out = Vec::new();
    let mut stack = vec![("/".to_string(), *root)];
    let mut seen = HashSet::new();
    while let Some((path, id)) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        let tree = match trees.get(&id) {
            Some(bytes) => Tree::decode(bytes).map_err(|e| refused(format!("tree {id} does not decode: {e}")))?,
            None => match local.tree(&id)? {
                Some(t) => t,
                None => {
                    out.push((path, id));
                    continue;
                }
            },
        };
        for e in &tree.entries {
            if let EntryKind::Dir { tree } = e.kind {
                stack.push((format!("{path}{}/", String::from_utf8_lossy(&e.name)), tree));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// "it was made for devices on …; this device runs …", for refusals.
fn made_for(from: &[Id], current: Option<Id>) -> String {
    let made = if from.is_empty() {
        "it is a full bundle".to_string()
    } else {
        format!("it was made for devices on {}", from.iter().map(|f| f.short()).collect::<Vec<_>>().join(", "))
    };
    match current {
        Some(c) => format!("{made}, and this device runs {}: make one with `--from {}`", c.short(), c.short()),
        None => format!("{made}, and this device has no release yet: make a full one (without --from)"),
    }
}

/// The release a bundle installs on this device, checked.
struct Decided {
    commit_id: Id,
    commit: Commit,
    bytes: Vec<u8>,
    channel: Option<String>,
    serial: Option<u64>,
    /// The trust state to record once the whole bundle was read.
    accepted: Option<crate::trust::TrustState>,
}

fn decide(
    config: &Config,
    local: &Local,
    header: &Header,
    current: Option<Id>,
    hardware: Option<&str>,
    force: bool,
) -> Result<Decided> {
    let mut accepted = None;
    let (keys, target, channel) = match &config.channel {
        Some(channel) => {
            let mut state = state::read_trust(config)?;
            let chain = header
                .keys
                .iter()
                .map(|k| Envelope::decode(k))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| refused(format!("its key documents do not decode: {e}")))?;
            let trust = state.trust()?.advance_all(&chain).map_err(refused)?;
            state.set_trust(&trust);
            let keys = trust.commit_keys.iter().map(PublicKey::from_bytes).collect::<Result<Vec<_>, _>>()?;
            match &header.channel {
                Some(bytes) => {
                    let envelope = Envelope::decode(bytes)
                        .map_err(|e| refused(format!("its channel document does not decode: {e}")))?;
                    let hw = hardware.ok_or_else(|| anyhow!("no hardware revision configured"))?;
                    let running = match current {
                        Some(c) => Some(
                            local
                                .commit(&c)?
                                .ok_or_else(|| anyhow!("the running commit {c} is not in the device database"))?,
                        ),
                        None => None,
                    };
                    let clock = crate::trust::clock()?;
                    let seen = state.seen(channel, running.as_ref().and_then(|c| c.timestamp), clock);
                    let (doc, target) = accept_channel(
                        &envelope,
                        channel,
                        &trust,
                        seen,
                        clock,
                        &Running { version: running.as_ref().map(|c| &c.version), hardware: hw },
                    )
                    .map_err(refused)?;
                    state.accept(
                        &doc,
                        seen,
                        clock,
                        &envelope.signed_by(ferry_store::Signed::Channel, &trust.channel_keys),
                    );
                    accepted = Some(state);
                    (keys, Some(target), Some((doc.name, doc.serial)))
                }
                None if !force => {
                    return Err(refused(format!(
                        "this file holds a single build, not a release of channel {channel}, which this device follows; it installs only what its channel says (a technician at the device can override this with `ferryd apply --force`)"
                    )));
                }
                None => {
                    if trust.serial > 0 {
                        accepted = Some(state);
                    }
                    (keys, None, None)
                }
            }
        }
        None => {
            if let Some(bytes) = &header.channel {
                let name = Envelope::decode(bytes)
                    .ok()
                    .and_then(|e| ferry_store::channel::ChannelDoc::decode(&e.document).ok())
                    .map_or("?".to_string(), |d| d.name);
                return Err(refused(format!(
                    "it carries channel {name}'s document, and this device follows {}, not a channel: apply a commit bundle (`ferry bundle --to COMMIT`)",
                    config.follows()
                )));
            }
            (config.keys()?, None, None)
        }
    };
    let bundled = match &target {
        Some(t) => header.commits.iter().find(|c| c.id == t.commit).ok_or_else(|| {
            refused(format!(
                "the channel's target for this device is {} ({}), which the bundle does not carry",
                t.version, t.commit
            ))
        })?,
        None => match header.commits.as_slice() {
            [one] => one,
            _ => return Err(refused("a bundle without a channel document must carry exactly one commit")),
        },
    };
    let id = bundled.id;
    if bundled.bytes.len() > crate::update::MAX_COMMIT {
        return Err(refused(format!("commit {id} is larger than {} bytes", crate::update::MAX_COMMIT)));
    }
    if Id::of(&bundled.bytes) != id {
        return Err(refused(format!("commit {id} is damaged (its bytes hash to {})", Id::of(&bundled.bytes))));
    }
    let trusted = bundled
        .signatures
        .iter()
        .any(|(key, sig)| keys.iter().any(|k| k.to_bytes() == *key && k.verify_commit(&id, sig)));
    if !trusted {
        return Err(refused(format!("commit {id} is not signed by a key this device trusts")));
    }
    let commit = Commit::decode(&bundled.bytes).map_err(|e| refused(format!("commit {id} does not decode: {e}")))?;
    match (&target, hardware) {
        (Some(t), Some(hw)) => ferry_store::channel::check_target_commit(t, &commit, hw).map_err(refused)?,
        (None, Some(hw)) if !commit.hardware.is_empty() && !commit.hardware.iter().any(|h| h == hw) => {
            return Err(refused(format!(
                "commit {id} ({}) is built for {} only, not for this device's {hw}",
                commit.version,
                commit.hardware.join(", ")
            )))
        }
        (None, Some(hw)) if commit.hardware.is_empty() && !force => {
            return Err(refused(format!(
                "commit {id} ({}) names no hardware revision, so nothing says it was built for this device's {hw}; commit it with --hardware {hw} (or override with `ferryd apply --force`)",
                commit.version
            )))
        }
        _ => {}
    }
    Ok(Decided {
        commit_id: id,
        commit,
        bytes: bundled.bytes.clone(),
        channel: channel.as_ref().map(|(n, _)| n.clone()),
        serial: channel.map(|(_, s)| s),
        accepted,
    })
}
