//! Per-component throughput: FastCDC chunking, BLAKE3 hashing, zstd compression and the
//! canonical tree encoding, on 64 MiB of fixture-like data. Prints MiB/s.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferry_delta::Chunker;
use ferry_store::{ChunkParams, ChunkRef, Entry, EntryKind, Id, Meta, Tree};

fn data() -> Vec<u8> {
    let t = tempfile::tempdir().expect("temp dir");
    let out = t.path().join("tree");
    ferry_fixtures::generate(&ferry_fixtures::TreeSpec { seed: 7, size: 64 << 20, version: 1 }, &out)
        .expect("fixture tree");
    let mut all = Vec::new();
    for lib in std::fs::read_dir(out.join("lib")).expect("lib dir") {
        let p = lib.expect("entry").path();
        if !p.is_symlink() {
            all.extend(std::fs::read(p).expect("read"));
        }
    }
    all
}

fn components(c: &mut Criterion) {
    let bytes = data();
    let chunker = Chunker::new(ChunkParams::default()).expect("default params");
    let mut g = c.benchmark_group("components");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("fastcdc-v2020 64K avg", |b| b.iter(|| black_box(chunker.cut_points(&bytes)).len()));
    g.bench_function("blake3 per chunk", |b| {
        let cuts = chunker.cut_points(&bytes);
        b.iter(|| {
            for (off, len) in &cuts {
                black_box(Id::of(&bytes[*off as usize..*off as usize + len]));
            }
        })
    });
    g.bench_function("zstd level 3 per chunk", |b| {
        let cuts = chunker.cut_points(&bytes);
        b.iter(|| {
            let mut total = 0;
            for (off, len) in &cuts {
                total += zstd::bulk::compress(&bytes[*off as usize..*off as usize + len], 3).expect("zstd").len();
            }
            black_box(total)
        })
    });
    g.finish();

    let tree = Tree {
        meta: Meta { mode: 0o755, ..Meta::default() },
        entries: (0..10_000)
            .map(|i: u32| Entry {
                name: format!("file{i:06}").into_bytes(),
                kind: EntryKind::File {
                    meta: Meta { mode: 0o644, ..Meta::default() },
                    size: 65536,
                    chunks: vec![ChunkRef { id: Id::of(&i.to_le_bytes()), len: 65536 }],
                },
            })
            .collect(),
    };
    let encoded = tree.encode().expect("encode");
    let mut g = c.benchmark_group("encoding");
    g.throughput(Throughput::Bytes(encoded.len() as u64));
    g.bench_function("tree encode 10k entries", |b| b.iter(|| black_box(tree.encode().expect("encode"))));
    g.bench_function("tree decode 10k entries", |b| b.iter(|| black_box(Tree::decode(&encoded).expect("decode"))));
    g.finish();
}

criterion_group!(benches, components);
criterion_main!(benches);
