//! `ferry export`: its arguments and summary. The layout and the writing are in
//! [`crate::export`].

use anyhow::{Context, Result};
use clap::Args;

use super::{human, open_ro, print_json, Bar, RepoArg};
use crate::export::{self, Destination};

/// The most commits a fleet's reports add as patch sources (the most run ones).
const MAX_RUNNING: usize = 16;

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// Where to: a directory (created if missing), or s3://BUCKET[/PREFIX] with the
    /// credentials, region and endpoint in the usual AWS_* variables (AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT; AWS_ALLOW_HTTP=true for a plain-HTTP
    /// endpoint).
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    to: String,
    /// Prepare patches to each release (branch head or channel target) from this many of
    /// its previous commits, so devices on them download patches from the copy (0: none).
    #[arg(long, value_name = "N", default_value_t = 2)]
    patches_from: usize,
    /// The fleet's state directory (`ferry serve --fleet DIR`; read only, also while the
    /// server runs): prepare patches from every commit its devices report running too.
    #[arg(long, value_name = "DIR", group = "fleet_store")]
    fleet: Option<std::path::PathBuf>,
    /// The fleet's state in PostgreSQL (`ferry serve --fleet-db`), read the same way.
    #[arg(long, value_name = "URL", group = "fleet_store", value_parser = super::serve::postgres_url)]
    fleet_db: Option<String>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn export(a: ExportArgs) -> Result<()> {
    let ExportArgs { repo, to, patches_from, fleet, fleet_db, json } = a;
    let r = open_ro(&repo)?;
    let mut running = Vec::new();
    if let Some(at) = super::bundle::fleet_location(&fleet, &fleet_db) {
        let f = crate::fleet::Fleet::open_read_only(&at)
            .map_err(|e| anyhow::anyhow!("reading the fleet's devices in {}: {e}", at.describe()))?;
        let mut counts: std::collections::HashMap<ferry_store::Id, usize> = Default::default();
        for d in f.devices()? {
            if let Some(id) = d.report.current.as_deref().and_then(|c| c.parse().ok()) {
                *counts.entry(id).or_default() += 1;
            }
        }
        // The most run first, at most MAX_RUNNING of them.
        let mut by_count: Vec<_> = counts.into_iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        running = by_count.into_iter().take(MAX_RUNNING).map(|(id, _)| id).collect();
    }
    let options = export::ExportOptions { patches_from, running };
    let dest = Destination::open(&to)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the export's runtime")?;
    let bar = Bar::new("exporting");
    let summary = runtime.block_on(export::export(&r, &dest, &options, &bar))?;
    drop(bar);
    if json {
        return print_json(&summary);
    }
    if summary.commits_exported == 0 && summary.documents_written == 0 && summary.deltas_written == 0 {
        eprintln!("{} is up to date: {} commits, nothing written", summary.to, summary.commits);
    } else {
        eprintln!(
            "exported {} of {} commits to {}: {} objects, {} packs ({}, {} chunks), {} indexes, {} prepared patches for {} updates ({:.1} CPU s), {} documents; {} written",
            summary.commits_exported,
            summary.commits,
            summary.to,
            summary.objects_written,
            summary.packs_written,
            human(summary.pack_bytes_written),
            summary.chunks_packed,
            summary.indexes_written,
            summary.patches_prepared,
            summary.deltas_written,
            summary.patch_cpu_seconds,
            summary.documents_written,
            human(summary.bytes_written)
        );
    }
    Ok(())
}
