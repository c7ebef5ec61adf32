//! commit → checkout is the identity: contents, modes, symlinks, ownership (as root).

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use ferry_publisher::checkout::checkout;
use ferry_publisher::import::NoProgress;
use ferry_store::Repository;
use proptest::prelude::*;

use crate::{commit, init, snapshot, SMALL};

#[derive(Debug, Clone)]
enum Spec {
    File { content: Vec<u8>, mode: u32 },
    Symlink { target: String },
    Dir { mode: u32 },
}

fn arb_spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        4 => (proptest::collection::vec(any::<u8>(), 0..5000), prop::sample::select(vec![0o644, 0o755, 0o600, 0o4755, 0o400, 0o1777]))
            .prop_map(|(content, mode)| Spec::File { content, mode }),
        1 => "[a-z./]{1,30}".prop_map(|target| Spec::Symlink { target }),
        1 => prop::sample::select(vec![0o755, 0o700, 0o555, 0o2775]).prop_map(|mode| Spec::Dir { mode }),
    ]
}

fn arb_tree() -> impl Strategy<Value = Vec<(Vec<String>, Spec)>> {
    proptest::collection::vec((proptest::collection::vec("[a-zA-Z0-9 _.-]{1,12}", 1..4), arb_spec()), 0..25)
}

/// Writes the generated entries; later entries that collide with earlier ones are skipped.
fn build(root: &Path, entries: &[(Vec<String>, Spec)]) {
    std::fs::create_dir(root).unwrap();
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    for (parts, spec) in entries {
        if parts.iter().any(|p| p == "." || p == "..") {
            continue;
        }
        let path = parts.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        let parent = path.parent().unwrap();
        if std::fs::create_dir_all(parent).is_err() || path.symlink_metadata().is_ok() {
            continue;
        }
        match spec {
            Spec::File { content, mode } => {
                std::fs::write(&path, content).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
            }
            Spec::Symlink { target } => symlink(target, &path).unwrap(),
            Spec::Dir { mode } => {
                std::fs::create_dir(&path).unwrap();
                dir_modes.push((path, *mode));
            }
        }
    }
    for (path, mode) in dir_modes.iter().rev() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
}

fn shared() -> &'static (tempfile::TempDir, Repository) {
    static REPO: OnceLock<(tempfile::TempDir, Repository)> = OnceLock::new();
    REPO.get_or_init(|| {
        let t = tempfile::tempdir().unwrap();
        let repo = init(t.path(), SMALL);
        (t, repo)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn commit_then_checkout_is_the_identity(entries in arb_tree()) {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let (t, repo) = shared();
        let src = t.path().join(format!("src{n}"));
        build(&src, &entries);
        // One version per commit: a version names one commit.
        let summary = commit(repo, &src, &format!("b{n}"), &(n + 1).to_string()).unwrap();
        let out = t.path().join(format!("out{n}"));
        checkout(repo, &summary.commit.parse().unwrap(), &out, &NoProgress).unwrap();
        prop_assert_eq!(snapshot(&src), snapshot(&out));
    }
}

#[test]
fn a_large_fixture_tree_round_trips_with_default_chunking() {
    let t = tempfile::tempdir().unwrap();
    let repo = init(t.path(), ferry_store::ChunkParams::default());
    let src = t.path().join("v1");
    ferry_fixtures::generate(&ferry_fixtures::TreeSpec { seed: 3, size: 6 << 20, version: 1 }, &src).unwrap();
    let s = commit(&repo, &src, "main", "1").unwrap();
    assert!(s.chunks > 20 && s.new_chunks <= s.chunks, "{s:?}");
    let out = t.path().join("out");
    checkout(&repo, &s.commit.parse().unwrap(), &out, &NoProgress).unwrap();
    assert_eq!(snapshot(&src), snapshot(&out));
}
