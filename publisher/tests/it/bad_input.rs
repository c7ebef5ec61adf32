//! Trees ferry must refuse: each gets an error naming the path, and nothing is committed.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ferry_publisher::import::Progress;

use crate::{commit, commit_with, init, is_root, SMALL};

fn tree_with(dir: &Path) -> std::path::PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/ok.txt"), "fine").unwrap();
    tree
}

fn check_refused(make: impl FnOnce(&Path) -> std::path::PathBuf, expected: &str) {
    let t = tempfile::tempdir().unwrap();
    let repo = init(t.path(), SMALL);
    let tree = tree_with(t.path());
    let bad = make(&tree);
    let err = commit(&repo, &tree, "main", "1").unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&bad.display().to_string()) && msg.contains(expected), "{msg}");
    assert_eq!(repo.branch("main").unwrap(), None, "something was committed");
}

#[test]
fn fifos_are_refused() {
    check_refused(
        |tree| {
            let p = tree.join("sub/pipe");
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
            p
        },
        "fifo",
    );
}

#[test]
fn sockets_are_refused() {
    check_refused(
        |tree| {
            let p = tree.join("sock");
            let _listener = std::os::unix::net::UnixListener::bind(&p).unwrap();
            p
        },
        "socket",
    );
}

#[test]
fn device_nodes_are_refused() {
    if !is_root() {
        // mknod needs CAP_MKNOD; the socket and fifo tests cover the same refusal path.
        eprintln!("device node test needs root: covered by fifo/socket refusal in this run");
        return;
    }
    check_refused(
        |tree| {
            let p = tree.join("null");
            nix::sys::stat::mknod(
                &p,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(1, 3),
            )
            .unwrap();
            p
        },
        "device node",
    );
}

/// Changes a file after the walk, before the files are read.
struct Meddler(std::path::PathBuf);

impl Progress for Meddler {
    fn set_total(&self, _bytes: u64) {
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.0).unwrap();
        std::io::Write::write_all(&mut f, b" and more").unwrap();
    }
}

/// Adds a file to a directory after the walk.
struct Adder(std::path::PathBuf);

impl Progress for Adder {
    fn set_total(&self, _bytes: u64) {
        std::fs::write(self.0.join("late.txt"), "late").unwrap();
    }
}

#[test]
fn a_tree_that_changes_while_committed_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let repo = init(t.path(), SMALL);
    let tree = tree_with(t.path());
    let file = tree.join("sub/ok.txt");
    let err = commit_with(&repo, &tree, "main", "1", &Meddler(file.clone())).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("changed while it was being committed") && msg.contains("ok.txt"), "{msg}");
    assert_eq!(repo.branch("main").unwrap(), None);

    let err = commit_with(&repo, &tree, "main", "1", &Adder(tree.join("sub"))).unwrap_err();
    assert!(format!("{err:#}").contains("sub"), "{err:#}");
    assert_eq!(repo.branch("main").unwrap(), None);
}

#[test]
fn an_unreadable_file_is_named() {
    let t = tempfile::tempdir().unwrap();
    let tree = tree_with(t.path());
    let secret = tree.join("sub/secret");
    std::fs::write(&secret, "no").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    if is_root() {
        // Root reads anything: run the real `ferry` as user nobody, who owns all but the file.
        use std::os::unix::fs::chown;
        let nobody = 65534;
        let repo = t.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        let key = t.path().join("k");
        crate::key().save(&key).unwrap();
        for p in [t.path(), &repo, &key, &tree, &tree.join("sub"), &tree.join("sub/ok.txt")] {
            chown(p, Some(nobody), Some(nobody)).unwrap();
        }
        let run = |args: &[&str]| {
            std::process::Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_ferry")])
                .args(args)
                .output()
                .unwrap()
        };
        let r = repo.to_str().unwrap();
        let out = run(&["init", "--repo", r]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = run(&[
            "commit",
            "--repo",
            r,
            "--branch",
            "main",
            "--tree",
            tree.to_str().unwrap(),
            "--version",
            "1",
            "--sign-key",
            key.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(&secret.display().to_string()) && stderr.contains("Permission denied"), "{stderr}");
        let out = run(&["log", "--repo", r, "--branch", "main"]);
        assert!(!out.status.success(), "a commit was made");
    } else {
        let repo = init(t.path(), SMALL);
        let err = commit(&repo, &tree, "main", "1").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(&secret.display().to_string()), "{msg}");
        assert_eq!(repo.branch("main").unwrap(), None);
    }
}

#[test]
fn the_root_must_be_a_directory() {
    let t = tempfile::tempdir().unwrap();
    let repo = init(t.path(), SMALL);
    let f = t.path().join("file");
    std::fs::write(&f, "x").unwrap();
    assert!(format!("{:#}", commit(&repo, &f, "main", "1").unwrap_err()).contains("not a directory"));
    assert!(format!("{:#}", commit(&repo, &t.path().join("nope"), "main", "1").unwrap_err()).contains("nope"));
}
