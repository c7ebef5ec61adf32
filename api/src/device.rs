//! The device API: enrollment and check-in, the only two calls `ferryd` makes to a fleet
//! server (`POST /v1/device/enroll`, `POST /v1/device/checkin`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The longest free-text field of a [`Report`] (`last_error`, `config_error`): the server
/// refuses longer ones, the device cuts its own there.
pub const MAX_REPORT_TEXT: usize = 4096;

/// A device's state in the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    /// Enrolled, waiting for `ferry device accept` (or a re-enrollment waiting for approval).
    Pending,
    Accepted,
    Revoked,
}

impl DeviceState {
    /// The state as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Pending => "pending",
            DeviceState::Accepted => "accepted",
            DeviceState::Revoked => "revoked",
        }
    }
}

/// `POST /v1/device/enroll`: who the device says it is, and the fleet's enrollment token
/// (in every image).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// A certificate signing request (PEM) for the device's own key: a server with a
    /// client CA answers with a certificate for the device's serial. Sent only over HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
    pub enrollment_token: String,
    pub hardware: String,
    pub serial: String,
}

/// The answer to an enrollment: the device's token (`fd_…`) and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolled {
    /// The device's client certificate (PEM), when it sent a request and the server issues
    /// them: from then on it presents it on every connection (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    pub device_token: String,
    /// Always sent; `None` only where a device read a state its version does not know (from
    /// a newer server), which it must not fail on.
    #[serde(default, deserialize_with = "known_or_none")]
    pub state: Option<DeviceState>,
}

/// `POST /v1/device/checkin`: what a device reports, what `ferryd status` knows. Every field
/// is optional and written as `null` when unknown; fields this version does not know (from a
/// newer agent) are ignored, so a newer agent can report to an older server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub agent_version: Option<String>,
    /// How the last update went for the device's application (`[app]` in ferryd.toml);
    /// `null` without one, or before its first update.
    #[serde(default, deserialize_with = "known_or_none")]
    pub app: Option<AppRun>,
    pub channel: Option<String>,
    /// Why the newest configuration failed to apply.
    pub config_error: Option<String>,
    /// The configuration version the device applied.
    pub config_version: Option<u64>,
    pub current: Option<String>,
    pub current_version: Option<String>,
    /// A developer's working copy (or an unlocked copy) runs instead of a deployment.
    pub dev: Option<bool>,
    pub free_bytes: Option<u64>,
    pub last_error: Option<String>,
    pub last_result: Option<String>,
    /// A developer pinned the device: it takes no fleet update.
    pub pinned: Option<bool>,
    pub previous: Option<String>,
    /// Progress of a running update, 0..=100.
    pub progress: Option<u8>,
    /// `"none"`, `"good"`, `"on trial (N boots)"`.
    pub trial: Option<String>,
    pub uptime: Option<u64>,
}

/// How an update takes the device's application from the old deployment to the new one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Download and assemble everything, then stop the old application and start the new:
    /// the application is down for the restart alone.
    #[default]
    DownloadThenKill,
    /// Stop the application first, so its memory and disk are free for the download (and
    /// start it again if the update fails before the switch).
    KillThenDownload,
    /// Start the new application beside the old; once it says it is ready, switch and ask
    /// the old one to release the device.
    HandOver,
}

impl Strategy {
    pub const ALL: [Strategy; 3] = [Strategy::DownloadThenKill, Strategy::KillThenDownload, Strategy::HandOver];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::DownloadThenKill => "download-then-kill",
            Strategy::KillThenDownload => "kill-then-download",
            Strategy::HandOver => "hand-over",
        }
    }

    /// The strategy named `s` (as [`Strategy::as_str`] writes it).
    pub fn parse(s: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// How an update ended for the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AppOutcome {
    /// The new version was started and the old one stopped.
    Switched,
    /// Hand-over: the new version did not say it was ready in time (or exited first); it
    /// was stopped, the old one kept the device and nothing was switched.
    NotReady,
    /// Kill-then-download: the update failed before the switch, and the old version was
    /// started again.
    Restored,
    /// The switch happened but the new version could not be started (or did not say it
    /// was ready); its trial, if any, decides whether the device goes back.
    StartFailed,
}

/// What the last update did to the application: reported at check-in, kept in the
/// device's state, shown by `ferryd status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRun {
    pub strategy: Strategy,
    pub outcome: AppOutcome,
    /// Why the strategy is not the device's default: the release asked for it in its
    /// metadata (`strategy=…`), or could not have it (a hand-over without a ready signal).
    pub strategy_source: Option<String>,
    /// Milliseconds from asking the old version to stop to the new one started (and ready,
    /// where it says so): how long the device had no application. `null` when nothing was
    /// stopped.
    pub downtime_ms: Option<u64>,
    /// The old version did not exit within its stop timeout and was killed.
    pub killed: bool,
    /// Seconds the switch waited on the application's "not now".
    pub vetoed_seconds: u64,
    /// The veto was still up when its longest wait ran out: the update went ahead.
    pub veto_overruled: bool,
    /// Unix seconds.
    pub at: i64,
}

/// The configuration a device runs with: the fleet's, its groups' and its own values merged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceConfig {
    pub values: BTreeMap<String, String>,
    pub version: u64,
}

/// The answer to a check-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckinAnswer {
    /// The channel the device reported following.
    pub channel: Option<String>,
    /// The channel's signed document (an envelope, in hex) the device gets (during a
    /// rollout, the base document for devices outside its share); `null` without a channel.
    pub channel_document: Option<String>,
    /// The merged configuration (absent from servers older than configuration; a device
    /// reads one it cannot use as absent, as older agents did).
    #[serde(default, deserialize_with = "known_or_none")]
    pub config: Option<DeviceConfig>,
    /// The same configuration as a document signed for this device by the fleet's
    /// configuration keys (an envelope of `ferry_store::device_config::ConfigDoc`, in hex):
    /// what a device whose key document names configuration keys applies, and nothing
    /// else. Absent when the server holds no configuration key (and from older servers;
    /// older agents ignore it and read `config`).
    #[serde(default, deserialize_with = "known_or_none")]
    pub config_document: Option<String>,
    #[serde(default)]
    pub serial: String,
    /// Always sent; `None` only where a device read a state its version does not know.
    #[serde(default, deserialize_with = "known_or_none")]
    pub state: Option<DeviceState>,
}

/// Reads a value a device only uses when it understands it: one it cannot read (a state
/// added by a newer server, a configuration of another shape) is `None`, not an error, so
/// an agent in the field keeps checking in and updating against a newer server. (An absent
/// field is `None` through `#[serde(default)]`.)
fn known_or_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Maybe<T> {
        Known(T),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Option::<Maybe<T>>::deserialize(d)? {
        Some(Maybe::Known(v)) => Some(v),
        Some(Maybe::Other(_)) | None => None,
    })
}
