//! End-to-end update figures on a generated release series: for each hop, the bytes
//! `ferryd` downloaded, its HTTP requests, its peak RSS, and its time next to a plain
//! `ferry checkout` of the same commit; the same hops over plain HTTP and over HTTPS (a CA
//! the bench makes, pinned as `ca_file`), and their ratio. Prints Markdown tables; figures
//! are measured in this run, never asserted.
//!
//! Run: `cargo build --bins && cargo bench -p ferry-benches --profile dev --bench update`.
//! `FERRY_BENCH_UPDATE_SIZE` (MiB, default 1024) sets the tree size; the series is cached in
//! `$FERRY_BENCH_CACHE` (default ~/.cache/ferry-bench). `FERRY_BENCH_TLS=plain` or `tls`
//! runs one transport only.

use std::process::Command;
use std::time::Instant;

use ferry_publisher::import::{commit_tree, CommitRequest, NoProgress};
use ferry_store::{ChunkParams, Id, RepoConfig, Repository};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mib: u64 = std::env::var("FERRY_BENCH_UPDATE_SIZE").ok().and_then(|s| s.parse().ok()).unwrap_or(1024);
    let cache = ferry_benches::cache_dir();
    let series = ferry_benches::synthetic_series(mib);
    let work = tempfile::tempdir_in(&cache).expect("work dir");
    let repo_path = work.path().join("repo");
    let repo = Repository::init(&repo_path, &RepoConfig::new(ChunkParams::default(), 3)).expect("init");
    let key = ferry_fixtures::test_key(1);
    key.save(&work.path().join("ci.key")).expect("key");
    let mut ids: Vec<Id> = Vec::new();
    for v in 1..=4u32 {
        let req = CommitRequest::new(
            series.join(format!("v{v}")),
            &format!("b{v}"),
            v.to_string().parse().expect("version"),
            &key,
        );
        ids.push(commit_tree(&repo, &req, &NoProgress).expect("commit").commit.parse().expect("id"));
    }
    drop(repo);

    // The servers, in this process: plain HTTP and HTTPS over the same repository.
    let (plain_rt, addr) = ferry_benches::serve_in_background(&repo_path, &work.path().join("scratch"));
    let (tls_rt, tls_addr, ca_file) =
        ferry_benches::serve_tls_in_background(&repo_path, &work.path().join("scratch-tls"), work.path());
    let transports = std::env::var("FERRY_BENCH_TLS").unwrap_or_default();
    let mut tables = Vec::new();
    let mut fresh = 0.0;
    for (name, server) in [
        ("plain HTTP", format!("insecure_http = true\nserver = \"http://{addr}\"")),
        ("HTTPS", format!("server = \"https://localhost:{}\"\nca_file = \"{}\"", tls_addr.port(), ca_file.display())),
    ] {
        let wanted = match transports.as_str() {
            "plain" => name == "plain HTTP",
            "tls" => name == "HTTPS",
            _ => true,
        };
        if wanted {
            let (rows, first) = hops(work.path(), &server, &format!("device-{}", tables.len()));
            if tables.is_empty() {
                fresh = first;
            }
            tables.push((name, rows));
        }
    }

    let started = Instant::now();
    let out = Command::new(ferry_benches::bin("ferry"))
        .args(["checkout", "--repo"])
        .arg(&repo_path)
        .arg(ids[0].to_hex())
        .arg(work.path().join("checkout"))
        .output()
        .expect("checkout");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let checkout = started.elapsed().as_secs_f64();

    for (name, rows) in &tables {
        println!("\n### ferryd update over {name}, {mib} MiB generated tree (seed 1), ferry serve on 127.0.0.1\n");
        println!("| hop | MiB downloaded | requests | chunks downloaded | files reused | seconds | peak RSS (MiB) |");
        println!("|---|---|---|---|---|---|---|");
        for r in rows {
            println!("{}", r.line);
        }
    }
    if let [(_, plain), (_, tls)] = tables.as_slice() {
        println!("\n### HTTPS against plain HTTP, the same hops in this run\n");
        println!("| hop | wire bytes (HTTPS ÷ plain) | requests (HTTPS − plain) | time (HTTPS ÷ plain) | peak RSS MiB (plain → HTTPS) |");
        println!("|---|---|---|---|---|");
        for (p, t) in plain.iter().zip(tls) {
            println!(
                "| {} | {:.3} | {} | {:.2} | {:.1} → {:.1} |",
                p.hop,
                t.bytes as f64 / p.bytes.max(1) as f64,
                t.requests as i64 - p.requests as i64,
                t.seconds / p.seconds.max(1e-9),
                p.rss_mib,
                t.rss_mib
            );
        }
    }
    println!(
        "\nfresh install {fresh:.2} s vs `ferry checkout` of the same commit {checkout:.2} s (ratio {:.2})",
        fresh / checkout
    );
    plain_rt.shutdown_background();
    tls_rt.shutdown_background();
}

/// One hop's figures.
struct Hop {
    hop: &'static str,
    bytes: u64,
    requests: u64,
    seconds: f64,
    rss_mib: f64,
    /// The row of the hop's table.
    line: String,
}

/// Runs the series' hops on a fresh device (`dir/NAME`) against the server `server` names
/// (its TOML lines); returns each hop's figures and the fresh install's seconds.
fn hops(dir: &std::path::Path, server: &str, name: &str) -> (Vec<Hop>, f64) {
    let device = dir.join(name);
    let config = dir.join(format!("{name}.toml"));
    let write_config = |branch: &str| {
        std::fs::write(
            &config,
            format!(
                "{server}\nbranch = \"{branch}\"\nstate_dir = \"{}\"\ncurrent_link = \"{}\"\ntrusted_keys = [\"{}\"]\n",
                device.join("state").display(),
                device.join("current").display(),
                dir.join("ci.key.pub").display()
            ),
        )
        .expect("config");
    };
    let ferryd = ferry_benches::bin("ferryd");
    let run = |hop: &'static str, branch: &str, rows: &mut Vec<Hop>| {
        write_config(branch);
        let out = Command::new("/usr/bin/time")
            .arg("-v")
            .arg(&ferryd)
            .arg("--config")
            .arg(&config)
            .args(["update", "--json"])
            .output()
            .expect("ferryd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let rss_kb: u64 = stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes): "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let seconds = s["seconds"].as_f64().unwrap_or(0.0);
        let bytes = s["bytes_downloaded"].as_u64().unwrap_or(0);
        let requests = s["requests"].as_u64().unwrap_or(0);
        let rss_mib = rss_kb as f64 / 1024.0;
        let line = format!(
            "| {hop} | {:.1} | {requests} | {} | {} / {} | {seconds:.2} | {rss_mib:.1} |",
            bytes as f64 / 1048576.0,
            s["chunks_downloaded"],
            s["files_reused"],
            s["files"],
        );
        rows.push(Hop { hop, bytes, requests, seconds, rss_mib, line });
        seconds
    };
    let mut rows = Vec::new();
    let fresh = run("nothing → v1", "b1", &mut rows);
    let snapshot = dir.join(format!("{name}-v1"));
    assert!(Command::new("cp").arg("-a").arg(&device).arg(&snapshot).status().expect("cp").success());
    run("v1 → v2", "b2", &mut rows);
    run("v2 → v3", "b3", &mut rows);
    run("v3 → v4", "b4", &mut rows);
    std::fs::remove_dir_all(&device).expect("reset");
    assert!(Command::new("cp").arg("-a").arg(&snapshot).arg(&device).status().expect("cp").success());
    run("v1 → v4 (skip)", "b4", &mut rows);
    (rows, fresh)
}
