//! Chunk patches: the chunks a device lacks, compressed against a file it already holds.
//!
//! Content-defined chunking saves bytes only where whole chunks survive between versions. In
//! compiled code a small change moves addresses everywhere, so nearly every chunk of a
//! changed binary is new, yet most of its bytes are still in the device's old copy. A patch
//! sends a run of missing chunks as one zstd frame compressed with a *reference* the device
//! holds as the prefix (zstd's `--patch-from`): the previous version of the same file.
//!
//! Both sides compute the same thing from signed data alone:
//! - [`plan_patches`] picks, for each file of the new commit, a reference in the old commit
//!   ([`choose_reference`]: same path, else a file gone from the new commit with the same
//!   name elsewhere, else one whose name differs only in digits, e.g. a library whose version
//!   or soname changed), and cuts the file's missing chunks into [`Patch`]es of at most
//!   [`TARGET_MAX`] bytes, each with a window of at most [`REFERENCE_MAX`] bytes of the
//!   reference around the same relative position. Bounded windows bound memory on both
//!   sides whatever the file size.
//! - A patch is named by the chunk ids alone ([`Patch::key`]), so the thousandth device on
//!   the same version asks for the same keys and a server's cache answers it.
//!
//! ```text
//! request body:  item × n                 (n ≤ MAX_PATCHES_PER_REQUEST, MAX_PATCH_IDS ids in all)
//! item:          u32 LE r ‖ u32 LE t ‖ reference id[32] × r ‖ target id[32] × t
//! response body: pack frames (see `pack`), one per item in request order, framed by the key
//! frame bytes:   0x00 ‖ zstd frame of the target chunks, concatenated, with the reference as prefix
//!             |  0x01 ‖ (u32 LE length ‖ stored chunk frame) × t     when the patch is no smaller
//! ```
//!
//! The receiver trusts none of it: it rebuilds the reference from its own chunks, each
//! verified, decompresses to exactly the target's signed length, and checks every chunk's
//! BLAKE3 before use.

use std::collections::{BTreeMap, HashSet};

#[cfg(feature = "repository")]
use ferry_store::Repository;
use ferry_store::{ChunkRef, EntryKind, Id, Tree};

use crate::pack::max_stored_len;

/// zstd level of patches unless the server is told otherwise (measured in ARCHITECTURE.md).
pub const DEFAULT_LEVEL: i32 = 19;
/// Largest reference window of one patch (bytes). Both sides hold it in memory.
pub const REFERENCE_MAX: u64 = 8 << 20;
/// Largest run of target chunks in one patch (uncompressed bytes).
pub const TARGET_MAX: u64 = 4 << 20;
/// Most patches one request may name.
pub const MAX_PATCHES_PER_REQUEST: usize = 16384;
/// Most chunk ids (references and targets together) one request may name.
pub const MAX_PATCH_IDS: usize = 65536;
/// Largest request body (bytes).
pub const MAX_PATCH_REQUEST: usize = MAX_PATCH_IDS * 32 + MAX_PATCHES_PER_REQUEST * 8;
/// Most target bytes (uncompressed) one request may name: the server refuses more, and a
/// device cuts its batches at this size whatever its `batch_bytes`.
pub const MAX_REQUEST_TARGET_BYTES: u64 = 256 << 20;
/// zstd's largest window a patch may need: reference plus target, rounded up.
pub const WINDOW_LOG_MAX: u32 = 24;

const TAG_PATCH: u8 = 0;
const TAG_PLAIN: u8 = 1;

/// A run of chunks a device lacks, to be compressed against chunks it holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Patch {
    /// The reference window, in file order: chunks of a file the device holds.
    pub reference: Vec<ChunkRef>,
    /// The chunks wanted, in file order.
    pub target: Vec<ChunkRef>,
}

impl Patch {
    /// The patch's name: what the request says, so the same request means the same answer.
    pub fn key(&self) -> Id {
        key_of(self.reference.iter().map(|c| &c.id), self.target.iter().map(|c| &c.id))
    }

    pub fn reference_len(&self) -> u64 {
        self.reference.iter().map(|c| u64::from(c.len)).sum()
    }

    pub fn target_len(&self) -> u64 {
        self.target.iter().map(|c| u64::from(c.len)).sum()
    }

    /// The longest answer the receiver accepts for this patch.
    pub fn max_response_len(&self) -> u32 {
        let plain: u64 = self.target.iter().map(|c| 4 + u64::from(max_stored_len(c.len))).sum();
        let patch = zstd::zstd_safe::compress_bound(self.target_len() as usize) as u64;
        (1 + plain.max(patch)).min(u64::from(u32::MAX)) as u32
    }
}

fn key_of<'a>(reference: impl ExactSizeIterator<Item = &'a Id>, target: impl ExactSizeIterator<Item = &'a Id>) -> Id {
    let mut h = blake3::Hasher::new();
    h.update(b"ferry patch v1\0");
    h.update(&(reference.len() as u32).to_le_bytes());
    h.update(&(target.len() as u32).to_le_bytes());
    for id in reference.chain(target) {
        h.update(id.as_bytes());
    }
    Id(*h.finalize().as_bytes())
}

/// One item of a patch request as the server reads it: ids only (their lengths come from
/// the repository).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchRequest {
    pub reference: Vec<Id>,
    pub target: Vec<Id>,
}

impl PatchRequest {
    pub fn key(&self) -> Id {
        key_of(self.reference.iter(), self.target.iter())
    }
}

/// Encodes a request body naming `patches`.
pub fn encode_patch_request<'a>(patches: impl IntoIterator<Item = &'a Patch>) -> Vec<u8> {
    let mut out = Vec::new();
    for p in patches {
        out.extend_from_slice(&(p.reference.len() as u32).to_le_bytes());
        out.extend_from_slice(&(p.target.len() as u32).to_le_bytes());
        for c in p.reference.iter().chain(&p.target) {
            out.extend_from_slice(c.id.as_bytes());
        }
    }
    out
}

/// Why a patch request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchRequestError {
    #[error("patch request is {0} bytes; the limit is {MAX_PATCH_REQUEST}")]
    TooLarge(usize),
    #[error("patch request ends inside item {0}")]
    Truncated(usize),
    #[error("patch request item {0} names no target chunk")]
    EmptyTarget(usize),
    #[error("patch request names more than {MAX_PATCHES_PER_REQUEST} patches or {MAX_PATCH_IDS} chunk ids")]
    TooMany,
    #[error("patch request names patch {0} twice")]
    Duplicate(Id),
}

/// Decodes a request body. Lengths are checked against the repository by the caller.
pub fn decode_patch_request(body: &[u8]) -> Result<Vec<PatchRequest>, PatchRequestError> {
    if body.len() > MAX_PATCH_REQUEST {
        return Err(PatchRequestError::TooLarge(body.len()));
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut ids_total = 0usize;
    let mut rest = body;
    while !rest.is_empty() {
        let n = out.len();
        if n == MAX_PATCHES_PER_REQUEST {
            return Err(PatchRequestError::TooMany);
        }
        let header = rest.get(..8).ok_or(PatchRequestError::Truncated(n))?;
        let r = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let t = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        ids_total = ids_total.saturating_add(r).saturating_add(t);
        if ids_total > MAX_PATCH_IDS {
            return Err(PatchRequestError::TooMany);
        }
        if t == 0 {
            return Err(PatchRequestError::EmptyTarget(n));
        }
        let ids = rest.get(8..8 + 32 * (r + t)).ok_or(PatchRequestError::Truncated(n))?;
        let mut all = ids.chunks_exact(32).map(|c| Id::from_slice(c).ok_or(PatchRequestError::Truncated(n)));
        let reference = all.by_ref().take(r).collect::<Result<Vec<_>, _>>()?;
        let target = all.collect::<Result<Vec<_>, _>>()?;
        let item = PatchRequest { reference, target };
        if !seen.insert(item.key()) {
            return Err(PatchRequestError::Duplicate(item.key()));
        }
        out.push(item);
        rest = &rest[8 + 32 * (r + t)..];
    }
    Ok(out)
}

fn window_log(len: u64) -> u32 {
    let bits = 64 - len.max(1).saturating_sub(1).leading_zeros();
    bits.clamp(10, WINDOW_LOG_MAX)
}

fn zstd_error(code: usize) -> std::io::Error {
    std::io::Error::other(zstd::zstd_safe::get_error_name(code))
}

/// Compresses `target` with `reference` as zstd's prefix at `level`.
pub fn compress_patch(reference: &[u8], target: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    use zstd::zstd_safe::{CCtx, CParameter};
    let mut cctx = CCtx::try_create().ok_or_else(|| std::io::Error::other("zstd context"))?;
    cctx.set_parameter(CParameter::CompressionLevel(level)).map_err(zstd_error)?;
    cctx.set_parameter(CParameter::WindowLog(window_log((reference.len() + target.len()) as u64)))
        .map_err(zstd_error)?;
    cctx.set_parameter(CParameter::ContentSizeFlag(true)).map_err(zstd_error)?;
    cctx.ref_prefix(reference).map_err(zstd_error)?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(target.len()));
    cctx.compress2(&mut out, target).map_err(zstd_error)?;
    Ok(out)
}

/// Decompresses a patch made by [`compress_patch`] to exactly `len` bytes.
pub fn decompress_patch(reference: &[u8], patch: &[u8], len: usize) -> std::io::Result<Vec<u8>> {
    use zstd::zstd_safe::{DCtx, DParameter};
    let mut dctx = DCtx::try_create().ok_or_else(|| std::io::Error::other("zstd context"))?;
    dctx.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX)).map_err(zstd_error)?;
    dctx.ref_prefix(reference).map_err(zstd_error)?;
    // One byte of room more than expected, so a longer output is detected, not truncated.
    let mut out = Vec::with_capacity(len + 1);
    let n = dctx.decompress(&mut out, patch).map_err(zstd_error)?;
    if n != len {
        return Err(std::io::Error::other(format!("patch decompressed to {n} bytes, not {len}")));
    }
    Ok(out)
}

/// Decompresses one zstd frame made with [`compress_patch`] as its bytes arrive, so that
/// neither the compressed nor the decompressed whole is ever held: a frame that declares
/// or expands to far more than it should (8 KB of zeros can claim 256 MiB) costs its
/// output buffer and no more, and stops at `max` bytes of output.
pub struct PrefixDecoder<'a> {
    dctx: zstd::zstd_safe::DCtx<'a>,
    out: Vec<u8>,
    produced: u64,
    max: u64,
    finished: bool,
}

impl std::fmt::Debug for PrefixDecoder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixDecoder").field("produced", &self.produced).field("finished", &self.finished).finish()
    }
}

impl<'a> PrefixDecoder<'a> {
    /// Output is handed out at most this many bytes at a time.
    const PIECE: usize = 128 << 10;

    pub fn new(reference: &'a [u8], max: u64) -> std::io::Result<PrefixDecoder<'a>> {
        use zstd::zstd_safe::{DCtx, DParameter};
        let mut dctx = DCtx::try_create().ok_or_else(|| std::io::Error::other("zstd context"))?;
        dctx.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX)).map_err(zstd_error)?;
        dctx.ref_prefix(reference).map_err(zstd_error)?;
        Ok(PrefixDecoder { dctx, out: vec![0; Self::PIECE], produced: 0, max, finished: false })
    }

    /// Decompresses `input`, handing each piece of output to `sink` as it comes.
    pub fn feed(&mut self, input: &[u8], mut sink: impl FnMut(&[u8]) -> std::io::Result<()>) -> std::io::Result<()> {
        use zstd::zstd_safe::{InBuffer, OutBuffer};
        let mut inb = InBuffer::around(input);
        loop {
            if self.finished {
                if inb.pos() < input.len() {
                    return Err(std::io::Error::other("bytes after the end of the compressed frame"));
                }
                return Ok(());
            }
            let mut outb = OutBuffer::around(self.out.as_mut_slice());
            let hint = self.dctx.decompress_stream(&mut outb, &mut inb).map_err(zstd_error)?;
            let n = outb.pos();
            self.produced += n as u64;
            if self.produced > self.max {
                return Err(std::io::Error::other(format!("decompresses to more than {} bytes", self.max)));
            }
            sink(self.out.get(..n).unwrap_or_default())?;
            if hint == 0 {
                self.finished = true;
                continue;
            }
            // Input used up and the output not full: zstd holds nothing more back.
            if inb.pos() == input.len() && n < self.out.len() {
                return Ok(());
            }
        }
    }

    /// Call at the end of the input: fails if the frame did not end.
    pub fn finish(&self) -> std::io::Result<()> {
        if !self.finished {
            return Err(std::io::Error::other("the compressed frame is cut short"));
        }
        Ok(())
    }
}

/// The answer for one patch, built by the server: the patch if it is smaller than the
/// target's stored frames, else those frames.
pub fn encode_patch_response(
    reference: &[u8],
    target: &[u8],
    stored: &[Vec<u8>],
    level: i32,
) -> std::io::Result<Vec<u8>> {
    let plain_len: usize = stored.iter().map(Vec::len).sum();
    let patch = compress_patch(reference, target, level)?;
    if patch.len() >= plain_len {
        return Ok(encode_plain_response(stored));
    }
    let mut out = Vec::with_capacity(1 + patch.len());
    out.push(TAG_PATCH);
    out.extend_from_slice(&patch);
    Ok(out)
}

/// The plain form of an answer: the target's stored frames, for a patch that is no smaller
/// or that the server will not compute (its work budget for the request is spent).
pub fn encode_plain_response(stored: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + stored.iter().map(|f| 4 + f.len()).sum::<usize>());
    out.push(TAG_PLAIN);
    for f in stored {
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// What one patch answer carries.
#[derive(Debug)]
pub enum PatchPayload<'a> {
    /// The target chunks' bytes, concatenated; not yet verified.
    Patched(Vec<u8>),
    /// The target chunks' stored zstd frames, in order; not yet verified.
    Plain(Vec<&'a [u8]>),
}

/// Why a patch answer cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("patch {key} is empty")]
    Empty { key: Id },
    #[error("patch {key} has unknown kind {tag}")]
    UnknownKind { key: Id, tag: u8 },
    #[error("patch {key} does not decompress against its reference: {reason}")]
    Decompress { key: Id, reason: String },
    #[error("patch {key}'s plain frames are malformed")]
    BadPlain { key: Id },
}

/// Reads one patch answer. `reference` is the window's bytes, rebuilt and verified by the
/// caller; `None` means the caller could not rebuild it, and only a plain answer is usable.
pub fn decode_patch_response<'a>(
    patch: &Patch,
    reference: Option<&[u8]>,
    bytes: &'a [u8],
) -> Result<PatchPayload<'a>, PatchError> {
    let key = patch.key();
    let (&tag, body) = bytes.split_first().ok_or(PatchError::Empty { key })?;
    match tag {
        TAG_PATCH => {
            let reference = reference
                .ok_or_else(|| PatchError::Decompress { key, reason: "the reference is not available".into() })?;
            let out = decompress_patch(reference, body, patch.target_len() as usize)
                .map_err(|e| PatchError::Decompress { key, reason: e.to_string() })?;
            Ok(PatchPayload::Patched(out))
        }
        TAG_PLAIN => {
            let mut frames = Vec::with_capacity(patch.target.len());
            let mut rest = body;
            for _ in &patch.target {
                let len = rest.get(..4).ok_or(PatchError::BadPlain { key })?;
                let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
                frames.push(rest.get(4..4 + len).ok_or(PatchError::BadPlain { key })?);
                rest = &rest[4 + len..];
            }
            if !rest.is_empty() {
                return Err(PatchError::BadPlain { key });
            }
            Ok(PatchPayload::Plain(frames))
        }
        tag => Err(PatchError::UnknownKind { key, tag }),
    }
}

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
/// (the order trees store them): the walk both sides of a patch plan use.
pub fn walk_files<E>(root: &Id, mut read_tree: impl FnMut(&Id) -> Result<Tree, E>) -> Result<Vec<FileChunks>, E> {
    let mut out = Vec::new();
    // (tree, its path, index of the next entry): an explicit stack, whatever the nesting.
    let mut stack: Vec<(Tree, Vec<u8>, usize)> = vec![(read_tree(root)?, Vec::new(), 0)];
    while let Some((tree, prefix, i)) = stack.last_mut() {
        let Some(e) = tree.entries.get(*i) else {
            stack.pop();
            continue;
        };
        *i += 1;
        let mut path = prefix.clone();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&e.name);
        match &e.kind {
            EntryKind::File { chunks, .. } => out.push(FileChunks { path, chunks: chunks.clone() }),
            EntryKind::Dir { tree } => {
                let sub = read_tree(tree)?;
                stack.push((sub, path, 0));
            }
            EntryKind::Symlink { .. } => {}
        }
    }
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
        queue.extend(tree.entries.iter().filter_map(|e| match e.kind {
            EntryKind::Dir { tree } => Some(tree),
            _ => None,
        }));
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}

/// Why the server cannot answer a patch request item.
#[cfg(feature = "repository")]
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("patch {key} names chunk {id}, which the repository lacks")]
    Missing { key: Id, id: Id },
    #[error("patch {key}'s {what} is {len} bytes; the limit is {max}")]
    TooLarge { key: Id, what: &'static str, len: u64, max: u64 },
    #[error(transparent)]
    Store(#[from] ferry_store::StoreError),
    #[error("compressing patch {key}: {source}")]
    Compress { key: Id, source: std::io::Error },
}

/// The server's answer to one patch request item, from the repository: every chunk read is
/// verified against its id; limits are checked before anything is read.
#[cfg(feature = "repository")]
pub fn answer(repo: &Repository, item: &PatchRequest, level: i32) -> Result<Vec<u8>, AnswerError> {
    let key = item.key();
    let lens = |ids: &[Id], what: &'static str, max: u64| -> Result<u64, AnswerError> {
        let mut total = 0u64;
        for id in ids {
            let info = repo.chunk_info(id)?.ok_or(AnswerError::Missing { key, id: *id })?;
            total += u64::from(info.len);
        }
        if total > max {
            return Err(AnswerError::TooLarge { key, what, len: total, max });
        }
        Ok(total)
    };
    let ref_len = lens(&item.reference, "reference", REFERENCE_MAX)?;
    let target_len = lens(&item.target, "target", TARGET_MAX)?;
    let mut reference = Vec::with_capacity(ref_len as usize);
    for id in &item.reference {
        reference.extend_from_slice(&repo.read_chunk(id)?);
    }
    let mut target = Vec::with_capacity(target_len as usize);
    let mut stored = Vec::with_capacity(item.target.len());
    for id in &item.target {
        let frame = repo.read_chunk_stored(id)?;
        let info = repo.chunk_info(id)?.ok_or(AnswerError::Missing { key, id: *id })?;
        target.extend_from_slice(&ferry_store::chunk::decode_chunk(id, &frame, info.len)?);
        stored.push(frame);
    }
    encode_patch_response(&reference, &target, &stored, level).map_err(|source| AnswerError::Compress { key, source })
}

/// The plain answer to one item (its target's stored frames, each verified), computed
/// without compressing anything: what a server sends when it will not spend more CPU on a
/// request.
#[cfg(feature = "repository")]
pub fn answer_plain(repo: &Repository, item: &PatchRequest) -> Result<Vec<u8>, AnswerError> {
    let key = item.key();
    let mut stored = Vec::with_capacity(item.target.len());
    for id in &item.target {
        let info = repo.chunk_info(id)?.ok_or(AnswerError::Missing { key, id: *id })?;
        let frame = repo.read_chunk_stored(id)?;
        ferry_store::chunk::decode_chunk(id, &frame, info.len)?;
        stored.push(frame);
    }
    Ok(encode_plain_response(&stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u32) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    fn cref(n: u8, len: u32) -> ChunkRef {
        ChunkRef { id: Id::of(&[n]), len }
    }

    fn file(path: &str, chunks: Vec<ChunkRef>) -> FileChunks {
        FileChunks { path: path.as_bytes().to_vec(), chunks }
    }

    #[test]
    fn a_patch_against_the_old_file_is_small_and_roundtrips() {
        let old = noise(1 << 20, 7);
        let mut new = old.clone();
        // Insertions shift everything after them; a few bytes change in place.
        new.splice(1000..1000, b"inserted bytes".iter().copied());
        new[500_000] ^= 0xff;
        let patch = compress_patch(&old, &new, 19).unwrap();
        assert!(patch.len() < 2000, "patch of a 1 MiB file with two edits is {} bytes", patch.len());
        assert_eq!(decompress_patch(&old, &patch, new.len()).unwrap(), new);
        // The wrong reference or the wrong length is an error, never wrong bytes.
        let other = noise(1 << 20, 8);
        assert!(decompress_patch(&other, &patch, new.len()).map_or(true, |b| b != new));
        assert!(decompress_patch(&old, &patch, new.len() - 1).is_err());
        assert!(decompress_patch(&old, &patch[..patch.len() / 2], new.len()).is_err());
    }

    #[test]
    fn an_answer_is_plain_when_the_patch_is_no_smaller() {
        // Noise does not compress: a stored form (here a stand-in 16 bytes long) beats the patch.
        let target = noise(4096, 3);
        let stored = vec![vec![0x28; 16]];
        let p = Patch { reference: vec![], target: vec![ChunkRef { id: Id::of(&target), len: 4096 }] };
        let answer = encode_patch_response(b"", &target, &stored, 1).unwrap();
        assert_eq!(answer[0], TAG_PLAIN);
        match decode_patch_response(&p, None, &answer).unwrap() {
            PatchPayload::Plain(frames) => assert_eq!(frames, vec![stored[0].as_slice()]),
            PatchPayload::Patched(_) => panic!("expected plain"),
        }
        assert!(decode_patch_response(&p, None, &answer[..answer.len() - 1]).is_err());
        assert!(decode_patch_response(&p, None, &[]).is_err());
        assert!(decode_patch_response(&p, None, &[7]).is_err());
        // A real patch needs the reference.
        let reference = target.clone();
        let stored = vec![zstd::bulk::compress(&target, 3).unwrap()];
        let answer = encode_patch_response(&reference, &target, &stored, 1).unwrap();
        assert_eq!(answer[0], TAG_PATCH);
        assert!(matches!(decode_patch_response(&p, None, &answer), Err(PatchError::Decompress { .. })));
        match decode_patch_response(&p, Some(&reference), &answer).unwrap() {
            PatchPayload::Patched(bytes) => assert_eq!(bytes, target),
            PatchPayload::Plain(_) => panic!("expected a patch"),
        }
    }

    #[test]
    fn requests_roundtrip_and_bad_ones_are_refused() {
        let patches = vec![
            Patch { reference: vec![cref(1, 10), cref(2, 10)], target: vec![cref(3, 5)] },
            Patch { reference: vec![], target: vec![cref(4, 5), cref(5, 5)] },
        ];
        let body = encode_patch_request(&patches);
        let decoded = decode_patch_request(&body).unwrap();
        assert_eq!(decoded.len(), 2);
        for (d, p) in decoded.iter().zip(&patches) {
            assert_eq!(d.key(), p.key());
            assert_eq!(d.target, p.target.iter().map(|c| c.id).collect::<Vec<_>>());
        }
        assert_eq!(decode_patch_request(&body[..body.len() - 1]), Err(PatchRequestError::Truncated(1)));
        assert_eq!(decode_patch_request(&body[..5]), Err(PatchRequestError::Truncated(0)));
        let mut twice = encode_patch_request(&patches[..1]);
        twice.extend(encode_patch_request(&patches[..1]));
        assert!(matches!(decode_patch_request(&twice), Err(PatchRequestError::Duplicate(_))));
        let empty = encode_patch_request(&[Patch { reference: vec![cref(1, 1)], target: vec![] }]);
        assert_eq!(decode_patch_request(&empty), Err(PatchRequestError::EmptyTarget(0)));
        let mut huge = Vec::new();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&1u32.to_le_bytes());
        assert_eq!(decode_patch_request(&huge), Err(PatchRequestError::TooMany));
        assert!(matches!(decode_patch_request(&vec![0; MAX_PATCH_REQUEST + 1]), Err(PatchRequestError::TooLarge(_))));
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

    proptest::proptest! {
        /// Arbitrary and mutated request bodies never panic; what decodes re-encodes.
        #[test]
        fn any_request_body_decodes_or_is_refused(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600), flip in 0usize..600) {
            if let Ok(items) = decode_patch_request(&body) {
                let again: Vec<Patch> = items
                    .iter()
                    .map(|i| Patch {
                        reference: i.reference.iter().map(|id| ChunkRef { id: *id, len: 1 }).collect(),
                        target: i.target.iter().map(|id| ChunkRef { id: *id, len: 1 }).collect(),
                    })
                    .collect();
                proptest::prop_assert_eq!(encode_patch_request(&again), body.clone());
            }
            let good = encode_patch_request(&[Patch { reference: vec![cref(1, 10)], target: vec![cref(2, 10), cref(3, 5)] }]);
            let mut mutated = good.clone();
            let i = flip % mutated.len();
            mutated[i] ^= 0x41;
            let _ = decode_patch_request(&mutated);
        }

        /// Arbitrary and mutated answers never panic and never yield a wrong length.
        #[test]
        fn any_answer_decodes_or_is_refused(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), flip in 0usize..4096) {
            let target = noise(3000, 5);
            let reference = noise(3000, 5)[..2000].to_vec();
            let p = Patch { reference: vec![cref(1, 2000)], target: vec![ChunkRef { id: Id::of(&target[..1000]), len: 1000 }, ChunkRef { id: Id::of(&target[1000..]), len: 2000 }] };
            for candidate in [body.clone(), {
                let stored = vec![zstd::bulk::compress(&target[..1000], 3).unwrap(), zstd::bulk::compress(&target[1000..], 3).unwrap()];
                let mut a = encode_patch_response(&reference, &target, &stored, 3).unwrap();
                let i = flip % a.len();
                a[i] ^= 0x10;
                a
            }] {
                match decode_patch_response(&p, Some(&reference), &candidate) {
                    Ok(PatchPayload::Patched(bytes)) => proptest::prop_assert_eq!(bytes.len(), 3000),
                    Ok(PatchPayload::Plain(frames)) => proptest::prop_assert_eq!(frames.len(), 2),
                    Err(_) => {}
                }
            }
        }
    }
}
