//! `ferry ca`: the fleet's own certificate authority (`crate::ca`).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::ca::{self, FleetCa};

/// The commands on a fleet CA.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Creates a CA: DIR/ca.crt (what devices pin as ca_file) and DIR/ca.key (mode 0600;
    /// keep it offline unless the server issues device certificates). Never overwrites.
    Init(InitArgs),
    /// Issues a server certificate for `ferry serve --tls-cert/--tls-key`: OUT.crt and
    /// OUT.key. Run it again with --force before the old one expires (the server reloads it).
    Issue(IssueArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The CA's directory (created if absent).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// The CA's name (its certificate's common name).
    #[arg(long, default_value = "Ferry fleet CA")]
    pub name: String,
    /// Validity in days.
    #[arg(long, default_value_t = 3650)]
    pub days: u32,
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    /// The CA's directory.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// A name or IP address devices reach the server by; repeat for several.
    #[arg(long = "host", value_name = "NAME", required = true)]
    pub hosts: Vec<String>,
    /// Writes OUT.crt and OUT.key.
    #[arg(long, value_name = "OUT")]
    pub out: PathBuf,
    /// Validity in days.
    #[arg(long, default_value_t = 397)]
    pub days: u32,
    /// Replace existing OUT.crt and OUT.key (a renewal).
    #[arg(long)]
    pub force: bool,
}

pub fn run(command: CaCommand) -> Result<()> {
    match command {
        CaCommand::Init(a) => {
            let cert = ca::create(&a.dir, &a.name, a.days)?;
            println!("created the CA {:?}: devices pin {} as ca_file", a.name, cert.display());
        }
        CaCommand::Issue(a) => {
            let fleet_ca = FleetCa::open(&a.dir)?;
            let issued = fleet_ca.issue_server(&a.hosts, a.days)?;
            let (cert, key) = ca::write_issued(&issued, &a.out, a.force)?;
            println!("issued {} and {} for {} ({} days)", cert.display(), key.display(), a.hosts.join(", "), a.days);
        }
    }
    Ok(())
}
