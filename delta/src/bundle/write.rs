//! [`BundleWriter`]: writes a bundle's sections in the format's order and its end section
//! (offset and hash of everything before it). Not here: the format's table ([`super`]).
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, Write};

use ferry_store::Id;

use super::{what, BundledCommit, KIND_ORDER, MAGIC, VERSION};

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
