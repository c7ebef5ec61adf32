//! The pack stream: how batches of chunks or objects travel in one HTTP response.
//!
//! ```text
//! request body:  id[32] × n                      (n ≤ MAX_IDS_PER_REQUEST, no duplicates)
//! response body: frame × n, in request order
//! frame:         id[32] ‖ u32 LE length ‖ length bytes
//! ```
//!
//! `POST /v1/trees` asks for a tree closure instead of a list of ids ([`TreesRequest`]):
//!
//! ```text
//! request body:  new_root[32] ‖ old_root[32] ‖ [u8 encoding]   (old root 32 zero bytes: none)
//! encoding:      absent or 0: frames, parents before children, of every tree under the new
//!                root that is not under the old one; 1: the same frames as one zstd frame
//!                with the old root's trees as prefix (`patch::tree_prefix`; needs an old root)
//! ```
//!
//! For chunks the bytes are the stored zstd frame; for objects, the canonical encoding. The
//! format carries no sizes the receiver must trust: [`FrameDecoder`] asks the caller for the
//! largest length it accepts for each id (derived from signed metadata), refuses ids it did
//! not ask for or already received, and never buffers more than one frame. It is push-based
//! (feed it bytes as they arrive) so it works with any transport and knows nothing of HTTP.
//!
//! Every decoder here reads untrusted bytes through [`ferry_store::wire::Reader`] and never
//! indexes them directly.
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use ferry_store::wire::Reader;
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
    if !body.len().is_multiple_of(32) {
        return Err(PackError::BadRequestLength(body.len()));
    }
    let count = body.len() / 32;
    if count > MAX_IDS_PER_REQUEST {
        return Err(PackError::TooManyIds { count });
    }
    let mut seen = std::collections::HashSet::with_capacity(count);
    let mut ids = Vec::with_capacity(count);
    let mut r = Reader::new(body);
    while !r.is_empty() {
        let id = r.id("requested id").map_err(|_| PackError::BadRequestLength(body.len()))?;
        if !seen.insert(id) {
            return Err(PackError::DuplicateId(id));
        }
        ids.push(id);
    }
    Ok(ids)
}

/// How a trees answer travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreesEncoding {
    /// Pack frames, parents before children.
    Frames,
    /// The same frames as one zstd frame, compressed with the old root's trees as prefix.
    Compressed,
}

/// The body of a `POST /v1/trees`: every tree under `new_root` that is not under `old_root`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreesRequest {
    pub new_root: Id,
    /// The root the device holds, if any (sent as 32 zero bytes when none).
    pub old_root: Option<Id>,
    pub encoding: TreesEncoding,
}

/// Why a trees request body is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreesRequestError {
    #[error("a trees request is 64 or 65 bytes (new root, old root, encoding), not {0}")]
    BadLength(usize),
    #[error("unknown trees encoding {0}")]
    UnknownEncoding(u8),
    #[error("compressed trees need an old root")]
    CompressedWithoutOldRoot,
}

const TREES_FRAMES: u8 = 0;
const TREES_COMPRESSED: u8 = 1;

impl TreesRequest {
    /// The request body: 64 bytes for frames (no encoding byte, as every agent has sent
    /// them), 65 for the compressed form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(65);
        out.extend_from_slice(self.new_root.as_bytes());
        out.extend_from_slice(self.old_root.as_ref().map_or(&[0u8; 32], |id| id.as_bytes()));
        if self.encoding == TreesEncoding::Compressed {
            out.push(TREES_COMPRESSED);
        }
        out
    }

    /// Reads a request body, strictly: 64 or 65 bytes, a known encoding, and an old root
    /// for the compressed form.
    pub fn decode(body: &[u8]) -> Result<TreesRequest, TreesRequestError> {
        if body.len() != 64 && body.len() != 65 {
            return Err(TreesRequestError::BadLength(body.len()));
        }
        let mut r = Reader::new(body);
        let bad_length = |_| TreesRequestError::BadLength(body.len());
        let new_root = r.id("new root").map_err(bad_length)?;
        let old_root = Some(r.id("old root").map_err(bad_length)?).filter(|id| id.as_bytes() != &[0; 32]);
        let encoding = match r.take_at_most(1).first() {
            None | Some(&TREES_FRAMES) => TreesEncoding::Frames,
            Some(&TREES_COMPRESSED) => TreesEncoding::Compressed,
            Some(&e) => return Err(TreesRequestError::UnknownEncoding(e)),
        };
        r.finish().map_err(bad_length)?;
        if encoding == TreesEncoding::Compressed && old_root.is_none() {
            return Err(TreesRequestError::CompressedWithoutOldRoot);
        }
        Ok(TreesRequest { new_root, old_root, encoding })
    }
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
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<Frame>, PackError> {
        let mut data = Reader::new(data);
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
        data: &[u8],
        max: u32,
        mut on_frame: impl FnMut(Frame) -> Result<Vec<Id>, E>,
    ) -> Result<(), E> {
        let mut data = Reader::new(data);
        while let Some(frame) = self.next_frame(&mut data)? {
            for id in on_frame(frame)? {
                self.expect(id, max);
            }
        }
        Ok(())
    }

    /// Consumes bytes from `data` until one frame completes (returned) or `data` runs out.
    fn next_frame(&mut self, data: &mut Reader<'_>) -> Result<Option<Frame>, PackError> {
        while !data.is_empty() || matches!(self.current, Some((_, 0))) {
            match self.current {
                None => {
                    self.buf.extend_from_slice(data.take_at_most(FRAME_HEADER.saturating_sub(self.buf.len())));
                    if self.buf.len() == FRAME_HEADER {
                        let (id, len) = read_header(&self.buf)?;
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
                    self.buf.extend_from_slice(data.take_at_most((len as usize).saturating_sub(self.buf.len())));
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

/// A whole frame header: the id and the declared length.
fn read_header(header: &[u8]) -> Result<(Id, u32), PackError> {
    let mut r = Reader::new(header);
    let truncated = |_| PackError::Truncated(header.len());
    let id = r.id("frame id").map_err(truncated)?;
    let len = r.u32("frame length").map_err(truncated)?;
    r.finish().map_err(truncated)?;
    Ok((id, len))
}

/// Largest zstd frame a chunk of `len` bytes can need (zstd's compress bound, plus slack).
pub fn max_stored_len(len: u32) -> u32 {
    let len = u64::from(len);
    let bound = len + (len >> 8) + if len < (128 << 10) { ((128 << 10) - len) >> 11 } else { 0 } + 64;
    bound.min(u64::from(u32::MAX)) as u32
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
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
    fn trees_requests_roundtrip_and_bad_ones_are_refused() {
        let (new, old) = (Id::of(b"new"), Id::of(b"old"));
        let frames = TreesRequest { new_root: new, old_root: Some(old), encoding: TreesEncoding::Frames };
        let compressed = TreesRequest { encoding: TreesEncoding::Compressed, ..frames };
        let fresh = TreesRequest { old_root: None, ..frames };
        // The bytes every agent has sent: the two roots, and the encoding byte only when compressed.
        let mut body = new.as_bytes().to_vec();
        body.extend_from_slice(old.as_bytes());
        assert_eq!(frames.encode(), body);
        body.push(1);
        assert_eq!(compressed.encode(), body);
        assert_eq!(fresh.encode(), [new.as_bytes().as_slice(), &[0; 32]].concat());
        for r in [frames, compressed, fresh] {
            assert_eq!(TreesRequest::decode(&r.encode()), Ok(r));
        }
        let mut explicit = frames.encode();
        explicit.push(0);
        assert_eq!(TreesRequest::decode(&explicit), Ok(frames));
        for len in [0, 1, 32, 63, 66, 100] {
            assert_eq!(TreesRequest::decode(&vec![7; len]), Err(TreesRequestError::BadLength(len)));
        }
        body[64] = 2;
        assert_eq!(TreesRequest::decode(&body), Err(TreesRequestError::UnknownEncoding(2)));
        let mut no_old = fresh.encode();
        no_old.push(1);
        assert_eq!(TreesRequest::decode(&no_old), Err(TreesRequestError::CompressedWithoutOldRoot));
        assert_eq!(
            TreesRequestError::BadLength(3).to_string(),
            "a trees request is 64 or 65 bytes (new root, old root, encoding), not 3"
        );
    }

    proptest::proptest! {
        /// Arbitrary and mutated streams never panic, give the same outcome however they are
        /// cut, and a stream accepted whole is its frames written back.
        #[test]
        fn any_stream_decodes_the_same_whatever_the_split_or_is_refused(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            flip in 0usize..400,
            step in 1usize..50,
        ) {
            let (items, good) = frames(4);
            let mut mutated = good.clone();
            let i = flip % mutated.len();
            mutated[i] ^= 0x41;
            for stream in [noise, mutated, good] {
                let decode = |step: usize| {
                    let mut d = FrameDecoder::new(items.iter().map(|(id, b)| (*id, b.len() as u32)));
                    let mut got = Vec::new();
                    for piece in stream.chunks(step) {
                        got.extend(d.feed(piece)?);
                    }
                    d.finish().map(|()| got)
                };
                let (whole, pieces) = (decode(stream.len().max(1)), decode(step));
                proptest::prop_assert_eq!(&whole, &pieces);
                if let Ok(got) = whole {
                    let mut again = Vec::new();
                    for f in &got {
                        write_frame(&mut again, &f.id, &f.bytes);
                    }
                    proptest::prop_assert_eq!(again, stream);
                }
            }
        }
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
