//! Running `ferry` as a user does, and `ferry serve` in the background or in this process:
//! the helpers the command-line and server tests share.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

/// `ferry ARGS`, with none of the environment variables that would change its defaults.
pub fn ferry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env_remove("FERRY_REPO")
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("FERRY_SERVER")
        .env_remove("FERRY_TOKEN")
        .output()
        .unwrap()
}

/// `ferry ARGS`, which must succeed; its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = ferry(args);
    assert!(out.status.success(), "ferry {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `ferry ARGS`, which must fail with exit code 2 and an `error:` naming `expect`.
pub fn fails_with(args: &[&str], expect: &str) {
    let out = ferry(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "ferry {args:?} should fail: {stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains(expect), "expected {expect:?} in: {stderr}");
}

/// `ferry serve` as its own process; killed when dropped. `.1` is its base URL.
pub struct Serve(pub Child, pub String);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ferry serve --repo REPO --listen 127.0.0.1:0 EXTRA...` and waits for its address.
pub fn serve(repo: &str, extra: &[&str]) -> Serve {
    serve_logging(repo, extra, Stdio::null())
}

/// [`serve`], its log (stderr) going to `log`.
pub fn serve_logging(repo: &str, extra: &[&str], log: impl Into<Stdio>) -> Serve {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--repo", repo, "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("listening on ").expect("a listening line").to_string();
    Serve(child, url)
}

/// The server in this process, in a runtime of its own; returns it and the API's base URL
/// (`http://ADDR/v1`).
pub fn serve_here(repo: PathBuf, scratch: PathBuf) -> (tokio::runtime::Runtime, String) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        ferry_publisher::serve::serve(
            repo,
            scratch,
            "127.0.0.1:0".parse().unwrap(),
            move |a| tx.send(a).unwrap(),
            std::future::pending(),
        )
        .await
        .unwrap()
    });
    let base = format!("http://{}/v1", rx.recv().unwrap());
    (rt, base)
}
