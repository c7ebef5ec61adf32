//! What a hostile server, or a man in the middle, cannot make the agent do: allocate by what
//! it claims rather than by what is signed (issue 18, item 8). Each answer is forged by an
//! HTTP interceptor in front of the real server; the agent's peak memory is measured by GNU
//! time (`harness::ferryd_peak`).

use ferry_fixtures::intercept::{response, Interceptor};

use crate::harness::{ferryd_peak, update, Env};

/// A compressed trees answer of a few KB declaring (and expanding to) 256 MiB used to take
/// `ferryd` to 281 MB before a single tree was checked. It is now decompressed as it
/// arrives and refused at its first frame, and the trees come again uncompressed.
#[test]
fn a_compressed_trees_bomb_is_refused_without_being_held() {
    let env = Env::new();
    env.commit(1, "1");
    update(&env.device(""));
    let v2 = env.commit(2, "2");
    let mut bomb = zstd::stream::Encoder::new(Vec::new(), 19).unwrap();
    bomb.set_pledged_src_size(Some(256 << 20)).unwrap();
    bomb.include_contentsize(true).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        std::io::Write::write_all(&mut bomb, &zeros).unwrap();
    }
    let bomb = bomb.finish().unwrap();
    assert!(bomb.len() < 64 << 10, "the bomb is {} bytes", bomb.len());
    let evil = Interceptor::start(env.addr, move |r| {
        (r.method == "POST" && r.path == "/v1/trees" && r.body.get(64) == Some(&1))
            .then(|| response("200 OK", "application/zstd", &bomb))
    })
    .unwrap();
    let config = env.device_via(evil.addr, "");
    let (ok, out, err, peak) = ferryd_peak(&config, &["update", "--json"]);
    assert!(ok, "{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["to"], v2.to_hex());
    assert_eq!(evil.answered(), 1, "the forged answer was asked for once");
    assert!(err.contains("compressed trees unusable"), "{err}");
    assert!(peak < 96 << 20, "ferryd peaked at {} MiB", peak >> 20);
}
