//! The connections under `ferry serve`: accepting them within a cap, serving HTTP/1.1 on each
//! with hyper, and the timeouts that stop a client that goes quiet, or stops reading, from
//! holding the server.
//!
//! What it is for: how many connections, for how long. What it is not for: routes and what
//! they answer (`serve`), or how much work an answer may take (`serve`'s slots).
//!
//! - **Cap**: at most [`Limits::max_connections`] are open, and at most half the file
//!   descriptors the process may open (the rest are RocksDB's, which keeps every table file of
//!   a followed repository open, the patch cache's and the blocking pool's). At the cap the
//!   server stops accepting: new connections wait in the kernel's accept queue
//!   (`LISTEN_BACKLOG` long) and are taken in turn as others close, which the timeouts below
//!   ensure within seconds. They are not refused: a device retrying at once would only come
//!   back to the same queue.
//! - **Header and idle timeout** ([`Limits::header_timeout`]): hyper's header-read timer runs
//!   from the moment a connection waits for a request's first byte until its last header line,
//!   so one value closes a connection that sends nothing, one that sends its headers byte by
//!   byte (slowloris), and a kept-alive connection left idle.
//! - **Body stall timeout** ([`Limits::body_stall`]): a request body that stops arriving for
//!   that long fails the request (400) and closes the connection.
//! - **Write stall timeout** ([`Limits::write_stall`]): a connection whose client reads nothing
//!   for that long (the socket takes no byte) is dropped, mid-answer or not.
//! - **Shutdown**: the server stops accepting; connections between requests (idle, or still
//!   sending a request's head) close at once, requests being answered finish; whatever is
//!   still open after [`SHUTDOWN_GRACE`] is dropped.
//!
//! - **TLS** (`crate::tls`): the handshake must finish within the header timeout; the write
//!   stall watches the socket under it.
//! - **HTTP/2** is served only over TLS, when ALPN chose it (browsers and ferryd over https
//!   do): at most [`H2_STREAMS`] streams at once, a bounded header list, a connection closed
//!   after [`H2_RESETS`] reset streams (rapid reset), pings every header timeout to drop a
//!   dead peer, closed when idle (nothing answered or started) for a header timeout, and
//!   dropped when an answer's frame waits on the client's flow-control window for a write
//!   stall window (a client that answers pings but never opens its window would otherwise
//!   hold its slot for ever) or when a graceful close takes longer than that.
//!   Plain HTTP is HTTP/1.1 only (there is no h2 negotiation without TLS).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::Router;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// The most connections open at once: the accept queue's length, four times the 1000 devices
/// the fleet bench checks in at once. An idle one costs a descriptor and a few KiB; one whose
/// client stopped reading a chunk answer about 200 KiB (`HTTP_BUFFER` and two of `serve`'s
/// steps) until the write stall timeout drops it.
pub const MAX_CONNECTIONS: usize = 4096;

/// From waiting for a request to its last header line: a device's request head is one
/// packet, so 20 s covers many lost-packet retransmissions, and an idle kept-alive connection
/// costs a slot for no longer than that (ferryd opens a new one cheaply).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(20);

/// The window over which a request body must arrive at [`MIN_RATE`]: as long as the write
/// stall below.
pub const BODY_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The window over which a client must read at [`MIN_RATE`] while an answer waits to be
/// written: twice ferryd's own `read_timeout` (30 s), so the server never drops a device that
/// would not have given up itself.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The slowest a request body may arrive, and a client may read an answer the server is
/// waiting to write, averaged over each stall window: a byte now and then (which resets a
/// plain timeout) does not keep a connection, and its slot, for ever. ferryd cuts a server
/// slower than this itself (`ferry_client::http::MIN_RATE`).
pub const MIN_RATE: u64 = 1024;

/// The most connections one client address holds at once, so one machine cannot take every
/// slot; high enough for a site whose devices share one address behind NAT (they hold a
/// connection only while they check or download).
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 256;

/// How long shutdown waits for in-flight requests before dropping them: a batch in progress
/// on a good link finishes, and `ferry serve` stops well within systemd's 90 s.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// HTTP/2 streams one connection may have open at once: ferryd keeps 2 chunk requests in
/// flight, a browser a few; each stream is a request the server's slots bound anyway.
const H2_STREAMS: u32 = 16;

/// The largest HTTP/2 header list a client may send (HTTP/1.1's head is bounded by
/// `HTTP_BUFFER`).
const H2_HEADER_LIST: u32 = 16 * 1024;

/// HTTP/2 streams a client may reset (or cause the server to reset) before the connection
/// is closed: the rapid-reset attack opens and cancels streams faster than they are served.
const H2_RESETS: usize = 32;

/// hyper's read and write buffers per connection (its default is 408 KiB): a request head
/// fits many times over, and the kernel's socket buffer, not this one, keeps a fast link busy;
/// a stalled connection holds this much plus what its answer holds.
const HTTP_BUFFER: usize = 64 * 1024;

/// How long accepting pauses after an error other than a connection's own (out of descriptors
/// or memory), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The cap and timeouts of [`serve`]; [`Limits::default`] holds the constants above.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections open at once (further ones wait in the accept queue).
    pub max_connections: usize,
    /// From waiting for a request to its last header line; also the keep-alive idle timeout.
    pub header_timeout: Duration,
    /// The window over which a request body must arrive at [`MIN_RATE`].
    pub body_stall: Duration,
    /// The window over which a client must read an answer at [`MIN_RATE`].
    pub write_stall: Duration,
    /// Connections one client address may hold at once.
    pub per_address: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
            body_stall: BODY_STALL_TIMEOUT,
            write_stall: WRITE_STALL_TIMEOUT,
            per_address: MAX_CONNECTIONS_PER_ADDRESS,
        }
    }
}

/// What the connection a request arrived on says about its client, put in every request's
/// extensions: routes that care (the admin UI's cookies and HSTS, device authentication by
/// certificate) read it with `Extension<Connection>` or `req.extensions().get()`.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The client's address as the socket saw it.
    pub peer: std::net::SocketAddr,
    /// The request arrived over TLS.
    pub tls: bool,
    /// The SHA-256 of the client certificate the peer presented (verified against
    /// `--client-ca`), if any.
    pub client_certificate: Option<[u8; 32]>,
}

/// Serves `app` on the connections `listener` accepts until `shutdown` resolves, then lets
/// in-flight requests finish (for at most [`SHUTDOWN_GRACE`]).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &Limits,
    tls: Option<crate::tls::Tls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let cap = connection_cap(limits.max_connections);
    tracing::info!(connections = cap, "connection cap");
    let slots = Arc::new(Semaphore::new(cap));
    let app = app.layer(axum::middleware::map_request_with_state(limits.body_stall, stall_request_body));
    // Connections watch this: when the sender is dropped, they shut down gracefully.
    let (stop, stopped) = watch::channel(());
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let per_address = PerAddress::default();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(mine) = per_address.admit(peer.ip(), limits.per_address) else {
            tracing::debug!(%peer, "closing a connection: its address holds as many as it may");
            continue;
        };
        while connections.try_join_next().is_some() {}
        let info = Connection { peer, tls: false, client_certificate: None };
        let acceptor = tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
        connections.spawn(connection(tcp, info, acceptor, app.clone(), limits.clone(), stopped.clone(), (slot, mine)));
    }
    drop(listener);
    drop(stop);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while connections.join_next().await.is_some() {} });
    if drained.await.is_err() {
        tracing::warn!(open = connections.len(), "dropping the connections still open after the shutdown grace");
    }
}

/// The connection cap: `max`, and at most half the descriptors the process may open, after
/// raising its soft limit to the hard one (as Go's runtime does: the soft limit of 1024 is
/// kept low for old `select` users, which this server is not).
fn connection_cap(max: usize) -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return max };
    let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() { hard } else { soft };
    max.min(usize::try_from(soft / 2).unwrap_or(usize::MAX)).max(1)
}

async fn accept_error(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    // A connection reset before it was taken is the client's business.
    if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}

/// One connection until it ends, fails a timeout, or shutdown: over TLS when `tls` is set
/// (the handshake bounded by the header timeout; HTTP/2 when ALPN chose it), HTTP/1.1 with
/// keep-alive otherwise.
async fn connection(
    tcp: TcpStream,
    mut info: Connection,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    limits: Limits,
    stop: watch::Receiver<()>,
    _slot: (OwnedSemaphorePermit, AddressSlot),
) {
    let io = WriteStall::new(tcp, limits.write_stall);
    let Some(acceptor) = tls else {
        return http(TokioIo::new(io), false, info, app, &limits, stop).await;
    };
    let stream = match tokio::time::timeout(limits.header_timeout, acceptor.accept(io)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(peer = %info.peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %info.peer, "TLS handshake not finished within the header timeout");
            return;
        }
    };
    let (_, session) = stream.get_ref();
    let h2 = session.alpn_protocol() == Some(b"h2");
    info.tls = true;
    info.client_certificate = session.peer_certificates().and_then(|c| c.first()).map(|leaf| fingerprint(leaf));
    http(TokioIo::new(stream), h2, info, app, &limits, stop).await
}

/// The SHA-256 of a certificate's DER: what a client certificate is known by.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// HTTP on one connection: HTTP/2 (`h2`, only ever negotiated over TLS) or HTTP/1.1.
async fn http<I>(io: TokioIo<I>, h2: bool, info: Connection, app: Router, limits: &Limits, stop: watch::Receiver<()>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Requests being answered on this connection, until their answer's body is done
    // (HTTP/1.1: 0 or 1): shutdown closes a connection with none at once, and an HTTP/2
    // connection with none for a header timeout is idle.
    let answering = Arc::new(AtomicUsize::new(0));
    // Requests started on this connection, ever: an HTTP/2 connection is idle only if none
    // started since the last look.
    let started = Arc::new(AtomicUsize::new(0));
    let handed = Arc::new(Handed::default());
    let since = tokio::time::Instant::now();
    let service = {
        let (app, answering, started, handed) =
            (TowerToHyperService::new(app), answering.clone(), started.clone(), handed.clone());
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(info.clone());
            started.fetch_add(1, Ordering::SeqCst);
            let guard = Answering::new(&answering);
            let slot = handed.slot();
            let answer = hyper::service::Service::call(&app, req);
            async move {
                Ok::<_, Infallible>(
                    answer.await?.map(|body| Body::new(Guarded { body, _guard: guard, handed: slot, since })),
                )
            }
        })
    };
    if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_STREAMS)
            .max_header_list_size(H2_HEADER_LIST)
            .max_send_buf_size(HTTP_BUFFER)
            .max_pending_accept_reset_streams(Some(H2_RESETS))
            .max_local_error_reset_streams(Some(H2_RESETS))
            .keep_alive_interval(Some(limits.header_timeout))
            .keep_alive_timeout(limits.header_timeout);
        let conn = builder.serve_connection(io, service);
        let h2 = H2Watch { started, idle: limits.header_timeout, handed, since, stall: limits.write_stall };
        drive(conn, answering, Some(h2), stop).await
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).max_buf_size(HTTP_BUFFER);
        let conn = builder.serve_connection(io, service);
        drive(conn, answering, None, stop).await
    }
}

/// What [`drive`] watches on an HTTP/2 connection, which has no header timeout and whose
/// client can stall an answer with flow control while the socket stays busy.
struct H2Watch {
    /// Requests started on the connection, ever.
    started: Arc<AtomicUsize>,
    /// Closed (gracefully) after this long with nothing answered or started.
    idle: Duration,
    /// Answer frames waiting for the client's window.
    handed: Arc<Handed>,
    since: tokio::time::Instant,
    /// Dropped when a frame waited this long.
    stall: Duration,
}

/// Runs a connection until it ends; on shutdown, closes it at once if nothing is being
/// answered, else lets the answers finish. On HTTP/2 (`h2`), also closes it gracefully once
/// idle for a window, drops it when an answer waits on the client's flow-control window for
/// a write-stall window, and drops it when a graceful close has not finished within the
/// write-stall window either.
async fn drive<C>(conn: C, answering: Arc<AtomicUsize>, h2: Option<H2Watch>, mut stop: watch::Receiver<()>)
where
    C: hyper_util::server::graceful::GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut conn = std::pin::pin!(conn);
    let mut stopping: Option<tokio::time::Instant> = None;
    let period =
        h2.as_ref().map_or(Duration::from_secs(3600), |w| (w.idle.min(w.stall) / 4).max(Duration::from_millis(100)));
    let mut look = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut last_started = 0;
    let mut idle_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended");
                }
                break;
            }
            _ = stop.changed(), if stopping.is_none() => {
                if answering.load(Ordering::SeqCst) == 0 {
                    break;
                }
                stopping = Some(tokio::time::Instant::now());
                conn.as_mut().graceful_shutdown();
            }
            _ = look.tick(), if h2.is_some() => {
                let Some(w) = &h2 else { continue };
                let now = tokio::time::Instant::now();
                if w.handed.stalled(now - w.since, w.stall) {
                    tracing::debug!("dropping an HTTP/2 connection: an answer waited on the client's flow-control window for the write-stall window");
                    break;
                }
                if let Some(at) = stopping {
                    if now - at > w.stall {
                        tracing::debug!("dropping an HTTP/2 connection that did not finish closing");
                        break;
                    }
                    continue;
                }
                let now_started = w.started.load(Ordering::SeqCst);
                if answering.load(Ordering::SeqCst) == 0 && now_started == last_started {
                    let since = *idle_since.get_or_insert(now);
                    if now - since >= w.idle {
                        stopping = Some(now);
                        conn.as_mut().graceful_shutdown();
                    }
                } else {
                    idle_since = None;
                }
                last_started = now_started;
            }
        }
    }
}

/// Connections open per client address.
#[derive(Default, Clone)]
struct PerAddress(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

/// One connection's place in its address's count, given back when dropped.
struct AddressSlot(PerAddress, std::net::IpAddr);

impl PerAddress {
    fn admit(&self, ip: std::net::IpAddr, max: usize) -> Option<AddressSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot(self.clone(), ip))
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = (self.0).0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// A minimum rate over fixed windows: each window of `window` must move `MIN_RATE` bytes a
/// second, or the transfer has stalled.
struct Pace {
    window: Duration,
    timer: Pin<Box<Sleep>>,
    /// Bytes moved in the current window; `None` while no window runs.
    moved: Option<u64>,
}

impl Pace {
    fn new(window: Duration) -> Pace {
        Pace { window, timer: Box::pin(tokio::time::sleep(window)), moved: None }
    }

    fn start(&mut self) {
        self.moved = Some(0);
        self.timer.as_mut().reset(tokio::time::Instant::now() + self.window);
    }

    /// A window whose end passed a whole window ago was never waited on (nothing stalled in
    /// it: the socket took every write, or the connection sat idle between requests).
    fn stale(&self) -> bool {
        tokio::time::Instant::now() > self.timer.deadline() + self.window
    }

    /// Counts `n` bytes moved in the running window.
    fn moved(&mut self, n: usize) {
        if let Some(m) = &mut self.moved {
            *m += n as u64;
        }
    }

    /// Ready(true) once a window ended short of the rate; a window that met it starts the
    /// next. Pending while the window runs (the timer will wake the task).
    fn expired(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if self.moved.is_none() || self.stale() {
            self.start();
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                let need = MIN_RATE.saturating_mul(self.window.as_secs().max(1));
                if self.moved.unwrap_or(0) < need {
                    return Poll::Ready(true);
                }
                self.start();
                // Registers the new deadline with the task.
                match self.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(true),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

/// The answers of one HTTP/2 connection that handed hyper a frame the client has not taken
/// yet: hyper asks a body for its next frame only once the client's flow-control window
/// has room, so a body not asked again for a write-stall window belongs to a client that
/// withholds its window (the socket itself may take every byte: pings, settings). HTTP/1.1
/// needs none of this: its client either reads the socket or trips `WriteStall`.
#[derive(Default)]
struct Handed(std::sync::Mutex<Vec<std::sync::Weak<AtomicU64>>>);

impl Handed {
    fn slot(&self) -> Arc<AtomicU64> {
        let slot = Arc::new(AtomicU64::new(0));
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&slot));
        slot
    }

    /// Whether a frame has waited for the client longer than `limit` (`now` as
    /// milliseconds since the connection began).
    fn stalled(&self, now: Duration, limit: Duration) -> bool {
        let now = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        let limit = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        let all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.iter().filter_map(|w| w.upgrade()).any(|s| {
            let at = s.load(Ordering::SeqCst);
            at != 0 && now.saturating_sub(at - 1) > limit
        })
    }
}

/// Counts a request as being answered while it lives.
struct Answering(Arc<AtomicUsize>);

impl Answering {
    fn new(count: &Arc<AtomicUsize>) -> Answering {
        count.fetch_add(1, Ordering::SeqCst);
        Answering(count.clone())
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An answer's body, holding its request's [`Answering`] until hyper drops it, and saying
/// in its [`Handed`] slot since when a frame it gave hyper waits for the client to take it.
struct Guarded {
    body: Body,
    _guard: Answering,
    handed: Arc<AtomicU64>,
    since: tokio::time::Instant,
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        // Asked for the next frame: the last one was taken.
        this.handed.store(0, Ordering::SeqCst);
        let r = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(&r, Poll::Ready(Some(Ok(f))) if f.is_data()) {
            // Milliseconds since the connection began, plus one (0 means none waiting).
            let ms = u64::try_from(this.since.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            this.handed.store(ms + 1, Ordering::SeqCst);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A socket that fails its writes once the client, with an answer waiting for it, reads
/// slower than [`MIN_RATE`] over a window of `limit`: from the first write the socket could
/// not take, every window must take its share, or the connection goes.
struct WriteStall<T> {
    io: T,
    limit: Duration,
    pace: Pace,
}

impl<T> WriteStall<T> {
    fn new(io: T, limit: Duration) -> WriteStall<T> {
        WriteStall { io, limit, pace: Pace::new(limit) }
    }

    /// Passes on a write's outcome: bytes taken count for the running window; `Pending` (the
    /// socket is full) starts a window if none runs, and fails once one ends short.
    fn watch(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                self.pace.moved(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.pace.expired(cx) {
                Poll::Ready(true) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the client read less than {MIN_RATE} bytes a second over {:?}", self.limit),
                ))),
                _ => Poll::Pending,
            },
        }
    }

    /// The same for flush and shutdown, which move no counted bytes.
    fn watch_unit(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<()>>) -> Poll<io::Result<()>> {
        match r {
            Poll::Pending => match self.pace.expired(cx) {
                Poll::Ready(true) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the client read less than {MIN_RATE} bytes a second over {:?}", self.limit),
                ))),
                _ => Poll::Pending,
            },
            ready => ready,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteStall<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteStall<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.watch_unit(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.watch_unit(cx, r)
    }
}

/// Wraps every request's body in a [`StallBody`].
async fn stall_request_body(State(limit): State<Duration>, req: Request) -> Request {
    req.map(|body| Body::new(StallBody { body, limit, pace: Pace::new(limit) }))
}

/// A request body that fails once a window of `limit` brings less than [`MIN_RATE`] bytes a
/// second (counted from when the handler first waits for it).
struct StallBody {
    body: Body,
    limit: Duration,
    pace: Pace,
}

impl HttpBody for StallBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending => match this.pace.expired(cx) {
                Poll::Ready(true) => Poll::Ready(Some(Err(axum::Error::new(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the request body arrived slower than {MIN_RATE} bytes a second over {:?}", this.limit),
                ))))),
                _ => Poll::Pending,
            },
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.pace.moved(data.len());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            ready => ready,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
