//! `ferry image`: its arguments and summary. Building the image is [`crate::image`].

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{human, open_ro, print_json, RepoArg};
use crate::image::{self, ImageRequest};

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// The release the image holds (id, unique prefix, or branch).
    #[arg(long, value_name = "REV")]
    commit: String,
    /// The hardware revision the image is for; the commit must be built for it.
    #[arg(long, value_name = "REV")]
    hardware: String,
    /// The image tree (created; must be empty).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The device's ferryd.toml; its paths are the device's.
    #[arg(long, value_name = "FILE")]
    device_config: PathBuf,
    /// Where the device reads its configuration.
    #[arg(long, value_name = "PATH", default_value = "/etc/ferry/ferryd.toml")]
    config_path: PathBuf,
    /// A directory copied into the image first (keys, enrollment token, units).
    /// Repeatable.
    #[arg(long, value_name = "DIR")]
    overlay: Vec<PathBuf>,
    /// Also write an ext4 file system image of the tree to FILE (needs --size).
    #[arg(long, value_name = "FILE", requires = "size")]
    raw: Option<PathBuf>,
    /// Size of the --raw image: bytes, or with K, M, G (e.g. 512M).
    #[arg(long, value_name = "SIZE", requires = "raw")]
    size: Option<String>,
    /// The agent binary (default: ferryd beside ferry, else on PATH).
    #[arg(long, value_name = "PATH")]
    ferryd: Option<PathBuf>,
    /// Print the result as JSON on stdout, for scripts.
    #[arg(long)]
    json: bool,
}

pub fn image(a: ImageArgs) -> Result<()> {
    let ImageArgs { repo, commit, hardware, out, device_config, config_path, overlay, raw, size, ferryd, json } = a;
    let r = open_ro(&repo)?;
    let raw = match (raw, size) {
        (Some(f), Some(s)) => Some((f, image::parse_size(&s)?)),
        _ => None,
    };
    let req = ImageRequest {
        commit: r.resolve(&commit)?,
        hardware,
        out,
        device_config,
        config_path,
        overlays: overlay,
        raw,
        ferryd: match ferryd {
            Some(p) => p,
            None => image::find_ferryd()?,
        },
    };
    let s = image::build(&r, &req)?;
    for m in &s.missing {
        eprintln!(
            "warning: the device configuration names {m}, which neither the overlays nor the release hold; add it with --overlay unless the device's base system has it"
        );
    }
    if json {
        return print_json(&s);
    }
    eprintln!(
        "image tree {}: release {} ({}) for {}, {} files{}",
        s.out.display(),
        s.version,
        &s.commit[..12],
        s.hardware,
        s.files,
        s.raw
            .as_ref()
            .map(|r| format!("; ext4 image {} ({})", r.display(), human(s.raw_bytes.unwrap_or(0))))
            .unwrap_or_default()
    );
    Ok(())
}
