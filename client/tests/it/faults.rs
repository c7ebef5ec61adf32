//! Network faults between the agent and the server, injected by a TCP proxy on loopback.

use std::time::{Duration, Instant};

use ferry_fixtures::proxy::{Fault, Proxy};

use crate::harness::{ferryd, update, Env};

/// Installs v1, commits v2, and returns (env, proxy, device config through the proxy, the
/// number of chunks v1 → v2 needs).
fn setup(extra: &str) -> (Env, Proxy, std::path::PathBuf, u64) {
    let env = Env::new();
    let v1 = env.commit(1, "1");
    update(&env.device(""));
    let v2 = env.commit(2, "2");
    let proxy = Proxy::start(env.addr).unwrap();
    let config = env.device_via(proxy.addr, extra);
    let (a, b) = (env.repo.read_commit(&v1).unwrap(), env.repo.read_commit(&v2).unwrap());
    let cost = ferry_delta::transfer_cost(&env.repo, Some(&a), &b).unwrap();
    (env, proxy, config, cost.chunks)
}

#[test]
fn a_connection_dropped_mid_batch_resumes_without_receiving_any_chunk_twice() {
    let (env, proxy, config, chunks) = setup("batch_bytes = 1048576\n");
    // Well into the chunk responses (the metadata before them is a few KiB).
    proxy.arm(Fault::Cut(200_000));
    let s = update(&config);
    assert!(proxy.fired(), "the fault never fired: {s}");
    assert!(s["attempts"].as_u64().unwrap() >= 2, "{s}");
    // Every chunk frame was received completely exactly once.
    assert_eq!(s["chunks_downloaded"].as_u64().unwrap(), chunks, "{s}");
    assert!(std::fs::read_link(env.current()).unwrap().ends_with(s["to"].as_str().unwrap()));
    assert!(ferryd(&config, &["fsck"]).0);
}

#[test]
fn a_stalled_server_is_cut_by_the_read_timeout_and_the_update_completes() {
    let (env, proxy, config, chunks) = setup("read_timeout = 2\n");
    proxy.arm(Fault::Stall(150_000));
    let started = Instant::now();
    let s = update(&config);
    assert!(proxy.fired());
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    assert!(s["attempts"].as_u64().unwrap() >= 2, "{s}");
    assert_eq!(s["chunks_downloaded"].as_u64().unwrap(), chunks);
    assert!(std::fs::read_link(env.current()).unwrap().ends_with(s["to"].as_str().unwrap()));
}

#[test]
fn bytes_corrupted_on_the_wire_are_refused_naming_the_object() {
    // Plain chunks only: a patch damaged on the wire is the next test.
    let (env, proxy, config, _) = setup("patches = false\n");
    let before = std::fs::read_link(env.current()).unwrap();
    proxy.arm(Fault::Flip(120_000));
    let (ok, out, err) = ferryd(&config, &["update", "--json"]);
    assert!(proxy.fired());
    // The damaged frame was refused with its id named, then fetched again.
    assert!(err.contains("is corrupt") || err.contains("does not decode") || err.contains("zstd"), "{err}");
    assert!(ok, "{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(s["attempts"].as_u64().unwrap() >= 2);
    assert_ne!(std::fs::read_link(env.current()).unwrap(), before);
    assert!(ferryd(&config, &["fsck"]).0);
}

#[test]
fn a_patch_damaged_on_the_wire_is_detected_and_its_chunks_come_again() {
    let (env, proxy, config, chunks) = setup("");
    let before = std::fs::read_link(env.current()).unwrap();
    // Inside the patch response (the metadata before it is a few KiB).
    proxy.arm(Fault::Flip(60_000));
    let (ok, out, err) = ferryd(&config, &["update", "--json"]);
    assert!(proxy.fired());
    assert!(ok, "{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    // Either the patch failed to decode or verify (its chunks then came plain in the same
    // attempt), or the frame header was hit and the batch was asked again.
    let fell_back = s["patch_fallbacks"].as_u64().unwrap() > 0;
    assert!(fell_back || s["attempts"].as_u64().unwrap() >= 2, "{s}\n{err}");
    if fell_back {
        assert!(err.contains("patch unusable"), "{err}");
    }
    assert_eq!(s["chunks_downloaded"].as_u64().unwrap(), chunks, "{s}");
    assert_ne!(std::fs::read_link(env.current()).unwrap(), before);
    assert!(ferryd(&config, &["fsck"]).0);
}

#[test]
fn a_patch_response_cut_midway_resumes_with_what_is_still_missing() {
    // Small batches, so the cut lands between patches of one response.
    let (env, proxy, config, chunks) = setup("batch_bytes = 262144\n");
    proxy.arm(Fault::Cut(40_000));
    let s = update(&config);
    assert!(proxy.fired());
    assert!(s["attempts"].as_u64().unwrap() >= 2, "{s}");
    assert!(s["chunks_patched"].as_u64().unwrap() > 0, "{s}");
    // Every missing chunk arrived whole exactly once, patched or plain.
    assert_eq!(s["chunks_downloaded"].as_u64().unwrap(), chunks, "{s}");
    assert!(std::fs::read_link(env.current()).unwrap().ends_with(s["to"].as_str().unwrap()));
    assert!(ferryd(&config, &["fsck"]).0);
}

#[test]
fn a_server_killed_and_restarted_mid_update() {
    let (mut env, proxy, config, chunks) = setup("batch_bytes = 262144\nretries = 8\n");
    let child = crate::harness::spawn_update(&config);
    let start = proxy.bytes();
    let deadline = Instant::now() + Duration::from_secs(20);
    while proxy.bytes() < start + 100_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    env.kill_server();
    std::thread::sleep(Duration::from_millis(300));
    env.restart_server();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(s["attempts"].as_u64().unwrap() >= 2, "the kill did not interrupt the update: {s}");
    assert_eq!(s["chunks_downloaded"].as_u64().unwrap(), chunks, "{s}");
    assert!(std::fs::read_link(env.current()).unwrap().ends_with(s["to"].as_str().unwrap()));
}

/// A server (or a man in the middle) sending a byte every second never trips the read
/// timeout; it used to hold `ferryd` for as long as it liked. The progress watchdog cuts it
/// once a `read_timeout` window brings less than the minimum rate, and the update completes
/// on the next attempt.
#[test]
fn a_server_trickling_a_byte_a_second_is_cut_and_the_update_completes() {
    let (env, proxy, config, chunks) = setup("read_timeout = 3\n");
    proxy.arm(Fault::Trickle(150_000, Duration::from_secs(1)));
    let started = Instant::now();
    let mut child = crate::harness::spawn_update(&config);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("ferryd was still held by the trickling server after {:?}", started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    assert!(status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(proxy.fired());
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(s["attempts"].as_u64().unwrap() >= 2, "{s}");
    assert_eq!(s["chunks_downloaded"].as_u64().unwrap(), chunks);
    assert!(std::fs::read_link(env.current()).unwrap().ends_with(s["to"].as_str().unwrap()));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("less than 1024 bytes a second"), "{log}");
}
