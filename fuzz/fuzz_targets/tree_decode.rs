//! Tree decoding never panics, and whatever decodes re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tree) = ferry_store::Tree::decode(data) {
        assert_eq!(tree.encode().expect("a decoded tree encodes"), data);
    }
});
