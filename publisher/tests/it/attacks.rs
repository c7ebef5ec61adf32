//! `ferry serve` attacked on 127.0.0.1 with real sockets: clients that never read their
//! answers, never finish their headers, or hold connections idle beyond the cap; and a
//! follower asked for a commit written after it started. Every wait is bounded.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ferry_publisher::connections::Limits;
use ferry_publisher::fleet::{Caller, Fleet, Settings, TokenKind};
use ferry_publisher::serve::{FleetConfig, ServeConfig};
use ferry_store::{ChunkParams, Id, Repository};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

use crate::{commit, init};

/// How long anything a test waits for may take before the test fails instead of hanging.
const BOUND: Duration = Duration::from_secs(20);

/// `ferry serve --fleet` in this process, in a runtime of its own with `blocking_threads` in
/// its blocking pool; dropped without waiting for them (a parked one would never finish).
struct Server {
    rt: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    admin: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A repository with fixture version 1 (`size` bytes) committed on main.
fn repository(dir: &Path, size: u64) -> Id {
    let repo = init(dir, ChunkParams::default());
    let tree = dir.join("tree-v1");
    ferry_fixtures::generate(&ferry_fixtures::TreeSpec { seed: 3, size, version: 1 }, &tree).unwrap();
    commit(&repo, &tree, "main", "1").unwrap().commit.parse().unwrap()
}

fn start(dir: &Path, blocking_threads: usize, connections: Limits) -> Server {
    start_with(dir, blocking_threads, ServeConfig { connections, ..Default::default() })
}

/// The admin token of the server this test process started: repository routes under
/// `--fleet` need a token, and these tests are about the transport, not about who reads.
static ADMIN: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// The header line that authorizes a raw request.
fn auth() -> String {
    format!("Authorization: Bearer {}\r\n", ADMIN.lock().unwrap())
}

/// A reqwest client sending the admin token, with `limit` as its timeout.
fn client(limit: Duration) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = format!("Bearer {}", ADMIN.lock().unwrap());
    headers.insert(reqwest::header::AUTHORIZATION, value.parse().unwrap());
    reqwest::Client::builder().timeout(limit).default_headers(headers).build().unwrap()
}

fn start_with(dir: &Path, blocking_threads: usize, config: ServeConfig) -> Server {
    let fleet = dir.join("fleet");
    let settings = Settings { require_approval: false, ..Default::default() };
    let admin =
        Fleet::open(&fleet, settings.clone()).unwrap().create_token(&Caller::Local, TokenKind::Admin, "ops").unwrap();
    *ADMIN.lock().unwrap() = admin.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(blocking_threads)
        .enable_all()
        .build()
        .unwrap();
    let config = ServeConfig {
        fleet: Some(FleetConfig { store: (&fleet).into(), settings, channel_key: None, config_key: None }),
        ..config
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let (repo, scratch) = (dir.join("repo"), dir.join("scratch"));
    rt.spawn(async move {
        let bound = move |a| tx.send(a).unwrap();
        let addr = "127.0.0.1:0".parse().unwrap();
        ferry_publisher::serve::serve_with(repo, scratch, addr, &config, bound, std::future::pending()).await.unwrap()
    });
    let addr = rx.recv_timeout(BOUND).unwrap();
    Server { rt: Some(rt), addr, admin }
}

/// The test's own side: a runtime apart from the server's.
fn client_side<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// Every chunk id of the commit, and their stored bytes in all.
fn all_chunks(repo: &Path, id: &Id) -> (Vec<Id>, u64) {
    let r = Repository::open_read_only(repo).unwrap();
    let root = r.read_commit(id).unwrap().root;
    let (mut trees, mut chunks) = (Default::default(), std::collections::HashSet::new());
    ferry_delta::plan::collect_chunks(&r, &root, &mut trees, &mut chunks).unwrap();
    let mut ids: Vec<Id> = chunks.into_iter().collect();
    ids.sort();
    let stored = ids.iter().map(|c| r.read_chunk_stored(c).unwrap().len() as u64).sum();
    (ids, stored)
}

/// Opens a connection with a 4 KiB receive buffer, asks for the chunks, and returns without
/// reading anything: the answer backs up into the server.
async fn ask_and_never_read(addr: SocketAddr, ids: &[Id]) -> TcpStream {
    post_and_never_read(addr, "chunks", &ferry_delta::pack::encode_request(ids)).await
}

/// `POST /v1/{path}` with `body` on a connection with a 4 KiB receive buffer, never read.
async fn post_and_never_read(addr: SocketAddr, path: &str, body: &[u8]) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let head = format!("POST /v1/{path} HTTP/1.1\r\nHost: {addr}\r\n{}Content-Length: {}\r\n\r\n", auth(), body.len());
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    s
}

/// A connection that has sent the head of `POST /v1/chunks` announcing a 64-byte body (two
/// ids), and none of the body.
async fn chunks_request_head(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!("POST /v1/chunks HTTP/1.1\r\nHost: {addr}\r\n{}Content-Length: 64\r\n\r\n", auth());
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

/// Reads an answer's status line on `s`, which must be 200.
async fn answered_200(s: &mut TcpStream) {
    let mut head = [0; 12];
    timeout(BOUND, s.read_exact(&mut head)).await.unwrap().unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
}

/// Reads until the server closes the connection (end of stream or reset); the bytes read.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// True if the server has closed `s` already (without waiting).
fn closed_by_server(s: &TcpStream) -> bool {
    let mut buf = [0; 1024];
    loop {
        match s.try_read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn clients_that_never_read_hold_no_thread_and_branches_and_the_admin_api_still_answer() {
    let t = tempfile::tempdir().unwrap();
    let id = repository(t.path(), 8 << 20);
    let (ids, stored) = all_chunks(&t.path().join("repo"), &id);
    // Each answer must be more than the socket buffers and the server's own buffer absorb,
    // so that a server producing it ahead of the client would have to wait for the client.
    assert!(stored > 4 << 20, "the answer is only {stored} bytes");
    // Eight times as many stalled clients as the server's blocking pool has threads: if each
    // held a thread, nothing else needing one could run.
    const THREADS: usize = 4;
    const CLIENTS: usize = 8 * THREADS;
    let server = start(t.path(), THREADS, Limits::default());
    let addr = server.addr;
    client_side(async {
        let mut stalled = Vec::new();
        for _ in 0..CLIENTS {
            stalled.push(timeout(BOUND, ask_and_never_read(addr, &ids)).await.unwrap());
        }
        // Let their answers back up.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let c = client(Duration::from_secs(10));
        let r = c.get(format!("http://{addr}/v1/branches/main")).send().await.expect("a branch request answers");
        assert_eq!(r.status(), 200);
        let r = c
            .get(format!("http://{addr}/v1/admin/devices"))
            .bearer_auth(&server.admin)
            .send()
            .await
            .expect("the admin API answers");
        assert_eq!(r.status(), 200);
        let r = c.get(format!("http://{addr}/v1/objects/{id}")).send().await.expect("content still answers");
        assert_eq!(r.status(), 200);
        // The stalled clients were real: their answers had started.
        answered_200(&mut stalled[0]).await;
    });
}

#[test]
fn patch_answers_past_their_budget_are_refused_at_once_so_devices_fetch_plain() {
    use ferry_delta::patch::{encode_patch_request, Patch};
    use ferry_publisher::serve::{PatchConfig, PATCH_STREAMS_PER_WORKER};
    let t = tempfile::tempdir().unwrap();
    let id = repository(t.path(), 8 << 20);
    let (ids, _) = all_chunks(&t.path().join("repo"), &id);
    let r = Repository::open_read_only(&t.path().join("repo")).unwrap();
    let chunks: Vec<ferry_store::ChunkRef> =
        ids.iter().map(|c| ferry_store::ChunkRef { id: *c, len: r.chunk_info(c).unwrap().unwrap().len }).collect();
    drop(r);
    // Every chunk as the target of a patch without reference, a few per item: an answer of
    // megabytes, which backs up into the server when nobody reads it.
    let patches: Vec<Patch> = chunks.chunks(8).map(|t| Patch { reference: vec![], target: t.to_vec() }).collect();
    let body = encode_patch_request(&patches);
    // Many stalled clients, as one token here: lift the per-token bound (tested in
    // fleet_attacks) so that the server-wide stream budget is what refuses.
    let limits = ferry_publisher::patches::Limits { client_requests: 64, ..Default::default() };
    let patches = PatchConfig { level: 3, workers: 1, limits, ..PatchConfig::default() };
    let server = start_with(t.path(), 16, ServeConfig { patches, ..Default::default() });
    let addr = server.addr;
    client_side(async {
        let mut stalled = Vec::new();
        for _ in 0..PATCH_STREAMS_PER_WORKER {
            stalled.push(timeout(BOUND, post_and_never_read(addr, "patches", &body)).await.unwrap());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let c = client(Duration::from_secs(10));
        let r = c.post(format!("http://{addr}/v1/patches")).body(body.clone()).send().await.unwrap();
        assert_eq!(r.status(), 503, "one patch answer more than the budget");
        // Plain chunks, what a device falls back to, still stream.
        let r = c.post(format!("http://{addr}/v1/chunks")).body(ferry_delta::pack::encode_request(&ids[..4])).send();
        assert_eq!(r.await.unwrap().status(), 200);
        answered_200(&mut stalled[0]).await;
    });
}

#[test]
fn a_client_that_stops_reading_is_dropped_after_the_write_stall_timeout() {
    let t = tempfile::tempdir().unwrap();
    let id = repository(t.path(), 8 << 20);
    let (ids, stored) = all_chunks(&t.path().join("repo"), &id);
    let limits = Limits { write_stall: Duration::from_secs(1), ..Limits::default() };
    let server = start(t.path(), 16, limits);
    client_side(async {
        let mut s = ask_and_never_read(server.addr, &ids).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        let got = timeout(BOUND, read_to_close(&mut s)).await.expect("the server closes the connection");
        assert!(got.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&got[..got.len().min(100)]));
        assert!(
            (got.len() as u64) < stored,
            "the whole answer ({} bytes) arrived: the client was never dropped",
            got.len()
        );
    });
}

#[test]
fn slowloris_headers_and_idle_connections_are_cut_after_the_header_timeout() {
    let t = tempfile::tempdir().unwrap();
    repository(t.path(), 1 << 20);
    let limits = Limits { header_timeout: Duration::from_secs(1), ..Limits::default() };
    let server = start(t.path(), 16, limits);
    let addr = server.addr;
    client_side(async {
        // Half a request, then nothing.
        let mut partial = TcpStream::connect(addr).await.unwrap();
        partial.write_all(format!("GET /v1/branches/main HTTP/1.1\r\n{}Host: x\r\n", auth()).as_bytes()).await.unwrap();
        // Nothing at all.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        // One header line every 200 ms, never the end.
        let mut trickle = TcpStream::connect(addr).await.unwrap();
        trickle.write_all(format!("GET /v1/branches/main HTTP/1.1\r\n{}", auth()).as_bytes()).await.unwrap();
        let trickling = async {
            for i in 0.. {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if trickle.write_all(format!("X-{i}: y\r\n").as_bytes()).await.is_err() {
                    break;
                }
                if closed_by_server(&trickle) {
                    break;
                }
            }
        };
        timeout(BOUND, trickling).await.expect("the trickling client is cut");
        timeout(BOUND, read_to_close(&mut partial)).await.expect("the partial request is cut");
        timeout(BOUND, read_to_close(&mut silent)).await.expect("the silent connection is cut");
        // A kept-alive connection left idle after its answer.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(format!("GET /v1/branches/main HTTP/1.1\r\n{}Host: x\r\n\r\n", auth()).as_bytes())
            .await
            .unwrap();
        let answer = timeout(BOUND, read_to_close(&mut idle)).await.expect("the idle connection is cut");
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    });
}

#[test]
fn a_request_body_that_stops_arriving_fails_after_the_body_stall_timeout() {
    let t = tempfile::tempdir().unwrap();
    repository(t.path(), 1 << 20);
    let limits = Limits { body_stall: Duration::from_secs(1), ..Limits::default() };
    let server = start(t.path(), 16, limits);
    let addr = server.addr;
    client_side(async {
        // Two ids announced, half of one sent.
        let mut s = chunks_request_head(addr).await;
        s.write_all(&[7; 16]).await.unwrap();
        let answer = timeout(BOUND, read_to_close(&mut s)).await.expect("the request fails and the connection closes");
        assert!(answer.starts_with(b"HTTP/1.1 400"), "{}", String::from_utf8_lossy(&answer));
    });
}

#[test]
fn ferry_serve_on_sigterm_finishes_the_answer_in_flight_and_drops_idle_and_half_sent_requests() {
    use ferry_publisher::connections::SHUTDOWN_GRACE;
    let t = tempfile::tempdir().unwrap();
    let id = repository(t.path(), 8 << 20);
    let (ids, stored) = all_chunks(&t.path().join("repo"), &id);
    let mut server = crate::cmd::serve(t.path().join("repo").to_str().unwrap(), &[]);
    let addr: SocketAddr = server.1.strip_prefix("http://").unwrap().parse().unwrap();
    client_side(async {
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut partial = TcpStream::connect(addr).await.unwrap();
        partial.write_all(format!("GET /v1/branches/main HTTP/1.1\r\n{}Host: x\r\n", auth()).as_bytes()).await.unwrap();
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(format!("GET /v1/branches/main HTTP/1.1\r\n{}Host: x\r\n\r\n", auth()).as_bytes())
            .await
            .unwrap();
        answered_200(&mut kept).await;
        // An answer of megabytes, begun and backed up into the server.
        let mut in_flight = ask_and_never_read(addr, &ids).await;
        tokio::time::sleep(Duration::from_secs(1)).await;

        let term = std::process::Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status();
        assert!(term.unwrap().success());
        let answer = timeout(BOUND, read_to_close(&mut in_flight)).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 200"));
        // Whole: every frame, and the last chunk of the chunked encoding.
        assert!(answer.len() as u64 > stored && answer.ends_with(b"\r\n0\r\n\r\n"), "{} bytes", answer.len());
        // Nothing else holds it: it exits well before the grace for answers in flight is over.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE / 2;
        let status = loop {
            if let Some(status) = server.0.try_wait().unwrap() {
                break status;
            }
            assert!(tokio::time::Instant::now() < deadline, "ferry serve still runs after SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "{status}");
        assert!(timeout(BOUND, read_to_close(&mut partial)).await.is_ok());
    });
}

#[test]
fn connections_beyond_the_cap_wait_until_the_idle_ones_are_cut_and_then_are_served() {
    let t = tempfile::tempdir().unwrap();
    repository(t.path(), 1 << 20);
    const CAP: usize = 8;
    let limits = Limits { max_connections: CAP, header_timeout: Duration::from_secs(1), ..Limits::default() };
    let server = start(t.path(), 16, limits);
    let addr = server.addr;
    client_side(async {
        // Twice the cap of connections that never send a byte: the first CAP are taken, the
        // others wait in the accept queue, and the request below waits behind all of them.
        let mut idle = Vec::new();
        for _ in 0..2 * CAP {
            idle.push(timeout(BOUND, TcpStream::connect(addr)).await.unwrap().unwrap());
        }
        let c = client(BOUND);
        let r = c.get(format!("http://{addr}/v1/branches/main")).send().await.expect("served once a slot frees");
        assert_eq!(r.status(), 200);
        // It was served only after every connection ahead of it had been cut: the cap held.
        let open = idle.iter().filter(|s| !closed_by_server(s)).count();
        assert_eq!(open, 0, "{open} idle connections ahead of the request are still open");
    });
}

#[test]
fn a_commit_written_after_the_server_started_is_served_by_id_before_any_branch_request() {
    let t = tempfile::tempdir().unwrap();
    repository(t.path(), 1 << 20);
    let server = start(t.path(), 16, Limits::default());
    // The writer commits while the server follows.
    let repo = Repository::open(&t.path().join("repo")).unwrap();
    let tree = t.path().join("tree-v2");
    ferry_fixtures::generate(&ferry_fixtures::TreeSpec { seed: 3, size: 1 << 20, version: 2 }, &tree).unwrap();
    let id: Id = commit(&repo, &tree, "main", "2").unwrap().commit.parse().unwrap();
    let root = repo.read_commit(&id).unwrap().root;
    drop(repo);
    let (ids, _) = all_chunks(&t.path().join("repo"), &id);
    let addr = server.addr;
    client_side(async {
        let c = client(BOUND);
        let r = c.get(format!("http://{addr}/v1/commits/{id}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "the new commit, asked for by id first");
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(Id::of(&hex::decode(v["bytes"].as_str().unwrap()).unwrap()), id);
        let r = c.get(format!("http://{addr}/v1/objects/{root}")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = c.post(format!("http://{addr}/v1/chunks")).body(ferry_delta::pack::encode_request(&ids)).send().await;
        assert_eq!(r.unwrap().status(), 200);
        // What the writer never wrote is still 404.
        let missing = Id::of(b"never committed");
        let r = c.get(format!("http://{addr}/v1/commits/{missing}")).send().await.unwrap();
        assert_eq!(r.status(), 404);
    });
}

/// A body sent a byte at a time resets a plain stall timer for ever (the review held 100
/// connections, every slot of a small server, this way). Each window must bring the
/// minimum rate.
#[test]
fn a_request_body_trickled_a_byte_at_a_time_fails_after_one_window() {
    let t = tempfile::tempdir().unwrap();
    repository(t.path(), 1 << 20);
    let limits = Limits { body_stall: Duration::from_secs(2), ..Limits::default() };
    let server = start(t.path(), 16, limits);
    let addr = server.addr;
    client_side(async {
        let mut s = chunks_request_head(addr).await;
        let trickle = async {
            for _ in 0..64 {
                if s.write_all(&[7]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        };
        let _ = timeout(Duration::from_secs(6), trickle).await;
        let answer = timeout(BOUND, read_to_close(&mut s)).await.expect("the request fails and the connection closes");
        assert!(answer.starts_with(b"HTTP/1.1 400"), "{}", String::from_utf8_lossy(&answer));
    });
}

/// A client that reads an answer a little at a time (here 500 bytes a second) is dropped
/// once a window brings less than the minimum rate. (The kernel wakes a writer only when
/// much of its send buffer has drained, so on loopback the old stall timer often fired here
/// too; the trickled body above is the case it could not catch.)
#[test]
fn a_client_reading_slower_than_the_minimum_rate_is_dropped() {
    let t = tempfile::tempdir().unwrap();
    let id = repository(t.path(), 8 << 20);
    let (ids, stored) = all_chunks(&t.path().join("repo"), &id);
    let limits = Limits { write_stall: Duration::from_secs(2), ..Limits::default() };
    let server = start(t.path(), 16, limits);
    client_side(async {
        let mut s = ask_and_never_read(server.addr, &ids).await;
        let mut got = 0usize;
        let mut buf = [0u8; 100];
        // Three windows at 500 bytes a second.
        for _ in 0..30 {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Then what the server's socket still holds, at full speed, to the close.
        let rest = timeout(BOUND, read_to_close(&mut s)).await.expect("the server closes the connection");
        got += rest.len();
        assert!((got as u64) < stored, "the whole answer ({got} bytes) arrived: the client was never dropped");
    });
}

/// One address cannot hold every connection slot: past its share, its new connections are
/// closed at once, and another address is still served.
#[test]
fn one_address_holds_at_most_its_share_of_the_connections() {
    let t = tempfile::tempdir().unwrap();
    repository(t.path(), 1 << 20);
    let limits = Limits { per_address: 4, ..Limits::default() };
    let server = start(t.path(), 16, limits);
    let addr = server.addr;
    client_side(async {
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut fifth = TcpStream::connect(addr).await.unwrap();
        let got = timeout(BOUND, read_to_close(&mut fifth)).await.expect("the fifth connection is closed");
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
        assert!(held.iter().all(|s| !closed_by_server(s)), "the first four stay open");
        // Another address (Linux routes all of 127/8 to the loopback device).
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut other = socket.connect(addr).await.unwrap();
        other
            .write_all(format!("GET /v1/branches/main HTTP/1.1\r\nHost: x\r\n{}\r\n", auth()).as_bytes())
            .await
            .unwrap();
        answered_200(&mut other).await;
    });
}
