//! `ferry export`: its arguments and summary. The layout and the writing are in
//! [`crate::export`].

use anyhow::{Context, Result};
use clap::Args;

use super::{human, open_ro, print_json, Bar, RepoArg};
use crate::export::{self, Destination};

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
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn export(a: ExportArgs) -> Result<()> {
    let ExportArgs { repo, to, json } = a;
    let r = open_ro(&repo)?;
    let dest = Destination::open(&to)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the export's runtime")?;
    let bar = Bar::new("exporting");
    let summary = runtime.block_on(export::export(&r, &dest, &bar))?;
    drop(bar);
    if json {
        return print_json(&summary);
    }
    if summary.commits_exported == 0 && summary.documents_written == 0 {
        eprintln!("{} is up to date: {} commits, nothing written", summary.to, summary.commits);
    } else {
        eprintln!(
            "exported {} of {} commits to {}: {} objects, {} packs ({}, {} chunks), {} indexes, {} documents; {} written",
            summary.commits_exported,
            summary.commits,
            summary.to,
            summary.objects_written,
            summary.packs_written,
            human(summary.pack_bytes_written),
            summary.chunks_packed,
            summary.indexes_written,
            summary.documents_written,
            human(summary.bytes_written)
        );
    }
    Ok(())
}
