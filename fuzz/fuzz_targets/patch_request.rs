//! The patch request decoder (`ferry_delta::patch::decode_patch_request`), as the server runs
//! it on a `POST /v1/patches` body: it never panics, and whatever decodes re-encodes to the
//! same bytes (one request, one encoding) and stays within the request's limits.
//!
//! Input: the request body. Seeds: `delta/tests/it/fuzz_seeds.rs`.
#![no_main]
use ferry_delta::patch::{decode_patch_request, encode_patch_request, Patch, MAX_PATCHES_PER_REQUEST, MAX_PATCH_IDS};
use ferry_store::ChunkRef;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(items) = decode_patch_request(data) else { return };
    assert!(items.len() <= MAX_PATCHES_PER_REQUEST);
    assert!(items.iter().map(|i| i.reference.len() + i.target.len()).sum::<usize>() <= MAX_PATCH_IDS);
    assert!(items.iter().all(|i| !i.target.is_empty()));
    // Lengths are not on the wire: any will do to encode the request again.
    let refs = |ids: &[ferry_store::Id]| ids.iter().map(|id| ChunkRef { id: *id, len: 1 }).collect();
    let patches: Vec<Patch> = items.iter().map(|i| Patch { reference: refs(&i.reference), target: refs(&i.target) }).collect();
    for (p, i) in patches.iter().zip(&items) {
        assert_eq!(p.key(), i.key());
    }
    assert_eq!(encode_patch_request(&patches), data);
});
