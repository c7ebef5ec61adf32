//! The fleet's web UI in a real headless browser (Debian's chromium, driven over WebDriver by
//! chromedriver): sign in, see the fleet and a device's history, edit configuration, promote,
//! start and pause a rollout. Screenshots land in `$CARGO_TARGET_TMPDIR/web-ui/`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn ferry(args: &[&str]) -> String {
    crate::cmd::ok(args).trim().to_string()
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A minimal WebDriver client over the real protocol (JSON over HTTP on loopback).
struct Browser {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
    session: String,
    _driver: Proc,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Proc(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver (Debian package chromium-driver) must be installed"),
        );
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while rt.block_on(http.get(format!("{base}/status")).send()).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"],
        } } } });
        let mut b = Browser { rt, http, base, session: String::new(), _driver: driver };
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"].as_str().expect("a session").to_string();
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "POST" => self
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body.unwrap_or(json!({}))).unwrap()),
            "DELETE" => self.http.delete(url),
            _ => self.http.get(url),
        };
        self.rt.block_on(async {
            let r = req.send().await.unwrap();
            let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            v["value"].clone()
        })
    }

    fn s(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    fn go(&self, url: &str) {
        self.call("POST", &self.s("/url"), Some(json!({ "url": url })));
    }

    fn find(&self, css: &str) -> String {
        let v = self.call("POST", &self.s("/element"), Some(json!({ "using": "css selector", "value": css })));
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {v}")).to_string()
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &self.s(&format!("/element/{e}/click")), None);
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call("POST", &self.s(&format!("/element/{e}/clear")), None);
        self.call("POST", &self.s(&format!("/element/{e}/value")), Some(json!({ "text": text })));
    }

    fn text(&self, css: &str) -> String {
        let v = self.call("POST", &self.s("/element"), Some(json!({ "using": "css selector", "value": css })));
        match v[ELEMENT].as_str() {
            Some(e) => {
                self.call("GET", &self.s(&format!("/element/{e}/text")), None).as_str().unwrap_or("").to_string()
            }
            None => String::new(),
        }
    }

    /// Waits until the text of `css` contains `want`.
    fn wait_for(&self, css: &str, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let t = self.text(css);
            if t.contains(want) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never showed {want:?}; it shows {t:?} (message: {:?})",
                self.text("#msg")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, dir: &Path, name: &str) {
        let v = self.call("GET", &self.s("/screenshot"), None);
        let png = base64_decode(v.as_str().expect("a screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(dir.join(name), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            self.call("DELETE", &self.s(""), None);
        }
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, c)| acc | (u32::from(val(*c)) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[test]
fn an_operator_runs_the_fleet_from_the_web_ui() {
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
    let admin = ferry(&["admin", "token", "create", "--name", "ops", "--fleet", &p("fleet")]);
    let enrollment = ferry(&["admin", "token", "create", "--name", "factory", "--enrollment", "--fleet", &p("fleet")]);
    let server = crate::cmd::serve(&p("repo"), &["--fleet", &p("fleet"), "--channel-key", &p("chan.key")]);
    let url = server.1.clone();

    // Two devices enroll and check in.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let http = reqwest::Client::new();
    let post = |path: &str, token: &str, body: Value| -> Value {
        rt.block_on(async {
            let r = http
                .post(format!("{url}/v1/{path}"))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).unwrap())
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
            serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
        })
    };
    for serial in ["SN-UI-1", "SN-UI-2"] {
        let v =
            post("device/enroll", "", json!({ "serial": serial, "hardware": "rev-a", "enrollment_token": enrollment }));
        let token = v["device_token"].as_str().unwrap().to_string();
        post(
            "device/checkin",
            &token,
            json!({ "channel": "stable", "current_version": "0", "last_result": "up-to-date" }),
        );
    }

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-ui");
    std::fs::create_dir_all(&shots).unwrap();
    let b = Browser::start();
    b.go(&url);
    b.type_into("#token", &admin);
    b.click("#login");
    let table = b.wait_for("#devices tbody", "SN-UI-2");
    assert!(table.contains("SN-UI-1") && table.contains("stable"), "{table}");
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
    let level: Value = rt.block_on(async {
        let r = http.get(format!("{url}/v1/admin/config/fleet")).bearer_auth(&admin).send().await.unwrap();
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
    });
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
    b.click("#pr-submit");
    b.wait_for("#msg", "stable is now at serial 1");
    b.wait_for("#channel-list", "rev-a: 1");
    let served = rt.block_on(async { http.get(format!("{url}/v1/channels/stable")).send().await.unwrap().status() });
    assert_eq!(served, 200);
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

    // Everything done in the UI is in the audit log, by the token's name.
    b.click("#tab-audit");
    let audit = b.wait_for("#audit-list", "rollout pause");
    assert!(audit.contains("admin:ops") && audit.contains("promote") && audit.contains("config"), "{audit}");
    b.screenshot(&shots, "audit.png");
    eprintln!("screenshots in {}", shots.display());
}
