//! `ferryd local-ui`: the small web page a technician opens on the device's own access point
//! to see what it runs and install an offline bundle, with no internet.
//!
//! Routes (HTTP/1.1, hyper; every page but the sign-in needs a session):
//!
//! ```text
//! GET  /              the page (sign-in form until signed in)
//! POST /login         {"password": "..."} (application/json) -> a session cookie
//!                     (HttpOnly, SameSite=Strict)
//! POST /logout
//! GET  /status.json   what `ferryd status --json` prints
//! POST /apply         the bundle as the raw body (header X-Ferry-Upload: 1); the answer is
//!                     {"ok": true, "summary": {...}} or {"ok": false, "error": "..."}
//! ```
//!
//! Scripts may send `Authorization: Bearer <password>` instead of signing in. The password
//! is the device's own (`[local_ui] password` or `password_file`), compared in constant
//! time; a wrong one, signing in or as a bearer, costs a second, one at a time across all
//! connections (at most 64 are served at once). The upload is applied by `ferryd apply -` in a child
//! process, with the body streamed into its stdin: the page never holds a bundle, applies
//! one at a time, and a refusal is the same as on the command line. Once the upload is in,
//! the install runs to its end even if the browser goes away.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::AsyncWriteExt;

use crate::config::Config;

const PAGE: &str = include_str!("local_ui.html");
/// Sessions kept at once; the oldest is dropped first.
const MAX_SESSIONS: usize = 32;
const COOKIE: &str = "ferry_session";

struct Shared {
    config: Config,
    config_path: PathBuf,
    password: blake3::Hash,
    sessions: Mutex<VecDeque<String>>,
    /// Held while a bundle is applied (until `ferryd apply` exits): one at a time.
    applying: Arc<tokio::sync::Mutex<()>>,
    /// Held for a second after each wrong password, by sign-ins and bearer requests alike:
    /// at most one guess a second, however many connections ask.
    failures: tokio::sync::Mutex<()>,
    /// Connections served at once; more are closed at once.
    connections: Arc<tokio::sync::Semaphore>,
}

/// Most connections served at once.
const MAX_CONNECTIONS: usize = 64;

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("config_path", &self.config_path).finish_non_exhaustive()
    }
}

/// Serves the page on `listen` until the process is stopped; `on_bound` gets the address.
pub async fn serve(
    config_path: PathBuf,
    config: Config,
    listen: SocketAddr,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<()> {
    let password = config
        .local_ui
        .as_ref()
        .ok_or_else(|| anyhow!("the configuration has no [local_ui] section with a password or password_file"))?
        .password()?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    on_bound(listener.local_addr()?);
    let shared = Arc::new(Shared {
        config,
        config_path,
        password: blake3::hash(password.as_bytes()),
        sessions: Mutex::new(VecDeque::new()),
        applying: Arc::new(tokio::sync::Mutex::new(())),
        failures: tokio::sync::Mutex::new(()),
        connections: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
    });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "local page: too many connections; closing one");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
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

/// Compares two hashes without an early exit.
fn same(a: &blake3::Hash, b: &blake3::Hash) -> bool {
    a.as_bytes().iter().zip(b.as_bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Waits out a wrong password: one guess a second across all connections.
async fn wrong_password(shared: &Shared) {
    let _one_at_a_time = shared.failures.lock().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// `Some(true)`: signed in (session or right bearer password); `Some(false)`: a wrong bearer
/// password; `None`: no credentials.
fn credentials(shared: &Shared, req: &Request<Incoming>) -> Option<bool> {
    let headers = req.headers();
    if let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        if let Some(given) = auth.strip_prefix("Bearer ") {
            return Some(same(&blake3::hash(given.as_bytes()), &shared.password));
        }
    }
    let cookies = headers.get("cookie").and_then(|v| v.to_str().ok())?;
    let sessions = shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
    let known = cookies
        .split(';')
        .filter_map(|c| c.trim().strip_prefix(COOKIE).and_then(|v| v.strip_prefix('=')))
        .any(|v| sessions.iter().any(|s| same(&blake3::hash(s.as_bytes()), &blake3::hash(v.as_bytes()))));
    known.then_some(true)
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (method.clone(), path.as_str()) {
        (Method::GET, "/") => reply(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        (Method::POST, "/login") => login(shared, req).await,
        (Method::POST, "/logout") => {
            if let Some(c) = req.headers().get("cookie").and_then(|v| v.to_str().ok()) {
                let mut sessions = shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
                sessions.retain(|s| !c.contains(s.as_str()));
            }
            let mut r = json(StatusCode::OK, &serde_json::json!({ "ok": true }));
            r.headers_mut().insert(
                "set-cookie",
                format!("{COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict").parse().expect("a valid cookie"),
            );
            r
        }
        (_, "/status.json" | "/apply") if credentials(shared, &req) != Some(true) => {
            if credentials(shared, &req) == Some(false) {
                wrong_password(shared).await;
                tracing::warn!("local page: a wrong bearer password");
                return error(StatusCode::UNAUTHORIZED, "wrong password");
            }
            error(StatusCode::UNAUTHORIZED, "sign in first (or send Authorization: Bearer <password>)")
        }
        (Method::GET, "/status.json") => match crate::status::status(&shared.config) {
            Ok(s) => json(StatusCode::OK, &serde_json::json!({ "ok": true, "status": s })),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}")),
        },
        (Method::POST, "/apply") => apply(shared, req).await,
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

/// Reads a child's output to its end, keeping the first `cap` bytes.
async fn read_capped(r: Option<impl tokio::io::AsyncRead + Unpin>, cap: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let Some(mut r) = r else { return Vec::new() };
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = cap.saturating_sub(out.len());
        out.extend_from_slice(&buf[..n.min(room)]);
    }
    out
}

async fn login(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
        Ok(l) => l.password,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("expected {{\"password\": \"...\"}}: {e}")),
    };
    if !same(&blake3::hash(given.as_bytes()), &shared.password) {
        // Slows guessing down; the page is on a local network anyone nearby can join.
        wrong_password(shared).await;
        tracing::warn!("local page: a wrong password");
        return error(StatusCode::UNAUTHORIZED, "wrong password");
    }
    let mut raw = [0u8; 32];
    if getrandom::getrandom(&mut raw).is_err() {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "no randomness for a session");
    }
    let token = hex::encode(raw);
    {
        let mut sessions = shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.len() >= MAX_SESSIONS {
            sessions.pop_front();
        }
        sessions.push_back(token.clone());
    }
    let mut r = json(StatusCode::OK, &serde_json::json!({ "ok": true }));
    r.headers_mut().insert(
        "set-cookie",
        format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict").parse().expect("a valid cookie"),
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
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("finding ferryd itself: {e}")),
    };
    let child = tokio::process::Command::new(exe)
        .arg("--config")
        .arg(&shared.config_path)
        .args(["apply", "-", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("starting ferryd apply: {e}")),
    };
    let mut stdin = child.stdin.take();
    // Read while the upload streams: a child blocked on a full pipe would never read on.
    let stdout = tokio::spawn(read_capped(child.stdout.take(), 1 << 20));
    let stderr = tokio::spawn(read_capped(child.stderr.take(), 1 << 20));
    let mut body = req.into_body();
    let mut received = 0u64;
    let mut upload_error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    received += data.len() as u64;
                    // A refusal ends the child early; the rest of the upload is read and dropped.
                    if let Some(pipe) = stdin.as_mut() {
                        if pipe.write_all(data).await.is_err() {
                            stdin = None;
                        }
                    }
                }
            }
            Err(e) => {
                upload_error = Some(format!("the upload broke off after {received} bytes: {e}"));
                break;
            }
        }
    }
    drop(stdin);
    // From here the install goes on whether or not the browser waits for it (a closed tab
    // must not kill it in the middle of its switch or trial); the lock goes when it ends.
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let status = child.wait().await;
        let (out, err) = (stdout.await.unwrap_or_default(), stderr.await.unwrap_or_default());
        drop(busy);
        let _ = tx.send((status, out, err));
    });
    let Ok((status, out, err)) = rx.await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "lost track of ferryd apply");
    };
    let status = match status {
        Ok(s) => s,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("waiting for ferryd apply: {e}")),
    };
    let stderr = String::from_utf8_lossy(&err);
    if status.success() {
        let summary: serde_json::Value = serde_json::from_slice(&out).unwrap_or(serde_json::Value::Null);
        tracing::info!(bytes = received, to = %summary["to"], "local page: applied a bundle");
        return json(StatusCode::OK, &serde_json::json!({ "ok": true, "summary": summary }));
    }
    let message = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .map(str::to_string)
        .or(upload_error)
        .unwrap_or_else(|| format!("ferryd apply failed ({status})"));
    tracing::warn!(bytes = received, error = %message, "local page: a bundle was not applied");
    error(StatusCode::UNPROCESSABLE_ENTITY, &message)
}
