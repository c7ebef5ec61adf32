//! `ferryd local-ui`: the device's own page, in a real headless browser (chromium through
//! chromedriver): sign in, see the running release, upload a bundle with the file picker,
//! watch the device switch. Its HTTP answers to bad requests are checked with reqwest, and
//! the attacks of someone else on the access point (guessing the password, hanging up to
//! skip the wait, holding connections, DNS rebinding) with raw sockets on loopback.
//! Screenshots land in `$CARGO_TARGET_TMPDIR/local-ui/`.

use std::io::{BufRead, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_fixtures::webdriver::{Browser, Proc};
use ferry_publisher::bundle::{write_bundle, BundleTo};
use ferry_publisher::import::NoProgress;

use crate::channels::{promote, set_up_keys};
use crate::harness::{ferryd, Env};

pub(crate) const PASSWORD: &str = "correct horse battery";

/// A device following channel stable whose server is unreachable, with a local page.
fn device(env: &Env) -> PathBuf {
    device_with(env, "")
}

/// The same, with more `[local_ui]` lines.
pub(crate) fn device_with(env: &Env, local_ui: &str) -> PathBuf {
    let dev = env.path().join("dev");
    std::fs::create_dir_all(&dev).unwrap();
    let config = dev.join("ferryd.toml");
    let text = format!(
        "insecure_http = true\nserver = \"http://127.0.0.1:9\"\nchannel = \"stable\"\nroot_keys = [\"{}\"]\nstate_dir = \"{}\"\ncurrent_link = \"{}\"\nhardware = \"rev-a\"\n[local_ui]\npassword = \"{PASSWORD}\"\n{local_ui}\n",
        env.path().join("root.key.pub").display(),
        dev.join("state").display(),
        dev.join("current").display(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

pub(crate) fn bundle(env: &Env, from: &[ferry_store::Id], name: &str) -> PathBuf {
    let path = env.path().join(name);
    let to = BundleTo::Channel { name: "stable".into(), hardware: Vec::new() };
    write_bundle(&env.repo, &to, from, std::fs::File::create(&path).unwrap(), &NoProgress).unwrap();
    path
}

/// Starts `ferryd local-ui` on a free loopback port; returns the process and its URL. Its log
/// goes to `log(config)`.
pub(crate) fn start(config: &Path) -> (Proc, String) {
    let mut child = Command::new(crate::harness::ferryd_bin())
        .arg("--config")
        .arg(config)
        .args(["local-ui", "--listen", "127.0.0.1:0"])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log_path(config)).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("no address: {line:?}")).to_string();
    (Proc(child), url)
}

fn log_path(config: &Path) -> PathBuf {
    config.with_file_name("local-ui.log")
}

/// The page's log lines that contain `what`.
pub(crate) fn logged(config: &Path, what: &str) -> Vec<String> {
    let log = std::fs::read_to_string(log_path(config)).unwrap();
    log.lines().filter(|l| l.contains(what)).map(str::to_string).collect()
}

pub(crate) fn running(config: &Path) -> String {
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

/// An answer read off a raw socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: serde_json::Value,
}

/// Sends `request` on `s` and reads until the page closes the connection (at most 25 s).
fn exchange(mut s: TcpStream, request: &str) -> Answer {
    s.set_read_timeout(Some(Duration::from_secs(25))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    if let Err(e) = s.read_to_end(&mut out) {
        // A reset after the answer still leaves the answer; a missing one fails below.
        assert!(e.kind() != std::io::ErrorKind::WouldBlock, "no answer within 25 s to {request:?}");
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Answer { status, head: head.to_string(), body: serde_json::from_str(body).unwrap_or_default() }
}

/// `host:port` of the page's URL.
fn addr_of(url: &str) -> String {
    url.strip_prefix("http://").unwrap().to_string()
}

fn login_request(host: &str, password: &str) -> String {
    let body = serde_json::json!({ "password": password }).to_string();
    format!(
        "POST /login HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn get_request(host: &str, path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
}

/// A TCP connection to `to` from the loopback address `from` (Linux routes all of
/// 127.0.0.0/8 to `lo`): another client on the access point.
fn connect_from(from: IpAddr, to: &str) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let to: SocketAddr = to.parse().unwrap();
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        let s = tokio::time::timeout(Duration::from_secs(5), socket.connect(to)).await.unwrap().unwrap();
        let s = s.into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        s
    })
}

/// A page with nothing installed (what these attacks need is the sign-in).
fn bare_page(env: &Env, local_ui: &str) -> (PathBuf, Proc, String) {
    set_up_keys(env);
    let dev = device_with(env, local_ui);
    let (ui, url) = start(&dev);
    (dev, ui, addr_of(&url))
}

#[test]
fn guesses_that_hang_up_at_once_still_wait_their_second() {
    let env = Env::new();
    let (dev, _ui, addr) = bare_page(&env, "");
    // The attack: send a guess, hang up 30 ms later, never waiting for the answer.
    const GUESSES: usize = 6;
    for i in 0..GUESSES {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(login_request(&addr, &format!("guess number {i}")).as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        drop(s);
    }
    // Each guess took a second of the schedule: the right password waits for the slot after
    // them (about 6 s after the first guess) and no answer comes sooner.
    let t = Instant::now();
    let a = exchange(TcpStream::connect(&addr).unwrap(), &login_request(&addr, PASSWORD));
    let waited = t.elapsed();
    assert_eq!(a.status, 200, "{a:?}");
    assert!(waited >= Duration::from_secs(4), "compared after {waited:?}, before the hung-up guesses' slots");
    // Every hung-up guess was still compared, and logged with the client's address.
    let wrong = logged(&dev, "a wrong password (sign-in) from 127.0.0.1");
    assert_eq!(wrong.len(), GUESSES, "{wrong:#?}");
    assert_eq!(logged(&dev, "signed in from 127.0.0.1").len(), 1);
}

#[test]
fn ten_wrong_passwords_lock_out_even_the_right_one() {
    let env = Env::new();
    let (dev, _ui, addr) = bare_page(&env, "");
    for i in 1..=10 {
        let a = exchange(TcpStream::connect(&addr).unwrap(), &login_request(&addr, "not the password"));
        assert_eq!(a.status, 401, "{a:?}");
        let expected =
            if i < 10 { "wrong password" } else { "wrong password; too many wrong passwords; locked for 60 s" };
        assert_eq!(a.body["error"].as_str(), Some(expected), "guess {i}");
    }
    let a = exchange(TcpStream::connect(&addr).unwrap(), &login_request(&addr, PASSWORD));
    assert_eq!(a.status, 429, "{a:?}");
    let msg = a.body["error"].as_str().unwrap();
    assert!(msg.starts_with("too many wrong passwords; locked for "), "{msg}");
    assert!(a.head.to_ascii_lowercase().contains("\r\nretry-after: "), "{}", a.head);
    // A script's bearer password is refused the same way.
    let bearer = format!("Authorization: Bearer {PASSWORD}\r\n");
    let a = exchange(TcpStream::connect(&addr).unwrap(), &get_request(&addr, "/status.json", &bearer));
    assert_eq!(a.status, 429, "{a:?}");
    assert_eq!(logged(&dev, "a wrong password (sign-in) from 127.0.0.1").len(), 10);
    assert_eq!(logged(&dev, "10 in a row: locked for 60 s").len(), 1);
}

#[test]
fn sixty_four_idle_connections_from_one_client_do_not_lock_out_another() {
    let env = Env::new();
    let (_dev, _ui, addr) = bare_page(&env, "");
    // The attack: open every connection the page serves and send nothing.
    let idle: Vec<TcpStream> = (0..64).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    // The technician, on another address, still signs in.
    let technician = "127.0.0.2".parse().unwrap();
    let a = exchange(connect_from(technician, &addr), &login_request(&addr, PASSWORD));
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.head.contains("ferry_session="), "{}", a.head);
    // The attacker kept 8; the page closed the other 56 at once.
    let open = idle
        .iter()
        .filter(|s| {
            let mut s: &TcpStream = s;
            s.set_nonblocking(true).unwrap();
            matches!(s.read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    assert_eq!(open, 8);
}

#[test]
fn idle_connections_are_closed_after_ten_seconds() {
    let env = Env::new();
    let (_dev, _ui, addr) = bare_page(&env, "");
    // Read until the page hangs up: when, and what came before.
    let until_closed = |mut s: TcpStream, request: String| {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let t = Instant::now();
        let mut out = Vec::new();
        let closed = s.read_to_end(&mut out);
        (closed.is_ok(), t.elapsed(), String::from_utf8_lossy(&out).into_owned())
    };
    // One connection that never sends a request, one kept alive after a request.
    let silent = {
        let s = TcpStream::connect(&addr).unwrap();
        std::thread::spawn(move || until_closed(s, String::new()))
    };
    let kept_alive = {
        let s = TcpStream::connect(&addr).unwrap();
        let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        std::thread::spawn(move || until_closed(s, request))
    };
    for (name, t) in [("silent", silent), ("kept alive", kept_alive)] {
        let (closed, after, got) = t.join().unwrap();
        assert!(closed, "the {name} connection was still open after {after:?}");
        assert!(after >= Duration::from_secs(5) && after < Duration::from_secs(15), "{name}: closed after {after:?}");
        if name == "kept alive" {
            assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        } else {
            assert_eq!(got, "");
        }
    }
}

#[test]
fn a_foreign_host_name_is_refused_against_dns_rebinding() {
    let env = Env::new();
    let (_dev, _ui, addr) = bare_page(&env, "hosts = [\"setup.local\"]");
    let port = addr.rsplit_once(':').unwrap().1;
    // A page on evil.example whose name now resolves to the device: the browser sends its name.
    for request in [get_request("evil.example", "/", ""), login_request(&format!("evil.example:{port}"), PASSWORD)] {
        let a = exchange(TcpStream::connect(&addr).unwrap(), &request);
        assert_eq!(a.status, 421, "{a:?}");
        assert!(a.body["error"].as_str().unwrap().contains("does not answer to the name \"evil.example"), "{a:?}");
        assert!(!a.head.contains("ferry_session="), "{}", a.head);
    }
    let no_host = exchange(TcpStream::connect(&addr).unwrap(), "GET / HTTP/1.0\r\n\r\n");
    assert_eq!(no_host.status, 400, "{no_host:?}");
    // The device's own address, localhost, and the name in [local_ui] hosts are served.
    for host in [addr.clone(), format!("localhost:{port}"), "setup.local".to_string()] {
        let a = exchange(TcpStream::connect(&addr).unwrap(), &get_request(&host, "/", ""));
        assert_eq!(a.status, 200, "Host: {host}: {a:?}");
    }
    let a = exchange(TcpStream::connect(&addr).unwrap(), &login_request(&addr, PASSWORD));
    assert_eq!(a.status, 200, "{a:?}");
}

/// An upload whose connection goes silent (the access point's Wi-Fi drops, no FIN) used to
/// hold the one-at-a-time apply lock until the page restarted: every later upload was "another
/// bundle is being applied". The page now gives up on it and the next upload is taken.
#[test]
fn an_upload_that_stops_midway_releases_the_page_for_the_next_one() {
    let env = Env::new();
    let (_dev, _ui, addr) = bare_page(&env, "");
    let head = |len: usize| {
        format!(
            "POST /apply HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {PASSWORD}\r\nX-Ferry-Upload: 1\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )
    };
    let mut stalled = TcpStream::connect(&addr).unwrap();
    stalled.write_all(format!("{}FRYB", head(1_000_000)).as_bytes()).unwrap();
    stalled.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let t = Instant::now();
    let mut out = Vec::new();
    let _ = stalled.read_to_end(&mut out);
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 422"), "after {:?}: {answer}", t.elapsed());
    // The next upload is read (and refused for what it is), not turned away as busy.
    let a = exchange(TcpStream::connect(&addr).unwrap(), &format!("{}not a bundle", head(12)));
    assert_eq!(a.status, 422, "{a:?}");
    assert!(a.body["error"].as_str().unwrap_or_default().contains("not a Ferry bundle"), "{a:?}");
}

/// With `[local_ui] user`, the page serves as that user (it keeps no way back to root), and
/// `ferryd apply-server`, as root, installs what it uploads through `apply_socket`: the page
/// without the server says the installer is not reachable; with it, a bundle installs; the
/// socket is 0660 for the page's group, and a process of that group but another user is
/// refused by the server; a file where the socket goes is not replaced.
#[test]
fn the_page_runs_as_its_own_user_and_the_apply_server_installs_its_uploads() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    set_up_keys(&env);
    let v1 = env.commit(1, "1.0.0");
    promote(&env, Some(v1), None, "stable", false).unwrap();
    let b1 = bundle(&env, &[], "v1.bundle");
    let v2 = env.commit(2, "1.1.0");
    promote(&env, Some(v2), None, "stable", false).unwrap();
    let b2 = bundle(&env, &[v1], "v2.bundle");
    let socket = env.path().join("run/apply.sock");
    let dev = device_with(&env, &format!("tls = true\nuser = \"nobody\"\napply_socket = \"{}\"", socket.display()));
    let (ok, _, err) = ferryd(&dev, &["apply", b1.to_str().unwrap()]);
    assert!(ok, "{err}");
    // The page's user reads its configuration and the device's state, as on a device.
    for dir in [env.path(), dev.parent().unwrap()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (ui, url) = start(&dev);
    let status = std::fs::read_to_string(format!("/proc/{}/status", ui.0.id())).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
    assert_eq!(uids.split_whitespace().skip(1).collect::<Vec<_>>(), ["65534"; 4], "{uids}");
    assert!(!logged(&dev, "serving as nobody, not root").is_empty());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // The page's own certificate, which no CA signed (a technician compares its fingerprint).
    let client = reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap();
    let upload = |bundle: &Path| {
        let req = client
            .post(format!("{url}/apply"))
            .header("authorization", format!("Bearer {PASSWORD}"))
            .header("x-ferry-upload", "1")
            .body(std::fs::read(bundle).unwrap());
        rt.block_on(async {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), serde_json::from_slice::<serde_json::Value>(&r.bytes().await.unwrap()).unwrap())
        })
    };
    let (s, v) = upload(&b2);
    assert_eq!(s, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("the installer (`ferryd apply-server`) is not reachable"), "{v}");
    assert_eq!(running(&dev), v1.to_hex());

    // The installer, as root.
    let mut child = Command::new(crate::harness::ferryd_bin())
        .arg("--config")
        .arg(&dev)
        .arg("apply-server")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dev.with_file_name("apply-server.log")).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _server = Proc(child);
    assert_eq!(line.trim(), format!("listening on {}", socket.display()));
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.uid(), meta.gid()), (0o660, 0, 65534));
    let (s, v) = upload(&b2);
    assert_eq!((s, v["summary"]["version"].as_str()), (200, Some("1.1.0")), "{v}");
    assert_eq!(running(&dev), v2.to_hex());
    let (ok, out, err) = ferryd(&dev, &["fsck"]);
    assert!(ok, "{out}{err}");
    // The page, not root, still reads what the device runs.
    let status = rt.block_on(async {
        let r = client
            .get(format!("{url}/status.json"))
            .header("authorization", format!("Bearer {PASSWORD}"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), serde_json::from_slice::<serde_json::Value>(&r.bytes().await.unwrap()).unwrap())
    });
    assert_eq!((status.0, status.1["status"]["current"]["version"].as_str()), (200, Some("1.1.0")), "{:?}", status.1);
    // The certificate's key is root's alone; the page read its fingerprint before the drop.
    let key = std::fs::metadata(dev.with_file_name("state").join("local-ui-tls.pem")).unwrap();
    assert_eq!((key.mode() & 0o777, key.uid()), (0o600, 0));
    assert!(status.1["status"]["local_ui_certificate"].as_str().is_some_and(|f| f.len() == 95), "{:?}", status.1);
    let warnings = status.1["status"]["warnings"].to_string();
    assert!(!warnings.contains("certificate"), "{warnings}");

    // Another user in the page's group reaches the socket, and is refused by its uid.
    let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.sendall(b'FRYB')\ns.shutdown(socket.SHUT_WR)\nprint(s.makefile().read())";
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script, socket.to_str().unwrap()])
        .uid(1)
        .gid(65534)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("only root and the local page's user may install"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(running(&dev), v2.to_hex());

    // The configuration's rules: a page that drops root needs the installer's socket.
    for (lines, says) in [
        ("user = \"nobody\"", "user is set without apply_socket"),
        ("user = \"root\"\napply_socket = \"/run/x.sock\"", "must be a system user's name (not root)"),
        ("apply_socket = \"run/x.sock\"", "apply_socket must be an absolute path"),
    ] {
        let elsewhere = Env::new();
        let bad = device_with(&elsewhere, lines);
        let (ok, _, err) = ferryd(&bad, &["check-config"]);
        assert!(!ok && err.contains(says), "{lines}: {err}");
    }

    // The socket's own framing: a whole bundle in one frame, the stream closed before the
    // empty frame that ends an upload, is not installed however complete its bytes are.
    let v3 = env.commit(3, "1.2.0");
    promote(&env, Some(v3), None, "stable", false).unwrap();
    let b3 = bundle(&env, &[v2], "v3.bundle");
    let frames = "import socket,struct,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\nd=open(sys.argv[2],'rb').read()\ns.sendall(struct.pack('>I',len(d))+d)\nif sys.argv[3]=='end': s.sendall(struct.pack('>I',0))\ns.shutdown(socket.SHUT_WR)\nprint(s.makefile().read())";
    let send = |end: &str| {
        let out = Command::new("/usr/bin/python3")
            .args(["-c", frames, socket.to_str().unwrap(), b3.to_str().unwrap(), end])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let said = send("cut");
    assert!(said.contains("\"ok\":false") && said.contains("ended before its last frame"), "{said}");
    assert_eq!(running(&dev), v2.to_hex());
    let said = send("end");
    assert!(said.contains("\"ok\":true") && said.contains("1.2.0"), "{said}");
    assert_eq!(running(&dev), v3.to_hex());
    // A frame claiming 4 GiB is refused on its length, before anything is allocated for it.
    let huge = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.sendall(b'\\xff\\xff\\xff\\xffFRYB')\ns.shutdown(socket.SHUT_WR)\nprint(s.makefile().read())";
    let out = Command::new("/usr/bin/python3").args(["-c", huge, socket.to_str().unwrap()]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("a frame of 4294967295 bytes, over 16777216"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(running(&dev), v3.to_hex());

    // A second installer does not take over a path that is not its socket.
    let other = env.path().join("not-a-socket");
    std::fs::write(&other, "keep me").unwrap();
    let text = std::fs::read_to_string(&dev).unwrap().replace(socket.to_str().unwrap(), other.to_str().unwrap());
    let dev2 = dev.with_file_name("other.toml");
    std::fs::write(&dev2, text).unwrap();
    let (ok, _, err) = ferryd(&dev2, &["apply-server"]);
    assert!(!ok && err.contains("exists and is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "keep me");
    // Nor does it make its socket in a directory others may write (they could swap the path
    // between its bind and its chmod).
    let open_dir = env.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let (ok, _, err) = ferryd(&dev, &["apply-server", "--socket", open_dir.join("apply.sock").to_str().unwrap()]);
    assert!(!ok && err.contains("writable by root alone"), "{err}");
    assert!(!open_dir.join("apply.sock").exists());
}
