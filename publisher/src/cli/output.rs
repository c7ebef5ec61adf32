//! What the commands print besides their results: a progress bar on stderr, pretty JSON on
//! stdout, and byte counts for people. Not for anything a device or a server reads.

use std::io::IsTerminal;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use crate::import::Progress;

/// A progress bar on stderr when it is a terminal; nothing otherwise.
#[derive(Debug)]
pub struct Bar(ProgressBar);

impl Bar {
    pub fn new(what: &str) -> Bar {
        let bar = if std::io::stderr().is_terminal() { ProgressBar::new(0) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        Bar(bar)
    }
}

impl Progress for Bar {
    fn set_total(&self, bytes: u64) {
        self.0.set_length(bytes);
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Prints `v` as pretty JSON on stdout, for scripts.
pub fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `rows` as columns on stdout, each as wide as its widest cell (the first row is the
/// header), two spaces apart; the last column is not padded.
pub fn print_table(rows: &[Vec<String>]) {
    print!("{}", table(rows));
}

/// The text [`print_table`] prints.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|v| v.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `bytes` for people: `512 B`, `1.5 KiB`, `3.0 GiB`.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

#[cfg(test)]
mod tests {
    use super::{human, table};

    #[test]
    fn a_table_aligns_its_columns_to_the_widest_cell() {
        let rows = [
            vec!["SERIAL".to_string(), "STATE".into(), "ERROR".into()],
            vec!["board-000001".into(), "accepted".into(), "".into()],
            vec!["b".into(), "pending".into(), "disk full".into()],
        ];
        assert_eq!(
            table(&rows),
            "SERIAL        STATE     ERROR\nboard-000001  accepted\nb             pending   disk full\n"
        );
    }

    #[test]
    fn human_bytes() {
        for (bytes, expected) in [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (3 << 30, "3.0 GiB")] {
            assert_eq!(human(bytes), expected);
        }
    }
}
