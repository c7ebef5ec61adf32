//! A repository with a served branch and a simulated device (a state directory and a
//! `current_link` in a temporary directory).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_publisher::import::{commit_tree, CommitRequest, NoProgress};
use ferry_store::{ChunkParams, Id, RepoConfig, Repository};

pub struct Env {
    pub t: tempfile::TempDir,
    pub repo: Repository,
    pub addr: SocketAddr,
    server: Option<tokio::runtime::Runtime>,
    /// The fleet store the server keeps, if it serves the device and admin APIs.
    fleet: Option<ferry_publisher::serve::FleetConfig>,
    /// Where that store is: a directory, or PostgreSQL (`FERRY_TEST_FLEET_DB=postgres`).
    fleet_store: Option<ferry_fixtures::postgres::TestFleetStore>,
    /// With a fleet: an admin token and an enrollment token (in `enrollment-token`).
    pub admin_token: String,
    /// The certificate and key the server serves HTTPS with, if it does.
    tls: Option<ferry_publisher::tls::TlsFiles>,
    /// The CA of the devices' client certificates (mutual TLS), if the server wants them.
    device_ca: Option<ferry_publisher::serve::DeviceCa>,
    /// How the server computes patches ([`exact_patches`] unless a test says otherwise).
    patches: ferry_publisher::serve::PatchConfig,
}

/// Patches computed at the server's level while the device waits, and none prepared in the
/// background: the tests compare a device's bytes with `ferry diff`'s exactly. The fast
/// first answer and preparation are tested on their own (tests/it/patches.rs).
pub fn exact_patches() -> ferry_publisher::serve::PatchConfig {
    ferry_publisher::serve::PatchConfig {
        first: ferry_publisher::patches::FirstAnswer::Best,
        prepare: false,
        ..Default::default()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.kill_server();
    }
}

/// Starts `ferry serve`'s server on `addr` in a runtime of its own; returns the runtime and
/// the bound address.
fn start_server(
    repo: PathBuf,
    scratch: PathBuf,
    addr: SocketAddr,
    fleet: Option<ferry_publisher::serve::FleetConfig>,
    tls: Option<ferry_publisher::tls::TlsFiles>,
    device_ca: Option<ferry_publisher::serve::DeviceCa>,
    patches: ferry_publisher::serve::PatchConfig,
) -> (tokio::runtime::Runtime, SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (atx, arx) = std::sync::mpsc::channel();
    let config = ferry_publisher::serve::ServeConfig { fleet, tls, device_ca, patches, ..Default::default() };
    rt.spawn(async move {
        ferry_publisher::serve::serve_with(
            repo,
            scratch,
            addr,
            &config,
            move |a| atx.send(a).unwrap(),
            std::future::pending(),
        )
        .await
        .unwrap();
    });
    let bound = arx.recv().unwrap();
    (rt, bound)
}

/// Size of the generated release trees.
pub const SIZE: u64 = 3 << 20;

impl Env {
    pub fn new() -> Env {
        Env::start(None)
    }

    /// A server that also keeps a fleet (`ferry serve --fleet`), with an admin token and an
    /// enrollment token (written to `enrollment-token`).
    pub fn with_fleet(require_approval: bool) -> Env {
        Env::start(Some(require_approval))
    }

    /// Whether the server keeps a fleet (check-ins, the admin API).
    pub fn has_fleet(&self) -> bool {
        self.fleet.is_some()
    }

    /// A server that serves HTTPS with `leaf` (written to `server.crt` and `server.key`).
    pub fn with_tls(leaf: &ferry_fixtures::certs::Leaf) -> Env {
        let mut env = Env::start(None);
        let (cert, key) = leaf.write(env.path(), "server");
        env.tls = Some(ferry_publisher::tls::TlsFiles { cert, key });
        env.restart_server();
        env
    }

    /// A fleet server over HTTPS with `leaf`; with `client_ca` (a `ferry ca init`
    /// directory), mutual TLS: devices get certificates at enrollment and must present them.
    pub fn with_fleet_tls(leaf: &ferry_fixtures::certs::Leaf, client_ca: Option<&Path>) -> Env {
        let mut env = Env::start(Some(false));
        let (cert, key) = leaf.write(env.path(), "server");
        env.tls = Some(ferry_publisher::tls::TlsFiles { cert, key });
        env.device_ca = client_ca.map(|d| ferry_publisher::serve::DeviceCa {
            cert: d.join(ferry_publisher::ca::CA_CERT),
            key: Some(d.join(ferry_publisher::ca::CA_KEY)),
        });
        env.restart_server();
        env
    }

    fn start(fleet: Option<bool>) -> Env {
        let t = tempfile::tempdir().unwrap();
        let repo_path = t.path().join("repo");
        let repo = Repository::init(&repo_path, &RepoConfig::new(ChunkParams::default(), 3)).unwrap();
        ferry_fixtures::test_key(1).save(&t.path().join("ci.key")).unwrap();
        ferry_fixtures::test_key(2).save(&t.path().join("other.key")).unwrap();
        let mut admin_token = String::new();
        let fleet_store =
            fleet.map(|_| ferry_fixtures::postgres::TestFleetStore::new(&t.path().join("fleet")).unwrap());
        let fleet = fleet.map(|require_approval| {
            use ferry_publisher::fleet::{Caller, Fleet, Settings, TokenKind};
            let store = ferry_publisher::fleet::db::Location::parse(&fleet_store.as_ref().unwrap().at);
            let settings = Settings { require_approval, ..Default::default() };
            let f = Fleet::open(&store, settings.clone()).unwrap();
            admin_token = f.create_token(&Caller::Local, TokenKind::Admin, "ops").unwrap();
            let enroll = f.create_token(&Caller::Local, TokenKind::Enrollment, "factory").unwrap();
            std::fs::write(t.path().join("enrollment-token"), format!("{enroll}\n")).unwrap();
            ferry_publisher::serve::FleetConfig { store, settings, channel_key: None, config_key: None }
        });
        let (rt, addr) = start_server(
            repo_path,
            t.path().join("serve-scratch"),
            "127.0.0.1:0".parse().unwrap(),
            fleet.clone(),
            None,
            None,
            exact_patches(),
        );
        Env {
            t,
            repo,
            addr,
            server: Some(rt),
            fleet,
            fleet_store,
            admin_token,
            tls: None,
            device_ca: None,
            patches: exact_patches(),
        }
    }

    /// A server computing patches as `patches` says (`ferry serve`'s defaults: fast first
    /// answers, new releases prepared in the background).
    pub fn with_patches(patches: ferry_publisher::serve::PatchConfig) -> Env {
        let mut env = Env::start(None);
        env.patches = patches;
        env.restart_server();
        env
    }

    /// Another server on the same repository (no fleet, no TLS), computing patches as
    /// `patches` says; stops when the runtime is dropped.
    pub fn another_server(
        &self,
        patches: ferry_publisher::serve::PatchConfig,
    ) -> (tokio::runtime::Runtime, SocketAddr) {
        let scratch = self.path().join(format!("other-scratch-{}", crate::harness::now_nanos()));
        start_server(self.repo.path().to_path_buf(), scratch, "127.0.0.1:0".parse().unwrap(), None, None, None, patches)
    }

    /// Kills the server at once: every connection is dropped mid-flight.
    pub fn kill_server(&mut self) {
        if let Some(rt) = self.server.take() {
            if self.fleet.is_some() {
                // The fleet store's lock goes with the runtime's last task: wait for it.
                rt.shutdown_timeout(std::time::Duration::from_secs(5));
            } else {
                rt.shutdown_background();
            }
        }
    }

    /// Starts the server again on the same address, holding `config_key` as its online
    /// configuration key (`ferry serve --config-key`), or none.
    pub fn restart_with_config_key(&mut self, config_key: Option<PathBuf>) {
        if let Some(f) = &mut self.fleet {
            f.config_key = config_key;
        }
        self.restart_server();
    }

    /// Keeps a copy of the fleet's state as it is now under `name` (a backup), with the
    /// server stopped: the directory copied, or the database's rows.
    pub fn fleet_snapshot(&self, name: &str) {
        let store = self.fleet_store.as_ref().expect("a fleet");
        match &store.postgres {
            Some(pg) => {
                let sql =
                    format!("DROP TABLE IF EXISTS snap_{name}; CREATE TABLE snap_{name} AS SELECT * FROM ferry_kv");
                pg.psql("fleet", &sql).unwrap();
            }
            None => {
                let to = self.path().join(format!("fleet-{name}"));
                let _ = std::fs::remove_dir_all(&to);
                crate::harness::copy_dir(Path::new(&store.at), &to);
            }
        }
    }

    /// Puts the state kept by [`Env::fleet_snapshot`] back, with the server stopped.
    pub fn fleet_restore(&self, name: &str) {
        let store = self.fleet_store.as_ref().expect("a fleet");
        match &store.postgres {
            Some(pg) => {
                let sql =
                    format!("BEGIN; DELETE FROM ferry_kv; INSERT INTO ferry_kv SELECT * FROM snap_{name}; COMMIT");
                pg.psql("fleet", &sql).unwrap();
            }
            None => {
                std::fs::remove_dir_all(&store.at).unwrap();
                crate::harness::copy_dir(&self.path().join(format!("fleet-{name}")), Path::new(&store.at));
            }
        }
    }

    /// Starts the server again on the same address.
    pub fn restart_server(&mut self) {
        self.kill_server();
        let scratch = self.path().join(format!("serve-scratch-{}", crate::harness::now_nanos()));
        let (rt, _) = start_server(
            self.repo.path().to_path_buf(),
            scratch,
            self.addr,
            self.fleet.clone(),
            self.tls.clone(),
            self.device_ca.clone(),
            self.patches.clone(),
        );
        self.server = Some(rt);
    }

    pub fn path(&self) -> &Path {
        self.t.path()
    }

    /// Generates version `v` of the fixture series (once) and returns its directory.
    pub fn tree(&self, v: u32) -> PathBuf {
        let out = self.path().join(format!("tree-v{v}"));
        if !out.exists() {
            ferry_fixtures::generate(&ferry_fixtures::TreeSpec { seed: 21, size: SIZE, version: v }, &out).unwrap();
        }
        out
    }

    /// Commits fixture version `v` as release `version` on main.
    pub fn commit(&self, v: u32, version: &str) -> Id {
        self.commit_meta(v, version, &[])
    }

    /// The same, with commit metadata.
    pub fn commit_meta(&self, v: u32, version: &str, meta: &[(&str, &str)]) -> Id {
        let key = ferry_fixtures::test_key(1);
        let req = CommitRequest {
            metadata: meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            hardware: vec!["rev-a".into()],
            // Device tests commit lower versions on purpose (the device's own refusal is
            // what they test); `ferry commit`'s check has its own test.
            allow_downgrade: true,
            ..CommitRequest::new(self.tree(v), "main", version.parse().unwrap(), &key)
        };
        commit_tree(&self.repo, &req, &NoProgress).unwrap().commit.parse().unwrap()
    }

    /// Writes a device configuration (state under `device/`) and returns its path.
    pub fn device(&self, extra: &str) -> PathBuf {
        self.device_via(self.addr, extra)
    }

    pub fn device_via(&self, addr: SocketAddr, extra: &str) -> PathBuf {
        self.device_named("device", addr, extra)
    }

    /// A device of its own under `name/`, e.g. a second device of the fleet.
    pub fn device_named(&self, name: &str, addr: SocketAddr, extra: &str) -> PathBuf {
        let dev = self.path().join(name);
        std::fs::create_dir_all(&dev).unwrap();
        let config = dev.join("ferryd.toml");
        let text = format!(
            "insecure_http = true\nserver = \"http://{addr}\"\nbranch = \"main\"\nstate_dir = \"{}\"\ncurrent_link = \"{}\"\ntrusted_keys = [\"{}\"]\nhardware = \"rev-a\"\n{extra}",
            dev.join("state").display(),
            dev.join("current").display(),
            self.path().join("ci.key.pub").display(),
        );
        std::fs::write(&config, text).unwrap();
        config
    }

    pub fn current(&self) -> PathBuf {
        self.path().join("device/current")
    }

    /// A fleet device under `name/` following `stable` at `server` (a URL), trusting the
    /// root key of `channels::set_up_keys`, enrolling as `serial` with the fleet's enrollment
    /// token; `sections` (e.g. `[health]`) go before its `[fleet]` table, `fleet_extra` in it.
    pub fn fleet_device(&self, name: &str, server: &str, serial: &str, sections: &str, fleet_extra: &str) -> PathBuf {
        let dev = self.path().join(name);
        std::fs::create_dir_all(&dev).unwrap();
        let config = dev.join("ferryd.toml");
        let text = format!(
            "insecure_http = true\nserver = \"{server}\"\nchannel = \"stable\"\nstate_dir = \"{}\"\ncurrent_link = \"{}\"\nroot_keys = [\"{}\"]\nhardware = \"rev-a\"\n\
             {sections}[fleet]\nenrollment_token_file = \"{}\"\nserial = \"{serial}\"\n{fleet_extra}",
            dev.join("state").display(),
            dev.join("current").display(),
            self.path().join("root.key.pub").display(),
            self.path().join("enrollment-token").display(),
        );
        std::fs::write(&config, text).unwrap();
        config
    }
}

/// The version a device runs, as `ferryd status --json` says (`none` before its first).
pub fn running_version(config: &Path) -> String {
    let (ok, out, err) = ferryd(config, &["status", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["current"]["version"].as_str().unwrap_or("none").to_string()
}

/// The `ferryd` the tests run: this build's, or the one `FERRY_TEST_FERRYD` names — an ARM
/// build that the kernel runs through qemu-user (binfmt_misc), set by `scripts/arm-test`.
pub fn ferryd_bin() -> PathBuf {
    match std::env::var_os("FERRY_TEST_FERRYD") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_ferryd")),
    }
}

/// Runs `ferryd --config C ARGS`; returns (success, stdout, stderr).
pub fn ferryd(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(ferryd_bin()).arg("--config").arg(config).args(args).output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

/// `ferryd update --json`, which must succeed.
pub fn update(config: &Path) -> serde_json::Value {
    let (ok, out, err) = ferryd(config, &["update", "--json"]);
    assert!(ok, "ferryd update failed: {err}");
    serde_json::from_str(&out).unwrap()
}

pub fn now_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// `ferryd update` made to abort at the n-th time it reaches a durable step (`step:n`).
pub fn crashed_update(config: &Path, at: &str) -> std::process::Output {
    Command::new(ferryd_bin()).arg("--config").arg(config).arg("update").env("FERRYD_CRASH_AT", at).output().unwrap()
}

/// `ferryd update --json` started in the background, its output piped.
pub fn spawn_update(config: &Path) -> std::process::Child {
    Command::new(ferryd_bin())
        .arg("--config")
        .arg(config)
        .args(["update", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// What `ferry diff` says a device on `from` downloads for `to` with patches.
pub fn patch_cost(env: &Env, from: Id, to: Id) -> ferry_delta::PatchCost {
    let (from, to) = (env.repo.read_commit(&from).unwrap(), env.repo.read_commit(&to).unwrap());
    ferry_delta::patch_cost(&env.repo, &from, &to, ferry_delta::patch::DEFAULT_LEVEL).unwrap()
}

/// `ferryd run --json` on a device, killed when dropped however the test ends.
pub struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ferryd run --json`; its lines (one per check) arrive on the receiver as they are
/// printed. A line that is not JSON ends the stream.
pub fn spawn_daemon(config: &Path) -> (Daemon, std::sync::mpsc::Receiver<serde_json::Value>) {
    let mut child = Command::new(ferryd_bin())
        .arg("--config")
        .arg(config)
        .args(["run", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str(&line) else {
                eprintln!("ferryd run --json printed a line that is not JSON: {line}");
                break;
            };
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    (Daemon(child), rx)
}

/// Runs `ferryd --config C ARGS` under GNU time; returns (success, stdout, stderr, peak
/// resident set in bytes). The peak is the agent's own: `time` forks it from its own small
/// process, whereas a child this test spawned directly would start its count from the
/// test's memory (the kernel carries the high-water mark across the exec of a vforked child).
pub fn ferryd_peak(config: &Path, args: &[&str]) -> (bool, String, String, u64) {
    const MARK: &str = "FERRY-PEAK-KB ";
    let out = Command::new("/usr/bin/time")
        .args(["-f", &format!("{MARK}%M")])
        .arg(ferryd_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    let (err, peak) = match err.rfind(MARK) {
        Some(at) => (err[..at].to_string(), err[at + MARK.len()..].trim().parse::<u64>().unwrap() * 1024),
        None => panic!("no peak from /usr/bin/time: {err}"),
    };
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), err, peak)
}

/// Copies the directory `from` to `to`, recursively.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}
