//! Chunking: golden cut points, determinism, and streaming equal to in-memory chunking.

use ferry_delta::Chunker;
use ferry_store::{ChunkParams, Id};
use proptest::prelude::*;

/// 1 MiB of fixed pseudo-random bytes (SplitMix64, seed 42).
fn golden_input() -> Vec<u8> {
    let mut rng = ferry_fixtures::rng::Rng::new(42);
    let mut buf = vec![0u8; 1 << 20];
    rng.fill(&mut buf);
    buf
}

#[test]
fn golden_cut_points_and_ids_are_pinned() {
    // These pin FastCDC v2020's behaviour with the default parameters. If a dependency
    // upgrade moves them, every stored chunk stops matching: that must never pass silently.
    let input = golden_input();
    let chunker = Chunker::new(ChunkParams::default()).unwrap();
    let cuts: Vec<u64> = chunker.cut_points(&input).iter().map(|(off, _)| *off).collect();
    assert_eq!(cuts, GOLDEN_CUTS);
    let ids: Vec<String> = chunker
        .cut_points(&input)
        .iter()
        .take(2)
        .map(|(off, len)| Id::of(&input[*off as usize..*off as usize + len]).to_hex())
        .collect();
    assert_eq!(ids, GOLDEN_IDS);
}

const GOLDEN_CUTS: &[u64] =
    &[0, 106594, 181802, 200872, 306095, 372155, 465050, 621080, 663787, 800417, 920805, 990452, 1040563];
const GOLDEN_IDS: &[&str] = &[
    "330ccecf68931893b36d5cab55a5d064663b8edafd4337ddeb3553fde69fb10f",
    "2b4edf0a9db9a34200a5616b76a0feb04df208ba1963b981d7ebd99932e4d283",
];

#[test]
fn invalid_parameters_are_refused() {
    for (min, avg, max) in [(10, 256, 1024), (64, 100, 1024), (64, 256, 1 << 25), (4096, 1024, 8192), (65, 256, 1024)] {
        let p = ChunkParams { min_size: min, avg_size: avg, max_size: max };
        assert!(Chunker::new(p).is_err(), "{p:?} accepted");
    }
}

proptest! {
    #[test]
    fn streaming_matches_in_memory_and_covers_the_input(
        data in proptest::collection::vec(any::<u8>(), 0..20_000),
        seed in any::<u64>(),
    ) {
        let mut data = data;
        // Mix in some low-entropy stretches so that both cut paths are exercised.
        let mut rng = ferry_fixtures::rng::Rng::new(seed);
        if !data.is_empty() { let at = rng.below(data.len() as u64) as usize; data[at..].iter_mut().step_by(3).for_each(|b| *b = 0); }
        let chunker = Chunker::new(ChunkParams { min_size: 64, avg_size: 256, max_size: 1024 }).unwrap();
        let streamed: Vec<Vec<u8>> = chunker.chunks(&data[..]).collect::<Result<_, _>>().unwrap();
        let cuts = chunker.cut_points(&data);
        prop_assert_eq!(streamed.len(), cuts.len());
        for (chunk, (off, len)) in streamed.iter().zip(&cuts) {
            prop_assert_eq!(&chunk[..], &data[*off as usize..*off as usize + len]);
            prop_assert!(chunk.len() <= 1024);
        }
        prop_assert_eq!(streamed.concat(), data.clone());
        // Deterministic: the same bytes give the same cuts.
        prop_assert_eq!(chunker.cut_points(&data), cuts);
    }

    /// An edit in the middle of a file leaves the chunks well before and after it intact:
    /// the property that makes content-defined chunking worth its cost.
    #[test]
    fn an_insertion_disturbs_only_nearby_chunks(at in 0usize..200_000, insert in proptest::collection::vec(any::<u8>(), 1..100)) {
        let base = golden_input()[..300_000].to_vec();
        let mut edited = base.clone();
        let n = insert.len();
        edited.splice(at..at, insert);
        let chunker = Chunker::new(ChunkParams { min_size: 2048, avg_size: 8192, max_size: 32768 }).unwrap();
        let ids = |d: &[u8]| -> std::collections::HashSet<Id> {
            chunker.cut_points(d).iter().map(|(o, l)| Id::of(&d[*o as usize..*o as usize + l])).collect()
        };
        let after = ids(&edited);
        // Every chunk that ends before the edit survives (cuts are found left to right; the
        // byte just after a cut decides it, hence `end < at`), and
        // every chunk starting more than four maximum chunk sizes after it survives too (the
        // cut points have resynchronised by then).
        for (off, len) in chunker.cut_points(&base) {
            let (start, end) = (off as usize, off as usize + len);
            if end < at || start >= at + n + 4 * 32768 {
                prop_assert!(after.contains(&Id::of(&base[start..end])), "chunk at {} lost for an edit at {}", start, at);
            }
        }
    }
}
