//! The repository's read routes that answer in one piece: branch heads (with an ETag),
//! channel and key documents, the commits of a version, and single objects, chunks and
//! commits with their signatures, each verified before it is sent. Not the answers that
//! stream (`super::stream`).

use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_api::repo::{BranchHead, CommitSignatures, Signature, SignedCommit, VersionCommits};
use ferry_store::{chunk::decode_chunk, Id, StoreError};

use super::{blocking, catch_up, content, lookup, parse_id, ApiError, AppState, Shared, Slots};

/// Cache-Control for content-addressed responses.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

fn signed_document(bytes: Vec<u8>) -> Response {
    let mut resp = bytes.into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    resp
}

/// `GET /v1/channels/{name}`: the channel's newest signed document (an envelope).
pub(super) async fn channel(State(s): State<Shared>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let envelope = blocking(move || {
        catch_up(&s, arrived)?;
        if ferry_store::repo::check_branch_name(&name).is_err() {
            return Ok(None);
        }
        match s.repo.channel(&name)? {
            Some(id) => Ok(Some(s.repo.read_envelope(&id)?.encode())),
            None => Ok(None),
        }
    })
    .await?;
    envelope.map(signed_document).ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "no such channel".into(), None))
}

/// `GET /v1/keys`: every key document, oldest first, as concatenated envelopes (empty when
/// the repository has none).
pub(super) async fn keys(State(s): State<Shared>) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let chain = blocking(move || {
        catch_up(&s, arrived)?;
        Ok(s.repo.key_chain()?.iter().flat_map(|e| e.encode()).collect::<Vec<u8>>())
    })
    .await?;
    Ok(signed_document(chain))
}

/// `GET /v1/versions/{version}`: the commits with that version on any branch (walking each
/// branch's history), so a developer can deploy "1.4.2" by name.
pub(super) async fn version(State(s): State<Shared>, Path(version): Path<String>) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let wanted: ferry_store::Version = version
        .parse()
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("{version:?} is not a version"), None))?;
    // Walking histories is content work: it waits for a read slot like the rest.
    let state = s.clone();
    let found = content(&s, Slots::Read, move |_| {
        let s = &state;
        catch_up(s, arrived)?;
        Ok(s.repo.commits_with_version(&wanted)?.into_iter().map(|id| id.to_hex()).collect::<Vec<_>>())
    })
    .await?;
    if found.is_empty() {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no commit has version {version}"), None));
    }
    Ok(Json(VersionCommits { commits: found.into_iter().collect(), version }).into_response())
}

pub(super) async fn branch(
    State(s): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let state = s.clone();
    let arrived = Instant::now();
    let head = blocking(move || {
        catch_up(&state, arrived)?;
        Ok(state.repo.branch(&name)?.map(|id| (name, id)))
    })
    .await?;
    let Some((name, id)) = head else {
        return Err(ApiError(StatusCode::NOT_FOUND, "no such branch".into(), None));
    };
    let etag = format!("\"{}\"", id.to_hex());
    let mut resp = if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Json(BranchHead { branch: name, commit: id.to_hex() }).into_response()
    };
    let h = resp.headers_mut();
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))?,
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

fn immutable(bytes: Vec<u8>) -> Response {
    let mut resp = bytes.into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    resp
}

pub(super) async fn object(State(s): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let bytes = lookup(&s, move |st| Ok(st.repo.read_object_bytes(&id)?)).await?;
    Ok(immutable(bytes))
}

/// A chunk's stored frame, verified against its id.
pub(super) fn verified_chunk(s: &AppState, id: &Id) -> Result<Vec<u8>, StoreError> {
    let info = s.repo.chunk_info(id)?.ok_or(StoreError::ChunkMissing { id: *id })?;
    let stored = s.repo.read_chunk_stored(id)?;
    decode_chunk(id, &stored, info.len)?;
    Ok(stored)
}

pub(super) async fn chunk(State(s): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let stored = lookup(&s, move |st| Ok(verified_chunk(st, &id)?)).await?;
    Ok(immutable(stored))
}

/// A commit's signatures as the API spells them.
fn signature_list(sigs: &[ferry_store::StoredSignature]) -> Vec<Signature> {
    sigs.iter().map(|s| Signature { key: hex::encode(s.key), signature: hex::encode(s.signature) }).collect()
}

pub(super) async fn signatures(State(s): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let sigs = lookup(&s, move |st| {
        st.repo.read_commit(&id)?;
        Ok(st.repo.signatures(&id)?)
    })
    .await?;
    Ok(Json(CommitSignatures { commit: id.to_hex(), signatures: signature_list(&sigs) }).into_response())
}

/// A commit and its signatures in one answer: what a device needs before anything else.
pub(super) async fn commit_with_signatures(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let (bytes, sigs) = lookup(&s, move |st| {
        st.repo.read_commit(&id)?;
        Ok((st.repo.read_object_bytes(&id)?, st.repo.signatures(&id)?))
    })
    .await?;
    let answer = SignedCommit { bytes: hex::encode(bytes), commit: id.to_hex(), signatures: signature_list(&sigs) };
    Ok(Json(answer).into_response())
}
