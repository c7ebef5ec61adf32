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
//! HTTP/2 is not served: `ferryd` and browsers speak HTTP/1.1 to a plain-HTTP server (there
//! is no h2 negotiation without TLS), and h2's streams would need all these bounds again.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// How long a request body may stop arriving: as long as the write stall below.
pub const BODY_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a client may read nothing while an answer waits to be written: twice ferryd's own
/// `read_timeout` (30 s), so the server never drops a device that would not have given up
/// itself.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long shutdown waits for in-flight requests before dropping them: a batch in progress
/// on a good link finishes, and `ferry serve` stops well within systemd's 90 s.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
    /// How long a request body may stop arriving.
    pub body_stall: Duration,
    /// How long a client may read nothing of an answer.
    pub write_stall: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
            body_stall: BODY_STALL_TIMEOUT,
            write_stall: WRITE_STALL_TIMEOUT,
        }
    }
}

/// Serves `app` on the connections `listener` accepts until `shutdown` resolves, then lets
/// in-flight requests finish (for at most [`SHUTDOWN_GRACE`]).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &Limits,
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
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(connection(tcp, app.clone(), limits.clone(), stopped.clone(), slot));
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

/// One connection, HTTP/1.1 with keep-alive, until it ends, fails a timeout, or shutdown.
async fn connection(
    tcp: TcpStream,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<()>,
    _slot: OwnedSemaphorePermit,
) {
    let io = TokioIo::new(WriteStall::new(tcp, limits.write_stall));
    // Requests being answered on this connection (HTTP/1.1: 0 or 1), until their answer's
    // body is done: shutdown closes a connection with none at once.
    let answering = Arc::new(AtomicUsize::new(0));
    let service = {
        let (app, answering) = (TowerToHyperService::new(app), answering.clone());
        hyper::service::service_fn(move |req| {
            let guard = Answering::new(&answering);
            let answer = hyper::service::Service::call(&app, req);
            async move { Ok::<_, Infallible>(answer.await?.map(|body| Body::new(Guarded { body, _guard: guard }))) }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).max_buf_size(HTTP_BUFFER);
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended");
                }
                break;
            }
            _ = stop.changed(), if !stopping => {
                if answering.load(Ordering::SeqCst) == 0 {
                    break;
                }
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
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

/// An answer's body, holding its request's [`Answering`] until hyper drops it.
struct Guarded {
    body: Body,
    _guard: Answering,
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A socket that fails its writes once the client has taken no byte for `limit`.
struct WriteStall<T> {
    io: T,
    limit: Duration,
    timer: Pin<Box<Sleep>>,
    armed: bool,
}

impl<T> WriteStall<T> {
    fn new(io: T, limit: Duration) -> WriteStall<T> {
        WriteStall { io, limit, timer: Box::pin(tokio::time::sleep(limit)), armed: false }
    }

    /// Passes on a write's outcome: progress disarms the timer; `Pending` (the socket is
    /// full) arms it, and fails once it expires.
    fn watch<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.armed = false;
            return r;
        }
        if !self.armed {
            self.armed = true;
            self.timer.as_mut().reset(tokio::time::Instant::now() + self.limit);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {:?}", self.limit),
            ))),
            Poll::Pending => Poll::Pending,
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
        this.watch(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.watch(cx, r)
    }
}

/// Wraps every request's body in a [`StallBody`].
async fn stall_request_body(State(limit): State<Duration>, req: Request) -> Request {
    req.map(|body| Body::new(StallBody { body, limit, timer: Box::pin(tokio::time::sleep(limit)) }))
}

/// A request body that fails once no byte of it has arrived for `limit`.
struct StallBody {
    body: Body,
    limit: Duration,
    timer: Pin<Box<Sleep>>,
}

impl HttpBody for StallBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the request body stopped arriving for {:?}", this.limit),
                ))))),
                Poll::Pending => Poll::Pending,
            },
            ready => {
                this.timer.as_mut().reset(tokio::time::Instant::now() + this.limit);
                ready
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
