//! End-to-end update figures on a generated release series: for each hop, the bytes
//! `ferryd` downloaded, its HTTP requests, its peak RSS, and its time next to a plain
//! `ferry checkout` of the same commit. Prints a Markdown table; figures are measured in this
//! run, never asserted.
//!
//! Run: `cargo build --bins && cargo bench -p ferry-benches --profile dev --bench update`.
//! `FERRY_BENCH_UPDATE_SIZE` (MiB, default 1024) sets the tree size; the series is cached in
//! `$FERRY_BENCH_CACHE` (default ~/.cache/ferry-bench).

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

    // The server, in this process.
    let (rt, addr) = ferry_benches::serve_in_background(&repo_path, &work.path().join("scratch"));

    let device = work.path().join("device");
    let config = work.path().join("ferryd.toml");
    let write_config = |branch: &str| {
        std::fs::write(
            &config,
            format!(
                "insecure_http = true\nserver = \"http://{addr}\"\nbranch = \"{branch}\"\nstate_dir = \"{}\"\ncurrent_link = \"{}\"\ntrusted_keys = [\"{}\"]\n",
                device.join("state").display(),
                device.join("current").display(),
                work.path().join("ci.key.pub").display()
            ),
        )
        .expect("config");
    };
    let ferryd = ferry_benches::bin("ferryd");
    let run = |label: &str, branch: &str, rows: &mut Vec<String>| {
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
        rows.push(format!(
            "| {label} | {:.1} | {} | {} | {} / {} | {:.2} | {:.1} |",
            s["bytes_downloaded"].as_u64().unwrap_or(0) as f64 / 1048576.0,
            s["requests"],
            s["chunks_downloaded"],
            s["files_reused"],
            s["files"],
            s["seconds"].as_f64().unwrap_or(0.0),
            rss_kb as f64 / 1024.0
        ));
        s["seconds"].as_f64().unwrap_or(0.0)
    };

    let mut rows = Vec::new();
    let fresh = run("nothing → v1", "b1", &mut rows);
    let snapshot = work.path().join("device-v1");
    assert!(Command::new("cp").arg("-a").arg(&device).arg(&snapshot).status().expect("cp").success());
    run("v1 → v2", "b2", &mut rows);
    run("v2 → v3", "b3", &mut rows);
    run("v3 → v4", "b4", &mut rows);
    std::fs::remove_dir_all(&device).expect("reset");
    assert!(Command::new("cp").arg("-a").arg(&snapshot).arg(&device).status().expect("cp").success());
    run("v1 → v4 (skip)", "b4", &mut rows);

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

    println!("\n### ferryd update, {mib} MiB generated tree (seed 1), ferry serve on 127.0.0.1\n");
    println!("| hop | MiB downloaded | requests | chunks downloaded | files reused | seconds | peak RSS (MiB) |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    println!(
        "\nfresh install {fresh:.2} s vs `ferry checkout` of the same commit {checkout:.2} s (ratio {:.2})",
        fresh / checkout
    );
    rt.shutdown_background();
}
