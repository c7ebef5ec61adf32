//! Issue 22's figures, measured in one run on one release series (v1 → v2 on one branch):
//!
//! 1. The first device on a new release against the next one, with the server computing
//!    patches while the first device waits (`--patch-first best --no-prepare`, Ferry before
//!    issue 22) and with today's defaults (a fast first answer, the best one computed in the
//!    background, new releases prepared ahead): seconds, bytes, and the server CPU each
//!    spends.
//! 2. An update from a static copy (`ferry export`, served by nginx on loopback) against the
//!    same update through the server's POST routes: bytes and requests; and what exporting
//!    costs.
//! 3. A fresh install against `ferry checkout` of the same commit.
//!
//! Prints Markdown tables; nothing is asserted. Run:
//! `cargo build --bins && cargo bench -p ferry-benches --profile dev --bench content`.
//! `FERRY_BENCH_CONTENT_SIZE` (MiB, default 256) sets the generated tree's size, or
//! `FERRY_SERIES_DIR` names a series of directories v1, v2 (e.g. numpy's, from
//! `scripts/real-series`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use ferry_publisher::export::{export, Destination, ExportOptions};
use ferry_publisher::import::{commit_tree, CommitRequest, NoProgress};
use ferry_publisher::serve::{PatchConfig, ServeConfig};
use ferry_store::{ChunkParams, Id, RepoConfig, Repository};

fn serve(repo: &Path, scratch: &Path, patches: PatchConfig) -> (tokio::runtime::Runtime, std::net::SocketAddr) {
    ferry_benches::serve_with_config(repo, scratch, ServeConfig { patches, ..Default::default() })
}

/// A device of its own under `dir/name`, following `main` on the server at `addr`.
struct Device {
    config: PathBuf,
}

impl Device {
    fn new(dir: &Path, name: &str, addr: std::net::SocketAddr, extra: &str) -> Device {
        let home = dir.join(name);
        std::fs::create_dir_all(&home).expect("device dir");
        let config = home.join("ferryd.toml");
        std::fs::write(
            &config,
            format!(
                "insecure_http = true\nserver = \"http://{addr}\"\nbranch = \"main\"\nstate_dir = \"{}\"\ncurrent_link = \"{}\"\ntrusted_keys = [\"{}\"]\n{extra}",
                home.join("state").display(),
                home.join("current").display(),
                dir.join("ci.key.pub").display()
            ),
        )
        .expect("config");
        Device { config }
    }

    /// Points the device at another server (its state stays).
    fn to_server(&self, addr: std::net::SocketAddr) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        let text: String = text
            .lines()
            .map(|l| if l.starts_with("server = ") { format!("server = \"http://{addr}\"") } else { l.to_string() })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&self.config, text + "\n").expect("config");
    }

    /// `ferryd update --json`.
    fn update(&self) -> serde_json::Value {
        let out = Command::new(ferry_benches::bin("ferryd"))
            .arg("--config")
            .arg(&self.config)
            .args(["update", "--json"])
            .output()
            .expect("ferryd");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("json")
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

fn row(what: &str, s: &serde_json::Value, server_cpu: Option<f64>) -> String {
    format!(
        "| {what} | {:.2} | {:.2} | {} | {} | {} |",
        s["seconds"].as_f64().unwrap_or(0.0),
        mib(s["bytes_downloaded"].as_u64().unwrap_or(0)),
        s["requests"],
        s["chunks_from_copy"],
        server_cpu.map_or("".to_string(), |c| format!("{c:.1}")),
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let cache = ferry_benches::cache_dir();
    let (series, name): (PathBuf, String) = match std::env::var_os("FERRY_SERIES_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            let name = d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            (d, name)
        }
        None => {
            let size: u64 = std::env::var("FERRY_BENCH_CONTENT_SIZE").ok().and_then(|s| s.parse().ok()).unwrap_or(256);
            (ferry_benches::synthetic_series(size), format!("synthetic {size} MiB"))
        }
    };
    let work = tempfile::tempdir_in(&cache).expect("work dir");
    let dir = work.path();
    let repo_path = dir.join("repo");
    let repo = Repository::init(&repo_path, &RepoConfig::new(ChunkParams::default(), 3)).expect("init");
    let key = ferry_fixtures::test_key(1);
    key.save(&dir.join("ci.key")).expect("key");
    let commit = |v: u32| -> Id {
        let req = CommitRequest::new(series.join(format!("v{v}")), "main", v.to_string().parse().expect("v"), &key);
        commit_tree(&repo, &req, &NoProgress).expect("commit").commit.parse().expect("id")
    };
    let v1 = commit(1);

    // Ferry before issue 22: patches computed while the first device waits.
    let wait_config =
        PatchConfig { first: ferry_publisher::patches::FirstAnswer::Best, prepare: false, ..Default::default() };
    let (wait_rt, wait) = serve(&repo_path, &dir.join("scratch-wait"), wait_config);
    let names = ["wait-first", "wait-next", "fast-first", "fast-next", "post", "copy"];
    let devices: Vec<Device> = names.iter().map(|n| Device::new(dir, n, wait, "")).collect();
    let mut fresh = 0.0;
    for d in &devices {
        let s = d.update();
        fresh = s["seconds"].as_f64().unwrap_or(0.0);
    }
    let started = Instant::now();
    let out = Command::new(ferry_benches::bin("ferry"))
        .args(["checkout", "--repo"])
        .arg(&repo_path)
        .arg(v1.to_hex())
        .arg(dir.join("checkout"))
        .output()
        .expect("checkout");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let checkout = started.elapsed().as_secs_f64();

    let v2 = commit(2);
    let mut rows = Vec::new();
    let cpu = ferry_benches::own_cpu_seconds();
    let s = devices[0].update();
    rows.push(row(
        "before: first device (computes at level 19 while it waits)",
        &s,
        Some(ferry_benches::own_cpu_seconds() - cpu),
    ));
    let cpu = ferry_benches::own_cpu_seconds();
    let s = devices[1].update();
    rows.push(row("before: next device (cache)", &s, Some(ferry_benches::own_cpu_seconds() - cpu)));
    wait_rt.shutdown_background();

    // Today's defaults: the server starts, finds v2 new and prepares it in the background;
    // the first device comes at once, before the preparation is done.
    let cpu = ferry_benches::own_cpu_seconds();
    let (fast_rt, fast) = serve(&repo_path, &dir.join("scratch-fast"), PatchConfig::default());
    for d in &devices[2..] {
        d.to_server(fast);
    }
    let s = devices[2].update();
    rows.push(row("now: first device, at once after the release", &s, None));
    let s = devices[3].update();
    rows.push(row("now: next device", &s, None));
    // Wait for the preparation to finish (the patch cache stops growing), then a device.
    let cache_dir = dir.join("scratch-fast/patch-cache");
    let size = || std::fs::read_dir(&cache_dir).map_or(0, |d| d.count());
    let mut last = (size(), Instant::now());
    while last.1.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(250));
        if size() != last.0 {
            last = (size(), Instant::now());
        }
    }
    let prepared_cpu = ferry_benches::own_cpu_seconds() - cpu;
    let s = devices[4].update();
    rows.push(row("now: a device after the preparation", &s, Some(prepared_cpu)));
    let post = s.clone();

    // The static copy: exported with prepared patches, served by nginx.
    let copy = dir.join("copy");
    let started = Instant::now();
    let cpu = ferry_benches::own_cpu_seconds();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let dest = Destination::open(copy.to_str().expect("utf-8")).expect("destination");
    let options = ExportOptions { patches_from: 2, running: Vec::new() };
    let e = rt.block_on(export(&repo, &dest, &options, &NoProgress)).expect("export");
    let (export_secs, export_cpu) = (started.elapsed().as_secs_f64(), ferry_benches::own_cpu_seconds() - cpu);
    let nginx = ferry_fixtures::nginx::Nginx::serve(&copy).expect("nginx");
    let copy_device = &devices[5];
    copy_device.to_server(fast);
    let text = std::fs::read_to_string(&copy_device.config).expect("config");
    std::fs::write(&copy_device.config, format!("{text}content_url = \"{}\"\n", nginx.url())).expect("config");
    let s = copy_device.update();
    rows.push(row("static copy (nginx), prepared patches", &s, None));
    let from_copy = s.clone();

    println!("\n### The first device on a new release, {name} (v1 → v2), ferry serve and nginx on 127.0.0.1\n");
    println!("| device | seconds | MiB downloaded | requests | chunks from the copy | server CPU s |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    let b = |s: &serde_json::Value| s["bytes_downloaded"].as_u64().unwrap_or(0) as f64;
    println!(
        "\nstatic copy against the POST routes: bytes {:.3}×, requests {} against {}",
        b(&from_copy) / b(&post).max(1.0),
        from_copy["requests"],
        post["requests"]
    );
    println!(
        "export of {} commits: {export_secs:.1} s, {export_cpu:.1} CPU s ({} packs, {:.1} MiB; {} prepared patches for {} updates)",
        e.commits_exported,
        e.packs_written,
        mib(e.pack_bytes_written),
        e.patches_prepared,
        e.deltas_written
    );
    println!(
        "\nfresh install {fresh:.2} s against `ferry checkout` of the same commit {checkout:.2} s (ratio {:.2})",
        fresh / checkout
    );
    fast_rt.shutdown_background();
    let _ = v2;
}
