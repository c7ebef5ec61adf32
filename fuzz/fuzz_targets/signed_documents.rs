//! Decoding envelopes, key documents (versions 1 and 2), channel documents and device
//! configuration documents never panics, and whatever decodes re-encodes to the same bytes
//! (one document, one encoding).
#![no_main]
use ferry_store::channel::{ChannelDoc, Envelope, KeyDoc};
use ferry_store::device_config::ConfigDoc;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(all) = Envelope::decode_all(data) {
        let again: Vec<u8> = all.iter().flat_map(|e| e.encode()).collect();
        assert_eq!(again, data);
    }
    if let Ok(k) = KeyDoc::decode(data) {
        assert_eq!(k.encode().expect("a decoded key document encodes"), data);
    }
    if let Ok(c) = ChannelDoc::decode(data) {
        assert_eq!(c.encode().expect("a decoded channel document encodes"), data);
    }
    if let Ok(c) = ConfigDoc::decode(data) {
        assert_eq!(c.encode().expect("a decoded configuration document encodes"), data);
    }
});
