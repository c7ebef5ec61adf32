//! FastCDC v2020 chunking with a repository's parameters.
//!
//! The cut points depend only on the bytes and on the (min, avg, max) parameters, with
//! FastCDC's normalisation level 1 and its default gear table (seed 0). A golden test in this
//! crate pins the cut points of a fixed input, so a dependency upgrade that moved them would
//! fail the build instead of silently breaking deduplication against every stored commit.

use std::io::{self, Read};

use fastcdc::v2020::{Normalization, StreamCDC};
use ferry_store::ChunkParams;

/// Cuts byte streams into chunks with fixed parameters.
#[derive(Debug, Clone, Copy)]
pub struct Chunker {
    params: ChunkParams,
}

impl Chunker {
    /// A chunker for validated parameters; invalid ones are refused with the reason.
    pub fn new(params: ChunkParams) -> Result<Chunker, String> {
        params.validate()?;
        Ok(Chunker { params })
    }

    pub fn params(&self) -> ChunkParams {
        self.params
    }

    /// The chunks of a stream, in order, each as owned bytes. Memory use is bounded by the
    /// maximum chunk size, whatever the stream's length.
    pub fn chunks<R: Read>(&self, reader: R) -> impl Iterator<Item = io::Result<Vec<u8>>> {
        let p = self.params;
        StreamCDC::with_level(
            reader,
            p.min_size as usize,
            p.avg_size as usize,
            p.max_size as usize,
            Normalization::Level1,
        )
        .map(|r| r.map(|c| c.data).map_err(io::Error::from))
    }

    /// Cut points of an in-memory buffer as `(offset, length)` pairs.
    pub fn cut_points(&self, bytes: &[u8]) -> Vec<(u64, usize)> {
        let p = self.params;
        fastcdc::v2020::FastCDC::with_level(
            bytes,
            p.min_size as usize,
            p.avg_size as usize,
            p.max_size as usize,
            Normalization::Level1,
        )
        .map(|c| (c.offset as u64, c.length))
        .collect()
    }
}
