//! `ferry serve --tls-cert --tls-key`: HTTPS with HTTP/2 and HTTP/1.1, a certificate renewed
//! on disk (or announced by SIGHUP) served without a restart and without cutting a download
//! in flight, a broken renewal that keeps the old certificate serving, bad certificate files
//! refused at start, and a client that never finishes its handshake cut off.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_fixtures::certs::{Ca, VALID};
use ferry_store::Id;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::{commit, init};

/// The DER of a PEM certificate.
fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

/// The certificate the server at `port` presents in a new handshake (verified against `ca`).
fn served_certificate(port: u16, ca: &Ca) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(der(&ca.pem()))).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    conn.peer_certificates().unwrap()[0].to_vec()
}

/// Replaces `path` as a renewal tool does: a new file renamed over the old one.
fn renew(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Waits up to `limit` for the server to present `want`.
fn presents_within(port: u16, ca: &Ca, want: &[u8], limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if served_certificate(port, ca) == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A repository with one 8 MiB commit on main; returns it, the commit and every chunk id.
fn repository(dir: &Path) -> (PathBuf, Id, Vec<Id>) {
    let repo = init(dir, ferry_store::ChunkParams::default());
    let tree = dir.join("tree");
    ferry_fixtures::generate(&ferry_fixtures::TreeSpec { seed: 7, size: 8 << 20, version: 1 }, &tree).unwrap();
    let id: Id = commit(&repo, &tree, "main", "1").unwrap().commit.parse().unwrap();
    let c = repo.read_commit(&id).unwrap();
    let (mut trees, mut chunks) = (Default::default(), std::collections::HashSet::new());
    ferry_delta::plan::collect_chunks(&repo, &c.root, &mut trees, &mut chunks).unwrap();
    let mut chunks: Vec<Id> = chunks.into_iter().collect();
    chunks.sort();
    (dir.join("repo"), id, chunks)
}

#[test]
fn https_serves_http2_and_http1_and_renewed_certificates_without_cutting_a_download() {
    let t = tempfile::tempdir().unwrap();
    let (repo, _, chunks) = repository(t.path());
    let ca = Ca::new("fleet CA");
    let first = ca.issue(&["localhost"], VALID);
    let (cert, key) = first.write(t.path(), "server");
    let server = crate::cmd::serve(
        repo.to_str().unwrap(),
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
    );
    assert!(server.1.starts_with("https://127.0.0.1:"), "{}", server.1);
    let port: u16 = server.1.rsplit(':').next().unwrap().parse().unwrap();
    let base = format!("https://localhost:{port}/v1");
    let root = reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // HTTP/2 by ALPN, HTTP/1.1 for a client that offers only that.
        let h2 = reqwest::Client::builder().add_root_certificate(root.clone()).build().unwrap();
        let r = h2.get(format!("{base}/branches/main")).send().await.unwrap();
        assert_eq!((r.status().as_u16(), r.version()), (200, reqwest::Version::HTTP_2));
        let h1 = reqwest::Client::builder().add_root_certificate(root.clone()).http1_only().build().unwrap();
        let r = h1.get(format!("{base}/branches/main")).send().await.unwrap();
        assert_eq!((r.status().as_u16(), r.version()), (200, reqwest::Version::HTTP_11));
        // A client that does not trust the fleet's CA is refused.
        let stranger = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(Ca::new("other").pem().as_bytes()).unwrap());
        assert!(stranger.build().unwrap().get(format!("{base}/branches/main")).send().await.is_err());

        // A download of every chunk, begun with the first certificate...
        let body = ferry_delta::pack::encode_request(&chunks);
        let mut download = h1.post(format!("{base}/chunks")).body(body).send().await.unwrap();
        assert_eq!(download.status(), 200);
        let mut received = download.chunk().await.unwrap().unwrap().to_vec();

        // ... while the certificate is renewed and the server told (SIGHUP): new
        // handshakes get the new one at once.
        let second = ca.issue(&["localhost"], VALID);
        renew(&key, &second.key_pem);
        renew(&cert, &second.cert_pem);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(server.0.id() as i32), nix::sys::signal::Signal::SIGHUP)
            .unwrap();
        assert!(presents_within(port, &ca, &der(&second.cert_pem), Duration::from_secs(3)), "SIGHUP reloads");

        // ... and the download finishes whole on its connection.
        while let Some(piece) = download.chunk().await.unwrap() {
            received.extend_from_slice(&piece);
        }
        let mut d = ferry_delta::pack::FrameDecoder::new(chunks.iter().map(|i| (*i, 1 << 20)));
        let frames = d.feed(&received).unwrap();
        d.finish().unwrap();
        assert_eq!(frames.len(), chunks.len());

        // A renewal without a signal is seen within the reload poll.
        let third = ca.issue(&["localhost"], VALID);
        renew(&key, &third.key_pem);
        renew(&cert, &third.cert_pem);
        let poll = ferry_publisher::tls::RELOAD_POLL + Duration::from_secs(3);
        assert!(presents_within(port, &ca, &der(&third.cert_pem), poll), "the file change is noticed");

        // A broken renewal (a key that is not the certificate's) keeps the old one serving.
        renew(&cert, &ca.issue(&["localhost"], VALID).cert_pem);
        std::thread::sleep(poll);
        assert_eq!(served_certificate(port, &ca), der(&third.cert_pem));
        let r = h1.get(format!("{base}/branches/main")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    });
}

#[test]
fn bad_certificate_files_are_refused_at_start_with_the_file_named() {
    let t = tempfile::tempdir().unwrap();
    let repo = init(t.path(), ferry_store::ChunkParams::default());
    drop(repo);
    let repo = t.path().join("repo");
    let ca = Ca::new("fleet CA");
    let (cert, _) = ca.issue(&["localhost"], VALID).write(t.path(), "a");
    let (_, other_key) = ca.issue(&["localhost"], VALID).write(t.path(), "b");
    let garbage = t.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let run = |cert: &Path, key: &Path| {
        let out = crate::cmd::ferry(&[
            "serve",
            "--repo",
            repo.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ]);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(&cert, &other_key);
    assert!(err.contains("the key does not belong to the certificate") && err.contains("b.key"), "{err}");
    let err = run(&garbage, &other_key);
    assert!(err.contains("garbage.pem") && err.contains("no certificate in it"), "{err}");
    let err = run(&cert, &garbage);
    assert!(err.contains("garbage.pem") && err.contains("no private key"), "{err}");
    let out = crate::cmd::ferry(&["serve", "--repo", repo.to_str().unwrap(), "--tls-cert", cert.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
}

/// `ferry serve`'s server in this process over HTTPS with a certificate from `ca` for
/// localhost and the connection `limits`, serving the repository in `dir/repo`; returns
/// its runtime (drop it to stop the server) and its address.
fn serve_tls_here(
    dir: &Path,
    ca: &Ca,
    limits: ferry_publisher::connections::Limits,
) -> (tokio::runtime::Runtime, std::net::SocketAddr) {
    let (cert, key) = ca.issue(&["localhost"], VALID).write(dir, "server");
    let config = ferry_publisher::serve::ServeConfig {
        tls: Some(ferry_publisher::tls::TlsFiles { cert, key }),
        connections: limits,
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (repo, scratch) = (dir.join("repo"), dir.join("scratch"));
    rt.spawn(async move {
        ferry_publisher::serve::serve_with(
            repo,
            scratch,
            "127.0.0.1:0".parse().unwrap(),
            &config,
            move |a| tx.send(a).unwrap(),
            std::future::pending(),
        )
        .await
        .unwrap()
    });
    let addr = rx.recv().unwrap();
    (rt, addr)
}

/// A client that connects and never finishes its TLS handshake is dropped within the
/// header timeout, so silent connections cannot hold the server's slots.
#[test]
fn a_silent_handshake_is_cut_off() {
    let t = tempfile::tempdir().unwrap();
    drop(init(t.path(), ferry_store::ChunkParams::default()));
    let limits = ferry_publisher::connections::Limits { header_timeout: Duration::from_secs(1), ..Default::default() };
    let (_rt, addr) = serve_tls_here(t.path(), &Ca::new("fleet CA"), limits);
    let mut silent = TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = Instant::now();
    let n = silent.read(&mut [0u8; 16]).unwrap_or(0);
    assert_eq!(n, 0, "the server closes the connection");
    assert!(start.elapsed() < Duration::from_secs(5), "closed after {:?}", start.elapsed());
}

/// `ferry ca` makes the fleet's CA and a server certificate; `ferry serve` serves with it and
/// the operator's commands reach it over HTTPS with `--ca-file` (and not without: the
/// system's roots do not hold the fleet's CA). Nothing is overwritten unless asked.
#[test]
fn ferry_ca_issues_what_serve_and_the_admin_commands_use() {
    use std::os::unix::fs::PermissionsExt;

    use crate::cmd::{fails_with, ok};
    let t = tempfile::tempdir().unwrap();
    let p = |name: &str| t.path().join(name).display().to_string();
    let (repo, fleet, ca_dir) = (p("repo"), p("fleet"), p("ca"));
    ok(&["init", "--repo", &repo]);
    let out = ok(&["ca", "init", "--dir", &ca_dir, "--name", "Test fleet CA"]);
    assert!(out.contains("ca.crt"), "{out}");
    let key_mode = std::fs::metadata(t.path().join("ca/ca.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(key_mode, 0o600);
    let ca_before = std::fs::read(t.path().join("ca/ca.crt")).unwrap();
    fails_with(&["ca", "init", "--dir", &ca_dir], "already holds a CA");
    assert_eq!(std::fs::read(t.path().join("ca/ca.crt")).unwrap(), ca_before, "the CA is untouched");
    fails_with(&["ca", "issue", "--dir", &ca_dir, "--host", "bad host!", "--out", &p("server")], "neither a host name");
    fails_with(
        &["ca", "issue", "--dir", &ca_dir, "--host", "localhost", "--days", "0", "--out", &p("server")],
        "give 1 to",
    );
    assert!(
        !t.path().join("server.crt").exists() && !t.path().join("server.key").exists(),
        "a refused issue writes nothing"
    );
    fails_with(&["ca", "issue", "--dir", &p("nowhere"), "--host", "localhost", "--out", &p("server")], "ferry ca init");
    ok(&["ca", "issue", "--dir", &ca_dir, "--host", "localhost", "--host", "127.0.0.1", "--out", &p("server")]);
    fails_with(&["ca", "issue", "--dir", &ca_dir, "--host", "localhost", "--out", &p("server")], "--force");
    ok(&["ca", "issue", "--dir", &ca_dir, "--host", "localhost", "--out", &p("server"), "--force"]);

    let admin =
        ok(&["admin", "token", "create", "--name", "ops", "--fleet", &fleet, "--create-fleet"]).trim().to_string();
    let server =
        crate::cmd::serve(&repo, &["--fleet", &fleet, "--tls-cert", &p("server.crt"), "--tls-key", &p("server.key")]);
    let port = server.1.rsplit(':').next().unwrap().to_string();
    let url = format!("https://localhost:{port}");
    let ca_file = p("ca/ca.crt");
    let devices = ok(&["devices", "--json", "--server", &url, "--token", &admin, "--ca-file", &ca_file]);
    assert_eq!(devices.trim(), "[]");
    let out = crate::cmd::ferry(&["devices", "--server", &url, "--token", &admin]);
    assert!(!out.status.success(), "the system's roots do not trust the fleet's CA");
}

/// Found in review: an HTTP/2 client that stops granting flow-control window (it reads the
/// socket, answers pings, but sends no WINDOW_UPDATE) holds its connection, and its slot,
/// for ever: the socket never refuses a write, so the write stall never fires, and a stream
/// is being answered, so the idle close never fires. Over HTTP/1.1 the same client is cut
/// within the write stall. With the cap at one connection, a second client is never served.
#[test]
fn an_http2_client_withholding_its_window_loses_its_slot() {
    stalled_download_then_another_client(true);
}

/// The same with a window of zero and the smallest answer (a branch head, a few bytes): any
/// client, with no large download and no token, holds a connection slot for ever.
#[test]
fn an_http2_client_withholding_its_window_on_a_tiny_answer_loses_its_slot() {
    stalled_download_then_another_client_with(true, 0, "branches/main");
}

/// The control: the same stalled download over HTTP/1.1 frees the slot within the timeouts.
#[test]
fn an_http1_stalled_download_frees_its_slot() {
    stalled_download_then_another_client(false);
}

fn stalled_download_then_another_client(h2: bool) {
    stalled_download_then_another_client_with(h2, 65_535, "chunks");
}

fn stalled_download_then_another_client_with(h2: bool, window: u32, path: &str) {
    let t = tempfile::tempdir().unwrap();
    let (_, _, chunks) = repository(t.path());
    let ca = Ca::new("fleet CA");
    let limits = ferry_publisher::connections::Limits {
        max_connections: 1,
        header_timeout: Duration::from_secs(1),
        body_stall: Duration::from_secs(2),
        write_stall: Duration::from_secs(2),
        ..Default::default()
    };
    let (rt, addr) = serve_tls_here(t.path(), &ca, limits);
    let base = format!("https://localhost:{}/v1", addr.port());
    let root = reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap();
    rt.block_on(async {
        // The slow client: HTTP/2 with a small window, a download it never reads.
        let slow = reqwest::Client::builder()
            .add_root_certificate(root.clone())
            .http2_initial_stream_window_size(window)
            .http2_initial_connection_window_size(window.max(65_535));
        let slow = if h2 { slow } else { slow.http1_only() }.build().unwrap();
        let body = ferry_delta::pack::encode_request(&chunks);
        let held = if path == "chunks" {
            slow.post(format!("{base}/chunks")).body(body).send().await.unwrap()
        } else {
            slow.get(format!("{base}/{path}")).send().await.unwrap()
        };
        let want = if h2 { reqwest::Version::HTTP_2 } else { reqwest::Version::HTTP_11 };
        assert_eq!((held.status().as_u16(), held.version()), (200, want));
        // Another client, HTTP/1.1: it must get the slot within the timeouts (a few seconds).
        let other = reqwest::Client::builder()
            .add_root_certificate(root.clone())
            .http1_only()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let start = Instant::now();
        let r = other.get(format!("{base}/branches/main")).send().await;
        let waited = start.elapsed();
        drop(held);
        assert!(
            r.as_ref().is_ok_and(|r| r.status() == 200),
            "a stalled HTTP/2 download kept the only connection slot for {waited:?}: {r:?}"
        );
    });
}

/// A certificate request for a fresh key asking for much more than a device should get:
/// CA:true, server authentication, and a server's name.
fn greedy_csr(serial: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, serial);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// Checked in review: what a device's request asks for is ignored: the certificate issued is
/// a leaf for client authentication only, so a device (or anyone with the enrollment token)
/// cannot use it as the server's certificate towards devices that pin the same CA.
#[test]
fn a_greedy_certificate_request_gets_a_client_only_leaf() {
    let t = tempfile::tempdir().unwrap();
    ferry_publisher::ca::create(&t.path().join("ca"), "fleet CA", 365).unwrap();
    let ca = ferry_publisher::ca::FleetCa::open(&t.path().join("ca")).unwrap();
    let (pem, _) = ca.issue_device(&greedy_csr("SN-1"), "SN-1").unwrap();
    let d = der(&pem);
    let has = |needle: &[u8]| d.windows(needle.len()).any(|w| w == needle);
    assert!(!has(b"localhost"), "the requested name is in the certificate");
    assert!(!has(&[0x06, 0x03, 0x55, 0x1d, 0x13]), "a basicConstraints extension (CA:true asked for)");
    assert!(!has(&[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01]), "serverAuth EKU");
    assert!(has(&[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02]), "clientAuth EKU");
    // webpki refuses it as a server certificate for localhost under the same CA.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(der(&ca.cert_pem))).unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    use rustls::client::danger::ServerCertVerifier;
    let r = verifier.verify_server_cert(
        &CertificateDer::from(der(&pem)),
        &[],
        &ServerName::try_from("localhost").unwrap(),
        &[],
        rustls::pki_types::UnixTime::now(),
    );
    assert!(r.is_err(), "a device certificate passes as the server's");
    // Oversized and malformed requests are refused.
    assert!(ca.issue_device(&"A".repeat(9000), "SN-1").is_err());
    assert!(ca
        .issue_device("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "SN-1")
        .is_err());
}

/// Found in review: behind a TLS-terminating load balancer (`--client-cert-header`,
/// `--trusted-proxy`, plain HTTP on the server) the server must still issue certificates
/// (`--client-ca`, `--client-ca-key` without `--tls-cert`), or no device could ever be bound:
/// an enrolled device whose balancer forwards its certificate's SHA-256 checks in, one
/// forwarding another is refused, and a header without a CA is refused at start.
#[test]
fn behind_a_load_balancer_an_enrolled_device_checks_in_with_its_forwarded_certificate() {
    use crate::cmd::ok;
    let t = tempfile::tempdir().unwrap();
    let p = |name: &str| t.path().join(name).display().to_string();
    let (repo, fleet, ca_dir) = (p("repo"), p("fleet"), p("ca"));
    ok(&["init", "--repo", &repo]);
    ok(&["ca", "init", "--dir", &ca_dir]);
    ok(&["admin", "token", "create", "--name", "ops", "--fleet", &fleet, "--create-fleet"]);
    let enrollment =
        ok(&["admin", "token", "create", "--name", "factory", "--enrollment", "--fleet", &fleet]).trim().to_string();
    let header = ["--client-cert-header", "x-client-cert-sha256", "--trusted-proxy", "127.0.0.1"];
    let out = crate::cmd::ferry(&[&["serve", "--repo", &repo, "--fleet", &fleet][..], &header[..]].concat());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--client-cert-header needs --client-ca"));
    let ca_args = ["--client-ca", &p("ca/ca.crt"), "--client-ca-key", &p("ca/ca.key")];
    let server = crate::cmd::serve(&repo, &[&["--fleet", &fleet][..], &header[..], &ca_args[..]].concat());
    let url = server.1.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "SN-LB");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let body =
            serde_json::json!({"csr": csr, "enrollment_token": enrollment, "hardware": "rev-a", "serial": "SN-LB"});
        let r = c
            .post(format!("{url}/v1/device/enroll"))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let enrolled: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        let token = enrolled["device_token"].as_str().unwrap().to_string();
        let pem = enrolled["certificate"].as_str().expect("a certificate issued behind the balancer");
        let fingerprint = hex::encode(ferry_publisher::connections::fingerprint(&der(pem)));
        let check_in = |forwarded: String| {
            let c = c.clone();
            let token = token.clone();
            let url = url.clone();
            async move {
                let r = c
                    .post(format!("{url}/v1/device/checkin"))
                    .bearer_auth(&token)
                    .header("x-client-cert-sha256", forwarded)
                    .header("content-type", "application/json")
                    .body("{}")
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        let (status, text) = check_in(fingerprint).await;
        assert_eq!(status, 200, "{text}");
        let (status, text) = check_in("ab".repeat(32)).await;
        assert_eq!(status, 403, "{text}");
        assert!(text.contains("not the one issued to this device"), "{text}");
    });
}

/// Found in review: `/v1/device/enroll` parses, verifies and signs the certificate
/// request before it looks at the enrollment token (and before the enrollment rate limit),
/// so anyone can make the server do that work: a request with a wrong token and a bad CSR
/// is answered 400 (the CSR was processed), not 401.
#[test]
fn enrollment_checks_the_token_before_the_certificate_request() {
    use crate::cmd::ok;
    let t = tempfile::tempdir().unwrap();
    let p = |name: &str| t.path().join(name).display().to_string();
    let (repo, fleet, ca_dir) = (p("repo"), p("fleet"), p("ca"));
    ok(&["init", "--repo", &repo]);
    ok(&["ca", "init", "--dir", &ca_dir, "--name", "Test fleet CA"]);
    ok(&["ca", "issue", "--dir", &ca_dir, "--host", "localhost", "--out", &p("server")]);
    ok(&["admin", "token", "create", "--name", "ops", "--fleet", &fleet, "--create-fleet"]);
    let server = crate::cmd::serve(
        &repo,
        &[
            "--fleet",
            &fleet,
            "--tls-cert",
            &p("server.crt"),
            "--tls-key",
            &p("server.key"),
            "--client-ca",
            &p("ca/ca.crt"),
            "--client-ca-key",
            &p("ca/ca.key"),
        ],
    );
    let port = server.1.rsplit(':').next().unwrap().to_string();
    let ca_pem = std::fs::read(t.path().join("ca/ca.crt")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).unwrap())
            .build()
            .unwrap();
        let body = serde_json::json!({"csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "enrollment_token": "fe_wrong", "hardware": "rev-a", "serial": "SN-X"});
        let r = c.post(format!("https://localhost:{port}/v1/device/enroll")).header("content-type", "application/json").body(serde_json::to_vec(&body).unwrap()).send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 401, "the enrollment token must be checked first: {text}");
    });
}

/// Found in review: a server listening on `[::]` sees an IPv4 load balancer as
/// `::ffff:10.0.0.5`, and `--trusted-proxy 10.0.0.5` does not match it, so the balancer's
/// header is never believed (every device refused); the operator must guess the mapped form.
#[test]
fn a_trusted_proxy_matches_its_ipv4_mapped_address() {
    use ferry_publisher::connections::Connection;
    use ferry_publisher::fleet_api::DeviceCertificates;
    let certs = DeviceCertificates {
        issuer: None,
        required: true,
        forwarded: Some((
            axum::http::HeaderName::from_static("x-client-cert-sha256"),
            vec!["10.0.0.5".parse().unwrap()],
        )),
    };
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("x-client-cert-sha256", "ab".repeat(32).parse().unwrap());
    let v4 = Connection { peer: "10.0.0.5:4000".parse().unwrap(), tls: false, client_certificate: None };
    assert_eq!(certs.presented(Some(&v4), &headers), Some([0xab; 32]));
    let mapped = Connection { peer: "[::ffff:10.0.0.5]:4000".parse().unwrap(), tls: false, client_certificate: None };
    assert_eq!(
        certs.presented(Some(&mapped), &headers),
        Some([0xab; 32]),
        "the same balancer over a dual-stack socket"
    );
}
