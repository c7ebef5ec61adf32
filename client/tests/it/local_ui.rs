//! `ferryd local-ui`: the device's own page, in a real headless browser (chromium through
//! chromedriver): sign in, see the running release, upload a bundle with the file picker,
//! watch the device switch. Its HTTP answers to bad requests are checked with reqwest.
//! Screenshots land in `$CARGO_TARGET_TMPDIR/local-ui/`.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ferry_fixtures::webdriver::{Browser, Proc};
use ferry_publisher::bundle::{write_bundle, BundleTo};
use ferry_publisher::import::NoProgress;

use crate::channels::{promote, set_up_keys};
use crate::harness::{ferryd, Env};

const PASSWORD: &str = "correct horse battery";

/// A device following channel stable whose server is unreachable, with a local page.
fn device(env: &Env) -> PathBuf {
    let dev = env.path().join("dev");
    std::fs::create_dir_all(&dev).unwrap();
    let config = dev.join("ferryd.toml");
    let text = format!(
        "server = \"http://127.0.0.1:9\"\nchannel = \"stable\"\nroot_keys = [\"{}\"]\nstate_dir = \"{}\"\ncurrent_link = \"{}\"\nhardware = \"rev-a\"\n[local_ui]\npassword = \"{PASSWORD}\"\n",
        env.path().join("root.key.pub").display(),
        dev.join("state").display(),
        dev.join("current").display(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

fn bundle(env: &Env, from: &[ferry_store::Id], name: &str) -> PathBuf {
    let path = env.path().join(name);
    let to = BundleTo::Channel { name: "stable".into(), hardware: Vec::new() };
    write_bundle(&env.repo, &to, from, std::fs::File::create(&path).unwrap(), &NoProgress).unwrap();
    path
}

/// Starts `ferryd local-ui` on a free loopback port; returns the process and its URL.
fn start(config: &Path) -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferryd"))
        .arg("--config")
        .arg(config)
        .args(["local-ui", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("no address: {line:?}")).to_string();
    (Proc(child), url)
}

fn running(config: &Path) -> String {
    std::fs::read_link(config.parent().unwrap().join("current"))
        .map(|t| t.file_name().unwrap().to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[test]
fn a_technician_installs_a_bundle_from_the_local_page() {
    let env = Env::new();
    set_up_keys(&env);
    let v1 = env.commit(1, "1.0.0");
    promote(&env, Some(v1), None, "stable", false).unwrap();
    let b1 = bundle(&env, &[], "v1.bundle");
    let dev = device(&env);
    let (ok, _, err) = ferryd(&dev, &["apply", b1.to_str().unwrap()]);
    assert!(ok, "{err}");
    let v2 = env.commit(2, "1.1.0");
    promote(&env, Some(v2), None, "stable", false).unwrap();
    let b2 = bundle(&env, &[v1], "v2.bundle");
    let cut = env.path().join("cut.bundle");
    let bytes = std::fs::read(&b2).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();

    let (_ui, url) = start(&dev);

    // The HTTP side, as a script (or an attacker on the access point) sees it.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, headers: &[(&str, &str)], body: Vec<u8>| {
        let mut req = http.request(method, format!("{url}{path}")).body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        rt.block_on(async {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or_default();
            (status, v)
        })
    };
    use reqwest::Method;
    let bearer = format!("Bearer {PASSWORD}");
    assert_eq!(call(Method::GET, "/status.json", &[], vec![]).0, 401);
    // Refusals come before the body is read: small bodies, so the answer is not a reset.
    let small = bytes[..1000].to_vec();
    assert_eq!(call(Method::POST, "/apply", &[("x-ferry-upload", "1")], small.clone()).0, 401);
    assert_eq!(call(Method::GET, "/status.json", &[("authorization", "Bearer wrong")], vec![]).0, 401);
    let json = ("content-type", "application/json");
    let (s, v) = call(Method::POST, "/login", &[json], br#"{"password":"wrong"}"#.to_vec());
    assert_eq!((s, v["error"].as_str()), (401, Some("wrong password")));
    assert_eq!(call(Method::POST, "/login", &[json], b"password=x".to_vec()).0, 400);
    // A cross-site form cannot sign in: it cannot send JSON without asking first.
    let form = ("content-type", "text/plain");
    assert_eq!(call(Method::POST, "/login", &[form], br#"{"password":"correct horse battery"}"#.to_vec()).0, 415);
    assert_eq!(call(Method::DELETE, "/", &[], vec![]).0, 405);
    assert_eq!(call(Method::GET, "/etc/passwd", &[], vec![]).0, 404);
    let (s, v) = call(Method::POST, "/apply", &[("authorization", &bearer)], small);
    assert_eq!(s, 400, "an upload without X-Ferry-Upload (a cross-site form) is refused: {v}");
    let (s, v) = call(
        Method::POST,
        "/apply",
        &[("authorization", &bearer), ("x-ferry-upload", "1")],
        std::fs::read(&cut).unwrap(),
    );
    assert_eq!(s, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("truncated"), "{v}");
    assert_eq!(running(&dev), v1.to_hex(), "a cut upload changed nothing");
    let (s, v) = call(Method::GET, "/status.json", &[("authorization", &bearer)], vec![]);
    assert_eq!((s, v["status"]["current"]["version"].as_str()), (200, Some("1.0.0")), "{v}");

    // The technician, in a browser.
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("local-ui");
    std::fs::create_dir_all(&shots).unwrap();
    let b = Browser::start();
    b.go(&url);
    b.wait_for("#signin h2", "Sign in");
    b.type_into("#password", "not it");
    b.click("#login");
    b.wait_for("#login-msg", "wrong password");
    b.type_into("#password", PASSWORD);
    b.click("#login");
    b.wait_for("#status", "1.0.0");
    b.screenshot(&shots, "1-signed-in.png");
    // A refused file first: the page says why, and the device stays.
    b.type_into_file("#file", &cut);
    b.click("#upload");
    let msg = b.wait_for("#result", "Not installed");
    assert!(msg.contains("truncated"), "{msg}");
    b.screenshot(&shots, "2-refused.png");
    b.type_into_file("#file", &b2);
    b.click("#upload");
    let msg = b.wait_for("#result", "Installed 1.1.0");
    assert!(msg.contains(&v2.to_hex()[..12]), "{msg}");
    b.wait_for("#status", "1.1.0");
    b.screenshot(&shots, "3-installed.png");
    assert_eq!(running(&dev), v2.to_hex());
    let (ok, out, err) = ferryd(&dev, &["fsck"]);
    assert!(ok, "{out}{err}");
    b.click("#logout");
    b.wait_for("#signin h2", "Sign in");
}
