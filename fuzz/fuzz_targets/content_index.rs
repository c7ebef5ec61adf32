//! The static copy's content index and the ranges read through it, as a device will read
//! them (`content::ContentIndex::decode`, `plan_ranges`, `RangeReader`). It never panics;
//! an index it accepts re-encodes to the same bytes; every frame a range hands over is one
//! the plan asked for, whose header matched the index.
//!
//! Input: `commit id[32] ‖ u32 LE index length ‖ index ‖ pack bytes` (the pack is read as
//! every pack the index names), fed in pieces of 777 bytes. Seeds:
//! `delta/tests/it/fuzz_seeds.rs`.
#![no_main]
use ferry_delta::content::{plan_ranges, Coalesce, ContentIndex, RangeReader};
use ferry_store::wire::Reader;
use ferry_store::Id;
use libfuzzer_sys::fuzz_target;

const MAX_ENTRIES: usize = 1 << 16;
const PIECE: usize = 777;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let (Ok(commit), Ok(index)) = (r.id("commit"), r.bytes32(usize::MAX, "index")) else {
        return;
    };
    let pack = r.rest();
    let Ok(decoded) = ContentIndex::decode(index, &commit, MAX_ENTRIES) else {
        return;
    };
    assert_eq!(decoded.encode(), index, "an accepted index re-encodes to its bytes");
    let wanted: Vec<Id> = decoded.entries().iter().map(|e| e.0).collect();
    let Ok(ranges) = plan_ranges(&decoded, &wanted, Coalesce { max_gap: 4096, max_range: 1 << 20 }) else {
        panic!("every indexed chunk can be planned");
    };
    for range in ranges {
        let (Ok(start), Ok(end)) = (usize::try_from(range.start), usize::try_from(range.end)) else { continue };
        let Some(bytes) = pack.get(start..end) else { continue };
        let asked = range.frames.clone();
        let mut reader = RangeReader::new(range);
        let mut got = Vec::new();
        let fed = bytes.chunks(PIECE).try_for_each(|piece| reader.feed(piece).map(|f| got.extend(f)));
        for f in &got {
            let (_, _, len) = asked.iter().find(|a| a.0 == f.id).expect("a frame the plan asked for");
            assert_eq!(f.stored.len() + 36, *len as usize);
        }
        if fed.is_ok() && reader.finish().is_ok() {
            assert_eq!(got.len(), asked.len(), "a range read whole hands over every frame");
        }
    }
});
