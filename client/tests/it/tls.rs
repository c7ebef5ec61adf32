//! ferryd over HTTPS against a real `ferry serve` with certificates the tests make (rcgen):
//! the fleet's CA pinned, and every wrong certificate refused with a clear error and
//! nothing installed: expired, not yet valid, for another name, from another CA, a man in
//! the middle; a device whose clock is behind judges certificates at its clock floor; a
//! certificate rotated on disk while a download runs does not cut it.

use std::path::{Path, PathBuf};

use ferry_fixtures::certs::{Ca, Leaf, EXPIRED, FUTURE, VALID};

use crate::harness::{ferryd, update, Env};

/// A device following main over `https://NAME:PORT` with `ca` as its `ca_file`.
fn https_device(env: &Env, dir: &str, host: &str, port: u16, ca: &Path, extra: &str) -> PathBuf {
    let dev = env.path().join(dir);
    std::fs::create_dir_all(&dev).unwrap();
    let config = dev.join("ferryd.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"https://{host}:{port}\"\nca_file = \"{}\"\nbranch = \"main\"\nstate_dir = \"{}\"\ncurrent_link = \"{}\"\ntrusted_keys = [\"{}\"]\nhardware = \"rev-a\"\nretries = 1\nread_timeout = 10\n{extra}",
            ca.display(),
            dev.join("state").display(),
            dev.join("current").display(),
            env.path().join("ci.key.pub").display(),
        ),
    )
    .unwrap();
    config
}

/// What the device runs: the commit its current link names, if any.
fn running(config: &Path) -> Option<PathBuf> {
    std::fs::read_link(config.parent().unwrap().join("current")).ok()
}

/// Serves `leaf` from now on (the server restarted with the new files).
fn serve_with(env: &mut Env, leaf: &Leaf) {
    leaf.write(env.path(), "server");
    env.restart_server();
}

#[test]
fn a_device_updates_over_https_and_refuses_every_wrong_certificate() {
    let fleet_ca = Ca::new("fleet CA");
    let good = fleet_ca.issue(&["localhost", "127.0.0.1"], VALID);
    let mut env = Env::with_tls(&good);
    let ca = fleet_ca.write(env.path(), "fleet-ca");
    let port = env.addr.port();
    let config = https_device(&env, "device", "localhost", port, &ca, "");
    let v1 = env.commit(1, "1.0.0");
    let out = update(&config);
    assert_eq!(out["to"], v1.to_hex(), "{out}");
    let before = running(&config).expect("v1 installed");
    let (ok, out, _) = ferryd(&config, &["doctor"]);
    assert!(out.contains("ok    server certificate roots: ca_file") && !out.contains("insecure_http"), "{out}");
    assert!(ok, "{out}");
    // A ca_file that is not a certificate fails the doctor, naming it.
    let broken = https_device(&env, "broken", "localhost", port, &env.path().join("ci.key.pub"), "");
    let (ok, out, _) = ferryd(&broken, &["doctor"]);
    assert!(!ok && out.contains("FAIL  server certificate roots") && out.contains("ci.key.pub"), "{out}");
    let v2 = env.commit(2, "2.0.0");

    let other_ca = Ca::new("someone else's CA");
    let cases: [(&str, Leaf, &str); 4] = [
        ("expired", fleet_ca.issue(&["localhost"], EXPIRED), "expired at 2021-12-31"),
        ("not yet valid", fleet_ca.issue(&["localhost"], FUTURE), "is not valid before 2099-01-01"),
        ("for another name", fleet_ca.issue(&["updates.example.com"], VALID), "is not for localhost"),
        ("from another CA", other_ca.issue(&["localhost"], VALID), "not issued by a CA this device trusts"),
    ];
    for (what, leaf, expected) in cases {
        serve_with(&mut env, &leaf);
        let (ok, _, err) = ferryd(&config, &["update"]);
        assert!(!ok, "{what}: the update must fail");
        assert!(err.contains(expected), "{what}: the error must say {expected:?}: {err}");
        assert_eq!(running(&config).as_ref(), Some(&before), "{what}: nothing may change");
    }

    // The error names the clock when it judged the certificate.
    serve_with(&mut env, &fleet_ca.issue(&["localhost"], EXPIRED));
    let (_, _, err) = ferryd(&config, &["update"]);
    assert!(err.contains("judged at this device's clock"), "{err}");

    // The right certificate again: the update goes through.
    serve_with(&mut env, &good);
    let out = update(&config);
    assert_eq!(out["to"], v2.to_hex(), "{out}");
}

/// A clock reset to 1970 judges certificates at the device's clock floor: a valid one is
/// taken (it would be "not valid yet" in 1970), an expired one is still refused, and the
/// error says the clock is wrong.
#[test]
fn a_device_whose_clock_is_behind_judges_certificates_at_its_floor() {
    let fleet_ca = Ca::new("fleet CA");
    let mut env = Env::with_tls(&fleet_ca.issue(&["localhost"], VALID));
    let ca = fleet_ca.write(env.path(), "fleet-ca");
    let config = https_device(&env, "device", "localhost", env.addr.port(), &ca, "");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let in_1970 = (-now + 1000).to_string();
    env.commit(1, "1.0.0");
    let out = std::process::Command::new(crate::harness::ferryd_bin())
        .arg("--config")
        .arg(&config)
        .args(["update", "--json"])
        .env("FERRYD_CLOCK_OFFSET", &in_1970)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    serve_with(&mut env, &fleet_ca.issue(&["localhost"], EXPIRED));
    env.commit(2, "2.0.0");
    let out = std::process::Command::new(crate::harness::ferryd_bin())
        .arg("--config")
        .arg(&config)
        .arg("update")
        .env("FERRYD_CLOCK_OFFSET", &in_1970)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("expired at 2021-12-31") && err.contains("the clock is wrong, so the floor is used"), "{err}");
}

/// A man in the middle with a certificate for the right name from a CA of its own: a device
/// pinning the fleet's CA refuses it before sending a byte of HTTP; the same proxy serves a
/// device that trusts the attacker's CA (so the refusal is the CA's doing, not a broken proxy).
#[test]
fn a_man_in_the_middle_is_refused() {
    let env = Env::new();
    let fleet_ca = Ca::new("fleet CA");
    let ca = fleet_ca.write(env.path(), "fleet-ca");
    let attacker_ca = Ca::new("attacker CA");
    let attacker = attacker_ca.write(env.path(), "attacker-ca");
    let mitm = ferry_fixtures::mitm::Mitm::start(env.addr, &attacker_ca.issue(&["localhost"], VALID));
    let v1 = env.commit(1, "1.0.0");

    let config = https_device(&env, "device", "localhost", mitm.addr.port(), &ca, "");
    let (ok, _, err) = ferryd(&config, &["update"]);
    assert!(!ok);
    assert!(err.contains("not issued by a CA this device trusts"), "{err}");
    assert_eq!(mitm.handshakes(), 0, "the device must not finish a handshake with the proxy");
    assert!(running(&config).is_none());

    let fooled = https_device(&env, "fooled", "localhost", mitm.addr.port(), &attacker, "");
    let out = update(&fooled);
    assert_eq!(out["to"], v1.to_hex(), "{out}");
    assert!(mitm.handshakes() > 0);
}

/// `http://` needs `insecure_http = true`, and the error says how to fix it; while it is
/// set, `status` and `doctor` warn.
#[test]
fn plain_http_is_refused_unless_configured() {
    let env = Env::new();
    let config = env.device("");
    for cmd in ["status", "doctor"] {
        let (_, out, err) = ferryd(&config, &[cmd]);
        assert!(out.contains("insecure_http is set"), "{cmd}: {out}{err}");
    }
    let text = std::fs::read_to_string(&config).unwrap().replace("insecure_http = true\n", "");
    std::fs::write(&config, text).unwrap();
    let (ok, _, err) = ferryd(&config, &["update"]);
    assert!(!ok);
    assert!(err.contains("is plain HTTP") && err.contains("insecure_http = true"), "{err}");
}

/// Mutual TLS: each device enrolls with its token and a certificate request, gets a
/// certificate for its serial from the fleet's CA, and from then on must present it: a
/// device without it, with another device's, or revoked is refused, and nothing changes.
#[test]
fn mutual_tls_binds_a_certificate_to_each_device() {
    let server_ca = Ca::new("fleet CA");
    let t = tempfile::tempdir().unwrap();
    let client_ca = t.path().join("client-ca");
    ferry_publisher::ca::create(&client_ca, "device CA", 3650).unwrap();
    let env = Env::with_fleet_tls(&server_ca.issue(&["localhost"], VALID), Some(&client_ca));
    let ca = server_ca.write(env.path(), "fleet-ca");
    let port = env.addr.port();
    let fleet = |serial: &str| {
        format!(
            "[fleet]\nenrollment_token_file = \"{}\"\nserial = \"{serial}\"\n",
            env.path().join("enrollment-token").display()
        )
    };
    let a = https_device(&env, "a", "localhost", port, &ca, &fleet("SN-A"));
    let b = https_device(&env, "b", "localhost", port, &ca, &fleet("SN-B"));
    let v1 = env.commit(1, "1.0.0");
    for dev in [&a, &b] {
        let out = update(dev);
        assert_eq!(out["to"], v1.to_hex(), "{out}");
    }
    let state = |dev: &Path, name: &str| dev.parent().unwrap().join("state").join(name);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state(&a, "client.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let a_cert = std::fs::read(state(&a, "client.crt")).unwrap();
    assert_ne!(a_cert, std::fs::read(state(&b, "client.crt")).unwrap());
    let before = running(&a);
    env.commit(2, "2.0.0");

    // No certificate: the token alone is refused.
    std::fs::rename(state(&a, "client.crt"), state(&a, "client.crt.away")).unwrap();
    let (ok, _, err) = ferryd(&a, &["update"]);
    assert!(!ok && err.contains("the connection presented none"), "{err}");
    assert_eq!(running(&a), before);

    // Another device's certificate (and key): refused.
    std::fs::copy(state(&b, "client.crt"), state(&a, "client.crt")).unwrap();
    let a_key = std::fs::read(state(&a, "client.key")).unwrap();
    std::fs::copy(state(&b, "client.key"), state(&a, "client.key")).unwrap();
    let (ok, _, err) = ferryd(&a, &["update"]);
    assert!(!ok && err.contains("not the one issued to this device"), "{err}");
    assert_eq!(running(&a), before);

    // Its own again: served.
    std::fs::write(state(&a, "client.key"), &a_key).unwrap();
    std::fs::rename(state(&a, "client.crt.away"), state(&a, "client.crt")).unwrap();
    assert_eq!(update(&a)["to"], running_commit(&env, 2));

    // Revoked: its certificate opens nothing either.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(server_ca.pem().as_bytes()).unwrap())
            .build()
            .unwrap();
        client
            .post(format!("https://localhost:{port}/v1/admin/devices/SN-A/revoke"))
            .bearer_auth(&env.admin_token)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);
    let (ok, _, err) = ferryd(&a, &["update"]);
    assert!(!ok && err.contains("revoked"), "{err}");
    // The other device is untouched.
    assert_eq!(update(&b)["to"], running_commit(&env, 2));
}

/// The id of the commit on main (the newest one committed).
fn running_commit(env: &Env, _v: u32) -> serde_json::Value {
    serde_json::Value::String(env.repo.branch("main").unwrap().unwrap().to_hex())
}

/// Without `ca_file` the server is checked against the system's roots (`SSL_CERT_FILE`
/// here, standing in for the distribution's bundle), and the refusal names them.
#[test]
fn without_ca_file_the_system_roots_decide() {
    let fleet_ca = Ca::new("fleet CA");
    let env = Env::with_tls(&fleet_ca.issue(&["localhost"], VALID));
    let ca = fleet_ca.write(env.path(), "fleet-ca");
    let other = Ca::new("another CA").write(env.path(), "other-ca");
    let config = https_device(&env, "device", "localhost", env.addr.port(), &ca, "");
    let text = std::fs::read_to_string(&config).unwrap();
    let text: String = text.lines().filter(|l| !l.starts_with("ca_file")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&config, text).unwrap();
    let v1 = env.commit(1, "1.0.0");
    let run = |bundle: &Path| {
        std::process::Command::new(crate::harness::ferryd_bin())
            .arg("--config")
            .arg(&config)
            .args(["update", "--json"])
            .env("SSL_CERT_FILE", bundle)
            .output()
            .unwrap()
    };
    let out = run(&other);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("the system's roots"), "{err}");
    let out = run(&ca);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["to"], v1.to_hex());
}

/// A server (or someone answering for it) that redirects does not lead the device
/// elsewhere: the redirect is an error, and the other host is never contacted.
#[test]
fn a_redirect_is_not_followed() {
    use std::io::{Read, Write};
    let env = Env::new();
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = elsewhere.local_addr().unwrap();
    elsewhere.set_nonblocking(true).unwrap();
    let redirector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = redirector.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in redirector.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let answer = format!(
                "HTTP/1.1 302 Found\r\nlocation: http://{target}/v1/branches/main\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = conn.write_all(answer.as_bytes());
        }
    });
    let config = env.device_via(addr, "retries = 1\n");
    let (ok, _, err) = ferryd(&config, &["update"]);
    assert!(!ok && err.contains("302"), "{err}");
    assert!(elsewhere.accept().is_err(), "the device followed the redirect");
}

/// Found in review: `insecure_http = false` promises the device never talks plain HTTP, but
/// the agent's HTTP client follows redirects, and a 307 from the https server (or the
/// TLS-terminating proxy in front of it) to an `http://` URL is followed with the request
/// body re-sent in clear: the enrollment request, fleet enrollment token and all, crosses
/// the network readable by anyone on the path, and the answer is taken from plain HTTP.
#[test]
fn a_redirect_to_plain_http_is_not_followed() {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    let fleet_ca = Ca::new("fleet CA");
    let env = Env::new();
    let ca = fleet_ca.write(env.path(), "fleet-ca");
    // What reaches the plain-HTTP address.
    let captured = Arc::new(Mutex::new(Vec::<u8>::new()));
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let plain_port = plain.local_addr().unwrap().port();
    {
        let captured = captured.clone();
        std::thread::spawn(move || {
            for s in plain.incoming() {
                let Ok(mut s) = s else { return };
                s.set_read_timeout(Some(std::time::Duration::from_millis(500))).unwrap();
                let mut buf = [0u8; 65536];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    captured.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                let _ =
                    s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
    }
    // The server behind TLS answers every request with a redirect to plain HTTP.
    let redirector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = redirector.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in redirector.incoming() {
            let Ok(mut s) = s else { return };
            s.set_read_timeout(Some(std::time::Duration::from_millis(300))).unwrap();
            let mut buf = [0u8; 65536];
            let _ = s.read(&mut buf);
            let answer = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{plain_port}/v1/device/enroll\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = s.write_all(answer.as_bytes());
        }
    });
    let front = ferry_fixtures::mitm::Mitm::start(upstream, &fleet_ca.issue(&["localhost"], VALID));
    let token_file = env.path().join("review-enrollment-token");
    std::fs::write(&token_file, "fe_REVIEW_SECRET_ENROLLMENT_TOKEN\n").unwrap();
    let config = https_device(
        &env,
        "device",
        "localhost",
        front.addr.port(),
        &ca,
        &format!("[fleet]\nenrollment_token_file = \"{}\"\nserial = \"SN-R\"\n", token_file.display()),
    );
    let (ok, out, err) = ferryd(&config, &["update"]);
    assert!(!ok, "{out}");
    std::thread::sleep(std::time::Duration::from_millis(800));
    let seen = String::from_utf8_lossy(&captured.lock().unwrap()).to_string();
    assert!(
        !seen.contains("REVIEW_SECRET"),
        "the device followed the redirect to http:// and sent its enrollment token in clear:\n{seen}\n(ferryd said: {err})"
    );
    assert!(seen.is_empty(), "the device made a plain-HTTP request:\n{seen}");
}
