//! Key file parsing never panics; a parsed public key is never weak.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ferry_store::SecretKey::parse(text, "fuzz");
        if let Ok(key) = ferry_store::PublicKey::parse(text, "fuzz") {
            assert!(ferry_store::PublicKey::from_bytes(&key.to_bytes()).is_ok());
        }
    }
});
