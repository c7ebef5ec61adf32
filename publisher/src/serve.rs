//! `ferry serve`: the repository over HTTP (API version 1, documented in `docs/api.md`).
//!
//! The server is a RocksDB *follower* of the repository: `ferry commit` can keep writing in
//! another process, and new branch heads become visible on the next branch request. It serves
//! only what the store holds and verifies: every object and chunk is checked against its id
//! before it is sent. Immutable, content-addressed responses carry long-lived cache headers,
//! so a CDN or caching proxy can sit in front; branch heads carry an ETag and answer 304 when
//! unchanged.
//!
//! Who may read: with `--fleet`, every repository route needs an admin token or an accepted
//! device's token (`fleet_api::require_reader`), and patch work is budgeted per token
//! (`patches::Limits`); without it the repository is open to anyone who can connect (the
//! server says so when it starts), and only the per-request bound on patch work applies.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Extension, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use ferry_delta::pack;
use ferry_delta::patch::{self as patch, PatchRequest};

use crate::fleet_api::Reader;
use crate::patches::{Allowance, Patcher};
use ferry_store::{chunk::decode_chunk, Id, Repository, StoreError};
use serde_json::json;

/// Cache-Control for content-addressed responses.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

struct AppState {
    repo: Repository,
    last_refresh: Mutex<Instant>,
    patcher: Patcher,
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
    let found = blocking(move || {
        catch_up(&s, arrived)?;
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
    let bytes = blocking(move || Ok(s.repo.read_object_bytes(&id)?)).await?;
    Ok(immutable(bytes))
}

async fn chunk(State(s): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let stored = blocking(move || {
        let info = s.repo.chunk_info(&id)?.ok_or(StoreError::ChunkMissing { id })?;
        let stored = s.repo.read_chunk_stored(&id)?;
        decode_chunk(&id, &stored, info.len)?;
        Ok(stored)
    })
    .await?;
    Ok(immutable(stored))
}

async fn signatures(State(s): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let sigs = blocking(move || {
        s.repo.read_commit(&id)?;
        Ok(s.repo.signatures(&id)?)
    })
    .await?;
    let list: Vec<_> =
        sigs.iter().map(|s| json!({ "key": hex::encode(s.key), "signature": hex::encode(s.signature) })).collect();
    Ok(Json(json!({ "commit": id.to_hex(), "signatures": list })).into_response())
}

/// A commit and its signatures in one answer: what a device needs before anything else.
async fn commit_with_signatures(State(s): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let (bytes, sigs) = blocking(move || {
        s.repo.read_commit(&id)?;
        Ok((s.repo.read_object_bytes(&id)?, s.repo.signatures(&id)?))
    })
    .await?;
    let list: Vec<_> =
        sigs.iter().map(|s| json!({ "key": hex::encode(s.key), "signature": hex::encode(s.signature) })).collect();
    Ok(Json(json!({ "commit": id.to_hex(), "bytes": hex::encode(bytes), "signatures": list })).into_response())
}

#[derive(Clone, Copy)]
enum Kind {
    Chunks,
    Objects,
}

/// Streams the frames for `ids`, reading and verifying each in a blocking task.
fn stream_frames(s: Shared, ids: Vec<Id>, kind: Kind) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::task::spawn_blocking(move || {
        for id in ids {
            let bytes = match kind {
                Kind::Chunks => s.repo.chunk_info(&id).and_then(|info| {
                    let info = info.ok_or(StoreError::ChunkMissing { id })?;
                    let stored = s.repo.read_chunk_stored(&id)?;
                    decode_chunk(&id, &stored, info.len)?;
                    Ok(stored)
                }),
                Kind::Objects => s.repo.read_object_bytes(&id),
            };
            let item = match bytes {
                Ok(b) => {
                    let mut frame = Vec::with_capacity(b.len() + pack::FRAME_HEADER);
                    pack::write_frame(&mut frame, &id, &b);
                    Ok(Bytes::from(frame))
                }
                Err(e) => {
                    // Cut the response: the client sees a truncated stream and retries what
                    // it still lacks; it never receives bytes that do not match their id.
                    tracing::error!(%id, error = %e, "aborting pack response");
                    Err(std::io::Error::other(e.to_string()))
                }
            };
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Body::from_stream(stream)
}

async fn batch(s: Shared, body: Bytes, kind: Kind) -> Result<Response, ApiError> {
    let ids = pack::decode_request(&body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string(), None))?;
    let state = s.clone();
    let check = ids.clone();
    let missing = blocking(move || {
        let mut missing = Vec::new();
        for id in &check {
            let present = match kind {
                Kind::Chunks => state.repo.has_chunk(id)?,
                Kind::Objects => state.repo.has_object(id)?,
            };
            if !present {
                missing.push(id.to_hex());
            }
        }
        Ok(missing)
    })
    .await?;
    if !missing.is_empty() {
        let what = match kind {
            Kind::Chunks => "chunks",
            Kind::Objects => "objects",
        };
        let msg = format!("{} requested {what} are not in the repository, e.g. {}", missing.len(), missing[0]);
        return Err(ApiError(StatusCode::NOT_FOUND, msg, Some(missing)));
    }
    tracing::debug!(count = ids.len(), "pack request");
    let mut resp = stream_frames(s, ids, kind).into_response();
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
    let items =
        patch::decode_patch_request(&body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string(), None))?;
    let allowance = match admit(&s, reader.as_ref()) {
        Ok(a) => a,
        Err(b) => return Ok(busy(b)),
    };
    let state = s.clone();
    let items = blocking(move || {
        let mut missing = Vec::new();
        let mut targets = 0u64;
        for item in &items {
            for (ids, what, max) in
                [(&item.reference, "reference", patch::REFERENCE_MAX), (&item.target, "target", patch::TARGET_MAX)]
            {
                let mut total = 0u64;
                for id in ids {
                    match state.repo.chunk_info(id)? {
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
        if !missing.is_empty() {
            let msg =
                format!("{} chunks named by the patches are not in the repository, e.g. {}", missing.len(), missing[0]);
            return Err(ApiError(StatusCode::NOT_FOUND, msg, Some(missing)));
        }
        Ok(items)
    })
    .await?;
    tracing::debug!(count = items.len(), "patch request");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    tokio::task::spawn_blocking(move || {
        s.patcher.answer_all_within(&s.repo, &items, &allowance, |item: &PatchRequest, r| {
            let frame = match r {
                Ok(bytes) => {
                    let mut frame = Vec::with_capacity(bytes.len() + pack::FRAME_HEADER);
                    pack::write_frame(&mut frame, &item.key(), &bytes);
                    Ok(Bytes::from(frame))
                }
                Err(e) => {
                    tracing::error!(key = %item.key(), error = %e, "aborting patch response");
                    Err(std::io::Error::other(e.to_string()))
                }
            };
            tx.blocking_send(frame).is_ok()
        });
        let st = s.patcher.stats();
        tracing::debug!(
            computed = st.computed,
            cache_hits = st.cache_hits,
            capped = st.capped,
            seconds = st.compute_seconds,
            "patch totals"
        );
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let mut resp = Body::from_stream(stream).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ferry-pack"));
    Ok(resp)
}

/// `POST /v1/trees`: body `new_root[32] ‖ old_root[32]` (the old root may be 32 zero bytes),
/// optionally followed by one byte, the encoding: 0 (default) streams, as pack frames parents
/// before children, every tree under the new root that is not under the old one; 1 sends the
/// same frames as one zstd frame compressed with the old root's trees as prefix
/// (`ferry_delta::patch::tree_prefix`): a device's old trees hold most of its new ones.
async fn tree_closure(
    State(s): State<Shared>,
    reader: Option<Extension<Reader>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if body.len() != 64 && body.len() != 65 {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("a trees request is 64 or 65 bytes (new root, old root, encoding), not {}", body.len()),
            None,
        ));
    }
    let compressed = match body.get(64) {
        None | Some(0) => false,
        Some(1) => true,
        Some(e) => return Err(ApiError(StatusCode::BAD_REQUEST, format!("unknown trees encoding {e}"), None)),
    };
    let new_root =
        Id::from_slice(&body[..32]).ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "bad id".into(), None))?;
    let old_root = Id::from_slice(&body[32..64]).filter(|id| id.as_bytes() != &[0; 32]);
    if compressed && old_root.is_none() {
        return Err(ApiError(StatusCode::BAD_REQUEST, "compressed trees need an old root".into(), None));
    }
    let state = s.clone();
    blocking(move || {
        state.repo.read_tree(&new_root)?;
        if let Some(old) = old_root {
            state.repo.read_tree(&old)?;
        }
        Ok(())
    })
    .await?;
    // The trees under the new root that are not under the old one, breadth first; each frame
    // goes to `send`, which returns false to stop.
    let walk = move |s: &AppState, send: &mut dyn FnMut(Vec<u8>) -> bool| -> Result<(), StoreError> {
        let mut have = std::collections::HashSet::new();
        if let Some(old) = old_root {
            let mut chunks = std::collections::HashSet::new();
            // Only the tree set is wanted; chunk ids come along cheaply.
            ferry_delta::plan::collect_chunks(&s.repo, &old, &mut have, &mut chunks)?;
        }
        let mut queue = std::collections::VecDeque::from([new_root]);
        let mut sent = std::collections::HashSet::new();
        while let Some(id) = queue.pop_front() {
            if have.contains(&id) || !sent.insert(id) {
                continue;
            }
            let bytes = s.repo.read_object_bytes(&id)?;
            let tree = ferry_store::Tree::decode(&bytes).map_err(|source| StoreError::Decode { id, source })?;
            queue.extend(tree.entries.iter().filter_map(|e| match e.kind {
                ferry_store::EntryKind::Dir { tree } => Some(tree),
                _ => None,
            }));
            let mut frame = Vec::with_capacity(bytes.len() + pack::FRAME_HEADER);
            pack::write_frame(&mut frame, &id, &bytes);
            if !send(frame) {
                break;
            }
        }
        Ok(())
    };
    if compressed {
        // Cached like patches, by new and old root: the next device on the same versions
        // costs a file read. Past the reader's allowance, refused: the device asks for the
        // trees uncompressed.
        let allowance = match admit(&s, reader.as_ref()) {
            Ok(a) => a,
            Err(b) => return Ok(busy(b)),
        };
        let old = old_root.ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "no old root".into(), None))?;
        let body = blocking(move || {
            let answer = s.patcher.trees_within(&new_root, &old, &allowance, |level| {
                let mut all = Vec::new();
                walk(&s, &mut |frame| {
                    all.extend_from_slice(&frame);
                    true
                })?;
                let prefix = patch::tree_prefix(&old, |id| s.repo.read_object_bytes(id))?;
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
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::task::spawn_blocking(move || {
        let r = walk(&s, &mut |frame| tx.blocking_send(Ok(Bytes::from(frame))).is_ok());
        if let Err(e) = r {
            tracing::error!(error = %e, "aborting trees response");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let mut resp = Body::from_stream(stream).into_response();
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
) -> Router {
    let state = Arc::new(AppState { repo, last_refresh: Mutex::new(Instant::now()), patcher });
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
#[derive(Debug, Clone, Default)]
pub struct ServeConfig {
    pub patches: PatchConfig,
    /// The device and admin APIs, with their state; without it they answer 404.
    pub fleet: Option<FleetConfig>,
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
    axum::serve(listener, router(repository, patcher, fleet))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP")?;
    tracing::info!("shut down");
    Ok(())
}
