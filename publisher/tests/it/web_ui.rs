//! The fleet's web UI in a real headless browser (Debian's chromium, driven over WebDriver by
//! chromedriver): sign in (the token posted once; the session an HttpOnly cookie), see the
//! fleet and a device's history, edit configuration, promote, start and pause a rollout, sign
//! out; a form on another origin posting to an admin route is refused; and the session's
//! rules seen by a plain HTTP client (the CSRF token, the cross-site headers, sign-out, a
//! revoked token, the cookie's attributes, HSTS). Screenshots land in
//! `$CARGO_TARGET_TMPDIR/web-ui/`.
//!
//! Each feature is a function of the server's base URL ([`operator_flows`],
//! [`cross_site_form_posts`], [`session_rules`]), so the same steps run against an HTTPS
//! server: there the cookie must be `Secure` and every answer carry HSTS.

use std::io::{Read, Write};
use std::path::Path;

use ferry_fixtures::webdriver::Browser;
use serde_json::{json, Value};

fn ferry(args: &[&str]) -> String {
    crate::cmd::ok(args).trim().to_string()
}

/// A fleet server with a promotable commit, an admin token `ops`, and two devices that
/// enrolled and checked in.
struct Fleet {
    /// The server process, killed when the fleet is dropped.
    _server: crate::cmd::Serve,
    _dir: tempfile::TempDir,
    admin: String,
    c1: String,
    /// How clients reach it: over HTTPS, trusting the fleet's CA.
    tls: Tls,
    url: String,
    /// The server's log (stderr).
    log: std::path::PathBuf,
    /// What the fleet store was filled with before the server started.
    filled: Filled,
}

/// What a client needs to trust an HTTPS server: the CA's certificate (reqwest) and the
/// server key's SPKI hash (chromium's `--ignore-certificate-errors-spki-list`).
#[derive(Default)]
struct Tls {
    ca_pem: Option<String>,
    spki: Option<String>,
}

impl Tls {
    fn http(&self) -> Http {
        Http::new(self.ca_pem.as_deref())
    }

    fn browser(&self) -> Browser {
        match &self.spki {
            Some(pin) => Browser::start_with(&[format!("--ignore-certificate-errors-spki-list={pin}").as_str()]),
            None => Browser::start(),
        }
    }
}

/// Standard base64 (chromium's form of an SPKI hash).
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Fleet {
    fn url(&self) -> &str {
        &self.url
    }
}

/// The fleet over plain HTTP, or over HTTPS with a certificate from a CA of its own
/// (`ferry ca`) for `localhost`.
fn fleet_over(https: bool) -> Fleet {
    fleet_with(https, 0)
}

/// [`fleet_over`], with `devices` more devices written into the fleet store before the server
/// starts ([`fill`]) and a channel `beta` whose document expires in a day.
fn fleet_with(https: bool, devices: usize) -> Fleet {
    let t = tempfile::tempdir().unwrap();
    let p = |n: &str| t.path().join(n).display().to_string();
    ferry(&["init", "--repo", &p("repo")]);
    for k in ["root", "ci", "chan"] {
        ferry(&["keygen", "--out", &p(&format!("{k}.key"))]);
    }
    std::fs::create_dir_all(t.path().join("tree")).unwrap();
    std::fs::write(t.path().join("tree/app"), "release 1").unwrap();
    let c1 = ferry(&[
        "commit",
        "--repo",
        &p("repo"),
        "--branch",
        "main",
        "--tree",
        &p("tree"),
        "--version",
        "1",
        "--sign-key",
        &p("ci.key"),
        "--hardware",
        "rev-a",
    ]);
    let c1 = c1.lines().last().unwrap().to_string();
    ferry(&[
        "keys",
        "set",
        "--repo",
        &p("repo"),
        "--sign-key",
        &p("root.key"),
        "--root",
        &p("root.key.pub"),
        "--commit-key",
        &p("ci.key.pub"),
        "--channel-key",
        &p("chan.key.pub"),
    ]);
    let admin = ferry(&["admin", "token", "create", "--name", "ops", "--fleet", &p("fleet"), "--create-fleet"]);
    let enrollment = ferry(&["admin", "token", "create", "--name", "factory", "--enrollment", "--fleet", &p("fleet")]);
    let filled = fill(&t.path().join("fleet"), &enrollment, devices);
    if devices > 0 {
        let beta = ["promote", "--repo", &p("repo"), &c1, "--to", "beta", "--create", "--expires", "1d"];
        ferry(&[&beta[..], &["--sign-key", &p("chan.key")]].concat());
    }
    let mut args = vec!["--fleet".to_string(), p("fleet"), "--channel-key".into(), p("chan.key")];
    let mut tls = Tls::default();
    if https {
        ferry(&["ca", "init", "--dir", &p("ca")]);
        ferry(&["ca", "issue", "--dir", &p("ca"), "--host", "localhost", "--out", &p("server")]);
        args.extend(["--tls-cert".into(), p("server.crt"), "--tls-key".into(), p("server.key")]);
        use rcgen::PublicKeyData;
        let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(p("server.key")).unwrap()).unwrap();
        tls.spki = Some(base64(ring::digest::digest(&ring::digest::SHA256, &key.subject_public_key_info()).as_ref()));
        tls.ca_pem = Some(std::fs::read_to_string(p("ca/ca.crt")).unwrap());
    }
    let log = t.path().join("serve.log");
    let server = crate::cmd::serve_logging(
        &p("repo"),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        std::fs::File::create(&log).unwrap(),
    );
    // The certificate names localhost.
    let url =
        if https { format!("https://localhost:{}", server.1.rsplit(':').next().unwrap()) } else { server.1.clone() };
    let http = tls.http();
    for serial in ["SN-UI-1", "SN-UI-2"] {
        let body = json!({ "serial": serial, "hardware": "rev-a", "enrollment_token": enrollment });
        let (status, _, v) = http.send(http.c.post(format!("{url}/v1/device/enroll")).json_body(&body));
        assert_eq!(status, 200, "{v}");
        let token = v["device_token"].as_str().unwrap().to_string();
        let report = json!({ "channel": "stable", "current_version": "0", "last_result": "up-to-date" });
        let (status, _, v) =
            http.send(http.c.post(format!("{url}/v1/device/checkin")).bearer_auth(&token).json_body(&report));
        assert_eq!(status, 200, "{v}");
    }
    Fleet { _dir: t, _server: server, admin, c1, tls, url, log, filled }
}

/// What [`fill`] wrote, counted by its own rules (not by the server's code).
#[derive(Default)]
struct Filled {
    state: std::collections::BTreeMap<&'static str, usize>,
    health: std::collections::BTreeMap<&'static str, usize>,
    channel: std::collections::BTreeMap<&'static str, usize>,
    version: std::collections::BTreeMap<&'static str, usize>,
    /// Serials of the devices whose last update rolled back, in order.
    rolled_back: Vec<String>,
}

/// Enrolls `n` devices `SN-00000`… straight into the fleet store at `dir` and has most check
/// in, spread over two channels, three versions and every health: 1 in 100 pending (never
/// checked in), 1 in 100 revoked, 1 in 50 never checked in (silent), 1 in 20 on trial, 1 in 25
/// rolled back, 1 in 30 failing, 1 in 100 pinned, 1 in 100 on a working copy.
fn fill(dir: &Path, enrollment: &str, n: usize) -> Filled {
    use ferry_publisher::fleet::{Caller, Fleet, Settings};
    let mut out = Filled::default();
    if n == 0 {
        return out;
    }
    let started = std::time::Instant::now();
    let open =
        |require_approval| Fleet::open(dir, Settings { require_approval, enrollments_per_minute: 10_000_000 }).unwrap();
    let count = |m: &mut std::collections::BTreeMap<&'static str, usize>, k| *m.entry(k).or_default() += 1;
    let f = open(false);
    for i in (0..n).filter(|i| i % 100 != 9) {
        let serial = format!("SN-{i:05}");
        f.enroll(&serial, if i % 3 == 0 { "rev-b" } else { "rev-a" }, enrollment, None).unwrap();
        if i % 50 == 7 {
            count(&mut out.health, "silent");
            count(&mut out.state, "accepted");
            continue;
        }
        let channel = if i % 4 == 0 { "beta" } else { "stable" };
        let version = ["1.2", "1.2", "1.1", "1.1", "1.0"][i % 5];
        let (result, error) = if i % 25 == 2 {
            out.rolled_back.push(serial.clone());
            ("rolled-back", Some("the release failed its trial: health check /healthz"))
        } else if i % 30 == 3 {
            ("error", Some("disk full"))
        } else {
            ("up-to-date", None)
        };
        let report = ferry_api::device::Report {
            channel: Some(channel.into()),
            current: Some(format!("{i:064x}")),
            current_version: Some(version.into()),
            trial: Some(if i % 20 == 1 { "on trial (1 boots)" } else { "good" }.into()),
            last_result: Some(result.into()),
            last_error: error.map(String::from),
            pinned: Some(i % 100 == 5),
            dev: Some(i % 100 == 6),
            ..Default::default()
        };
        f.check_in(&f.device(&serial).unwrap(), report).unwrap();
        for (yes, h) in [
            (i % 20 == 1, "on-trial"),
            (result == "rolled-back", "rolled-back"),
            (result == "error", "failing"),
            (i % 100 == 5, "pinned"),
            (i % 100 == 6, "dev"),
        ] {
            if yes {
                count(&mut out.health, h);
            }
        }
        count(&mut out.channel, channel);
        count(&mut out.version, version);
        if i % 100 == 8 {
            f.revoke(&Caller::Local, &serial).unwrap();
            count(&mut out.state, "revoked");
        } else {
            count(&mut out.state, "accepted");
        }
    }
    drop(f);
    // The pending ones, enrolled while the fleet asks for approval.
    let f = open(true);
    for i in (0..n).filter(|i| i % 100 == 9) {
        f.enroll(&format!("SN-{i:05}"), "rev-a", enrollment, None).unwrap();
        count(&mut out.state, "pending");
        count(&mut out.health, "silent");
    }
    eprintln!("filled the fleet store with {n} devices in {:.1} s", started.elapsed().as_secs_f64());
    out
}

fn fleet() -> Fleet {
    fleet_over(false)
}

/// A JSON request body.
trait JsonBody {
    fn json_body(self, v: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: &Value) -> Self {
        self.header("content-type", "application/json").body(serde_json::to_vec(v).unwrap())
    }
}

/// A plain HTTP client (no cookie jar: each test sends the cookie it means to).
struct Http {
    rt: tokio::runtime::Runtime,
    c: reqwest::Client,
}

impl Http {
    fn new(ca_pem: Option<&str>) -> Http {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // No kept-alive connections: the browser's steps can outlast the server's idle timeout.
        let mut c = reqwest::Client::builder().pool_max_idle_per_host(0);
        if let Some(pem) = ca_pem {
            c = c.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
        }
        let c = c.build().unwrap();
        Http { rt, c }
    }

    /// Sends `req`: its status, headers and JSON body (null when the body is not JSON).
    fn send(&self, req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
        self.rt.block_on(async {
            let r = req.send().await.unwrap();
            let (status, headers) = (r.status().as_u16(), r.headers().clone());
            (status, headers, serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null))
        })
    }

    /// A device's state as the admin API (with a bearer token) shows it.
    fn device_state(&self, url: &str, admin: &str, serial: &str) -> String {
        let (status, _, v) = self.send(self.c.get(format!("{url}/v1/admin/devices/{serial}")).bearer_auth(admin));
        assert_eq!(status, 200, "{v}");
        v["state"].as_str().unwrap().to_string()
    }
}

fn sign_in(b: &Browser, url: &str, admin: &str) {
    b.go(url);
    b.wait_for("#login-view", "Admin token");
    b.type_into("#token", admin);
    b.click("#login");
    b.wait_for("#who", "signed in as ops");
}

#[test]
fn an_operator_runs_the_fleet_from_the_web_ui() {
    let f = fleet();
    operator_flows(f.url(), &f.tls, &f.admin, &f.c1);
}

/// The fleet page over a few thousand devices (`FERRY_UI_DEVICES`, 3000 by default): the
/// counts, filters by a count and by search, pages, pinned and dev-linked devices marked, a
/// device's actions (with their confirmations), groups and merged configuration, a rollout
/// raised and finished, a promotion with hardware and expiry, and the expiry warnings. It
/// prints the page's load time (navigation to the counts and first page shown).
#[test]
fn the_fleet_page_scales_to_thousands_of_devices() {
    let n: usize = std::env::var("FERRY_UI_DEVICES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    assert!(n >= 1000, "FERRY_UI_DEVICES must be at least 1000 (the test looks at serials up to SN-00999)");
    let f = fleet_with(false, n);
    let (url, admin, http) = (f.url(), &f.admin, f.tls.http());
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-ui");
    std::fs::create_dir_all(&shots).unwrap();
    // The server said in its log, at its start, that beta's document expires within a day.
    let log = std::fs::read_to_string(&f.log).unwrap();
    assert!(log.contains("channel beta's document expires in 24 h"), "{log}");
    let b = f.tls.browser();
    sign_in(&b, url, admin);
    // Load time: the page opened again (signed in by its cookie) until the counts and the
    // first page are shown, measured by the page's own clock.
    b.go(url);
    let total = (n + 2).to_string(); // and the two devices every UI test enrolls
    b.wait_for("#total", &total);
    b.wait_for("#device-count", "devices 1–100");
    let shown = b.execute("return performance.getEntriesByName('fleet-shown')[0].startTime;");
    eprintln!(
        "fleet page: {} devices, counts and first page shown {:.0} ms after navigation",
        n + 2,
        shown.as_f64().unwrap()
    );
    b.screenshot(&shots, "fleet-at-scale.png");
    // The expiry warning is above every tab.
    b.wait_for("#warnings", "channel beta's document expires in 24 h");

    // The counts, against what was written (the two UI devices run version 0 on stable).
    let chip = |kind: &str, value: &str| {
        let v = b.execute(&format!(
            "const c = document.querySelector(\"#summary .chip[data-filter='{kind}'][data-value='{value}'] b\"); return c ? c.textContent : null;"
        ));
        v.as_str().map(|t| t.parse::<usize>().unwrap()).unwrap_or(0)
    };
    let filled = &f.filled;
    for (kind, counts) in [
        ("state", &filled.state),
        ("health", &filled.health),
        ("channel", &filled.channel),
        ("version", &filled.version),
    ] {
        for (name, want) in counts {
            let extra = match (kind, *name) {
                ("state", "accepted") | ("channel", "stable") => 2,
                _ => 0,
            };
            assert_eq!(chip(kind, name), want + extra, "{kind} {name}");
        }
    }
    assert_eq!(chip("version", "0"), 2);
    assert_eq!(chip("health", "dev"), filled.health["dev"]);
    let rows = || b.execute("return [...document.querySelectorAll('#devices tbody tr')].map((r) => r.dataset.serial);");
    let serials =
        |v: Value| -> Vec<String> { v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect() };
    // Pages of 100, forwards and back.
    assert_eq!(serials(rows()).len(), 100);
    b.click("#devices-next");
    b.wait_for("#device-count", "devices 101–200");
    assert_eq!(serials(rows())[0], "SN-00100");
    b.click("#devices-prev");
    b.wait_for("#device-count", "devices 1–100");
    assert_eq!(serials(rows())[0], "SN-00000");

    // A count filters the table: the rolled-back devices, in serial order.
    b.click("#summary .chip[data-filter='health'][data-value='rolled-back']");
    b.wait_for("#device-count", "of those that match");
    let want: Vec<String> = filled.rolled_back.iter().take(100).cloned().collect();
    assert_eq!(serials(rows()), want);
    assert!(b.text("#devices tbody").contains("the release failed its trial"));
    b.screenshot(&shots, "fleet-rolled-back.png");
    // Search by serial, with another filter cleared first.
    b.click("#f-clear");
    b.type_into("#f-q", "sn-0012");
    b.click("#f-apply");
    b.wait_for("#device-count", "devices 1–10 of those that match");
    assert_eq!(serials(rows()), (120..130).map(|i| format!("SN-{i:05}")).collect::<Vec<_>>());
    // Pinned and dev-linked devices say so in the table.
    b.click("#f-clear");
    b.execute("document.querySelector('#f-health').value = 'pinned';");
    b.click("#f-apply");
    b.wait_for("#device-count", "of those that match");
    let pinned = serials(rows());
    assert_eq!(pinned.first().map(String::as_str), Some("SN-00005"));
    assert_eq!(
        b.execute("return document.querySelectorAll('#devices tbody .badge.pinned').length;"),
        json!(pinned.len())
    );

    // A device: its merged configuration, its groups, and revoking it (asked first).
    b.click("#f-clear");
    b.wait_for("#device-count", "devices 1–100");
    b.click("#devices tr[data-serial='SN-00010']");
    b.wait_for("#detail-serial", "SN-00010");
    b.wait_for("#merged", "none");
    b.execute("document.querySelector('#groups').value = '';");
    b.type_into("#groups", "hall-b, line-2");
    b.click("#groups-set");
    b.wait_for("#msg", "SN-00010: groups hall-b, line-2");
    let state = |serial: &str| http.device_state(url, admin, serial);
    b.click("#device-actions button[data-device-action='revoke']");
    b.wait_for("#confirm-text", "Revoke SN-00010?");
    b.click("#confirm-no");
    assert_eq!(state("SN-00010"), "accepted");
    b.click("#device-actions button[data-device-action='revoke']");
    b.click("#confirm-yes");
    b.wait_for("#msg", "SN-00010: revoke done");
    assert_eq!(state("SN-00010"), "revoked");
    b.screenshot(&shots, "device.png");
    // A pending device is accepted without a question.
    b.click("#f-clear");
    b.wait_for("#device-count", "devices 1–100");
    b.click("#devices tr[data-serial='SN-00009']");
    b.wait_for("#detail-serial", "SN-00009");
    b.click("#device-actions button[data-device-action='accept']");
    b.wait_for("#msg", "SN-00009: accept done");
    assert_eq!(state("SN-00009"), "accepted");

    // Promote with hardware and expiry (asked first), then a rollout raised and finished.
    b.click("#tab-channels");
    b.type_into("#pr-channel", "stable");
    b.type_into("#pr-commit", "1");
    b.type_into("#pr-hardware", "rev-a");
    b.type_into("#pr-expires", "30d");
    b.click("#pr-create");
    b.click("#pr-submit");
    b.wait_for("#confirm-text", "Promote stable to commit 1 (hardware rev-a)?");
    b.click("#confirm-yes");
    b.wait_for("#msg", "stable is now at serial 1");
    let (_, _, channels) = http.send(http.c.get(format!("{url}/v1/admin/channels")).bearer_auth(admin));
    let stable = channels.as_array().unwrap().iter().find(|c| c["channel"] == "stable").unwrap().clone();
    assert!(stable["expires"].as_i64().unwrap() - stable["timestamp"].as_i64().unwrap() == 30 * 86400, "{stable}");
    assert_eq!(stable["warning"], Value::Null);
    b.click("#tab-rollouts");
    b.type_into("#ro-channel", "stable");
    b.type_into("#ro-percent", "10");
    b.click("#ro-start");
    b.wait_for("#rollout-list", "10%");
    b.type_into("#rollout-list input.percent[data-channel='stable']", "30");
    b.click("#rollout-list button[data-action='set-percent'][data-channel='stable']");
    b.wait_for("#rollout-list", "30%");
    b.click("#rollout-list button[data-action='abort'][data-channel='stable']");
    b.wait_for("#confirm-text", "Abort the rollout of stable?");
    b.click("#confirm-no");
    b.click("#rollout-list button[data-action='finish'][data-channel='stable']");
    b.wait_for("#confirm-text", "every device of it takes the new release");
    b.click("#confirm-yes");
    b.wait_for("#rollout-list", "100%");
    assert!(b.text("#rollout-list").contains("running"), "{}", b.text("#rollout-list"));
    b.screenshot(&shots, "rollouts-finished.png");
    b.click("#tab-audit");
    let audit = b.wait_for("#audit-list", "rollout");
    assert!(audit.contains("revoke") && audit.contains("groups") && audit.contains("promote"), "{audit}");
    eprintln!("screenshots in {}", shots.display());
}

/// The same flows, the cross-site posts and the session rules over HTTPS: the cookie is
/// `Secure`, every answer carries HSTS, and no other origin's form gets the cookie.
#[test]
fn the_web_ui_works_over_https() {
    let f = fleet_over(true);
    assert!(f.url().starts_with("https://localhost:"));
    operator_flows(f.url(), &f.tls, &f.admin, &f.c1);
    cross_site_form_posts(f.url(), &f.tls, &f.admin);
    session_rules(f.url(), &f.tls, &f.admin);
}

/// Signs in, runs the fleet, configuration, channel, rollout and audit views, signs out.
fn operator_flows(url: &str, tls: &Tls, admin: &str, c1: &str) {
    let http = tls.http();
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-ui");
    std::fs::create_dir_all(&shots).unwrap();
    let b = tls.browser();
    sign_in(&b, url, admin);
    let table = b.wait_for("#devices tbody", "SN-UI-2");
    assert!(table.contains("SN-UI-1") && table.contains("stable"), "{table}");
    // The token went in a POST body: it is in no address, no storage, and the page cannot
    // read the session cookie, which the browser holds HttpOnly and SameSite=Strict.
    assert!(!b.url().contains(admin), "{}", b.url());
    assert_eq!(b.text("#token"), "");
    let seen = b.execute("return [document.cookie, JSON.stringify(sessionStorage), JSON.stringify(localStorage)];");
    assert_eq!(seen, json!(["", "{}", "{}"]));
    let cookies = b.cookies();
    let session = cookies.iter().find(|c| c["name"] == "ferry_admin").unwrap_or_else(|| panic!("{cookies:?}"));
    assert_eq!(
        (&session["httpOnly"], &session["sameSite"], &session["path"]),
        (&json!(true), &json!("Strict"), &json!("/"))
    );
    assert_eq!(session["secure"], json!(url.starts_with("https://")));
    assert!(!session["value"].as_str().unwrap().contains(admin));

    b.click("#devices tr[data-serial='SN-UI-1']");
    b.wait_for("#detail-serial", "SN-UI-1");
    b.wait_for("#events", "enrolled (rev-a)");
    b.screenshot(&shots, "fleet.png");

    // Configuration: set a fleet-wide key.
    b.click("#tab-config");
    b.type_into("#cfg-key", "LOG");
    b.type_into("#cfg-value", "debug");
    b.click("#cfg-set");
    b.wait_for("#cfg-values", "LOG");
    let (_, _, level) = http.send(http.c.get(format!("{url}/v1/admin/config/fleet")).bearer_auth(admin));
    assert_eq!(level["values"]["LOG"], "debug");

    // Channels: start a rollout first, then promote commit 1 to stable with the server's key.
    b.click("#tab-rollouts");
    b.type_into("#ro-channel", "stable");
    b.type_into("#ro-percent", "20");
    b.click("#ro-start");
    b.wait_for("#msg", "no document to start from");
    b.click("#tab-channels");
    b.type_into("#pr-channel", "stable");
    b.type_into("#pr-commit", &c1[..12]);
    // A channel that does not exist yet is refused until "new channel" says it is meant.
    b.click("#pr-submit");
    b.wait_for("#confirm-text", "Promote stable to commit");
    b.click("#confirm-yes");
    b.wait_for("#msg", "channel stable does not exist");
    b.click("#pr-create");
    b.click("#pr-submit");
    b.wait_for("#confirm-text", "the channel is new");
    b.click("#confirm-yes");
    b.wait_for("#msg", "stable is now at serial 1");
    b.wait_for("#channel-list", "rev-a: 1");
    // The repository's routes need a token under --fleet: an admin token reads them.
    let served = |token: &str| http.send(http.c.get(format!("{url}/v1/channels/stable")).bearer_auth(token)).0;
    assert_eq!((served(admin), served("")), (200, 401));
    b.screenshot(&shots, "channels.png");

    // Rollouts: start, then pause from the table.
    b.click("#tab-rollouts");
    b.type_into("#ro-channel", "stable");
    b.type_into("#ro-percent", "20");
    b.click("#ro-start");
    b.wait_for("#rollout-list", "running");
    b.click("#rollout-list button[data-action='pause']");
    b.wait_for("#rollout-list", "paused");
    b.screenshot(&shots, "rollouts.png");

    // A reload keeps the session (and its CSRF token): a change still works.
    b.go(url);
    b.wait_for("#who", "signed in as ops");
    b.click("#tab-rollouts");
    b.wait_for("#rollout-list", "paused");
    b.click("#rollout-list button[data-action='resume']");
    b.wait_for("#rollout-list", "running");

    // Everything done in the UI is in the audit log, by the token's name.
    b.click("#tab-audit");
    let audit = b.wait_for("#audit-list", "rollout resume");
    assert!(
        audit.contains("admin:ops")
            && audit.contains("promote")
            && audit.contains("config")
            && audit.contains("sign in"),
        "{audit}"
    );
    b.screenshot(&shots, "audit.png");

    // Signing out ends the session: the page asks for the token again, reloaded or not.
    b.click("#sign-out");
    b.wait_for("#msg", "signed out");
    b.wait_for("#login-view", "Admin token");
    b.go(url);
    b.wait_for("#login-view", "Admin token");
    assert!(b.cookies().iter().all(|c| c["name"] != "ferry_admin"), "{:?}", b.cookies());
    eprintln!("screenshots in {}", shots.display());
}

#[test]
fn a_cross_site_form_post_is_refused() {
    let f = fleet();
    cross_site_form_posts(f.url(), &f.tls, &f.admin);
}

/// A page served from `http://HOST:PORT/` (another origin), which posts a form at once.
struct Attacker(u16);

impl Attacker {
    fn serve(page: String) -> Attacker {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
            page.len()
        );
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                // A thread each: the browser opens connections it may never send on.
                let answer = answer.clone();
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = conn.write_all(answer.as_bytes());
                });
            }
        });
        Attacker(port)
    }
}

/// With the operator signed in, pages on other origins post forms to the admin API (the
/// browser sends the session cookie where SameSite allows it, never the CSRF header): each
/// is refused, and nothing changes.
fn cross_site_form_posts(url: &str, tls: &Tls, admin: &str) {
    let http = tls.http();
    let b = tls.browser();
    sign_in(&b, url, admin);
    b.wait_for("#devices tbody", "SN-UI-2");
    let page = format!(
        r#"<!doctype html><title>prize</title><form id="f" method="post" enctype="text/plain" action="{url}/v1/admin/devices/SN-UI-2/revoke"><input name="x" value="y"></form><script>document.getElementById("f").submit()</script>"#
    );
    let attacker = Attacker::serve(page);
    // 127.0.0.1 on another port is the same site as the server (ports do not count), so over
    // plain HTTP the browser sends the cookie: the server's own checks must refuse it.
    // `localhost` is another site: the browser keeps the cookie to itself.
    for host in ["127.0.0.1", "localhost"] {
        b.go(&format!("http://{host}:{}/", attacker.0));
        let refused = b.wait_for("body", "\"error\"");
        let cookie_sent = url.starts_with("http://") && host == "127.0.0.1";
        let why = if cookie_sent { "cross-site request refused (Sec-Fetch-Site: same-site)" } else { "not signed in" };
        assert!(refused.contains(why), "{host}: {refused}");
        assert_eq!(http.device_state(url, admin, "SN-UI-2"), "accepted", "a form from {host} revoked the device");
    }
    // The operator's own page and session still work.
    b.go(url);
    b.wait_for("#who", "signed in as ops");
    b.wait_for("#devices tbody", "SN-UI-2");
    let (_, _, audit) = http.send(http.c.get(format!("{url}/v1/admin/audit")).bearer_auth(admin));
    assert!(!audit.to_string().contains("revoke"), "{audit}");
}

#[test]
fn the_session_rules_hold() {
    let f = fleet();
    session_rules(f.url(), &f.tls, &f.admin);
}

/// The session cookie of a sign-in's answer (`NAME=VALUE`), and its attributes.
fn session_cookie(headers: &reqwest::header::HeaderMap) -> (String, String) {
    let set = headers.get("set-cookie").expect("a session cookie").to_str().unwrap().to_string();
    let (pair, attributes) = set.split_once("; ").unwrap();
    (pair.to_string(), attributes.to_string())
}

/// What a plain HTTP client sees of sessions: the cookie's attributes, the CSRF token on
/// every change, the cross-site headers, sign-out and a revoked token ending a session,
/// bearer tokens unchanged, HSTS over TLS only.
fn session_rules(url: &str, tls_trust: &Tls, admin: &str) {
    let http = tls_trust.http();
    let tls = url.starts_with("https://");
    let sign_in =
        |token: &str| http.send(http.c.post(format!("{url}/v1/admin/session")).json_body(&json!({ "token": token })));
    let config = |cookie: &str, extra: &[(&str, &str)]| {
        let mut req = http
            .c
            .post(format!("{url}/v1/admin/config/fleet"))
            .header("cookie", cookie)
            .json_body(&json!({ "set": { "FROM_SESSION": "1" } }));
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        http.send(req)
    };
    let error = |v: &Value| v["error"].as_str().unwrap_or_default().to_string();

    // Sign-in: a JSON body only, a valid admin token only.
    let (status, _, v) = sign_in("fa_0000");
    assert_eq!(status, 401, "{v}");
    let form = http
        .c
        .post(format!("{url}/v1/admin/session"))
        .header("content-type", "text/plain")
        .body(serde_json::to_vec(&json!({ "token": admin })).unwrap());
    let (status, headers, v) = http.send(form);
    assert_eq!(status, 415, "{v}");
    assert!(headers.get("set-cookie").is_none());
    let (status, _, v) = http.send(
        http.c
            .post(format!("{url}/v1/admin/session"))
            .header("origin", "http://attacker.example")
            .json_body(&json!({ "token": admin })),
    );
    assert_eq!(status, 403, "{v}");
    let (status, headers, v) = sign_in(admin);
    assert_eq!(status, 200, "{v}");
    let csrf = v["csrf_token"].as_str().unwrap().to_string();
    assert_eq!((v["name"].as_str(), csrf.len()), (Some("ops"), 64), "{v}");
    assert_eq!(headers.get("strict-transport-security").is_some(), tls, "{headers:?}");
    let (cookie, attributes) = session_cookie(&headers);
    let secure = if tls { "; Secure" } else { "" };
    assert_eq!(attributes, format!("Max-Age=28800; Path=/; HttpOnly; SameSite=Strict{secure}"));
    assert!(cookie.starts_with("ferry_admin=") && !cookie.contains(admin), "{cookie}");

    // Reads need only the cookie; the session's view gives the CSRF token again.
    let (status, headers, v) = http.send(http.c.get(format!("{url}/v1/admin/devices")).header("cookie", &cookie));
    assert_eq!((status, v.as_array().map(Vec::len)), (200, Some(2)), "{v}");
    assert_eq!(headers.get("strict-transport-security").is_some(), tls, "{headers:?}");
    let (status, _, v) = http.send(http.c.get(format!("{url}/v1/admin/session")).header("cookie", &cookie));
    assert_eq!((status, v["csrf_token"].as_str()), (200, Some(csrf.as_str())), "{v}");

    // A change with the cookie needs the CSRF token, from the same origin.
    let (status, _, v) = config(&cookie, &[]);
    assert_eq!(status, 403, "{v}");
    assert!(error(&v).contains("missing the X-CSRF-Token header"), "{v}");
    let (status, _, v) = config(&cookie, &[("x-csrf-token", &"0".repeat(64))]);
    assert!(status == 403 && error(&v).contains("does not match"), "{status} {v}");
    let (status, _, v) = config(&cookie, &[("x-csrf-token", &csrf), ("sec-fetch-site", "cross-site")]);
    assert!(status == 403 && error(&v).contains("Sec-Fetch-Site: cross-site"), "{status} {v}");
    let (status, _, v) = config(&cookie, &[("x-csrf-token", &csrf), ("origin", "http://attacker.example")]);
    assert!(status == 403 && error(&v).contains("another origin"), "{status} {v}");
    let (_, _, level) = http.send(http.c.get(format!("{url}/v1/admin/config/fleet")).bearer_auth(admin));
    assert!(level["values"].get("FROM_SESSION").is_none(), "a refused change was made: {level}");
    let origin = url.trim_end_matches('/').to_string();
    let (status, _, v) =
        config(&cookie, &[("x-csrf-token", &csrf), ("origin", &origin), ("sec-fetch-site", "same-origin")]);
    assert_eq!(status, 200, "{v}");
    let (_, _, audit) = http.send(http.c.get(format!("{url}/v1/admin/audit")).bearer_auth(admin));
    let last = audit.as_array().and_then(|a| a.last()).cloned().unwrap_or_default();
    assert_eq!((last["who"].as_str(), last["action"].as_str()), (Some("admin:ops"), Some("config")), "{audit}");

    // Bearer tokens work as before, and a token in a query string opens nothing.
    let (status, _, _) = http.send(http.c.get(format!("{url}/v1/admin/tokens")).bearer_auth(admin));
    assert_eq!(status, 200);
    let (status, _, _) = http.send(http.c.get(format!("{url}/v1/admin/tokens?token={admin}")));
    assert_eq!(status, 401);

    // Sign-out (itself a change: it needs the token) ends the session and clears the cookie.
    let (status, _, _) = http.send(http.c.delete(format!("{url}/v1/admin/session")).header("cookie", &cookie));
    assert_eq!(status, 403);
    let (status, headers, v) = http
        .send(http.c.delete(format!("{url}/v1/admin/session")).header("cookie", &cookie).header("x-csrf-token", &csrf));
    assert_eq!((status, &v), (200, &json!({ "signed_out": true })));
    assert_eq!(
        session_cookie(&headers),
        ("ferry_admin=".into(), format!("Max-Age=0; Path=/; HttpOnly; SameSite=Strict{secure}"))
    );
    let (status, _, v) = http.send(http.c.get(format!("{url}/v1/admin/devices")).header("cookie", &cookie));
    assert_eq!(status, 401, "{v}");
    assert!(error(&v).contains("not signed in"), "{v}");
    let (status, _, _) = config(&cookie, &[("x-csrf-token", &csrf)]);
    assert_eq!(status, 401);

    // A session whose admin token is revoked stops working at its next request.
    let (status, _, v) = http.send(
        http.c
            .post(format!("{url}/v1/admin/tokens"))
            .bearer_auth(admin)
            .json_body(&json!({"kind": "admin", "name": "temp"})),
    );
    assert_eq!(status, 201, "{v}");
    let temp = v["token"].as_str().unwrap().to_string();
    let (_, headers, v) = sign_in(&temp);
    let (temp_cookie, _) = session_cookie(&headers);
    let temp_csrf = v["csrf_token"].as_str().unwrap().to_string();
    let (status, _, _) = http.send(http.c.get(format!("{url}/v1/admin/devices")).header("cookie", &temp_cookie));
    assert_eq!(status, 200);
    let (status, _, _) = http.send(http.c.post(format!("{url}/v1/admin/tokens/temp/revoke")).bearer_auth(admin));
    assert_eq!(status, 200);
    let (status, _, v) = http.send(http.c.get(format!("{url}/v1/admin/devices")).header("cookie", &temp_cookie));
    assert_eq!(status, 401, "{v}");
    assert!(error(&v).contains("revoked"), "{v}");
    let (status, _, _) = config(&temp_cookie, &[("x-csrf-token", &temp_csrf)]);
    assert_eq!(status, 401);
    // Nor does a cookie the server never gave.
    let (status, _, _) = http.send(http.c.get(format!("{url}/v1/admin/devices")).header("cookie", "ferry_admin=00"));
    assert_eq!(status, 401);
}

/// `ferry serve`'s router in this process, each request marked as arriving over TLS or not
/// (what `connections` tells routes): until the server speaks TLS itself, this is where the
/// answers' TLS-only headers are checked.
#[test]
fn over_tls_the_cookie_is_secure_and_every_answer_carries_hsts() {
    use ferry_publisher::connections::Connection;
    use ferry_publisher::fleet::{Caller, Fleet, Settings, TokenKind};

    let t = tempfile::tempdir().unwrap();
    crate::init(t.path(), crate::SMALL);
    let fleet =
        Fleet::open(&t.path().join("fleet"), Settings { require_approval: false, enrollments_per_minute: 10 }).unwrap();
    let admin = fleet.create_token(&Caller::Local, TokenKind::Admin, "ops").unwrap();
    let repo = ferry_store::Repository::open_follower(&t.path().join("repo"), &t.path().join("scratch")).unwrap();
    let patcher = ferry_publisher::patches::Patcher::open(&t.path().join("patches"), 1 << 20, 3, 1).unwrap();
    let app = ferry_publisher::serve::router(repo, patcher, Some(ferry_publisher::serve::FleetParts::new(fleet)), 2);
    let app = hyper_util::service::TowerToHyperService::new(app);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let peer = "127.0.0.1:9".parse().unwrap();
    let send = |tls: bool, method: &str, path: &str, body: &str| {
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "fleet.example")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
        req.extensions_mut().insert(Connection { peer, tls, client_certificate: None });
        let resp = rt.block_on(hyper::service::Service::call(&app, req)).unwrap();
        (resp.status().as_u16(), resp.headers().clone())
    };
    let sign_in = format!(r#"{{"token":"{admin}"}}"#);
    for tls in [true, false] {
        for (method, path, body, status) in [
            ("GET", "/", "", 200),
            ("GET", "/v1/admin/devices", "", 401),
            ("GET", "/v1/branches/main", "", 401),
            ("GET", "/v1/nowhere", "", 404),
            ("POST", "/v1/admin/session", "{}", 400),
            ("POST", "/v1/admin/session", sign_in.as_str(), 200),
        ] {
            let (got, headers) = send(tls, method, path, body);
            assert_eq!(got, status, "{method} {path}");
            let hsts = headers.get("strict-transport-security").map(|v| v.to_str().unwrap().to_string());
            assert_eq!(hsts, tls.then(|| "max-age=31536000".to_string()), "{method} {path} tls={tls}");
            if let Some(cookie) = headers.get("set-cookie") {
                let cookie = cookie.to_str().unwrap();
                assert_eq!(cookie.ends_with("; Secure"), tls, "{cookie}");
                assert!(cookie.contains("; HttpOnly; SameSite=Strict"), "{cookie}");
            }
        }
    }
}
