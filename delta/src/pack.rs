//! The pack stream: how batches of chunks or objects travel in one HTTP response.
//!
//! ```text
//! request body:  id[32] × n                      (n ≤ MAX_IDS_PER_REQUEST, no duplicates)
//! response body: frame × n, in request order
//! frame:         id[32] ‖ u32 LE length ‖ length bytes
//! ```
//!
//! For chunks the bytes are the stored zstd frame; for objects, the canonical encoding. The
//! format carries no sizes the receiver must trust: [`FrameDecoder`] asks the caller for the
//! largest length it accepts for each id (derived from signed metadata), refuses ids it did
//! not ask for or already received, and never buffers more than one frame. It is push-based
//! (feed it bytes as they arrive) so it works with any transport and knows nothing of HTTP.

use std::collections::HashMap;

use ferry_store::Id;

/// Most ids one request may name.
pub const MAX_IDS_PER_REQUEST: usize = 65536;
/// Bytes of a frame header: id and length.
pub const FRAME_HEADER: usize = 36;

/// Appends one frame.
pub fn write_frame(out: &mut Vec<u8>, id: &Id, bytes: &[u8]) {
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Encodes a request body naming `ids`.
pub fn encode_request(ids: &[Id]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.as_bytes().iter().copied()).collect()
}

/// Why a request body or a response stream is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    #[error("request body is {0} bytes, not a multiple of 32")]
    BadRequestLength(usize),
    #[error("request names {count} ids; the limit is {MAX_IDS_PER_REQUEST}")]
    TooManyIds { count: usize },
    #[error("request names {0} twice")]
    DuplicateId(Id),
    #[error("response sent {0}, which was not asked for or was already received")]
    Unexpected(Id),
    #[error("response frame for {id} is {len} bytes, more than the {max} its metadata allows")]
    TooLong { id: Id, len: u32, max: u32 },
    #[error("response ended inside a frame ({0} bytes of it received)")]
    Truncated(usize),
}

/// Decodes a request body into ids.
pub fn decode_request(body: &[u8]) -> Result<Vec<Id>, PackError> {
    if body.len() % 32 != 0 {
        return Err(PackError::BadRequestLength(body.len()));
    }
    let count = body.len() / 32;
    if count > MAX_IDS_PER_REQUEST {
        return Err(PackError::TooManyIds { count });
    }
    let mut seen = std::collections::HashSet::with_capacity(count);
    let mut ids = Vec::with_capacity(count);
    for c in body.chunks_exact(32) {
        let id = Id::from_slice(c).ok_or(PackError::BadRequestLength(body.len()))?;
        if !seen.insert(id) {
            return Err(PackError::DuplicateId(id));
        }
        ids.push(id);
    }
    Ok(ids)
}

/// A frame that arrived whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub id: Id,
    pub bytes: Vec<u8>,
}

/// Incremental decoder for a response, bounded by the caller's expectations.
#[derive(Debug)]
pub struct FrameDecoder {
    /// Ids still expected, with the largest length accepted for each.
    expected: HashMap<Id, u32>,
    buf: Vec<u8>,
    /// The frame being read: its id and declared length, once the header is complete.
    current: Option<(Id, u32)>,
}

impl FrameDecoder {
    pub fn new(expected: impl IntoIterator<Item = (Id, u32)>) -> FrameDecoder {
        FrameDecoder { expected: expected.into_iter().collect(), buf: Vec::new(), current: None }
    }

    /// Feeds received bytes; returns the frames completed by them.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<Vec<Frame>, PackError> {
        let mut out = Vec::new();
        while let Some(frame) = self.next_frame(&mut data)? {
            out.push(frame);
        }
        Ok(out)
    }

    /// Feeds received bytes, handing each completed frame to `on_frame` before reading on;
    /// the ids it returns are expected from then on, with bound `max` (a tree naming its
    /// subtrees, in a stream that sends parents first).
    pub fn feed_expanding<E: From<PackError>>(
        &mut self,
        mut data: &[u8],
        max: u32,
        mut on_frame: impl FnMut(Frame) -> Result<Vec<Id>, E>,
    ) -> Result<(), E> {
        while let Some(frame) = self.next_frame(&mut data)? {
            for id in on_frame(frame)? {
                self.expect(id, max);
            }
        }
        Ok(())
    }

    /// Consumes bytes from `data` until one frame completes (returned) or `data` runs out.
    fn next_frame(&mut self, data: &mut &[u8]) -> Result<Option<Frame>, PackError> {
        while !data.is_empty() || matches!(self.current, Some((_, 0))) {
            match self.current {
                None => {
                    let need = FRAME_HEADER - self.buf.len();
                    let take = need.min(data.len());
                    self.buf.extend_from_slice(&data[..take]);
                    *data = &data[take..];
                    if self.buf.len() == FRAME_HEADER {
                        let id = Id::from_slice(&self.buf[..32]).ok_or(PackError::Truncated(self.buf.len()))?;
                        let len = u32::from_le_bytes([self.buf[32], self.buf[33], self.buf[34], self.buf[35]]);
                        let max = self.expected.remove(&id).ok_or(PackError::Unexpected(id))?;
                        if len > max {
                            return Err(PackError::TooLong { id, len, max });
                        }
                        self.buf.clear();
                        // Grown as bytes arrive: a declared length costs nothing until sent.
                        self.buf.reserve((len as usize).min(1 << 16));
                        self.current = Some((id, len));
                    }
                }
                Some((_, len)) => {
                    let need = len as usize - self.buf.len();
                    let take = need.min(data.len());
                    self.buf.extend_from_slice(&data[..take]);
                    *data = &data[take..];
                }
            }
            // A frame completes when its bytes are all in (at once for a zero-length one).
            if let Some((id, len)) = self.current {
                if self.buf.len() == len as usize {
                    self.current = None;
                    return Ok(Some(Frame { id, bytes: std::mem::take(&mut self.buf) }));
                }
            }
        }
        Ok(None)
    }

    /// Call at the end of the stream: fails if it ended inside a frame.
    pub fn finish(&self) -> Result<(), PackError> {
        if self.current.is_some() || !self.buf.is_empty() {
            return Err(PackError::Truncated(self.buf.len()));
        }
        Ok(())
    }

    /// Accepts one more id (e.g. a subtree named by a tree that just arrived). An id already
    /// expected keeps its bound.
    pub fn expect(&mut self, id: Id, max: u32) {
        self.expected.entry(id).or_insert(max);
    }

    /// Ids asked for that have not arrived (yet).
    pub fn remaining(&self) -> usize {
        self.expected.len() + usize::from(self.current.is_some())
    }
}

/// Largest zstd frame a chunk of `len` bytes can need (zstd's compress bound, plus slack).
pub fn max_stored_len(len: u32) -> u32 {
    let len = u64::from(len);
    let bound = len + (len >> 8) + if len < (128 << 10) { ((128 << 10) - len) >> 11 } else { 0 } + 64;
    bound.min(u64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(n: usize) -> (Vec<(Id, Vec<u8>)>, Vec<u8>) {
        let items: Vec<(Id, Vec<u8>)> = (0..n).map(|i| (Id::of(&[i as u8]), vec![i as u8; i * 7])).collect();
        let mut body = Vec::new();
        for (id, b) in &items {
            write_frame(&mut body, id, b);
        }
        (items, body)
    }

    #[test]
    fn frames_decode_whatever_the_split() {
        let (items, body) = frames(20);
        for step in [1, 3, 36, 100, body.len()] {
            let mut d = FrameDecoder::new(items.iter().map(|(id, b)| (*id, b.len() as u32)));
            let mut got = Vec::new();
            for piece in body.chunks(step) {
                got.extend(d.feed(piece).unwrap());
            }
            d.finish().unwrap();
            assert_eq!(d.remaining(), 0);
            let got: Vec<(Id, Vec<u8>)> = got.into_iter().map(|f| (f.id, f.bytes)).collect();
            assert_eq!(got, items, "split every {step} bytes");
        }
    }

    #[test]
    fn unexpected_duplicate_oversized_and_truncated_frames_are_refused() {
        let (items, body) = frames(3);
        let mut d = FrameDecoder::new(items.iter().skip(1).map(|(id, b)| (*id, b.len() as u32)));
        assert_eq!(d.feed(&body), Err(PackError::Unexpected(items[0].0)));
        let mut d = FrameDecoder::new(items.iter().map(|(id, b)| (*id, b.len() as u32 / 2)));
        assert!(matches!(d.feed(&body), Err(PackError::TooLong { .. }) | Err(PackError::Unexpected(_))));
        let mut twice = body.clone();
        twice.extend_from_slice(&body);
        let mut d = FrameDecoder::new(items.iter().map(|(id, b)| (*id, b.len() as u32)));
        assert!(matches!(d.feed(&twice), Err(PackError::Unexpected(_))));
        let mut d = FrameDecoder::new(items.iter().map(|(id, b)| (*id, b.len() as u32)));
        d.feed(&body[..body.len() - 1]).unwrap();
        assert!(matches!(d.finish(), Err(PackError::Truncated(_))));
    }

    #[test]
    fn requests_are_checked() {
        let ids = [Id::of(b"a"), Id::of(b"b")];
        assert_eq!(decode_request(&encode_request(&ids)).unwrap(), ids);
        assert_eq!(decode_request(&[0; 33]), Err(PackError::BadRequestLength(33)));
        assert_eq!(decode_request(&encode_request(&[ids[0], ids[0]])), Err(PackError::DuplicateId(ids[0])));
        let many: Vec<Id> = (0..=MAX_IDS_PER_REQUEST as u32).map(|i| Id::of(&i.to_le_bytes())).collect();
        assert!(matches!(decode_request(&encode_request(&many)), Err(PackError::TooManyIds { .. })));
    }

    #[test]
    fn the_stored_bound_covers_incompressible_chunks() {
        for len in [0u32, 1, 1000, 65536, 262_144, 1 << 20] {
            let mut data = vec![0u8; len as usize];
            let mut x = 0x1234_5678_u32;
            for b in &mut data {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            let stored = zstd::bulk::compress(&data, 3).unwrap();
            assert!(stored.len() as u32 <= max_stored_len(len), "{len}: {} > {}", stored.len(), max_stored_len(len));
        }
    }
}
