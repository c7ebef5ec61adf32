//! The offline bundle: one file that carries a release to a device without a network (a
//! technician's laptop, a USB stick, an upload to the device's local page).
//!
//! ```text
//! bundle  := "FRYB" ‖ u8 version (1) ‖ section* ‖ end
//! section := u8 kind ‖ u32 LE length ‖ body
//!
//! kind  count            body
//! 'K'   0..=64           a key document envelope (store::channel, FRYS), oldest first
//! 'H'   0 or 1           the channel document envelope the bundle carries
//! 'C'   1..=64           id[32] ‖ u8 n ‖ (key[32] ‖ signature[64]) × n ‖ canonical commit
//! 'F'   1                id[32] × n: the commits the bundle was made for (`--from`; may be empty)
//! 'T'   any              id[32] ‖ canonical tree; parents before their subtrees
//! 'M'   1                (id[32] ‖ u32 LE length) × n: the chunks that follow, in their order
//! 'D'   n                id[32] ‖ the chunk's stored zstd frame, exactly as the manifest lists
//! 'E'   1                u64 LE offset of this section ‖ BLAKE3[32] of every byte before it
//! ```
//!
//! Sections come in the order of the table; anything else is refused, as are unknown kinds,
//! sections larger than their bound, and bytes after the end. Nothing in a bundle is trusted
//! for its own sake: the agent checks the key documents, the channel document and the commit
//! signatures as it does for a network update, then every tree against the id its parent (or
//! the commit) names, and every chunk against its id. The end section's hash only tells a
//! damaged file (a bad USB stick, a cut upload) from a finished one.
//!
//! The manifest comes before the chunks so a device knows, once it has read the small part
//! of the bundle, whether the chunks it lacks are all there: it refuses a bundle that cannot
//! work before writing anything. Chunks then stream: [`BundleReader`] holds one section at a
//! time, so a bundle is applied while it is read from a pipe or an upload.
//!
//! Every byte the reader is given is untrusted: headers and section bodies are read through
//! [`ferry_store::wire::Reader`], never indexed directly.
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, Read, Write};

use ferry_store::id::ID_LEN;
use ferry_store::wire::Reader;
use ferry_store::Id;

use crate::pack::max_stored_len;

pub const MAGIC: &[u8; 4] = b"FRYB";
pub const VERSION: u8 = 1;
/// Most key documents, and most commits (one per hardware target), a bundle carries.
pub const MAX_KEY_DOCS: usize = 64;
pub const MAX_COMMITS: usize = 64;
/// Largest commit section body (the agent's own commit limit plus the signatures).
pub const MAX_COMMIT_SECTION: usize = (2 << 20) + 1 + 255 * 96 + 32;
/// Largest tree section body.
pub const MAX_TREE_SECTION: usize = (64 << 20) + 32;
/// Most chunks one manifest lists (2M: 128 GiB of 64 KiB chunks).
pub const MAX_MANIFEST: usize = 1 << 21;
/// Most commits a from section names.
pub const MAX_FROM: usize = 1024;
/// The most bytes of key documents, channel document, commits and from list a bundle may
/// carry in all: what a reader holds before it can check a single signature. Real ones are
/// a few KiB (a key document is about 200 bytes, a commit a few hundred).
pub const MAX_HEADER: u64 = 16 << 20;

const KIND_ORDER: &[u8] = b"KHCFTMDE";

/// Why a bundle is refused while it is read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("reading the bundle: {0}")]
    Io(#[from] io::Error),
    #[error("this is not a Ferry bundle (it does not start with FRYB)")]
    BadMagic,
    #[error("bundle format version {0} is not supported (this agent reads version {VERSION})")]
    Version(u8),
    #[error("the bundle is truncated: it ends {what} at byte {at}")]
    Truncated { what: &'static str, at: u64 },
    #[error("the bundle has a section of unknown kind 0x{kind:02x} at byte {at}")]
    UnknownKind { kind: u8, at: u64 },
    #[error("the bundle's {what} section at byte {at} is out of order")]
    OutOfOrder { what: &'static str, at: u64 },
    #[error("the bundle's {what} section at byte {at} is {len} bytes; at most {max} are allowed")]
    TooLarge { what: &'static str, at: u64, len: u64, max: u64 },
    #[error("the bundle's {what} section at byte {at} is malformed: {reason}")]
    Malformed { what: &'static str, at: u64, reason: String },
    #[error("the bundle has too many {what} sections (at most {max})")]
    TooMany { what: &'static str, max: usize },
    #[error("the bundle's chunk at byte {at} is {found}, but its manifest lists {expected} next")]
    WrongChunk { at: u64, found: Id, expected: String },
    #[error("the bundle ends after {received} of the {listed} chunks its manifest lists")]
    MissingChunks { received: usize, listed: usize },
    #[error("the bundle is damaged: its bytes do not match the hash at its end")]
    HashMismatch,
    #[error("the bundle has bytes after its end section")]
    TrailingBytes,
}

fn what(kind: u8) -> &'static str {
    match kind {
        b'K' => "key document",
        b'H' => "channel document",
        b'C' => "commit",
        b'F' => "from",
        b'T' => "tree",
        b'M' => "manifest",
        b'D' => "chunk",
        _ => "end",
    }
}

/// A commit as a bundle carries it: its id, its detached signatures and its bytes, none of
/// them checked yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundledCommit {
    pub id: Id,
    pub signatures: Vec<([u8; 32], [u8; 64])>,
    pub bytes: Vec<u8>,
}

impl BundledCommit {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(33 + self.signatures.len() * 96 + self.bytes.len());
        out.extend_from_slice(self.id.as_bytes());
        out.push(self.signatures.len() as u8);
        for (k, s) in &self.signatures {
            out.extend_from_slice(k);
            out.extend_from_slice(s);
        }
        out.extend_from_slice(&self.bytes);
        out
    }

    fn decode(body: &[u8]) -> Result<BundledCommit, String> {
        let mut r = Reader::new(body);
        let id = r.id("commit id").map_err(|_| "shorter than a commit id")?;
        let n = r.u8("signature count").map_err(|_| "no signature count")?;
        let signatures = (0..n)
            .map(|_| Ok((r.array::<32>("signing key")?, r.array::<64>("signature")?)))
            .collect::<Result<Vec<_>, ferry_store::wire::WireError>>()
            .map_err(|_| "shorter than its signatures")?;
        Ok(BundledCommit { id, signatures, bytes: r.rest().to_vec() })
    }
}

/// One section, as [`BundleReader::next_section`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Section {
    Keys(Vec<u8>),
    Channel(Vec<u8>),
    Commit(BundledCommit),
    From(Vec<Id>),
    Tree {
        id: Id,
        bytes: Vec<u8>,
    },
    /// The manifest, by its number of chunks; [`BundleReader::manifest`] holds the list.
    Manifest(usize),
    Chunk {
        id: Id,
        frame: Vec<u8>,
    },
}

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
            if b.len() % size != 0 {
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

/// Writes a bundle; the sections must be written in the format's order (an out-of-order
/// call is an `InvalidInput` error).
#[derive(Debug)]
pub struct BundleWriter<W: Write> {
    out: W,
    hasher: blake3::Hasher,
    offset: u64,
    stage: usize,
}

impl<W: Write> BundleWriter<W> {
    pub fn new(mut out: W) -> io::Result<BundleWriter<W>> {
        let mut head = MAGIC.to_vec();
        head.push(VERSION);
        out.write_all(&head)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&head);
        Ok(BundleWriter { out, hasher, offset: head.len() as u64, stage: 0 })
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.offset
    }

    fn section(&mut self, kind: u8, parts: &[&[u8]]) -> io::Result<()> {
        let stage = KIND_ORDER.iter().position(|k| *k == kind).unwrap_or(0);
        if stage < self.stage {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} section out of order", what(kind))));
        }
        self.stage = stage;
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len = u32::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "section too large"))?;
        let mut head = vec![kind];
        head.extend_from_slice(&len.to_le_bytes());
        for p in std::iter::once(head.as_slice()).chain(parts.iter().copied()) {
            self.out.write_all(p)?;
            self.hasher.update(p);
            self.offset += p.len() as u64;
        }
        Ok(())
    }

    pub fn key_document(&mut self, envelope: &[u8]) -> io::Result<()> {
        self.section(b'K', &[envelope])
    }

    pub fn channel(&mut self, envelope: &[u8]) -> io::Result<()> {
        self.section(b'H', &[envelope])
    }

    pub fn commit(&mut self, commit: &BundledCommit) -> io::Result<()> {
        self.section(b'C', &[&commit.encode()])
    }

    pub fn from(&mut self, from: &[Id]) -> io::Result<()> {
        let body: Vec<u8> = from.iter().flat_map(|id| *id.as_bytes()).collect();
        self.section(b'F', &[&body])
    }

    pub fn tree(&mut self, id: &Id, bytes: &[u8]) -> io::Result<()> {
        self.section(b'T', &[id.as_bytes(), bytes])
    }

    pub fn manifest(&mut self, chunks: &[(Id, u32)]) -> io::Result<()> {
        let mut body = Vec::with_capacity(chunks.len() * 36);
        for (id, len) in chunks {
            body.extend_from_slice(id.as_bytes());
            body.extend_from_slice(&len.to_le_bytes());
        }
        self.section(b'M', &[&body])
    }

    pub fn chunk(&mut self, id: &Id, frame: &[u8]) -> io::Result<()> {
        self.section(b'D', &[id.as_bytes(), frame])
    }

    /// Writes the end section and returns the output (not flushed or synced).
    pub fn finish(mut self) -> io::Result<W> {
        let digest = self.hasher.finalize();
        let mut body = self.offset.to_le_bytes().to_vec();
        body.extend_from_slice(digest.as_bytes());
        let mut head = vec![b'E'];
        head.extend_from_slice(&(body.len() as u32).to_le_bytes());
        self.out.write_all(&head)?;
        self.out.write_all(&body)?;
        Ok(self.out)
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = BundleWriter::new(Vec::new()).unwrap();
        w.key_document(b"keys").unwrap();
        w.commit(&BundledCommit { id: Id::of(b"c"), signatures: vec![([1; 32], [2; 64])], bytes: b"commit".to_vec() })
            .unwrap();
        w.from(&[Id::of(b"old")]).unwrap();
        w.tree(&Id::of(b"t"), b"tree").unwrap();
        let chunk = zstd::bulk::compress(b"hello", 1).unwrap();
        w.manifest(&[(Id::of(b"hello"), 5)]).unwrap();
        w.chunk(&Id::of(b"hello"), &chunk).unwrap();
        w.finish().unwrap()
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Section>, BundleError> {
        let mut r = BundleReader::new(bytes)?;
        let mut out = Vec::new();
        while let Some(s) = r.next_section()? {
            out.push(s);
        }
        Ok(out)
    }

    #[test]
    fn round_trip() {
        let sections = read_all(&sample()).unwrap();
        assert_eq!(sections.len(), 6);
        assert_eq!(sections[0], Section::Keys(b"keys".to_vec()));
        assert!(matches!(&sections[1], Section::Commit(c) if c.bytes == b"commit" && c.signatures[0].0 == [1; 32]));
        assert_eq!(sections[2], Section::From(vec![Id::of(b"old")]));
        assert!(matches!(&sections[5], Section::Chunk { id, .. } if *id == Id::of(b"hello")));
    }

    #[test]
    fn every_truncation_is_refused() {
        let b = sample();
        for n in 0..b.len() {
            assert!(read_all(&b[..n]).is_err(), "a bundle cut at {n} of {} bytes was accepted", b.len());
        }
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let b = sample();
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x01;
            assert!(read_all(&c).is_err(), "a bundle with byte {i} flipped was accepted");
        }
    }

    #[test]
    fn trailing_bytes_and_order() {
        let mut b = sample();
        b.push(0);
        assert!(matches!(read_all(&b), Err(BundleError::TrailingBytes)));
        let mut w = BundleWriter::new(Vec::new()).unwrap();
        w.commit(&BundledCommit { id: Id::of(b"c"), signatures: vec![], bytes: vec![] }).unwrap();
        assert!(w.key_document(b"late").is_err());
        // A manifest without a from section before it is refused by the reader.
        let mut w = BundleWriter::new(Vec::new()).unwrap();
        w.commit(&BundledCommit { id: Id::of(b"c"), signatures: vec![], bytes: vec![] }).unwrap();
        w.manifest(&[]).unwrap();
        let b = w.finish().unwrap();
        assert!(matches!(read_all(&b), Err(BundleError::OutOfOrder { what: "manifest", .. })));
    }

    #[test]
    fn chunks_must_follow_the_manifest() {
        let mut w = BundleWriter::new(Vec::new()).unwrap();
        w.commit(&BundledCommit { id: Id::of(b"c"), signatures: vec![], bytes: vec![] }).unwrap();
        w.from(&[]).unwrap();
        w.manifest(&[(Id::of(b"a"), 1), (Id::of(b"b"), 1)]).unwrap();
        w.chunk(&Id::of(b"b"), b"x").unwrap();
        let b = w.finish().unwrap();
        assert!(matches!(read_all(&b), Err(BundleError::WrongChunk { .. })));
        let mut w = BundleWriter::new(Vec::new()).unwrap();
        w.commit(&BundledCommit { id: Id::of(b"c"), signatures: vec![], bytes: vec![] }).unwrap();
        w.from(&[]).unwrap();
        w.manifest(&[(Id::of(b"a"), 1)]).unwrap();
        let b = w.finish().unwrap();
        assert!(matches!(read_all(&b), Err(BundleError::MissingChunks { received: 0, listed: 1 })));
    }
}
