//! Every path under the device's state directory, named once.
//!
//! ```text
//! <state_dir>/index.redb        redb: the chunk index (`local`)
//! <state_dir>/metadata/<id>     trees and commits, verified when read (`local`)
//! <state_dir>/objects/<id>      file objects; deployments hardlink to them (`local`)
//! <state_dir>/staging/<id>      downloaded chunks, verified, not yet built into objects
//! <state_dir>/deploy/<id>/      complete deployments; `<id>.tmp-*` are incomplete
//! <state_dir>/unlocked/<id>[-n] writable copies made by `ferryd unlock` (`devboard`)
//! <state_dir>/state.json        previous deployment, last outcome, bad commits (`state`)
//! <state_dir>/trust.json        key document in force, channel serials, clock floor (`state`)
//! <state_dir>/trial.json        the trial in progress (`ferry_boot::Trial`)
//! <state_dir>/device-token      the fleet server's token for this device, 0600 (`fleet`)
//! <state_dir>/client.key        the device's own key for mutual TLS, 0600, made here and
//!                               never sent; `client.crt`, the certificate the fleet issued
//!                               for it at enrollment (`fleet`)
//! <state_dir>/config.json       the fleet's configuration applied here, and `config.env`,
//!                               `config-error` beside it (`fleet`)
//! <state_dir>/provision.json    first-boot steps done (`provision`)
//! <state_dir>/local-ui-tls.pem  the local page's key and self-signed certificate, 0600
//!                               (`local_ui::certificate`)
//! <state_dir>/app.json          the application's instances started and not yet stopped
//!                               (`app`)
//! <state_dir>/app/              their ready files and notify sockets (`app`)
//! ```
//!
//! No other module joins a name onto the state directory: a new file is added here, with
//! the module that owns it.

use std::path::{Path, PathBuf};

use ferry_store::Id;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(state_dir: &Path) -> Layout {
        Layout { root: state_dir.to_path_buf() }
    }

    /// The state directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn db(&self) -> PathBuf {
        self.root.join("index.redb")
    }

    /// Trees and commits, one file each, named by id.
    pub fn metadata(&self) -> PathBuf {
        self.root.join("metadata")
    }

    pub fn objects(&self) -> PathBuf {
        self.root.join("objects")
    }

    pub fn object(&self, id: &Id) -> PathBuf {
        self.objects().join(id.to_hex())
    }

    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }

    pub fn staged(&self, id: &Id) -> PathBuf {
        self.staging().join(id.to_hex())
    }

    pub fn deploy(&self) -> PathBuf {
        self.root.join("deploy")
    }

    /// The complete deployment of a commit, named by its hex id.
    pub fn deployment(&self, commit: &str) -> PathBuf {
        self.deploy().join(commit)
    }

    /// Where a deployment is built before it is renamed into place.
    pub fn deployment_in_progress(&self, commit: &Id) -> PathBuf {
        self.deploy().join(format!("{}.tmp-{}", commit.to_hex(), std::process::id()))
    }

    pub fn unlocked(&self) -> PathBuf {
        self.root.join("unlocked")
    }

    pub fn state(&self) -> PathBuf {
        self.root.join("state.json")
    }

    pub fn trust(&self) -> PathBuf {
        self.root.join("trust.json")
    }

    pub fn device_token(&self) -> PathBuf {
        self.root.join("device-token")
    }

    pub fn client_key(&self) -> PathBuf {
        self.root.join("client.key")
    }

    pub fn client_cert(&self) -> PathBuf {
        self.root.join("client.crt")
    }

    pub fn config_json(&self) -> PathBuf {
        self.root.join("config.json")
    }

    pub fn config_env(&self) -> PathBuf {
        self.root.join("config.env")
    }

    pub fn config_error(&self) -> PathBuf {
        self.root.join("config-error")
    }

    pub fn provision(&self) -> PathBuf {
        self.root.join("provision.json")
    }

    pub fn local_ui_tls(&self) -> PathBuf {
        self.root.join("local-ui-tls.pem")
    }

    /// The application's instances that run (`app`).
    pub fn app_instances(&self) -> PathBuf {
        self.root.join("app.json")
    }

    /// The application's ready files and notify sockets (`app`).
    pub fn app_dir(&self) -> PathBuf {
        self.root.join("app")
    }

    /// The file `ferryd doctor` writes to prove the directory is writable.
    pub fn doctor_probe(&self) -> PathBuf {
        self.root.join(".doctor")
    }
}

/// Bytes free to an unprivileged writer on the file system holding `path`. Widened before
/// multiplying: on 32-bit ARM both counts are 32-bit, and their product would saturate at
/// 4 GiB.
#[allow(clippy::useless_conversion)] // u64 → u64 on 64-bit targets, u32 → u64 on armv7
pub fn free_bytes(path: &Path) -> nix::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path)?;
    Ok(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}
