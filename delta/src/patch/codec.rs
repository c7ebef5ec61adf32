//! zstd with a reference as prefix (zstd's `--patch-from`): what a patch and a compressed
//! trees answer are made with, whole ([`compress_patch`], [`decompress_patch`]) or streamed
//! with an output cap ([`PrefixDecoder`]). Not here: what the reference is
//! ([`super::reference`]) or how an answer is framed ([`super::format`]).
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use super::WINDOW_LOG_MAX;

fn window_log(len: u64) -> u32 {
    let bits = 64 - len.max(1).saturating_sub(1).leading_zeros();
    bits.clamp(10, WINDOW_LOG_MAX)
}

fn zstd_error(code: usize) -> std::io::Error {
    std::io::Error::other(zstd::zstd_safe::get_error_name(code))
}

/// Compresses `target` with `reference` as zstd's prefix at `level`.
pub fn compress_patch(reference: &[u8], target: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    use zstd::zstd_safe::{CCtx, CParameter};
    let mut cctx = CCtx::try_create().ok_or_else(|| std::io::Error::other("zstd context"))?;
    cctx.set_parameter(CParameter::CompressionLevel(level)).map_err(zstd_error)?;
    cctx.set_parameter(CParameter::WindowLog(window_log((reference.len() + target.len()) as u64)))
        .map_err(zstd_error)?;
    cctx.set_parameter(CParameter::ContentSizeFlag(true)).map_err(zstd_error)?;
    cctx.ref_prefix(reference).map_err(zstd_error)?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(target.len()));
    cctx.compress2(&mut out, target).map_err(zstd_error)?;
    Ok(out)
}

/// Decompresses a patch made by [`compress_patch`] to exactly `len` bytes.
pub fn decompress_patch(reference: &[u8], patch: &[u8], len: usize) -> std::io::Result<Vec<u8>> {
    use zstd::zstd_safe::{DCtx, DParameter};
    let mut dctx = DCtx::try_create().ok_or_else(|| std::io::Error::other("zstd context"))?;
    dctx.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX)).map_err(zstd_error)?;
    dctx.ref_prefix(reference).map_err(zstd_error)?;
    // One byte of room more than expected, so a longer output is detected, not truncated.
    let mut out = Vec::with_capacity(len + 1);
    let n = dctx.decompress(&mut out, patch).map_err(zstd_error)?;
    if n != len {
        return Err(std::io::Error::other(format!("patch decompressed to {n} bytes, not {len}")));
    }
    Ok(out)
}

/// Decompresses one zstd frame made with [`compress_patch`] as its bytes arrive, so that
/// neither the compressed nor the decompressed whole is ever held: a frame that declares
/// or expands to far more than it should (8 KB of zeros can claim 256 MiB) costs its
/// output buffer and no more, and stops at `max` bytes of output.
pub struct PrefixDecoder<'a> {
    dctx: zstd::zstd_safe::DCtx<'a>,
    out: Vec<u8>,
    produced: u64,
    max: u64,
    finished: bool,
}

impl std::fmt::Debug for PrefixDecoder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixDecoder").field("produced", &self.produced).field("finished", &self.finished).finish()
    }
}

impl<'a> PrefixDecoder<'a> {
    /// Output is handed out at most this many bytes at a time.
    const PIECE: usize = 128 << 10;

    pub fn new(reference: &'a [u8], max: u64) -> std::io::Result<PrefixDecoder<'a>> {
        use zstd::zstd_safe::{DCtx, DParameter};
        let mut dctx = DCtx::try_create().ok_or_else(|| std::io::Error::other("zstd context"))?;
        dctx.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX)).map_err(zstd_error)?;
        dctx.ref_prefix(reference).map_err(zstd_error)?;
        Ok(PrefixDecoder { dctx, out: vec![0; Self::PIECE], produced: 0, max, finished: false })
    }

    /// Decompresses `input`, handing each piece of output to `sink` as it comes.
    pub fn feed(&mut self, input: &[u8], mut sink: impl FnMut(&[u8]) -> std::io::Result<()>) -> std::io::Result<()> {
        use zstd::zstd_safe::{InBuffer, OutBuffer};
        let mut inb = InBuffer::around(input);
        loop {
            if self.finished {
                if inb.pos() < input.len() {
                    return Err(std::io::Error::other("bytes after the end of the compressed frame"));
                }
                return Ok(());
            }
            let mut outb = OutBuffer::around(self.out.as_mut_slice());
            let hint = self.dctx.decompress_stream(&mut outb, &mut inb).map_err(zstd_error)?;
            let n = outb.pos();
            self.produced += n as u64;
            if self.produced > self.max {
                return Err(std::io::Error::other(format!("decompresses to more than {} bytes", self.max)));
            }
            sink(self.out.get(..n).unwrap_or_default())?;
            if hint == 0 {
                self.finished = true;
                continue;
            }
            // Input used up and the output not full: zstd holds nothing more back.
            if inb.pos() == input.len() && n < self.out.len() {
                return Ok(());
            }
        }
    }

    /// Call at the end of the input: fails if the frame did not end.
    pub fn finish(&self) -> std::io::Result<()> {
        if !self.finished {
            return Err(std::io::Error::other("the compressed frame is cut short"));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::super::testing::noise;
    use super::*;

    #[test]
    fn a_patch_against_the_old_file_is_small_and_roundtrips() {
        let old = noise(1 << 20, 7);
        let mut new = old.clone();
        // Insertions shift everything after them; a few bytes change in place.
        new.splice(1000..1000, b"inserted bytes".iter().copied());
        new[500_000] ^= 0xff;
        let patch = compress_patch(&old, &new, 19).unwrap();
        assert!(patch.len() < 2000, "patch of a 1 MiB file with two edits is {} bytes", patch.len());
        assert_eq!(decompress_patch(&old, &patch, new.len()).unwrap(), new);
        // The wrong reference or the wrong length is an error, never wrong bytes.
        let other = noise(1 << 20, 8);
        assert!(decompress_patch(&other, &patch, new.len()).map_or(true, |b| b != new));
        assert!(decompress_patch(&old, &patch, new.len() - 1).is_err());
        assert!(decompress_patch(&old, &patch[..patch.len() / 2], new.len()).is_err());
    }
}
