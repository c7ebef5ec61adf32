//! `ferryd`'s configuration file (TOML).
//!
//! ```toml
//! server = "https://updates.example.com"   # required: the ferry server's base URL
//! branch = "stable"                         # required: the branch this device follows
//! state_dir = "/var/lib/ferry"              # default: /var/lib/ferry
//! current_link = "/opt/example/current"     # required: the symlink switched on update
//! trusted_keys = ["/etc/ferry/ci.pub"]      # required, at least one: commit signing keys
//! hardware = "board-rev-b"                  # optional: this device's hardware revision
//! poll_interval = 3600                      # seconds between checks (±10% jitter); default 3600
//! read_timeout = 30                         # seconds without a byte before a transfer is cut; default 30
//! retries = 5                               # attempts per update before giving up; default 5
//! concurrency = 2                           # chunk requests in flight; default 2
//! batch_bytes = 67108864                    # chunk bytes (uncompressed) per request; default 64 MiB
//! min_free_bytes = 16777216                 # space an update must leave free; default 16 MiB
//! ```
//!
//! This build speaks plain HTTP only; TLS arrives with the fleet server. Until then, put the
//! server behind a VPN or a TLS-terminating proxy on the device's side.
//!
//! Unknown keys are errors (a typo must not silently fall back to a default). Every trusted
//! key file is loaded and checked (weak keys refused) when the configuration is read.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ferry_store::PublicKey;
use serde::{Deserialize, Serialize};

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/ferry")
}

fn default_poll_interval() -> u64 {
    3600
}

fn default_read_timeout() -> u64 {
    30
}

fn default_retries() -> u32 {
    5
}

fn default_concurrency() -> usize {
    2
}

fn default_batch_bytes() -> u64 {
    64 << 20
}

fn default_min_free_bytes() -> u64 {
    16 << 20
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: String,
    pub branch: String,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    pub current_link: PathBuf,
    pub trusted_keys: Vec<PathBuf>,
    #[serde(default)]
    pub hardware: Option<String>,
    #[serde(default = "default_poll_interval")]
    pub poll_interval: u64,
    #[serde(default = "default_read_timeout")]
    pub read_timeout: u64,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: u64,
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
}

impl Config {
    /// Reads and checks a configuration file; the error names the file and the problem.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Config> {
        let c: Config = toml::from_str(text)?;
        if c.server.starts_with("https://") {
            bail!("server {:?}: this build of ferryd speaks plain http:// only (TLS is not built in yet)", c.server);
        }
        if !c.server.starts_with("http://") {
            bail!("server {:?} must be an http:// URL", c.server);
        }
        ferry_store::repo::check_branch_name(&c.branch)?;
        if c.trusted_keys.is_empty() {
            bail!("trusted_keys is empty: a device must trust at least one signing key");
        }
        if c.poll_interval == 0 {
            bail!("poll_interval must be at least 1 second");
        }
        if c.read_timeout == 0 || c.retries == 0 || c.concurrency == 0 || c.batch_bytes == 0 {
            bail!("read_timeout, retries, concurrency and batch_bytes must be at least 1");
        }
        for p in [&c.state_dir, &c.current_link] {
            if !p.is_absolute() {
                bail!("{} must be an absolute path", p.display());
            }
        }
        Ok(c)
    }

    /// Loads every trusted key.
    pub fn keys(&self) -> Result<Vec<PublicKey>> {
        self.trusted_keys.iter().map(|p| PublicKey::load(p).map_err(Into::into)).collect()
    }
}
