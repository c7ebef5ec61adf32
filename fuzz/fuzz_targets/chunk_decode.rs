//! Decoding a stored chunk frame never panics and never produces more bytes than declared.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let len = u32::from(u16::from_le_bytes([data[0], data[1]]));
    let frame = &data[2..];
    // Against an arbitrary id: must fail cleanly (or, by chance, succeed consistently).
    let arbitrary = ferry_store::Id::of(frame);
    if let Ok(bytes) = ferry_store::chunk::decode_chunk(&arbitrary, frame, len) {
        assert_eq!(ferry_store::Id::of(&bytes), arbitrary);
    }
    // Against the id of what the frame really holds: must succeed with exactly those bytes.
    if let Ok(raw) = zstd::bulk::decompress(frame, len as usize) {
        if raw.len() == len as usize && len > 0 {
            let id = ferry_store::Id::of(&raw);
            assert_eq!(ferry_store::chunk::decode_chunk(&id, frame, len).expect("a valid frame decodes"), raw);
        }
    }
});
