//! The static copy's content index and the ranges read through it, as a device will read
//! them (`content::ContentIndex::decode`, `plan_ranges`, `RangeReader`). It never panics;
//! an accepted index re-encodes to the same bytes; every frame a range hands over is one the
//! plan asked for, once, with the length the index gave.
//!
//! Input: `u16 LE max gap ‖ u16 LE max range ‖ u16 LE piece ‖ commit id[32] ‖ u32 LE index
//! length ‖ index ‖ answer`: every planned range is fed the answer's bytes (whatever its
//! offset in the pack), in pieces. Seeds: `delta/tests/it/fuzz_seeds.rs`.
#![no_main]
use std::collections::HashSet;

use ferry_delta::content::{plan_ranges, Coalesce, ContentIndex, RangeReader};
use ferry_store::wire::Reader;
use ferry_store::Id;
use libfuzzer_sys::fuzz_target;

const MAX_ENTRIES: usize = 1 << 16;
/// The signed length every chunk is given: 64 KiB.
const RAW_LEN: u32 = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let (Ok(gap), Ok(range), Ok(piece), Ok(commit), Ok(index)) =
        (r.u16("gap"), r.u16("range"), r.u16("piece"), r.id("commit"), r.bytes32(usize::MAX, "index"))
    else {
        return;
    };
    let answer = r.rest();
    let Ok(decoded) = ContentIndex::decode(index, &commit, MAX_ENTRIES) else {
        return;
    };
    assert_eq!(decoded.encode(), index, "an accepted index re-encodes to its bytes");
    let wanted: Vec<(Id, u32)> = decoded.placements().map(|(id, _)| (id, RAW_LEN)).collect();
    let how = Coalesce { max_gap: u64::from(gap), max_range: u64::from(range) };
    let Ok(ranges) = plan_ranges(&decoded, &wanted, how) else {
        return; // a frame longer than RAW_LEN allows
    };
    let mut handed = HashSet::new();
    for range in ranges {
        let asked = range.frames().to_vec();
        let mut reader = RangeReader::new(range);
        let mut got = Vec::new();
        let fed = answer.chunks(usize::from(piece).max(1)).try_for_each(|p| reader.feed(p).map(|f| got.extend(f)));
        for f in &got {
            let at = asked.iter().find(|a| a.id == f.id).expect("a frame the plan asked for");
            assert_eq!(f.stored.len() + 36, at.len as usize);
            assert!(handed.insert(f.id), "a frame handed over twice");
        }
        if fed.is_ok() && reader.finish().is_ok() {
            assert_eq!(got.len(), asked.len(), "a range read whole hands over every frame");
        }
    }
});
