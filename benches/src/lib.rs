//! ferry-benches: criterion benchmarks and the side-by-side comparisons (see `benches/`).
//! This library holds what the benchmark programs share: where the cache is, where the
//! workspace's binaries are, and serving a directory over HTTP behind a counting proxy.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// `$FERRY_BENCH_CACHE`, or `~/.cache/ferry-bench`: generated series and results live here.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("FERRY_BENCH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/ferry-bench"))
}

/// A binary of this workspace, built by `cargo build --bins` in the same profile.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let p = exe.parent().and_then(Path::parent).expect("target dir").join(name);
    assert!(p.exists(), "{} is missing: run `cargo build --bins` first", p.display());
    p
}

/// Runs `ferry serve` on 127.0.0.1 (a free port) in a runtime of its own; returns the
/// runtime (drop or shut it down to stop the server) and the bound address.
pub fn serve_in_background(repo: &Path, scratch: &Path) -> (tokio::runtime::Runtime, std::net::SocketAddr) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (tx, rx) = std::sync::mpsc::channel();
    let (repo, scratch) = (repo.to_path_buf(), scratch.to_path_buf());
    rt.spawn(async move {
        ferry_publisher::serve::serve(
            repo,
            scratch,
            "127.0.0.1:0".parse().expect("addr"),
            move |a| tx.send(a).expect("addr"),
            std::future::pending(),
        )
        .await
        .expect("serve");
    });
    let addr = rx.recv().expect("the server reports its address");
    (rt, addr)
}

/// The same over HTTPS: a CA and a certificate for `localhost` made in `dir` (the CA's
/// certificate at `dir/ca.pem`, what a device pins as `ca_file`); returns the runtime, the
/// address and the CA file.
pub fn serve_tls_in_background(
    repo: &Path,
    scratch: &Path,
    dir: &Path,
) -> (tokio::runtime::Runtime, std::net::SocketAddr, PathBuf) {
    use ferry_fixtures::certs::{Ca, VALID};
    let ca = Ca::new("bench CA");
    let ca_file = ca.write(dir, "ca");
    let (cert, key) = ca.issue(&["localhost"], VALID).write(dir, "server");
    let config = ferry_publisher::serve::ServeConfig {
        tls: Some(ferry_publisher::tls::TlsFiles { cert, key }),
        ..Default::default()
    };
    let (rt, addr) = serve_with_config(repo, scratch, config);
    (rt, addr, ca_file)
}

/// `ferry serve` with `config` on 127.0.0.1 (a free port) in a runtime of its own.
pub fn serve_with_config(
    repo: &Path,
    scratch: &Path,
    config: ferry_publisher::serve::ServeConfig,
) -> (tokio::runtime::Runtime, std::net::SocketAddr) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (tx, rx) = std::sync::mpsc::channel();
    let (repo, scratch) = (repo.to_path_buf(), scratch.to_path_buf());
    rt.spawn(async move {
        ferry_publisher::serve::serve_with(
            repo,
            scratch,
            "127.0.0.1:0".parse().expect("addr"),
            &config,
            move |a| tx.send(a).expect("addr"),
            std::future::pending(),
        )
        .await
        .expect("serve");
    });
    let addr = rx.recv().expect("the server reports its address");
    (rt, addr)
}

/// CPU seconds (user + system) this process has used: the in-process servers' work, since
/// nothing else runs here during an update. From /proc, in clock ticks of 10 ms.
pub fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// A directory served by Python's http.server on 127.0.0.1, behind a byte-counting proxy;
/// requests are counted from the server's log. Stops when dropped.
#[derive(Debug)]
pub struct Served {
    pub proxy: ferry_fixtures::proxy::Proxy,
    server: Child,
    log: PathBuf,
}

impl Served {
    pub fn start(dir: &Path, log: &Path) -> Served {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let server = Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("python3 -m http.server");
        let upstream: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        for _ in 0..100 {
            if std::net::TcpStream::connect(upstream).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let proxy = ferry_fixtures::proxy::Proxy::start(upstream).expect("proxy");
        Served { proxy, server, log: log.to_path_buf() }
    }

    /// GET requests served so far.
    pub fn requests(&self) -> u64 {
        std::fs::read_to_string(&self.log).map(|s| s.matches("\"GET ").count() as u64).unwrap_or(0)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// The synthetic release series of `mib` MiB (seed 1, versions v1..v4) in the cache,
/// generated once: what `peers` and `update` measure.
pub fn synthetic_series(mib: u64) -> PathBuf {
    let dir = cache_dir().join(format!("series-{mib}M-seed1"));
    for v in 1..=4 {
        let out = dir.join(format!("v{v}"));
        if !out.join("etc/version").exists() {
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir_all(&dir).expect("cache dir");
            eprintln!("generating {}", out.display());
            ferry_fixtures::generate(&ferry_fixtures::TreeSpec { seed: 1, size: mib << 20, version: v }, &out)
                .expect("tree");
        }
    }
    dir
}

/// A device's `POST /v1/device/{path}` to the server at `url` (`http(s)://HOST:PORT`), with
/// its token if any: how long the answer took, and the answer. A failure ends the bench.
pub async fn device_post(
    client: &reqwest::Client,
    url: &str,
    path: &str,
    token: Option<String>,
    body: &serde_json::Value,
) -> (std::time::Duration, serde_json::Value) {
    let mut req = client.post(format!("{url}/v1/device/{path}")).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let started = std::time::Instant::now();
    let r = req.body(serde_json::to_vec(body).expect("json")).send().await.expect("request");
    let status = r.status();
    let bytes = r.bytes().await.expect("body");
    assert!(status.is_success(), "{path}: {status}: {}", String::from_utf8_lossy(&bytes));
    (started.elapsed(), serde_json::from_slice::<serde_json::Value>(&bytes).expect("json"))
}
