//! What the device runs now, read from the switch symlink.

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use crate::Config;

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub current_link: PathBuf,
    /// Where the link points, or `None` before the first deployment.
    pub deployment: Option<PathBuf>,
    pub branch: String,
    pub server: String,
    pub hardware: Option<String>,
}

pub fn status(config: &Config) -> Result<Status> {
    Ok(Status {
        current_link: config.current_link.clone(),
        deployment: ferry_boot::current_target(&config.current_link)?,
        branch: config.branch.clone(),
        server: config.server.clone(),
        hardware: config.hardware.clone(),
    })
}
