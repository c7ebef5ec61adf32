//! ferry-publisher's integration tests: the `ferry` features, one module each.

mod attacks;
mod bad_input;
mod channels;
mod cli;
mod cmd;
mod corruption;
mod determinism;
mod export;
mod fleet_attacks;
mod fleet_cli;
mod fleet_db;
mod fleet_rules;
mod roundtrip;
mod serve;
mod tls;
mod web_ui;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ferry_publisher::import::{commit_tree, CommitRequest, CommitSummary, NoProgress, Progress};
use ferry_store::{ChunkParams, RepoConfig, Repository, SecretKey};

/// Small chunks, so small test files still span several chunks.
pub const SMALL: ChunkParams = ChunkParams { min_size: 64, avg_size: 256, max_size: 1024 };

pub fn init(dir: &Path, params: ChunkParams) -> Repository {
    Repository::init(&dir.join("repo"), &RepoConfig::new(params, 3)).unwrap()
}

pub fn key() -> SecretKey {
    ferry_fixtures::test_key(1)
}

pub fn request<'a>(tree: &Path, branch: &str, version: &str, key: &'a SecretKey) -> CommitRequest<'a> {
    CommitRequest {
        subject: format!("version {version}"),
        timestamp: Some(1_750_000_000),
        ..CommitRequest::new(tree, branch, version.parse().unwrap(), key)
    }
}

pub fn commit(repo: &Repository, tree: &Path, branch: &str, version: &str) -> anyhow::Result<CommitSummary> {
    commit_with(repo, tree, branch, version, &NoProgress)
}

pub fn commit_with(
    repo: &Repository,
    tree: &Path,
    branch: &str,
    version: &str,
    p: &dyn Progress,
) -> anyhow::Result<CommitSummary> {
    let k = key();
    commit_tree(repo, &request(tree, branch, version, &k), p)
}

/// What a tree looks like, path by path: kind, permission bits, owner, and content or target.
#[derive(Debug, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32, uid: u32, gid: u32 },
    File { mode: u32, uid: u32, gid: u32, content: Vec<u8> },
    Symlink { target: PathBuf },
}

pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn go(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        let path = root.join(rel);
        let m = std::fs::symlink_metadata(&path).unwrap();
        let (mode, uid, gid) = (m.mode() & 0o7777, m.uid(), m.gid());
        if m.is_dir() {
            out.insert(rel.to_path_buf(), Node::Dir { mode, uid, gid });
            for e in std::fs::read_dir(&path).unwrap() {
                go(root, &rel.join(e.unwrap().file_name()), out);
            }
        } else if m.file_type().is_symlink() {
            out.insert(rel.to_path_buf(), Node::Symlink { target: std::fs::read_link(&path).unwrap() });
        } else {
            out.insert(rel.to_path_buf(), Node::File { mode, uid, gid, content: std::fs::read(&path).unwrap() });
        }
    }
    let mut out = BTreeMap::new();
    go(root, Path::new(""), &mut out);
    out
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
