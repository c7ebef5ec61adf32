//! The content answers that stream: pack frames of chunks and objects (`POST /v1/chunks`,
//! `/v1/objects`), patch answers (`POST /v1/patches`) and tree closures (`POST /v1/trees`).
//! Each is produced a bounded step at a time on the blocking pool, in a slot
//! ([`super::in_slot`]), only as fast as the client reads ([`stepped_body`], [`patch_body`],
//! both ending in [`streamed`]); every item is checked before the first byte is sent, and
//! an error met later cuts the answer rather than send bytes that do not match their id.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_delta::pack;
use ferry_delta::patch::{self as patch, PatchRequest};
use ferry_store::{Id, StoreError};
use futures_util::stream::{FuturesOrdered, Stream, StreamExt};
use tokio::task::JoinHandle;

use super::routes::verified_chunk;
use super::{content, in_slot, lookup, ApiError, AppState, Shared, Slots, LOG_TARGET, PATCH_STREAMS_PER_WORKER};
use crate::fleet_api::Reader;
use crate::patches::Allowance;

/// Bytes a streamed answer reads per step (a few frames, or one bigger frame): enough to be
/// worth a trip to the blocking pool (a chunk averages 64 KiB), little enough that a stalled
/// answer, which holds at most two steps beside hyper's buffer, costs little memory.
const STEP_BYTES: usize = 64 * 1024;

/// What one step of a streamed answer gives: its bytes, or `None` at the end; an error
/// (a damaged object) cuts the answer.
type StepResult = Result<Option<Vec<u8>>, String>;

/// One step of a streamed answer, run on the blocking pool.
type Step<S> = fn(&AppState, &mut S) -> StepResult;

/// A streamed answer made one step at a time on the blocking pool (in a read slot), one step
/// ahead of what the connection has taken. Nothing waits for the client: a client that stops
/// reading holds no thread, only its connection, this state and at most two steps' bytes,
/// until the write stall timeout drops it (`crate::connections`). An error cuts the answer:
/// the client sees a truncated stream and asks again for what it still lacks; it never
/// receives bytes that do not match their id.
fn stepped_body<S: Send + 'static>(s: Shared, state: S, step: Step<S>) -> Body {
    fn spawn_step<S: Send + 'static>(
        s: Shared,
        mut state: S,
        step: Step<S>,
    ) -> JoinHandle<Result<(S, StepResult), String>> {
        tokio::spawn(async move {
            let reads = s.reads.clone();
            in_slot(&reads, move || {
                let r = step(&s, &mut state);
                (state, r)
            })
            .await
            .map_err(|e| e.to_string())
        })
    }
    let first = spawn_step(s.clone(), state, step);
    let pieces = futures_util::stream::unfold(Some(first), move |next| {
        let s = s.clone();
        async move {
            let done = next?.await.map_err(|e| e.to_string()).and_then(|r| r);
            match done {
                Ok((state, Ok(Some(bytes)))) => Some((Ok(bytes), Some(spawn_step(s, state, step)))),
                Ok((_, Ok(None))) => None,
                Ok((_, Err(e))) | Err(e) => Some((Err(e), None)),
            }
        }
    });
    streamed(pieces, "aborting a streamed answer")
}

/// The body of a streamed answer whose pieces `pieces` computes; an error, logged as
/// `aborting`, cuts it (`pieces` ends after its first error).
fn streamed(pieces: impl Stream<Item = Result<Vec<u8>, String>> + Send + 'static, aborting: &'static str) -> Body {
    Body::from_stream(pieces.map(move |piece| {
        piece.map(Bytes::from).map_err(|e| {
            tracing::error!(target: LOG_TARGET, error = %e, "{aborting}");
            std::io::Error::other(e)
        })
    }))
}

#[derive(Clone, Copy)]
enum Kind {
    Chunks,
    Objects,
}

/// The frames of a pack answer still to send.
struct Frames {
    ids: Arc<Vec<Id>>,
    next: usize,
    kind: Kind,
    /// An error met after some frames of a step: the next step reports it.
    failed: Option<String>,
}

impl Frames {
    /// Reads and verifies the next frames, about [`STEP_BYTES`] of them.
    fn step(s: &AppState, f: &mut Frames) -> StepResult {
        if let Some(e) = f.failed.take() {
            return Err(e);
        }
        let mut out = Vec::new();
        while out.len() < STEP_BYTES {
            let Some(&id) = f.ids.get(f.next) else { break };
            f.next += 1;
            let bytes = match f.kind {
                Kind::Chunks => verified_chunk(s, &id),
                Kind::Objects => s.repo.read_object_bytes(&id),
            };
            match bytes {
                Ok(b) => pack::write_frame(&mut out, &id, &b),
                Err(e) if out.is_empty() => return Err(e.to_string()),
                Err(e) => {
                    f.failed = Some(e.to_string());
                    break;
                }
            }
        }
        Ok((!out.is_empty()).then_some(out))
    }
}

async fn batch(s: Shared, body: Bytes, kind: Kind) -> Result<Response, ApiError> {
    let ids =
        Arc::new(pack::decode_request(&body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string(), None))?);
    let check = ids.clone();
    lookup(&s, move |st| {
        let mut missing = Vec::new();
        for id in check.iter() {
            let present = match kind {
                Kind::Chunks => st.repo.has_chunk(id)?,
                Kind::Objects => st.repo.has_object(id)?,
            };
            if !present {
                missing.push(id.to_hex());
            }
        }
        let Some(first) = missing.first() else { return Ok(()) };
        let what = match kind {
            Kind::Chunks => "chunks",
            Kind::Objects => "objects",
        };
        let msg = format!("{} requested {what} are not in the repository, e.g. {first}", missing.len());
        Err(ApiError(StatusCode::NOT_FOUND, msg, Some(missing)))
    })
    .await?;
    tracing::debug!(target: LOG_TARGET, count = ids.len(), "pack request");
    let mut resp = stepped_body(s, Frames { ids, next: 0, kind, failed: None }, Frames::step).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ferry-pack"));
    Ok(resp)
}

pub(super) async fn chunks_batch(State(s): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    batch(s, body, Kind::Chunks).await
}

pub(super) async fn objects_batch(State(s): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    batch(s, body, Kind::Objects).await
}

/// The allowance of fresh patch work for one request from `reader` (under `--fleet`; else
/// only the per-request bound applies).
fn admit(s: &AppState, reader: Option<&Extension<Reader>>) -> Result<Allowance, crate::patches::Busy> {
    s.patcher.admit(reader.map(|Extension(Reader(who))| who.as_str()))
}

/// The answer to a reader with too many patch requests running: 429 and when to retry.
fn busy(b: crate::patches::Busy) -> Response {
    let mut resp = ApiError(
        StatusCode::TOO_MANY_REQUESTS,
        "this client has as many patch requests running as it may; try again".into(),
        None,
    )
    .into_response();
    resp.headers_mut().insert(header::RETRY_AFTER, b.retry_after.into());
    resp
}

/// `POST /v1/patches`: every item is checked (chunks present, windows within bounds) before
/// the first frame is sent; answers then stream in request order, computed ahead in parallel
/// and cached.
pub(super) async fn patches_batch(
    State(s): State<Shared>,
    reader: Option<Extension<Reader>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let items = Arc::new(
        patch::decode_patch_request(&body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string(), None))?,
    );
    let allowance = match admit(&s, reader.as_ref()) {
        Ok(a) => Arc::new(a),
        Err(b) => return Ok(busy(b)),
    };
    let stream_slot = s.patch_streams.clone().try_acquire_owned().map_err(|_| {
        let n = PATCH_STREAMS_PER_WORKER * s.patcher.workers();
        let msg =
            format!("the server is streaming as many patch answers as it holds ({n}): ask for these chunks plain");
        ApiError(StatusCode::SERVICE_UNAVAILABLE, msg, None)
    })?;
    let check = items.clone();
    lookup(&s, move |st| {
        let mut missing = Vec::new();
        let mut targets = 0u64;
        for item in check.iter() {
            for (ids, what, max) in
                [(&item.reference, "reference", patch::REFERENCE_MAX), (&item.target, "target", patch::TARGET_MAX)]
            {
                let mut total = 0u64;
                for id in ids {
                    match st.repo.chunk_info(id)? {
                        Some(info) => total += u64::from(info.len),
                        None => missing.push(id.to_hex()),
                    }
                }
                if total > max {
                    return Err(ApiError(
                        StatusCode::BAD_REQUEST,
                        format!("patch {}'s {what} is {total} bytes; the limit is {max}", item.key()),
                        None,
                    ));
                }
                if what == "target" {
                    targets += total;
                }
            }
            if targets > patch::MAX_REQUEST_TARGET_BYTES {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the patches' targets add up to more than {} bytes, the limit per request",
                        patch::MAX_REQUEST_TARGET_BYTES
                    ),
                    None,
                ));
            }
        }
        let Some(first) = missing.first() else { return Ok(()) };
        let msg = format!("{} chunks named by the patches are not in the repository, e.g. {first}", missing.len());
        Err(ApiError(StatusCode::NOT_FOUND, msg, Some(missing)))
    })
    .await?;
    tracing::debug!(target: LOG_TARGET, count = items.len(), "patch request");
    let mut resp = patch_body(s, items, allowance, stream_slot).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ferry-pack"));
    Ok(resp)
}

/// How many patch answers one response computes ahead of the one being sent.
const PATCH_AHEAD: usize = 2;

/// The patch answers, in request order. Each is computed (or read from the cache) in a
/// compute slot; at most the patch worker count of them are computed ahead of the one the
/// connection takes, and only as the connection takes answers, so a client that stops
/// reading holds no thread and at most that many answers. `slot` (of `patch_streams`) is
/// held until the answer ends or the connection goes.
fn patch_body(
    s: Shared,
    items: Arc<Vec<PatchRequest>>,
    allowance: Arc<Allowance>,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Body {
    struct Answers {
        items: Arc<Vec<PatchRequest>>,
        next: usize,
        running: FuturesOrdered<JoinHandle<Result<Vec<u8>, String>>>,
        _slot: tokio::sync::OwnedSemaphorePermit,
    }
    // Computed ahead of the one being sent, at most PATCH_AHEAD: each holds an answer of up
    // to 4 MiB while the client reads, so a stalled stream holds a bounded few whatever the
    // worker count (workers still run in parallel across requests).
    let ahead = s.patcher.workers().min(PATCH_AHEAD);
    let start = Answers { items, next: 0, running: FuturesOrdered::new(), _slot: slot };
    let pieces = futures_util::stream::unfold(Some(start), move |answers| {
        let s = s.clone();
        let allowance = allowance.clone();
        async move {
            let mut a = answers?;
            while a.running.len() < ahead && a.next < a.items.len() {
                let (s, items, i, allowance) = (s.clone(), a.items.clone(), a.next, allowance.clone());
                a.running.push_back(tokio::spawn(async move {
                    let compute = s.compute.clone();
                    in_slot(&compute, move || -> Result<Vec<u8>, String> {
                        let item = &items[i];
                        let bytes = s
                            .patcher
                            .answer_within(&s.repo, item, &allowance)
                            .map_err(|e| format!("patch {}: {e}", item.key()))?;
                        let mut frame = Vec::with_capacity(bytes.len() + pack::FRAME_HEADER);
                        pack::write_frame(&mut frame, &item.key(), &bytes);
                        Ok(frame)
                    })
                    .await
                    .map_err(|e| e.to_string())?
                }));
                a.next += 1;
            }
            match a.running.next().await?.map_err(|e| e.to_string()).and_then(|r| r) {
                Ok(frame) => Some((Ok(frame), Some(a))),
                Err(e) => Some((Err(e), None)),
            }
        }
    });
    streamed(pieces, "aborting a patch answer")
}

/// The trees under a new root that are not under an old one, breadth first (parents before
/// children), as pack frames.
struct TreeWalk {
    old_root: Option<Id>,
    /// The old root's trees, read by the first step.
    have: Option<HashSet<Id>>,
    queue: VecDeque<Id>,
    sent: HashSet<Id>,
    /// An error met after some frames of a step: the next step reports it.
    failed: Option<String>,
}

impl TreeWalk {
    fn new(new_root: Id, old_root: Option<Id>) -> TreeWalk {
        TreeWalk { old_root, have: None, queue: VecDeque::from([new_root]), sent: HashSet::new(), failed: None }
    }

    /// The next frames, about [`STEP_BYTES`] of them (the first step also reads the old
    /// root's trees).
    fn step(s: &AppState, w: &mut TreeWalk) -> StepResult {
        if let Some(e) = w.failed.take() {
            return Err(e);
        }
        if w.have.is_none() {
            let mut have = HashSet::new();
            if let Some(old) = w.old_root {
                // Only the tree set is wanted; chunk ids come along cheaply.
                let mut chunks = HashSet::new();
                ferry_delta::plan::collect_chunks(&s.repo, &old, &mut have, &mut chunks).map_err(|e| e.to_string())?;
            }
            w.have = Some(have);
        }
        let TreeWalk { have: Some(have), queue, sent, failed, .. } = w else { return Ok(None) };
        let mut out = Vec::new();
        while out.len() < STEP_BYTES {
            let Some(id) = queue.pop_front() else { break };
            if have.contains(&id) || !sent.insert(id) {
                continue;
            }
            let read = s.repo.read_object_bytes(&id).and_then(|bytes| {
                let tree = ferry_store::Tree::decode(&bytes).map_err(|source| StoreError::Decode { id, source })?;
                Ok((bytes, tree))
            });
            let (bytes, tree) = match read {
                Ok(r) => r,
                Err(e) if out.is_empty() => return Err(e.to_string()),
                Err(e) => {
                    *failed = Some(e.to_string());
                    queue.clear();
                    break;
                }
            };
            queue.extend(tree.subtrees());
            pack::write_frame(&mut out, &id, &bytes);
        }
        Ok((!out.is_empty()).then_some(out))
    }
}

/// `POST /v1/trees`: body a [`pack::TreesRequest`] (new root, old root, encoding). Frames
/// stream, as pack frames parents before children, every tree under the new root that is not
/// under the old one; compressed sends the same frames as one zstd frame compressed with the
/// old root's trees as prefix (`ferry_delta::patch::tree_prefix`): a device's old trees hold
/// most of its new ones.
/// The trees under `new_root` that are not under `old_root`, as frames compressed at `level`
/// against the old trees (the answer to a compressed `POST /v1/trees`).
pub(super) fn compress_trees(st: &AppState, new_root: Id, old_root: Id, level: i32) -> Result<Vec<u8>, ApiError> {
    let failed = |e: String| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e, None);
    let mut walk = TreeWalk::new(new_root, Some(old_root));
    let mut all = Vec::new();
    while let Some(frames) = TreeWalk::step(st, &mut walk).map_err(failed)? {
        all.extend_from_slice(&frames);
    }
    let prefix = patch::tree_prefix(&old_root, |id| st.repo.read_object_bytes(id))?;
    patch::compress_patch(&prefix, &all, level)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("compressing trees: {e}"), None))
}

pub(super) async fn tree_closure(
    State(s): State<Shared>,
    reader: Option<Extension<Reader>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let pack::TreesRequest { new_root, old_root, encoding } =
        pack::TreesRequest::decode(&body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string(), None))?;
    let compressed = encoding == pack::TreesEncoding::Compressed;
    lookup(&s, move |st| {
        st.repo.read_tree(&new_root)?;
        if let Some(old) = old_root {
            st.repo.read_tree(&old)?;
        }
        Ok(())
    })
    .await?;
    if compressed {
        // Cached like patches, by new and old root: the next device on the same versions
        // costs a file read. Past the reader's allowance, refused: the device asks for the
        // trees uncompressed.
        let allowance = match admit(&s, reader.as_ref()) {
            Ok(a) => a,
            Err(b) => return Ok(busy(b)),
        };
        let old = old_root.ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "no old root".into(), None))?;
        let body = content(&s, Slots::Compute, move |st| {
            let answer = st
                .patcher
                .trees_within(&new_root, &old, &allowance, |level| compress_trees(st, new_root, old, level))?;
            answer.ok_or_else(|| {
                ApiError(
                    StatusCode::TOO_MANY_REQUESTS,
                    "this client's allowance for compressed trees is spent; ask for them uncompressed".into(),
                    None,
                )
            })
        })
        .await?;
        let mut resp = body.into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/zstd"));
        return Ok(resp);
    }
    let mut resp = stepped_body(s, TreeWalk::new(new_root, old_root), TreeWalk::step).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ferry-pack"));
    Ok(resp)
}
