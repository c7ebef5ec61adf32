//! Everything a run boots against, built once per run in its work directory: the
//! repository (keys, the releases, channel `stable` at release 1), `ferry serve` in a tokio
//! runtime of its own (reached from the guest as 10.0.2.2), the initramfs, and the device's
//! disk: `ferry image` of release 1 with the device's own files and ferryd's configuration,
//! behind an MBR for a bootloader run. Each release is a whole root file system (the guest's
//! software, the application, the payload that makes the update big), which the initramfs
//! mounts as `/` with the shipped `ferry-prepare-root`; the partition holds only Ferry's
//! state (under /var), /etc's overrides and the bootloader's files.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_publisher::channels::{self, KeyChange, Promotion};
use ferry_publisher::import::{commit_tree, CommitRequest, NoProgress};
use ferry_store::{ChunkParams, Id, RepoConfig, Repository, SecretKey};

use crate::arch::GUEST;
use crate::bootloader::{boot_disk, Loader};
use crate::guest::{self, STATE_DIR};
use crate::host::{now, run};

/// A run's repository, server and disks.
pub struct Rig {
    /// The run's work directory.
    pub work: PathBuf,
    /// The kernel QEMU boots directly in the power-cut runs.
    pub vmlinuz: PathBuf,
    /// The initramfs that mounts the disk and switches to it.
    pub initrd: PathBuf,
    /// The disk as the factory ships it: release 1 deployed; each boot copies it.
    pub base: PathBuf,
    /// The releases, in order: 1 and 2, and for a bootloader run 3 (init fails) and 4
    /// (the kernel cannot start).
    pub commits: Vec<Id>,
    repo: Repository,
    channel_key: SecretKey,
    server: tokio::runtime::Runtime,
}

impl Rig {
    /// Builds the rig of a power-cut run (`loader` none) or of a bootloader run, with
    /// release trees of `tree_mib` MiB.
    pub fn build(
        loader: Option<Loader>,
        tree_mib: u64,
        vmlinuz: &Path,
        modules: &Path,
        ferryd: &Path,
        work: &Path,
    ) -> Result<Rig> {
        let initrd = work.join("initrd.cpio");
        guest::initramfs(modules, &initrd)?;

        // The repository: keys, the releases for rev-a, channel stable at 1.
        let repo_path = work.join("repo");
        let repo = Repository::init(&repo_path, &RepoConfig::new(ChunkParams::default(), 3))?;
        let (root, ci, channel_key) =
            (ferry_fixtures::test_key(10), ferry_fixtures::test_key(1), ferry_fixtures::test_key(11));
        root.save(&work.join("root.key"))?;
        let change = KeyChange {
            roots: Some(vec![root.public()]),
            commit_keys: Some(vec![ci.public()]),
            channel_keys: Some(vec![channel_key.public()]),
            ..KeyChange::default()
        };
        channels::set_keys(&repo, &[root], change, now())?;
        // The agent the releases carry: the build's, without its debug information (a third
        // of the size: the releases and the image stay small).
        let guest_ferryd = work.join("ferryd");
        run(std::process::Command::new("strip").arg("--strip-debug").arg("-o").arg(&guest_ferryd).arg(ferryd))?;
        let commits = releases(&repo, &ci, loader, tree_mib, (vmlinuz, &initrd, &guest_ferryd), work)?;
        promote(&repo, &channel_key, commits[0])?;

        let (server, addr) = serve(&repo_path, work)?;
        let base = disk(&repo, commits[0], loader, addr, ferryd, work)?;
        Ok(Rig {
            work: work.to_path_buf(),
            vmlinuz: vmlinuz.to_path_buf(),
            initrd,
            base,
            commits,
            repo,
            channel_key,
            server,
        })
    }

    /// Points channel `stable` at `commit`.
    pub fn promote(&self, commit: Id) -> Result<()> {
        promote(&self.repo, &self.channel_key, commit)
    }

    /// Stops the server without waiting for its tasks.
    pub fn shutdown(self) {
        self.server.shutdown_background();
    }
}

fn promote(repo: &Repository, key: &SecretKey, commit: Id) -> Result<()> {
    let p = Promotion {
        to: "stable".into(),
        commit: Some(commit),
        from: None,
        hardware: Vec::new(),
        keys: std::slice::from_ref(key),
        expires_in: 30 * 86400,
        rollback: false,
        force: false,
        create: true,
        now: now(),
    };
    channels::promote(repo, &p)?;
    Ok(())
}

/// Commits the releases, each a root file system: a generated tree (the payload), the
/// guest's software with `ferryd` (`guest::release_root`) and the application in `app/`.
/// With a bootloader each release carries its kernel and initramfs (the bootloader loads
/// them from the deployment); release 3's init fails, and release 4's kernel is damaged.
/// Releases after the first reboot to be tried.
fn releases(
    repo: &Repository,
    ci: &SecretKey,
    loader: Option<Loader>,
    tree_mib: u64,
    (vmlinuz, initrd, ferryd): (&Path, &Path, &Path),
    work: &Path,
) -> Result<Vec<Id>> {
    let mut commits = Vec::new();
    let broken = work.join("broken-initrd.cpio");
    if loader.is_some() {
        guest::broken_initramfs(&broken)?;
    }
    for v in 1..=(if loader.is_some() { 4 } else { 2 }) {
        let tree = work.join(format!("tree-{v}"));
        ferry_fixtures::generate(&ferry_fixtures::TreeSpec { seed: 7, size: tree_mib << 20, version: v }, &tree)?;
        guest::release_root(&tree, ferryd, loader)?;
        std::fs::create_dir_all(tree.join("app"))?;
        // The application: it says once a second that it runs, and which release it is; the
        // trial's health check asks whether the running one is the release on trial.
        std::fs::write(tree.join("app/version"), format!("1.{v}.0\n"))?;
        std::fs::write(
            tree.join("app/run"),
            "cd \"$(dirname \"$0\")\" || exit 1\nversion=\"$(cat version)\"\nwhile :; do echo \"$version\" > /run/app.alive.tmp && mv /run/app.alive.tmp /run/app.alive; sleep 1; done\n",
        )?;
        std::fs::write(tree.join("app/check"), "[ \"$(cat /run/app.alive 2>/dev/null)\" = \"$(cat app/version)\" ]\n")?;
        let mut metadata = BTreeMap::new();
        if loader.is_some() {
            std::fs::create_dir_all(tree.join("boot"))?;
            if v == 4 {
                let mut kernel = std::fs::read(vmlinuz)?;
                // A damaged download would be caught by its hash: this is a release built
                // with a kernel that cannot start (its boot header overwritten).
                kernel[..4096].fill(0x5a);
                std::fs::write(tree.join("boot").join(GUEST.release_kernel), kernel)?;
            } else {
                std::fs::copy(vmlinuz, tree.join("boot").join(GUEST.release_kernel))?;
            }
            std::fs::copy(if v == 3 { &broken } else { initrd }, tree.join("boot/initrd.img"))?;
            if v > 1 {
                metadata.insert("reboot".to_string(), "required".to_string());
            }
        }
        let req = CommitRequest {
            hardware: vec!["rev-a".into()],
            metadata,
            ..CommitRequest::new(tree, "main", format!("1.{v}.0").parse()?, ci)
        };
        commits.push(commit_tree(repo, &req, &NoProgress)?.commit.parse::<Id>()?);
    }
    Ok(commits)
}

/// `ferry serve` on 127.0.0.1, in a runtime of its own; the runtime and its address.
fn serve(repo_path: &Path, work: &Path) -> Result<(tokio::runtime::Runtime, SocketAddr)> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (atx, arx) = mpsc::channel();
    let (repo2, scratch) = (repo_path.to_path_buf(), work.join("serve-scratch"));
    rt.spawn(async move {
        let config = ferry_publisher::serve::ServeConfig::default();
        let r = ferry_publisher::serve::serve_with(
            repo2,
            scratch,
            "127.0.0.1:0".parse().expect("an address"),
            &config,
            move |a| {
                let _ = atx.send(a);
            },
            std::future::pending(),
        )
        .await;
        if let Err(e) = r {
            eprintln!("error: the server stopped: {e:#}");
        }
    });
    let addr = arx.recv_timeout(Duration::from_secs(30)).context("the server did not start")?;
    Ok((rt, addr))
}

/// The disk: the partition with Ferry's state and release `first` deployed, built by ferry
/// image, and the device's own files (`guest::device_overlay`), for a device that reaches
/// the server at `addr`; the path of the disk.
fn disk(
    repo: &Repository,
    first: Id,
    loader: Option<Loader>,
    addr: SocketAddr,
    ferryd: &Path,
    work: &Path,
) -> Result<PathBuf> {
    let overlay = work.join("overlay");
    std::fs::create_dir_all(&overlay)?;
    let root_pub = work.join("root.key.pub");
    let first_hex = first.to_hex();
    let state = STATE_DIR;
    guest::device_overlay(&overlay, &root_pub, loader.map(|l| (l, first_hex.as_str())))?;
    let device_config = work.join("ferryd.toml");
    // With a bootloader: a trial that only `mark-good` ends (nothing marks it: the bootloader must roll back),
    // and a reboot that is a power-off (the harness boots again).
    let trial = match loader {
        Some(l) => format!(
            "reboot_command = \"sync; poweroff -f\"\n\n[bootloader]\n{}\n\n[health]\nrequire_mark_good = true\ndeadline = 3600\nbootlimit = 2\n",
            l.ferryd_config()
        ),
        None => "restart_command = \"/sbin/app-restart\"\n\n[health]\ncommands = [\"sh app/check\"]\ndeadline = 120\ninterval = 1\n"
            .to_string(),
    };
    std::fs::write(
        &device_config,
        format!(
            "insecure_http = true\nserver = \"http://10.0.2.2:{port}\"\nchannel = \"stable\"\nroot_keys = [\"/etc/ferry/root.pub\"]\nstate_dir = \"{state}\"\ncurrent_link = \"{state}/current\"\nhardware = \"rev-a\"\nretries = 2\nread_timeout = 20\nbatch_bytes = 4194304\n{trial}",
            port = addr.port()
        ),
    )?;
    let base = work.join("base.img");
    let part = work.join("part.img");
    let image = ferry_publisher::image::build(
        repo,
        &ferry_publisher::image::ImageRequest {
            commit: first,
            hardware: "rev-a".into(),
            out: work.join("image"),
            device_config,
            config_path: "/etc/ferry/ferryd.toml".into(),
            overlays: vec![overlay],
            raw: Some((if loader.is_some() { part.clone() } else { base.clone() }, 512 << 20)),
            ferryd: ferryd.to_path_buf(),
        },
    )?;
    if let Some(l) = loader {
        boot_disk(l, &part, &base, &first_hex)?;
    }
    eprintln!("disk image: release {} ({} files), {}", image.version, image.files, base.display());
    Ok(base)
}
