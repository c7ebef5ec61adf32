//! Ferry side by side with the tools people would otherwise pick, on the same release
//! series, in one run (issue 5). Prints a Markdown table and writes a CSV.
//!
//! Tools: Ferry (`ferryd update` against `ferry serve` on 127.0.0.1, bytes counted by a TCP
//! proxy in front of the server; each hop three times from the same device state: the first
//! device, whose patches the server computes, the next device, served from the patch cache,
//! and `patches = false`, content-defined chunks alone; the server's CPU time per update is
//! measured from this process, where it runs), OSTree (`ostree pull` over HTTP from an
//! archive repository served by Python's http.server behind the same counting proxy, and the
//! pull of a static delta generated in advance for the pair, with its generation time),
//! casync (`casync extract` over HTTP with the old tree as seed, from a store built by
//! `casync make`), rsync (`--no-whole-file --compress --stats`, bytes sent and received),
//! xdelta3 and `zstd -19 --long=31 --patch-from` (per-pair patches of the new tree's tar
//! against the old one's: the near-optimal reference), and the full image (`zstd -19` of the
//! new tar). Also commit time: `ferry commit` against `ostree commit` and `casync make` of
//! the same trees.
//!
//! Run: `scripts/bench-deps && cargo build --bins && cargo bench -p ferry-benches --profile dev --bench peers`.
//! The series is the synthetic one (`FERRY_BENCH_SIZE` MiB, default 256, 4 versions) unless
//! `FERRY_SERIES_DIR` names a directory holding `v1`, `v2`, ... (e.g. from
//! `scripts/real-series`). Results go to `$FERRY_BENCH_CACHE/peers-<series>.csv`.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_publisher::import::{commit_tree, CommitRequest, NoProgress};
use ferry_store::{ChunkParams, RepoConfig, Repository};

/// Runs a command under `/usr/bin/time`; returns (stdout, seconds, peak RSS in KiB).
fn timed(cmd: &mut Command) -> (String, f64, u64) {
    try_timed(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// [`timed`], returning a failure as an error message instead of stopping the run.
fn try_timed(cmd: &mut Command) -> Result<(String, f64, u64), String> {
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut wrapped = Command::new("/usr/bin/time");
    wrapped.arg("-f").arg("FERRY_TIME %e %M").arg(&program).args(&args);
    if let Some(d) = cmd.get_current_dir() {
        wrapped.current_dir(d);
    }
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            wrapped.env(k, v);
        }
    }
    let out = wrapped.output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("{:?} {:?} failed: {stderr}", program, args));
    }
    let line = stderr.lines().rev().find(|l| l.starts_with("FERRY_TIME ")).expect("time output");
    let mut parts = line.split_whitespace().skip(1);
    let secs = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let rss = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), secs, rss))
}

fn tar(tree: &Path, out: &Path) {
    if out.exists() {
        return;
    }
    let ok = Command::new("tar")
        .args(["--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner", "-cf"])
        .arg(out)
        .arg("-C")
        .arg(tree)
        .arg(".")
        .status()
        .expect("tar")
        .success();
    assert!(ok, "tar of {}", tree.display());
}

fn dir_size(p: &Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(p) else { return 0 };
    if m.is_dir() {
        std::fs::read_dir(p).map(|rd| rd.flatten().map(|e| dir_size(&e.path())).sum()).unwrap_or(0)
    } else {
        m.len()
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn copy_tree(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    assert!(Command::new("cp").arg("-a").arg(from).arg(to).status().expect("cp").success());
}

struct Row {
    hop: String,
    tool: &'static str,
    bytes: u64,
    requests: Option<u64>,
    seconds: f64,
    rss_kib: u64,
    /// CPU seconds the server spent on this update (Ferry only: it runs in this process).
    server_cpu: Option<f64>,
}

impl Row {
    /// A tool that does not speak HTTP here: no requests, no server.
    fn local(hop: &str, tool: &'static str, bytes: u64, seconds: f64, rss_kib: u64) -> Row {
        Row { hop: hop.to_string(), tool, bytes, requests: None, seconds, rss_kib, server_cpu: None }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let cache = ferry_benches::cache_dir();
    let (series, name): (PathBuf, String) = match std::env::var_os("FERRY_SERIES_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            let name = d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "series".into());
            (d, name)
        }
        None => {
            let mib: u64 = std::env::var("FERRY_BENCH_SIZE").ok().and_then(|s| s.parse().ok()).unwrap_or(256);
            (ferry_benches::synthetic_series(mib), format!("synthetic-{mib}M"))
        }
    };
    let versions: Vec<PathBuf> = (1..).map(|v| series.join(format!("v{v}"))).take_while(|p| p.is_dir()).collect();
    assert!(versions.len() >= 2, "{} needs v1, v2, ...", series.display());
    let last = versions.len() - 1;
    let mut hops: Vec<(usize, usize)> = (0..last).map(|i| (i, i + 1)).collect();
    if last > 1 {
        hops.push((0, last));
    }
    let work = tempfile::tempdir_in(&cache).expect("work dir");
    let mut rows: Vec<Row> = Vec::new();
    let mut commit_secs: Vec<(usize, f64, f64, f64)> = Vec::new();
    let label = |a: usize, b: usize| format!("v{} → v{}", a + 1, b + 1);

    // Ferry: every version committed on its own branch, served, updated through a proxy.
    let repo_path = work.path().join("repo");
    let repo = Repository::init(&repo_path, &RepoConfig::new(ChunkParams::default(), 3)).expect("init");
    let key = ferry_fixtures::test_key(1);
    key.save(&work.path().join("ci.key")).expect("key");
    for (i, v) in versions.iter().enumerate() {
        let started = std::time::Instant::now();
        let req = CommitRequest::new(v, &format!("b{}", i + 1), (i + 1).to_string().parse().expect("version"), &key);
        commit_tree(&repo, &req, &NoProgress).expect("commit");
        commit_secs.push((i, started.elapsed().as_secs_f64(), 0.0, 0.0));
    }
    drop(repo);
    let (rt, server) = ferry_benches::serve_in_background(&repo_path, &work.path().join("scratch"));
    let proxy = ferry_fixtures::proxy::Proxy::start(server).expect("proxy");
    let device = work.path().join("device");
    let config = work.path().join("ferryd.toml");
    let ferryd = ferry_benches::bin("ferryd");
    let ferry_to = |target: usize, rows: &mut Vec<Row>, hop: String, tool: &'static str, extra: &str| {
        std::fs::write(
            &config,
            format!(
                "insecure_http = true\nserver = \"http://{}\"\nbranch = \"b{}\"\nstate_dir = \"{}\"\ncurrent_link = \"{}\"\ntrusted_keys = [\"{}\"]\n{extra}",
                proxy.addr,
                target + 1,
                device.join("state").display(),
                device.join("current").display(),
                work.path().join("ci.key.pub").display()
            ),
        )
        .expect("config");
        let before = proxy.bytes();
        let cpu = ferry_benches::own_cpu_seconds();
        let (out, seconds, rss_kib) =
            timed(Command::new(&ferryd).arg("--config").arg(&config).args(["update", "--json"]));
        let server_cpu = ferry_benches::own_cpu_seconds() - cpu;
        let s: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(s["patch_fallbacks"].as_u64(), Some(0), "{s}");
        rows.push(Row {
            hop,
            tool,
            bytes: proxy.bytes() - before,
            requests: s["requests"].as_u64(),
            seconds,
            rss_kib,
            server_cpu: Some(server_cpu),
        });
    };
    ferry_to(0, &mut Vec::new(), String::new(), "ferry", "");
    let snapshot = work.path().join("device-v1");
    copy_tree(&device, &snapshot);
    // Each hop three times from the same device state: the first device (patches computed
    // by the server), the next device (patches from the server's cache), and plain chunks
    // (`patches = false`: content-defined chunking alone).
    let before_hop = work.path().join("device-before-hop");
    for &(a, b) in &hops {
        if b != a + 1 {
            copy_tree(&snapshot, &device);
        }
        copy_tree(&device, &before_hop);
        ferry_to(b, &mut rows, label(a, b), "ferry", "");
        copy_tree(&before_hop, &device);
        ferry_to(b, &mut rows, label(a, b), "ferry, next device (cached patches)", "");
        copy_tree(&before_hop, &device);
        ferry_to(b, &mut rows, label(a, b), "ferry, plain chunks", "patches = false\n");
    }

    // rsync, xdelta3, zstd --patch-from, full image.
    let tars: Vec<PathBuf> = versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let t = work.path().join(format!("v{}.tar", i + 1));
            tar(v, &t);
            t
        })
        .collect();
    for &(a, b) in &hops {
        let hop = label(a, b);
        let dest = work.path().join("rsync-dest");
        copy_tree(&versions[a], &dest);
        let (out, seconds, rss_kib) = timed(
            Command::new("rsync")
                .args(["-a", "--delete", "--no-whole-file", "--compress", "--stats"])
                .arg(format!("{}/", versions[b].display()))
                .arg(format!("{}/", dest.display())),
        );
        let stat = |key: &str| -> u64 {
            out.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .map(|v| v.replace(',', ""))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let bytes = stat("Total bytes sent: ") + stat("Total bytes received: ");
        rows.push(Row::local(&hop, "rsync", bytes, seconds, rss_kib));

        let patch = work.path().join("patch.xd3");
        let _ = std::fs::remove_file(&patch);
        let (_, seconds, rss_kib) =
            timed(Command::new("xdelta3").args(["-e", "-9", "-f", "-s"]).arg(&tars[a]).arg(&tars[b]).arg(&patch));
        rows.push(Row::local(&hop, "xdelta3", size(&patch), seconds, rss_kib));

        let patch = work.path().join("patch.zst");
        let (_, seconds, rss_kib) = timed(
            Command::new("zstd")
                .args(["-q", "-f", "-19", "--long=31", "-T0"])
                .arg(format!("--patch-from={}", tars[a].display()))
                .arg(&tars[b])
                .arg("-o")
                .arg(&patch),
        );
        rows.push(Row::local(&hop, "zstd --patch-from", size(&patch), seconds, rss_kib));

        let image = work.path().join("image.zst");
        let (_, seconds, rss_kib) =
            timed(Command::new("zstd").args(["-q", "-f", "-19", "-T0"]).arg(&tars[b]).arg("-o").arg(&image));
        rows.push(Row::local(&hop, "full image (zstd -19)", size(&image), seconds, rss_kib));
    }
    // OSTree: an archive repository with every version, served over HTTP behind a proxy.
    let srv = work.path().join("ostree-srv");
    run_ok(Command::new("ostree").arg("init").arg(format!("--repo={}", srv.display())).arg("--mode=archive"));
    for (i, v) in versions.iter().enumerate() {
        let started = std::time::Instant::now();
        run_ok(
            Command::new("ostree")
                .arg("commit")
                .arg(format!("--repo={}", srv.display()))
                .arg(format!("--branch=b{}", i + 1))
                .arg(format!("--tree=dir={}", v.display()))
                .arg("--subject=bench"),
        );
        commit_secs[i].2 = started.elapsed().as_secs_f64();
    }
    let ostree_http = ferry_benches::Served::start(&srv, &work.path().join("http.log"));
    let oproxy = &ostree_http.proxy;
    let gets = || ostree_http.requests();
    // One client repository per pull, holding the old version. For a delta pull the local ref
    // of the new branch is first pointed at the old commit: `ostree pull` looks for a delta
    // from the ref's current value, and `--require-static-deltas` fails rather than falling
    // back to objects, so the row is a real delta pull.
    let ostree_pull = |a: usize, b: usize, tool: &'static str, rows: &mut Vec<Row>| {
        let cli = work.path().join("ostree-cli");
        let _ = std::fs::remove_dir_all(&cli);
        let repo_arg = format!("--repo={}", cli.display());
        // `bare` (we run as root): with `bare-user` the pull fetched whole objects beside the delta.
        run_ok(Command::new("ostree").arg("init").arg(&repo_arg).arg("--mode=bare"));
        run_ok(
            Command::new("ostree")
                .args(["remote", "add", "--no-gpg-verify"])
                .arg(&repo_arg)
                .arg("origin")
                .arg(format!("http://{}/", oproxy.addr)),
        );
        run_ok(Command::new("ostree").arg("pull").arg(&repo_arg).arg("origin").arg(format!("b{}", a + 1)));
        let mut pull = Command::new("ostree");
        pull.arg("pull").arg(&repo_arg);
        if tool == "ostree static delta" {
            let old = Command::new("ostree")
                .arg("rev-parse")
                .arg(&repo_arg)
                .arg(format!("origin:b{}", a + 1))
                .output()
                .expect("rev-parse");
            let old = String::from_utf8_lossy(&old.stdout).trim().to_string();
            run_ok(
                Command::new("ostree").arg("refs").arg(&repo_arg).arg(format!("--create=origin:b{}", b + 1)).arg(old),
            );
            pull.arg("--require-static-deltas");
        }
        let (bytes0, gets0) = (oproxy.bytes(), gets());
        let (_, seconds, rss_kib) = match try_timed(pull.arg("origin").arg(format!("b{}", b + 1))) {
            Ok(r) => r,
            Err(e) => {
                // Reported, not hidden: the table shows "-" for this hop.
                eprintln!("{tool} {}: {e}", label(a, b));
                return;
            }
        };
        rows.push(Row {
            hop: label(a, b),
            tool,
            bytes: oproxy.bytes() - bytes0,
            requests: Some(gets() - gets0),
            seconds,
            rss_kib,
            server_cpu: None,
        });
    };
    for &(a, b) in &hops {
        ostree_pull(a, b, "ostree pull", &mut rows);
    }
    // Static deltas are prepared on the server for each pair in advance; the time it takes is
    // reported as its own row (no bytes), then clients find the deltas through the summary.
    let srv_arg = format!("--repo={}", srv.display());
    for &(a, b) in &hops {
        let deltas_before = dir_size(&srv.join("deltas"));
        let (_, seconds, rss_kib) = timed(
            Command::new("ostree")
                .args(["static-delta", "generate"])
                .arg(&srv_arg)
                // By default objects over 4 MB travel whole beside the delta ("fallback"),
                // which made the delta pull larger than an object pull here; with this the
                // delta covers every changed file, OSTree's best case.
                .arg("--min-fallback-size=1024")
                .arg(format!("--from=b{}", a + 1))
                .arg(format!("--to=b{}", b + 1)),
        );
        // What the delta holds, whatever the pull below transfers: ostree 2022.7 fetched
        // whole objects beside the delta in this setup, so both are reported.
        let hop = label(a, b);
        let delta_bytes = dir_size(&srv.join("deltas")) - deltas_before;
        rows.push(Row::local(&hop, "ostree static delta (size on disk)", delta_bytes, 0.0, 0));
        rows.push(Row::local(&hop, "ostree static-delta generate (server, per pair)", 0, seconds, rss_kib));
    }
    run_ok(Command::new("ostree").arg("summary").arg(&srv_arg).arg("-u"));
    for &(a, b) in &hops {
        ostree_pull(a, b, "ostree static delta", &mut rows);
    }
    drop(ostree_http);

    // casync: a chunk store and one index per version, served over HTTP behind a proxy; the
    // device extracts the new index with its old tree as the seed.
    let cas = work.path().join("casync-srv");
    std::fs::create_dir_all(&cas).expect("casync dir");
    for (i, v) in versions.iter().enumerate() {
        let started = std::time::Instant::now();
        run_ok(
            Command::new("casync")
                .arg("make")
                .arg(format!("--store={}", cas.join("default.castr").display()))
                .arg(cas.join(format!("v{}.caidx", i + 1)))
                .arg(v),
        );
        commit_secs[i].3 = started.elapsed().as_secs_f64();
    }
    let casync_http = ferry_benches::Served::start(&cas, &work.path().join("casync-http.log"));
    let cproxy = &casync_http.proxy;
    let cgets = || casync_http.requests();
    for &(a, b) in &hops {
        let out = work.path().join("casync-out");
        let _ = std::fs::remove_dir_all(&out);
        let (bytes0, gets0) = (cproxy.bytes(), cgets());
        let (_, seconds, rss_kib) = timed(
            Command::new("casync")
                .arg("extract")
                .arg(format!("--store=http://{}/default.castr", cproxy.addr))
                .arg(format!("--seed={}", versions[a].display()))
                .arg(format!("http://{}/v{}.caidx", cproxy.addr, b + 1))
                .arg(&out),
        );
        rows.push(Row {
            hop: label(a, b),
            tool: "casync (seeded)",
            bytes: cproxy.bytes() - bytes0,
            requests: Some(cgets() - gets0),
            seconds,
            rss_kib,
            server_cpu: None,
        });
    }
    drop(casync_http);
    rt.shutdown_background();

    let best_diff = |hop: &str| {
        rows.iter()
            .filter(|o| o.hop == hop && (o.tool == "xdelta3" || o.tool == "zstd --patch-from"))
            .map(|o| o.bytes)
            .min()
            .unwrap_or(0)
            .max(1)
    };
    let prep = |r: &Row| r.tool.contains("generate");
    println!("\n### {name}: every run ({} versions)\n", versions.len());
    println!("| hop | tool | bytes | requests | seconds | peak RSS (MiB) | server CPU (s) | × best per-pair diff |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut csv =
        String::from("series,hop,tool,bytes,requests,seconds,peak_rss_kib,server_cpu_seconds,ratio_to_best_diff\n");
    for r in &rows {
        let ratio = r.bytes as f64 / best_diff(&r.hop) as f64;
        let (bytes, ratio_s) =
            if prep(r) { ("-".to_string(), "-".to_string()) } else { (r.bytes.to_string(), format!("{ratio:.2}")) };
        println!(
            "| {} | {} | {bytes} | {} | {:.2} | {:.1} | {} | {ratio_s} |",
            r.hop,
            r.tool,
            r.requests.map_or("-".to_string(), |n| n.to_string()),
            r.seconds,
            r.rss_kib as f64 / 1024.0,
            r.server_cpu.map_or("-".to_string(), |c| format!("{c:.2}")),
        );
        csv += &format!(
            "{name},{},{},{},{},{:.3},{},{:.3},{:.3}\n",
            r.hop,
            r.tool,
            r.bytes,
            r.requests.unwrap_or(0),
            r.seconds,
            r.rss_kib,
            r.server_cpu.unwrap_or(0.0),
            ratio
        );
    }
    // The same numbers one row per hop, as the README shows them.
    let columns = [
        ("Ferry", "ferry"),
        ("Ferry, plain chunks", "ferry, plain chunks"),
        ("OSTree pull", "ostree pull"),
        ("OSTree static delta pull", "ostree static delta"),
        ("OSTree static delta, size", "ostree static delta (size on disk)"),
        ("casync, seeded", "casync (seeded)"),
        ("rsync", "rsync"),
        ("xdelta3", "xdelta3"),
        ("zstd --patch-from", "zstd --patch-from"),
        ("full image zstd -19", "full image (zstd -19)"),
    ];
    let mut hop_names: Vec<&str> = Vec::new();
    for r in &rows {
        if !hop_names.contains(&r.hop.as_str()) {
            hop_names.push(&r.hop);
        }
    }
    let find = |hop: &str, tool: &str| rows.iter().find(|r| r.hop == hop && r.tool == tool);
    println!("\n### {name}: bytes on the wire per update (requests)\n");
    let header: Vec<&str> = columns.iter().map(|c| c.0).collect();
    println!("| hop | {} | Ferry ÷ best diff |", header.join(" | "));
    println!("|---|{}---|", "---|".repeat(columns.len()));
    for hop in &hop_names {
        let cells: Vec<String> = columns
            .iter()
            .map(|(_, tool)| match find(hop, tool) {
                Some(r) => match r.requests {
                    Some(n) => format!("{} ({n})", thousands(r.bytes)),
                    None => thousands(r.bytes),
                },
                None => "-".into(),
            })
            .collect();
        let ferry = find(hop, "ferry").map_or(0, |r| r.bytes);
        println!("| {hop} | {} | {:.2} |", cells.join(" | "), ferry as f64 / best_diff(hop) as f64);
    }
    println!("\n### {name}: Ferry server CPU per update, seconds (first device; next device)\n");
    println!("| hop | patches computed | from the cache |");
    println!("|---|---|---|");
    for hop in &hop_names {
        let cpu = |tool: &str| find(hop, tool).and_then(|r| r.server_cpu).map_or("-".into(), |c| format!("{c:.2}"));
        println!("| {hop} | {} | {} |", cpu("ferry"), cpu("ferry, next device (cached patches)"));
    }
    println!("\n### {name}: client wall time in seconds (peak RSS in MiB)\n");
    println!("| hop | {} | OSTree delta generation (server) |", header.join(" | "));
    println!("|---|{}---|", "---|".repeat(columns.len()));
    for hop in &hop_names {
        let cells: Vec<String> = columns
            .iter()
            .chain(std::iter::once(&("", "ostree static-delta generate (server, per pair)")))
            .map(|(_, tool)| {
                find(hop, tool).map_or("-".into(), |r| format!("{:.2} ({:.0})", r.seconds, r.rss_kib as f64 / 1024.0))
            })
            .collect();
        println!("| {hop} | {} |", cells.join(" | "));
    }
    println!("\n### {name}: commit time per version (seconds)\n");
    println!("| version | ferry commit | ostree commit | casync make | ostree ÷ ferry | casync ÷ ferry |");
    println!("|---|---|---|---|---|---|");
    for (i, f, o, c) in &commit_secs {
        println!("| v{} | {f:.2} | {o:.2} | {c:.2} | {:.2} | {:.2} |", i + 1, o / f.max(1e-9), c / f.max(1e-9));
        csv += &format!(
            "{name},v{0},commit:ferry,0,0,{f:.3},0,0,0\n{name},v{0},commit:ostree,0,0,{o:.3},0,0,0\n{name},v{0},commit:casync,0,0,{c:.3},0,0,0\n",
            i + 1
        );
    }
    let csv_path = cache.join(format!("peers-{name}.csv"));
    std::fs::write(&csv_path, csv).expect("csv");
    println!("\nCSV: {}", csv_path.display());
}
