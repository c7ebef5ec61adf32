//! The pack request decoder (`ferry_delta::pack::decode_request`), as the server runs it on
//! a `POST /v1/chunks` or `/v1/objects` body: it never panics, what decodes names each id
//! once and within the limit, and re-encodes to the same bytes (one request, one encoding).
//!
//! Input: the request body. Seeds: `delta/tests/it/fuzz_seeds.rs`.
#![no_main]
use ferry_delta::pack::{decode_request, encode_request, MAX_IDS_PER_REQUEST};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(ids) = decode_request(data) else { return };
    assert!(ids.len() <= MAX_IDS_PER_REQUEST);
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len());
    assert_eq!(encode_request(&ids), data);
});
