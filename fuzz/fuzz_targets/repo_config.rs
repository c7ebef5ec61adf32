//! Repository configuration parsing never panics; what parses and validates round-trips.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = serde_json::from_slice::<ferry_store::RepoConfig>(data) {
        if config.validate().is_ok() {
            let again: ferry_store::RepoConfig =
                serde_json::from_slice(&serde_json::to_vec(&config).expect("encodes")).expect("decodes");
            assert_eq!(again, config);
        }
    }
});
