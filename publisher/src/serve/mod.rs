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
//! Connections, their cap and their timeouts are `crate::connections`'; every answer to a
//! request that came over TLS carries `Strict-Transport-Security` (`hsts`).
//!
//! Its parts: this module holds the state, the blocking-pool slots ([`in_slot`], the one
//! place content work meets the pool), the error answer, the router and
//! [`serve`]/[`serve_with`]; `routes` the repository's read routes answered in one piece
//! (branches, channels, keys, versions, single objects, chunks and commits); `stream` the
//! answers streamed a bounded step at a time (pack frames of chunks and objects, patches,
//! tree closures); `documents` the channel documents the fleet's API reads and promotes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use ferry_api::ErrorBody;
use ferry_delta::pack;
use ferry_delta::patch;
use ferry_store::{Id, Repository, StoreError};
use tokio::sync::{AcquireError, Semaphore};
use tokio::task::JoinError;

use crate::patches::Patcher;

mod documents;
mod hsts;
mod prepare;
mod routes;
mod stream;

use documents::RepoDocuments;
use routes::{branch, channel, chunk, commit_with_signatures, keys, object, signatures, version};
use stream::{chunks_batch, objects_batch, patches_batch, tree_closure};

/// The target of the server's log events, in whichever of its modules they happen: one name
/// in the log (`ferry_publisher::serve`), as before the module was split.
const LOG_TARGET: &str = "ferry_publisher::serve";

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
    /// What a device gets for a patch not computed yet at `level`.
    pub first: crate::patches::FirstAnswer,
    /// Prepare the patches of each new release (channel document or branch head) in the
    /// background, ahead of the devices.
    pub prepare: bool,
    /// The cache's second level, shared by servers: a directory or `s3://BUCKET/PREFIX`.
    pub store: Option<String>,
}

impl Default for PatchConfig {
    fn default() -> PatchConfig {
        PatchConfig {
            level: ferry_delta::patch::DEFAULT_LEVEL,
            cache_dir: None,
            cache_bytes: 1 << 30,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            limits: crate::patches::Limits::default(),
            first: crate::patches::FirstAnswer::Fast,
            prepare: true,
            store: None,
        }
    }
}

type Shared = Arc<AppState>;

/// An error response: a status and an [`ErrorBody`] naming the object (and, for a batch,
/// the ids the repository lacks).
struct ApiError(StatusCode, String, Option<Vec<String>>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1, missing: self.2 })).into_response()
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

impl AppState {
    fn slots(&self, slots: Slots) -> &Arc<Semaphore> {
        match slots {
            Slots::Read => &self.reads,
            Slots::Compute => &self.compute,
        }
    }
}

/// Why work given to [`in_slot`] did not run to its end.
#[derive(Debug)]
enum SlotError {
    /// The slots were closed (the server is going away).
    Closed(AcquireError),
    /// The work panicked or was cancelled.
    Failed(JoinError),
}

impl std::fmt::Display for SlotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotError::Closed(e) => e.fmt(f),
            SlotError::Failed(e) => e.fmt(f),
        }
    }
}

/// Runs `f` on the blocking pool once a slot of `slots` is free, holding the slot until `f`
/// returns. The wait for the slot is asynchronous, so however many clients ask for content,
/// the content routes hold at most `read_slots` + patch-worker threads of the pool. The one
/// place content work meets the pool: a lookup ([`content`]), a step of a streamed answer
/// ([`stream::stepped_body`]) and a patch answer ([`stream::patch_body`]) all go through it.
async fn in_slot<T: Send + 'static>(
    slots: &Arc<Semaphore>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SlotError> {
    let slot = slots.clone().acquire_owned().await.map_err(SlotError::Closed)?;
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        f()
    })
    .await
    .map_err(SlotError::Failed)
}

/// Runs `f` in one of the content routes' slots ([`in_slot`]).
async fn content<T: Send + 'static>(
    s: &Shared,
    slots: Slots,
    f: impl FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = s.clone();
    in_slot(s.slots(slots), move || f(&state)).await.map_err(|e| match e {
        SlotError::Closed(e) => ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None),
        SlotError::Failed(e) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("worker failed: {e}"), None),
    })?
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

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such endpoint (the API is under /v1; see docs/api.md)".into(), None)
}

/// What the device and admin APIs are served with: the fleet's store, the online channel
/// key (promotion from the admin API), the online configuration key (signed configuration
/// in check-in answers) and the devices' certificates (mutual TLS).
#[derive(Debug)]
pub struct FleetParts {
    pub fleet: crate::fleet::Fleet,
    pub channel_key: Option<ferry_store::SecretKey>,
    pub config_key: Option<ferry_store::SecretKey>,
    pub certificates: crate::fleet_api::DeviceCertificates,
}

impl FleetParts {
    /// The fleet with no online key and no device certificates.
    pub fn new(fleet: crate::fleet::Fleet) -> FleetParts {
        FleetParts { fleet, channel_key: None, config_key: None, certificates: Default::default() }
    }
}

/// The API's routes over an open repository.
pub fn router(repo: Repository, patcher: Patcher, fleet: Option<FleetParts>, read_slots: usize) -> Router {
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
        Some(FleetParts { fleet, channel_key, config_key, certificates }) => {
            let mut fs = crate::fleet_api::FleetState::new(fleet, Box::new(RepoDocuments(state.clone(), channel_key)));
            fs.config_key = config_key;
            fs.certificates = certificates;
            let fs = Arc::new(fs);
            prepare::start(&state, Some(prepare::fleet_running(&fs)));
            documents::watch_expiry(&state);
            (crate::fleet_api::routes(fs.clone()), Some(fs))
        }
        None => {
            prepare::start(&state, None);
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
        .layer(axum::middleware::from_fn(hsts::strict_transport))
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

/// The accept queue's length (the kernel caps it at net.core.somaxconn).
const LISTEN_BACKLOG: u32 = 4096;

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
    /// Where the fleet's state is: a directory (the embedded store) or PostgreSQL.
    pub store: crate::fleet::db::Location,
    pub settings: crate::fleet::Settings,
    /// An online channel key: lets the admin API (and the web UI) promote and roll back.
    pub channel_key: Option<PathBuf>,
    /// An online configuration key: check-in answers carry each device's configuration
    /// signed with it (it must be a configuration key of the newest key document).
    pub config_key: Option<PathBuf>,
}

/// The CA of devices' client certificates (`--client-ca`, `--client-ca-key`).
#[derive(Debug, Clone)]
pub struct DeviceCa {
    pub cert: PathBuf,
    /// With it, enrolling devices get a certificate for their serial.
    pub key: Option<PathBuf>,
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
    /// HTTPS with these files; without them, plain HTTP (behind a TLS-terminating proxy).
    pub tls: Option<crate::tls::TlsFiles>,
    /// Mutual TLS for devices: the CA their client certificates come from, and its key when
    /// the server issues them at enrollment.
    pub device_ca: Option<DeviceCa>,
    /// A header a TLS-terminating load balancer fills with the device's client certificate
    /// (its SHA-256), believed only from these addresses: mutual TLS behind the balancer.
    pub client_cert_header: Option<(String, Vec<std::net::IpAddr>)>,
}

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig {
            patches: PatchConfig::default(),
            fleet: None,
            connections: crate::connections::Limits::default(),
            read_slots: READ_SLOTS_PER_CORE * std::thread::available_parallelism().map_or(2, |n| n.get()),
            tls: None,
            device_ca: None,
            client_cert_header: None,
        }
    }
}

/// Mutual TLS for the fleet's devices, from `--client-ca`, `--client-ca-key` and
/// `--client-cert-header`.
fn device_certificates(config: &ServeConfig) -> Result<crate::fleet_api::DeviceCertificates> {
    let issuer = match &config.device_ca {
        Some(DeviceCa { cert, key: Some(key) }) => Some(crate::ca::FleetCa::from_files(cert, key)?),
        _ => None,
    };
    let forwarded = match &config.client_cert_header {
        Some((name, trusted)) => {
            if trusted.is_empty() {
                anyhow::bail!("--client-cert-header {name} needs the load balancers' addresses (--trusted-proxy)");
            }
            let name = axum::http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| anyhow::anyhow!("--client-cert-header {name:?} is not a header name"))?;
            Some((name, trusted.clone()))
        }
        None => None,
    };
    let required = match (&config.device_ca, config.tls.is_some(), forwarded.is_some()) {
        (None, _, false) => false,
        (None, _, true) => anyhow::bail!(
            "--client-cert-header needs --client-ca (and --client-ca-key for the server to issue device certificates): without them no device could ever be bound to a certificate"
        ),
        (Some(_), false, false) => anyhow::bail!(
            "--client-ca needs --tls-cert (the server checks client certificates itself) or --client-cert-header (a TLS-terminating balancer checks them)"
        ),
        (Some(_), _, _) => true,
    };
    if required && issuer.is_none() {
        tracing::warn!(
            "--client-ca without --client-ca-key: devices are required to present certificates, but this server issues none (only devices holding one already get through)"
        );
    }
    Ok(crate::fleet_api::DeviceCertificates { issuer, required, forwarded })
}

/// Says at start when the server's configuration key is not one devices accept: they would
/// refuse every configuration it signs.
fn warn_unless_config_key(repo: &Repository, key: &ferry_store::SecretKey) {
    let public = key.public();
    match crate::channels::current_trust(repo) {
        Ok(Some(t)) if t.config_keys.contains(&public.to_bytes()) => {
            if t.thresholds.config > 1 {
                tracing::warn!(
                    threshold = t.thresholds.config,
                    "the key document asks several configuration signatures; devices refuse configuration this server signs alone"
                );
            }
        }
        Ok(Some(t)) => tracing::warn!(
            key = %public.to_hex(),
            keys_serial = t.serial,
            "--config-key is not a configuration key of the newest key document: devices refuse the configuration it signs (add it with `ferry keys set --config-key`)"
        ),
        Ok(None) => tracing::warn!("the repository has no key document: devices following a channel refuse the configuration this server signs"),
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "the key documents cannot be read to check --config-key"),
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
    // Certificates first: a wrong path fails before anything is opened or bound.
    let client_ca = config.device_ca.as_ref().map(|c| c.cert.as_path());
    let tls = config.tls.as_ref().map(|files| crate::tls::Tls::load(files, client_ca)).transpose()?;
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let repository = Repository::open_follower(&repo, &scratch)?;
    let patches = &config.patches;
    let fleet = match &config.fleet {
        Some(f) => {
            let key = match &f.channel_key {
                Some(p) => Some(ferry_store::SecretKey::load(p)?),
                None => None,
            };
            let config_key = match &f.config_key {
                Some(p) => {
                    let k = ferry_store::SecretKey::load(p)?;
                    warn_unless_config_key(&repository, &k);
                    Some(k)
                }
                None => None,
            };
            let fleet = crate::fleet::Fleet::open(&f.store, f.settings.clone())
                .with_context(|| format!("opening the fleet store {}", f.store.describe()))?;
            Some(FleetParts { fleet, channel_key: key, config_key, certificates: device_certificates(config)? })
        }
        None => None,
    };
    let cache_dir = patches.cache_dir.clone().unwrap_or_else(|| scratch.join("patch-cache"));
    let patcher = Patcher::open(&cache_dir, patches.cache_bytes, patches.level, patches.workers)
        .with_context(|| format!("opening the patch cache {}", cache_dir.display()))?
        .with_limits(patches.limits)
        .with_first_answer(patches.first)
        .with_preparation(patches.prepare);
    let patcher = match &patches.store {
        Some(to) => patcher.with_store(
            crate::export::Destination::open_quick(to, Duration::from_secs(2))
                .with_context(|| format!("opening the patch store {to}"))?,
            tokio::runtime::Handle::current(),
        ),
        None => patcher,
    };
    // A long accept queue: a fleet checking in at once must not overflow it (the default
    // of 1024 did with 1000 devices, costing each overflowed device a 1 s SYN retry).
    let socket = if listen.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
        .with_context(|| format!("listening on {listen}"))?;
    socket.set_reuseaddr(true)?;
    socket.bind(listen).with_context(|| format!("listening on {listen}"))?;
    let listener = socket.listen(LISTEN_BACKLOG).with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    on_bound(addr);
    match &tls {
        Some(_) => tracing::info!(%addr, repo = %repo.display(), "serving HTTPS (HTTP/2 and HTTP/1.1)"),
        None => tracing::warn!(
            %addr,
            repo = %repo.display(),
            "serving plain HTTP: tokens and configuration cross the network readable; right only behind a TLS-terminating load balancer (else give --tls-cert and --tls-key)"
        ),
    }
    if config.fleet.is_none() {
        tracing::warn!(
            "no --fleet: the repository routes are open to anyone who can connect (every release can be downloaded); serve a fleet with --fleet DIR to require device and admin tokens"
        );
    }
    let app = router(repository, patcher, fleet, config.read_slots);
    // The certificate's reload watch stops with the server.
    let (stop_watch, watch_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(tls) = tls.clone() {
        tokio::spawn(async move {
            tls.watch(async {
                let _ = watch_stopped.await;
            })
            .await
        });
    }
    crate::connections::serve(listener, app, &config.connections, tls, shutdown).await;
    let _ = stop_watch.send(());
    tracing::info!("shut down");
    Ok(())
}
