//! The agent's side of the HTTP API (v1): every response is read with a size cap taken from
//! what the agent expects, and every request is bounded in time three ways, so a server that
//! stalls, trickles or never stops sending is cut off instead of waited on: no read waits
//! longer than `read_timeout`; every `read_timeout` window must bring at least
//! [`MIN_RATE`] bytes a second (a server sending a byte every few seconds never trips the
//! first rule); and the whole request has a deadline scaled to the bytes it asked for
//! ([`Server::deadline`]).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ferry_api::repo::{BranchHead, Signature, SignedCommit, VersionCommits};
use ferry_api::ErrorBody;
use ferry_delta::pack::{self, Frame, FrameDecoder};
use ferry_store::Id;

/// The well-formed `(key, signature)` pairs of a commit's signatures; entries that are not
/// hex of the right lengths are skipped (they could not verify anyway).
fn parse_signatures(list: &[Signature]) -> Vec<([u8; 32], [u8; 64])> {
    let mut out = Vec::new();
    for s in list {
        let key = hex::decode(&s.key).ok().and_then(|k| <[u8; 32]>::try_from(k).ok());
        let sig = hex::decode(&s.signature).ok().and_then(|s| <[u8; 64]>::try_from(s).ok());
        if let (Some(key), Some(sig)) = (key, sig) {
            out.push((key, sig));
        }
    }
    out
}

/// A JSON answer of the repository API, read as its message.
fn answer<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(body).with_context(|| format!("{what}: the answer is malformed"))
}

/// The server answered, with an error status: retrying the same request will not help, but
/// another kind of request may (e.g. plain chunks when patches are refused).
#[derive(Debug, thiserror::Error)]
#[error("{what}: server answered {status}: {detail}")]
pub struct Answered {
    pub what: String,
    pub status: reqwest::StatusCode,
    pub detail: String,
}

/// What the device API answered ([`Server::device_call`]).
#[derive(Debug)]
pub enum DeviceReply<A> {
    /// A success status and its message.
    Answer(A),
    /// An error status and the server's reason (its `{"error": ...}`), if it gave one.
    Refused { status: reqwest::StatusCode, reason: Option<String> },
}

/// Counts what crossed the network during one update.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Traffic {
    pub requests: u64,
    /// HTTP body bytes received.
    pub bytes: u64,
}

/// The answer to a branch check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    Unchanged,
    At(Id),
}

#[derive(Debug, Clone)]
pub struct Server {
    base: String,
    client: reqwest::Client,
    read_timeout: Duration,
    /// The device token, sent with every repository request once the device is enrolled
    /// with a fleet server (which serves the repository only to its devices).
    token: Option<String>,
    /// The slowest transfer waited on ([`MIN_RATE`], or [`MIN_COPY_RATE`] for a copy).
    min_rate: u64,
}

/// The slowest transfer the agent waits on, in bytes a second averaged over each
/// `read_timeout` window: far below any working link (2G data moves 5-10 KB/s), far above a
/// server that sends a byte now and then to keep a connection open.
pub const MIN_RATE: u64 = 1024;

/// The slowest transfer the agent waits on from a static copy (`content_url`): a CDN that
/// sends less is left for the server, which has the rest (a device on a slower link reads
/// everything from the server).
pub const MIN_COPY_RATE: u64 = 16 * 1024;

/// The connection's share of a request's deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A progress watchdog over one response: every `window` must bring `min` bytes.
struct Pace {
    window: Duration,
    min: u64,
    rate: u64,
    started: Instant,
    bytes: u64,
}

impl Pace {
    fn new(window: Duration, rate: u64) -> Pace {
        let min = rate.saturating_mul(window.as_secs().max(1));
        Pace { window, min, rate, started: Instant::now(), bytes: 0 }
    }

    fn add(&mut self, n: usize, what: &str) -> Result<()> {
        self.bytes += n as u64;
        let elapsed = self.started.elapsed();
        if elapsed >= self.window {
            if self.bytes < self.min {
                bail!(
                    "receiving {what}: the server sent {} bytes in {} s, less than {} bytes a second; cutting the connection",
                    self.bytes,
                    elapsed.as_secs(),
                    self.rate
                );
            }
            self.started = Instant::now();
            self.bytes = 0;
        }
        Ok(())
    }
}

/// The next piece of a response's body, counted, under the progress watchdog.
async fn next_piece(
    resp: &mut reqwest::Response,
    pace: &mut Pace,
    what: &str,
    t: &mut Traffic,
) -> Result<Option<bytes::Bytes>> {
    let piece = resp.chunk().await.map_err(|e| timed_out(e, what))?;
    crate::notify::alive();
    if let Some(p) = &piece {
        t.bytes += p.len() as u64;
        crate::progress::received(p.len() as u64);
        pace.add(p.len(), what)?;
    }
    Ok(piece)
}

/// A transfer error, saying so plainly when it was the request's deadline.
fn timed_out(e: reqwest::Error, what: &str) -> anyhow::Error {
    if e.is_timeout() {
        anyhow::Error::new(e).context(format!("receiving {what}: no answer in time (a read or the request's deadline)"))
    } else {
        anyhow::Error::new(e).context(format!("receiving {what}"))
    }
}

/// Sends a request; a failure says what was asked (`what`) and, when TLS refused the server,
/// why in words ([`crate::tls::explain_error`]) instead of the HTTP stack's layers.
async fn send(req: reqwest::RequestBuilder, what: impl FnOnce() -> String) -> Result<reqwest::Response> {
    req.send().await.map_err(|e| match crate::tls::explain_error(&e) {
        Some(why) => anyhow!("{}: {why}", what()),
        None => anyhow::Error::new(e).context(what()),
    })
}

/// Largest JSON answer (branch head, signature list) the agent reads.
const MAX_JSON: usize = 1 << 20;
/// The most key-document bytes a device reads: rotations are rare and each document is small.
const MAX_KEY_CHAIN: usize = 4 << 20;
/// What a streamed trees answer is given time for (each tree is capped on its own).
const MAX_TREES_ANSWER: u64 = 256 << 20;

impl Server {
    /// The server `config` names, over TLS as [`crate::tls`] sets it up (the pinned CA or the
    /// system's roots, certificates judged at the device's clock floor).
    pub fn for_device(config: &crate::config::Config) -> Result<Server> {
        // A plain-HTTP server (`insecure_http`) needs no roots: a device without a CA
        // bundle still reaches it.
        let tls = if config.server.starts_with("https://") {
            let roots = crate::tls::Roots::load(config.ca_file.as_deref())?;
            let trust = crate::state::read_trust(config)?;
            let floor = trust.floor.max(crate::trust::AGENT_FLOOR);
            Some(crate::tls::client_config(&roots, floor, crate::tls::identity(config)?)?)
        } else {
            None
        };
        Server::new(&config.server, Duration::from_secs(config.read_timeout), tls)
    }

    /// The static copy `content_url` names, if any: over TLS like the server (its own
    /// `content_ca_file` or the system's roots), never with the device's token or identity.
    pub fn for_content(config: &crate::config::Config) -> Result<Option<Server>> {
        let Some(url) = &config.content_url else {
            return Ok(None);
        };
        let tls = if url.starts_with("https://") {
            let roots = crate::tls::Roots::load(config.content_ca_file.as_deref())?;
            let trust = crate::state::read_trust(config)?;
            let floor = trust.floor.max(crate::trust::AGENT_FLOOR);
            Some(crate::tls::client_config(&roots, floor, None)?)
        } else {
            None
        };
        let mut copy = Server::new(url, Duration::from_secs(config.read_timeout), tls)?;
        copy.min_rate = MIN_COPY_RATE;
        Ok(Some(copy))
    }

    /// The base URL, for messages.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A client of `base`; `tls` for an `https://` server.
    pub fn new(base: &str, read_timeout: Duration, tls: Option<rustls::ClientConfig>) -> Result<Server> {
        let mut builder = reqwest::Client::builder();
        if let Some(tls) = tls {
            builder = builder.use_preconfigured_tls(tls);
        }
        let client = builder
            // The server never redirects: one that does (or someone answering for it) must
            // not lead the device, its token or its reports to another host or to plain HTTP.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(read_timeout)
            .user_agent(concat!("ferryd/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Server {
            base: base.trim_end_matches('/').to_string(),
            client,
            read_timeout,
            token: None,
            min_rate: MIN_RATE,
        })
    }

    /// The whole time a request that may bring `bytes` bytes is given, answer included:
    /// connecting, two read timeouts for the server to start answering, and the bytes at
    /// [`MIN_RATE`].
    pub fn deadline(&self, bytes: u64) -> Duration {
        CONNECT_TIMEOUT + 2 * self.read_timeout + Duration::from_secs(bytes / self.min_rate)
    }

    /// The same server, with `token` sent as `Authorization: Bearer` on every repository
    /// request (the device API's calls pass their token themselves).
    pub fn with_token(mut self, token: &str) -> Server {
        self.token = Some(token.to_string());
        self
    }

    /// Adds the device token, if any, to a repository request.
    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1/{path}", self.base)
    }

    /// Reads a whole body, refusing more than `max` bytes.
    async fn read_capped(&self, resp: reqwest::Response, max: usize, what: &str, t: &mut Traffic) -> Result<Vec<u8>> {
        let mut resp = resp;
        let mut out = Vec::new();
        let mut pace = Pace::new(self.read_timeout, self.min_rate);
        while let Some(piece) = next_piece(&mut resp, &mut pace, what, t).await? {
            if out.len() + piece.len() > max {
                bail!("{what} is larger than the {max} bytes allowed; refusing it");
            }
            out.extend_from_slice(&piece);
        }
        Ok(out)
    }

    async fn check(&self, resp: reqwest::Response, what: &str, t: &mut Traffic) -> Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() || status == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(resp);
        }
        let body = self.read_capped(resp, 64 * 1024, what, t).await.unwrap_or_default();
        let detail = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        Err(Answered { what: what.to_string(), status, detail }.into())
    }

    /// POSTs a binary body whose answer may bring `expect` bytes; an error status is an
    /// [`Answered`] error.
    async fn post(
        &self,
        path: &str,
        body: Vec<u8>,
        expect: u64,
        what: &str,
        t: &mut Traffic,
    ) -> Result<reqwest::Response> {
        t.requests += 1;
        let resp = send(
            self.authorized(self.client.post(self.url(path)))
                .timeout(self.deadline(expect + body.len() as u64))
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(body),
            || format!("requesting {what}"),
        )
        .await?;
        self.check(resp, what, t).await
    }

    /// The commit a branch points at; `Unchanged` if it is still `known`.
    pub async fn branch(&self, name: &str, known: Option<Id>, t: &mut Traffic) -> Result<Head> {
        let what = format!("branch {name}");
        let mut req = self
            .authorized(self.client.get(self.url(&format!("branches/{name}"))))
            .timeout(self.deadline(MAX_JSON as u64));
        if let Some(id) = known {
            req = req.header(reqwest::header::IF_NONE_MATCH, format!("\"{}\"", id.to_hex()));
        }
        t.requests += 1;
        let resp = self.check(send(req, || format!("asking for {what}")).await?, &what, t).await?;
        if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(Head::Unchanged);
        }
        let body = self.read_capped(resp, MAX_JSON, &what, t).await?;
        let head: BranchHead = answer(&body, &what)?;
        let id = head.commit.parse().with_context(|| format!("{what}: bad commit id"))?;
        Ok(Head::At(id))
    }

    /// A GET whose body is at most `max` bytes; `None` on 404.
    async fn get_capped(&self, path: &str, max: usize, what: &str, t: &mut Traffic) -> Result<Option<Vec<u8>>> {
        t.requests += 1;
        let resp = send(self.authorized(self.client.get(self.url(path))).timeout(self.deadline(max as u64)), || {
            format!("asking for {what}")
        })
        .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = self.check(resp, what, t).await?;
        Ok(Some(self.read_capped(resp, max, what, t).await?))
    }

    /// A file of at most `max` bytes (e.g. a static copy's index); `None` on 404.
    pub async fn get_optional(&self, path: &str, max: usize, what: &str, t: &mut Traffic) -> Result<Option<Vec<u8>>> {
        self.get_capped(path, max, what, t).await
    }

    /// Bytes `start..end` of `path`, handed to `on_piece` as they arrive: the answer must be
    /// a 206 whose `Content-Range` is exactly that range, or a 200 for a range from 0 (read
    /// up to `end`; the rest is not). A shorter answer is an error after its bytes were
    /// handed over.
    pub async fn get_range(
        &self,
        path: &str,
        start: u64,
        end: u64,
        t: &mut Traffic,
        mut on_piece: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let last = end.checked_sub(1).filter(|l| *l >= start).ok_or_else(|| anyhow!("an empty range of {path}"))?;
        let what = format!("bytes {start}-{last} of {path}");
        t.requests += 1;
        let req = self
            .authorized(self.client.get(self.url(path)))
            .header(reqwest::header::RANGE, format!("bytes={start}-{last}"))
            .timeout(self.deadline(end - start));
        let resp = self.check(send(req, || format!("asking for {what}")).await?, &what, t).await?;
        match resp.status() {
            reqwest::StatusCode::PARTIAL_CONTENT => {
                let given = resp.headers().get(reqwest::header::CONTENT_RANGE).and_then(|v| v.to_str().ok());
                let expected = format!("bytes {start}-{last}/");
                if !given.is_some_and(|g| g.starts_with(&expected)) {
                    bail!("{what}: the answer's Content-Range is {given:?}, not the range asked for");
                }
            }
            reqwest::StatusCode::OK if start == 0 => {}
            status => {
                bail!("{what}: answered {status} instead of the range (the static server must honour Range headers)")
            }
        }
        let mut resp = resp;
        let mut left = end - start;
        let mut pace = Pace::new(self.read_timeout, self.min_rate);
        while left > 0 {
            let Some(piece) = next_piece(&mut resp, &mut pace, &what, t).await? else {
                bail!("{what}: the answer ended {left} bytes early");
            };
            let take = piece.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            on_piece(piece.get(..take).unwrap_or_default())?;
            left -= take as u64;
        }
        // Anything past the range is not read: the connection is dropped.
        Ok(())
    }

    /// POSTs a device API message, with the device token when given, and reads the answer
    /// (at most [`MAX_JSON`] bytes): `A` on success; on an error status, the status and the
    /// server's reason, returned, not raised: enrollment and check-in decide what each
    /// status means.
    pub async fn device_call<A: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
        body: &impl serde::Serialize,
        t: &mut Traffic,
    ) -> Result<DeviceReply<A>> {
        let what = format!("the fleet server's {path}");
        t.requests += 1;
        let mut req = self
            .client
            .post(self.url(&format!("device/{path}")))
            .timeout(self.deadline(MAX_JSON as u64))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body)?);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = send(req, || format!("asking {what}")).await?;
        let status = resp.status();
        let bytes = self.read_capped(resp, MAX_JSON, &what, t).await?;
        if !status.is_success() {
            let reason = serde_json::from_slice::<ErrorBody>(&bytes).ok().map(|e| e.error);
            return Ok(DeviceReply::Refused { status, reason });
        }
        let answer = serde_json::from_slice(&bytes).with_context(|| format!("{what}: the answer is malformed"))?;
        Ok(DeviceReply::Answer(answer))
    }

    /// The commits with `version` on the server's branches (ids only: each is verified when
    /// fetched).
    pub async fn version(&self, version: &str, t: &mut Traffic) -> Result<Vec<Id>> {
        let what = format!("version {version}");
        let Some(body) = self.get_capped(&format!("versions/{version}"), MAX_JSON, &what, t).await? else {
            return Ok(Vec::new());
        };
        let found: VersionCommits = answer(&body, &what)?;
        found.commits.iter().map(|c| c.parse().map_err(|_| anyhow!("{what}: a bad commit id"))).collect()
    }

    /// A channel's newest signed document (an envelope, not yet verified); `None` if the
    /// server has no such channel.
    pub async fn channel(&self, name: &str, t: &mut Traffic) -> Result<Option<Vec<u8>>> {
        let what = format!("channel {name}");
        self.get_capped(&format!("channels/{name}"), ferry_store::channel::MAX_ENVELOPE, &what, t).await
    }

    /// Whether the server answers at all (`ferryd doctor`): the HTTP status of a small
    /// request, whatever it is; an error only when no answer came (a refused connection, a
    /// failed TLS handshake, a timeout).
    pub async fn reach(&self) -> Result<u16> {
        let resp = send(self.authorized(self.client.get(self.url("keys"))).timeout(self.deadline(0)), || {
            format!("reaching {}", self.base)
        })
        .await?;
        Ok(resp.status().as_u16())
    }

    /// The server's key document chain (envelopes, not yet verified).
    pub async fn keys(&self, t: &mut Traffic) -> Result<Vec<u8>> {
        Ok(self.get_capped("keys", MAX_KEY_CHAIN, "the key documents", t).await?.unwrap_or_default())
    }

    /// A commit's bytes (at most `max`, checked against its id) and the signatures the server
    /// holds for it, in one request.
    pub async fn commit(&self, id: &Id, max: usize, t: &mut Traffic) -> Result<(Vec<u8>, Vec<([u8; 32], [u8; 64])>)> {
        let what = format!("commit {id}");
        t.requests += 1;
        let cap = 2 * max + MAX_JSON;
        let resp = send(
            self.authorized(self.client.get(self.url(&format!("commits/{id}")))).timeout(self.deadline(cap as u64)),
            || format!("fetching {what}"),
        )
        .await?;
        let resp = self.check(resp, &what, t).await?;
        let body = self.read_capped(resp, cap, &what, t).await?;
        let signed: SignedCommit = answer(&body, &what)?;
        let bytes = hex::decode(&signed.bytes).map_err(|_| anyhow!("{what}: the answer has no commit bytes"))?;
        let actual = Id::of(&bytes);
        if actual != *id {
            bail!("{what} is corrupt: the server sent bytes that hash to {actual}");
        }
        Ok((bytes, parse_signatures(&signed.signatures)))
    }

    /// Asks for many chunks or objects in one request and hands each frame to `on_frame` as
    /// it arrives. `expected` gives each id's largest acceptable length. Returns when every
    /// frame arrived; a broken or stalled stream is an error after the frames that did arrive
    /// were handed over.
    pub async fn pack(
        &self,
        path: &str,
        expected: &[(Id, u32)],
        t: &mut Traffic,
        on_frame: impl FnMut(Frame) -> Result<()>,
    ) -> Result<()> {
        let ids: Vec<Id> = expected.iter().map(|(id, _)| *id).collect();
        self.post_pack(path, pack::encode_request(&ids), expected, t, on_frame).await
    }

    /// Every tree under `new_root` that is not under `old_root`, in one request, parents
    /// before children. `on_tree` gets each frame (its id was expected: the root or a
    /// subtree of a tree received before) and returns the subtrees it names. Trees the
    /// server leaves out are the caller's to find missing.
    pub async fn trees(
        &self,
        new_root: &Id,
        old_root: Option<&Id>,
        max: u32,
        t: &mut Traffic,
        mut on_tree: impl FnMut(Frame) -> Result<Vec<Id>>,
    ) -> Result<()> {
        let what = format!("the trees of {new_root}");
        let body = pack::TreesRequest {
            new_root: *new_root,
            old_root: old_root.copied(),
            encoding: pack::TreesEncoding::Frames,
        }
        .encode();
        let mut resp = self.post("trees", body, MAX_TREES_ANSWER, &what, t).await?;
        let mut decoder = FrameDecoder::new([(*new_root, max)]);
        let mut pace = Pace::new(self.read_timeout, self.min_rate);
        while let Some(piece) = next_piece(&mut resp, &mut pace, &what, t).await? {
            decoder.feed_expanding(&piece, max, &mut on_tree).with_context(|| format!("receiving {what}"))?;
        }
        decoder.finish().with_context(|| format!("receiving {what}"))
    }

    /// The compressed form of [`Server::trees`]: the same frames as one zstd frame, for the
    /// caller to decompress with the old root's trees as prefix. Each piece goes to
    /// `on_piece` as it arrives (at most `max` bytes in all), so a bad answer is caught
    /// without holding it; an error from `on_piece` ends the transfer and is returned.
    pub async fn trees_compressed(
        &self,
        new_root: &Id,
        old_root: &Id,
        max: usize,
        t: &mut Traffic,
        mut on_piece: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let what = format!("the trees of {new_root}, compressed");
        let body = pack::TreesRequest {
            new_root: *new_root,
            old_root: Some(*old_root),
            encoding: pack::TreesEncoding::Compressed,
        }
        .encode();
        let mut resp = self.post("trees", body, max as u64, &what, t).await?;
        let mut pace = Pace::new(self.read_timeout, self.min_rate);
        let mut total = 0usize;
        while let Some(piece) = next_piece(&mut resp, &mut pace, &what, t).await? {
            total += piece.len();
            if total > max {
                bail!("{what} is larger than the {max} bytes allowed; refusing it");
            }
            on_piece(&piece)?;
        }
        Ok(())
    }

    /// Like [`Server::pack`] with a request body of the caller's (e.g. patches); the frames
    /// are named by the ids in `expected`.
    pub async fn post_pack(
        &self,
        path: &str,
        body: Vec<u8>,
        expected: &[(Id, u32)],
        t: &mut Traffic,
        mut on_frame: impl FnMut(Frame) -> Result<()>,
    ) -> Result<()> {
        let what = format!("{} {path}", expected.len());
        let answer: u64 =
            expected.iter().map(|(_, len)| pack::FRAME_HEADER as u64 + pack::max_stored_len(*len) as u64).sum();
        let mut resp = self.post(path, body, answer, &what, t).await?;
        let mut decoder = FrameDecoder::new(expected.iter().copied());
        let mut pace = Pace::new(self.read_timeout, self.min_rate);
        while decoder.remaining() > 0 {
            let Some(piece) = next_piece(&mut resp, &mut pace, &what, t).await? else {
                break;
            };
            for frame in decoder.feed(&piece).with_context(|| format!("receiving {what}"))? {
                on_frame(frame)?;
            }
        }
        decoder.finish().with_context(|| format!("receiving {what}"))?;
        if decoder.remaining() > 0 {
            bail!("receiving {what}: the response ended with {} still missing", decoder.remaining());
        }
        // Anything after the last expected frame is not read: the connection is dropped.
        Ok(())
    }
}
