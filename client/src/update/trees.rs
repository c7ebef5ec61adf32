//! The trees of a new commit the device lacks: one compressed answer against its own old
//! trees, then whatever is still missing level by level; each tree checked against the id
//! its parent names before it is stored.

use std::collections::HashSet;

use anyhow::{anyhow, bail, Context, Result};
use ferry_delta::pack::{self, MAX_IDS_PER_REQUEST};
use ferry_delta::patch::{self as patch};
use ferry_store::Id;

use crate::crash;
use crate::http::{Answered, Server, Traffic};
use crate::local::Local;

/// The largest tree accepted: what the device's store holds at most.
pub(crate) const MAX_TREE: u32 = crate::local::MAX_OBJECT_LEN;

/// True if the device holds every tree under `root` (read locally, no request).
pub(crate) fn trees_complete(local: &Local, root: &Id) -> Result<bool> {
    let mut stack = vec![*root];
    let mut seen = HashSet::new();
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        let Some(tree) = local.tree(&id)? else { return Ok(false) };
        stack.extend(tree.subtrees());
    }
    Ok(true)
}

/// Stores a tree received from the server after checking it against its id; returns the
/// subtrees it names.
pub(crate) fn store_tree(local: &Local, frame: &pack::Frame) -> Result<Vec<Id>> {
    if Id::of(&frame.bytes) != frame.id {
        bail!("tree {} is corrupt: the server sent bytes that hash to {}", frame.id, Id::of(&frame.bytes));
    }
    let tree = ferry_store::Tree::decode(&frame.bytes).with_context(|| format!("tree {} does not decode", frame.id))?;
    if !local.has_object(&frame.id)? {
        local.put_object(&frame.id, &frame.bytes)?;
        crash::point(crash::Step::TreeStored);
    }
    Ok(tree.subtrees().collect())
}

/// Largest compressed or decompressed trees answer the agent accepts.
pub(crate) const MAX_TREES: usize = 256 << 20;

/// Fetches every tree under `root` not under `old_root` as one zstd frame compressed
/// against the device's own old trees, and stores them. `Ok(false)`: the answer was refused
/// or did not decode (the caller asks again uncompressed); `Err`: the network failed.
pub(crate) async fn fetch_trees_compressed(
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
pub(crate) async fn fetch_trees(
    server: &Server,
    local: &Local,
    root: &Id,
    old_root: Option<Id>,
    t: &mut Traffic,
) -> Result<()> {
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
            next.extend(tree.subtrees());
        }
        next.sort();
        next.dedup();
        level = next;
    }
    Ok(())
}
