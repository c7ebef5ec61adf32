//! One pipeline, several sources. Once a release is chosen and its commit checked (by the
//! server's documents or a bundle's header), installing it is the same work whatever the
//! bytes come from: make its trees readable, plan the deployment, find the chunks the
//! device lacks, check they can come and fit, stage them, assemble, switch and try
//! ([`stage`], then [`super::assemble`] and [`super::install`]). What differs is a
//! [`Source`]: the server ([`Network`]) or an offline bundle (`crate::bundle`).

use std::fs;

use anyhow::Result;
use ferry_store::{Commit, Id, ReadTrees};

use crate::config::Config;
use crate::http::{Server, Traffic};
use crate::local::Local;

use super::content::{fetch_from_copy, CopyRequest};
use super::fetch::{fetch_chunks, fetch_patches};
use super::plan::{check_space, missing_chunks, plan_fetch, plan_with, Plan};
use super::trees::fetch_trees;
use super::UpdateSummary;

/// Where a release's trees and chunks come from.
pub(crate) trait Source {
    /// Makes every tree under `commit.root` readable through [`Source::tree`]: fetched,
    /// verified and stored, or read from a bundle and held until [`Source::keep`]. A source
    /// that cannot deliver every tree refuses here, before anything is written.
    async fn trees(&mut self, local: &Local, commit: &Commit) -> Result<()>;

    /// The trees under the commit's root (after [`Source::trees`]), for planning.
    fn tree_reader<'a>(&'a self, local: &'a Local) -> impl ReadTrees<Error = anyhow::Error> + 'a;

    /// Refuses, before anything is written, if the source cannot deliver the chunks in
    /// `missing` (listed in the order the files name them).
    fn can_deliver(&self, local: &Local, plan: &Plan, missing: &[(Id, u32)]) -> Result<()>;

    /// Stores the commit and the trees it held back, all verified (the release is going to
    /// be installed from here on).
    fn keep(&mut self, local: &Local, head: &Id) -> Result<()>;

    /// Stages every chunk in `missing`, each verified before it is staged.
    async fn chunks(&mut self, local: &Local, plan: &Plan, missing: &[(Id, u32)]) -> Result<()>;
}

/// The shared steps from a checked commit to staged chunks: trees, the plan, the chunks the
/// device lacks (none if it already runs the release), whether the source has them and they
/// fit, then storing and staging. Returns the deployment's plan, for [`super::assemble`].
pub(crate) async fn stage<S: Source>(
    config: &Config,
    local: &Local,
    source: &mut S,
    head: &Id,
    commit: &Commit,
    up_to_date: bool,
) -> Result<Plan> {
    crate::progress::phase("fetching the release's trees");
    source.trees(local, commit).await?;
    crate::progress::phase("planning");
    let plan = plan_with(&commit.root, &source.tree_reader(local))?;
    // The objects the device lacks are built in place as their chunks arrive.
    let mut building = std::collections::HashSet::new();
    let found = local.begin_direct(
        plan.files
            .iter()
            .filter(|f| building.insert(f.object) && !local.object_path(&f.object).exists())
            .map(|f| (f.object, f.chunks.as_slice())),
    )?;
    if found > 0 {
        tracing::info!(chunks = found, "kept the intact chunks of objects an earlier attempt began");
    }
    // In the order the files name them: the chunks of one object arrive together and are
    // written to it in place one after the other.
    let missing = if up_to_date { Vec::new() } else { missing_chunks(local, &plan)? };
    source.can_deliver(local, &plan, &missing)?;
    check_space(config, local, &plan, &missing)?;
    if !up_to_date {
        source.keep(local, head)?;
    }
    let n = missing.len();
    crate::progress::counting(format!("receiving {n} chunk{}", if n == 1 { "" } else { "s" }));
    source.chunks(local, &plan, &missing).await?;
    Ok(plan)
}

/// The server: trees compressed against the device's own, then chunks as patches against
/// the running release's files where that is smaller, the rest plain, all in batched
/// requests; what it moved is added to the update's summary.
pub(crate) struct Network<'a> {
    pub(crate) config: &'a Config,
    pub(crate) server: &'a Server,
    /// The static copy (`content_url`) chunks are read from first, if any.
    pub(crate) copy: Option<&'a Server>,
    /// The commit being installed (its content index names it).
    pub(crate) head: Id,
    pub(crate) current: Option<Id>,
    pub(crate) traffic: &'a mut Traffic,
    pub(crate) summary: &'a mut UpdateSummary,
}

impl Source for Network<'_> {
    async fn trees(&mut self, local: &Local, commit: &Commit) -> Result<()> {
        let old_root = match self.current {
            Some(c) => local.commit(&c)?.map(|c| c.root),
            None => None,
        };
        fetch_trees(self.server, local, &commit.root, old_root, self.traffic).await
    }

    fn tree_reader<'a>(&'a self, local: &'a Local) -> impl ReadTrees<Error = anyhow::Error> + 'a {
        // Every tree was fetched and stored by `trees`.
        local
    }

    fn can_deliver(&self, _: &Local, _: &Plan, _: &[(Id, u32)]) -> Result<()> {
        // The server holds every chunk of the commits it serves; a gap is a network error
        // when it is asked for.
        Ok(())
    }

    fn keep(&mut self, _: &Local, _: &Id) -> Result<()> {
        // The commit and each tree were stored as they arrived, verified.
        Ok(())
    }

    async fn chunks(&mut self, local: &Local, plan: &Plan, missing: &[(Id, u32)]) -> Result<()> {
        let (config, s) = (self.config, &mut *self.summary);
        let staged_before = fs::read_dir(local.layout.staging()).map_or(0, |d| d.count() as u64);
        crate::fleet::set_progress_total(missing.len() as u64, staged_before);
        let mut rest = missing.to_vec();
        if let Some(copy) = self.copy {
            let req = CopyRequest { copy, config, current: self.current, head: self.head };
            let (got, r) = fetch_from_copy(&req, local, plan, missing, self.traffic).await;
            s.chunks_downloaded += got.chunks;
            s.chunks_from_copy += got.chunks;
            s.chunks_patched += got.patched;
            s.patches += got.patches;
            s.chunk_bytes_downloaded += got.bytes;
            match r {
                Ok(()) if got.for_server.is_empty() => {
                    tracing::info!(chunks = got.chunks, copy = copy.base(), "chunks fetched from the static copy");
                    return Ok(());
                }
                Ok(()) => {
                    // Prepared patches the device refused, from the server.
                    tracing::info!(
                        chunks = got.chunks,
                        copy = copy.base(),
                        server_patches = got.for_server.len(),
                        "chunks fetched from the static copy; patches it sent wrong from the server"
                    );
                    return self.patches_then_plain(local, got.for_server, Vec::new()).await;
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    tracing::warn!(error = %why, copy = copy.base(), staged = got.chunks, "the static copy failed; fetching the rest from the server");
                    s.copy_fallback = Some(why);
                    rest.retain(|(id, _)| !local.is_staged(id));
                }
            }
        }
        let missing = &rest[..];
        let fetch = plan_fetch(config, local, self.current, plan, missing)?;
        self.patches_then_plain(local, fetch.patches, fetch.plain).await
    }
}

impl Network<'_> {
    /// `patches` from the server's patch route, then `plain` and whatever a patch could not
    /// give from its chunk route.
    async fn patches_then_plain(
        &mut self,
        local: &Local,
        patches: Vec<ferry_delta::patch::Patch>,
        plain: Vec<(Id, u32)>,
    ) -> Result<()> {
        let (config, server, s) = (self.config, self.server, &mut *self.summary);
        let fetch = super::plan::FetchPlan { patches, plain };
        crate::release_free_memory();
        let (patched, r) = fetch_patches(server, local, &fetch.patches, config, self.traffic).await;
        s.patches += fetch.patches.len() as u64;
        s.chunks_downloaded += patched.chunks;
        s.chunks_patched += patched.chunks;
        s.chunk_bytes_downloaded += patched.bytes;
        s.patch_fallbacks += patched.fallback.len() as u64;
        r?;
        let mut plain = fetch.plain;
        plain.extend(patched.fallback);
        let (n, b, r) = fetch_chunks(server, local, &plain, config, self.traffic).await;
        s.chunks_downloaded += n;
        s.chunk_bytes_downloaded += b;
        r
    }
}
