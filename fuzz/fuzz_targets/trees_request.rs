//! The `/v1/trees` request decoder (`ferry_delta::pack::TreesRequest::decode`), as the server
//! runs it on a request body: it never panics, what decodes encodes to a body that decodes
//! to the same request, and to the same bytes except for the one other spelling of the
//! frames encoding (an explicit 0 byte, which the encoder leaves out).
//!
//! Input: the request body. Seeds: `delta/tests/it/fuzz_seeds.rs`.
#![no_main]
use ferry_delta::pack::{TreesEncoding, TreesRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = TreesRequest::decode(data) else { return };
    let again = request.encode();
    assert_eq!(TreesRequest::decode(&again), Ok(request));
    if request.encoding == TreesEncoding::Compressed {
        assert!(request.old_root.is_some());
    }
    let explicit_frames = data.len() == 65 && data.last() == Some(&0);
    if explicit_frames {
        assert_eq!(again.as_slice(), data.get(..64).expect("65 bytes"));
    } else {
        assert_eq!(again, data);
    }
});
