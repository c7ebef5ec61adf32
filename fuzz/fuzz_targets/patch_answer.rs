//! The patch answer decoder (`ferry_delta::patch::decode_patch_response`), as a device runs
//! it on one frame of a `/v1/patches` answer: it never panics, never yields a patched output
//! of another length than the target's, and a plain answer it accepts is exactly the frames
//! it handed over, written back (one answer, one encoding).
//!
//! Input: `u8 n ‖ u32 LE chunk length × n ‖ u8 has reference ‖ u16 LE reference length ‖
//! reference ‖ answer`, with 1 ≤ n ≤ 8 and chunk lengths 1..=65536 (a device's own plan
//! bounds them; larger only costs the fuzzer memory). Seeds: `delta/tests/it/fuzz_seeds.rs`.
#![no_main]
use ferry_delta::patch::{decode_patch_response, encode_plain_response, Patch, PatchPayload};
use ferry_store::wire::Reader;
use ferry_store::{ChunkRef, Id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let Ok(n) = r.u8("target count") else { return };
    if !(1..=8).contains(&n) {
        return;
    }
    let mut target = Vec::new();
    for i in 0..n {
        let Ok(len) = r.u32("chunk length") else { return };
        if !(1..=65536).contains(&len) {
            return;
        }
        target.push(ChunkRef { id: Id::of(&[i]), len });
    }
    let (Ok(has_reference), Ok(reference)) = (r.u8("has reference"), r.bytes16(usize::MAX, "reference")) else {
        return;
    };
    let answer = r.rest();
    let patch = Patch { reference: vec![ChunkRef { id: Id::of(b"reference"), len: 1 }], target };
    let reference = (has_reference != 0).then_some(reference);
    match decode_patch_response(&patch, reference, answer) {
        Ok(PatchPayload::Patched(bytes)) => assert_eq!(bytes.len() as u64, patch.target_len()),
        Ok(PatchPayload::Plain(frames)) => {
            assert_eq!(frames.len(), patch.target.len());
            let frames: Vec<Vec<u8>> = frames.iter().map(|f| f.to_vec()).collect();
            assert_eq!(encode_plain_response(&frames), answer);
        }
        Err(_) => {}
    }
});
