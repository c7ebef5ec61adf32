//! `ferry serve --tls-cert --tls-key`: HTTPS with HTTP/2 and HTTP/1.1, a certificate renewed
//! on disk (or announced by SIGHUP) served without a restart and without cutting a download
//! in flight, a broken renewal that keeps the old certificate serving, bad certificate files
//! refused at start, and a client that never finishes its handshake cut off.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_fixtures::certs::{Ca, Leaf, VALID};
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

/// A client that connects and never finishes its TLS handshake is dropped within the
/// header timeout, so silent connections cannot hold the server's slots.
#[test]
fn a_silent_handshake_is_cut_off() {
    let t = tempfile::tempdir().unwrap();
    drop(init(t.path(), ferry_store::ChunkParams::default()));
    let ca = Ca::new("fleet CA");
    let leaf: Leaf = ca.issue(&["localhost"], VALID);
    let (cert, key) = leaf.write(t.path(), "server");
    let config = ferry_publisher::serve::ServeConfig {
        tls: Some(ferry_publisher::tls::TlsFiles { cert, key, client_ca: None, client_ca_key: None }),
        connections: ferry_publisher::connections::Limits {
            header_timeout: Duration::from_secs(1),
            ..Default::default()
        },
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (repo, scratch) = (t.path().join("repo"), t.path().join("scratch"));
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
    fails_with(&["ca", "issue", "--dir", &p("nowhere"), "--host", "localhost", "--out", &p("server")], "ferry ca init");
    ok(&["ca", "issue", "--dir", &ca_dir, "--host", "localhost", "--host", "127.0.0.1", "--out", &p("server")]);
    fails_with(&["ca", "issue", "--dir", &ca_dir, "--host", "localhost", "--out", &p("server")], "--force");
    ok(&["ca", "issue", "--dir", &ca_dir, "--host", "localhost", "--out", &p("server"), "--force"]);

    let admin = ok(&["admin", "token", "create", "--name", "ops", "--fleet", &fleet]).trim().to_string();
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
