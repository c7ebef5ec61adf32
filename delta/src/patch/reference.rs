//! The reference rule both sides of a patch compute from signed data alone: which old file
//! a new file is patched against ([`choose_reference`]), which window of it
//! ([`reference_window`]), how a commit's missing chunks are cut into patches
//! ([`plan_patches`]), the file walk they follow ([`walk_files`]), and the prefix of a
//! compressed trees answer ([`tree_prefix`]). Not here: the wire formats or zstd.

use std::collections::{BTreeMap, HashSet};

use ferry_store::read::{walk, Walked};
use ferry_store::{ChunkRef, Id, ReadTrees, Tree};

use super::{Patch, REFERENCE_MAX, TARGET_MAX};

/// A regular file of a commit, as the planner sees it.
#[derive(Debug, Clone)]
pub struct FileChunks {
    /// `/`-separated path from the root.
    pub path: Vec<u8>,
    pub chunks: Vec<ChunkRef>,
}

fn basename(path: &[u8]) -> &[u8] {
    path.rsplit(|&b| b == b'/').next().unwrap_or(path)
}

fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => b"",
    }
}

/// A name with its version-like parts removed: ASCII digits, and any run of 6 or more
/// lower-case hex digits (build hashes such as `libopenblas64_p-r0-0cf96a72.so`).
pub fn name_stem(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    let mut i = 0;
    while i < name.len() {
        let run = name[i..].iter().take_while(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)).count();
        if run >= 6 {
            i += run;
            continue;
        }
        if !name[i].is_ascii_digit() {
            out.push(name[i]);
        }
        i += 1;
    }
    out
}

/// Where a new file's reference comes from, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceRule {
    SamePath,
    SameName,
    SameStem,
}

/// The old file a new file at `path` is patched against: the old file at the same path; else,
/// among old files whose path holds no regular file in the new commit (removed or moved),
/// the first by path with the same name in the same directory, then anywhere; else the
/// same for the same [`name_stem`]. `old` is sorted by path; `gone` holds its indexes of
/// files gone from the new commit, in path order.
pub fn choose_reference<'a>(
    path: &[u8],
    old: &BTreeMap<&'a [u8], &'a [ChunkRef]>,
    gone: &[&'a [u8]],
) -> Option<(&'a [u8], ReferenceRule)> {
    if let Some((p, chunks)) = old.get_key_value(path) {
        if !chunks.is_empty() {
            return Some((p, ReferenceRule::SamePath));
        }
    }
    let name = basename(path);
    let dir = parent(path);
    let usable = |p: &&&[u8]| old.get(**p).is_some_and(|c| !c.is_empty());
    let same_name = |p: &&&[u8]| basename(p) == name;
    if let Some(p) = gone.iter().filter(usable).filter(same_name).find(|p| parent(p) == dir) {
        return Some((p, ReferenceRule::SameName));
    }
    if let Some(p) = gone.iter().filter(usable).find(same_name) {
        return Some((p, ReferenceRule::SameName));
    }
    let stem = name_stem(name);
    if stem.is_empty() {
        return None;
    }
    let same_stem = |p: &&&[u8]| name_stem(basename(p)) == stem;
    if let Some(p) = gone.iter().filter(usable).filter(same_stem).find(|p| parent(p) == dir) {
        return Some((p, ReferenceRule::SameStem));
    }
    gone.iter().filter(usable).find(same_stem).map(|p| (*p, ReferenceRule::SameStem))
}

/// The chunks of `reference` (a whole file) to use for a target spanning `[start, end)` of a
/// new file of `new_len` bytes: the whole file if it fits in [`REFERENCE_MAX`], else a window
/// of whole chunks around the same relative position, at most [`REFERENCE_MAX`] bytes.
pub fn reference_window(reference: &[ChunkRef], new_len: u64, start: u64, end: u64) -> Vec<ChunkRef> {
    let ref_len: u64 = reference.iter().map(|c| u64::from(c.len)).sum();
    if ref_len <= REFERENCE_MAX {
        return reference.to_vec();
    }
    let scale = |x: u64| (u128::from(x) * u128::from(ref_len) / u128::from(new_len.max(1))) as u64;
    let (lo, hi) = (scale(start), scale(end).max(scale(start)));
    // Centre a REFERENCE_MAX window on the mapped range, inside the file.
    let centre = lo / 2 + hi / 2;
    let win_start = centre.saturating_sub(REFERENCE_MAX / 2).min(ref_len - REFERENCE_MAX);
    let win_end = win_start + REFERENCE_MAX;
    let mut out = Vec::new();
    let mut offset = 0u64;
    for c in reference {
        let c_end = offset + u64::from(c.len);
        if offset >= win_start && c_end <= win_end {
            out.push(*c);
        }
        offset = c_end;
    }
    out
}

/// The plan for fetching a new commit's missing chunks.
#[derive(Debug, Default)]
pub struct PatchPlan {
    pub patches: Vec<Patch>,
    /// Missing chunks no reference covers, fetched as they are stored.
    pub plain: Vec<ChunkRef>,
}

/// Plans the fetch of the chunks of `new` for which `missing` holds, against the files of
/// `old` (both sorted by path, as a tree walk yields them). Each missing chunk is fetched
/// once: in the first file (by path) that needs it. Deterministic: the same two commits and
/// the same missing set give the same plan on every device and in `ferry diff`.
pub fn plan_patches(old: &[FileChunks], new: &[FileChunks], missing: impl Fn(&Id) -> bool) -> PatchPlan {
    plan_patches_by_ref(old, new.iter().map(|f| (f.path.as_slice(), f.chunks.as_slice())), missing)
}

/// [`plan_patches`] over borrowed new files `(path, chunks)`, in the order [`walk_files`]
/// yields them (a caller holding the new commit's files already need not copy them).
pub fn plan_patches_by_ref<'n>(
    old: &[FileChunks],
    new: impl Iterator<Item = (&'n [u8], &'n [ChunkRef])> + Clone,
    missing: impl Fn(&Id) -> bool,
) -> PatchPlan {
    let new_paths: HashSet<&[u8]> = new.clone().map(|(path, _)| path).collect();
    let old_map: BTreeMap<&[u8], &[ChunkRef]> = old.iter().map(|f| (f.path.as_slice(), f.chunks.as_slice())).collect();
    let gone: Vec<&[u8]> = old_map.keys().copied().filter(|p| !new_paths.contains(p)).collect();
    let mut taken: HashSet<Id> = HashSet::new();
    let mut plan = PatchPlan::default();
    for (path, chunks) in new {
        // The file's missing chunks, once each, with their offsets.
        let mut wanted: Vec<(u64, ChunkRef)> = Vec::new();
        let mut offset = 0u64;
        for c in chunks {
            if missing(&c.id) && taken.insert(c.id) {
                wanted.push((offset, *c));
            }
            offset += u64::from(c.len);
        }
        if wanted.is_empty() {
            continue;
        }
        let new_len = offset;
        let Some((reference, _)) = choose_reference(path, &old_map, &gone) else {
            plan.plain.extend(wanted.iter().map(|(_, c)| *c));
            continue;
        };
        let reference = old_map[reference];
        let mut run: Vec<(u64, ChunkRef)> = Vec::new();
        let mut run_len = 0u64;
        let flush = |run: &mut Vec<(u64, ChunkRef)>, plan: &mut PatchPlan| {
            if let (Some(first), Some(last)) = (run.first(), run.last()) {
                let (start, end) = (first.0, last.0 + u64::from(last.1.len));
                plan.patches.push(Patch {
                    reference: reference_window(reference, new_len, start, end),
                    target: run.iter().map(|(_, c)| *c).collect(),
                });
            }
            run.clear();
        };
        for (off, c) in wanted {
            if !run.is_empty() && run_len + u64::from(c.len) > TARGET_MAX {
                flush(&mut run, &mut plan);
                run_len = 0;
            }
            run_len += u64::from(c.len);
            run.push((off, c));
        }
        flush(&mut run, &mut plan);
    }
    plan
}

/// The regular files under `root`, depth first with each directory's entries in name order
/// (the order trees store them): the walk both sides of a patch plan use, which is
/// `ferry_store::read::walk`, the walk the device plans its deployment with, so a device's
/// deployment lists its files in this order too.
pub fn walk_files<T: ReadTrees + ?Sized>(trees: &T, root: &Id) -> Result<Vec<FileChunks>, T::Error>
where
    T::Error: From<ferry_store::StoreError>,
{
    let mut out = Vec::new();
    walk(trees, root, |path, walked| {
        if let Walked::File { chunks, .. } = walked {
            out.push(FileChunks { path: path.to_vec(), chunks });
        }
        Ok(())
    })?;
    Ok(out)
}

/// The reference for a compressed `/v1/trees` answer: the trees under `old_root`, breadth
/// first (entries in order, each tree once), concatenated, stopping before the first tree
/// that would take it past [`REFERENCE_MAX`]. Both sides build it from trees verified
/// against their ids, so a device gets the server's exact prefix.
pub fn tree_prefix<E: From<ferry_store::DecodeError>>(
    old_root: &Id,
    mut tree_bytes: impl FnMut(&Id) -> Result<Vec<u8>, E>,
) -> Result<Vec<u8>, E> {
    let mut out = Vec::new();
    let mut queue = std::collections::VecDeque::from([*old_root]);
    let mut seen = HashSet::new();
    while let Some(id) = queue.pop_front() {
        if !seen.insert(id) {
            continue;
        }
        let bytes = tree_bytes(&id)?;
        if (out.len() + bytes.len()) as u64 > REFERENCE_MAX {
            break;
        }
        let tree = Tree::decode(&bytes)?;
        queue.extend(tree.subtrees());
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::testing::cref;
    use super::*;

    fn file(path: &str, chunks: Vec<ChunkRef>) -> FileChunks {
        FileChunks { path: path.as_bytes().to_vec(), chunks }
    }

    #[test]
    fn stems_drop_versions_and_build_hashes() {
        assert_eq!(name_stem(b"libfoo.so.1.2.3"), b"libfoo.so...");
        assert_eq!(name_stem(b"libfoo.so.1.3.0"), b"libfoo.so...");
        assert_eq!(
            name_stem(b"libopenblas64_p-r0-0cf96a72.3.23.dev.so"),
            name_stem(b"libopenblas64_p-r0-5007b62f.3.23.dev.so")
        );
        assert_ne!(name_stem(b"libbar.so.1"), name_stem(b"libfoo.so.1"));
    }

    #[test]
    fn references_follow_the_rule_in_order() {
        let chunks = [vec![cref(1, 10)], vec![cref(2, 10)], vec![cref(3, 10)], vec![cref(4, 10)], vec![]];
        let old: BTreeMap<&[u8], &[ChunkRef]> = ["bin/app", "lib/libz.so.1.2", "old/readme", "share/readme", "empty"]
            .iter()
            .zip(&chunks)
            .map(|(p, c)| (p.as_bytes(), c.as_slice()))
            .collect();
        // Files gone from the new commit: everything but bin/app.
        let gone: Vec<&[u8]> = old.keys().copied().filter(|p| *p != b"bin/app").collect();
        let pick = |p: &str| {
            choose_reference(p.as_bytes(), &old, &gone).map(|(p, r)| (String::from_utf8_lossy(p).into_owned(), r))
        };
        assert_eq!(pick("bin/app"), Some(("bin/app".into(), ReferenceRule::SamePath)));
        assert_eq!(pick("lib/libz.so.1.3"), Some(("lib/libz.so.1.2".into(), ReferenceRule::SameStem)));
        assert_eq!(pick("share/readme"), Some(("share/readme".into(), ReferenceRule::SamePath)));
        assert_eq!(pick("doc/readme"), Some(("old/readme".into(), ReferenceRule::SameName)));
        assert_eq!(pick("old/readme.txt"), None);
        assert_eq!(pick("empty"), None);
    }

    #[test]
    fn large_references_are_windowed_around_the_same_position() {
        // A 64 MiB reference of 256 KiB chunks; the target is the middle of a same-size file.
        let reference: Vec<ChunkRef> =
            (0..256).map(|i| ChunkRef { id: Id::of(&[i as u8, 1]), len: 256 << 10 }).collect();
        let total = 64u64 << 20;
        let w = reference_window(&reference, total, 32 << 20, (32 << 20) + (256 << 10));
        let len: u64 = w.iter().map(|c| u64::from(c.len)).sum();
        assert!((REFERENCE_MAX - (512 << 10)..=REFERENCE_MAX).contains(&len), "{len}");
        let first = reference.iter().position(|c| c == &w[0]).unwrap();
        assert!((112..=116).contains(&first), "window starts at chunk {first}");
        // At the ends the window stays inside the file.
        assert_eq!(reference_window(&reference, total, 0, 1000)[0], reference[0]);
        assert_eq!(reference_window(&reference, total, total - 10, total).last(), reference.last());
        // A small reference is used whole.
        assert_eq!(reference_window(&reference[..4], 1 << 20, 0, 10), reference[..4].to_vec());
    }

    #[test]
    fn plans_cover_each_missing_chunk_once() {
        let old = vec![file("a", vec![cref(1, 100), cref(2, 100)]), file("gone/lib.so.1", vec![cref(3, 100)])];
        let new = vec![
            file("a", vec![cref(1, 100), cref(10, 100), cref(11, 100)]),
            file("b", vec![cref(10, 100), cref(12, 100)]),
            file("lib/lib.so.2", vec![cref(13, 100)]),
        ];
        let have: HashSet<Id> = [1u8, 2, 3].iter().map(|n| Id::of(&[*n])).collect();
        let plan = plan_patches(&old, &new, |id| !have.contains(id));
        assert_eq!(plan.patches.len(), 2);
        assert_eq!(plan.patches[0].reference, vec![cref(1, 100), cref(2, 100)]);
        assert_eq!(plan.patches[0].target, vec![cref(10, 100), cref(11, 100)]);
        assert_eq!(plan.patches[1].reference, vec![cref(3, 100)]);
        assert_eq!(plan.patches[1].target, vec![cref(13, 100)]);
        // b has no reference: its new chunk comes plain, the shared one is not fetched twice.
        assert_eq!(plan.plain, vec![cref(12, 100)]);
        // Long runs are cut at TARGET_MAX.
        let big: Vec<ChunkRef> = (0..40).map(|i| ChunkRef { id: Id::of(&[i, 9]), len: 256 << 10 }).collect();
        let plan = plan_patches(&[file("x", vec![cref(1, 100)])], &[file("x", big)], |_| true);
        assert_eq!(plan.patches.len(), 3);
        assert!(plan.patches.iter().all(|p| p.target_len() <= TARGET_MAX));
    }
}
