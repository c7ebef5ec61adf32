//! Commit decoding never panics, and whatever decodes re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(commit) = ferry_store::Commit::decode(data) {
        assert_eq!(commit.encode().expect("a decoded commit encodes"), data);
    }
});
