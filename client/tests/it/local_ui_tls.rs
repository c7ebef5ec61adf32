//! `ferryd local-ui` over HTTPS (`[local_ui] tls = true`) with the device's own certificate:
//! headless chromium trusting exactly that certificate's key, a rustls client (ring) with it
//! pinned as the only root (and refusing another), the fingerprint `ferryd status` prints
//! against the one served, the TLS handshake's deadline and the connection caps, and a
//! damaged certificate file refused without a change. Screenshots land in
//! `$CARGO_TARGET_TMPDIR/local-ui-tls/`.
//!
//! The client is rustls itself, configured as reqwest configures it: this build's reqwest
//! has no TLS feature (turning one on for the tests would turn it on in the `ferryd` they
//! run, whose clients then need a process-wide crypto provider).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_fixtures::webdriver::{Browser, Proc};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};

use crate::channels::{promote, set_up_keys};
use crate::harness::{ferryd, Env};
use crate::local_ui::{bundle, device_with, logged, running, start, PASSWORD};

/// SHA-256 as browsers show a certificate's fingerprint: `AB:CD:...`.
fn colon_sha256(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= chunk.len() { char::from(ABC[(n >> (18 - 6 * i)) as usize & 63]) } else { '=' });
        }
    }
    out
}

/// The PEM section `kind` (e.g. "PRIVATE KEY") of a file's text.
fn section(text: &str, kind: &str) -> String {
    let begin = format!("-----BEGIN {kind}-----");
    let end = format!("-----END {kind}-----");
    let from = text.find(&begin).unwrap_or_else(|| panic!("no {kind} in {text}"));
    let to = text[from..].find(&end).unwrap() + from + end.len();
    text[from..to].to_string()
}

fn tls_file(config: &Path) -> std::path::PathBuf {
    config.parent().unwrap().join("state/local-ui-tls.pem")
}

/// What Chromium's `--ignore-certificate-errors-spki-list` takes: base64 of the SHA-256 of the
/// certificate's public key (SubjectPublicKeyInfo), here from the device's key file.
fn spki_pin(config: &Path) -> String {
    use rcgen::PublicKeyData;
    let text = std::fs::read_to_string(tls_file(config)).unwrap();
    let key = rcgen::KeyPair::from_pem(&section(&text, "PRIVATE KEY")).unwrap();
    base64(ring::digest::digest(&ring::digest::SHA256, &key.subject_public_key_info()).as_ref())
}

/// The certificate `ferryd local-ui-cert --pem` exports (no key), as DER.
fn exported_cert(config: &Path) -> CertificateDer<'static> {
    let (ok, out, err) = ferryd(config, &["local-ui-cert", "--pem"]);
    assert!(ok, "{err}");
    assert!(!out.contains("PRIVATE KEY"), "the export holds the key: {out}");
    CertificateDer::from_pem_slice(out.as_bytes()).unwrap()
}

/// An answer to one HTTPS request.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Value,
    /// The certificate the page served (DER).
    served: Vec<u8>,
}

/// Sends `request` (one HTTP/1.1 request with `Connection: close`) over TLS to `addr`, from
/// the address `from` if given, verifying the page's certificate for `name` against `root`
/// and nothing else (no system roots), as a client with the certificate pinned does. The
/// error is the TLS refusal.
fn https(
    root: &CertificateDer<'static>,
    from: Option<IpAddr>,
    addr: SocketAddr,
    name: &str,
    request: &str,
) -> Result<Answer, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    rt().block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(ip) = from {
            socket.bind(SocketAddr::new(ip, 0)).unwrap();
        }
        let tcp = socket.connect(addr).await.unwrap();
        let mut tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
        // The page speaks HTTP/1.1 only, whatever the client offers.
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let served = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(25), tls.read_to_end(&mut out)).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        Ok(Answer { status, head: head.to_string(), body: serde_json::from_str(body).unwrap_or_default(), served })
    })
}

fn login_request(host: &str) -> String {
    let body = json!({ "password": PASSWORD }).to_string();
    format!(
        "POST /login HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn get_request(host: &str, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {PASSWORD}\r\nConnection: close\r\n\r\n")
}

/// The `local_ui_certificate` that `ferryd status --json` prints.
fn status_fingerprint(config: &Path) -> Value {
    let (ok, out, err) = ferryd(config, &["status", "--json"]);
    assert!(ok, "{err}");
    serde_json::from_str::<Value>(&out).unwrap()["local_ui_certificate"].clone()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn a_technician_installs_a_bundle_over_https_trusting_the_device_certificate() {
    let env = Env::new();
    set_up_keys(&env);
    let v1 = env.commit(1, "1.0.0");
    promote(&env, Some(v1), None, "stable", false).unwrap();
    let b1 = bundle(&env, &[], "v1.bundle");
    let dev = device_with(&env, "tls = true");
    let (ok, _, err) = ferryd(&dev, &["apply", b1.to_str().unwrap()]);
    assert!(ok, "{err}");
    let v2 = env.commit(2, "1.1.0");
    promote(&env, Some(v2), None, "stable", false).unwrap();
    let b2 = bundle(&env, &[v1], "v2.bundle");

    // No certificate before the page's first start; it is made then, 0600.
    assert!(!tls_file(&dev).exists());
    let (_ui, url) = start(&dev);
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(tls_file(&dev)).unwrap().permissions().mode() & 0o777, 0o600);

    // A browser that does not know the certificate refuses the page.
    let stranger = Browser::start();
    stranger.go(&url);
    let title = stranger.call("GET", &stranger.s("/title"), None);
    assert_eq!(title, json!("Privacy error"), "the browser's warning instead of the page");
    assert_eq!(stranger.text("#signin h2"), "");
    drop(stranger);

    // The technician's browser trusts this device's key (as after comparing fingerprints).
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("local-ui-tls");
    std::fs::create_dir_all(&shots).unwrap();
    let pin = format!("--ignore-certificate-errors-spki-list={}", spki_pin(&dev));
    let b = Browser::start_with(&[pin.as_str()]);
    b.go(&url);
    b.wait_for("#signin h2", "Sign in");
    b.type_into("#password", PASSWORD);
    b.click("#login");
    // The status needs the session cookie: the browser kept the Secure cookie and sends it.
    b.wait_for("#status", "1.0.0");
    b.screenshot(&shots, "1-signed-in.png");
    b.type_into_file("#file", &b2);
    b.click("#upload");
    let msg = b.wait_for("#result", "Installed 1.1.0");
    assert!(msg.contains(&v2.to_hex()[..12]), "{msg}");
    b.wait_for("#status", "1.1.0");
    b.screenshot(&shots, "2-installed.png");
    assert_eq!(running(&dev), v2.to_hex());
    b.click("#logout");
    b.wait_for("#signin h2", "Sign in");
}

#[test]
fn the_pinned_device_certificate_is_served_and_its_fingerprint_is_what_status_prints() {
    let env = Env::new();
    set_up_keys(&env);
    let dev = device_with(&env, "tls = true\nhosts = [\"setup.local\", \"192.168.4.1\"]");
    // Made before the page starts (as `ferryd provision` does), then only read.
    let (ok, out, err) = ferryd(&dev, &["local-ui-cert", "--json"]);
    assert!(ok, "{err}");
    let made: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(made["made"], true, "{made}");
    let file = std::fs::read(tls_file(&dev)).unwrap();
    let (_ui, url) = start(&dev);
    assert_eq!(std::fs::read(tls_file(&dev)).unwrap(), file, "the page replaced its certificate");
    let addr: SocketAddr = url.strip_prefix("https://").unwrap().parse().unwrap();
    let device = exported_cert(&dev);
    let host = addr.to_string();

    // Signed in over HTTPS: the cookie is Secure, HttpOnly, SameSite=Strict.
    let a = https(&device, None, addr, "127.0.0.1", &login_request(&host)).unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    let cookie = a.head.lines().find(|l| l.starts_with("set-cookie: ferry_session=")).unwrap_or_default();
    assert!(cookie.ends_with("; HttpOnly; SameSite=Strict; Secure"), "{}", a.head);

    // The certificate served is the one status prints, in the form browsers show it.
    let a = https(&device, None, addr, "127.0.0.1", &get_request(&host, "/status.json")).unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.served, device.as_ref(), "the page serves the exported certificate");
    let fingerprint = colon_sha256(&a.served);
    assert_eq!(fingerprint.len(), 32 * 3 - 1);
    assert_eq!(status_fingerprint(&dev), json!(fingerprint));
    assert_eq!(made["fingerprint"], json!(fingerprint));
    assert_eq!(a.body["status"]["local_ui_certificate"], json!(fingerprint), "{a:?}");
    let (ok, text, _) = ferryd(&dev, &["status"]);
    assert!(ok);
    assert!(text.contains(&format!("local page certificate SHA-256: {fingerprint}\n")), "{text}");

    // The certificate names localhost and [local_ui] hosts too (the client checks names),
    // and no other name.
    for name in ["setup.local", "localhost", "::1", "192.168.4.1"] {
        let a = https(&device, None, addr, name, &get_request(&host, "/")).map(|a| a.status);
        assert_eq!(a, Ok(200), "{name}");
    }
    let e = https(&device, None, addr, "evil.example", &get_request(&host, "/")).unwrap_err();
    assert!(e.contains("certificate not valid for name \"evil.example\""), "{e}");

    // A client that pins another certificate for the same names refuses the page.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let e = https(other.cert.der(), None, addr, "127.0.0.1", &get_request(&host, "/")).unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");
    // And plain HTTP on the HTTPS port gets no page.
    let mut plain = TcpStream::connect(addr).unwrap();
    let (_, got) = closed_after(&mut plain, get_request(&host, "/").as_bytes());
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"), "{got:?}");
    assert_eq!(logged(&dev, "does not name").len(), 0, "127.0.0.1 is named");

    // A page started on an address the certificate does not name says how to fix it.
    let log = dev.with_file_name("other-address.log");
    let mut other = Proc(
        std::process::Command::new(crate::harness::ferryd_bin())
            .arg("--config")
            .arg(&dev)
            .args(["local-ui", "--listen", "127.0.0.2:0"])
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(other.0.stdout.take().unwrap()), &mut line).unwrap();
    assert!(line.starts_with("listening on https://127.0.0.2:"), "{line}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("the certificate does not name 127.0.0.2, the address it listens on")
            && text.contains("`ferryd local-ui-cert --new --address 127.0.0.2`"),
        "{text}"
    );
    assert_eq!(std::fs::read(tls_file(&dev)).unwrap(), file, "the page replaced its certificate");
}

/// How long until the page closes `s` (which has sent `sent`), and whether it sent anything.
fn closed_after(s: &mut TcpStream, sent: &[u8]) -> (Duration, Vec<u8>) {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(sent).unwrap();
    let t = Instant::now();
    let mut out = Vec::new();
    let r = s.read_to_end(&mut out);
    let after = t.elapsed();
    if let Err(e) = r {
        assert!(e.kind() == std::io::ErrorKind::ConnectionReset, "still open after {after:?}: {e}");
    }
    (after, out)
}

#[test]
fn a_client_silent_in_the_tls_handshake_is_cut_off_and_cannot_take_the_page() {
    let env = Env::new();
    set_up_keys(&env);
    let dev = device_with(&env, "tls = true");
    let (_ui, url) = start(&dev);
    let addr = url.strip_prefix("https://").unwrap().to_string();
    // One sends nothing; one sends the start of a ClientHello (a record header announcing
    // 512 bytes) and then nothing; both are closed at the handshake's deadline.
    let silent = {
        let mut s = TcpStream::connect(&addr).unwrap();
        std::thread::spawn(move || closed_after(&mut s, b""))
    };
    let slow = {
        let mut s = TcpStream::connect(&addr).unwrap();
        std::thread::spawn(move || closed_after(&mut s, b"\x16\x03\x01\x02\x00\x01"))
    };
    // Meanwhile the attacker holds its 8 connections; a 9th is closed at once.
    std::thread::sleep(Duration::from_millis(200));
    let held: Vec<TcpStream> = (0..7).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    let (ninth, _) = closed_after(&mut TcpStream::connect(&addr).unwrap(), b"");
    assert!(ninth < Duration::from_secs(2), "a 9th connection from one address stayed {ninth:?}");
    // The technician, on another address, still signs in over TLS.
    let technician = Some("127.0.0.2".parse().unwrap());
    let a = https(&exported_cert(&dev), technician, addr.parse().unwrap(), "127.0.0.1", &login_request(&addr)).unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    for (name, t) in [("silent", silent), ("slow", slow)] {
        let (after, got) = t.join().unwrap();
        assert!(after >= Duration::from_secs(5) && after < Duration::from_secs(15), "{name}: closed after {after:?}");
        // Nothing useful came back: no TLS answer to half a hello (at most an alert).
        assert!(got.len() < 16, "{name}: {got:?}");
    }
    drop(held);
}

/// Runs `ferryd local-ui` expecting it to exit (not serve); returns its stderr.
fn refused_start(config: &Path) -> String {
    let mut child = std::process::Command::new(crate::harness::ferryd_bin())
        .arg("--config")
        .arg(config)
        .args(["local-ui", "--listen", "127.0.0.1:0"])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            assert!(!status.success(), "{out}{err}");
            assert!(!out.contains("listening"), "it listened: {out}");
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ferryd local-ui served with a damaged certificate");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every file in a directory with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

#[test]
fn a_damaged_certificate_file_is_refused_naming_the_fix_and_changes_nothing() {
    let env = Env::new();
    set_up_keys(&env);
    let dev = device_with(&env, "tls = true");
    let (ok, out, err) = ferryd(&dev, &["local-ui-cert", "--json"]);
    assert!(ok, "{err}");
    let first = serde_json::from_str::<Value>(&out).unwrap()["fingerprint"].clone();
    let path = tls_file(&dev);
    let good = std::fs::read_to_string(&path).unwrap();
    let key = section(&good, "PRIVATE KEY");
    let cert = section(&good, "CERTIFICATE");
    // A base64 character changed in the middle of `part` (another valid one).
    let flip = |part: &str| {
        let body_start = part.find('\n').unwrap() + 1;
        let i = body_start + (part.len() - body_start) / 2;
        let i = (i..).find(|&i| part.as_bytes()[i].is_ascii_alphanumeric()).unwrap();
        let c = if part.as_bytes()[i] == b'A' { "B" } else { "A" };
        good.replacen(part, &format!("{}{c}{}", &part[..i], &part[i + 1..]), 1)
    };
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cases = [
        ("cut in half", good[..good.len() / 2].to_string()),
        ("a character of the key changed", flip(&key)),
        ("a character of the certificate changed", flip(&cert)),
        ("another key's certificate", good.replace(&cert, other.cert.pem().trim_end())),
        ("empty", String::new()),
    ];
    for (what, bad) in cases {
        std::fs::write(&path, &bad).unwrap();
        let before = files(&dev.parent().unwrap().join("state"));
        let err = refused_start(&dev);
        assert!(
            err.contains(&format!("the local page's certificate {} is damaged: ", path.display()))
                && err.contains("`ferryd local-ui-cert --new` makes a new one"),
            "{what}: {err}"
        );
        // Nor does printing it replace it; status still answers, warns and prints none.
        let (ok, _, err) = ferryd(&dev, &["local-ui-cert"]);
        assert!(!ok && err.contains("is damaged"), "{what}: {err}");
        let (ok, text, err) = ferryd(&dev, &["status"]);
        assert!(ok, "{what}: {err}");
        assert!(
            text.contains("warning:  the local page's certificate") && text.contains("is damaged"),
            "{what}: {text}"
        );
        assert_eq!(status_fingerprint(&dev), Value::Null, "{what}");
        assert_eq!(files(&dev.parent().unwrap().join("state")), before, "{what}: the state directory changed");
    }
    // The named command makes a new one, which the page then serves.
    let (ok, out, err) = ferryd(&dev, &["local-ui-cert", "--new", "--address", "192.168.4.7", "--json"]);
    assert!(ok, "{err}");
    let renewed = serde_json::from_str::<Value>(&out).unwrap()["fingerprint"].clone();
    assert_ne!(renewed, first);
    let (_ui, url) = start(&dev);
    let addr: SocketAddr = url.strip_prefix("https://").unwrap().parse().unwrap();
    let a = https(&exported_cert(&dev), None, addr, "192.168.4.7", &get_request(&addr.to_string(), "/")).unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(json!(colon_sha256(&a.served)), renewed);
    assert_eq!(status_fingerprint(&dev), renewed);
}

#[test]
fn processes_racing_to_make_the_certificate_agree_on_one() {
    let env = Env::new();
    set_up_keys(&env);
    let dev = device_with(&env, "tls = true");
    // As provisioning and the page's first start might, at once.
    let runs: Vec<_> = (0..6)
        .map(|_| {
            let dev = dev.clone();
            std::thread::spawn(move || ferryd(&dev, &["local-ui-cert", "--json"]))
        })
        .collect();
    let mut made = 0;
    let mut fingerprints = std::collections::BTreeSet::new();
    for run in runs {
        let (ok, out, err) = run.join().unwrap();
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        made += usize::from(v["made"] == true);
        fingerprints.insert(v["fingerprint"].as_str().unwrap().to_string());
    }
    assert_eq!(made, 1, "one process made it, the others read it");
    assert_eq!(fingerprints.len(), 1, "{fingerprints:?}");
    assert_eq!(status_fingerprint(&dev), json!(fingerprints.first().unwrap()));
}
