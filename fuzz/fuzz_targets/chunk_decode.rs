//! Decoding a stored chunk frame never panics and never produces more bytes than declared.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let len = u32::from(u16::from_le_bytes([data[0], data[1]]));
    let id = ferry_store::Id::of(&data[2..]);
    if let Ok(bytes) = ferry_store::chunk::decode_chunk(&id, &data[2..], len) {
        assert_eq!(bytes.len(), len as usize);
        assert_eq!(ferry_store::Id::of(&bytes), id);
    }
});
