//! `ferry bundle`: its arguments, the rollout check against a fleet's state, where the
//! bundle goes (a file written atomically, or stdout) and the summary. The format and the
//! writing are in [`crate::bundle`].

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;

use super::{human, open_ro, print_json, Bar, RepoArg};
use crate::bundle::{self, BundleTo};
use crate::fleet::Fleet;

#[derive(Debug, Args)]
pub struct BundleArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// A channel (its newest document; `channel:NAME` if a branch has the same name) or
    /// a commit (id, unique prefix, or branch).
    #[arg(long, value_name = "CHANNEL|COMMIT")]
    to: String,
    /// A commit the devices run: chunks and trees it holds are left out. Repeatable;
    /// the bundle then serves devices on any of them.
    #[arg(long, value_name = "COMMIT")]
    from: Vec<String>,
    /// For a channel: only this hardware revision's target (repeatable).
    #[arg(long, value_name = "REV")]
    hardware: Vec<String>,
    /// The fleet's state directory (`ferry serve --fleet DIR`; read only, also while the
    /// server runs): a channel whose rollout is paused or aborted on its newest document
    /// is refused, since a bundle installs past the rollout.
    #[arg(long, value_name = "DIR", group = "fleet_store")]
    fleet: Option<PathBuf>,
    /// The fleet's state in PostgreSQL (`ferry serve --fleet-db`), read the same way.
    #[arg(long, value_name = "URL", group = "fleet_store", value_parser = super::serve::postgres_url)]
    fleet_db: Option<String>,
    /// Bundle a channel's document that a halted rollout holds back anyway.
    #[arg(long)]
    force: bool,
    /// The bundle file (written atomically), or - for stdout.
    #[arg(short = 'o', long, value_name = "FILE")]
    output: PathBuf,
    /// Print the summary as JSON on stdout (not with -o -).
    #[arg(long)]
    json: bool,
}

pub fn bundle(a: BundleArgs) -> Result<()> {
    let BundleArgs { repo, to, from, hardware, fleet, fleet_db, force, output, json } = a;
    let r = open_ro(&repo)?;
    let target = bundle::resolve_to(&r, &to, &hardware)?;
    if let (BundleTo::Channel { name, .. }, Some(at)) = (&target, fleet_location(&fleet, &fleet_db)) {
        let f = Fleet::open_read_only(&at)
            .map_err(|e| anyhow!("reading the fleet's rollouts in {}: {e}", at.describe()))?;
        if let Some(warning) = bundle::check_rollout(&r, name, &f, force)? {
            eprintln!("warning: {warning}");
        }
    }
    let from = from.iter().map(|f| r.resolve(f)).collect::<Result<Vec<_>, _>>()?;
    let to_stdout = output.as_os_str() == "-";
    if to_stdout && json {
        bail!("--json prints on stdout, where -o - writes the bundle; choose one");
    }
    let summary = if to_stdout {
        if std::io::stdout().is_terminal() {
            bail!("refusing to write a bundle to a terminal; redirect stdout or use -o FILE");
        }
        let bar = Bar::new("bundling");
        bundle::write_bundle(&r, &target, &from, std::io::stdout().lock(), &bar)?
    } else {
        let bar = Bar::new("bundling");
        ferry_durable::replace_with::<_, anyhow::Error>(&output, ferry_durable::PUBLIC, |f| {
            bundle::write_bundle(&r, &target, &from, f, &bar)
        })
        .with_context(|| format!("writing {}", output.display()))?
    };
    if json {
        return print_json(&summary);
    }
    let what = match (&summary.channel, summary.serial) {
        (Some(c), Some(n)) => format!("channel {c} (document serial {n}): "),
        _ => "commit ".to_string(),
    };
    eprintln!(
        "wrote {}: {what}{}; {} trees and {} chunks ({} uncompressed), {}{}",
        output.display(),
        summary
            .commits
            .iter()
            .map(|c| format!(
                "{} {} for {}",
                &c.commit[..12],
                c.version,
                if c.hardware.is_empty() { "any hardware".into() } else { c.hardware.join(", ") }
            ))
            .collect::<Vec<_>>()
            .join("; "),
        summary.trees,
        summary.chunks,
        human(summary.chunk_bytes),
        human(summary.bytes),
        if summary.from.is_empty() {
            String::new()
        } else {
            format!(", for devices on {} commit(s)", summary.from.len())
        }
    );
    Ok(())
}

/// Where `--fleet DIR` or `--fleet-db URL` (one at most: clap's group) says the fleet is.
pub(super) fn fleet_location(fleet: &Option<PathBuf>, fleet_db: &Option<String>) -> Option<crate::fleet::db::Location> {
    match (fleet, fleet_db) {
        (Some(dir), _) => Some(crate::fleet::db::Location::Dir(dir.clone())),
        (None, Some(url)) => Some(crate::fleet::db::Location::Postgres(url.clone())),
        (None, None) => None,
    }
}
