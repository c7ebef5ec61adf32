//! The power-cut runs' report: one progress line per cut on stderr as it ends, and at the
//! end a Markdown table of every cut (where it landed, what the next boot found) with a
//! summary and where the cuts landed by step, printed on stdout and, with `--report FILE`,
//! written to FILE.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::Result;

/// One cut's outcome, for the report.
#[derive(Debug)]
pub struct Cut {
    /// Seconds from the update's start to the cut (none: it was not cut).
    at: Option<f64>,
    /// Where it landed, how it was aimed and what the disk's cache lost.
    step: String,
    /// What the next boot found, or what failed (the error's whole chain).
    outcome: Result<String, String>,
}

impl Cut {
    /// Prints the line of cut `i` (from 0) of `cuts` as it ends, and keeps its outcome for
    /// the table (the line shows the error's outermost message, the table the first line of
    /// its whole chain).
    pub fn record(i: u32, cuts: u32, at: Option<f64>, step: String, outcome: anyhow::Result<String>) -> Cut {
        match &outcome {
            Ok(m) => eprintln!("cut {:>3}/{cuts} {}, {step}: survived; {m}", i + 1, seconds(at)),
            Err(e) => eprintln!("cut {:>3}/{cuts} {}, {step}: FAILED: {e}", i + 1, seconds(at)),
        }
        Cut { at, step, outcome: outcome.map_err(|e| format!("{e:#}")) }
    }
}

fn seconds(at: Option<f64>) -> String {
    at.map_or("  (no cut)".to_string(), |a| format!("at {a:5.2} s"))
}

/// What the summary says about the run besides its cuts.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub seed: u64,
    /// Seconds the uncut update took.
    pub window: f64,
    /// Chunks the uncut update downloaded.
    pub needed: u64,
}

/// Prints the report and writes it to `file`; whether every cut survived.
pub fn publish(results: &[Cut], run: Run, file: Option<&Path>) -> Result<bool> {
    let Run { seed, window, needed } = run;
    let survived = results.iter().filter(|r| r.outcome.is_ok()).count();
    let mut report = format!(
        "| cut | at (s) | where it landed | outcome |\n|---|---|---|---|\n{}\n{survived} of {} cuts survived (seed {seed}; update window {window:.1} s; {needed} chunks for a full update).\n",
        results
            .iter()
            .enumerate()
            .map(|(i, r)| format!(
                "| {} | {} | {} | {} |",
                i + 1,
                r.at.map_or("-".to_string(), |a| format!("{a:.2}")),
                r.step,
                match &r.outcome {
                    Ok(m) => format!("ok: {m}"),
                    Err(e) => format!("FAILED: {}", e.lines().next().unwrap_or("")),
                }
            ))
            .collect::<Vec<_>>()
            .join("\n"),
        results.len()
    );
    let mut by_step: BTreeMap<String, usize> = BTreeMap::new();
    for r in results {
        let key = r.step.split(['(', ';', ',']).next().unwrap_or(&r.step).trim().to_string();
        *by_step.entry(key).or_default() += 1;
    }
    report.push_str(&format!(
        "Where the cuts landed: {}.\n",
        by_step.iter().map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", ")
    ));
    print!("{report}");
    std::io::stdout().flush()?;
    if let Some(path) = file {
        std::fs::write(path, &report)?;
    }
    Ok(survived == results.len())
}
