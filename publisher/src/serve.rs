//! `ferry serve`: the repository over HTTP (API version 1, documented in `docs/api.md`).
//!
//! The server is a RocksDB *follower* of the repository: `ferry commit` can keep writing in
//! another process, and new branch heads become visible on the next branch request. It serves
//! only what the store holds and verifies: every object and chunk is checked against its id
//! before it is sent. Immutable, content-addressed responses carry long-lived cache headers,
//! so a CDN or caching proxy can sit in front; branch heads carry an ETag and answer 304 when
//! unchanged. A request for an id it lacks makes it catch up with the writer once before it
//! answers 404, so a commit is served by id as soon as `ferry commit` has written it.
//!
//! Who may read: with `--fleet`, every repository route needs an admin token or an accepted
//! device's token (`fleet_api::require_reader`), and patch work is budgeted per token
//! (`patches::Limits`); without it the repository is open to anyone who can connect (the
//! server says so when it starts), and only the per-request bound on patch work applies.
//!
//! No client can hold a shared thread: streamed answers (chunks, objects, trees, patches) are
//! produced a step at a time on the blocking pool, only as fast as the client reads, and the
//! content routes hold at most `read_slots` + patch-worker blocking threads however many
//! clients ask, so branch requests, check-ins and the admin API keep the rest of the pool.
//! Connections, their cap and their timeouts are `crate::connections`'.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Extension, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use ferry_delta::pack;
use ferry_delta::patch::{self as patch, PatchRequest};
use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::fleet_api::Reader;
use crate::patches::{Allowance, Patcher};
use ferry_store::{chunk::decode_chunk, Id, Repository, StoreError};
use serde_json::json;

/// Cache-Control for content-addressed responses.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Bytes a streamed answer reads per step (a few frames, or one bigger frame): enough to be
/// worth a trip to the blocking pool (a chunk averages 64 KiB), little enough that a stalled
/// answer, which holds at most two steps beside hyper's buffer, costs little memory.
const STEP_BYTES: usize = 64 * 1024;

/// Patch answers streaming at once, per patch worker. A stalled patch answer holds up to
/// 1 + workers answers of up to 4 MiB each, so their number is bounded apart from the
/// connection cap; past it a patch request is answered 503 at once and ferryd fetches those
/// chunks plain (docs/api.md, step 4), whose answers hold little. Eight per worker keeps every
/// worker busy while devices read their answers.
pub const PATCH_STREAMS_PER_WORKER: usize = 8;

/// Content reads (chunks, objects, trees) on the blocking pool at once, per core, over all
/// requests: reads wait on the disk as much as they verify (BLAKE3, zstd), so a few per core
/// keep both busy, while the pool's other threads (tokio's default is 512) stay free for
/// branch requests, check-ins and the admin API.
pub const READ_SLOTS_PER_CORE: usize = 4;

/// The least time between two catch-ups with the writer caused by requests for ids the
/// server lacks: a client naming random ids costs at most 10 catch-ups a second, and a
/// commit written a moment ago is found at most this late.
const MISS_CATCH_UP_INTERVAL: Duration = Duration::from_millis(100);

struct AppState {
    repo: Repository,
    last_refresh: Mutex<Instant>,
    /// When a miss last made the server catch up; an async lock, so misses queue for it
    /// without holding threads.
    last_miss_catch_up: tokio::sync::Mutex<Instant>,
    patcher: Patcher,
    /// Blocking-pool slots for content reads (`read_slots`).
    reads: Arc<Semaphore>,
    /// Blocking-pool slots for patches and compressed trees: one per patch worker.
    compute: Arc<Semaphore>,
    /// Patch answers streaming at once ([`PATCH_STREAMS_PER_WORKER`] per worker).
    patch_streams: Arc<Semaphore>,
}

/// How `ferry serve` computes and caches chunk patches.
#[derive(Debug, Clone)]
pub struct PatchConfig {
    /// zstd level of patches.
    pub level: i32,
    /// Where patches are cached (default: `patch-cache` in the scratch directory).
    pub cache_dir: Option<PathBuf>,
    /// Bound of the cache, in bytes.
    pub cache_bytes: u64,
    /// Patches computed at once (default: the number of cores).
    pub workers: usize,
    /// Fresh work allowed per request and per client.
    pub limits: crate::patches::Limits,
}

impl Default for PatchConfig {
    fn default() -> PatchConfig {
        PatchConfig {
            level: ferry_delta::patch::DEFAULT_LEVEL,
            cache_dir: None,
            cache_bytes: 1 << 30,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            limits: crate::patches::Limits::default(),
        }
    }
}

type Shared = Arc<AppState>;

/// An error response: a status and a JSON body `{"error": "..."}` naming the object.
struct ApiError(StatusCode, String, Option<Vec<String>>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.1 });
        if let Some(missing) = self.2 {
            body["missing"] = json!(missing);
        }
        (self.0, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let status = match &e {
            StoreError::ChunkMissing { .. } | StoreError::ObjectMissing { .. } | StoreError::UnknownRev { .. } => {
                StatusCode::NOT_FOUND
            }
            StoreError::BadBranchName { .. } => StatusCode::BAD_REQUEST,
            _ => {
                tracing::error!(error = %e, "store error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError(status, e.to_string(), None)
    }
}

fn parse_id(s: &str) -> Result<Id, ApiError> {
    s.parse().map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("{s:?} is not an object id (64 hex digits)"), None))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("worker failed: {e}"), None))?
}

/// Catches up with the writer unless a catch-up started after the request arrived: a
/// request for a ref sees everything published before it, and concurrent requests share
/// one catch-up.
fn catch_up(state: &Shared, arrived: Instant) -> Result<(), ApiError> {
    let mut last = state.last_refresh.lock().unwrap_or_else(|e| e.into_inner());
    if *last < arrived {
        let started = Instant::now();
        state.repo.refresh()?;
        *last = started;
    }
    Ok(())
}

/// Which blocking-pool slots a piece of content work takes.
#[derive(Clone, Copy)]
enum Slots {
    Read,
    Compute,
}

/// Runs `f` on the blocking pool once one of the content routes' slots is free. The wait
/// for a slot is asynchronous, so however many clients ask for content, the content routes
/// hold at most `read_slots` + patch-worker threads of the pool.
async fn content<T: Send + 'static>(
    s: &Shared,
    slots: Slots,
    f: impl FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let semaphore = match slots {
        Slots::Read => &s.reads,
        Slots::Compute => &s.compute,
    };
    let slot = semaphore
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None))?;
    let state = s.clone();
    blocking(move || {
        let _slot = slot;
        f(&state)
    })
    .await
}

/// Looks up content by id (in a read slot); when that finds nothing (404), catches up with
/// the writer once ([`catch_up_after_miss`]) and looks again, so a commit is served by id as
/// soon as `ferry commit` has written it, before any branch request.
async fn lookup<T: Send + 'static>(
    s: &Shared,
    f: impl Fn(&AppState) -> Result<T, ApiError> + Send + Sync + 'static,
) -> Result<T, ApiError> {
    let arrived = Instant::now();
    let f = Arc::new(f);
    let again = f.clone();
    match content(s, Slots::Read, move |st| f(st)).await {
        Err(e) if e.0 == StatusCode::NOT_FOUND => {
            catch_up_after_miss(s, arrived).await?;
            content(s, Slots::Read, move |st| again(st)).await
        }
        r => r,
    }
}

/// Catches up with the writer for a request that arrived at `arrived` and found nothing:
/// misses take turns (asynchronously), share a catch-up that started after they arrived,
/// and cause at most one every [`MISS_CATCH_UP_INTERVAL`].
async fn catch_up_after_miss(s: &Shared, arrived: Instant) -> Result<(), ApiError> {
    let mut last = s.last_miss_catch_up.lock().await;
    if *last >= arrived {
        return Ok(());
    }
    tokio::time::sleep_until((*last + MISS_CATCH_UP_INTERVAL).into()).await;
    *last = Instant::now();
    let state = s.clone();
    blocking(move || catch_up(&state, arrived)).await
}

fn signed_document(bytes: Vec<u8>) -> Response {
    let mut resp = bytes.into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    resp
}

/// `GET /v1/channels/{name}`: the channel's newest signed document (an envelope).
async fn channel(State(s): State<Shared>, Path(name): Path<String>) -> Result<Response, ApiError> {
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
async fn keys(State(s): State<Shared>) -> Result<Response, ApiError> {
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
async fn version(State(s): State<Shared>, Path(version): Path<String>) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let wanted: ferry_store::Version = version
        .parse()
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("{version:?} is not a version"), None))?;
    // Walking histories is content work: it waits for a read slot like the rest.
    let state = s.clone();
    let found = content(&s, Slots::Read, move |_| {
        let s = &state;
        catch_up(s, arrived)?;
        let mut found = std::collections::BTreeSet::new();
        let mut seen = std::collections::HashSet::new();
        for (_, head) in s.repo.branches()? {
            let mut next = Some(head);
            while let Some(id) = next.take() {
                if !seen.insert(id) || seen.len() > MAX_VERSION_WALK {
                    break;
                }
                let c = s.repo.read_commit(&id)?;
                if c.version == wanted {
                    found.insert(id.to_hex());
                }
                next = c.parent;
            }
        }
        Ok(found)
    })
    .await?;
    if found.is_empty() {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no commit has version {version}"), None));
    }
    Ok(Json(json!({ "version": version, "commits": found })).into_response())
}

async fn branch(State(s): State<Shared>, Path(name): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
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
        Json(json!({ "branch": name, "commit": id.to_hex() })).into_response()
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

async fn object(State(s): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let bytes = lookup(&s, move |st| Ok(st.repo.read_object_bytes(&id)?)).await?;
    Ok(immutable(bytes))
}

/// A chunk's stored frame, verified against its id.
fn verified_chunk(s: &AppState, id: &Id) -> Result<Vec<u8>, StoreError> {
    let info = s.repo.chunk_info(id)?.ok_or(StoreError::ChunkMissing { id: *id })?;
    let stored = s.repo.read_chunk_stored(id)?;
    decode_chunk(id, &stored, info.len)?;
    Ok(stored)
}

async fn chunk(State(s): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let stored = lookup(&s, move |st| Ok(verified_chunk(st, &id)?)).await?;
    Ok(immutable(stored))
}

async fn signatures(State(s): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let sigs = lookup(&s, move |st| {
        st.repo.read_commit(&id)?;
        Ok(st.repo.signatures(&id)?)
    })
    .await?;
    let list: Vec<_> =
        sigs.iter().map(|s| json!({ "key": hex::encode(s.key), "signature": hex::encode(s.signature) })).collect();
    Ok(Json(json!({ "commit": id.to_hex(), "signatures": list })).into_response())
}

/// A commit and its signatures in one answer: what a device needs before anything else.
async fn commit_with_signatures(State(s): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let (bytes, sigs) = lookup(&s, move |st| {
        st.repo.read_commit(&id)?;
        Ok((st.repo.read_object_bytes(&id)?, st.repo.signatures(&id)?))
    })
    .await?;
    let list: Vec<_> =
        sigs.iter().map(|s| json!({ "key": hex::encode(s.key), "signature": hex::encode(s.signature) })).collect();
    Ok(Json(json!({ "commit": id.to_hex(), "bytes": hex::encode(bytes), "signatures": list })).into_response())
}

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
            let slot = s.reads.clone().acquire_owned().await.map_err(|e| e.to_string())?;
            tokio::task::spawn_blocking(move || {
                let _slot = slot;
                let r = step(&s, &mut state);
                (state, r)
            })
            .await
            .map_err(|e| e.to_string())
        })
    }
    let first = spawn_step(s.clone(), state, step);
    let stream = futures_util::stream::unfold(Some(first), move |next| {
        let s = s.clone();
        async move {
            let done = next?.await.map_err(|e| e.to_string()).and_then(|r| r);
            match done {
                Ok((state, Ok(Some(bytes)))) => Some((Ok(Bytes::from(bytes)), Some(spawn_step(s, state, step)))),
                Ok((_, Ok(None))) => None,
                Ok((_, Err(e))) | Err(e) => {
                    tracing::error!(error = %e, "aborting a streamed answer");
                    Some((Err(std::io::Error::other(e)), None))
                }
            }
        }
    });
    Body::from_stream(stream)
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
    tracing::debug!(count = ids.len(), "pack request");
    let mut resp = stepped_body(s, Frames { ids, next: 0, kind, failed: None }, Frames::step).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ferry-pack"));
    Ok(resp)
}

async fn chunks_batch(State(s): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    batch(s, body, Kind::Chunks).await
}

async fn objects_batch(State(s): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
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
async fn patches_batch(
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
    tracing::debug!(count = items.len(), "patch request");
    let mut resp = patch_body(s, items, allowance, stream_slot).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ferry-pack"));
    Ok(resp)
}

/// The patch answers, in request order. Each is computed (or read from the cache) in a
/// compute slot; at most the patch worker count of them are computed ahead of the one the
/// connection takes, and only as the connection takes answers, so a client that stops
/// reading holds no thread and at most that many answers. `slot` (of `patch_streams`) is
/// held until the answer ends or the connection goes.
/// How many patch answers one response computes ahead of the one being sent.
const PATCH_AHEAD: usize = 2;

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
    let stream = futures_util::stream::unfold(Some(start), move |answers| {
        let s = s.clone();
        let allowance = allowance.clone();
        async move {
            let mut a = answers?;
            while a.running.len() < ahead && a.next < a.items.len() {
                let (s, items, i, allowance) = (s.clone(), a.items.clone(), a.next, allowance.clone());
                a.running.push_back(tokio::spawn(async move {
                    let slot = s.compute.clone().acquire_owned().await.map_err(|e| e.to_string())?;
                    tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
                        let _slot = slot;
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
                Ok(frame) => Some((Ok(Bytes::from(frame)), Some(a))),
                Err(e) => {
                    tracing::error!(error = %e, "aborting a patch answer");
                    Some((Err(std::io::Error::other(e)), None))
                }
            }
        }
    });
    Body::from_stream(stream)
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
            queue.extend(tree.entries.iter().filter_map(|e| match e.kind {
                ferry_store::EntryKind::Dir { tree } => Some(tree),
                _ => None,
            }));
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
async fn tree_closure(
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
            let answer = st.patcher.trees_within(&new_root, &old, &allowance, |level| {
                let failed = |e: String| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e, None);
                let mut walk = TreeWalk::new(new_root, old_root);
                let mut all = Vec::new();
                while let Some(frames) = TreeWalk::step(st, &mut walk).map_err(failed)? {
                    all.extend_from_slice(&frames);
                }
                let prefix = patch::tree_prefix(&old, |id| st.repo.read_object_bytes(id))?;
                patch::compress_patch(&prefix, &all, level)
                    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("compressing trees: {e}"), None))
            })?;
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

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such endpoint (the API is under /v1; see docs/api.md)".into(), None)
}

/// The API's routes over an open repository.
pub fn router(
    repo: Repository,
    patcher: Patcher,
    fleet: Option<(crate::fleet::Fleet, Option<ferry_store::SecretKey>)>,
    read_slots: usize,
) -> Router {
    let state = Arc::new(AppState {
        repo,
        last_refresh: Mutex::new(Instant::now()),
        last_miss_catch_up: tokio::sync::Mutex::new(Instant::now()),
        reads: Arc::new(Semaphore::new(read_slots.max(1))),
        compute: Arc::new(Semaphore::new(patcher.workers())),
        patch_streams: Arc::new(Semaphore::new(PATCH_STREAMS_PER_WORKER * patcher.workers())),
        patcher,
    });
    let (fleet_routes, fleet_state) = match fleet {
        Some((fleet, key)) => {
            let fs = Arc::new(crate::fleet_api::FleetState {
                fleet,
                documents: Box::new(RepoDocuments(state.clone(), key)),
            });
            (crate::fleet_api::routes(fs.clone()), Some(fs))
        }
        None => {
            (Router::new().route("/v1/device/{*rest}", any(no_fleet)).route("/v1/admin/{*rest}", any(no_fleet)), None)
        }
    };
    let repository = Router::new()
        .route("/v1/patches", post(patches_batch).layer(DefaultBodyLimit::max(patch::MAX_PATCH_REQUEST)))
        .route("/v1/branches/{*name}", get(branch))
        .route("/v1/channels/{*name}", get(channel))
        .route("/v1/keys", get(keys))
        .route("/v1/versions/{version}", get(version))
        .route("/v1/objects/{id}", get(object))
        .route("/v1/commits/{id}", get(commit_with_signatures))
        .route("/v1/commits/{id}/signatures", get(signatures))
        .route("/v1/chunks/{id}", get(chunk))
        .route("/v1/chunks", post(chunks_batch))
        .route("/v1/objects", post(objects_batch))
        .route("/v1/trees", post(tree_closure));
    // Under --fleet, every repository route needs a device or admin token.
    let repository = match fleet_state {
        Some(fs) => repository.route_layer(axum::middleware::from_fn_with_state(fs, crate::fleet_api::require_reader)),
        None => repository,
    };
    repository
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(pack::MAX_IDS_PER_REQUEST * 32))
        .with_state(state)
        .merge(fleet_routes)
}

/// Opens `repo` as a follower (its scratch files under `scratch`) and serves it on `listen`
/// until `shutdown` resolves. `on_bound` receives the bound address (useful with port 0).
pub async fn serve(
    repo: PathBuf,
    scratch: PathBuf,
    listen: SocketAddr,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    serve_with(repo, scratch, listen, &ServeConfig::default(), on_bound, shutdown).await
}

/// The most commits `GET /v1/versions/{v}` reads across all branches.
const MAX_VERSION_WALK: usize = 100_000;

/// The accept queue's length (the kernel caps it at net.core.somaxconn).
const LISTEN_BACKLOG: u32 = 4096;

/// How stale the repository may be for a check-in's channel document.
const CHECKIN_FRESHNESS: std::time::Duration = std::time::Duration::from_millis(250);

/// Channel documents for the fleet, read from the repository; with an online channel key,
/// promotions written to it (the repository is opened for writing just for that).
struct RepoDocuments(Shared, Option<ferry_store::SecretKey>);

impl crate::fleet_api::Documents for RepoDocuments {
    fn head(&self, channel: &str) -> Option<(crate::fleet::HeadDoc, Vec<u8>)> {
        // Check-ins come by the thousand: a promotion reaches them within CHECKIN_FRESHNESS
        // instead of every check-in catching up with the writer on its own.
        catch_up(&self.0, Instant::now() - CHECKIN_FRESHNESS).ok()?;
        ferry_store::repo::check_branch_name(channel).ok()?;
        let id = match self.0.repo.channel(channel).ok()? {
            Some(id) => id,
            None => {
                // A channel not seen yet may be brand new: look again, fully caught up.
                catch_up(&self.0, Instant::now()).ok()?;
                self.0.repo.channel(channel).ok()??
            }
        };
        let envelope = self.0.repo.read_envelope(&id).ok()?;
        let doc = ferry_store::channel::ChannelDoc::decode(&envelope.document).ok()?;
        let head = crate::fleet::HeadDoc {
            id: id.to_hex(),
            serial: doc.serial,
            targets: doc.targets.iter().map(|t| (t.hardware.clone(), t.commit.to_hex())).collect(),
        };
        Some((head, envelope.encode()))
    }

    fn by_id(&self, id: &str) -> Option<Vec<u8>> {
        let id: Id = id.parse().ok()?;
        Some(self.0.repo.read_envelope(&id).ok()?.encode())
    }

    fn channels(&self) -> Result<Vec<serde_json::Value>, String> {
        catch_up(&self.0, Instant::now()).map_err(|e| e.1)?;
        let repo = &self.0.repo;
        let mut out = Vec::new();
        for (name, _) in repo.channels().map_err(|e| e.to_string())? {
            let history = crate::channels::history(repo, &name).map_err(|e| format!("{e:#}"))?;
            let Some((id, doc, _)) = history.first() else { continue };
            let mut v = crate::channels::doc_json(id, doc);
            v["upstream"] = repo.upstream(&name).map_err(|e| e.to_string())?.into();
            v["history"] = history.iter().map(|(id, d, _)| crate::channels::doc_json(id, d)).collect::<Vec<_>>().into();
            out.push(v);
        }
        Ok(out)
    }

    fn promote(&self, req: &crate::fleet_api::PromoteBody) -> Result<serde_json::Value, (StatusCode, String)> {
        let key = self.1.as_ref().ok_or_else(|| {
            (
                StatusCode::CONFLICT,
                "this server holds no channel key: start it with --channel-key, or promote with `ferry promote`"
                    .to_string(),
            )
        })?;
        let repo = Repository::open(self.0.repo.path()).map_err(|e| match e {
            StoreError::Locked { .. } => {
                (StatusCode::CONFLICT, "the repository is being written (a commit is running); try again".to_string())
            }
            e => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        })?;
        let bad = |e: anyhow::Error| (StatusCode::BAD_REQUEST, format!("{e:#}"));
        let commit = req.commit.as_deref().map(|c| repo.resolve(c)).transpose().map_err(|e| bad(e.into()))?;
        let expires_in = crate::channels::parse_duration(req.expires.as_deref().unwrap_or("7d")).map_err(bad)?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let p = crate::channels::Promotion {
            to: req.to.clone(),
            commit,
            from: req.from.clone(),
            hardware: req.hardware.clone(),
            key,
            expires_in,
            rollback: req.rollback,
            force: req.force,
            now,
        };
        let out = crate::channels::promote(&repo, &p).map_err(bad)?;
        let mut v = crate::channels::doc_json(&out.id, &out.doc);
        v["changed"] = out.changed.into();
        Ok(v)
    }
}

async fn no_fleet() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "this server keeps no fleet state: start `ferry serve` with --fleet DIR for the device and admin APIs".into(),
        None,
    )
}

/// Where `ferry serve` keeps the fleet's state, and the fleet's settings.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub path: PathBuf,
    pub settings: crate::fleet::Settings,
    /// An online channel key: lets the admin API (and the web UI) promote and roll back.
    pub channel_key: Option<PathBuf>,
}

/// Everything [`serve_with`] can be told beyond the repository and the address.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub patches: PatchConfig,
    /// The device and admin APIs, with their state; without it they answer 404.
    pub fleet: Option<FleetConfig>,
    /// The connection cap and timeouts.
    pub connections: crate::connections::Limits,
    /// Content reads (chunks, objects, trees) on the blocking pool at once, over all requests
    /// (default: [`READ_SLOTS_PER_CORE`] per core).
    pub read_slots: usize,
}

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig {
            patches: PatchConfig::default(),
            fleet: None,
            connections: crate::connections::Limits::default(),
            read_slots: READ_SLOTS_PER_CORE * std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// [`serve`] with patches and the fleet configured.
pub async fn serve_with(
    repo: PathBuf,
    scratch: PathBuf,
    listen: SocketAddr,
    config: &ServeConfig,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let repository = Repository::open_follower(&repo, &scratch)?;
    let patches = &config.patches;
    let fleet = match &config.fleet {
        Some(f) => {
            let key = match &f.channel_key {
                Some(p) => Some(ferry_store::SecretKey::load(p)?),
                None => None,
            };
            let fleet = crate::fleet::Fleet::open(&f.path, f.settings.clone())
                .with_context(|| format!("opening the fleet store {}", f.path.display()))?;
            Some((fleet, key))
        }
        None => None,
    };
    let cache_dir = patches.cache_dir.clone().unwrap_or_else(|| scratch.join("patch-cache"));
    let patcher = Patcher::open(&cache_dir, patches.cache_bytes, patches.level, patches.workers)
        .with_context(|| format!("opening the patch cache {}", cache_dir.display()))?
        .with_limits(patches.limits);
    // A long accept queue: a fleet checking in at once must not overflow it (the default
    // of 1024 did with 1000 devices, costing each overflowed device a 1 s SYN retry).
    let socket = if listen.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
        .with_context(|| format!("listening on {listen}"))?;
    socket.set_reuseaddr(true)?;
    socket.bind(listen).with_context(|| format!("listening on {listen}"))?;
    let listener = socket.listen(LISTEN_BACKLOG).with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    on_bound(addr);
    tracing::info!(%addr, repo = %repo.display(), "serving");
    if config.fleet.is_none() {
        tracing::warn!(
            "no --fleet: the repository routes are open to anyone who can connect (every release can be downloaded); serve a fleet with --fleet DIR to require device and admin tokens"
        );
    }
    let app = router(repository, patcher, fleet, config.read_slots);
    crate::connections::serve(listener, app, &config.connections, shutdown).await;
    tracing::info!("shut down");
    Ok(())
}
