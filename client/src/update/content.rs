//! Chunks from a static copy of the repository (`content_url`, written by `ferry export`):
//! the commit's content index says where each chunk lies in which pack, and the chunks the
//! device lacks arrive in a few single-range GETs, each frame checked against the index as
//! it arrives and each chunk against its signed length and id before it is staged, as from
//! the server. The index is not signed: a wrong one can only waste a request (the frame it
//! points at is refused) or make the device ask the server instead.

use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};
use ferry_delta::content::{self, ContentIndex, RangeReader};
use ferry_delta::pack::FRAME_HEADER;
use ferry_store::Id;

use crate::config::Config;
use crate::http::{Server, Traffic};
use crate::local::Local;

use super::fetch::{run_batches, stage_chunk, StagingSync};
use super::plan::{distinct_chunks, Plan};

/// Requests an update aims at: past this, gaps between wanted frames are read through...
const TARGET_REQUESTS: usize = 8;
/// ...as long as that reads at most this many percent more than the wanted frames.
const MAX_OVERREAD_PERCENT: u64 = 5;

/// What fetching from the copy did.
#[derive(Debug, Default)]
pub(crate) struct CopyOutcome {
    pub(crate) chunks: u64,
    /// Chunk frame bytes staged (header included), not the gaps read through.
    pub(crate) bytes: u64,
}

/// Stages `missing` from the copy at `copy`: the outcome counts what was staged, also when
/// the result is an error (the caller then fetches what is still missing from the server).
pub(crate) async fn fetch_from_copy(
    copy: &Server,
    local: &Local,
    config: &Config,
    head: &Id,
    plan: &Plan,
    missing: &[(Id, u32)],
    t: &mut Traffic,
) -> (CopyOutcome, Result<()>) {
    if missing.is_empty() {
        return (CopyOutcome::default(), Ok(()));
    }
    let ranges = match plan_ranges(copy, config, head, plan, missing, t).await {
        Ok(r) => r,
        Err(e) => return (CopyOutcome::default(), Err(e)),
    };
    let lens: HashMap<Id, u32> = missing.iter().copied().collect();
    let lens = &lens;
    let fetch = |range: content::Range| async move {
        let mut t = Traffic::default();
        let mut out = CopyOutcome::default();
        let path = format!("packs/{}", range.pack());
        let (start, end) = (range.start(), range.end());
        let mut reader = RangeReader::new(range);
        let mut sync = StagingSync::new(local);
        let r = copy
            .get_range(&path, start, end, &mut t, |piece| {
                for frame in reader.feed(piece)? {
                    let len = lens.get(&frame.id).copied().ok_or_else(|| anyhow!("an unasked chunk {}", frame.id))?;
                    stage_chunk(local, &frame.id, &frame.stored, len)
                        .with_context(|| format!("chunk {} from {}", frame.id, copy.base()))?;
                    sync.tick();
                    out.chunks += 1;
                    out.bytes += (frame.stored.len() + FRAME_HEADER) as u64;
                }
                Ok(())
            })
            .await
            .and_then(|()| Ok(reader.finish()?));
        drop(sync);
        (t, out, r)
    };
    run_batches(ranges, config.concurrency, t, fetch, |total: &mut CopyOutcome, o| {
        total.chunks += o.chunks;
        total.bytes += o.bytes;
    })
    .await
}

/// Reads the commit's index from the copy and plans the GETs for `missing`.
async fn plan_ranges(
    copy: &Server,
    config: &Config,
    head: &Id,
    plan: &Plan,
    missing: &[(Id, u32)],
    t: &mut Traffic,
) -> Result<Vec<content::Range>> {
    // The signed trees bound the index: one entry per distinct chunk, one pack per entry.
    let max_entries = usize::try_from(distinct_chunks(plan)).unwrap_or(usize::MAX);
    let max_bytes = 4 + 1 + 32 + 4 + 4 + max_entries.saturating_mul(32 + content::INDEX_ENTRY);
    let bytes = copy
        .content_index(head, max_bytes, t)
        .await?
        .ok_or_else(|| anyhow!("{} has no content index for commit {head} (not exported yet?)", copy.base()))?;
    let index = ContentIndex::decode(&bytes, head, max_entries)
        .with_context(|| format!("the content index of {head} from {}", copy.base()))?;
    let ranges = content::coalesced_ranges(&index, missing, TARGET_REQUESTS, MAX_OVERREAD_PERCENT, config.batch_bytes)
        .with_context(|| format!("the content index of {head} from {}", copy.base()))?;
    Ok(ranges)
}
