//! Comparing two commits: the paths that changed, and the chunks a device holding the older
//! commit must fetch to build the newer one.
//!
//! Unchanged subtrees keep their id, so both walks skip them without reading them: the cost
//! of a comparison grows with what changed, not with the size of the tree.
//!
//! Trees are read through [`ReadTrees`], so the same planning runs over the repository
//! (`ferry diff`), the device's store, or trees in memory. The costs ([`transfer_cost`],
//! [`patch_cost`]) also read chunk sizes and compute patches, so they need a repository (the
//! `repository` feature).

use std::collections::{HashMap, HashSet};

#[cfg(feature = "repository")]
use ferry_store::Repository;
use ferry_store::{Commit, Entry, EntryKind, Id, ReadTrees, Result, StoreError, Tree};

/// What happened to one path between two commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Added,
    Removed,
    /// Content, kind, target, mode, ownership or xattrs differ.
    Changed,
}

/// One changed path (relative to the root, `/`-separated, lossily shown as UTF-8).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    pub path: String,
    pub kind: ChangeKind,
}

/// What going from one commit to another costs a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct TransferCost {
    /// Distinct chunks of the target that the source commit lacks.
    pub chunks: u64,
    /// Their stored (zstd) size: the bytes a device downloads.
    pub compressed_bytes: u64,
    /// Their uncompressed size.
    pub raw_bytes: u64,
}

fn join(prefix: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if prefix.is_empty() {
        name.into_owned()
    } else {
        format!("{prefix}/{name}")
    }
}

/// Every path under a tree (directories included), for whole-subtree additions and removals.
fn depth_ok(tree: &Id, prefix: &str) -> Result<()> {
    if prefix.split('/').count() > ferry_store::object::MAX_DEPTH {
        return Err(StoreError::TooDeep { tree: *tree });
    }
    Ok(())
}

fn all_paths<T: ReadTrees + ?Sized>(
    read: &T,
    tree: &Id,
    prefix: &str,
    kind: ChangeKind,
    out: &mut Vec<Change>,
) -> Result<(), T::Error>
where
    T::Error: From<StoreError>,
{
    depth_ok(tree, prefix)?;
    for e in read.tree(tree)?.entries {
        let path = join(prefix, &e.name);
        out.push(Change { path: path.clone(), kind });
        if let EntryKind::Dir { tree } = e.kind {
            all_paths(read, &tree, &path, kind, out)?;
        }
    }
    Ok(())
}

fn diff_trees<T: ReadTrees + ?Sized>(
    read: &T,
    from: &Id,
    to: &Id,
    prefix: &str,
    out: &mut Vec<Change>,
) -> Result<(), T::Error>
where
    T::Error: From<StoreError>,
{
    if from == to {
        return Ok(());
    }
    depth_ok(to, prefix)?;
    let a = read.tree(from)?;
    let b = read.tree(to)?;
    if a.meta != b.meta {
        let path = if prefix.is_empty() { "." } else { prefix };
        out.push(Change { path: path.to_string(), kind: ChangeKind::Changed });
    }
    let old: HashMap<&[u8], &Entry> = a.entries.iter().map(|e| (e.name.as_slice(), e)).collect();
    let new: HashMap<&[u8], &Entry> = b.entries.iter().map(|e| (e.name.as_slice(), e)).collect();
    for e in &a.entries {
        if !new.contains_key(e.name.as_slice()) {
            let path = join(prefix, &e.name);
            out.push(Change { path: path.clone(), kind: ChangeKind::Removed });
            if let EntryKind::Dir { tree } = &e.kind {
                all_paths(read, tree, &path, ChangeKind::Removed, out)?;
            }
        }
    }
    for e in &b.entries {
        let path = join(prefix, &e.name);
        match (old.get(e.name.as_slice()).map(|o| &o.kind), &e.kind) {
            (None, kind) => {
                out.push(Change { path: path.clone(), kind: ChangeKind::Added });
                if let EntryKind::Dir { tree } = kind {
                    all_paths(read, tree, &path, ChangeKind::Added, out)?;
                }
            }
            (Some(EntryKind::Dir { tree: t1 }), EntryKind::Dir { tree: t2 }) => {
                diff_trees(read, t1, t2, &path, out)?;
            }
            (Some(EntryKind::Dir { tree }), _) => {
                out.push(Change { path: path.clone(), kind: ChangeKind::Changed });
                all_paths(read, tree, &path, ChangeKind::Removed, out)?;
            }
            (Some(_), EntryKind::Dir { tree }) => {
                out.push(Change { path: path.clone(), kind: ChangeKind::Changed });
                all_paths(read, tree, &path, ChangeKind::Added, out)?;
            }
            (Some(k1), k2) => {
                if k1 != k2 {
                    out.push(Change { path, kind: ChangeKind::Changed });
                }
            }
        }
    }
    Ok(())
}

/// The paths that differ between two commits, sorted by path, reading trees with `read`.
pub fn diff_commits<T: ReadTrees + ?Sized>(read: &T, from: &Commit, to: &Commit) -> Result<Vec<Change>, T::Error>
where
    T::Error: From<StoreError>,
{
    let mut out = Vec::new();
    diff_trees(read, &from.root, &to.root, "", &mut out)?;
    out.sort();
    Ok(out)
}

/// Collects the distinct chunk ids under a tree, visiting each distinct subtree once (with
/// an explicit stack: no recursion, whatever the nesting).
pub fn collect_chunks<T: ReadTrees + ?Sized>(
    read: &T,
    root: &Id,
    trees: &mut HashSet<Id>,
    chunks: &mut HashSet<Id>,
) -> Result<(), T::Error> {
    let mut stack = vec![*root];
    while let Some(id) = stack.pop() {
        if !trees.insert(id) {
            continue;
        }
        let tree: Tree = read.tree(&id)?;
        for e in tree.entries {
            match e.kind {
                EntryKind::File { chunks: list, .. } => chunks.extend(list.iter().map(|c| c.id)),
                EntryKind::Dir { tree } => stack.push(tree),
                EntryKind::Symlink { .. } => {}
            }
        }
    }
    Ok(())
}

/// The chunks of `to` that a holder of `from` lacks (every chunk of `to` when `from` is
/// `None`), and their sizes as stored.
#[cfg(feature = "repository")]
pub fn transfer_cost(repo: &Repository, from: Option<&Commit>, to: &Commit) -> Result<TransferCost> {
    let mut have_trees = HashSet::new();
    let mut have = HashSet::new();
    if let Some(from) = from {
        collect_chunks(repo, &from.root, &mut have_trees, &mut have)?;
    }
    let mut want_trees = HashSet::new();
    let mut want = HashSet::new();
    // Subtrees the source already has hold only chunks the source has: skip them.
    want_trees.extend(have_trees.iter().copied());
    collect_chunks(repo, &to.root, &mut want_trees, &mut want)?;
    let mut cost = TransferCost::default();
    for id in want.difference(&have) {
        let info = repo.chunk_info(id)?.ok_or(StoreError::ChunkMissing { id: *id })?;
        cost.chunks += 1;
        cost.compressed_bytes += u64::from(info.stored_len);
        cost.raw_bytes += u64::from(info.len);
    }
    Ok(cost)
}

/// What going from one commit to another costs with patches ([`crate::patch`]), as a device
/// holding `from` and lacking every chunk of `to` it does not have would fetch it.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct PatchCost {
    /// Patches asked for, and how many of them the server answers with a patch (the rest
    /// come plain because the patch was no smaller).
    pub patches: u64,
    pub patched: u64,
    /// Bytes of the patch answers (tag and payload; plain answers included).
    pub patch_bytes: u64,
    /// Chunks no reference covers, and their stored size.
    pub plain_chunks: u64,
    pub plain_bytes: u64,
    /// Everything above plus the 36-byte frame header per patch and chunk.
    pub transfer_bytes: u64,
    /// Server CPU time spent computing the patches (what a cold cache costs once).
    pub seconds: f64,
}

/// The patches and plain chunks a device on `from` plans for `to`, holding `from`'s chunks
/// and nothing else: what `ferry diff`, `ferry export`'s prepared patches and the server's
/// preparation at promotion compute, by the rule every device plans with.
#[cfg(feature = "repository")]
pub fn planned_patches(
    repo: &Repository,
    from: &Commit,
    to: &Commit,
) -> std::result::Result<crate::patch::PatchPlan, StoreError> {
    use crate::patch::{plan_patches, walk_files};
    let old = walk_files(repo, &from.root)?;
    let new = walk_files(repo, &to.root)?;
    let have: HashSet<Id> = old.iter().flat_map(|f| f.chunks.iter().map(|c| c.id)).collect();
    Ok(plan_patches(&old, &new, |id| !have.contains(id)))
}

/// Computes the patches a device on `from` asks for to reach `to`, at zstd `level`.
#[cfg(feature = "repository")]
pub fn patch_cost(
    repo: &Repository,
    from: &Commit,
    to: &Commit,
    level: i32,
) -> std::result::Result<PatchCost, crate::patch::AnswerError> {
    let started = std::time::Instant::now();
    let plan = planned_patches(repo, from, to)?;
    let mut cost = PatchCost::default();
    for p in &plan.patches {
        let bytes = crate::patch::answer(repo, &p.request(), level)?;
        cost.patches += 1;
        cost.patched += u64::from(bytes.first() == Some(&0));
        cost.patch_bytes += bytes.len() as u64;
    }
    for c in &plan.plain {
        let info = repo.chunk_info(&c.id)?.ok_or(StoreError::ChunkMissing { id: c.id })?;
        cost.plain_chunks += 1;
        cost.plain_bytes += u64::from(info.stored_len);
    }
    cost.transfer_bytes =
        cost.patch_bytes + cost.plain_bytes + (cost.patches + cost.plain_chunks) * crate::pack::FRAME_HEADER as u64;
    cost.seconds = started.elapsed().as_secs_f64();
    Ok(cost)
}
