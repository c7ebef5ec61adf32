//! The application under updates (`[app]`, issue 24): each strategy end to end with the
//! sample application (`fixtures/sample-app/ferry-sample-app`: it holds an flock, as an
//! application holds a serial port, answers a health URL while it does, and appends every
//! change of owner to an events file) against a real `ferry serve`, with the real `ferryd`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_fixtures::proxy::{Fault, Proxy};
use serde_json::Value;

use crate::harness::{ferryd, running_version, update, Env};

/// The sample application of one device: its resource, its events and its health port.
struct App {
    lock: PathBuf,
    events: PathBuf,
    port: u16,
    /// The device's state directory (its `app.json` names the process groups to clean up).
    state: PathBuf,
}

impl Drop for App {
    /// Whatever a test left running is killed.
    fn drop(&mut self) {
        let Ok(text) = std::fs::read_to_string(self.state.join("app.json")) else { return };
        let Ok(v) = serde_json::from_str::<Value>(&text) else { return };
        for i in v["running"].as_array().into_iter().flatten() {
            if let Some(pgid) = i["pgid"].as_i64() {
                let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).status();
            }
        }
    }
}

/// One line of the events file: (ms, what, version).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    at: u64,
    what: String,
    version: String,
}

impl App {
    fn events(&self) -> Vec<Event> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                Event { at: w[0].parse().unwrap(), what: w[1].into(), version: w[2].into() }
            })
            .collect()
    }

    /// The events as `what version`, in order.
    fn story(&self) -> Vec<String> {
        self.events().iter().map(|e| format!("{} {}", e.what, e.version)).collect()
    }

    /// Milliseconds between the old version's release (or its last event, when it was
    /// killed) and the new one's taking the resource: how long nobody owned it.
    fn gap(&self, new: &str) -> u64 {
        let ev = self.events();
        let acquired = ev.iter().rposition(|e| e.what == "acquired" && e.version == new).unwrap();
        let before = ev[..acquired].iter().rev().find(|e| e.version != new).unwrap();
        ev[acquired].at - before.at
    }

    /// What the health URL answers now, if anything.
    fn health(&self) -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        use std::io::{Read, Write};
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.split("\r\n\r\n").nth(1).map(|b| b.trim().to_string())
    }

    /// Waits until the health URL says `ok VERSION`.
    fn serves(&self, version: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.health().as_deref() != Some(&format!("ok {version}")) {
            assert!(Instant::now() < deadline, "version {version} never answered; events: {:?}", self.story());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn sample_app() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/sample-app/ferry-sample-app")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A device on `server` whose `[app]` is the sample application, with `app` added to that
/// table (`strategy`, timeouts, a veto) and the health URL as its trial's check.
fn device(env: &Env, server: std::net::SocketAddr, app: &str, top: &str) -> (PathBuf, App) {
    let port = free_port();
    let a = App {
        lock: env.path().join("serial-port"),
        events: env.path().join("events"),
        port,
        state: env.path().join("device/state"),
    };
    let extra = format!(
        "{top}[app]\ncommand = \"exec python3 {} --lock {} --events {} --port {port}\"\n{app}\n\
         [health]\nurls = [\"http://127.0.0.1:{port}/\"]\ndeadline = 8\ninterval = 1\n",
        sample_app().display(),
        a.lock.display(),
        a.events.display(),
    );
    (env.device_via(server, &extra), a)
}

/// Release `v` of the fixture series with the sample application's `behaviour` words.
fn release(env: &Env, v: u32, behaviour: &str, meta: &[(&str, &str)]) {
    let tree = env.tree(v);
    std::fs::write(tree.join("etc/app-behaviour"), behaviour).unwrap();
    env.commit_meta(v, &v.to_string(), meta);
}

fn status(config: &Path) -> Value {
    let (ok, out, err) = ferryd(config, &["status", "--json"]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// A device on release 1 with its application running.
fn on_release_1(app_table: &str, behaviour_1: &str) -> (Env, PathBuf, App) {
    let env = Env::new();
    release(&env, 1, behaviour_1, &[]);
    let (config, app) = device(&env, env.addr, app_table, "");
    let s = update(&config);
    assert_eq!(s["version"], "1", "{s}");
    app.serves("1");
    (env, config, app)
}

#[test]
fn download_then_kill_stops_the_old_version_only_once_the_new_one_is_in_place() {
    let (env, config, app) = on_release_1("ready_signal = true\n", "");
    assert_eq!(app.story(), ["acquired 1", "ready 1"]);
    release(&env, 2, "", &[]);
    let s = update(&config);
    assert_eq!(s["version"], "2", "{s}");
    app.serves("2");
    assert_eq!(app.story(), ["acquired 1", "ready 1", "released 1", "acquired 2", "ready 2"]);
    let run = &s["app"];
    assert_eq!((run["strategy"].as_str(), run["outcome"].as_str()), (Some("download-then-kill"), Some("switched")));
    assert_eq!(run["killed"], false);
    let downtime = run["downtime_ms"].as_u64().unwrap();
    let gap = app.gap("2");
    // ferryd's downtime runs from asking v1 to stop to v2 saying it is ready: it holds the
    // time the resource had no owner.
    assert!(downtime >= gap, "downtime {downtime} ms, resource without an owner {gap} ms");
    eprintln!("download-then-kill: downtime {downtime} ms, the resource had no owner for {gap} ms");
    assert_eq!(status(&config)["last_app"], *run);
}

#[test]
fn a_hand_over_starts_the_new_version_beside_the_old_and_switches_once_it_is_ready() {
    let (env, config, app) = on_release_1("strategy = \"hand-over\"\nready_signal = true\n", "");
    release(&env, 2, "", &[]);
    let s = update(&config);
    assert_eq!(s["version"], "2", "{s}");
    app.serves("2");
    // v2 said it was ready while v1 still held the device; v1 let go when asked, v2 took it.
    assert_eq!(app.story(), ["acquired 1", "ready 1", "ready 2", "released 1", "acquired 2"]);
    let run = &s["app"];
    assert_eq!((run["strategy"].as_str(), run["outcome"].as_str()), (Some("hand-over"), Some("switched")));
    assert_eq!(run["killed"], false);
    let gap = app.gap("2");
    eprintln!("hand-over: downtime {} ms, the resource had no owner for {gap} ms", run["downtime_ms"]);
    // Only v2 is left running.
    let running = std::fs::read_to_string(env.path().join("device/state/app.json")).unwrap();
    let running: Value = serde_json::from_str(&running).unwrap();
    assert_eq!(running["running"].as_array().unwrap().len(), 1, "{running}");
}

#[test]
fn a_new_version_that_never_becomes_ready_is_stopped_and_the_old_one_keeps_the_device() {
    let (env, config, app) = on_release_1("strategy = \"hand-over\"\nready_signal = true\nready_timeout = 2\n", "");
    let before = std::fs::read_link(env.current()).unwrap();
    release(&env, 2, "never-ready", &[]);
    let started = Instant::now();
    let (ok, _, err) = ferryd(&config, &["update"]);
    assert!(!ok);
    assert!(
        err.contains("did not say it was ready within 2 s") && err.contains("the running version keeps the device"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    // Nothing switched; v1 never let go and still answers.
    assert_eq!(std::fs::read_link(env.current()).unwrap(), before);
    assert_eq!(app.health().as_deref(), Some("ok 1"));
    assert!(!app.story().contains(&"released 1".to_string()), "{:?}", app.story());
    let st = status(&config);
    assert_eq!((st["last_result"].as_str(), st["last_app"]["outcome"].as_str()), (Some("aborted"), Some("not-ready")));
    let (_, text, _) = ferryd(&config, &["status"]);
    assert!(text.contains("app:      hand-over, the new version was not ready; the old one kept the device"), "{text}");
    let running: Value =
        serde_json::from_str(&std::fs::read_to_string(env.path().join("device/state/app.json")).unwrap()).unwrap();
    assert_eq!(running["running"].as_array().unwrap().len(), 1, "{running}");
    // The release is not tried again.
    let s = update(&config);
    assert_eq!(s["skipped_bad_commit"].as_str().map(|c| c.len()), Some(64), "{s}");
    assert_eq!(running_version(&config), "1");
}

#[test]
fn an_old_version_that_will_not_release_is_killed_after_its_timeout() {
    let (env, config, app) =
        on_release_1("strategy = \"hand-over\"\nready_signal = true\nstop_timeout = 1\n", "refuse-release");
    release(&env, 2, "", &[]);
    let s = update(&config);
    assert_eq!(s["version"], "2", "{s}");
    app.serves("2");
    let run = &s["app"];
    assert_eq!(run["killed"], true, "{s}");
    // v1 never said it released; v2 took the device once v1 was killed, about a second after.
    assert_eq!(app.story(), ["acquired 1", "ready 1", "ready 2", "acquired 2"]);
    let downtime = run["downtime_ms"].as_u64().unwrap();
    assert!(downtime >= 1000, "{downtime}");
}

#[test]
fn kill_then_download_cut_by_the_network_starts_the_old_version_again() {
    let env = Env::new();
    release(&env, 1, "", &[]);
    let proxy = Proxy::start(env.addr).unwrap();
    let (config, app) =
        device(&env, proxy.addr, "strategy = \"kill-then-download\"\nready_signal = true\n", "retries = 1\n");
    update(&config);
    app.serves("1");
    release(&env, 2, "", &[]);
    // Into the chunks, after the commit (the application is stopped once the commit is known).
    proxy.arm(Fault::Cut(proxy.bytes() + 60_000));
    let (ok, _, err) = ferryd(&config, &["update"]);
    assert!(proxy.fired());
    assert!(!ok, "the update should fail: {err}");
    // v1 was stopped for the download and started again when it failed.
    app.serves("1");
    assert_eq!(app.story(), ["acquired 1", "ready 1", "released 1", "acquired 1", "ready 1"]);
    let st = status(&config);
    assert_eq!(st["last_app"]["outcome"], "restored", "{st}");
    assert_eq!(st["last_app"]["strategy"], "kill-then-download");
    // The next update, with the network back, stops v1 again and goes through.
    let s = update(&config);
    assert_eq!(s["version"], "2", "{s}");
    app.serves("2");
    assert_eq!(s["app"]["strategy"], "kill-then-download");
    let downtime = s["app"]["downtime_ms"].as_u64().unwrap();
    let gap = app.gap("2");
    assert!(downtime >= gap, "downtime {downtime} ms, resource without an owner {gap} ms");
    eprintln!("kill-then-download: downtime {downtime} ms, the resource had no owner for {gap} ms");
}

#[test]
fn a_veto_delays_the_switch_until_it_expires_and_never_past_its_limit() {
    let env = Env::new();
    release(&env, 1, "", &[]);
    let busy = env.path().join("busy");
    let marker = env.path().join("busy-command");
    let table = format!(
        "ready_signal = true\nbusy_file = \"{}\"\nbusy_command = \"test -e {} && exit 75; exit 0\"\nveto_poll = 1\nmax_veto = 4\n",
        busy.display(),
        marker.display()
    );
    let (config, app) = device(&env, env.addr, &table, "");
    update(&config);
    app.serves("1");
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();

    // Busy for 3 more seconds: the switch waits for it, then goes ahead.
    release(&env, 2, "", &[]);
    let until = now() + 3;
    std::fs::write(&busy, format!("{until}\n")).unwrap();
    let s = update(&config);
    assert_eq!(s["version"], "2", "{s}");
    let run = &s["app"];
    assert!((1..=4).contains(&run["vetoed_seconds"].as_u64().unwrap()), "{s}");
    assert_eq!(run["veto_overruled"], false, "{s}");
    // v1 kept the device while it was busy: released once the veto ended.
    let ev = app.events();
    let released = ev.iter().find(|e| e.what == "released").unwrap();
    assert!(released.at / 1000 >= until, "released at {} ms, busy until {until} s", released.at);

    // Busy for an hour, by the command this time: the veto is overruled after max_veto.
    std::fs::remove_file(&busy).unwrap();
    std::fs::write(&marker, "").unwrap();
    release(&env, 3, "", &[]);
    let s = update(&config);
    assert_eq!(s["version"], "3", "{s}");
    let run = &s["app"];
    assert_eq!(run["veto_overruled"], true, "{s}");
    assert!(run["vetoed_seconds"].as_u64().unwrap() >= 4, "{s}");
    app.serves("3");

    // A busy file without a time is busy too (bounded the same way); one whose time has
    // passed is not.
    std::fs::remove_file(&marker).unwrap();
    std::fs::write(&busy, format!("{}\n", now() - 10)).unwrap();
    release(&env, 4, "", &[]);
    let s = update(&config);
    assert_eq!((s["app"]["vetoed_seconds"].as_u64(), s["app"]["veto_overruled"].as_bool()), (Some(0), Some(false)));
    // A busy "file" that is a link to an endless device is not read (nor followed): not busy.
    std::fs::remove_file(&busy).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &busy).unwrap();
    release(&env, 5, "", &[]);
    let s = update(&config);
    assert_eq!((s["version"].as_str(), s["app"]["vetoed_seconds"].as_u64()), (Some("5"), Some(0)), "{s}");
}

#[test]
fn a_release_may_ask_for_its_own_strategy_and_says_so() {
    let (env, config, app) = on_release_1("ready_signal = true\n", "notify-only");
    // Release 2 asks for a hand-over; its application says ready on NOTIFY_SOCKET only.
    release(&env, 2, "notify-only", &[("strategy", "hand-over")]);
    let s = update(&config);
    assert_eq!(s["version"], "2", "{s}");
    app.serves("2");
    let run = &s["app"];
    assert_eq!(run["strategy"], "hand-over", "{s}");
    assert_eq!(run["strategy_source"], "the release's metadata", "{s}");
    assert_eq!(app.story(), ["acquired 1", "ready 1", "ready 2", "released 1", "acquired 2"]);
    // A strategy this agent does not know: the device's own, and why.
    release(&env, 3, "", &[("strategy", "teleport")]);
    let s = update(&config);
    assert_eq!(s["app"]["strategy"], "download-then-kill", "{s}");
    assert!(s["app"]["strategy_source"].as_str().unwrap().contains("names a strategy unknown here"), "{s}");
}

#[test]
fn a_failed_trial_gives_the_device_back_to_the_old_version() {
    let (env, config, app) = on_release_1("ready_signal = true\nready_timeout = 3\n", "");
    // Release 2 crashes at start: no health URL, so the trial fails and rolls back.
    release(&env, 2, "crash", &[]);
    let (ok, _, err) = ferryd(&config, &["update"]);
    assert!(!ok);
    assert!(err.contains("rolled back"), "{err}");
    app.serves("1");
    assert_eq!(running_version(&config), "1");
    assert_eq!(app.story(), ["acquired 1", "ready 1", "released 1", "acquired 1", "ready 1"]);
}

#[test]
fn the_app_table_is_checked_when_the_configuration_is_read() {
    let env = Env::new();
    for (table, top, expect) in [
        ("", "", "[app] needs command"),
        ("command = \"x\"\nstart = \"y\"\nstop = \"z\"\n", "", "not both"),
        ("start = \"y\"\n", "", "[app] needs command"),
        ("command = \"x\"\nstrategy = \"hand-over\"\n", "", "needs ready_signal = true"),
        ("command = \"x\"\nrelease_signal = \"KILL\"\n", "", "release_signal \"KILL\""),
        ("command = \"x\"\nstrategy = \"teleport\"\n", "", "unknown variant `teleport`"),
        ("command = \"x\"\n", "restart_command = \"true\"\n", "[app] replaces restart_command"),
        ("start = \"y\"\nstop = \"z\"\nready_signal = true\n", "", "are for command"),
        ("command = \"x\"\nkill = \"k\"\n", "", "kill is for start and stop"),
        ("command = \"x\"\nstop_timeout = 0\n", "", "must be at least 1"),
        ("command = \"x\"\ncheck = \"c\"\n", "", "check is for start and stop"),
        ("unit = \"a@.service\"\nstop = \"z\"\n", "", "give unit alone"),
        ("unit = \"a.socket\"\n", "", "must be a service unit"),
        ("unit = \"a b.service\"\n", "", "is not a unit name"),
        ("unit = \"a@one.service\"\n", "", "give the template (a@.service)"),
        ("unit = \"a.service\"\nstrategy = \"hand-over\"\n", "", "a plain unit has one"),
        ("unit = \"a@.service\"\nready_signal = true\n", "", "are for command"),
    ] {
        let config = env.device(&format!("{top}[app]\n{table}"));
        let (ok, _, err) = ferryd(&config, &["check-config"]);
        assert!(!ok, "{table}");
        assert!(err.contains(expect), "{table}: {err}");
    }
}

#[test]
fn the_fleet_sees_how_each_update_went_for_the_application() {
    let env = Env::with_fleet(false);
    release(&env, 1, "", &[]);
    let (config, app) = device(&env, env.addr, "ready_signal = true\nstop_timeout = 1\n", "");
    let fleet = format!(
        "\n[fleet]\nenrollment_token_file = \"{}\"\nserial = \"SN-APP\"\nunsigned_config = true\n",
        env.path().join("enrollment-token").display()
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&fleet);
    std::fs::write(&config, text).unwrap();
    update(&config);
    app.serves("1");
    release(&env, 2, "refuse-release", &[("strategy", "hand-over")]);
    update(&config);
    release(&env, 3, "", &[]);
    let s = update(&config);
    app.serves("3");
    // Release 2 refused to let go when 3 came: killed, and the fleet was told.
    let (status, list) = crate::fleet::call(&env, "GET", "admin/devices", &env.admin_token, None);
    assert_eq!(status, 200, "{list}");
    let reported = &list[0]["report"]["app"];
    assert_eq!(*reported, s["app"], "{list}");
    assert_eq!((reported["strategy"].as_str(), reported["killed"].as_bool()), (Some("download-then-kill"), Some(true)));
}

#[test]
fn a_supervisor_starts_and_stops_the_application_through_start_and_stop() {
    // A stand-in for `systemctl start/stop example@$FERRY_INSTANCE`: start runs the sample in
    // the background and returns once it says it is ready; stop asks it and waits it out.
    let env = Env::new();
    release(&env, 1, "", &[]);
    let pids = env.path().join("pids");
    std::fs::create_dir_all(&pids).unwrap();
    let (lock, events, port) = (env.path().join("serial-port"), env.path().join("events"), free_port());
    let start = format!(
        "python3 {app} --lock {lock} --events {events} --port {port} >/dev/null 2>&1 & echo $! > {pids}/$FERRY_INSTANCE; \
         i=0; while [ ! -e \\\"$FERRY_READY_FILE\\\" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; [ -e \\\"$FERRY_READY_FILE\\\" ]",
        app = sample_app().display(),
        lock = lock.display(),
        events = events.display(),
        pids = pids.display(),
    );
    let stop = format!(
        "p=$(cat {pids}/$FERRY_INSTANCE); kill $p; while kill -0 $p 2>/dev/null; do sleep 0.05; done",
        pids = pids.display()
    );
    let table = format!("start = \"{start}\"\nstop = \"{stop}\"\nstrategy = \"hand-over\"\n");
    let config = env.device(&format!(
        "[app]\n{table}[health]\nurls = [\"http://127.0.0.1:{port}/\"]\ndeadline = 8\ninterval = 1\n"
    ));
    let app = App { lock, events, port, state: env.path().join("device/state") };
    update(&config);
    app.serves("1");
    release(&env, 2, "", &[]);
    let s = update(&config);
    assert_eq!(s["version"], "2", "{s}");
    app.serves("2");
    assert_eq!(app.story(), ["acquired 1", "ready 1", "ready 2", "released 1", "acquired 2"]);
    assert_eq!((s["app"]["strategy"].as_str(), s["app"]["outcome"].as_str()), (Some("hand-over"), Some("switched")));
    // What is left running is stopped by the test's own stop command.
    let p = std::fs::read_to_string(pids.join(s["to"].as_str().unwrap())).unwrap();
    let _ = std::process::Command::new("kill").arg("-KILL").arg(p.trim()).status();
}

/// `ferryd` (with `[app] unit`) run with the test's stand-in systemctl first on its PATH.
fn ferryd_with_units(config: &Path, units: &Path, args: &[&str]) -> (bool, String, String) {
    let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/fake-systemd");
    let path = format!("{}:{}", fake.display(), std::env::var("PATH").unwrap_or_default());
    let out = std::process::Command::new(crate::harness::ferryd_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .env("PATH", path)
        .env("FAKE_SYSTEMD_DIR", units)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

/// The units the stand-in systemctl was asked about, in order, as `verb unit`.
fn unit_calls(units: &Path) -> Vec<String> {
    std::fs::read_to_string(units.join("calls"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_once(' ').unwrap().1.to_string())
        .filter(|l| !l.starts_with("is-active"))
        .collect()
}

/// Kills what the stand-in systemctl left running.
struct Units(PathBuf);

impl Drop for Units {
    fn drop(&mut self) {
        for f in std::fs::read_dir(self.0.join("run")).into_iter().flatten().flatten() {
            if let Ok(pid) = std::fs::read_to_string(f.path()) {
                let _ = std::process::Command::new("kill").args(["-KILL", pid.trim()]).status();
            }
        }
    }
}

/// `unit = "sample@.service"`: ferryd starts and stops `sample@<commit>.service` through
/// systemctl (here a stand-in: these machines run no systemd as PID 1), one instance per
/// deployment, so a hand-over runs both; with a plain unit it cannot, and a release asking
/// for one gets a download-then-kill that says why.
#[test]
fn a_systemd_unit_names_the_application() {
    for template in [true, false] {
        let env = Env::new();
        let units = env.path().join("units");
        std::fs::create_dir_all(&units).unwrap();
        let _cleanup = Units(units.clone());
        let (lock, events, port) = (env.path().join("serial-port"), env.path().join("events"), free_port());
        let deploy = env.path().join("device/state/deploy");
        let dir = if template { format!("{}/%i", deploy.display()) } else { env.current().display().to_string() };
        let unit = if template { "sample@.service" } else { "sample.service" };
        // The instance learns FERRY_HANDOVER from the file ferryd writes (systemd passes no
        // environment of the caller on).
        let env_file = env.path().join("device/state/app/%i.env");
        std::fs::write(
            units.join(unit),
            format!(
                "EnvironmentFile=-{}\nExecStart=cd {dir} && exec python3 {} --lock {} --events {} --port {port}\n",
                env_file.display(),
                sample_app().display(),
                lock.display(),
                events.display()
            ),
        )
        .unwrap();
        let strategy = if template { "hand-over" } else { "download-then-kill" };
        let config = env.device(&format!(
            "[app]\nunit = \"{unit}\"\nstrategy = \"{strategy}\"\nready_timeout = 20\n\
             [health]\nurls = [\"http://127.0.0.1:{port}/\"]\ndeadline = 8\ninterval = 1\n"
        ));
        let app = App { lock, events, port, state: env.path().join("device/state") };
        release(&env, 1, "", &[]);
        let (ok, out, err) = ferryd_with_units(&config, &units, &["update", "--json"]);
        assert!(ok, "{err}");
        let v1: Value = serde_json::from_str(&out).unwrap();
        app.serves("1");
        release(&env, 2, "", &[("strategy", "hand-over")]);
        let (ok, out, err) = ferryd_with_units(&config, &units, &["update", "--json"]);
        assert!(ok, "{err}");
        let s: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(s["version"], "2", "{s}");
        app.serves("2");
        let (from, to) = (v1["to"].as_str().unwrap(), s["to"].as_str().unwrap());
        let run = &s["app"];
        if template {
            // v2's instance is started (and ready) beside v1's, then v1's is stopped.
            assert_eq!(
                unit_calls(&units),
                [
                    format!("start sample@{from}.service"),
                    format!("start sample@{to}.service"),
                    format!("stop sample@{from}.service")
                ]
            );
            assert_eq!(app.story(), ["acquired 1", "ready 1", "ready 2", "released 1", "acquired 2"]);
            assert_eq!((run["strategy"].as_str(), run["outcome"].as_str()), (Some("hand-over"), Some("switched")));
            // Handed over: a restart of v2's instance by systemd is no hand-over any more.
            let written = std::fs::read_to_string(env.path().join(format!("device/state/app/{to}.env"))).unwrap();
            assert!(
                written.contains("FERRY_HANDOVER=\"0\"") && written.contains(&format!("FERRY_INSTANCE=\"{to}\"")),
                "{written}"
            );
        } else {
            assert_eq!(unit_calls(&units), ["start sample.service", "stop sample.service", "start sample.service"]);
            assert_eq!(app.story(), ["acquired 1", "ready 1", "released 1", "acquired 2", "ready 2"]);
            assert_eq!(run["strategy"], "download-then-kill", "{run}");
            assert!(run["strategy_source"].as_str().unwrap_or("").contains("runs one instance"), "{run}");
        }
        // Whether the instance runs is what the unit's check says: one that died is started
        // again, through the unit, by `ferryd run` as it starts.
        let units_run = units.join("run");
        let pidfile = std::fs::read_dir(&units_run)
            .unwrap()
            .flatten()
            .map(|f| f.path())
            .find(|p| p.extension().is_some_and(|e| e == "pid") && std::fs::read_to_string(p).is_ok())
            .unwrap();
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        std::process::Command::new("kill").args(["-KILL", pid.trim()]).status().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(app.health().is_none());
        let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/fake-systemd");
        let mut agent = std::process::Command::new(crate::harness::ferryd_bin())
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env("PATH", format!("{}:{}", fake.display(), std::env::var("PATH").unwrap_or_default()))
            .env("FAKE_SYSTEMD_DIR", &units)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let served = std::panic::catch_unwind(|| app.serves("2"));
        agent.kill().unwrap();
        agent.wait().unwrap();
        if let Err(e) = served {
            std::panic::resume_unwind(e);
        }
        let calls = unit_calls(&units);
        let last = if template { format!("start sample@{to}.service") } else { "start sample.service".into() };
        assert_eq!(calls.last(), Some(&last), "{calls:?}");
    }
}

/// `ferryd run` in the background until `until` returns; then it is killed.
fn while_running(config: &Path, until: impl FnOnce() + std::panic::UnwindSafe) {
    let mut agent = std::process::Command::new(crate::harness::ferryd_bin())
        .arg("--config")
        .arg(config)
        .arg("run")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let done = std::panic::catch_unwind(until);
    agent.kill().unwrap();
    agent.wait().unwrap();
    if let Err(e) = done {
        std::panic::resume_unwind(e);
    }
}

/// The agent dies in the middle of a hand-over, with both versions running and the link
/// already on v2: the next `ferryd run` asks v1 to let go, and v2 takes the device.
#[test]
fn an_agent_that_dies_mid_hand_over_leaves_one_version_once_it_runs_again() {
    let (env, config, app) = on_release_1("strategy = \"hand-over\"\nready_signal = true\n", "");
    release(&env, 2, "", &[]);
    let out = crate::harness::crashed_update(&config, "switched:1");
    assert!(!out.status.success());
    assert_eq!(app.story(), ["acquired 1", "ready 1", "ready 2"]);
    let recorded: Value =
        serde_json::from_str(&std::fs::read_to_string(env.path().join("device/state/app.json")).unwrap()).unwrap();
    assert_eq!(recorded["running"].as_array().unwrap().len(), 2, "{recorded}");
    let record = env.path().join("device/state/app.json");
    let running = || -> usize {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
        v["running"].as_array().unwrap().len()
    };
    while_running(&config, || {
        app.serves("2");
        // v1 is forgotten once it exited.
        let deadline = Instant::now() + Duration::from_secs(20);
        while running() != 1 {
            assert!(Instant::now() < deadline, "{}", std::fs::read_to_string(&record).unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert_eq!(app.story(), ["acquired 1", "ready 1", "ready 2", "released 1", "acquired 2"]);
}

/// What `app.json` recorded in another boot runs no more, whatever process now has its
/// ids: a live process group whose leader even started at the recorded time is not
/// signalled, and the application is started.
#[test]
fn instances_of_an_earlier_boot_are_forgotten_not_signalled() {
    let (env, config, app) = on_release_1("", "");
    let state = env.path().join("device/state");
    // v1 is stopped behind ferryd's back, as a reboot would have.
    let recorded: Value = serde_json::from_str(&std::fs::read_to_string(state.join("app.json")).unwrap()).unwrap();
    let pgid = recorded["running"][0]["pgid"].as_i64().unwrap();
    std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.health().is_some() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    // A stranger: its own process group, its leader's real start time, in the record.
    let mut stranger = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sleep").arg("60").process_group(0).spawn().unwrap()
    };
    let pid = stranger.id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let start: u64 = stat.rsplit_once(") ").unwrap().1.split_whitespace().nth(19).unwrap().parse().unwrap();
    let mut forged = recorded.clone();
    forged["running"][0]["pgid"] = pid.into();
    forged["running"][0]["leader_start"] = start.into();
    forged["boot"] = "00000000-0000-0000-0000-000000000000".into();
    std::fs::write(state.join("app.json"), forged.to_string()).unwrap();
    while_running(&config, || app.serves("1"));
    assert!(stranger.try_wait().unwrap().is_none(), "the stranger was signalled");
    stranger.kill().unwrap();
    stranger.wait().unwrap();
    // (Taken for this boot's, the record would have kept the application from starting.)
    assert_eq!(app.story(), ["acquired 1", "ready 1", "acquired 1", "ready 1"]);
}

/// The agent runs niced and shielded from the OOM killer (its unit); an application it
/// starts itself gets neither.
#[test]
fn the_application_does_not_inherit_the_agent_s_priority_or_oom_shield() {
    let env = Env::new();
    release(&env, 1, "", &[]);
    let (config, app) = device(&env, env.addr, "", "");
    let out = std::process::Command::new("sh")
        .arg("-c")
        // (The shipped unit's -500; this machine's sandbox refuses a negative value, and
        // what is checked is that the application gets the default whatever the agent has.)
        .arg("echo 300 > /proc/self/oom_score_adj && exec nice -n 10 \"$0\" --config \"$1\" update --json")
        .arg(crate::harness::ferryd_bin())
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    app.serves("1");
    let pid = std::fs::read_to_string(&app.events)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap()
        .to_string();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let nice: i32 = stat.rsplit_once(") ").unwrap().1.split_whitespace().nth(16).unwrap().parse().unwrap();
    let oom = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    assert_eq!((nice, oom.trim()), (0, "0"));
}
