//! `ferryd local-ui`: the small web page a technician opens on the device's own access point
//! to see what it runs and install an offline bundle, with no internet. It is not a remote
//! administration interface: anyone who can join the access point reaches it, and only the
//! password tells the technician from them.
//!
//! Routes (HTTP/1.1, hyper; HTTPS with `[local_ui] tls = true`; every page but the sign-in
//! needs a session):
//!
//! ```text
//! GET  /              the page (sign-in form until signed in)
//! POST /login         {"password": "..."} (application/json) -> a session cookie
//!                     (HttpOnly, SameSite=Strict; Secure over HTTPS)
//! POST /logout
//! GET  /status.json   what `ferryd status --json` prints
//! POST /apply         the bundle as the raw body (header X-Ferry-Upload: 1); the answer is
//!                     {"ok": true, "summary": {...}} or {"ok": false, "error": "..."}
//! ```
//!
//! Scripts may send `Authorization: Bearer <password>` instead of signing in. The password
//! is the device's own (`[local_ui] password` or `password_file`). Guessing it is slow,
//! bounded and logged:
//!
//! - **One comparison a second, reserved before it is made.** Every attempt (a sign-in or a
//!   bearer request, right or wrong) first takes the next free slot of one schedule shared
//!   by all connections (slots are a second apart), waits for it, and only then is compared,
//!   in constant time. The wait and the comparison run in a task of their own, so a client
//!   that hangs up still spends its slot, is still compared and logged, and no answer comes
//!   sooner for the right password than for a wrong one. An attempt whose slot is more than
//!   10 s away is answered 429 at once (with Retry-After) and compares nothing. A script
//!   that sends the bearer password with every request is held to a request a second; one
//!   that needs more signs in and uses the cookie.
//! - **Lockout.** After 10 wrong passwords in a row, every attempt, the right password too,
//!   is refused with 429 "too many wrong passwords; locked for N s": 1 minute, then 2, 4, 8
//!   and at most 15 minutes for each further 10; a right password resets both counts. That
//!   holds a guesser to about 40 passwords an hour once the lockout has reached 15 minutes;
//!   the price is that someone on the access point can keep the page locked, and the
//!   technician then uses the USB stick or `ferryd apply` over a cable.
//! - **Logged** with the client's address: every wrong password (warn), every lockout (warn)
//!   and every sign-in (info). Refusals that compare nothing (locked, schedule full, too many
//!   connections, a foreign Host) are logged at debug level, so a flood cannot fill the log.
//! - **Connections.** At most 64 at once and 8 per client address, so one client cannot take
//!   them all; a connection that sends no request head for 10 s, new or kept alive between
//!   requests, is closed (hyper's header read timeout, which hyper 1.12 starts whenever it
//!   waits for a request head); over HTTPS, the TLS handshake must also be done within 10 s
//!   of the connection, or it is closed (the timeout above only starts after it). A client
//!   with many addresses can still fill the 64; so can anyone jamming the radio.
//! - **Sessions** are random 256-bit cookies (Max-Age 8 h), kept only as hashes, at most 32
//!   at once (the oldest goes first). A session ends 30 minutes after its last request or 8
//!   hours after it signed in, whichever is first; its cookie then gets 401 "session expired;
//!   sign in again".
//! - **Host check**, against DNS rebinding (a page elsewhere whose name the attacker points
//!   at the device, so the browser treats the device as that page's own site): a request is
//!   served only if its Host is an IP address (with or without a port), `localhost`, or a
//!   name listed in `[local_ui] hosts`; otherwise 421, and nothing else is done.
//!
//! **HTTPS** (`[local_ui] tls = true`): TLS 1.2 and 1.3 (rustls with ring) with the device's
//! own self-signed certificate ([`certificate`]), made on the device and never replaced
//! without `ferryd local-ui-cert --new`. The browser warns that it does not know the
//! certificate; the technician compares the SHA-256 fingerprint it shows with the one
//! `ferryd status` (or `ferryd local-ui-cert`) prints on the device, over a serial console or
//! the device's screen, before typing the password. Without TLS, anyone on the access point
//! can read the password and the session cookie off the air (unless the access point's own
//! encryption is trusted).
//!
//! The upload is applied by `ferryd apply -` in a child process, with the body streamed into
//! its stdin: the page never holds a bundle, applies one at a time, and a refusal is the same
//! as on the command line. Once the upload is in, the install runs to its end even if the
//! browser goes away. With `[local_ui] user` the page drops root once it listens (and has read
//! its password and certificate) and streams uploads to `ferryd apply-server` on
//! `[local_ui] apply_socket` instead, which runs that child as root ([`apply`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HOST;
use hyper::{Method, Request, Response, StatusCode};

use crate::config::Config;

mod apply;
pub mod certificate;
mod guard;
mod sessions;

pub use apply::serve as apply_server;

use guard::{check_password, Attempts, Via};
use sessions::{authorize, cookie_tokens, offered, Sessions};

const PAGE: &str = include_str!("local_ui.html");
const COOKIE: &str = "ferry_session";
/// Sessions kept at once; the oldest is dropped first.
const MAX_SESSIONS: usize = 32;
/// A session ends this long after its last request...
const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// ...or this long after it signed in, whichever comes first.
const SESSION_MAX: Duration = Duration::from_secs(8 * 3600);
/// Most connections served at once, from all clients and from one client address.
const MAX_CONNECTIONS: usize = 64;
const MAX_PER_PEER: usize = 8;
/// A connection that sends no request head for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Over HTTPS, a connection whose TLS handshake is not done this long after it was accepted
/// is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Password comparisons are at least this far apart, over all connections.
const ATTEMPT_SPACING: Duration = Duration::from_secs(1);
/// An attempt whose slot is further away than this is refused at once.
const MAX_ATTEMPT_WAIT: Duration = Duration::from_secs(10);
/// Wrong passwords in a row before a lockout.
const LOCKOUT_AFTER: u32 = 10;
/// The first lockout's length; each next one (without a right password between) doubles,
/// up to `LOCKOUT_MAX`.
const LOCKOUT_FIRST: Duration = Duration::from_secs(60);
const LOCKOUT_MAX: Duration = Duration::from_secs(15 * 60);

struct Shared {
    config: Config,
    config_path: PathBuf,
    password: blake3::Hash,
    /// Names the page answers to besides IP addresses and `localhost` (`[local_ui] hosts`).
    hosts: Vec<String>,
    /// Served over HTTPS: the session cookie is `Secure`.
    tls: bool,
    /// The certificate's SHA-256 fingerprint, read at the start (its file, which holds the
    /// key, is root's alone).
    fingerprint: Option<String>,
    sessions: Mutex<Sessions>,
    attempts: Mutex<Attempts>,
    /// Held while a bundle is applied (until `ferryd apply` exits): one at a time.
    applying: Arc<tokio::sync::Mutex<()>>,
    /// Connections served at once; more are closed at once.
    connections: Arc<tokio::sync::Semaphore>,
    /// Connections open per client address (an address with none has no entry).
    peers: Mutex<HashMap<IpAddr, usize>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("config_path", &self.config_path).finish_non_exhaustive()
    }
}

/// Locks a mutex, also after a panic elsewhere (every update to what it guards is one step).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves the page on `listen` until the process is stopped; `on_bound` gets its URL
/// (`http://ADDR` or `https://ADDR`). With `[local_ui] tls = true`, the device certificate
/// is made first if there is none, and a damaged one is an error before anything listens.
pub async fn serve(
    config_path: PathBuf,
    config: Config,
    listen: SocketAddr,
    on_bound: impl FnOnce(&str),
) -> Result<()> {
    let local_ui = config
        .local_ui
        .as_ref()
        .ok_or_else(|| anyhow!("the configuration has no [local_ui] section with a password or password_file"))?;
    let password = local_ui.password()?;
    let run_as = local_ui.user.clone();
    let hosts = local_ui.hosts.iter().map(|h| normal_name(h)).collect();
    let mut fingerprint = None;
    let tls = if local_ui.tls {
        let (cert, _) = certificate::ensure(&config, Some(listen.ip()))?;
        fingerprint = Some(cert.fingerprint());
        if !listen.ip().is_unspecified() && !cert.names(listen.ip()) {
            tracing::warn!(
                "local page: the certificate does not name {}, the address it listens on: a browser that trusts \
                 the certificate still warns about the name; add the address to [local_ui] hosts and run \
                 `{} --address {}`",
                listen.ip(),
                certificate::RENEW_COMMAND,
                listen.ip()
            );
        }
        tracing::info!(fingerprint = %cert.fingerprint(), "local page: serving HTTPS with the certificate in {}", cert.path.display());
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(cert.server_config()?)))
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let shared = Arc::new(Shared {
        config,
        config_path,
        password: blake3::hash(password.as_bytes()),
        hosts,
        tls: tls.is_some(),
        fingerprint,
        sessions: Mutex::new(Sessions::default()),
        attempts: Mutex::new(Attempts::new(Instant::now())),
        applying: Arc::new(tokio::sync::Mutex::new(())),
        connections: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
        peers: Mutex::new(HashMap::new()),
    });
    // Root was needed for the port, the password and the certificate; from here the page
    // serves as its own user, and uploads go to the apply server.
    if let Some(user) = &run_as {
        apply::become_user(user)?;
        tracing::info!(user = %user, "local page: serving as {user}, not root");
    }
    on_bound(&format!("{scheme}://{}", listener.local_addr()?));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(per_peer) = PeerPermit::take(&shared, peer.ip().to_canonical()) else {
            tracing::debug!("local page: {MAX_PER_PEER} connections from {peer} already; closing a new one");
            continue;
        };
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            tracing::debug!("local page: {MAX_CONNECTIONS} connections already; closing one from {peer}");
            continue;
        };
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permits = (permit, per_peer);
            let Some(tls) = tls else {
                return connection(shared, stream, peer).await;
            };
            // The permits are held meanwhile: a silent client must not keep a slot for longer.
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(stream)) => connection(shared, stream, peer).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "local page: TLS handshake failed"),
                Err(_) => tracing::debug!(
                    %peer,
                    "local page: TLS handshake not done within {} s; closing",
                    HANDSHAKE_TIMEOUT.as_secs()
                ),
            }
        });
    }
}

/// Serves HTTP/1.1 requests on one connection (plain or TLS) until it ends.
async fn connection<S>(shared: Arc<Shared>, stream: S, peer: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, req, peer).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "connection ended");
    }
}

/// One connection counted against its client's address, until it is dropped.
struct PeerPermit {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl PeerPermit {
    fn take(shared: &Arc<Shared>, ip: IpAddr) -> Option<PeerPermit> {
        let mut peers = lock(&shared.peers);
        let open = peers.entry(ip).or_insert(0);
        if *open >= MAX_PER_PEER {
            return None;
        }
        *open += 1;
        Some(PeerPermit { shared: shared.clone(), ip })
    }
}

impl Drop for PeerPermit {
    fn drop(&mut self) {
        let mut peers = lock(&self.shared.peers);
        if let Some(open) = peers.get_mut(&self.ip) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                peers.remove(&self.ip);
            }
        }
    }
}

/// A Host name as compared: lower case, without a trailing dot.
fn normal_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Whether a Host header names this device: an IP address (with or without a port),
/// `localhost`, or one of `names` (already normal). A name the attacker controls in DNS
/// (rebinding) is none of these.
fn host_allowed(host: &str, names: &[String]) -> bool {
    let is_port = |p: &str| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = host.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else { return false };
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(is_port);
        return port_ok && inside.parse::<Ipv6Addr>().is_ok();
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if is_port(port) => name,
        Some(_) => return false,
        None => host,
    };
    if name.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    let name = normal_name(name);
    name == "localhost" || names.contains(&name)
}

/// The cookie attribute that keeps a cookie set over HTTPS off plain HTTP.
fn secure(shared: &Shared) -> &'static str {
    if shared.tls {
        "; Secure"
    } else {
        ""
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert("content-type", content_type.parse().expect("a valid header value"));
    h.insert("cache-control", "no-store".parse().expect("a valid header value"));
    h.insert("x-frame-options", "DENY".parse().expect("a valid header value"));
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", serde_json::to_vec(v).unwrap_or_default())
}

fn error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "ok": false, "error": msg }))
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    match req.headers().get(HOST).map(|v| v.to_str()) {
        None => return error(StatusCode::BAD_REQUEST, "the request has no Host header"),
        Some(Ok(host)) if host_allowed(host, &shared.hosts) => {}
        Some(host) => {
            let host = host.unwrap_or("(not text)");
            tracing::debug!("local page: refused Host {host:?} from {peer}");
            return error(
                StatusCode::MISDIRECTED_REQUEST,
                &format!(
                    "this device does not answer to the name {host:?}: open the page by its IP address, \
                     or add the name to [local_ui] hosts in ferryd's configuration"
                ),
            );
        }
    }
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (method.clone(), path.as_str()) {
        (Method::GET, "/") => reply(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        (Method::POST, "/login") => login(shared, req, peer).await,
        (Method::POST, "/logout") => {
            let tokens = cookie_tokens(&req);
            let mut sessions = lock(&shared.sessions);
            for token in &tokens {
                sessions.remove(token);
            }
            let mut r = json(StatusCode::OK, &serde_json::json!({ "ok": true }));
            r.headers_mut().insert(
                "set-cookie",
                format!("{COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict{}", secure(shared))
                    .parse()
                    .expect("a valid cookie"),
            );
            r
        }
        (Method::GET, "/status.json") | (Method::POST, "/apply") => {
            let (bearer, tokens) = offered(&req);
            if let Err(refusal) = authorize(shared, bearer, tokens, peer).await {
                return refusal;
            }
            if method == Method::POST {
                return apply(shared, req).await;
            }
            match crate::status::status_with_certificate(&shared.config, shared.fingerprint.clone()) {
                Ok(s) => json(StatusCode::OK, &serde_json::json!({ "ok": true, "status": s })),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}")),
            }
        }
        (_, "/" | "/login" | "/logout" | "/status.json" | "/apply") => {
            error(StatusCode::METHOD_NOT_ALLOWED, &format!("{method} is not allowed on {path}"))
        }
        _ => error(StatusCode::NOT_FOUND, &format!("no page {path}")),
    }
}

/// Reads a small body (at most `max` bytes).
async fn small_body(req: Request<Incoming>, max: usize) -> Result<Bytes, String> {
    let read = async {
        let mut out = Vec::new();
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("reading the request: {e}"))?;
            if let Some(data) = frame.data_ref() {
                if out.len() + data.len() > max {
                    return Err(format!("the request body is larger than {max} bytes"));
                }
                out.extend_from_slice(data);
            }
        }
        Ok(out.into())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| Err("the request body did not arrive within 10 seconds".into()))
}

async fn login(shared: &Arc<Shared>, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    // A form on another site cannot send JSON without the browser asking first.
    let json_body = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "sign in with a JSON body (content-type: application/json)");
    }
    let body = match small_body(req, 4096).await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    #[derive(serde::Deserialize)]
    struct Login {
        password: String,
    }
    let given = match serde_json::from_slice::<Login>(&body) {
        Ok(l) => blake3::hash(l.password.as_bytes()),
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("expected {{\"password\": \"...\"}}: {e}")),
    };
    if let Err(refusal) = check_password(shared, given, peer, Via::SignIn).await {
        return refusal;
    }
    let mut raw = [0u8; 32];
    if getrandom::getrandom(&mut raw).is_err() {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "no randomness for a session");
    }
    let token = hex::encode(raw);
    lock(&shared.sessions).add(blake3::hash(token.as_bytes()), Instant::now());
    let mut r = json(StatusCode::OK, &serde_json::json!({ "ok": true }));
    r.headers_mut().insert(
        "set-cookie",
        format!(
            "{COOKIE}={token}; Max-Age={}; Path=/; HttpOnly; SameSite=Strict{}",
            SESSION_MAX.as_secs(),
            secure(shared)
        )
        .parse()
        .expect("a valid cookie"),
    );
    r
}

async fn apply(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    // A page on another site cannot set this header without the browser asking us first.
    if req.headers().get("x-ferry-upload").and_then(|v| v.to_str().ok()) != Some("1") {
        return error(StatusCode::BAD_REQUEST, "uploads must carry the header X-Ferry-Upload: 1");
    }
    let Ok(busy) = shared.applying.clone().try_lock_owned() else {
        return error(StatusCode::CONFLICT, "another bundle is being applied; wait for it to finish");
    };
    let body = FromBody(req.into_body());
    let outcome = match shared.config.local_ui.as_ref().and_then(|l| l.apply_socket.as_ref()) {
        Some(socket) => {
            let outcome = apply::via_socket(socket, body).await;
            drop(busy);
            outcome
        }
        None => apply::install(&shared.config_path, body, busy).await,
    };
    match outcome.result {
        Ok(summary) => {
            tracing::info!(bytes = outcome.bytes, to = %summary["to"], "local page: applied a bundle");
            json(StatusCode::OK, &serde_json::json!({ "ok": true, "summary": summary }))
        }
        Err(message) => {
            tracing::warn!(bytes = outcome.bytes, error = %message, "local page: a bundle was not applied");
            error(StatusCode::UNPROCESSABLE_ENTITY, &message)
        }
    }
}

/// A request's body as an upload.
struct FromBody(Incoming);

impl apply::Upload for FromBody {
    async fn piece(&mut self) -> Option<Result<Bytes, String>> {
        loop {
            match self.0.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        return Some(Ok(data));
                    }
                }
                Err(e) => return Some(Err(e.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The Host check; the time rules are tested beside them (`guard`, `sessions`), and the
    //! attacks themselves run against the real `ferryd local-ui` in `tests/it/local_ui.rs`.

    use super::*;

    #[test]
    fn host_must_be_an_address_localhost_or_a_configured_name() {
        let names = vec![normal_name("Setup.Local")];
        for ok in [
            "127.0.0.1",
            "192.168.4.1:80",
            "[::1]",
            "[fe80::1]:8080",
            "localhost",
            "LOCALHOST:80",
            "setup.local",
            "setup.local.:80",
        ] {
            assert!(host_allowed(ok, &names), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:80",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "",
            ":80",
            "[::1",
            "[::1]x",
            "127.0.0.1:x",
            "setup.local:99999999",
        ] {
            assert!(!host_allowed(bad, &names), "{bad}");
        }
    }
}
