//! Verifying a whole repository: every chunk's hash, every object's encoding, everything a
//! branch reaches, and every signature.
//!
//! fsck reports problems instead of stopping at the first one, naming each broken object, so
//! an operator sees the whole damage in one run. It never writes.

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use ferry_store::object::{object_kind, ObjectKind};
use ferry_store::{chunk::decode_chunk, Commit, EntryKind, Id, PublicKey, Repository, Tree};
use rayon::prelude::*;

/// One broken thing: what it is (e.g. `chunk 3f2a…`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Problem {
    pub object: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FsckReport {
    pub chunks: u64,
    pub objects: u64,
    pub commits: u64,
    pub branches: u64,
    pub problems: Vec<Problem>,
}

impl FsckReport {
    fn problem(&mut self, object: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { object: object.into(), message: message.into() });
    }
}

/// Chunks are verified in batches of this many, in parallel.
const BATCH: usize = 256;

/// Checks everything; `trusted` keys, when given, must have signed every reachable commit.
pub fn fsck(repo: &Repository, trusted: &[PublicKey], progress: &dyn crate::import::Progress) -> Result<FsckReport> {
    let mut report = FsckReport::default();

    // 1. Every stored chunk decompresses to bytes that hash to its id.
    let mut good_chunks: HashMap<Id, u32> = HashMap::new();
    let mut batch: Vec<(Id, Option<ferry_store::ChunkInfo>, Vec<u8>)> = Vec::new();
    let mut check_batch = |batch: &mut Vec<(Id, Option<ferry_store::ChunkInfo>, Vec<u8>)>, report: &mut FsckReport| {
        let results: Vec<(Id, std::result::Result<u32, String>)> = batch
            .par_iter()
            .map(|(id, info, stored)| {
                let r = match info {
                    None => Err("has no index entry".to_string()),
                    Some(info) if info.stored_len as usize != stored.len() => {
                        Err(format!("stored frame is {} bytes, index says {}", stored.len(), info.stored_len))
                    }
                    Some(info) => decode_chunk(id, stored, info.len).map(|_| info.len).map_err(|e| e.to_string()),
                };
                progress.advance(stored.len() as u64);
                (*id, r)
            })
            .collect();
        for (id, r) in results {
            report.chunks += 1;
            match r {
                Ok(len) => {
                    good_chunks.insert(id, len);
                }
                Err(message) => report.problem(format!("chunk {id}"), message),
            }
        }
        batch.clear();
    };
    repo.for_each_chunk(|id, info, stored| {
        batch.push((id, info, stored.to_vec()));
        if batch.len() >= BATCH {
            check_batch(&mut batch, &mut report);
        }
        Ok(())
    })?;
    check_batch(&mut batch, &mut report);

    // 2. Every stored object hashes to its id and decodes.
    let mut trees: HashMap<Id, Tree> = HashMap::new();
    let mut commits: HashMap<Id, Commit> = HashMap::new();
    repo.for_each_object(|key, bytes| {
        report.objects += 1;
        let Some(id) = Id::from_slice(key) else {
            report.problem(format!("object key {}", hex::encode(key)), "is not a 32-byte id");
            return Ok(());
        };
        let actual = Id::of(bytes);
        if actual != id {
            report.problem(format!("object {id}"), format!("corrupt: its bytes hash to {actual}"));
            return Ok(());
        }
        match object_kind(bytes) {
            Some(ObjectKind::Tree) => match Tree::decode(bytes) {
                Ok(t) => {
                    trees.insert(id, t);
                }
                Err(e) => report.problem(format!("tree {id}"), format!("does not decode: {e}")),
            },
            Some(ObjectKind::Commit) => match Commit::decode(bytes) {
                Ok(c) => {
                    commits.insert(id, c);
                }
                Err(e) => report.problem(format!("commit {id}"), format!("does not decode: {e}")),
            },
            Some(ObjectKind::Keys) => {
                if let Err(e) = ferry_store::channel::KeyDoc::decode(bytes) {
                    report.problem(format!("key document {id}"), format!("does not decode: {e}"));
                }
            }
            Some(ObjectKind::Channel) => {
                if let Err(e) = ferry_store::channel::ChannelDoc::decode(bytes) {
                    report.problem(format!("channel document {id}"), format!("does not decode: {e}"));
                }
            }
            None => report.problem(format!("object {id}"), "is neither a tree, a commit nor a signed document"),
        }
        Ok(())
    })?;

    // 3. Everything a branch reaches exists, is intact and is signed.
    let mut seen_commits = HashSet::new();
    let mut seen_trees = HashSet::new();
    for (branch, head) in repo.branches()? {
        report.branches += 1;
        let mut next = Some(head);
        let mut from = format!("branch {branch}");
        while let Some(id) = next.take() {
            if !seen_commits.insert(id) {
                break;
            }
            let Some(commit) = commits.get(&id) else {
                report.problem(format!("commit {id}"), format!("missing or unreadable (reached from {from})"));
                break;
            };
            report.commits += 1;
            check_signatures(repo, &id, trusted, &mut report)?;
            check_tree(
                &commit.root,
                &format!("commit {}", id.short()),
                &trees,
                &good_chunks,
                &mut seen_trees,
                &mut report,
                0,
            );
            from = format!("commit {}", id.short());
            next = commit.parent;
        }
    }
    report.problems.sort();
    report.problems.dedup();
    // 4. The key chain walks from its first roots, and every channel's newest document is
    //    signed by a channel key of the newest key document (what devices will check).
    match crate::channels::current_trust(repo) {
        Err(e) => report.problem("key documents".to_string(), format!("{e:#}")),
        Ok(trust) => {
            for (name, id) in repo.channels()? {
                let signed = match (&trust, repo.read_envelope(&id)) {
                    (Some(t), Ok(e)) => t.quorum(ferry_store::Signed::Channel).met(&e.id(), &e.signatures),
                    _ => false,
                };
                if !signed {
                    report.problem(
                        format!("channel {name}"),
                        format!("document {id} is not signed by enough channel keys of the newest key document (its channel threshold)"),
                    );
                }
            }
        }
    }
    Ok(report)
}

fn check_signatures(repo: &Repository, id: &Id, trusted: &[PublicKey], report: &mut FsckReport) -> Result<()> {
    let sigs = repo.signatures(id)?;
    if sigs.is_empty() {
        report.problem(format!("commit {id}"), "has no signature");
        return Ok(());
    }
    let mut trusted_ok = false;
    for s in &sigs {
        let valid = PublicKey::from_bytes(&s.key).map(|k| k.verify_commit(id, &s.signature));
        match valid {
            Ok(true) => trusted_ok |= trusted.iter().any(|t| t.to_bytes() == s.key),
            Ok(false) => report
                .problem(format!("commit {id}"), format!("signature by key {} does not verify", hex::encode(s.key))),
            Err(e) => report.problem(format!("commit {id}"), format!("signature by an unusable key: {e}")),
        }
    }
    if !trusted.is_empty() && !trusted_ok {
        report.problem(format!("commit {id}"), "has no valid signature by a trusted key");
    }
    Ok(())
}

fn check_tree(
    id: &Id,
    from: &str,
    trees: &HashMap<Id, Tree>,
    chunks: &HashMap<Id, u32>,
    seen: &mut HashSet<Id>,
    report: &mut FsckReport,
    depth: usize,
) {
    if !seen.insert(*id) {
        return;
    }
    if depth > ferry_store::object::MAX_DEPTH {
        report.problem(
            format!("tree {id}"),
            format!("nested deeper than {} directories", ferry_store::object::MAX_DEPTH),
        );
        return;
    }
    let Some(tree) = trees.get(id) else {
        report.problem(format!("tree {id}"), format!("missing or unreadable (reached from {from})"));
        return;
    };
    for e in &tree.entries {
        match &e.kind {
            EntryKind::Dir { tree: sub } => {
                check_tree(sub, &format!("tree {}", id.short()), trees, chunks, seen, report, depth + 1)
            }
            EntryKind::File { chunks: list, .. } => {
                for c in list {
                    match chunks.get(&c.id) {
                        Some(len) if *len == c.len => {}
                        Some(len) => report.problem(
                            format!("chunk {}", c.id),
                            format!("is {len} bytes, tree {} says {}", id.short(), c.len),
                        ),
                        None => report.problem(
                            format!("chunk {}", c.id),
                            format!(
                                "missing or corrupt (needed by {:?} in tree {})",
                                String::from_utf8_lossy(&e.name),
                                id.short()
                            ),
                        ),
                    }
                }
            }
            EntryKind::Symlink { .. } => {}
        }
    }
}
