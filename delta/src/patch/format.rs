//! The patch request and answer formats (see the table in [`super`]): encoders, and strict
//! decoders of the untrusted bytes a server or device receives, on store's
//! [`Reader`]. Not here: what a patch is computed from ([`super::reference`]), or zstd itself
//! ([`super::codec`]).
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;

use ferry_store::wire::Reader;
use ferry_store::Id;

use super::codec::{compress_patch, decompress_patch};
use super::{key_of, Patch, MAX_PATCHES_PER_REQUEST, MAX_PATCH_IDS, MAX_PATCH_REQUEST};

const TAG_PATCH: u8 = 0;
const TAG_PLAIN: u8 = 1;

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
    let mut r = Reader::new(body);
    while !r.is_empty() {
        let n = out.len();
        if n == MAX_PATCHES_PER_REQUEST {
            return Err(PatchRequestError::TooMany);
        }
        let truncated = |_| PatchRequestError::Truncated(n);
        let reference_count = r.u32("reference count").map_err(truncated)? as usize;
        let target_count = r.u32("target count").map_err(truncated)? as usize;
        ids_total = ids_total.saturating_add(reference_count).saturating_add(target_count);
        if ids_total > MAX_PATCH_IDS {
            return Err(PatchRequestError::TooMany);
        }
        if target_count == 0 {
            return Err(PatchRequestError::EmptyTarget(n));
        }
        let mut ids = |count: usize, field| (0..count).map(|_| r.id(field)).collect::<Result<Vec<Id>, _>>();
        let reference = ids(reference_count, "reference id").map_err(truncated)?;
        let target = ids(target_count, "target id").map_err(truncated)?;
        let item = PatchRequest { reference, target };
        if !seen.insert(item.key()) {
            return Err(PatchRequestError::Duplicate(item.key()));
        }
        out.push(item);
    }
    Ok(out)
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
    let mut r = Reader::new(bytes);
    let tag = r.u8("answer kind").map_err(|_| PatchError::Empty { key })?;
    match tag {
        TAG_PATCH => {
            let reference = reference
                .ok_or_else(|| PatchError::Decompress { key, reason: "the reference is not available".into() })?;
            let out = decompress_patch(reference, r.rest(), patch.target_len() as usize)
                .map_err(|e| PatchError::Decompress { key, reason: e.to_string() })?;
            Ok(PatchPayload::Patched(out))
        }
        TAG_PLAIN => {
            let bad = |_| PatchError::BadPlain { key };
            let frames = (0..patch.target.len())
                .map(|_| r.bytes32(usize::MAX, "stored chunk frame"))
                .collect::<Result<Vec<_>, _>>()
                .map_err(bad)?;
            r.finish().map_err(bad)?;
            Ok(PatchPayload::Plain(frames))
        }
        tag => Err(PatchError::UnknownKind { key, tag }),
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use ferry_store::ChunkRef;

    use super::super::testing::{cref, noise};
    use super::*;

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
