//! The pack frame decoder (`ferry_delta::pack::FrameDecoder`), as a device runs it on a
//! `/v1/chunks`, `/v1/objects` or `/v1/patches` answer: it never panics, hands over only
//! frames it was told to expect, each once and within its bound, gives the same result
//! however the stream is cut into pieces, and a stream it accepts whole is exactly the
//! frames it handed over, written back (one stream, one encoding).
//!
//! Input: `u8 step ‖ u8 n ‖ (id[32] ‖ u32 LE max) × n ‖ response stream`; the stream is fed
//! in pieces of `step` bytes (0: all at once). Seeds: `delta/tests/it/fuzz_seeds.rs`.
#![no_main]
use std::collections::HashMap;

use ferry_delta::pack::{write_frame, Frame, FrameDecoder, PackError};
use ferry_store::wire::Reader;
use ferry_store::Id;
use libfuzzer_sys::fuzz_target;

/// Feeds `stream` in pieces of `step` bytes: the frames received, and how it ended.
fn decode(expected: &[(Id, u32)], stream: &[u8], step: usize) -> (Vec<Frame>, Result<(), PackError>, usize) {
    let mut d = FrameDecoder::new(expected.iter().copied());
    let mut frames = Vec::new();
    for piece in stream.chunks(step.max(1)) {
        match d.feed(piece) {
            Ok(f) => frames.extend(f),
            Err(e) => return (frames, Err(e), d.remaining()),
        }
    }
    let end = d.finish();
    (frames, end, d.remaining())
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let (Ok(step), Ok(n)) = (r.u8("step"), r.u8("count")) else { return };
    let mut expected = Vec::new();
    for _ in 0..n {
        let (Ok(id), Ok(max)) = (r.id("id"), r.u32("max")) else { return };
        expected.push((id, max));
    }
    let stream = r.rest();
    let whole = decode(&expected, stream, stream.len());
    let pieces = decode(&expected, stream, usize::from(step));
    assert_eq!(whole.1, pieces.1, "the outcome depends on how the stream was cut");
    if whole.1.is_ok() {
        assert_eq!(whole.0, pieces.0, "the frames depend on how the stream was cut");
    }
    // Pieces keep the frames completed before an error (a whole feed returns only the error).
    let (frames, end, remaining) = pieces;
    // An id listed twice is expected once, with the bound listed last.
    let mut bounds: HashMap<Id, u32> = expected.iter().copied().collect();
    for f in &frames {
        let max = bounds.remove(&f.id).expect("a frame that was not expected, or came twice");
        assert!(f.bytes.len() as u64 <= u64::from(max), "a frame longer than its bound");
    }
    if end.is_ok() {
        assert_eq!(remaining, bounds.len());
        let mut again = Vec::new();
        for f in &frames {
            write_frame(&mut again, &f.id, &f.bytes);
        }
        assert_eq!(again, stream);
    }
});
