//! Where a commit's chunks lie in the static copy of a repository (`ferry export`): packs of
//! chunk frames and, per commit, an index of byte ranges, so a device reads the chunks it
//! lacks with a few single-range GETs from any static server, CDN or S3-compatible store.
//!
//! ```text
//! pack:   frame × n                 (pack::write_frame: id[32] ‖ u32 LE length ‖ stored zstd frame)
//! index:  "FRYX" ‖ u8 version (1) ‖ commit id[32]
//!         ‖ u32 LE pack count ‖ pack id[32] × count, ascending, each used by an entry
//!         ‖ u32 LE entry count ‖ entry × count, in ascending chunk id order
//! entry:  chunk id[32] ‖ u32 LE pack number ‖ u64 LE offset ‖ u32 LE frame length (header included)
//! ```
//!
//! The index is not signed, so it is only a map: it can send a device to the wrong bytes but
//! never make it accept them or hold more than it allows. [`plan_ranges`] takes each wanted
//! chunk's signed length and refuses a frame longer than that chunk's zstd bound before any
//! request; [`RangeReader`] checks each frame's own header against the index as soon as it
//! arrives; the caller then checks each chunk against its signed tree as for any other
//! source. Decoding is strict and bounded by the caller (no more entries than the signed trees
//! name chunks), and canonical: one layout has one encoding.
//!
//! A [`RangeReader`] expects the bytes from its range's start: an HTTP caller accepts a 206
//! answer whose `Content-Range` is the range asked for (or a 200 only for a range from 0).
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap, HashSet};

use ferry_store::wire::Reader;
use ferry_store::Id;

use crate::pack::{max_stored_len, write_frame, FRAME_HEADER};

/// The first bytes of an index.
pub const INDEX_MAGIC: &[u8; 4] = b"FRYX";
/// The index format this code writes and reads.
pub const INDEX_VERSION: u8 = 1;
/// Bytes of one index entry.
pub const INDEX_ENTRY: usize = 32 + 4 + 8 + 4;
/// The largest pack an index may point into (1 TiB): keeps every offset sum far from
/// overflow and every `Range` header one a server understands.
pub const MAX_PACK_LEN: u64 = 1 << 40;

/// What a static copy's prepared patches from commit `from` to commit `to` are indexed
/// under: `v1/deltas/<from>/<to>` is a [`ContentIndex`] whose commit field is this id and
/// whose entries are patch keys (`ferry_delta::patch::Patch::key`), each placed at a frame
/// holding the patch's answer (as `POST /v1/patches` would send it) in a pack.
pub fn delta_id(from: &Id, to: &Id) -> Id {
    let mut bytes = Vec::with_capacity(15 + 64);
    bytes.extend_from_slice(b"ferry delta v1\0");
    bytes.extend_from_slice(from.as_bytes());
    bytes.extend_from_slice(to.as_bytes());
    Id::of(&bytes)
}

/// Where one chunk's frame lies in a pack: at which byte, how long (the frame's header
/// included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Placement {
    pub pack: Id,
    pub offset: u64,
    pub len: u32,
}

/// Why an index, a plan or a range read through it is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    #[error("the content index {0}")]
    Malformed(String),
    #[error("the content index is for commit {found}, not {expected}")]
    OtherCommit { expected: Id, found: Id },
    #[error("the content index lists {count} chunks; the commit's trees name {max}")]
    TooManyEntries { count: usize, max: usize },
    #[error("the content index has no place for chunk {0}")]
    NotIndexed(Id),
    #[error("the content index gives chunk {id} a frame of {len} bytes; its signed length allows {max}")]
    FrameTooLong { id: Id, len: u32, max: u32 },
    #[error("the content at byte {offset} of pack {pack} is not the frame of {id} that the index promised")]
    WrongFrame { pack: Id, offset: u64, id: Id },
    #[error("the range of pack {pack} ended {missing} bytes early")]
    Truncated { pack: Id, missing: u64 },
    #[error("the range of pack {pack} sent more bytes than were asked for")]
    TooLong { pack: Id },
    #[error("a chunk's stored frame of {0} bytes does not fit a pack frame")]
    FrameTooLarge(usize),
}

fn malformed(e: impl std::fmt::Display) -> ContentError {
    ContentError::Malformed(e.to_string())
}

/// One entry as the index stores it: the pack by its number in the index's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    pack: u32,
    offset: u64,
    len: u32,
}

/// A commit's content index: the packs its chunks lie in, and each chunk's place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentIndex {
    commit: Id,
    /// Ascending, each used by an entry.
    packs: Vec<Id>,
    /// In ascending chunk id order.
    entries: Vec<(Id, Entry)>,
}

impl ContentIndex {
    /// The index of `placements` (one per chunk, in any order) for `commit`; refused if a
    /// chunk is placed twice, a frame is no longer than its header or ends past
    /// [`MAX_PACK_LEN`], or two frames of one pack overlap.
    pub fn new(
        commit: Id,
        placements: impl IntoIterator<Item = (Id, Placement)>,
    ) -> Result<ContentIndex, ContentError> {
        let mut placements: Vec<(Id, Placement)> = placements.into_iter().collect();
        let packs: Vec<Id> = placements.iter().map(|p| p.1.pack).collect::<BTreeSet<_>>().into_iter().collect();
        if packs.len() > u32::MAX as usize || placements.len() > u32::MAX as usize {
            return Err(malformed(format_args!("would list {} chunks in {} packs", placements.len(), packs.len())));
        }
        placements.sort_by_key(|p| p.0);
        let mut entries = Vec::with_capacity(placements.len());
        for (id, p) in placements {
            let pack = packs.binary_search(&p.pack).map_err(|_| malformed("lost a pack"))? as u32;
            entries.push((id, Entry { pack, offset: p.offset, len: p.len }));
        }
        let index = ContentIndex { commit, packs, entries };
        index.check()?;
        Ok(index)
    }

    pub fn commit(&self) -> &Id {
        &self.commit
    }

    /// The packs, ascending.
    pub fn packs(&self) -> &[Id] {
        &self.packs
    }

    /// How many chunks the index places.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every chunk and its place, in ascending chunk id order.
    pub fn placements(&self) -> impl Iterator<Item = (Id, Placement)> + '_ {
        self.entries.iter().filter_map(|(id, e)| self.placement(e).map(|p| (*id, p)))
    }

    /// The place of chunk `id`, if the index has it.
    pub fn locate(&self, id: &Id) -> Option<Placement> {
        let i = self.entries.binary_search_by_key(id, |e| e.0).ok()?;
        self.entries.get(i).and_then(|(_, e)| self.placement(e))
    }

    fn placement(&self, e: &Entry) -> Option<Placement> {
        Some(Placement { pack: *self.packs.get(e.pack as usize)?, offset: e.offset, len: e.len })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 1 + 32 + 4 + 32 * self.packs.len() + 4 + INDEX_ENTRY * self.entries.len());
        out.extend_from_slice(INDEX_MAGIC);
        out.push(INDEX_VERSION);
        out.extend_from_slice(self.commit.as_bytes());
        // Both counts fit: `new` and `decode` refuse more than u32::MAX.
        out.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for p in &self.packs {
            out.extend_from_slice(p.as_bytes());
        }
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (id, e) in &self.entries {
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(&e.pack.to_le_bytes());
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&e.len.to_le_bytes());
        }
        out
    }

    /// Reads the index of `commit`, strictly, with at most `max_entries` chunks (the number
    /// of distinct chunks the commit's signed trees name).
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
            entries.push((id, Entry { pack, offset, len }));
        }
        r.finish().map_err(malformed)?;
        let index = ContentIndex { commit: found, packs, entries };
        index.check()?;
        Ok(index)
    }

    /// The rules [`ContentIndex::new`] and [`ContentIndex::decode`] share, which make the
    /// encoding canonical: packs ascending and each used, chunks ascending and each once,
    /// frames longer than their header, inside [`MAX_PACK_LEN`], never overlapping.
    fn check(&self) -> Result<(), ContentError> {
        if self.packs.windows(2).any(|w| matches!(w, [a, b] if a >= b)) {
            return Err(malformed("lists its packs out of order or twice"));
        }
        if self.entries.windows(2).any(|w| matches!(w, [a, b] if a.0 >= b.0)) {
            return Err(malformed("lists its chunks out of order or twice"));
        }
        let mut used = vec![false; self.packs.len()];
        let mut by_place: Vec<(u32, u64, u64, Id)> = Vec::with_capacity(self.entries.len());
        for (id, e) in &self.entries {
            let Some(u) = used.get_mut(e.pack as usize) else {
                return Err(malformed(format_args!("puts {id} in pack {} of {}", e.pack, self.packs.len())));
            };
            *u = true;
            if (e.len as usize) <= FRAME_HEADER {
                return Err(malformed(format_args!("gives {id} a frame of {} bytes", e.len)));
            }
            let end = e.offset.checked_add(u64::from(e.len)).filter(|end| *end <= MAX_PACK_LEN);
            let Some(end) = end else {
                return Err(malformed(format_args!("puts {id} past the largest pack ({MAX_PACK_LEN} bytes)")));
            };
            by_place.push((e.pack, e.offset, end, *id));
        }
        if used.iter().any(|u| !u) {
            return Err(malformed("lists a pack no chunk is in"));
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

/// One wanted frame in a [`Range`]: the chunk, where its frame starts in the pack, how long
/// it is (header included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeFrameAt {
    pub id: Id,
    pub offset: u64,
    pub len: u32,
}

/// One GET: bytes `start..end` of a pack, holding the wanted frames and whatever lies
/// between them. Made only by [`plan_ranges`], so its frames are in order, inside it and
/// checked against the signed lengths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pack: Id,
    start: u64,
    end: u64,
    frames: Vec<RangeFrameAt>,
}

impl Range {
    pub fn pack(&self) -> &Id {
        &self.pack
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    /// The wanted frames, in offset order.
    pub fn frames(&self) -> &[RangeFrameAt] {
        &self.frames
    }

    /// The bytes the GET moves (never 0: a range holds at least one frame).
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

/// The GETs that fetch `wanted` (chunk ids with their signed lengths) through `index`, in
/// pack and offset order. Refused before any request: a chunk the index lacks, or one whose
/// frame is longer than its signed length's zstd bound allows.
pub fn plan_ranges(index: &ContentIndex, wanted: &[(Id, u32)], how: Coalesce) -> Result<Vec<Range>, ContentError> {
    let bounded: Vec<(Id, u32)> = wanted.iter().map(|(id, len)| (*id, chunk_frame_bound(*len))).collect();
    plan_bounded(index, &bounded, how)
}

/// The longest frame (header included) a chunk of `raw_len` signed bytes may have.
pub fn chunk_frame_bound(raw_len: u32) -> u32 {
    max_stored_len(raw_len).saturating_add(FRAME_HEADER as u32)
}

/// [`plan_ranges`] for frames given their longest acceptable length (header included)
/// instead of a chunk's signed length: what prepared patches are planned with.
pub fn plan_bounded(index: &ContentIndex, wanted: &[(Id, u32)], how: Coalesce) -> Result<Vec<Range>, ContentError> {
    let mut places = Vec::with_capacity(wanted.len());
    for &(ref id, max) in wanted {
        let p = index.locate(id).ok_or(ContentError::NotIndexed(*id))?;
        if p.len > max {
            return Err(ContentError::FrameTooLong { id: *id, len: p.len, max });
        }
        places.push((p.pack, p.offset, p.len, *id));
    }
    places.sort_unstable();
    places.dedup_by_key(|p| p.3);
    let mut ranges: Vec<Range> = Vec::new();
    for (pack, offset, len, id) in places {
        // Inside MAX_PACK_LEN (the index's check): no sum here overflows.
        let end = offset + u64::from(len);
        let at = RangeFrameAt { id, offset, len };
        if let Some(r) = ranges.last_mut() {
            if r.pack == pack && offset.saturating_sub(r.end) <= how.max_gap && end - r.start <= how.max_range {
                r.end = r.end.max(end);
                r.frames.push(at);
                continue;
            }
        }
        ranges.push(Range { pack, start: offset, end, frames: vec![at] });
    }
    Ok(ranges)
}

/// The gaps [`coalesced_ranges`] tries, smallest first.
const GAPS: [u64; 8] = [0, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20];

/// The GETs for `wanted` (frames with their longest acceptable length, header included, as
/// for [`plan_bounded`]) with as few requests as reading at most `max_overread` percent more
/// than the wanted frames allows: the smallest gap (of a fixed ladder, up to 16 MiB) whose
/// ranges number at most `max_requests`, or, when none does within the bytes allowed, the
/// largest gap that stays within them. No range is longer than `max_range`. Refused as
/// [`plan_bounded`] refuses.
pub fn coalesced_ranges(
    index: &ContentIndex,
    wanted: &[(Id, u32)],
    max_requests: usize,
    max_overread: u64,
    max_range: u64,
) -> Result<Vec<Range>, ContentError> {
    let mut best = plan_bounded(index, wanted, Coalesce { max_gap: 0, max_range })?;
    let exact: u64 = best.iter().map(|r| r.frames.iter().map(|f| u64::from(f.len)).sum::<u64>()).sum();
    let allowed = exact + exact * max_overread / 100;
    for max_gap in GAPS.into_iter().skip(1) {
        if best.len() <= max_requests {
            break;
        }
        let ranges = plan_bounded(index, wanted, Coalesce { max_gap, max_range })?;
        if ranges.iter().map(Range::len).sum::<u64>() > allowed {
            break;
        }
        best = ranges;
    }
    Ok(best)
}

/// A frame read out of a range: the chunk and its stored zstd frame, unverified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeFrame {
    pub id: Id,
    pub stored: Vec<u8>,
}

/// Reads one [`Range`]'s bytes as they arrive: skips what lies between the wanted frames,
/// checks each wanted frame's header against the index as soon as it is in, and holds at
/// most one frame. After an error it refuses everything.
#[derive(Debug)]
pub struct RangeReader {
    range: Range,
    /// The pack offset of the next byte to arrive.
    at: u64,
    /// The next wanted frame (an index into `range.frames`).
    next: usize,
    header: Vec<u8>,
    stored: Vec<u8>,
    failed: Option<ContentError>,
}

impl RangeReader {
    pub fn new(range: Range) -> RangeReader {
        let at = range.start;
        RangeReader { range, at, next: 0, header: Vec::with_capacity(FRAME_HEADER), stored: Vec::new(), failed: None }
    }

    /// The frames `data` completed. On an error, the frames this call completed are not
    /// returned (the caller fetches what it has not staged elsewhere).
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<RangeFrame>, ContentError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.feed_inner(data);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn feed_inner(&mut self, mut data: &[u8]) -> Result<Vec<RangeFrame>, ContentError> {
        let mut done = Vec::new();
        while !data.is_empty() {
            let Some(&frame) = self.range.frames.get(self.next) else {
                // Past the last wanted frame: the range ends there, so nothing may follow.
                return Err(ContentError::TooLong { pack: self.range.pack });
            };
            if self.at < frame.offset {
                let skip = (frame.offset - self.at).min(data.len() as u64) as usize;
                data = data.get(skip..).unwrap_or_default();
                self.at += skip as u64;
                continue;
            }
            if self.header.len() < FRAME_HEADER {
                let take = (FRAME_HEADER - self.header.len()).min(data.len());
                let (h, rest) = data.split_at(take);
                self.header.extend_from_slice(h);
                data = rest;
                if self.header.len() == FRAME_HEADER {
                    self.check_header(&frame)?;
                    self.stored = Vec::with_capacity(frame.len as usize - FRAME_HEADER);
                }
                continue;
            }
            let want = (frame.len as usize - FRAME_HEADER - self.stored.len()).min(data.len());
            let (take, rest) = data.split_at(want);
            self.stored.extend_from_slice(take);
            data = rest;
            if self.stored.len() == frame.len as usize - FRAME_HEADER {
                done.push(RangeFrame { id: frame.id, stored: std::mem::take(&mut self.stored) });
                self.header.clear();
                self.at = frame.offset + u64::from(frame.len);
                self.next += 1;
            }
        }
        Ok(done)
    }

    /// The frame's own header must name the chunk and the length the index gave.
    fn check_header(&self, frame: &RangeFrameAt) -> Result<(), ContentError> {
        let wrong = || ContentError::WrongFrame { pack: self.range.pack, offset: frame.offset, id: frame.id };
        let mut r = Reader::new(&self.header);
        let id = r.id("frame id").map_err(|_| wrong())?;
        let stored_len = r.u32("frame length").map_err(|_| wrong())?;
        if id != frame.id || stored_len as usize + FRAME_HEADER != frame.len as usize {
            return Err(wrong());
        }
        Ok(())
    }

    /// After the last byte: every wanted frame must have arrived whole.
    pub fn finish(&self) -> Result<(), ContentError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.next < self.range.frames.len() {
            let received = self.at + (self.header.len() + self.stored.len()) as u64;
            return Err(ContentError::Truncated { pack: self.range.pack, missing: self.range.end - received });
        }
        Ok(())
    }
}

/// A closed pack: its name (the BLAKE3 of its bytes) and its bytes.
pub type Pack = (Id, Vec<u8>);

/// Packs written in order, each closed once it reaches a size, with every frame's place
/// recorded: what `ferry export` lays new chunks out with. Closed packs are handed out as
/// they close, so only one is held.
#[derive(Debug)]
pub struct PackWriter {
    target: usize,
    current: Vec<u8>,
    /// The chunks of the pack being written: id, offset, frame length.
    pending: Vec<(Id, u64, u32)>,
    pending_ids: HashSet<Id>,
    placed: HashMap<Id, Placement>,
}

impl PackWriter {
    /// Packs of about `target` bytes (a pack closes after the frame that reaches it).
    pub fn new(target: usize) -> PackWriter {
        PackWriter {
            target,
            current: Vec::new(),
            pending: Vec::new(),
            pending_ids: HashSet::new(),
            placed: HashMap::new(),
        }
    }

    /// Whether the chunk was added already (to this writer's packs, closed or not).
    pub fn has(&self, id: &Id) -> bool {
        self.placed.contains_key(id) || self.pending_ids.contains(id)
    }

    /// Adds a chunk's stored frame, once (a chunk already added is skipped); a pack that
    /// this closed, named by the BLAKE3 of its bytes.
    pub fn add(&mut self, id: &Id, stored: &[u8]) -> Result<Option<Pack>, ContentError> {
        if self.has(id) {
            return Ok(None);
        }
        let len = u32::try_from(FRAME_HEADER + stored.len()).map_err(|_| ContentError::FrameTooLarge(stored.len()))?;
        let offset = self.current.len() as u64;
        write_frame(&mut self.current, id, stored);
        self.pending.push((*id, offset, len));
        self.pending_ids.insert(*id);
        Ok(if self.current.len() >= self.target { self.close() } else { None })
    }

    /// Where a chunk lies, once the pack holding it is closed (`None` before, and for a
    /// chunk never added).
    pub fn placement(&self, id: &Id) -> Option<Placement> {
        self.placed.get(id).copied()
    }

    /// Closes the pack being written (if any chunk is in it) and returns it: every chunk
    /// added so far then has its [`PackWriter::placement`]. What an exporter calls before it
    /// writes an index.
    pub fn flush(&mut self) -> Option<Pack> {
        self.close()
    }

    fn close(&mut self) -> Option<Pack> {
        if self.current.is_empty() {
            return None;
        }
        let bytes = std::mem::take(&mut self.current);
        let pack = Id::of(&bytes);
        self.pending_ids.clear();
        for (id, offset, len) in self.pending.drain(..) {
            self.placed.insert(id, Placement { pack, offset, len });
        }
        Some((pack, bytes))
    }

    /// Closes the last pack (if any chunk is in it); returns it and every chunk's place.
    pub fn finish(mut self) -> (Option<Pack>, HashMap<Id, Placement>) {
        let last = self.close();
        (last, self.placed)
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(i: u32) -> Id {
        Id::of(&i.to_le_bytes())
    }

    /// What chunk i is stored as: i % 9 + 1 bytes of i.
    fn stored(i: u32) -> Vec<u8> {
        vec![i as u8; (i % 9 + 1) as usize]
    }

    /// Chunks 0..30 in packs of about 10 frames, and the index of all of them.
    fn packed() -> (HashMap<Id, Vec<u8>>, ContentIndex) {
        let mut w = PackWriter::new(10 * (FRAME_HEADER + 5));
        let mut packs = HashMap::new();
        for i in 0..30u32 {
            if let Some((name, bytes)) = w.add(&id(i), &stored(i)).unwrap() {
                packs.insert(name, bytes);
            }
        }
        // A chunk added twice is written once (the tests read chunk 4's first bytes back).
        assert!(w.add(&id(4), b"again").unwrap().is_none());
        let (last, placed) = w.finish();
        let (name, bytes) = last.unwrap();
        packs.insert(name, bytes);
        (packs, ContentIndex::new(id(999), placed).unwrap())
    }

    /// Every chunk with its signed (raw) length: generous, 1 KiB.
    fn with_len(ids: impl IntoIterator<Item = Id>) -> Vec<(Id, u32)> {
        ids.into_iter().map(|i| (i, 1024)).collect()
    }

    fn read(packs: &HashMap<Id, Vec<u8>>, r: &Range, piece: usize) -> Result<Vec<RangeFrame>, ContentError> {
        let bytes = &packs[r.pack()][r.start() as usize..r.end() as usize];
        let mut reader = RangeReader::new(r.clone());
        let mut out = Vec::new();
        for c in bytes.chunks(piece) {
            out.extend(reader.feed(c)?);
        }
        reader.finish()?;
        Ok(out)
    }

    fn plan(index: &ContentIndex, ids: &[u32], how: Coalesce) -> Result<Vec<Range>, ContentError> {
        plan_ranges(index, &with_len(ids.iter().map(|i| id(*i))), how)
    }

    const NEAR: Coalesce = Coalesce { max_gap: 64, max_range: 1 << 20 };
    const APART: Coalesce = Coalesce { max_gap: 0, max_range: 1 << 20 };

    #[test]
    fn coalesced_ranges_trade_few_extra_bytes_for_fewer_requests() {
        let (_, index) = packed();
        // Every other chunk: one range per chunk without gaps read through.
        let wanted = with_len((0..30).step_by(2).map(id));
        let exact = plan_ranges(&index, &wanted, Coalesce { max_gap: 0, max_range: u64::MAX }).unwrap();
        let wanted: Vec<(Id, u32)> = wanted.into_iter().map(|(i, len)| (i, chunk_frame_bound(len))).collect();
        assert_eq!(exact.len(), 15);
        let wanted_bytes: u64 = exact.iter().map(Range::len).sum();
        // Reading the gaps (about as large as the frames) is more than 10% extra: kept exact.
        assert_eq!(coalesced_ranges(&index, &wanted, 4, 10, u64::MAX).unwrap(), exact);
        // Allowed to read twice the bytes: one range per pack.
        let merged = coalesced_ranges(&index, &wanted, 4, 100, u64::MAX).unwrap();
        assert!(merged.len() <= 4 && merged.len() < exact.len(), "{}", merged.len());
        assert!(merged.iter().map(Range::len).sum::<u64>() <= 2 * wanted_bytes);
        let frames: Vec<Id> = merged.iter().flat_map(|r| r.frames().iter().map(|f| f.id)).collect();
        assert_eq!(frames.len(), 15, "every wanted frame, once");
        // Few enough already: no gap is read.
        assert_eq!(coalesced_ranges(&index, &wanted, 15, 100, u64::MAX).unwrap(), exact);
    }

    #[test]
    fn flush_closes_the_open_pack_and_places_its_chunks() {
        let mut w = PackWriter::new(1 << 20);
        assert!(w.add(&id(1), &stored(1)).unwrap().is_none());
        assert!(w.has(&id(1)) && w.placement(&id(1)).is_none(), "placed only once its pack closes");
        let (name, bytes) = w.flush().unwrap();
        assert_eq!(name, Id::of(&bytes));
        assert_eq!(w.placement(&id(1)), Some(Placement { pack: name, offset: 0, len: (FRAME_HEADER + 2) as u32 }));
        assert!(w.flush().is_none(), "nothing open: no empty pack");
        // The next chunk starts a new pack at offset 0.
        w.add(&id(2), &stored(2)).unwrap();
        let (second, _) = w.flush().unwrap();
        assert_ne!(second, name);
        assert_eq!(w.placement(&id(2)).unwrap().offset, 0);
        let (last, placed) = w.finish();
        assert!(last.is_none());
        assert_eq!(placed.len(), 2);
    }

    #[test]
    fn an_index_round_trips_and_locates_every_chunk() {
        let (packs, index) = packed();
        assert!(packs.len() >= 3, "{} packs", packs.len());
        let bytes = index.encode();
        assert_eq!(bytes.len(), 4 + 1 + 32 + 4 + 32 * packs.len() + 4 + INDEX_ENTRY * 30);
        let back = ContentIndex::decode(&bytes, &id(999), 30).unwrap();
        assert_eq!(back, index);
        assert_eq!(back.len(), 30);
        for i in 0..30 {
            let p = back.locate(&id(i)).unwrap();
            let pack = &packs[&p.pack];
            assert_eq!(&pack[p.offset as usize..p.offset as usize + 32], id(i).as_bytes());
        }
        assert_eq!(back.locate(&id(31)), None);
        assert_eq!(back.placements().count(), 30);
    }

    #[test]
    fn wanted_chunks_come_in_few_ranges_and_each_frame_is_read_back() {
        let (packs, index) = packed();
        let wanted: Vec<u32> = (0..30).filter(|i| i % 3 != 0).collect();
        let ranges = plan(&index, &wanted, NEAR).unwrap();
        assert_eq!(ranges.len(), packs.len(), "one range a pack when gaps are small");
        assert!(plan(&index, &wanted, APART).unwrap().len() > ranges.len());
        for piece in [1, 7, 35, 36, 37, 1000] {
            let mut got = Vec::new();
            for r in &ranges {
                got.extend(read(&packs, r, piece).unwrap());
            }
            let mut ids: Vec<Id> = got.iter().map(|f| f.id).collect();
            ids.sort();
            let mut expected: Vec<Id> = wanted.iter().map(|i| id(*i)).collect();
            expected.sort();
            assert_eq!(ids, expected, "piece {piece}");
            for f in &got {
                let i = (0..30).find(|i| id(*i) == f.id).unwrap();
                assert_eq!(f.stored, stored(i));
            }
        }
    }

    #[test]
    fn a_range_is_never_longer_than_asked_unless_one_frame_is() {
        let (_, index) = packed();
        let all: Vec<u32> = (0..30).collect();
        let ranges = plan(&index, &all, Coalesce { max_gap: 1 << 20, max_range: 100 }).unwrap();
        for r in &ranges {
            assert!(r.len() <= 100 || r.frames().len() == 1, "{r:?}");
        }
        assert_eq!(ranges.iter().map(|r| r.frames().len()).sum::<usize>(), 30);
        assert_eq!(ranges[0].header(), format!("bytes={}-{}", ranges[0].start(), ranges[0].end() - 1));
        // A chunk wanted twice is fetched once.
        let twice = plan(&index, &[3, 3, 5], APART).unwrap();
        assert_eq!(twice.iter().map(|r| r.frames().len()).sum::<usize>(), 2);
    }

    #[test]
    fn a_chunk_the_index_lacks_or_makes_too_long_is_refused_before_any_request() {
        let (_, index) = packed();
        assert_eq!(plan(&index, &[1, 77], APART).unwrap_err(), ContentError::NotIndexed(id(77)));
        // Chunk 8's 45-byte frame is within any signed length's bound.
        assert!(plan_ranges(&index, &[(id(8), 1)], APART).is_ok());
        let huge = ContentIndex::new(id(999), [(id(8), Placement { pack: id(1), offset: 0, len: 64 << 20 })]).unwrap();
        assert_eq!(
            plan_ranges(&huge, &[(id(8), 1024)], APART).unwrap_err(),
            ContentError::FrameTooLong { id: id(8), len: 64 << 20, max: max_stored_len(1024) + FRAME_HEADER as u32 }
        );
    }

    #[test]
    fn bytes_that_are_not_the_promised_frames_are_refused_at_their_header() {
        let (packs, index) = packed();
        let r = plan(&index, &[4], APART).unwrap().remove(0);
        let at = r.start() as usize;
        // Another chunk's frame at that place (a stale or tampered copy).
        let mut other = packs.clone();
        other.get_mut(r.pack()).unwrap()[at..at + 32].copy_from_slice(id(5).as_bytes());
        let expected = ContentError::WrongFrame { pack: *r.pack(), offset: r.start(), id: id(4) };
        assert_eq!(read(&other, &r, 3).unwrap_err(), expected);
        // A frame whose header declares another length.
        let mut other = packs.clone();
        other.get_mut(r.pack()).unwrap()[at + 32] ^= 1;
        assert_eq!(read(&other, &r, 3).unwrap_err(), expected);
        // Refused as soon as the header is in, and for good.
        let bytes = &other[r.pack()][at..r.end() as usize];
        let mut reader = RangeReader::new(r.clone());
        assert_eq!(reader.feed(&bytes[..FRAME_HEADER]).unwrap_err(), expected);
        assert_eq!(reader.feed(&bytes[FRAME_HEADER..]).unwrap_err(), expected);
        assert_eq!(reader.finish().unwrap_err(), expected);
    }

    #[test]
    fn a_short_or_long_answer_is_refused() {
        let (packs, index) = packed();
        let r = plan(&index, &[2, 3], APART).unwrap().remove(0);
        let bytes = &packs[r.pack()][r.start() as usize..r.end() as usize];
        let mut short = RangeReader::new(r.clone());
        short.feed(&bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(short.finish().unwrap_err(), ContentError::Truncated { pack: *r.pack(), missing: 1 });
        let none = RangeReader::new(r.clone());
        assert_eq!(none.finish().unwrap_err(), ContentError::Truncated { pack: *r.pack(), missing: r.len() });
        let mut long = RangeReader::new(r.clone());
        let mut more = bytes.to_vec();
        more.push(0);
        assert_eq!(long.feed(&more).unwrap_err(), ContentError::TooLong { pack: *r.pack() });
    }

    #[test]
    fn a_frame_at_the_end_of_the_largest_pack_reads_without_overflow() {
        let offset = MAX_PACK_LEN - 100;
        let index = ContentIndex::new(id(999), [(id(1), Placement { pack: id(7), offset, len: 100 })]).unwrap();
        let r = plan_ranges(&index, &[(id(1), 64)], APART).unwrap().remove(0);
        let mut frame = Vec::new();
        write_frame(&mut frame, &id(1), &[0u8; 64]);
        let mut reader = RangeReader::new(r.clone());
        assert_eq!(reader.feed(&frame).unwrap().len(), 1);
        reader.finish().unwrap();
        assert_eq!(
            RangeReader::new(r).feed(&[frame.as_slice(), &[0]].concat()).unwrap_err(),
            ContentError::TooLong { pack: id(7) }
        );
        let past =
            ContentIndex::new(id(999), [(id(1), Placement { pack: id(7), offset: MAX_PACK_LEN - 99, len: 100 })]);
        assert!(past.unwrap_err().to_string().contains("largest pack"));
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
        assert!(decode(&swapped).unwrap_err().to_string().contains("chunks out of order"));
        // The packs swapped: out of order.
        let mut swapped = good.clone();
        swapped[41..41 + 64].rotate_left(32);
        assert!(decode(&swapped).unwrap_err().to_string().contains("packs out of order"));
        // A pack number past the list.
        let mut bad = good.clone();
        bad[entries + 32..entries + 36].copy_from_slice(&99u32.to_le_bytes());
        assert!(decode(&bad).unwrap_err().to_string().contains("pack 99"));
        // A frame no longer than its header.
        let mut bad = good.clone();
        bad[entries + 44..entries + 48].copy_from_slice(&36u32.to_le_bytes());
        assert!(decode(&bad).unwrap_err().to_string().contains("36 bytes"));
        // Two frames on the same bytes.
        let p = index.locate(&id(0)).unwrap();
        let overlapping = ContentIndex::new(id(999), [(id(0), p), (id(1), p)]);
        assert!(overlapping.unwrap_err().to_string().contains("same bytes"));
        // A pack that no chunk is in.
        let mut unused = good[..41].to_vec();
        unused[37..41].copy_from_slice(&1u32.to_le_bytes());
        unused.extend_from_slice(id(5).as_bytes());
        unused.extend_from_slice(&0u32.to_le_bytes());
        assert!(decode(&unused).unwrap_err().to_string().contains("no chunk is in"));
        // Counts the bytes cannot hold are refused before anything is allocated.
        let mut huge = good[..37].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(ContentIndex::decode(&huge, &id(999), usize::MAX).is_err());
        let mut huge = good[..41].to_vec();
        huge[37..41].copy_from_slice(&0u32.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(ContentIndex::decode(&huge, &id(999), usize::MAX).is_err());
    }
}
