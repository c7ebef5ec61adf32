//! The server's answer to a patch request item, read from the repository (the
//! `repository` feature): every chunk verified, every limit checked before anything is read.

use ferry_store::{Id, Repository};

use super::format::{decode_patch_response, encode_patch_response, encode_plain_response, PatchPayload};
use super::{Patch, PatchRequest, REFERENCE_MAX, TARGET_MAX};

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
    #[error("answer to patch {key} does not rebuild its target: {reason}")]
    Wrong { key: Id, reason: String },
}

/// Checks an answer to `item` that came from elsewhere (a patch store other servers write):
/// it must decode against the reference, as a device would decode it, to exactly the target
/// chunks. Cheaper than computing it: one decompression, no compression.
pub fn check_answer(repo: &Repository, item: &PatchRequest, bytes: &[u8]) -> Result<(), AnswerError> {
    let key = item.key();
    let refs = |ids: &[Id], max: u64, what: &'static str| -> Result<Vec<ferry_store::ChunkRef>, AnswerError> {
        let mut out = Vec::with_capacity(ids.len());
        let mut total = 0u64;
        for id in ids {
            let info = repo.chunk_info(id)?.ok_or(AnswerError::Missing { key, id: *id })?;
            total += u64::from(info.len);
            out.push(ferry_store::ChunkRef { id: *id, len: info.len });
        }
        if total > max {
            return Err(AnswerError::TooLarge { key, what, len: total, max });
        }
        Ok(out)
    };
    let patch = Patch {
        reference: refs(&item.reference, REFERENCE_MAX, "reference")?,
        target: refs(&item.target, TARGET_MAX, "target")?,
    };
    let mut reference = Vec::with_capacity(patch.reference_len() as usize);
    for id in &item.reference {
        reference.extend_from_slice(&repo.read_chunk(id)?);
    }
    let wrong = |reason: String| AnswerError::Wrong { key, reason };
    match decode_patch_response(&patch, Some(&reference), bytes).map_err(|e| wrong(e.to_string()))? {
        PatchPayload::Patched(out) => {
            let mut at = 0usize;
            for c in &patch.target {
                let end = at + c.len as usize;
                let slice = out.get(at..end).ok_or_else(|| wrong("too short".into()))?;
                if Id::of(slice) != c.id {
                    return Err(wrong(format!("chunk {} differs", c.id)));
                }
                at = end;
            }
            if at != out.len() {
                return Err(wrong("too long".into()));
            }
        }
        PatchPayload::Plain(frames) => {
            for (c, frame) in patch.target.iter().zip(frames) {
                ferry_store::chunk::decode_chunk(&c.id, frame, c.len).map_err(|e| wrong(e.to_string()))?;
            }
        }
    }
    Ok(())
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
