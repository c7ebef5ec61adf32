//! An offline bundle as a [`Source`]: its trees (held, verified, until the release is
//! going to be installed), its manifest (compared with what the device lacks before
//! anything is written), and its chunks, verified and staged one at a time as they are read.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use anyhow::Result;
use ferry_delta::bundle::{BundleReader, Section};
use ferry_store::{Commit, EntryKind, Id, ReadTrees, Tree};

use crate::local::Local;
use crate::update::{Plan, Source, StagingSync};

use super::decide::made_for;
use super::refused;

pub(super) struct Bundle<R: Read> {
    pub(super) reader: BundleReader<R>,
    /// What the bundle was made for, and what the device runs, for refusals.
    pub(super) from: Vec<Id>,
    pub(super) current: Option<Id>,
    /// The commit's bytes (verified against its id and signature), stored by `keep`.
    pub(super) commit_bytes: Vec<u8>,
    root: Id,
    /// The trees the signed root reaches that the device lacks, verified, until `keep`.
    pub(super) trees: HashMap<Id, Vec<u8>>,
    pub(super) chunks_used: u64,
    pub(super) chunks_skipped: u64,
    version: String,
}

impl<R: Read> Bundle<R> {
    pub(super) fn new(reader: BundleReader<R>, from: Vec<Id>, current: Option<Id>, commit: (Vec<u8>, &Commit)) -> Self {
        Bundle {
            reader,
            from,
            current,
            root: commit.1.root,
            commit_bytes: commit.0,
            trees: HashMap::new(),
            chunks_used: 0,
            chunks_skipped: 0,
            version: String::new(),
        }
    }
}

impl<R: Read> Source for Bundle<R> {
    /// The trees the signed root reaches (parents come first), each checked against the id
    /// its parent names; trees for other hardware are read past unheld, and the manifest
    /// may list no more chunks than the trees name. A directory whose tree neither the
    /// bundle nor the device holds is a refusal naming it.
    async fn trees(&mut self, local: &Local, commit: &Commit) -> Result<()> {
        self.version = commit.version.to_string();
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
        let mut tree_bytes = 0usize;
        loop {
            self.reader.limit_manifest(chunk_refs);
            let trees = &self.trees;
            let section = self
                .reader
                .next_section_wanting(|id| expected.contains(id) && !trees.contains_key(id))
                .map_err(refused)?
                .ok_or_else(|| refused("it has no manifest"))?;
            match section {
                Section::Tree { id, bytes } if expected.contains(&id) && !self.trees.contains_key(&id) => {
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
                    self.trees.insert(id, bytes);
                }
                Section::Tree { .. } => {}
                Section::Manifest(_) => break,
                _ => return Err(refused("it has no manifest")),
            }
        }
        let absent = missing_trees(local, &self.trees, &commit.root)?;
        if !absent.is_empty() {
            let shown = absent.iter().take(5).map(|(path, id)| format!("{path} ({})", id.short())).collect::<Vec<_>>();
            let more = if absent.len() > 5 { format!(" and {} more", absent.len() - 5) } else { String::new() };
            return Err(refused(format!(
                "it lacks the listings of {} directories of release {} that this device does not hold either: {}{more}; {}. Nothing was changed",
                absent.len(),
                commit.version,
                shown.join(", "),
                made_for(&self.from, self.current)
            )));
        }
        Ok(())
    }

    fn tree_reader<'a>(&'a self, local: &'a Local) -> impl ReadTrees<Error = anyhow::Error> + 'a {
        Held { trees: &self.trees, local }
    }

    /// Every chunk the device lacks must be in the manifest, with the length the tree gives
    /// it; otherwise the bundle was made for devices on another release, and the refusal
    /// names the files it cannot build.
    fn can_deliver(&self, local: &Local, plan: &Plan, missing: &[(Id, u32)]) -> Result<()> {
        let in_bundle: HashMap<Id, u32> = self.reader.manifest().iter().copied().collect();
        let mut lacking: HashSet<Id> = HashSet::new();
        for &(id, len) in missing {
            match in_bundle.get(&id) {
                Some(l) if *l == len => {}
                Some(l) => {
                    return Err(refused(format!(
                        "it lists chunk {id} as {l} bytes, and release {}'s tree says {len}",
                        self.version
                    )))
                }
                None => {
                    lacking.insert(id);
                }
            }
        }
        if lacking.is_empty() {
            return Ok(());
        }
        // Each lacking chunk named by the first file that needs it, in the tree's order.
        let mut named: HashSet<Id> = HashSet::new();
        let mut files: Vec<String> = Vec::new();
        for f in plan.files.iter().filter(|f| !local.object_path(&f.object).exists()) {
            for c in &f.chunks {
                if lacking.contains(&c.id) && named.insert(c.id) {
                    files.push(format!("/{}", f.path.display()));
                }
            }
        }
        files.dedup();
        let shown = files.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        let more = if files.len() > 5 { format!(" and {} more", files.len() - 5) } else { String::new() };
        Err(refused(format!(
            "it lacks {} chunks this device needs for release {} (in {shown}{more}); {}. Nothing was changed",
            lacking.len(),
            self.version,
            made_for(&self.from, self.current)
        )))
    }

    /// From here on the device writes: the commit and the trees, all verified.
    fn keep(&mut self, local: &Local, head: &Id) -> Result<()> {
        if !local.has_object(head)? {
            local.put_object(head, &self.commit_bytes)?;
        }
        let mut stack = vec![self.root];
        let mut seen = HashSet::new();
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            if let Some(bytes) = self.trees.get(&id) {
                if !local.has_object(&id)? {
                    local.put_object(&id, bytes)?;
                }
            }
            if let Some(tree) = local.tree(&id)? {
                stack.extend(tree.subtrees());
            }
        }
        Ok(())
    }

    /// The chunks that follow the manifest: each one the device needs is verified and
    /// staged as it is read, the others are counted and skipped; a cut or damaged bundle is
    /// refused at its end (what was staged is kept for the next try) and nothing is switched.
    async fn chunks(&mut self, local: &Local, _: &Plan, missing: &[(Id, u32)]) -> Result<()> {
        self.trees = HashMap::new();
        let needed: HashMap<Id, u32> = missing.iter().copied().collect();
        let mut sync = StagingSync::new(local);
        loop {
            match self.reader.next_section() {
                Ok(Some(Section::Chunk { id, frame })) => match needed.get(&id) {
                    Some(len) if !local.is_staged(&id) => {
                        crate::update::stage_chunk(local, &id, &frame, *len)
                            .map_err(|e| refused(format!("its chunk {id} is damaged: {e:#}")))?;
                        self.chunks_used += 1;
                        sync.tick();
                    }
                    _ => self.chunks_skipped += 1,
                },
                Ok(Some(_)) => return Err(refused("it has a section after its chunks")),
                Ok(None) => return Ok(()),
                Err(e) => {
                    drop(sync);
                    let kept = match self.chunks_used {
                        0 => String::new(),
                        n => format!("the {n} chunks verified so far are kept for the next try, and "),
                    };
                    return Err(refused(format!("{e}; {kept}nothing was switched")));
                }
            }
        }
    }
}

/// A bundle's trees for planning: those it holds (verified against their ids as they were
/// read), then the device's own; a tree neither holds is a refusal.
struct Held<'a> {
    trees: &'a HashMap<Id, Vec<u8>>,
    local: &'a Local,
}

impl ReadTrees for Held<'_> {
    type Error = anyhow::Error;

    fn tree(&self, id: &Id) -> Result<Tree> {
        if let Some(bytes) = self.trees.get(id) {
            return Tree::decode(bytes).map_err(|e| refused(format!("tree {id} does not decode: {e}")));
        }
        self.local.tree(id)?.ok_or_else(|| refused(format!("it lacks tree {id}")))
    }
}

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

/// The directories under `root` whose trees neither the bundle nor the device holds, with
/// their paths (the walk stops at each).
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
