//! Where a commit's chunks lie in the static copy of a repository (`ferry export`): packs of
//! chunk frames and, per commit, an index of byte ranges, so a device reads the chunks it
//! lacks with a few single-range GETs from any static server, CDN or S3-compatible store.
//!
//! ```text
//! pack:   frame × n                 (pack::write_frame: id[32] ‖ u32 LE length ‖ stored zstd frame)
//! index:  "FRYX" ‖ u8 version (1) ‖ commit id[32]
//!         ‖ u32 LE pack count ‖ pack id[32] × count
//!         ‖ u32 LE entry count ‖ entry × count, in ascending chunk id order
//! entry:  chunk id[32] ‖ u32 LE pack number ‖ u64 LE offset ‖ u32 LE frame length (header included)
//! ```
//!
//! The index is not signed, so it is only a map: it can send a device to the wrong bytes but
//! never make it accept them. Every frame read through it is checked against the index
//! ([`RangeReader`]: the id and length in the frame's own header must be the ones the index
//! gave), and the caller then checks each chunk against its signed tree as for any other
//! source. Decoding is strict and bounded by the caller: no more entries than the signed trees
//! name chunks, ids in order without duplicates, frames of one pack that never overlap.
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use ferry_store::wire::Reader;
use ferry_store::Id;

use crate::pack::{write_frame, FRAME_HEADER};

/// The first bytes of an index.
pub const INDEX_MAGIC: &[u8; 4] = b"FRYX";
/// The index format this code writes and reads.
pub const INDEX_VERSION: u8 = 1;
/// Bytes of one index entry.
pub const INDEX_ENTRY: usize = 32 + 4 + 8 + 4;

/// Where one chunk's frame lies: in which of the index's packs, at which byte, how long
/// (the frame's header included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub pack: u32,
    pub offset: u64,
    pub len: u32,
}

impl Location {
    /// One past the frame's last byte.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// Why an index, or a range read through it, is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    #[error("the content index {0}")]
    Malformed(String),
    #[error("the content index is for commit {found}, not {expected}")]
    OtherCommit { expected: Id, found: Id },
    #[error("the content index lists {count} chunks; commit's trees name {max}")]
    TooManyEntries { count: usize, max: usize },
    #[error("the content index has no place for chunk {0}")]
    NotIndexed(Id),
    #[error("the content at byte {offset} of pack {pack} is not the frame of {id} that the index promised")]
    WrongFrame { pack: Id, offset: u64, id: Id },
    #[error("the range of pack {pack} ended {missing} bytes early")]
    Truncated { pack: Id, missing: u64 },
    #[error("the range of pack {pack} sent more bytes than were asked for")]
    TooLong { pack: Id },
}

fn malformed(e: impl std::fmt::Display) -> ContentError {
    ContentError::Malformed(e.to_string())
}

/// A commit's content index: the packs its chunks lie in, and each chunk's place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentIndex {
    commit: Id,
    packs: Vec<Id>,
    /// In ascending chunk id order.
    entries: Vec<(Id, Location)>,
}

impl ContentIndex {
    /// An index of `entries` (in any order) for `commit`; refused if a chunk is listed twice,
    /// a pack number is out of range, a frame is shorter than its header or two frames of
    /// one pack overlap.
    pub fn new(commit: Id, packs: Vec<Id>, mut entries: Vec<(Id, Location)>) -> Result<ContentIndex, ContentError> {
        entries.sort_by_key(|e| e.0);
        let index = ContentIndex { commit, packs, entries };
        index.check()?;
        Ok(index)
    }

    pub fn commit(&self) -> &Id {
        &self.commit
    }

    pub fn packs(&self) -> &[Id] {
        &self.packs
    }

    /// Every chunk and its place, in ascending chunk id order.
    pub fn entries(&self) -> &[(Id, Location)] {
        &self.entries
    }

    /// The place of chunk `id`, if the index has it.
    pub fn locate(&self, id: &Id) -> Option<Location> {
        self.entries.binary_search_by_key(id, |e| e.0).ok().and_then(|i| self.entries.get(i)).map(|e| e.1)
    }

    /// The pack a location names.
    pub fn pack(&self, location: &Location) -> Option<&Id> {
        self.packs.get(location.pack as usize)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 1 + 32 + 4 + 32 * self.packs.len() + 4 + INDEX_ENTRY * self.entries.len());
        out.extend_from_slice(INDEX_MAGIC);
        out.push(INDEX_VERSION);
        out.extend_from_slice(self.commit.as_bytes());
        out.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for p in &self.packs {
            out.extend_from_slice(p.as_bytes());
        }
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (id, l) in &self.entries {
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(&l.pack.to_le_bytes());
            out.extend_from_slice(&l.offset.to_le_bytes());
            out.extend_from_slice(&l.len.to_le_bytes());
        }
        out
    }

    /// Reads the index of `commit`, strictly, with at most `max_entries` chunks (the number
    /// of distinct chunks the commit's signed trees name) and as many packs.
    pub fn decode(bytes: &[u8], commit: &Id, max_entries: usize) -> Result<ContentIndex, ContentError> {
        let mut r = Reader::new(bytes);
        if r.array::<4>("magic").map_err(malformed)? != *INDEX_MAGIC {
            return Err(malformed("does not start with FRYX"));
        }
        let version = r.u8("version").map_err(malformed)?;
        if version != INDEX_VERSION {
            return Err(malformed(format_args!("is format version {version}; this agent reads {INDEX_VERSION}")));
        }
        let found = r.id("commit").map_err(malformed)?;
        if found != *commit {
            return Err(ContentError::OtherCommit { expected: *commit, found });
        }
        let pack_count = r.u32("pack count").map_err(malformed)? as usize;
        if pack_count > max_entries {
            return Err(malformed(format_args!("names {pack_count} packs for at most {max_entries} chunks")));
        }
        // Bounded by the bytes present before anything is allocated for them.
        if pack_count.saturating_mul(32) > r.remaining() {
            return Err(malformed("is truncated in its pack list"));
        }
        let mut packs = Vec::with_capacity(pack_count);
        for _ in 0..pack_count {
            packs.push(r.id("pack id").map_err(malformed)?);
        }
        let count = r.u32("entry count").map_err(malformed)? as usize;
        if count > max_entries {
            return Err(ContentError::TooManyEntries { count, max: max_entries });
        }
        if count.saturating_mul(INDEX_ENTRY) != r.remaining() {
            return Err(malformed(format_args!("declares {count} entries in {} bytes", r.remaining())));
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let id = r.id("chunk id").map_err(malformed)?;
            let pack = r.u32("pack number").map_err(malformed)?;
            let offset = r.u64("offset").map_err(malformed)?;
            let len = r.u32("frame length").map_err(malformed)?;
            if let Some((last, _)) = entries.last() {
                if *last >= id {
                    return Err(malformed(format_args!("lists {id} out of order or twice")));
                }
            }
            entries.push((id, Location { pack, offset, len }));
        }
        r.finish().map_err(malformed)?;
        let index = ContentIndex { commit: found, packs, entries };
        index.check()?;
        Ok(index)
    }

    /// The rules [`ContentIndex::new`] and [`ContentIndex::decode`] share.
    fn check(&self) -> Result<(), ContentError> {
        let mut by_place: Vec<(u32, u64, u64, Id)> = Vec::with_capacity(self.entries.len());
        let mut previous: Option<&Id> = None;
        for (id, l) in &self.entries {
            if previous == Some(id) {
                return Err(malformed(format_args!("lists {id} twice")));
            }
            previous = Some(id);
            if l.pack as usize >= self.packs.len() {
                return Err(malformed(format_args!("puts {id} in pack {} of {}", l.pack, self.packs.len())));
            }
            if (l.len as usize) <= FRAME_HEADER {
                return Err(malformed(format_args!("gives {id} a frame of {} bytes", l.len)));
            }
            let end = l
                .offset
                .checked_add(u64::from(l.len))
                .ok_or_else(|| malformed(format_args!("puts {id} past the largest offset")))?;
            by_place.push((l.pack, l.offset, end, *id));
        }
        by_place.sort_unstable();
        for pair in by_place.windows(2) {
            if let [a, b] = pair {
                if a.0 == b.0 && a.2 > b.1 {
                    return Err(malformed(format_args!("puts {} and {} on the same bytes", a.3, b.3)));
                }
            }
        }
        Ok(())
    }
}

/// One GET: bytes `start..end` of a pack, holding the frames of `frames` (by offset) and
/// whatever lies between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub pack: Id,
    pub start: u64,
    pub end: u64,
    /// The chunks asked for, in offset order: id, offset in the pack, frame length.
    pub frames: Vec<(Id, u64, u32)>,
}

impl Range {
    /// The bytes the GET moves.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The `Range` header's value (HTTP byte ranges are inclusive).
    pub fn header(&self) -> String {
        format!("bytes={}-{}", self.start, self.end.saturating_sub(1))
    }
}

/// How chunks are gathered into ranges: a gap of at most `max_gap` bytes between two wanted
/// frames is read through rather than paid for with another request, and no range is longer
/// than `max_range` (unless one frame alone is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalesce {
    pub max_gap: u64,
    pub max_range: u64,
}

/// The GETs that fetch `wanted` (chunk ids, each once) through `index`, in pack and offset
/// order; an id the index lacks is an error naming it.
pub fn plan_ranges(index: &ContentIndex, wanted: &[Id], how: Coalesce) -> Result<Vec<Range>, ContentError> {
    let mut places = Vec::with_capacity(wanted.len());
    for id in wanted {
        let l = index.locate(id).ok_or(ContentError::NotIndexed(*id))?;
        places.push((l.pack, l.offset, l.len, *id));
    }
    places.sort_unstable();
    places.dedup_by_key(|p| p.3);
    let mut ranges: Vec<(u32, Range)> = Vec::new();
    for (pack, offset, len, id) in places {
        let end = offset + u64::from(len);
        if let Some((p, r)) = ranges.last_mut() {
            if *p == pack && offset.saturating_sub(r.end) <= how.max_gap && end - r.start <= how.max_range {
                r.end = r.end.max(end);
                r.frames.push((id, offset, len));
                continue;
            }
        }
        let pack_id = *index.packs.get(pack as usize).ok_or_else(|| malformed(format_args!("has no pack {pack}")))?;
        ranges.push((pack, Range { pack: pack_id, start: offset, end, frames: vec![(id, offset, len)] }));
    }
    Ok(ranges.into_iter().map(|(_, r)| r).collect())
}

/// A frame read out of a range: the chunk and its stored zstd frame, unverified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeFrame {
    pub id: Id,
    pub stored: Vec<u8>,
}

/// Reads one [`Range`]'s bytes as they arrive: skips what lies between the wanted frames,
/// checks each wanted frame's header against the index, and buffers at most one frame.
#[derive(Debug)]
pub struct RangeReader {
    range: Range,
    /// The pack offset of the next byte to arrive.
    at: u64,
    /// The next wanted frame (index into `range.frames`) and its bytes so far.
    next: usize,
    buf: Vec<u8>,
}

impl RangeReader {
    pub fn new(range: Range) -> RangeReader {
        let at = range.start;
        RangeReader { range, at, next: 0, buf: Vec::new() }
    }

    /// The frames `data` completed.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<Vec<RangeFrame>, ContentError> {
        let mut done = Vec::new();
        while !data.is_empty() {
            let Some(&(id, offset, len)) = self.range.frames.get(self.next) else {
                // Past the last wanted frame: only bytes up to the range's end may follow.
                if self.at + data.len() as u64 > self.range.end {
                    return Err(ContentError::TooLong { pack: self.range.pack });
                }
                self.at += data.len() as u64;
                return Ok(done);
            };
            if self.at < offset {
                let skip = (offset - self.at).min(data.len() as u64) as usize;
                data = data.get(skip..).unwrap_or_default();
                self.at += skip as u64;
                continue;
            }
            if self.at > offset {
                // Two wanted frames overlap: the plan came from a checked index, so this is
                // a frame that lies about where it ends.
                return Err(ContentError::WrongFrame { pack: self.range.pack, offset, id });
            }
            let frame_end = offset + u64::from(len);
            let want = (len as usize).saturating_sub(self.buf.len()).min(data.len());
            let (take, rest) = data.split_at(want);
            if self.buf.is_empty() {
                self.buf.reserve_exact((len as usize).min(FRAME_HEADER + take.len()));
            }
            self.buf.extend_from_slice(take);
            data = rest;
            if self.buf.len() == len as usize {
                let frame = std::mem::take(&mut self.buf);
                done.push(self.finish_frame(frame, id, offset)?);
                self.at = frame_end;
                self.next += 1;
            }
        }
        Ok(done)
    }

    fn finish_frame(&self, frame: Vec<u8>, id: Id, offset: u64) -> Result<RangeFrame, ContentError> {
        let wrong = || ContentError::WrongFrame { pack: self.range.pack, offset, id };
        let mut r = Reader::new(&frame);
        let found = r.id("frame id").map_err(|_| wrong())?;
        let stored_len = r.u32("frame length").map_err(|_| wrong())?;
        if found != id || stored_len as usize != r.remaining() {
            return Err(wrong());
        }
        let mut stored = frame;
        stored.drain(..FRAME_HEADER);
        Ok(RangeFrame { id, stored })
    }

    /// After the last byte: every wanted frame must have arrived whole.
    pub fn finish(&self) -> Result<(), ContentError> {
        // `at` moves past a wanted frame only once it is whole; its part is in `buf`.
        let received = self.at + self.buf.len() as u64;
        if received < self.range.end {
            return Err(ContentError::Truncated { pack: self.range.pack, missing: self.range.end - received });
        }
        Ok(())
    }
}

/// Packs written in order, each up to a size, with every frame's place recorded: what
/// `ferry export` uses to lay out new chunks.
#[derive(Debug)]
pub struct PackWriter {
    target: usize,
    current: Vec<u8>,
    packs: Vec<(Id, Vec<u8>)>,
    /// Each chunk's place; the pack number of the one being written is `packs.len()`.
    placed: HashMap<Id, Location>,
}

/// What a [`PackWriter`] wrote: the packs, named by the BLAKE3 of their bytes, and each
/// chunk's place (its `pack` a number in `packs`).
#[derive(Debug, Default)]
pub struct Packed {
    pub packs: Vec<(Id, Vec<u8>)>,
    pub placed: HashMap<Id, Location>,
}

impl PackWriter {
    /// Packs of about `target` bytes (a pack closes after the frame that reaches it).
    pub fn new(target: usize) -> PackWriter {
        PackWriter { target, current: Vec::new(), packs: Vec::new(), placed: HashMap::new() }
    }

    /// Adds a chunk's stored frame, once (a chunk already added is skipped).
    pub fn add(&mut self, id: &Id, stored: &[u8]) {
        if self.placed.contains_key(id) {
            return;
        }
        let offset = self.current.len() as u64;
        write_frame(&mut self.current, id, stored);
        let len = (FRAME_HEADER + stored.len()) as u32;
        self.placed.insert(*id, Location { pack: self.packs.len() as u32, offset, len });
        if self.current.len() >= self.target {
            self.close();
        }
    }

    fn close(&mut self) {
        if !self.current.is_empty() {
            let bytes = std::mem::take(&mut self.current);
            self.packs.push((Id::of(&bytes), bytes));
        }
    }

    pub fn finish(mut self) -> Packed {
        self.close();
        Packed { packs: self.packs, placed: self.placed }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(i: u32) -> Id {
        Id::of(&i.to_le_bytes())
    }

    /// Three packs of chunks 0..30, 10 to a pack, chunk i stored as i+1 bytes of i.
    fn packed() -> (Vec<(Id, Vec<u8>)>, ContentIndex) {
        let mut w = PackWriter::new(10 * (FRAME_HEADER + 5));
        for i in 0..30u32 {
            w.add(&id(i), &vec![i as u8; (i % 9 + 1) as usize]);
        }
        // A chunk added twice is written once (the tests read chunk 4's first bytes back).
        w.add(&id(4), b"again");
        let Packed { packs, placed } = w.finish();
        let names: Vec<Id> = packs.iter().map(|p| p.0).collect();
        (packs, ContentIndex::new(id(999), names, placed.into_iter().collect()).unwrap())
    }

    fn read(packs: &[(Id, Vec<u8>)], r: &Range, piece: usize) -> Result<Vec<RangeFrame>, ContentError> {
        let bytes = &packs.iter().find(|p| p.0 == r.pack).unwrap().1[r.start as usize..r.end as usize];
        let mut reader = RangeReader::new(r.clone());
        let mut out = Vec::new();
        for c in bytes.chunks(piece) {
            out.extend(reader.feed(c)?);
        }
        reader.finish()?;
        Ok(out)
    }

    #[test]
    fn an_index_round_trips_and_locates_every_chunk() {
        let (packs, index) = packed();
        assert!(packs.len() >= 3, "{} packs", packs.len());
        let bytes = index.encode();
        assert_eq!(bytes.len(), 4 + 1 + 32 + 4 + 32 * packs.len() + 4 + INDEX_ENTRY * 30);
        let back = ContentIndex::decode(&bytes, &id(999), 30).unwrap();
        assert_eq!(back, index);
        for i in 0..30 {
            let l = back.locate(&id(i)).unwrap();
            let pack = &packs[l.pack as usize].1;
            assert_eq!(&pack[l.offset as usize..l.offset as usize + 32], id(i).as_bytes());
        }
        assert_eq!(back.locate(&id(31)), None);
    }

    #[test]
    fn wanted_chunks_come_in_few_ranges_and_each_frame_is_read_back() {
        let (packs, index) = packed();
        let wanted: Vec<Id> = (0..30).filter(|i| i % 3 != 0).map(id).collect();
        let near = Coalesce { max_gap: 64, max_range: 1 << 20 };
        let ranges = plan_ranges(&index, &wanted, near).unwrap();
        assert_eq!(ranges.len(), packs.len(), "one range a pack when gaps are small");
        let apart = Coalesce { max_gap: 0, max_range: 1 << 20 };
        assert!(plan_ranges(&index, &wanted, apart).unwrap().len() > ranges.len());
        for piece in [1, 7, 1000] {
            let mut got = Vec::new();
            for r in &ranges {
                got.extend(read(&packs, r, piece).unwrap());
            }
            let mut ids: Vec<Id> = got.iter().map(|f| f.id).collect();
            ids.sort();
            let mut expected = wanted.clone();
            expected.sort();
            assert_eq!(ids, expected, "piece {piece}");
            for f in &got {
                let i = (0..30).find(|i| id(*i) == f.id).unwrap();
                assert_eq!(f.stored, vec![i as u8; (i % 9 + 1) as usize]);
            }
        }
    }

    #[test]
    fn a_range_is_never_longer_than_asked_unless_one_frame_is() {
        let (_, index) = packed();
        let wanted: Vec<Id> = (0..30).map(id).collect();
        let ranges = plan_ranges(&index, &wanted, Coalesce { max_gap: 1 << 20, max_range: 100 }).unwrap();
        for r in &ranges {
            assert!(r.len() <= 100 || r.frames.len() == 1, "{r:?}");
        }
        assert_eq!(ranges.iter().map(|r| r.frames.len()).sum::<usize>(), 30);
        assert_eq!(ranges[0].header(), format!("bytes={}-{}", ranges[0].start, ranges[0].end - 1));
    }

    #[test]
    fn a_chunk_the_index_lacks_is_named() {
        let (_, index) = packed();
        let err = plan_ranges(&index, &[id(1), id(77)], Coalesce { max_gap: 0, max_range: 1 << 20 }).unwrap_err();
        assert_eq!(err, ContentError::NotIndexed(id(77)));
    }

    #[test]
    fn bytes_that_are_not_the_promised_frames_are_refused() {
        let (mut packs, index) = packed();
        let wanted = [id(4)];
        let r = plan_ranges(&index, &wanted, Coalesce { max_gap: 0, max_range: 1 << 20 }).unwrap().remove(0);
        // Another chunk's frame at that place (a stale or tampered copy).
        let pack = packs.iter_mut().find(|p| p.0 == r.pack).unwrap();
        let at = r.start as usize;
        pack.1[at..at + 32].copy_from_slice(id(5).as_bytes());
        assert_eq!(
            read(&packs, &r, 3).unwrap_err(),
            ContentError::WrongFrame { pack: r.pack, offset: r.start, id: id(4) }
        );
        // A frame whose header declares another length.
        let (mut packs, _) = packed();
        let pack = packs.iter_mut().find(|p| p.0 == r.pack).unwrap();
        pack.1[at + 32] ^= 1;
        assert!(matches!(read(&packs, &r, 3), Err(ContentError::WrongFrame { .. })));
    }

    #[test]
    fn a_short_or_long_answer_is_refused() {
        let (packs, index) = packed();
        let r = plan_ranges(&index, &[id(2), id(3)], Coalesce { max_gap: 0, max_range: 1 << 20 }).unwrap().remove(0);
        let bytes = &packs.iter().find(|p| p.0 == r.pack).unwrap().1[r.start as usize..r.end as usize];
        let mut short = RangeReader::new(r.clone());
        short.feed(&bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(short.finish().unwrap_err(), ContentError::Truncated { pack: r.pack, missing: 1 });
        let mut long = RangeReader::new(r.clone());
        let mut more = bytes.to_vec();
        more.push(0);
        assert_eq!(long.feed(&more).unwrap_err(), ContentError::TooLong { pack: r.pack });
    }

    #[test]
    fn malformed_indexes_are_refused_by_name() {
        let (_, index) = packed();
        let good = index.encode();
        let decode = |b: &[u8]| ContentIndex::decode(b, &id(999), 30);
        assert!(matches!(ContentIndex::decode(&good, &id(1), 30), Err(ContentError::OtherCommit { .. })));
        assert_eq!(
            ContentIndex::decode(&good, &id(999), 29).unwrap_err(),
            ContentError::TooManyEntries { count: 30, max: 29 }
        );
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(decode(&bad).unwrap_err().to_string().contains("FRYX"));
        let mut bad = good.clone();
        bad[4] = 2;
        assert!(decode(&bad).unwrap_err().to_string().contains("version 2"));
        assert!(decode(&good[..good.len() - 1]).is_err());
        let mut long = good.clone();
        long.push(0);
        assert!(decode(&long).is_err());
        // The first entry moved after the second: out of order.
        let entries = good.len() - 30 * INDEX_ENTRY;
        let mut swapped = good.clone();
        swapped[entries..entries + 2 * INDEX_ENTRY].rotate_left(INDEX_ENTRY);
        assert!(decode(&swapped).unwrap_err().to_string().contains("out of order"));
        // A pack number past the list.
        let mut bad = good.clone();
        bad[entries + 32..entries + 36].copy_from_slice(&99u32.to_le_bytes());
        assert!(decode(&bad).unwrap_err().to_string().contains("pack 99"));
        // A frame no longer than its header.
        let mut bad = good.clone();
        bad[entries + 44..entries + 48].copy_from_slice(&36u32.to_le_bytes());
        assert!(decode(&bad).unwrap_err().to_string().contains("36 bytes"));
        // Two frames on the same bytes.
        let e = index.entries();
        let overlapping = ContentIndex::new(id(999), index.packs().to_vec(), vec![(e[0].0, e[0].1), (e[1].0, e[0].1)]);
        assert!(overlapping.unwrap_err().to_string().contains("same bytes"));
        // An entry count that the bytes cannot hold is refused before anything is allocated.
        let mut huge = good[..4 + 1 + 32].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(ContentIndex::decode(&huge, &id(999), usize::MAX).is_err());
    }
}
