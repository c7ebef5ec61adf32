//! The server's answer to a patch request item, read from the repository (the
//! `repository` feature): every chunk verified, every limit checked before anything is read.

use ferry_store::{Id, Repository};

use super::format::{encode_patch_response, encode_plain_response};
use super::{PatchRequest, REFERENCE_MAX, TARGET_MAX};

/// Why the server cannot answer a patch request item.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("patch {key} names chunk {id}, which the repository lacks")]
    Missing { key: Id, id: Id },
    #[error("patch {key}'s {what} is {len} bytes; the limit is {max}")]
    TooLarge { key: Id, what: &'static str, len: u64, max: u64 },
    #[error(transparent)]
    Store(#[from] ferry_store::StoreError),
    #[error("compressing patch {key}: {source}")]
    Compress { key: Id, source: std::io::Error },
}

/// The server's answer to one patch request item, from the repository: every chunk read is
/// verified against its id; limits are checked before anything is read.
pub fn answer(repo: &Repository, item: &PatchRequest, level: i32) -> Result<Vec<u8>, AnswerError> {
    let key = item.key();
    let lens = |ids: &[Id], what: &'static str, max: u64| -> Result<u64, AnswerError> {
        let mut total = 0u64;
        for id in ids {
            let info = repo.chunk_info(id)?.ok_or(AnswerError::Missing { key, id: *id })?;
            total += u64::from(info.len);
        }
        if total > max {
            return Err(AnswerError::TooLarge { key, what, len: total, max });
        }
        Ok(total)
    };
    let ref_len = lens(&item.reference, "reference", REFERENCE_MAX)?;
    let target_len = lens(&item.target, "target", TARGET_MAX)?;
    let mut reference = Vec::with_capacity(ref_len as usize);
    for id in &item.reference {
        reference.extend_from_slice(&repo.read_chunk(id)?);
    }
    let mut target = Vec::with_capacity(target_len as usize);
    let mut stored = Vec::with_capacity(item.target.len());
    for id in &item.target {
        let frame = repo.read_chunk_stored(id)?;
        let info = repo.chunk_info(id)?.ok_or(AnswerError::Missing { key, id: *id })?;
        target.extend_from_slice(&ferry_store::chunk::decode_chunk(id, &frame, info.len)?);
        stored.push(frame);
    }
    encode_patch_response(&reference, &target, &stored, level).map_err(|source| AnswerError::Compress { key, source })
}

/// The plain answer to one item (its target's stored frames, each verified), computed
/// without compressing anything: what a server sends when it will not spend more CPU on a
/// request.
pub fn answer_plain(repo: &Repository, item: &PatchRequest) -> Result<Vec<u8>, AnswerError> {
    let key = item.key();
    let mut stored = Vec::with_capacity(item.target.len());
    for id in &item.target {
        let info = repo.chunk_info(id)?.ok_or(AnswerError::Missing { key, id: *id })?;
        let frame = repo.read_chunk_stored(id)?;
        ferry_store::chunk::decode_chunk(id, &frame, info.len)?;
        stored.push(frame);
    }
    Ok(encode_plain_response(&stored))
}
