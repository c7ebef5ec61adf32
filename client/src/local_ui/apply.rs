//! Installing an uploaded bundle: by `ferryd apply -` in a child process, the upload streamed
//! into its stdin, one at a time. The page does it itself when it runs as root; with
//! `[local_ui] user` it runs as that user and hands the upload to `ferryd apply-server`
//! ([`serve`]), a root process listening on `[local_ui] apply_socket`, which installs it the
//! same way.
//!
//! The socket's protocol: the client sends the bundle in frames (a 4-byte big-endian length,
//! then that many bytes; at most [`MAX_FRAME`]) ending in an empty frame, and shuts its side
//! down; an upload whose stream ends without that empty frame broke off, and is not installed
//! however much of it came. The server answers one line of JSON, `{"ok": true, "summary": {...}}` or `{"ok": false,
//! "error": "..."}`, and closes. Only root and the page's user may connect (the socket is
//! 0660, owned by root and the user's group, and each peer's uid is checked); one upload is
//! installed at a time (another is answered "busy" at once); an upload that stops arriving
//! for [`UPLOAD_STALL`] is abandoned; once it is in, the install runs to its end whether or
//! not the client waits.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Config;

/// An upload that stops arriving for this long is abandoned.
pub(super) const UPLOAD_STALL: Duration = Duration::from_secs(20);
/// The longest answer read from `ferryd apply` or the apply server.
const MAX_ANSWER: usize = 1 << 20;
/// How long the page waits for the apply server to answer once the upload is in: an install
/// is bounded by its own timeouts (the trial's deadline among them), well within this.
const ANSWER_WAIT: Duration = Duration::from_secs(6 * 3600);
/// The largest frame of an upload on the socket.
const MAX_FRAME: usize = 16 << 20;
/// How long a refused stranger's bytes are read (and a busy answer's, for root or the page).
const STRANGER_DRAIN: Duration = Duration::from_secs(2);
const BUSY_DRAIN: Duration = Duration::from_secs(60);
/// Connections the apply server serves at once (one installs; the others are told it is busy).
const MAX_CLIENTS: usize = 4;

/// Where an upload's bytes come from, a piece at a time: `None` at its end.
pub(super) trait Upload {
    async fn piece(&mut self) -> Option<Result<Bytes, String>>;
}

/// How an install ended, and the upload's size.
pub(super) struct Outcome {
    pub result: std::result::Result<serde_json::Value, String>,
    pub bytes: u64,
}

impl Outcome {
    fn failed(error: impl Into<String>, bytes: u64) -> Outcome {
        Outcome { result: Err(error.into()), bytes }
    }

    /// The socket's answer line.
    fn line(&self) -> Vec<u8> {
        let v = match &self.result {
            Ok(summary) => serde_json::json!({ "ok": true, "summary": summary }),
            Err(e) => serde_json::json!({ "ok": false, "error": e }),
        };
        let mut out = serde_json::to_vec(&v).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// Streams `upload` into `ferryd --config CONFIG apply - --json` and waits for it. `busy` (the
/// one-at-a-time lock) is released when the child ends, even if the caller stops waiting.
pub(super) async fn install(
    config_path: &Path,
    mut upload: impl Upload,
    busy: tokio::sync::OwnedMutexGuard<()>,
) -> Outcome {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return Outcome::failed(format!("finding ferryd itself: {e}"), 0),
    };
    let child = tokio::process::Command::new(exe)
        .arg("--config")
        .arg(config_path)
        .args(["apply", "-", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Outcome::failed(format!("starting ferryd apply: {e}"), 0),
    };
    let stdin = child.stdin.take();
    // Read while the upload streams: a child blocked on a full pipe would never read on.
    let stdout = tokio::spawn(read_capped(child.stdout.take(), MAX_ANSWER));
    let stderr = tokio::spawn(read_capped(child.stderr.take(), MAX_ANSWER));
    // A refusal ends the child early; the rest of the upload is read and dropped.
    let (received, upload_error, stdin) = pump(&mut upload, stdin).await;
    if upload_error.is_some() {
        // What came may end where a bundle could: the child must not see it as the whole.
        let _ = child.start_kill();
    }
    drop(stdin);
    // From here the install goes on whether or not anyone waits for it (a closed tab must not
    // kill it in the middle of its switch or trial); the lock goes when it ends.
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let status = child.wait().await;
        let (out, err) = (stdout.await.unwrap_or_default(), stderr.await.unwrap_or_default());
        drop(busy);
        let _ = tx.send((status, out, err));
    });
    let Ok((status, out, err)) = rx.await else {
        return Outcome::failed("lost track of ferryd apply", received);
    };
    let status = match status {
        Ok(s) => s,
        Err(e) => return Outcome::failed(format!("waiting for ferryd apply: {e}"), received),
    };
    if status.success() {
        let summary = serde_json::from_slice(&out).unwrap_or(serde_json::Value::Null);
        return Outcome { result: Ok(summary), bytes: received };
    }
    let message = String::from_utf8_lossy(&err)
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .map(str::to_string)
        .or(upload_error)
        .unwrap_or_else(|| format!("ferryd apply failed ({status})"));
    Outcome::failed(message, received)
}

/// Reads `upload` to its end, writing each piece to `to` until a write fails (then the rest is
/// read and dropped): the bytes read, why the upload itself failed (broke off, or stalled for
/// [`UPLOAD_STALL`]), and `to` if every write went through.
async fn pump<W: tokio::io::AsyncWrite + Unpin>(
    upload: &mut impl Upload,
    mut to: Option<W>,
) -> (u64, Option<String>, Option<W>) {
    let mut received = 0u64;
    loop {
        match tokio::time::timeout(UPLOAD_STALL, upload.piece()).await {
            Ok(None) => return (received, None, to),
            Ok(Some(Ok(data))) => {
                received += data.len() as u64;
                if let Some(w) = to.as_mut() {
                    if w.write_all(&data).await.is_err() {
                        to = None;
                    }
                }
            }
            Ok(Some(Err(e))) => {
                return (received, Some(format!("the upload broke off after {received} bytes: {e}")), to)
            }
            Err(_) => {
                let why =
                    format!("the upload stopped arriving for {} s after {received} bytes", UPLOAD_STALL.as_secs());
                return (received, Some(why), to);
            }
        }
    }
}

/// The page's side: streams `upload` to the apply server at `socket` and reads its answer.
pub(super) async fn via_socket(socket: &Path, mut upload: impl Upload) -> Outcome {
    let connected = tokio::time::timeout(Duration::from_secs(5), tokio::net::UnixStream::connect(socket)).await;
    let stream = match connected {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Outcome::failed(
                format!("the installer (`ferryd apply-server`) is not reachable at {}: {e}", socket.display()),
                0,
            )
        }
        Err(_) => return Outcome::failed(format!("the installer at {} did not answer", socket.display()), 0),
    };
    let (mut from, to) = stream.into_split();
    // The server refused (busy, or the bundle) and closed: the rest is read and dropped.
    let mut framed = Framed { upload: &mut upload, received: 0, ended: false };
    let (_, upload_error, to) = pump(&mut framed, Some(to)).await;
    let received = framed.received;
    if let Some(e) = upload_error {
        // No empty frame was sent: the server takes what came as broken off.
        drop(to);
        drop(from);
        return Outcome::failed(e, received);
    }
    if let Some(mut to) = to {
        let _ = to.shutdown().await;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(ANSWER_WAIT, (&mut from).take(MAX_ANSWER as u64).read_to_end(&mut answer)).await;
    if !matches!(read, Ok(Ok(_))) {
        return Outcome::failed("the installer did not answer", received);
    }
    let v: serde_json::Value = match serde_json::from_slice(&answer) {
        Ok(v) => v,
        Err(_) => return Outcome::failed("the installer's answer could not be read", received),
    };
    match (v["ok"].as_bool(), v["error"].as_str()) {
        (Some(true), _) => Outcome { result: Ok(v["summary"].clone()), bytes: received },
        (_, Some(e)) => Outcome::failed(e, received),
        _ => Outcome::failed("the installer's answer could not be read", received),
    }
}

/// An upload as the socket's frames: each piece behind its length, then an empty frame.
struct Framed<'a, U> {
    upload: &'a mut U,
    /// The upload's own bytes, without the frames' lengths.
    received: u64,
    ended: bool,
}

impl<U: Upload> Upload for Framed<'_, U> {
    async fn piece(&mut self) -> Option<Result<Bytes, String>> {
        if self.ended {
            return None;
        }
        loop {
            return match self.upload.piece().await {
                None => {
                    self.ended = true;
                    Some(Ok(Bytes::from_static(&[0; 4])))
                }
                // An empty piece would read as the end.
                Some(Ok(data)) if data.is_empty() => continue,
                Some(Ok(data)) => {
                    self.received += data.len() as u64;
                    let mut frames = Vec::with_capacity(data.len() + 8);
                    for part in data.chunks(MAX_FRAME) {
                        frames.extend_from_slice(&(part.len() as u32).to_be_bytes());
                        frames.extend_from_slice(part);
                    }
                    Some(Ok(frames.into()))
                }
                Some(Err(e)) => Some(Err(e)),
            };
        }
    }
}

/// A socket connection's frames as an [`Upload`]: its end is the empty frame; a stream that
/// ends before it, or a frame over [`MAX_FRAME`], is an error.
struct FromSocket<R>(R);

impl<R: tokio::io::AsyncRead + Unpin> Upload for FromSocket<R> {
    async fn piece(&mut self) -> Option<Result<Bytes, String>> {
        let mut len = [0u8; 4];
        if let Err(e) = self.0.read_exact(&mut len).await {
            return Some(Err(format!("the upload ended before its last frame: {e}")));
        }
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 {
            return None;
        }
        if len > MAX_FRAME {
            return Some(Err(format!("a frame of {len} bytes, over {MAX_FRAME}")));
        }
        let mut buf = vec![0u8; len];
        match self.0.read_exact(&mut buf).await {
            Ok(_) => Some(Ok(buf.into())),
            Err(e) => Some(Err(format!("the upload ended inside a frame: {e}"))),
        }
    }
}

/// `ferryd apply-server`: installs what the page (running as `[local_ui] user`) uploads, on
/// `[local_ui] apply_socket`, until the process is stopped. Runs as root. `on_ready` is called
/// once the socket listens.
pub async fn serve(config_path: PathBuf, config: Config, on_ready: impl FnOnce(&Path)) -> Result<()> {
    let local_ui = config.local_ui.as_ref().ok_or_else(|| anyhow!("the configuration has no [local_ui] section"))?;
    let socket = local_ui
        .apply_socket
        .clone()
        .ok_or_else(|| anyhow!("[local_ui] apply_socket is not set: it names the socket this server listens on"))?;
    // The page's user: the socket's group, and the one uid besides root that may connect.
    let user = match &local_ui.user {
        Some(name) => Some(
            nix::unistd::User::from_name(name)
                .with_context(|| format!("looking up the user {name}"))?
                .ok_or_else(|| anyhow!("[local_ui] user {name} does not exist on this system"))?,
        ),
        None => None,
    };
    if user.as_ref().is_some_and(|u| u.uid.is_root()) {
        bail!("[local_ui] user has uid 0: the page would keep root");
    }
    // Root changes the socket's mode and owner by its path: no one else may be able to swap
    // what is there, so its directory must be root's and writable by root alone.
    if let Some(dir) = socket.parent() {
        use std::os::unix::fs::MetadataExt;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let m = std::fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
        if !m.is_dir() || m.uid() != 0 || m.mode() & 0o022 != 0 {
            bail!(
                "{} must be a directory owned by root and writable by root alone, to hold the installer's socket",
                dir.display()
            );
        }
    }
    // A socket left by an earlier run (a crash leaves it) is replaced; anything else there is
    // not ours to remove.
    match std::fs::symlink_metadata(&socket) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => std::fs::remove_file(&socket)?,
        Ok(_) => bail!("{} exists and is not a socket; refusing to replace it", socket.display()),
        Err(_) => {}
    }
    let listener =
        tokio::net::UnixListener::bind(&socket).with_context(|| format!("listening on {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(if user.is_some() { 0o660 } else { 0o600 }))?;
    if let Some(u) = &user {
        nix::unistd::chown(&socket, None, Some(u.gid))
            .with_context(|| format!("giving {} to {}", socket.display(), u.name))?;
    }
    tracing::info!(socket = %socket.display(), user = ?local_ui.user, "apply server: listening for the local page's uploads");
    on_ready(&socket);
    let allowed = user.as_ref().map(|u| u.uid.as_raw());
    let busy = Arc::new(tokio::sync::Mutex::new(()));
    let clients = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    let strangers = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "apply server: accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Strangers first, before they can hold one of the slots the page needs.
        let uid = stream.peer_cred().map(|c| c.uid()).ok();
        if !uid.is_some_and(|uid| uid == 0 || Some(uid) == allowed) {
            tracing::warn!(?uid, "apply server: refused a connection from a user that is neither root nor the page's");
            let Ok(permit) = strangers.clone().try_acquire_owned() else { continue };
            let refusal = Outcome::failed("only root and the local page's user may install through this socket", 0);
            tokio::spawn(refuse(stream, refusal, permit, STRANGER_DRAIN));
            continue;
        }
        let Ok(permit) = clients.clone().try_acquire_owned() else {
            tracing::debug!("apply server: {MAX_CLIENTS} connections already; closing one");
            continue;
        };
        let (busy, config_path) = (busy.clone(), config_path.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let outcome = match busy.try_lock_owned() {
                Ok(guard) => {
                    let (mut from, to) = stream.into_split();
                    let outcome = install(&config_path, FromSocket(&mut from), guard).await;
                    match &outcome.result {
                        Ok(s) => tracing::info!(bytes = outcome.bytes, to = %s["to"], "apply server: applied a bundle"),
                        Err(e) => {
                            tracing::warn!(bytes = outcome.bytes, error = %e, "apply server: a bundle was not applied")
                        }
                    }
                    // A refused upload may leave bytes unread: answer, then read them.
                    if let Ok(stream) = from.reunite(to) {
                        answer_and_drain(stream, &outcome, BUSY_DRAIN).await;
                    }
                    return;
                }
                Err(_) => Outcome::failed("another bundle is being applied; wait for it to finish", 0),
            };
            refuse(stream, outcome, _permit, BUSY_DRAIN).await;
        });
    }
}

/// Answers a connection that will not be served, then reads what the client still sends
/// until it is done, each read within [`UPLOAD_STALL`] and all within `total`: a socket
/// closed with unread bytes resets the connection, and the client would never read the
/// answer.
async fn refuse(
    stream: tokio::net::UnixStream,
    answer: Outcome,
    permit: tokio::sync::OwnedSemaphorePermit,
    total: Duration,
) {
    let _permit = permit;
    answer_and_drain(stream, &answer, total).await;
}

/// Writes `answer`, shuts the writing side, and reads what the client still sends until it
/// is done, each read within [`UPLOAD_STALL`] and all within `total`.
async fn answer_and_drain(mut stream: tokio::net::UnixStream, answer: &Outcome, total: Duration) {
    if stream.write_all(&answer.line()).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let drain = async {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(Ok(n)) = tokio::time::timeout(UPLOAD_STALL, stream.read(&mut buf)).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(total, drain).await;
}

/// Reads a child's output to its end, keeping the first `cap` bytes.
pub(super) async fn read_capped(r: Option<impl tokio::io::AsyncRead + Unpin>, cap: usize) -> Vec<u8> {
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

/// Drops root for `user` (its uid, its group, no other groups), for good; a process already
/// running as that user keeps running.
pub(super) fn become_user(name: &str) -> Result<()> {
    let u = nix::unistd::User::from_name(name)
        .with_context(|| format!("looking up the user {name}"))?
        .ok_or_else(|| anyhow!("[local_ui] user {name} does not exist on this system"))?;
    if u.uid.is_root() {
        bail!("[local_ui] user {name} has uid 0: the page would keep root");
    }
    let ids = nix::unistd::getresuid().context("reading this process's user ids")?;
    if [ids.real, ids.effective, ids.saved].iter().all(|id| *id == u.uid) {
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "[local_ui] user {name}: the page must start as root (to read its password and certificate) or as {name}"
        );
    }
    nix::unistd::setgroups(&[u.gid]).context("dropping supplementary groups")?;
    nix::unistd::setgid(u.gid).with_context(|| format!("becoming group {}", u.gid))?;
    nix::unistd::setuid(u.uid).with_context(|| format!("becoming user {name}"))?;
    // Root must not come back: setuid to a non-root uid from root drops the saved uid too.
    if nix::unistd::setuid(nix::unistd::Uid::from_raw(0)).is_ok() {
        bail!("the page could take root back after dropping it; refusing to serve");
    }
    Ok(())
}
