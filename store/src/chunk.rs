//! Chunk frames as stored and sent: a zstd frame of the chunk's bytes, decoded with its output
//! capped and its hash checked. Used by the repository and, later, by the device when chunks
//! arrive over the network.

use crate::error::{Result, StoreError};
use crate::id::Id;

/// Decompresses a stored chunk frame and checks it against its id and length. The output is
/// capped at `len` bytes, so a corrupt frame cannot decompress into an endless stream.
pub fn decode_chunk(id: &Id, stored: &[u8], len: u32) -> Result<Vec<u8>> {
    if len == 0 || len > crate::object::MAX_CHUNK_LEN {
        return Err(StoreError::ChunkUnreadable {
            id: *id,
            message: format!("declared length {len} is outside 1..={}", crate::object::MAX_CHUNK_LEN),
        });
    }
    // One decompression context per thread, reused: creating one per chunk cost more than
    // decompressing a 64 KiB chunk (a fresh install decodes every chunk twice).
    thread_local! {
        static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let bytes = DECOMPRESSOR
        .with(|cell| {
            let mut slot = cell.borrow_mut();
            let d = match slot.as_mut() {
                Some(d) => d,
                None => slot.insert(zstd::bulk::Decompressor::new()?),
            };
            d.decompress(stored, len as usize)
        })
        .map_err(|e| StoreError::ChunkUnreadable { id: *id, message: format!("zstd: {e}") })?;
    if bytes.len() != len as usize {
        return Err(StoreError::ChunkUnreadable {
            id: *id,
            message: format!("decompressed to {} bytes, index says {len}", bytes.len()),
        });
    }
    let actual = Id::of(&bytes);
    if actual != *id {
        return Err(StoreError::ChunkCorrupt { id: *id, actual });
    }
    Ok(bytes)
}
