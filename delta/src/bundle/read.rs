//! [`BundleReader`]: a bundle read one section at a time from any [`Read`], every byte
//! hashed for the end check, every section held to the format's order and bounds before its
//! body is read. Not here: the format's table and types ([`super`]) or writing it.
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, Read};

use ferry_store::id::ID_LEN;
use ferry_store::wire::Reader;
use ferry_store::Id;

use super::{
    what, BundleError, BundledCommit, Section, KIND_ORDER, MAGIC, MAX_COMMITS, MAX_COMMIT_SECTION, MAX_FROM,
    MAX_HEADER, MAX_KEY_DOCS, MAX_MANIFEST, MAX_TREE_SECTION, VERSION,
};
use crate::pack::max_stored_len;

/// A reader that hashes and counts what passes through it.
#[derive(Debug)]
struct Hashing<R> {
    inner: R,
    hasher: blake3::Hasher,
    offset: u64,
}

impl<R: Read> Hashing<R> {
    /// Reads exactly `buf.len()` bytes; `Ok(false)` if the stream ended first.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let mut rest = buf;
        while !rest.is_empty() {
            match self.inner.read(rest) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    let (done, left) = std::mem::take(&mut rest).split_at_mut_checked(n).ok_or_else(|| {
                        io::Error::other("the input reported reading more than it was given room for")
                    })?;
                    self.hasher.update(done);
                    self.offset += n as u64;
                    rest = left;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

impl<R: Read> Hashing<R> {
    /// Appends exactly `len` bytes to `out`, 64 KiB at a time; `Ok(false)` if the stream
    /// ended first.
    fn fill_vec(&mut self, out: &mut Vec<u8>, len: usize) -> io::Result<bool> {
        while out.len() < len {
            let start = out.len();
            let step = (len - start).min(1 << 16);
            out.resize(start + step, 0);
            if !self.fill(out.get_mut(start..).unwrap_or_default())? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Reads a bundle one section at a time, enforcing the format's order and bounds.
#[derive(Debug)]
pub struct BundleReader<R> {
    input: Hashing<R>,
    /// Index into `KIND_ORDER` of the last section read.
    stage: usize,
    counts: [usize; 8],
    manifest: Vec<(Id, u32)>,
    next_chunk: usize,
    ended: bool,
    /// Bytes of header sections (K, H, C, F) read so far.
    header_bytes: u64,
    /// The most entries the manifest may list ([`BundleReader::limit_manifest`]).
    manifest_limit: usize,
}

/// A tree section the reader was told to skip ([`BundleReader::next_section_wanting`]):
/// its bytes were hashed for the end check and dropped.
pub const SKIPPED: &[u8] = &[];

impl<R: Read> BundleReader<R> {
    /// Reads and checks the bundle's header.
    pub fn new(inner: R) -> Result<BundleReader<R>, BundleError> {
        let mut input = Hashing { inner, hasher: blake3::Hasher::new(), offset: 0 };
        let mut head = [0u8; 5];
        if !input.fill(&mut head)? {
            return Err(if input.offset == 0 {
                BundleError::Truncated { what: "before its header", at: 0 }
            } else {
                BundleError::BadMagic
            });
        }
        let mut r = Reader::new(&head);
        if r.array::<4>("magic").map_err(|_| BundleError::BadMagic)? != *MAGIC {
            return Err(BundleError::BadMagic);
        }
        let version = r.u8("version").map_err(|_| BundleError::BadMagic)?;
        if version != VERSION {
            return Err(BundleError::Version(version));
        }
        Ok(BundleReader {
            input,
            stage: 0,
            counts: [0; 8],
            manifest: Vec::new(),
            next_chunk: 0,
            ended: false,
            header_bytes: 0,
            manifest_limit: MAX_MANIFEST,
        })
    }

    /// How many sections of the kind at `stage` (an index into `KIND_ORDER`) were read.
    fn count(&self, stage: usize) -> usize {
        self.counts.get(stage).copied().unwrap_or(0)
    }

    /// Records a section of the kind at `stage` as read.
    fn advance(&mut self, stage: usize) {
        self.stage = stage;
        if let Some(c) = self.counts.get_mut(stage) {
            *c += 1;
        }
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.input.offset
    }

    /// The manifest, once read.
    pub fn manifest(&self) -> &[(Id, u32)] {
        &self.manifest
    }

    /// Lowers the bound of the manifest to `entries` (a reader that knows, from signed trees,
    /// how many chunks the release has, refuses a longer list before reading it).
    pub fn limit_manifest(&mut self, entries: usize) {
        self.manifest_limit = entries.min(MAX_MANIFEST);
    }

    /// The next section; `None` after the end section, which was checked (hash, nothing
    /// after it, every listed chunk received).
    pub fn next_section(&mut self) -> Result<Option<Section>, BundleError> {
        self.next_section_wanting(|_| true)
    }

    /// [`BundleReader::next_section`], except that a tree section whose id `want` refuses
    /// is read past without being held: it comes back as `Section::Tree` with its id and
    /// empty bytes ([`SKIPPED`]). A reader looking for the trees a signed root names thus
    /// holds only those.
    pub fn next_section_wanting(&mut self, want: impl Fn(&Id) -> bool) -> Result<Option<Section>, BundleError> {
        if self.ended {
            return Ok(None);
        }
        let at = self.input.offset;
        let digest = self.input.hasher.finalize();
        let mut head = [0u8; 5];
        if !self.input.fill(&mut head)? {
            return Err(BundleError::Truncated { what: "between sections", at: self.input.offset });
        }
        let mut r = Reader::new(&head);
        let cut = |_| BundleError::Truncated { what: "between sections", at };
        let kind = r.u8("section kind").map_err(cut)?;
        let len = u64::from(r.u32("section length").map_err(cut)?);
        let stage = KIND_ORDER.iter().position(|k| *k == kind).ok_or(BundleError::UnknownKind { kind, at })?;
        let name = what(kind);
        // Order: never back; the from, manifest and end sections come once each; the
        // chunks are exactly those the manifest lists.
        let once = matches!(kind, b'F' | b'M' | b'E' | b'H');
        if stage < self.stage || (once && self.count(stage) > 0) {
            return Err(BundleError::OutOfOrder { what: name, at });
        }
        let required_before: &[u8] = match kind {
            b'F' => b"C",
            b'T' | b'M' => b"CF",
            b'D' | b'E' => b"CFM",
            _ => b"",
        };
        for r in required_before {
            let i = KIND_ORDER.iter().position(|k| k == r).unwrap_or(0);
            if self.count(i) == 0 {
                return Err(BundleError::OutOfOrder { what: name, at });
            }
        }
        if kind == b'E' && self.next_chunk < self.manifest.len() {
            return Err(BundleError::MissingChunks { received: self.next_chunk, listed: self.manifest.len() });
        }
        let max = match kind {
            b'K' | b'H' => ferry_store::channel::MAX_ENVELOPE as u64,
            b'C' => MAX_COMMIT_SECTION as u64,
            b'F' => (MAX_FROM * 32) as u64,
            b'T' => MAX_TREE_SECTION as u64,
            b'M' => (self.manifest_limit * 36) as u64,
            b'D' => match self.manifest.get(self.next_chunk) {
                Some((_, l)) => 32 + u64::from(max_stored_len(*l)),
                None => return Err(BundleError::TooMany { what: "chunk", max: self.manifest.len() }),
            },
            _ => 40,
        };
        if len > max {
            return Err(BundleError::TooLarge { what: name, at, len, max });
        }
        if matches!(kind, b'K' | b'H' | b'C' | b'F') {
            self.header_bytes += len;
            if self.header_bytes > MAX_HEADER {
                return Err(BundleError::TooLarge {
                    what: "header (key documents, channel document, commits, from)",
                    at,
                    len: self.header_bytes,
                    max: MAX_HEADER,
                });
            }
        }
        if kind == b'T' && len >= 32 {
            let mut id = [0u8; 32];
            if !self.input.fill(&mut id)? {
                return Err(BundleError::Truncated { what: "inside a section", at: self.input.offset });
            }
            let id = Id(id);
            if !want(&id) {
                let mut rest = len - 32;
                let mut scratch = vec![0u8; (rest as usize).min(1 << 16)];
                while rest > 0 {
                    let step = (rest as usize).min(scratch.len());
                    if !self.input.fill(scratch.get_mut(..step).unwrap_or_default())? {
                        return Err(BundleError::Truncated { what: "inside a section", at: self.input.offset });
                    }
                    rest -= step as u64;
                }
                self.advance(stage);
                return Ok(Some(Section::Tree { id, bytes: SKIPPED.to_vec() }));
            }
            let mut body = Vec::with_capacity(((len - 32) as usize).min(1 << 16));
            if !self.input.fill_vec(&mut body, (len - 32) as usize)? {
                return Err(BundleError::Truncated { what: "inside a section", at: self.input.offset });
            }
            self.advance(stage);
            return Ok(Some(Section::Tree { id, bytes: body }));
        }
        let count_max = match kind {
            b'K' => MAX_KEY_DOCS,
            b'C' => MAX_COMMITS,
            _ => usize::MAX,
        };
        if self.count(stage) >= count_max {
            return Err(BundleError::TooMany { what: name, max: count_max });
        }
        // Grown as bytes arrive: a bundle that claims a large section and ends early never
        // makes the reader allocate what it claimed.
        let mut body = Vec::with_capacity((len as usize).min(1 << 16));
        if !self.input.fill_vec(&mut body, len as usize)? {
            return Err(BundleError::Truncated { what: "inside a section", at: self.input.offset });
        }
        self.advance(stage);
        let malformed = |reason: String| BundleError::Malformed { what: name, at, reason };
        let ids = |b: &[u8], size: usize| -> Result<(), BundleError> {
            if !b.len().is_multiple_of(size) {
                return Err(malformed(format!("{} bytes is not a multiple of {size}", b.len())));
            }
            Ok(())
        };
        let section = match kind {
            b'K' => Section::Keys(body),
            b'H' => Section::Channel(body),
            b'C' => Section::Commit(BundledCommit::decode(&body).map_err(&malformed)?),
            b'F' => {
                ids(&body, 32)?;
                let mut r = Reader::new(&body);
                let mut from = Vec::with_capacity(body.len() / 32);
                while !r.is_empty() {
                    from.push(r.id("from id").map_err(|e| malformed(e.to_string()))?);
                }
                Section::From(from)
            }
            b'T' => {
                let id = Reader::new(&body).id("tree id").map_err(|_| malformed("no tree id".into()))?;
                body.drain(..ID_LEN.min(body.len()));
                Section::Tree { id, bytes: body }
            }
            b'M' => {
                ids(&body, 36)?;
                let mut list = Vec::with_capacity(body.len() / 36);
                let mut seen = std::collections::HashSet::with_capacity(body.len() / 36);
                let mut r = Reader::new(&body);
                while !r.is_empty() {
                    let id = r.id("manifest id").map_err(|_| malformed("bad id".into()))?;
                    if !seen.insert(id) {
                        return Err(malformed(format!("chunk {id} is listed twice")));
                    }
                    let len = r.u32("manifest length").map_err(|e| malformed(e.to_string()))?;
                    if len == 0 || len > ferry_store::object::MAX_CHUNK_LEN {
                        return Err(malformed(format!(
                            "chunk {id} is listed as {len} bytes; chunks are 1 to {} bytes",
                            ferry_store::object::MAX_CHUNK_LEN
                        )));
                    }
                    list.push((id, len));
                }
                let count = list.len();
                self.manifest = list;
                Section::Manifest(count)
            }
            b'D' => {
                let id = Reader::new(&body).id("chunk id").map_err(|_| malformed("no chunk id".into()))?;
                let (expected, _) = *self
                    .manifest
                    .get(self.next_chunk)
                    .ok_or(BundleError::TooMany { what: "chunk", max: self.manifest.len() })?;
                if id != expected {
                    return Err(BundleError::WrongChunk { at, found: id, expected: expected.to_hex() });
                }
                self.next_chunk += 1;
                body.drain(..ID_LEN.min(body.len()));
                Section::Chunk { id, frame: body }
            }
            _ => {
                if body.len() != 40 {
                    return Err(malformed(format!("{} bytes, not 40", body.len())));
                }
                let mut r = Reader::new(&body);
                let offset = r.u64("end offset").map_err(|e| malformed(e.to_string()))?;
                let hash = r.array::<32>("end hash").map_err(|e| malformed(e.to_string()))?;
                r.finish().map_err(|e| malformed(e.to_string()))?;
                if offset != at || hash != *digest.as_bytes() {
                    return Err(BundleError::HashMismatch);
                }
                let mut extra = [0u8; 1];
                if self.input.fill(&mut extra)? {
                    return Err(BundleError::TrailingBytes);
                }
                self.ended = true;
                return Ok(None);
            }
        };
        Ok(Some(section))
    }
}
