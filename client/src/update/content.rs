//! Chunks from a static copy of the repository (`content_url`, written by `ferry export`).
//!
//! The same split as from the server: the chunks the device lacks are planned as patches
//! against the running release's files (`plan_fetch`) and plain chunks. Patches come from the
//! copy's prepared patches for this pair of commits (`v1/deltas/<from>/<to>`), plain chunks
//! (and the targets of patches the copy did not prepare) from the commit's content index
//! (`v1/index/<commit>`), both as a few coalesced single-range GETs of packs. Each frame is
//! checked against its index entry as it arrives, each patch's output and each chunk against
//! the signed trees before it is staged, as from the server. The indexes are not signed: a
//! wrong one can only waste a request (the frame it points at is refused) or send the device
//! to the server for what is left.

use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};
use ferry_delta::content::{self, chunk_frame_bound, delta_id, ContentIndex, RangeFrame, RangeReader};
use ferry_delta::pack::FRAME_HEADER;
use ferry_delta::patch::Patch;
use ferry_store::Id;

use crate::config::Config;
use crate::http::{Server, Traffic};
use crate::local::Local;

use super::fetch::{apply_patch, run_batches, stage_chunk, StagingSync};
use super::plan::{distinct_chunks, plan_fetch, Plan};

/// Requests an update aims at for each kind (patches, plain chunks): past this, gaps between
/// wanted frames are read through...
const TARGET_REQUESTS: usize = 8;
/// ...as long as that reads at most this many percent more than the wanted frames.
const MAX_OVERREAD_PERCENT: u64 = 5;

/// What fetching from the copy did.
#[derive(Debug, Default)]
pub(crate) struct CopyOutcome {
    /// Chunks staged, patched or plain.
    pub(crate) chunks: u64,
    /// Of those, the ones rebuilt from prepared patches.
    pub(crate) patched: u64,
    /// Prepared patches used.
    pub(crate) patches: u64,
    /// Frame bytes received (headers included), not the gaps read through.
    pub(crate) bytes: u64,
    /// Patches whose prepared answer was refused: for the server's patch route.
    pub(crate) for_server: Vec<Patch>,
    /// The chunks of patches the copy did not prepare: fetched plain from it.
    unprepared: Vec<(Id, u32)>,
}

impl CopyOutcome {
    fn add(&mut self, o: CopyOutcome) {
        self.chunks += o.chunks;
        self.patched += o.patched;
        self.patches += o.patches;
        self.bytes += o.bytes;
        self.for_server.extend(o.for_server);
        self.unprepared.extend(o.unprepared);
    }
}

/// What the copy is asked for, for the commit `head` installed over `current`.
pub(crate) struct CopyRequest<'a> {
    pub(crate) copy: &'a Server,
    pub(crate) config: &'a Config,
    pub(crate) current: Option<Id>,
    pub(crate) head: Id,
}

/// Stages `missing` from the copy: the outcome counts what was staged, also when the result
/// is an error (the caller then fetches what is still missing from the server), and lists
/// the patches for the server to answer.
pub(crate) async fn fetch_from_copy(
    req: &CopyRequest<'_>,
    local: &Local,
    plan: &Plan,
    missing: &[(Id, u32)],
    t: &mut Traffic,
) -> (CopyOutcome, Result<()>) {
    let mut total = CopyOutcome::default();
    if missing.is_empty() {
        return (total, Ok(()));
    }
    let r = async {
        let fetch = plan_fetch(req.config, local, req.current, plan, missing)?;
        let mut plain = fetch.plain;
        let mut delta = None;
        if let Some(current) = req.current.filter(|_| !fetch.patches.is_empty() || !plain.is_empty()) {
            let (o, index) = fetch_patches(req, local, plan, current, fetch.patches, t).await?;
            total.add(o);
            plain.append(&mut total.unprepared);
            delta = index;
        }
        plain.retain(|(id, _)| !local.is_staged(id));
        let (o, r) = fetch_plain(req, local, plan, delta.as_ref(), &plain, t).await;
        total.add(o);
        r
    }
    .await;
    (total, r)
}

/// Max entries of an index of this plan's commit, and its largest encoding: the signed
/// trees bound both (one entry per distinct chunk, and a patch has at least one target
/// chunk; at most one pack per entry).
fn index_bounds(plan: &Plan) -> (usize, usize) {
    let entries = usize::try_from(distinct_chunks(plan)).unwrap_or(usize::MAX);
    (entries, 4 + 1 + 32 + 4 + 4 + entries.saturating_mul(32 + content::INDEX_ENTRY))
}

/// Reads an index from the copy: `None` when the copy does not have it.
async fn read_index(
    req: &CopyRequest<'_>,
    path: &str,
    name: &Id,
    plan: &Plan,
    t: &mut Traffic,
) -> Result<Option<ContentIndex>> {
    let (entries, bytes) = index_bounds(plan);
    let what = format!("{path} from {}", req.copy.base());
    let Some(body) = req.copy.get_optional(path, bytes, &what, t).await? else {
        return Ok(None);
    };
    Ok(Some(ContentIndex::decode(&body, name, entries).with_context(|| what)?))
}

/// The prepared patches this device planned, from `v1/deltas/<current>/<head>`. The chunks
/// of patches not prepared come plain from the copy (the outcome's `unprepared`): no delta,
/// or one that cannot be read (S3 answers 403 for a missing key), is no error. A patch whose
/// answer does not rebuild its chunks goes to the server (`for_server`).
async fn fetch_patches(
    req: &CopyRequest<'_>,
    local: &Local,
    plan: &Plan,
    current: Id,
    patches: Vec<Patch>,
    t: &mut Traffic,
) -> Result<(CopyOutcome, Option<ContentIndex>)> {
    let path = format!("deltas/{current}/{}", req.head);
    let index = match read_index(req, &path, &delta_id(&current, &req.head), plan, t).await {
        Ok(Some(index)) => index,
        Ok(None) => {
            tracing::info!(path, "the copy has no prepared patches for this update; fetching their chunks plain");
            return Ok((CopyOutcome { unprepared: targets_of(&patches), ..Default::default() }, None));
        }
        Err(e) => {
            tracing::warn!(path, error = %format!("{e:#}"), "the copy's prepared patches cannot be read; fetching their chunks plain");
            return Ok((CopyOutcome { unprepared: targets_of(&patches), ..Default::default() }, None));
        }
    };
    if patches.is_empty() {
        return Ok((CopyOutcome::default(), Some(index)));
    }
    // Prepared, and no longer than the patch allows (a longer entry counts as unprepared).
    let bound = |p: &Patch| p.max_response_len().saturating_add(FRAME_HEADER as u32);
    let (prepared, unprepared): (Vec<Patch>, Vec<Patch>) =
        patches.into_iter().partition(|p| index.locate(&p.key()).is_some_and(|at| at.len <= bound(p)));
    let wanted: Vec<(Id, u32)> = prepared.iter().map(|p| (p.key(), bound(p))).collect();
    let ranges =
        content::coalesced_ranges(&index, &wanted, TARGET_REQUESTS, MAX_OVERREAD_PERCENT, req.config.batch_bytes)
            .with_context(|| format!("{path} from {}", req.copy.base()))?;
    let by_key: HashMap<Id, &Patch> = prepared.iter().map(|p| (p.key(), p)).collect();
    let refused: std::cell::RefCell<Vec<Id>> = Default::default();
    let (by_key, refused_ref) = (&by_key, &refused);
    let (mut o, r) = fetch_ranges(req, local, ranges, t, |frame| {
        let p = by_key.get(&frame.id).ok_or_else(|| anyhow!("an unasked patch {}", frame.id))?;
        let mut staged = 0;
        let bytes = (frame.stored.len() + FRAME_HEADER) as u64;
        if let Err(e) = apply_patch(local, p, &frame.stored, &mut staged) {
            tracing::warn!(patch = %frame.id, error = %format!("{e:#}"), "a prepared patch from the copy is refused; asking the server for it");
            refused_ref.borrow_mut().push(frame.id);
        }
        Ok(CopyOutcome { chunks: staged, patched: staged, patches: 1, bytes, ..Default::default() })
    })
    .await;
    r?;
    // A prepared patch that staged none of its chunks goes to the server, as a patch; one
    // that staged some (each verified) leaves the rest to plain ranges.
    let refused = refused.into_inner();
    let mut plain = targets_of(&unprepared);
    for p in prepared {
        let left: Vec<(Id, u32)> = p.target.iter().filter(|c| !local.is_staged(&c.id)).map(|c| (c.id, c.len)).collect();
        if left.len() == p.target.len() {
            o.for_server.push(p);
        } else if !left.is_empty() || refused.contains(&p.key()) {
            plain.extend(left);
        }
    }
    o.unprepared = plain;
    Ok((o, Some(index)))
}

fn targets_of(patches: &[Patch]) -> Vec<(Id, u32)> {
    patches.iter().flat_map(|p| p.target.iter().map(|c| (c.id, c.len))).collect()
}

/// Plain chunks through the prepared patches' index (which places the chunks no patch
/// covers) when it has them all, else through the commit's content index.
async fn fetch_plain(
    req: &CopyRequest<'_>,
    local: &Local,
    plan: &Plan,
    delta: Option<&ContentIndex>,
    missing: &[(Id, u32)],
    t: &mut Traffic,
) -> (CopyOutcome, Result<()>) {
    if missing.is_empty() {
        return (CopyOutcome::default(), Ok(()));
    }
    let path = format!("index/{}", req.head);
    let wanted: Vec<(Id, u32)> = missing.iter().map(|(id, len)| (*id, chunk_frame_bound(*len))).collect();
    let ranges = async {
        let fetched;
        let index = match delta.filter(|d| missing.iter().all(|(id, _)| d.locate(id).is_some())) {
            Some(d) => d,
            None => {
                fetched = read_index(req, &path, &req.head, plan, t).await?.ok_or_else(|| {
                    anyhow!("{} has no content index for commit {} (not exported yet?)", req.copy.base(), req.head)
                })?;
                &fetched
            }
        };
        content::coalesced_ranges(index, &wanted, TARGET_REQUESTS, MAX_OVERREAD_PERCENT, req.config.batch_bytes)
            .with_context(|| format!("{path} from {}", req.copy.base()))
    }
    .await;
    let ranges = match ranges {
        Ok(r) => r,
        Err(e) => return (CopyOutcome::default(), Err(e)),
    };
    let lens: HashMap<Id, u32> = missing.iter().copied().collect();
    let lens = &lens;
    fetch_ranges(req, local, ranges, t, |frame| {
        let len = lens.get(&frame.id).copied().ok_or_else(|| anyhow!("an unasked chunk {}", frame.id))?;
        stage_chunk(local, &frame.id, &frame.stored, len)
            .with_context(|| format!("chunk {} from {}", frame.id, req.copy.base()))?;
        Ok(CopyOutcome { chunks: 1, bytes: (frame.stored.len() + FRAME_HEADER) as u64, ..Default::default() })
    })
    .await
}

/// GETs `ranges`, `concurrency` at a time, each frame handed to `on_frame` as it is
/// complete (checked against its index entry); staging is made durable as from the server.
async fn fetch_ranges(
    req: &CopyRequest<'_>,
    local: &Local,
    ranges: Vec<content::Range>,
    t: &mut Traffic,
    on_frame: impl Fn(RangeFrame) -> Result<CopyOutcome>,
) -> (CopyOutcome, Result<()>) {
    let on_frame = &on_frame;
    let fetch = |range: content::Range| async move {
        let mut t = Traffic::default();
        let mut out = CopyOutcome::default();
        let path = format!("packs/{}", range.pack());
        let (start, end) = (range.start(), range.end());
        let mut reader = RangeReader::new(range);
        let mut sync = StagingSync::new(local);
        let r = req
            .copy
            .get_range(&path, start, end, &mut t, |piece| {
                for frame in reader.feed(piece)? {
                    out.add(on_frame(frame)?);
                    sync.tick();
                }
                Ok(())
            })
            .await
            .and_then(|()| Ok(reader.finish()?));
        drop(sync);
        (t, out, r)
    };
    run_batches(ranges, req.config.concurrency, t, fetch, CopyOutcome::add).await
}
