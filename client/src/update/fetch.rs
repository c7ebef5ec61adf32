//! Chunks into staging: plain chunks and patches in batched requests, each chunk verified
//! before it is staged, staging made durable at least once a second.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ferry_delta::pack::{self, MAX_IDS_PER_REQUEST};
use ferry_delta::patch::{self as patch, Patch, PatchPayload};
use ferry_store::Id;
use futures_util::StreamExt;

use crate::config::Config;
use crate::crash;
use crate::http::{Answered, Server, Traffic};
use crate::local::Local;

/// Stages a chunk frame received from a server or a bundle, after checking that it
/// decompresses to exactly `len` bytes that hash to `id`.
/// Written straight into the objects being built when it has a place in them
/// (`Local::write_direct`), else staged as a file.
pub(crate) fn stage_chunk(local: &Local, id: &Id, frame: &[u8], len: u32) -> Result<()> {
    let bytes = ferry_store::chunk::decode_chunk(id, frame, len).map_err(|e| anyhow!("{e} (as sent by the server)"))?;
    if local.write_direct(id, &bytes)? {
        crate::fleet::chunk_received();
        crash::point(crash::Step::ChunkStaged);
        return Ok(());
    }
    stage_frame(local, id, frame)
}

/// Stages a chunk rebuilt from a patch: its bytes are checked against its id, then written
/// in place, or stored as a zstd frame like a downloaded chunk.
pub(crate) fn stage_raw(local: &Local, id: &Id, bytes: &[u8]) -> Result<()> {
    if Id::of(bytes) != *id {
        bail!("the patch rebuilt chunk {id} wrongly (its bytes hash to {})", Id::of(bytes));
    }
    if local.write_direct(id, bytes)? {
        crate::fleet::chunk_received();
        crash::point(crash::Step::ChunkStaged);
        return Ok(());
    }
    let frame = zstd::bulk::compress(bytes, 1).context("compressing a patched chunk")?;
    stage_frame(local, id, &frame)
}

/// Writes a verified frame to `staging/<id>` through `<id>.tmp` (which recovery removes).
/// Not synced here: [`StagingSync`] makes staging durable in one `syncfs` a second.
fn stage_frame(local: &Local, id: &Id, frame: &[u8]) -> Result<()> {
    let path = local.staging_path(id);
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, frame).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    crate::fleet::chunk_received();
    crash::point(crash::Step::ChunkStaged);
    Ok(())
}

/// How often chunks staged during a batch are made durable (`syncfs`).
pub(crate) const STAGING_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Makes the staged chunks durable.
pub(crate) fn sync_staging(local: &Local) {
    if let Ok(dir) = fs::File::open(local.layout.staging()) {
        let _ = nix::unistd::syncfs(&dir);
    }
}

/// Makes staging durable at least every [`STAGING_SYNC_INTERVAL`] while chunks arrive, so a
/// power cut loses at most about a second of a batch, and once more at the end, whether or
/// not the batch completed.
pub(crate) struct StagingSync<'a> {
    local: &'a Local,
    last: Instant,
}

impl<'a> StagingSync<'a> {
    pub(crate) fn new(local: &'a Local) -> StagingSync<'a> {
        StagingSync { local, last: Instant::now() }
    }

    /// After a chunk was staged.
    pub(crate) fn tick(&mut self) {
        if self.last.elapsed() >= STAGING_SYNC_INTERVAL {
            sync_staging(self.local);
            self.last = Instant::now();
        }
    }
}

impl Drop for StagingSync<'_> {
    fn drop(&mut self) {
        sync_staging(self.local);
    }
}

/// Cuts `items` into requests, in order: an item starts a new request when the current one
/// holds `max_items` already, or when adding it would pass one of the `limits` (each item's
/// share of them is `cost`). A single item over a limit still travels, alone.
fn batches<T, const N: usize>(
    items: impl IntoIterator<Item = T>,
    max_items: usize,
    limits: [u64; N],
    cost: impl Fn(&T) -> [u64; N],
) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut current: Vec<T> = Vec::new();
    let mut used = [0u64; N];
    for item in items {
        let c = cost(&item);
        let over = (0..N).any(|i| used[i] + c[i] > limits[i]);
        if !current.is_empty() && (current.len() == max_items || over) {
            out.push(std::mem::take(&mut current));
            used = [0; N];
        }
        for i in 0..N {
            used[i] += c[i];
        }
        current.push(item);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Runs `fetch` on each batch, `concurrency` at a time, adding up their traffic and their
/// outcomes; every batch runs even when one fails, and the first error comes last.
pub(super) async fn run_batches<B, O, F, Fut>(
    batches: Vec<B>,
    concurrency: usize,
    t: &mut Traffic,
    fetch: F,
    mut add: impl FnMut(&mut O, O),
) -> (O, Result<()>)
where
    O: Default,
    F: Fn(B) -> Fut,
    Fut: std::future::Future<Output = (Traffic, O, Result<()>)>,
{
    let results: Vec<(Traffic, O, Result<()>)> =
        futures_util::stream::iter(batches).map(fetch).buffer_unordered(concurrency.max(1)).collect().await;
    let mut total = O::default();
    let mut first_err = None;
    for (bt, o, r) in results {
        t.requests += bt.requests;
        t.bytes += bt.bytes;
        add(&mut total, o);
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    (total, first_err.map_or(Ok(()), Err))
}

/// Downloads `missing` (id → length) into staging; returns the number of chunk frames and
/// their bytes received, even when some batches failed (the error comes last).
pub(crate) async fn fetch_chunks(
    server: &Server,
    local: &Local,
    missing: &[(Id, u32)],
    config: &Config,
    t: &mut Traffic,
) -> (u64, u64, Result<()>) {
    let batches =
        batches(missing.iter().copied(), MAX_IDS_PER_REQUEST, [config.batch_bytes], |(_, len)| [u64::from(*len)]);
    let fetch = |batch: Vec<(Id, u32)>| async move {
        let lens: HashMap<Id, u32> = batch.iter().copied().collect();
        let expected: Vec<(Id, u32)> = batch.iter().map(|(id, len)| (*id, pack::max_stored_len(*len))).collect();
        let mut t = Traffic::default();
        let (mut n, mut b) = (0u64, 0u64);
        let mut sync = StagingSync::new(local);
        let r = server
            .pack("chunks", &expected, &mut t, |frame| {
                let len = lens.get(&frame.id).copied().unwrap_or(0);
                stage_chunk(local, &frame.id, &frame.bytes, len)?;
                sync.tick();
                n += 1;
                b += (frame.bytes.len() + pack::FRAME_HEADER) as u64;
                Ok(())
            })
            .await;
        drop(sync);
        (t, (n, b), r)
    };
    let ((n, b), r) = run_batches(batches, config.concurrency, t, fetch, |total: &mut (u64, u64), (n, b)| {
        total.0 += n;
        total.1 += b;
    })
    .await;
    (n, b, r)
}

/// Applies one patch answer: the reference is rebuilt from the device's own chunks, each
/// verified as it is read; every resulting chunk is verified before it is staged. `staged`
/// counts the chunks staged, also when a later one fails.
pub(crate) fn apply_patch(local: &Local, p: &Patch, answer: &[u8], staged: &mut u64) -> Result<()> {
    let mut reference = Some(Vec::with_capacity(p.reference_len() as usize));
    for c in &p.reference {
        match local.read_chunk(&c.id, c.len)? {
            Some(bytes) => {
                if let Some(r) = reference.as_mut() {
                    r.extend_from_slice(&bytes);
                }
            }
            None => {
                tracing::warn!(chunk = %c.id, "a reference chunk is missing or damaged on the device");
                reference = None;
                break;
            }
        }
    }
    match patch::decode_patch_response(p, reference.as_deref(), answer)? {
        PatchPayload::Patched(bytes) => {
            let mut offset = 0usize;
            for c in &p.target {
                let end = offset + c.len as usize;
                stage_raw(local, &c.id, &bytes[offset..end])?;
                *staged += 1;
                offset = end;
            }
        }
        PatchPayload::Plain(frames) => {
            for (c, frame) in p.target.iter().zip(frames) {
                stage_chunk(local, &c.id, frame, c.len)?;
                *staged += 1;
            }
        }
    }
    Ok(())
}

/// What fetching patches did.
#[derive(Default)]
pub(crate) struct PatchOutcome {
    pub(crate) chunks: u64,
    pub(crate) bytes: u64,
    /// Chunks to fetch plain instead.
    pub(crate) fallback: Vec<(Id, u32)>,
}

/// Fetches `patches` in batched requests, one at a time: the server computes ahead in
/// parallel, and the device holds one patch's window, answer and output at once, which
/// keeps its memory bounded (about 16 MiB above the rest). A patch that cannot be
/// used, or a batch the server refuses, turns into plain chunks (in the outcome's
/// `fallback`); a broken connection is an error, and the next attempt plans again with
/// what is still missing.
pub(crate) async fn fetch_patches<'p>(
    server: &Server,
    local: &Local,
    patches: &'p [Patch],
    config: &Config,
    t: &mut Traffic,
) -> (PatchOutcome, Result<()>) {
    let target_bytes = config.batch_bytes.min(patch::MAX_REQUEST_TARGET_BYTES);
    let batches = batches(patches, patch::MAX_PATCHES_PER_REQUEST, [patch::MAX_PATCH_IDS as u64, target_bytes], |p| {
        [(p.reference.len() + p.target.len()) as u64, p.target_len()]
    });
    let fetch = |batch: Vec<&'p Patch>| async move {
        let by_key: HashMap<Id, &Patch> = batch.iter().map(|p| (p.key(), *p)).collect();
        let expected: Vec<(Id, u32)> = batch.iter().map(|p| (p.key(), p.max_response_len())).collect();
        let body = patch::encode_patch_request(batch.iter().copied());
        let mut t = Traffic::default();
        let mut out = PatchOutcome::default();
        let mut received: HashSet<Id> = HashSet::new();
        let mut sync = StagingSync::new(local);
        let r = server
            .post_pack("patches", body, &expected, &mut t, |frame| {
                let Some(p) = by_key.get(&frame.id) else { bail!("the server sent patch {} unasked", frame.id) };
                received.insert(frame.id);
                out.bytes += (frame.bytes.len() + pack::FRAME_HEADER) as u64;
                let mut staged = 0;
                let applied = apply_patch(local, p, &frame.bytes, &mut staged);
                out.chunks += staged;
                if let Err(e) = applied {
                    tracing::warn!(patch = %frame.id, error = %format!("{e:#}"), "patch unusable; fetching its chunks plain");
                    out.fallback.extend(p.target.iter().filter(|c| !local.is_staged(&c.id)).map(|c| (c.id, c.len)));
                }
                sync.tick();
                Ok(())
            })
            .await;
        drop(sync);
        let r = match r {
            Err(e) if e.downcast_ref::<Answered>().is_some() => {
                tracing::warn!(error = %format!("{e:#}"), "the server refused patches; fetching their chunks plain");
                for p in batch.iter().filter(|p| !received.contains(&p.key())) {
                    out.fallback.extend(p.target.iter().map(|c| (c.id, c.len)));
                }
                Ok(())
            }
            r => r,
        };
        (t, out, r)
    };
    run_batches(batches, 1, t, fetch, |total: &mut PatchOutcome, o| {
        total.chunks += o.chunks;
        total.bytes += o.bytes;
        total.fallback.extend(o.fallback);
    })
    .await
}
