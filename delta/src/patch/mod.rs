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
//!
//! One concern per file, everything re-exported here: `format` (the request and answer
//! formats, decoded strictly), `codec` (zstd with a reference prefix: [`compress_patch`],
//! [`decompress_patch`], the streamed [`PrefixDecoder`]), `reference` (the rule both sides
//! compute: [`choose_reference`], [`reference_window`], [`plan_patches`], [`walk_files`],
//! [`tree_prefix`]) and, with the `repository` feature, `answer` (the server's [`answer`]).

use ferry_store::{ChunkRef, Id};

use crate::pack::max_stored_len;

#[cfg(feature = "repository")]
mod answer;
mod codec;
mod format;
mod reference;

#[cfg(feature = "repository")]
pub use answer::{answer, answer_plain, check_answer, AnswerError};
pub use codec::{compress_patch, decompress_patch, PrefixDecoder};
pub use format::{
    decode_patch_request, decode_patch_response, encode_patch_request, encode_patch_response, encode_plain_response,
    PatchError, PatchPayload, PatchRequest, PatchRequestError,
};
pub use reference::{
    choose_reference, name_stem, plan_patches, plan_patches_by_ref, reference_window, tree_prefix, walk_files,
    FileChunks, PatchPlan, ReferenceRule,
};

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

    /// The request for this patch as the server reads it (ids only).
    pub fn request(&self) -> PatchRequest {
        PatchRequest {
            reference: self.reference.iter().map(|c| c.id).collect(),
            target: self.target.iter().map(|c| c.id).collect(),
        }
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

pub(crate) fn key_of<'a>(
    reference: impl ExactSizeIterator<Item = &'a Id>,
    target: impl ExactSizeIterator<Item = &'a Id>,
) -> Id {
    let mut h = blake3::Hasher::new();
    h.update(b"ferry patch v1\0");
    h.update(&(reference.len() as u32).to_le_bytes());
    h.update(&(target.len() as u32).to_le_bytes());
    for id in reference.chain(target) {
        h.update(id.as_bytes());
    }
    Id(*h.finalize().as_bytes())
}

/// Helpers the tests of every part share.
#[cfg(test)]
mod testing {
    use ferry_store::{ChunkRef, Id};

    /// Incompressible bytes, the same for the same seed.
    pub fn noise(n: usize, seed: u32) -> Vec<u8> {
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

    pub fn cref(n: u8, len: u32) -> ChunkRef {
        ChunkRef { id: Id::of(&[n]), len }
    }
}
