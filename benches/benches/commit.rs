//! `commit` throughput on a generated tree of at least 256 MiB (FERRY_BENCH_SIZE, in MiB, to
//! change it): into an empty repository (every chunk new: chunk, hash, compress, write) and
//! into one that already holds the tree (chunk and hash only). Prints MiB/s of tree read.
//!
//! The tree is generated once into $FERRY_BENCH_CACHE (default ~/.cache/ferry-bench).

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ferry_publisher::import::{commit_tree, CommitRequest, NoProgress};
use ferry_store::{ChunkParams, RepoConfig, Repository};

fn tree() -> (PathBuf, u64) {
    let mib: u64 = std::env::var("FERRY_BENCH_SIZE").ok().and_then(|s| s.parse().ok()).unwrap_or(256);
    let cache = ferry_benches::cache_dir();
    let dir = cache.join(format!("tree-{mib}M-seed1-v1"));
    if !dir.join("etc/version").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&cache).expect("cache dir");
        ferry_fixtures::generate(&ferry_fixtures::TreeSpec { seed: 1, size: mib << 20, version: 1 }, &dir)
            .expect("fixture tree");
    }
    let bytes = walk_size(&dir);
    (dir, bytes)
}

fn walk_size(p: &std::path::Path) -> u64 {
    let m = std::fs::symlink_metadata(p).expect("stat");
    if m.is_dir() {
        std::fs::read_dir(p).expect("read_dir").map(|e| walk_size(&e.expect("entry").path())).sum()
    } else if m.is_file() {
        m.len()
    } else {
        0
    }
}

fn commit(c: &mut Criterion) {
    let (dir, bytes) = tree();
    let key = ferry_fixtures::test_key(1);
    let request = |branch: &str| CommitRequest::new(&dir, branch, "1".parse().expect("version"), &key);
    let config = RepoConfig::new(ChunkParams::default(), 3);
    let mut g = c.benchmark_group("commit");
    g.sample_size(10);
    g.measurement_time(std::time::Duration::from_secs(20));
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function(format!("{} MiB tree, empty repository", bytes >> 20), |b| {
        b.iter_batched(
            || {
                let t = tempfile::tempdir().expect("temp dir");
                let repo = Repository::init(&t.path().join("repo"), &config).expect("init");
                (t, repo)
            },
            |(_t, repo)| commit_tree(&repo, &request("main"), &NoProgress).expect("commit"),
            BatchSize::PerIteration,
        )
    });
    let t = tempfile::tempdir().expect("temp dir");
    let repo = Repository::init(&t.path().join("repo"), &config).expect("init");
    commit_tree(&repo, &request("main"), &NoProgress).expect("first commit");
    let mut n = 0;
    g.bench_function(format!("{} MiB tree, all chunks present", bytes >> 20), |b| {
        b.iter(|| {
            n += 1;
            commit_tree(&repo, &request(&format!("b{n}")), &NoProgress).expect("commit")
        })
    });
    g.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
