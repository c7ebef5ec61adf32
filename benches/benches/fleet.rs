//! The fleet server under 1000 devices checking in at once: `ferry serve --fleet` as its own
//! process, 1000 enrolled devices, then rounds in which all of them check in concurrently
//! (one connection each, as devices waking on their poll interval do). Prints p50/p99/max
//! latency per round and the server's peak RSS, over plain HTTP and over HTTPS (a CA the
//! bench makes; every check-in pays a full handshake), and check-ins a second with TLS
//! against without. Measured, never asserted.
//!
//! Run: `cargo build --bins && cargo bench -p ferry-benches --profile dev --bench fleet`.
//! `FERRY_BENCH_DEVICES` (default 1000) and `FERRY_BENCH_ROUNDS` (default 3) change the load.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().trim_end_matches(" kB").trim().to_string()))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One round's name, wall time and sorted latencies.
type Row = (&'static str, Duration, Vec<Duration>);

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("FERRY_BENCH_DEVICES").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let rounds: usize = std::env::var("FERRY_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let mut rates = Vec::new();
    for tls in [false, true] {
        let (rows, rss_idle, rss_peak) = measure(n, rounds, tls);
        let transport = if tls { "HTTPS" } else { "plain HTTP" };
        println!(
            "\n### {n} devices at once against one `ferry serve --fleet` over {transport} (127.0.0.1, this machine)\n"
        );
        println!("| round | wall (s) | requests/s | p50 (ms) | p99 (ms) | max (ms) |");
        println!("|---|---|---|---|---|---|");
        let mut checkins = (0usize, 0.0f64);
        for (what, wall, lat) in &rows {
            println!(
                "| {what} | {:.2} | {:.0} | {:.1} | {:.1} | {:.1} |",
                wall.as_secs_f64(),
                lat.len() as f64 / wall.as_secs_f64(),
                percentile(lat, 0.5),
                percentile(lat, 0.99),
                percentile(lat, 1.0)
            );
            if *what == "check-in" {
                checkins = (checkins.0 + lat.len(), checkins.1 + wall.as_secs_f64());
            }
        }
        println!(
            "\nserver peak RSS: {:.1} MiB (idle after start: {:.1} MiB)",
            rss_peak as f64 / 1024.0,
            rss_idle as f64 / 1024.0
        );
        rates.push(checkins.0 as f64 / checkins.1.max(1e-9));
    }
    if let [plain, tls] = rates.as_slice() {
        println!(
            "\ncheck-ins a second, all rounds: plain HTTP {plain:.0}, HTTPS {tls:.0} (HTTPS ÷ plain {:.2})",
            tls / plain
        );
    }
}

/// Enrolls `n` devices and runs `rounds` rounds of check-ins against a fresh server; returns
/// the rows and the server's RSS after start and at its peak (KiB).
fn measure(n: usize, rounds: usize, tls: bool) -> (Vec<Row>, u64, u64) {
    let work = tempfile::tempdir_in(ferry_benches::cache_dir()).expect("work dir");
    let (repo, fleet) = (work.path().join("repo"), work.path().join("fleet"));
    let ferry = ferry_benches::bin("ferry");
    let run = |args: &[&str]| {
        let out = Command::new(&ferry).args(args).output().expect("ferry");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    run(&["init", "--repo", &repo.display().to_string()]);
    let fleet_s = fleet.display().to_string();
    let enrollment =
        run(&["admin", "token", "create", "--name", "factory", "--enrollment", "--fleet", &fleet_s, "--create-fleet"]);
    let ca = ferry_fixtures::certs::Ca::new("bench CA");
    let (cert, key) = ca.issue(&["localhost"], ferry_fixtures::certs::VALID).write(work.path(), "server");
    let mut tls_args: Vec<String> = Vec::new();
    if tls {
        tls_args = vec!["--tls-cert".into(), cert.display().to_string(), "--tls-key".into(), key.display().to_string()];
    }
    let mut server = Command::new(&ferry)
        .args(["serve", "--repo", &repo.display().to_string(), "--fleet", &fleet_s, "--listen", "127.0.0.1:0"])
        .args(&tls_args)
        // All devices enroll at once here; a real fleet's enrollments are rate-limited.
        .args(["--enrollments-per-minute", "1000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ferry serve");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout")).read_line(&mut line).expect("listening line");
    let url = line.trim().strip_prefix("listening on ").expect("listening on").to_string();
    // The certificate names localhost.
    let url = if tls { format!("https://localhost:{}", url.rsplit(':').next().expect("port")) } else { url };
    let pid = server.id();
    let rss_idle = peak_rss_kib(pid);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // Devices come from 8 loopback addresses, as a fleet comes from many: one address may
    // hold only `MAX_CONNECTIONS_PER_ADDRESS` connections (256) at once.
    let clients: Vec<reqwest::Client> = (2..10u8)
        .map(|last| {
            reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .local_address(std::net::IpAddr::from([127, 0, 0, last]))
                .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("CA"))
                .build()
                .expect("client")
        })
        .collect();
    let post = |i: usize, path: String, token: Option<String>, body: serde_json::Value| {
        let (client, url) = (clients[i % clients.len()].clone(), url.clone());
        async move { ferry_benches::device_post(&client, &url, &path, token, &body).await }
    };
    let mut rows: Vec<Row> = Vec::new();
    let enroll_started = Instant::now();
    let (mut lat, tokens) = rt.block_on(async {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let body = serde_json::json!({ "serial": format!("SN-{i:05}"), "hardware": "rev-a", "enrollment_token": enrollment });
                tokio::spawn(post(i, "enroll".into(), None, body))
            })
            .collect();
        let (mut lat, mut tokens) = (Vec::new(), Vec::new());
        for t in tasks {
            let (d, v) = t.await.expect("task");
            lat.push(d);
            tokens.push(v["device_token"].as_str().expect("token").to_string());
        }
        (lat, tokens)
    });
    lat.sort();
    rows.push(("enroll", enroll_started.elapsed(), lat));
    for round in 0..rounds {
        let started = Instant::now();
        let mut lat = rt.block_on(async {
            let tasks: Vec<_> = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let report = serde_json::json!({ "channel": "stable", "last_result": "up-to-date", "uptime": round, "current_version": "1" });
                    tokio::spawn(post(i, "checkin".into(), Some(t.clone()), report))
                })
                .collect();
            let mut lat = Vec::new();
            for t in tasks {
                lat.push(t.await.expect("task").0);
            }
            lat
        });
        lat.sort();
        rows.push(("check-in", started.elapsed(), lat));
    }
    let rss_peak = peak_rss_kib(pid);
    let _ = server.kill();
    let _ = server.wait();
    (rows, rss_idle, rss_peak)
}
