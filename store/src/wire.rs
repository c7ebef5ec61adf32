//! Byte-level reader and writer for Ferry's binary formats: little-endian fixed-width
//! integers, fixed-size arrays and ids, length-prefixed byte strings.
//!
//! What it is for: [`Reader`] is the one strict reader every decoder of untrusted bytes is
//! built on (store's canonical objects and signed documents, delta's frames, patch requests
//! and answers, bundles). It never panics on any input; every read is checked and every
//! failure names the field being read ([`WireError`]). What it is not for: the formats
//! themselves (each has its owner module, which maps a [`WireError`] to its own error) or
//! I/O. It depends on nothing of this crate but [`Id`].
#![deny(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

use crate::id::{Id, ID_LEN};

/// Why a read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated while reading {field}")]
    Truncated { field: &'static str },
    #[error("{field} is {len} long, more than the limit of {max}")]
    TooLong { field: &'static str, len: usize, max: usize },
    #[error("{extra} trailing bytes after the object")]
    TrailingBytes { extra: usize },
}

/// Appends canonical fields to a buffer.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn id(&mut self, id: &Id) {
        self.buf.extend_from_slice(id.as_bytes());
    }
    pub fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    /// Bytes with a u16 length prefix. Callers have validated the length.
    pub fn bytes16(&mut self, b: &[u8]) {
        self.u16(b.len() as u16);
        self.raw(b);
    }
    /// Bytes with a u32 length prefix. Callers have validated the length.
    pub fn bytes32(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.raw(b);
    }
}

/// Reads fields from a byte slice, strictly: a read past the end is an error, never a panic
/// or a short value, and [`Reader::finish`] refuses bytes left over.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated { field })?;
        let out = self.buf.get(self.pos..end).ok_or(WireError::Truncated { field })?;
        self.pos = end;
        Ok(out)
    }

    /// Up to `n` bytes: as many as are left if fewer (for a decoder fed a stream in pieces).
    pub fn take_at_most(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.remaining());
        let end = self.pos.saturating_add(n);
        let out = self.buf.get(self.pos..end).unwrap_or_default();
        self.pos = end;
        out
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let s = self.take(N, field)?;
        <[u8; N]>::try_from(s).map_err(|_| WireError::Truncated { field })
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }
    pub fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    pub fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    pub fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    pub fn i64(&mut self, field: &'static str) -> Result<i64, WireError> {
        Ok(i64::from_le_bytes(self.array(field)?))
    }
    pub fn id(&mut self, field: &'static str) -> Result<Id, WireError> {
        Ok(Id(self.array::<ID_LEN>(field)?))
    }

    /// A u16-length-prefixed byte string of at most `max` bytes.
    pub fn bytes16(&mut self, max: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        let len = self.u16(field)? as usize;
        if len > max {
            return Err(WireError::TooLong { field, len, max });
        }
        self.take(len, field)
    }

    /// A u32-length-prefixed byte string of at most `max` bytes.
    pub fn bytes32(&mut self, max: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        let len = self.u32(field)? as usize;
        if len > max {
            return Err(WireError::TooLong { field, len, max });
        }
        self.take(len, field)
    }

    /// How many bytes are left to read.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// How many bytes have been read.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The bytes not read yet.
    pub fn rest(self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    /// Ends the read: fails if any byte is left.
    pub fn finish(self) -> Result<(), WireError> {
        let extra = self.buf.len().saturating_sub(self.pos);
        if extra != 0 {
            return Err(WireError::TrailingBytes { extra });
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_strict_and_name_their_field() {
        let id = Id::of(b"x");
        let mut w = Writer::default();
        w.id(&id);
        w.u32(7);
        w.u64(9);
        w.bytes16(b"ab");
        let mut r = Reader::new(&w.buf);
        assert_eq!(r.id("id"), Ok(id));
        assert_eq!(r.u32("a"), Ok(7));
        assert_eq!(r.position(), 36);
        assert_eq!(r.u64("b"), Ok(9));
        assert_eq!(r.bytes16(1, "s"), Err(WireError::TooLong { field: "s", len: 2, max: 1 }));
        let mut r = Reader::new(&w.buf);
        assert_eq!(r.array::<36>("head").map(|a| a.len()), Ok(36));
        assert_eq!(r.remaining(), 12);
        assert_eq!(r.take(13, "tail"), Err(WireError::Truncated { field: "tail" }));
        assert_eq!(r.clone().finish(), Err(WireError::TrailingBytes { extra: 12 }));
        assert_eq!(r.take_at_most(100).len(), 12);
        assert!(r.is_empty());
        assert_eq!(r.take_at_most(1), b"");
        assert_eq!(r.u8("end"), Err(WireError::Truncated { field: "end" }));
        assert_eq!(r.finish(), Ok(()));
    }
}
