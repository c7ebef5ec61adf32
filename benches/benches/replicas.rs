//! The fleet past one server: devices checking in through two `ferry serve` replicas on one
//! PostgreSQL database (a cluster the bench starts on 127.0.0.1, fsync on), against one
//! `ferry serve --fleet DIR` on the embedded store, on this machine; and how long a rollout's
//! halt takes to fire on 1000 and on 10,000 devices, on both stores. Measured, never asserted.
//!
//! Check-ins: `FERRY_BENCH_DEVICES` (default 10,000) enrolled devices, then
//! `FERRY_BENCH_ROUNDS` (default 2) rounds in which each checks in once, at most 256 at a time
//! (devices waking on their poll intervals), alternating between the replicas (as a balancer
//! would). Prints check-ins a second, p50/p99/max and, on PostgreSQL, the database's
//! connections at their most during the rounds.
//!
//! Halts: the fleet's library on each store (two `Fleet`s on one database for PostgreSQL), a
//! rollout of every device, each takes the release; then devices report failures one by one
//! until the rollout halts: the latency of the check-in that halts it, against a check-in
//! that does not, at both fleet sizes (a halt that read every device would grow tenfold).
//!
//! Run: `cargo build --bins && cargo bench -p ferry-benches --profile dev --bench replicas`
//! (`FERRY_BENCH_PART=halt` for the halts only).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_fixtures::postgres::Postgres;
use ferry_publisher::fleet::{Caller, Fleet, HeadDoc, Report, RolloutState, Settings, TokenKind};

/// Check-ins in flight at once.
const IN_FLIGHT: usize = 256;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("FERRY_BENCH_DEVICES").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let rounds: usize = std::env::var("FERRY_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    std::fs::create_dir_all(ferry_benches::cache_dir()).expect("the bench cache");
    let pg = Postgres::start(true).expect("PostgreSQL (scripts/deps installs postgresql-15)");

    // FERRY_BENCH_PART=halt: the halts only.
    if std::env::var("FERRY_BENCH_PART").as_deref() != Ok("halt") {
        checkin_table(&pg, n, rounds);
    }
    halt_table(&pg, n);
}

fn checkin_table(pg: &Postgres, n: usize, rounds: usize) {
    println!("\n### {n} devices checking in, at most {IN_FLIGHT} at once (127.0.0.1, this machine)\n");
    println!(
        "| store | servers | enroll (s) | check-ins/s | p50 (ms) | p99 (ms) | max (ms) | database connections (most) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let embedded = checkins(n, rounds, None);
    let url = pg.create_database("checkins").expect("database");
    let postgres = checkins(n, rounds, Some((pg, &url)));
    for (store, servers, r) in [("embedded (RocksDB)", 1, &embedded), ("PostgreSQL 15", 2, &postgres)] {
        println!(
            "| {store} | {servers} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {} |",
            r.enroll.as_secs_f64(),
            r.latencies.len() as f64 / r.wall.as_secs_f64(),
            percentile(&r.latencies, 0.5),
            percentile(&r.latencies, 0.99),
            percentile(&r.latencies, 1.0),
            r.connections.map_or("-".into(), |c| c.to_string()),
        );
    }
    println!(
        "\nPostgreSQL through two replicas ÷ embedded, check-ins a second: {:.2}",
        (postgres.latencies.len() as f64 / postgres.wall.as_secs_f64())
            / (embedded.latencies.len() as f64 / embedded.wall.as_secs_f64())
    );
}

fn halt_table(pg: &Postgres, n: usize) {
    println!("\n### A rollout's halt: the check-in that halts it against one that does not (the fleet's library)\n");
    println!("| store | devices | check-in with a failure (ms, median) | the check-in that halts (ms) | failures when halted |");
    println!("|---|---|---|---|---|");
    for devices in [1000, 10_000.min(n.max(1000))] {
        let dir = tempfile::tempdir_in(ferry_benches::cache_dir()).expect("work dir");
        let kv = Fleet::open(&dir.path().join("fleet"), settings()).expect("fleet");
        let row = halt(&kv, &kv, devices);
        println!("| embedded | {devices} | {:.2} | {:.2} | {} |", row.0, row.1, row.2);
        let url = pg.create_database(&format!("halt{devices}")).expect("database");
        let at = ferry_publisher::fleet::db::Location::parse(&url);
        let (a, b) = (Fleet::open(&at, settings()).expect("fleet"), Fleet::open(&at, settings()).expect("fleet"));
        let row = halt(&a, &b, devices);
        println!("| PostgreSQL, 2 servers | {devices} | {:.2} | {:.2} | {} |", row.0, row.1, row.2);
    }
}

fn settings() -> Settings {
    Settings { enrollments_per_minute: 10_000_000, ..Settings::default() }
}

struct Checkins {
    enroll: Duration,
    wall: Duration,
    latencies: Vec<Duration>,
    connections: Option<u64>,
}

/// A `ferry serve` process; its URL from its "listening on" line.
fn serve(args: &[&str], env: &[(&str, &str)]) -> (Child, String) {
    let mut server = Command::new(ferry_benches::bin("ferry"))
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--enrollments-per-minute", "10000000", "--no-prepare"])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ferry serve");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout")).read_line(&mut line).expect("listening line");
    let url = line.trim().strip_prefix("listening on ").expect("listening on").to_string();
    (server, url)
}

fn checkins(n: usize, rounds: usize, pg: Option<(&Postgres, &str)>) -> Checkins {
    let work = tempfile::tempdir_in(ferry_benches::cache_dir()).expect("work dir");
    let repo = work.path().join("repo").display().to_string();
    let ferry = ferry_benches::bin("ferry");
    let run = |args: &[&str]| {
        let out = Command::new(&ferry).args(args).output().expect("ferry");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    run(&["init", "--repo", &repo]);
    let fleet = work.path().join("fleet").display().to_string();
    let mut servers = Vec::new();
    let enrollment = match pg {
        None => {
            let t = run(&[
                "admin",
                "token",
                "create",
                "--name",
                "factory",
                "--enrollment",
                "--fleet",
                &fleet,
                "--create-fleet",
            ]);
            servers.push(serve(&["serve", "--repo", &repo, "--fleet", &fleet], &[]));
            t
        }
        Some((_, url)) => {
            let t = run(&["admin", "token", "create", "--name", "factory", "--enrollment", "--fleet-db", url]);
            for i in 0..2 {
                let scratch = work.path().join(format!("scratch-{i}")).display().to_string();
                servers.push(serve(&["serve", "--repo", &repo, "--scratch", &scratch], &[("FERRY_FLEET_DB", url)]));
            }
            t
        }
    };
    let urls: Vec<String> = servers.iter().map(|(_, u)| u.clone()).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // Devices come from 8 loopback addresses (a server holds 256 connections per address).
    let clients: Vec<reqwest::Client> = (2..10u8)
        .map(|last| {
            reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, last])).build().expect("client")
        })
        .collect();
    let gate = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let post = |i: usize, path: &'static str, token: Option<String>, body: serde_json::Value| {
        let (client, url, gate) = (clients[i % clients.len()].clone(), urls[i % urls.len()].clone(), gate.clone());
        async move {
            let _permit = gate.acquire_owned().await.expect("gate");
            ferry_benches::device_post(&client, &url, path, token, &body).await
        }
    };
    let started = Instant::now();
    let tokens: Vec<String> = rt.block_on(async {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let body = serde_json::json!({ "serial": format!("SN-{i:05}"), "hardware": "rev-a", "enrollment_token": enrollment });
                tokio::spawn(post(i, "enroll", None, body))
            })
            .collect();
        let mut tokens = Vec::new();
        for t in tasks {
            tokens.push(t.await.expect("task").1["device_token"].as_str().expect("token").to_string());
        }
        tokens
    });
    let enroll = started.elapsed();
    // The database's connections, sampled while the rounds run.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (wall, mut latencies, connections) = std::thread::scope(|s| {
        let sampler = pg.map(|(pg, _)| {
            let stop = &stop;
            s.spawn(move || {
                let mut most = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'checkins'";
                    if let Some(c) = pg.psql("postgres", sql).ok().and_then(|o| o.trim().parse::<u64>().ok()) {
                        most = most.max(c);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                most
            })
        });
        let started = Instant::now();
        let mut latencies = Vec::new();
        for round in 0..rounds {
            latencies.extend(rt.block_on(async {
                let tasks: Vec<_> = tokens
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let report = serde_json::json!({ "channel": "stable", "last_result": "up-to-date", "uptime": round, "current_version": "1" });
                        tokio::spawn(post(i, "checkin", Some(t.clone()), report))
                    })
                    .collect();
                let mut lat = Vec::new();
                for t in tasks {
                    lat.push(t.await.expect("task").0);
                }
                lat
            }));
        }
        let wall = started.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (wall, latencies, sampler.map(|s| s.join().expect("sampler")))
    });
    latencies.sort();
    for (mut s, _) in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    Checkins { enroll, wall, latencies, connections }
}

/// Enrolls `n` devices (through `a`), starts a rollout of all of them
/// (halting above 5% failures), has each take the release, then reports failures one at a
/// time until the rollout halts. Returns the median latency of a failing check-in that did
/// not halt it, the latency of the one that did (ms), and the failures then.
fn halt(a: &Fleet, b: &Fleet, n: usize) -> (f64, f64, usize) {
    let enrollment = a.create_token(&Caller::Local, TokenKind::Enrollment, "factory").expect("token");
    let fleets = [a, b];
    let tokens: Vec<String> = std::thread::scope(|s| {
        let parts: Vec<_> = (0..4)
            .map(|part| {
                let enrollment = &enrollment;
                s.spawn(move || {
                    (part..n)
                        .step_by(4)
                        // Through one server: enrollments through two at this pace take turns
                        // on the audit log's numbers (the check-in rounds measure them).
                        .map(|i| {
                            (
                                i,
                                a.enroll(&format!("SN-{i:05}"), "rev-a", enrollment, None)
                                    .expect("enroll")
                                    .device_token,
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<(usize, String)> = parts.into_iter().flat_map(|h| h.join().expect("enroll")).collect();
        all.sort();
        all.into_iter().map(|(_, t)| t).collect()
    });
    let base = HeadDoc { id: "doc-1".into(), serial: 1, targets: Default::default() };
    let head = HeadDoc { id: "doc-2".into(), serial: 2, targets: Default::default() };
    a.start_rollout(&Caller::Local, "stable", &base, 100, None, 5).expect("rollout");
    let report = |result: &str| Report {
        channel: Some("stable".into()),
        current_version: Some("2".into()),
        last_result: Some(result.into()),
        ..Report::default()
    };
    let check_in = |i: usize, result: &str| {
        let f = fleets[i % 2];
        let d = f.device_for(&tokens[i]).expect("device");
        let d = f.check_in(&d, report(result)).expect("check-in");
        f.pick(&d, "stable", &head).expect("pick");
    };
    std::thread::scope(|s| {
        for part in 0..4 {
            let check_in = &check_in;
            s.spawn(move || (part..n).step_by(4).for_each(|i| check_in(i, "updated")));
        }
    });
    let mut failing = Vec::new();
    for i in 0..n {
        let started = Instant::now();
        check_in(i, "rolled-back");
        let took = started.elapsed();
        if a.rollout("stable").expect("rollout").expect("one").state == RolloutState::Paused {
            failing.sort();
            let median = failing.get(failing.len() / 2).map_or(0.0, |d: &Duration| d.as_secs_f64() * 1000.0);
            return (median, took.as_secs_f64() * 1000.0, i + 1);
        }
        failing.push(took);
    }
    panic!("the rollout never halted")
}
