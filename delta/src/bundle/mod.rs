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
//! [`ferry_store::wire::Reader`], never indexed directly. The format and its parts are here;
//! `read.rs` holds [`BundleReader`], `write.rs` [`BundleWriter`].
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::io;

use ferry_store::wire::Reader;
use ferry_store::Id;

mod read;
mod write;

pub use read::{BundleReader, SKIPPED};
pub use write::BundleWriter;

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
    pub(crate) fn encode(&self) -> Vec<u8> {
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

    pub(crate) fn decode(body: &[u8]) -> Result<BundledCommit, String> {
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
