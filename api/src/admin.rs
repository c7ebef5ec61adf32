//! The admin API (`/v1/admin/…`, an admin token): devices, tokens, configuration,
//! rollouts, the audit log and the channels, as `ferry` and the web UI speak it. A channel
//! document here ([`ChannelDocument`]) is the signed document's readable view, which
//! `ferry channel show --json` and `ferry promote --json` print too; the signed bytes
//! themselves are `ferry_store::channel`'s.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::device::{DeviceState, Report};

/// What a token is for, from its prefix: `fa_` admin, `fe_` enrollment, `fd_` device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Admin,
    Enrollment,
    Device,
}

impl TokenKind {
    /// The kind as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Admin => "admin",
            TokenKind::Enrollment => "enrollment",
            TokenKind::Device => "device",
        }
    }
}

/// `GET /v1/admin/tokens`: a token's kind and whom it belongs to (an admin's or enrollment
/// token's name, a device's serial), never the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub kind: TokenKind,
    pub name: String,
    pub created: i64,
}

/// `POST /v1/admin/session`: the web UI's sign-in, the admin token in the body (never in a
/// URL); the answer is a [`SessionInfo`] and the session's cookie.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    pub token: String,
}

impl std::fmt::Debug for SessionRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRequest").field("token", &"…").finish()
    }
}

/// A signed-in web session (`POST` and `GET /v1/admin/session`): the admin it signed in as,
/// the CSRF token every change it makes must carry in `X-CSRF-Token`, and the seconds until
/// it ends at the latest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub csrf_token: String,
    pub expires_in: u64,
    pub name: String,
}

/// The answer to `DELETE /v1/admin/session` (sign-out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedOut {
    pub signed_out: bool,
}

/// `POST /v1/admin/tokens`: a new admin or enrollment token named `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub kind: TokenKind,
    pub name: String,
}

/// The answer to a [`TokenRequest`] (201): the token, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub token: String,
}

/// The answer to `POST /v1/admin/tokens/{name}/revoke`: how many tokens had that name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokensRevoked {
    pub revoked: usize,
}

/// Something that happened to a device (its history, oldest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at: i64,
    pub what: String,
}

/// A re-enrollment request as the admin API shows it (never its token's hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReenrollmentView {
    pub at: i64,
    /// The name of the enrollment token it used.
    pub enrollment_token: String,
    pub hardware: String,
    /// The request's fingerprint: the first 12 hex digits of its token's BLAKE3 hash, as
    /// `ferryd status` shows it on the board that holds the token.
    pub request: String,
}

/// A device as `GET /v1/admin/devices` lists it, and as `GET /v1/admin/devices/{serial}`
/// shows it (with `events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    /// The operator who accepted it (or approved its re-enrollment).
    pub accepted_by: Option<String>,
    pub enrolled: i64,
    /// Its history, oldest first: only in the answer about one device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<Event>>,
    /// In precedence order: a later group's value wins.
    pub groups: Vec<String>,
    pub hardware: String,
    pub last_seen: Option<i64>,
    pub reenrollment: Option<ReenrollmentView>,
    pub report: Report,
    pub serial: String,
    pub state: DeviceState,
}

/// The query of `GET /v1/admin/devices`: filters, and which page. The answer holds, in
/// serial order, at most `limit` of the devices after `after` that pass every filter, reading
/// at most [`DeviceQuery::MAX_READ`] devices for it (so a sparse filter's page may hold fewer,
/// even none); while more follow, its `Link: </v1/admin/devices?…>; rel="next"` header names
/// the next page's query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceQuery {
    /// Serials containing this text (any case).
    pub q: Option<String>,
    pub group: Option<String>,
    pub channel: Option<String>,
    /// The version the device runs.
    pub version: Option<String>,
    pub hardware: Option<String>,
    /// A device state (`accepted`, `pending`, `revoked`) or a trial outcome.
    pub state: Option<String>,
    /// One of [`Health`]'s names (`on-trial`, `rolled-back`, `failing`, `silent`, `pinned`,
    /// `dev`).
    pub health: Option<String>,
    /// Devices one answer holds: 1 to [`DeviceQuery::MAX_LIMIT`], that by default.
    pub limit: Option<usize>,
    /// The serial the previous page ended with.
    pub after: Option<String>,
}

impl DeviceQuery {
    /// The most devices one answer holds.
    pub const MAX_LIMIT: usize = 1000;
    /// The most devices the server reads for one answer, however few pass the filters.
    pub const MAX_READ: usize = 20_000;

    /// The query string (without `?`), its values percent-encoded; empty without any.
    pub fn to_query(&self) -> String {
        let limit = self.limit.map(|n| n.to_string());
        [
            ("q", &self.q),
            ("group", &self.group),
            ("channel", &self.channel),
            ("version", &self.version),
            ("hardware", &self.hardware),
            ("state", &self.state),
            ("health", &self.health),
            ("limit", &limit),
            ("after", &self.after),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", percent_encode(v))))
        .collect::<Vec<_>>()
        .join("&")
    }

    /// The path under `/v1/admin/` this query names: `devices` or `devices?…`.
    pub fn path(&self) -> String {
        match self.to_query() {
            q if q.is_empty() => "devices".into(),
            q => format!("devices?{q}"),
        }
    }

    /// Whether `d` passes every filter of the query, at time `now` (for `silent`). An
    /// unknown health name passes nothing ([`Health::parse`] is the check to make first).
    pub fn matches(&self, d: &DeviceView, now: i64) -> bool {
        let r = &d.report;
        let is = |want: &Option<String>, have: Option<&str>| want.as_deref().is_none_or(|w| have == Some(w));
        self.q.as_deref().is_none_or(|q| d.serial.to_lowercase().contains(&q.to_lowercase()))
            && self.group.as_ref().is_none_or(|g| d.groups.contains(g))
            && is(&self.channel, r.channel.as_deref())
            && is(&self.version, r.current_version.as_deref())
            && is(&self.hardware, Some(&d.hardware))
            && self
                .state
                .as_deref()
                .is_none_or(|st| d.state.as_str().eq_ignore_ascii_case(st) || r.trial.as_deref() == Some(st))
            && self.health.as_deref().is_none_or(|h| Health::parse(h).is_some_and(|h| h.of(d, now)))
    }
}

/// What the fleet page counts and filters by, besides a device's state: each is read from
/// the device's last report and when it was seen, so a device can be several at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Runs a release that has not been marked good yet.
    OnTrial,
    /// Its last update failed its trial and it went back.
    RolledBack,
    /// Its last update failed before the switch (an error, a refused release, a failed trial
    /// with nothing to go back to), or its configuration did not apply.
    Failing,
    /// Not seen for [`Health::SILENT_AFTER`] seconds (or never).
    Silent,
    /// A developer pinned it: it takes no fleet update.
    Pinned,
    /// It runs a developer's working copy instead of a release.
    Dev,
}

impl Health {
    pub const ALL: [Health; 6] =
        [Health::OnTrial, Health::RolledBack, Health::Failing, Health::Silent, Health::Pinned, Health::Dev];
    /// A device not seen for a day is `silent`.
    pub const SILENT_AFTER: i64 = 24 * 3600;

    pub fn as_str(self) -> &'static str {
        match self {
            Health::OnTrial => "on-trial",
            Health::RolledBack => "rolled-back",
            Health::Failing => "failing",
            Health::Silent => "silent",
            Health::Pinned => "pinned",
            Health::Dev => "dev",
        }
    }

    /// The health named `s` (as [`Health::as_str`] writes it).
    pub fn parse(s: &str) -> Option<Health> {
        Health::ALL.into_iter().find(|h| h.as_str() == s)
    }

    /// Every name, for an error that lists them.
    pub fn names() -> String {
        Health::ALL.map(Health::as_str).join(", ")
    }

    /// Whether `d` is this, at time `now`.
    pub fn of(self, d: &DeviceView, now: i64) -> bool {
        let r = &d.report;
        match self {
            Health::OnTrial => r.trial.as_deref().is_some_and(|t| t.starts_with("on trial")),
            Health::RolledBack => r.last_result.as_deref() == Some("rolled-back"),
            Health::Failing => {
                matches!(r.last_result.as_deref(), Some("error" | "aborted" | "failed")) || r.config_error.is_some()
            }
            Health::Silent => d.last_seen.is_none_or(|t| now.saturating_sub(t) >= Health::SILENT_AFTER),
            Health::Pinned => r.pinned == Some(true),
            Health::Dev => r.dev == Some(true),
        }
    }
}

/// `GET /v1/admin/summary`: the fleet at a glance, counted over every device. Each list is
/// sorted by count, then name, and holds at most [`FleetSummary::MAX_NAMES`] names; the
/// devices of the names left out are `other`'s count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetSummary {
    /// When it was counted (Unix seconds): the server counts at most every few seconds.
    pub at: i64,
    pub devices: u64,
    pub state: Counts,
    /// Every [`Health`], even at 0.
    pub health: Counts,
    pub channel: Counts,
    pub version: Counts,
    pub hardware: Counts,
    pub group: Counts,
}

impl FleetSummary {
    /// The most names one list of a summary holds.
    pub const MAX_NAMES: usize = 50;
}

/// Devices per name (a channel, a version…), most first; `null` is "none reported".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub counts: Vec<Count>,
    /// Devices under names left out of `counts`.
    pub other: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    pub name: Option<String>,
    pub devices: u64,
}

impl Counts {
    /// The counts of `tally`, most first, at most [`FleetSummary::MAX_NAMES`] of them.
    pub fn of(tally: std::collections::HashMap<Option<String>, u64>) -> Counts {
        let mut all: Vec<Count> = tally.into_iter().map(|(name, devices)| Count { name, devices }).collect();
        all.sort_by(|a, b| b.devices.cmp(&a.devices).then_with(|| a.name.cmp(&b.name)));
        let other = all.iter().skip(FleetSummary::MAX_NAMES).map(|c| c.devices).sum();
        all.truncate(FleetSummary::MAX_NAMES);
        Counts { counts: all, other }
    }
}

/// The value of `key` in a query string (`a=1&b=2`), percent-decoded; None when absent or
/// not UTF-8 once decoded.
pub fn query_value(query: &str, key: &str) -> Option<String> {
    let v = query.split('&').find_map(|p| p.split_once('=').filter(|(k, _)| *k == key))?.1;
    let (mut out, mut bytes) = (Vec::with_capacity(v.len()), v.bytes());
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// `v` percent-encoded for a query string: every byte but the unreserved characters.
fn percent_encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// What an operator does to a device: `POST /v1/admin/devices/{serial}/{action}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAction {
    Accept,
    Revoke,
    Remove,
    /// Needs an [`Approval`] body.
    ApproveReenrollment,
    RejectReenrollment,
}

impl DeviceAction {
    pub const ALL: [DeviceAction; 5] = [
        DeviceAction::Accept,
        DeviceAction::Revoke,
        DeviceAction::Remove,
        DeviceAction::ApproveReenrollment,
        DeviceAction::RejectReenrollment,
    ];

    /// The action's path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceAction::Accept => "accept",
            DeviceAction::Revoke => "revoke",
            DeviceAction::Remove => "remove",
            DeviceAction::ApproveReenrollment => "approve-reenrollment",
            DeviceAction::RejectReenrollment => "reject-reenrollment",
        }
    }

    /// The action a path segment names.
    pub fn parse(s: &str) -> Option<DeviceAction> {
        DeviceAction::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// The body of `approve-reenrollment`: the fingerprint of the request being approved, so a
/// newer request cannot slip in between looking and approving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    pub request: String,
}

/// How a re-enrollment request was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Settled {
    Approved,
    Rejected,
}

/// The answer to a [`DeviceAction`]: the device and its new state; `removed` for `remove`
/// (which has no state left), `reenrollment` for approving or rejecting a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceActionAnswer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reenrollment: Option<Settled>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<bool>,
    pub serial: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<DeviceState>,
}

/// `POST /v1/admin/devices/{serial}/groups`, and its answer with the device's serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Groups {
    pub groups: Vec<String>,
}

/// The answer to [`Groups`]: the device's groups, in precedence order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceGroups {
    pub groups: Vec<String>,
    pub serial: String,
}

/// `GET /v1/admin/config/{level}`: one level's values and the configuration version of its
/// last change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigLevel {
    pub version: u64,
    pub values: BTreeMap<String, String>,
}

/// `GET /v1/admin/devices/{serial}/config`: a device's merged configuration and, per key,
/// the level it comes from (`fleet`, `group NAME`, `device SERIAL`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergedConfig {
    pub version: u64,
    pub values: BTreeMap<String, String>,
    pub sources: BTreeMap<String, String>,
}

/// `POST /v1/admin/config/{level}`: keys to set and keys to remove (an empty side is left
/// out).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigChange {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unset: Vec<String>,
}

/// `POST /v1/admin/devices/{serial}/config-document`: the device's current configuration as
/// a configuration document signed offline by the operator's configuration keys (an encoded
/// envelope, in hex; `ferry config sign`). The server sends it at the device's check-ins
/// while it holds no configuration key of its own. The answer is a [`ConfigVersion`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDocumentUpload {
    pub document: String,
}

/// The answer to a [`ConfigChange`]: the new configuration version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigVersion {
    pub version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutState {
    Running,
    /// Stopped by an operator or by the automatic halt: no device starts taking it.
    Paused,
    /// Stopped for good: devices that took it keep it (promote with --rollback to move
    /// them back); the others stay on the base document.
    Aborted,
}

impl RolloutState {
    /// The state as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Aborted => "aborted",
        }
    }
}

/// What an operator does to a rollout: `POST /v1/admin/rollouts/{channel}/{action}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutAction {
    /// Needs `percent` and takes `group` and `max_failure_percent` ([`RolloutRequest`]).
    Start,
    /// Needs `percent` ([`SetPercent`]); it only goes up.
    SetPercent,
    Pause,
    Resume,
    Abort,
}

impl RolloutAction {
    pub const ALL: [RolloutAction; 5] = [
        RolloutAction::Start,
        RolloutAction::SetPercent,
        RolloutAction::Pause,
        RolloutAction::Resume,
        RolloutAction::Abort,
    ];

    /// The action's path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Start => "start",
            RolloutAction::SetPercent => "set-percent",
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Abort => "abort",
        }
    }

    /// The action a path segment names.
    pub fn parse(s: &str) -> Option<RolloutAction> {
        RolloutAction::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// The body of a rollout action, as the server reads it: `start` takes all three,
/// `set-percent` the percent, the others none (or no body at all).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    pub group: Option<String>,
    /// Pause by itself above this share of failures (default 10).
    pub max_failure_percent: Option<u8>,
    pub percent: Option<u8>,
}

/// The body `ferry rollout set-percent` sends (a [`RolloutRequest`] with only the percent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPercent {
    pub percent: u8,
}

/// A staged rollout on a channel: the channel's document at the start (`base`) is what
/// devices outside the rollout keep getting; any newer document of the channel goes only to
/// `percent` of the (eligible) devices, chosen by a hash of channel and serial, so the same
/// devices go first every time and none flips between versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub channel: String,
    /// The id of the base document.
    pub base: String,
    pub base_serial: u64,
    pub percent: u8,
    /// Only devices in this group take part.
    pub group: Option<String>,
    pub state: RolloutState,
    /// Pause by itself when more than this share (percent) of the devices that took the new
    /// document report a rollback or a failed update.
    pub max_failure_percent: u8,
    pub halt_reason: Option<String>,
    pub started: i64,
    /// The audit sequence number of the start: devices enrolled after it, never accepted by
    /// an operator, do not count.
    #[serde(default)]
    pub started_seq: Option<u64>,
}

/// `GET /v1/admin/rollouts` (each), and the answer to a rollout action: how far it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStatus {
    #[serde(flatten)]
    pub rollout: Rollout,
    /// Devices reporting this channel, those the rollout may reach (its group), those that
    /// took a newer document than the base, and those of them that failed: only devices that
    /// count (accepted by an operator, or enrolled before the start).
    pub devices: usize,
    pub eligible: usize,
    pub took: usize,
    pub failed: usize,
    /// Devices reporting this channel that do not count: enrolled during the rollout and
    /// never accepted by an operator.
    pub uncounted: usize,
}

/// One line of the audit log (`GET /v1/admin/audit?limit=N`, oldest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: i64,
    /// `admin:<name>`, `device:<serial>`, `local` for the command line on the server, or
    /// `server` for the server itself (the automatic halt of a rollout).
    pub who: String,
    pub action: String,
    pub detail: String,
}

/// A channel document as people and scripts read it (the signed document is
/// `ferry_store::channel::ChannelDoc`): `ferry channel show --json`, each entry of a
/// [`ChannelListing`]'s history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelDocument {
    pub channel: String,
    /// Unix seconds after which devices refuse it.
    pub expires: i64,
    /// The document's id (hex).
    pub id: String,
    /// The id of the channel's document before this one.
    pub previous: Option<String>,
    /// An operator's deliberate downgrade.
    pub rollback: bool,
    pub serial: u64,
    /// Sorted by hardware revision.
    pub targets: Vec<ChannelTarget>,
    /// Unix seconds when it was signed.
    pub timestamp: i64,
}

/// What one hardware revision on a channel runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelTarget {
    pub commit: String,
    pub hardware: String,
    pub version: String,
}

/// `GET /v1/admin/channels` (each): a channel's newest document, its history (newest first,
/// the newest included) and the channel it is promoted from. The document's fields are
/// spelled out again rather than flattened, because the wire has `history` between them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelListing {
    pub channel: String,
    pub expires: i64,
    pub history: Vec<ChannelDocument>,
    pub id: String,
    pub previous: Option<String>,
    pub rollback: bool,
    pub serial: u64,
    pub targets: Vec<ChannelTarget>,
    pub timestamp: i64,
    pub upstream: Option<String>,
    /// Said when the document expires within [`EXPIRY_WARNING`] seconds, or has expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// A channel whose document expires within this many seconds is warned of (the web UI, the
/// server's log): two days, time for a missed daily refresh to be noticed and run.
pub const EXPIRY_WARNING: i64 = 2 * 24 * 3600;

/// What to say of a channel document that expires at `expires`, at time `now`: nothing while
/// more than [`EXPIRY_WARNING`] seconds are left.
pub fn expiry_warning(channel: &str, expires: i64, now: i64) -> Option<String> {
    let left = expires - now;
    let what = if left <= 0 {
        format!("channel {channel}'s document has expired: its devices take no update from it")
    } else if left < EXPIRY_WARNING {
        format!(
            "channel {channel}'s document expires in {} h: then its devices take no update from it",
            (left + 3599) / 3600
        )
    } else {
        return None;
    };
    Some(format!("{what}; refresh it with `ferry channel refresh` (the ferry-channel-refresh.timer does it daily)"))
}

impl ChannelListing {
    /// The listing of the channel whose newest document is `newest`, with no warning.
    pub fn new(newest: ChannelDocument, history: Vec<ChannelDocument>, upstream: Option<String>) -> ChannelListing {
        let ChannelDocument { channel, expires, id, previous, rollback, serial, targets, timestamp } = newest;
        ChannelListing {
            channel,
            expires,
            history,
            id,
            previous,
            rollback,
            serial,
            targets,
            timestamp,
            upstream,
            warning: None,
        }
    }
}

/// `POST /v1/admin/channels/{name}/promote`: what `ferry promote` takes (the channel written
/// is the path's). `commit` is an id, a unique prefix or a branch; without it, `from`'s
/// current targets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    pub commit: Option<String>,
    pub from: Option<String>,
    #[serde(default)]
    pub hardware: Vec<String>,
    #[serde(default)]
    pub rollback: bool,
    #[serde(default)]
    pub force: bool,
    /// The channel may be new (refused without it when it does not exist).
    #[serde(default)]
    pub create: bool,
    /// How long devices accept the document (`7d`, `12h`, `3600`); 7 days when absent.
    pub expires: Option<String>,
}

/// The answer to a [`PromoteRequest`] (and `ferry promote --json`): the channel's document
/// and whether it is new (`false`: the channel already had these targets; nothing written).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promoted {
    pub changed: bool,
    #[serde(flatten)]
    pub document: ChannelDocument,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_query_reads_back_what_it_wrote() {
        let q = DeviceQuery {
            group: Some("hall a&b=c".into()),
            state: Some("accepted".into()),
            limit: Some(20),
            after: Some("SN:1%".into()),
            ..DeviceQuery::default()
        };
        let path = q.path();
        assert_eq!(path, "devices?group=hall%20a%26b%3Dc&state=accepted&limit=20&after=SN%3A1%25");
        let query = path.strip_prefix("devices?").unwrap();
        assert_eq!(query_value(query, "group").as_deref(), Some("hall a&b=c"));
        assert_eq!(query_value(query, "after").as_deref(), Some("SN:1%"));
        assert_eq!(query_value(query, "limit").as_deref(), Some("20"));
        assert_eq!(query_value(query, "channel"), None);
        assert_eq!(DeviceQuery::default().path(), "devices");
        let q = DeviceQuery { q: Some("a b".into()), health: Some("on-trial".into()), ..DeviceQuery::default() };
        assert_eq!(q.path(), "devices?q=a%20b&health=on-trial");
    }

    #[test]
    fn a_channel_is_warned_of_within_two_days_of_its_expiry() {
        assert_eq!(expiry_warning("stable", 1000 + EXPIRY_WARNING, 1000), None);
        let soon = expiry_warning("stable", 1000 + 3601, 1000).unwrap();
        assert!(soon.starts_with("channel stable's document expires in 2 h"), "{soon}");
        let gone = expiry_warning("stable", 1000, 1000).unwrap();
        assert!(gone.contains("has expired") && gone.contains("ferry channel refresh"), "{gone}");
    }

    #[test]
    fn health_is_read_from_the_report_and_the_last_check_in() {
        let mut d = DeviceView {
            accepted_by: None,
            enrolled: 0,
            events: None,
            groups: vec!["hall".into()],
            hardware: "rev-a".into(),
            last_seen: Some(1000),
            reenrollment: None,
            report: Report::default(),
            serial: "SN-Board-7".into(),
            state: DeviceState::Accepted,
        };
        let of = |d: &DeviceView, now| Health::ALL.into_iter().filter(|h| h.of(d, now)).collect::<Vec<_>>();
        assert_eq!(of(&d, 1000), []);
        assert_eq!(of(&d, 1000 + Health::SILENT_AFTER), [Health::Silent]);
        d.report.trial = Some("on trial (1 boots)".into());
        d.report.last_result = Some("rolled-back".into());
        d.report.pinned = Some(true);
        d.report.dev = Some(false);
        assert_eq!(of(&d, 1000), [Health::OnTrial, Health::RolledBack, Health::Pinned]);
        d.report.last_result = Some("up-to-date".into());
        d.report.config_error = Some("bad key".into());
        d.report.dev = Some(true);
        assert_eq!(of(&d, 1000), [Health::OnTrial, Health::Failing, Health::Pinned, Health::Dev]);
        for name in Health::ALL.map(Health::as_str) {
            assert_eq!(Health::parse(name).map(Health::as_str), Some(name));
        }
        // The query's filters: every one must hold; the serial search ignores case.
        let q = |f: DeviceQuery| f.matches(&d, 1000);
        assert!(q(DeviceQuery { q: Some("board-7".into()), ..Default::default() }));
        assert!(!q(DeviceQuery { q: Some("board-8".into()), ..Default::default() }));
        assert!(q(DeviceQuery { health: Some("dev".into()), group: Some("hall".into()), ..Default::default() }));
        assert!(!q(DeviceQuery { health: Some("silent".into()), ..Default::default() }));
        assert!(!q(DeviceQuery { health: Some("bogus".into()), ..Default::default() }));
        assert!(!q(DeviceQuery { hardware: Some("rev-b".into()), ..Default::default() }));
        assert!(q(DeviceQuery { state: Some("accepted".into()), ..Default::default() }));
        assert!(q(DeviceQuery { state: Some("ACCEPTED".into()), ..Default::default() }));
        assert!(q(DeviceQuery { state: Some("on trial (1 boots)".into()), ..Default::default() }));
        assert!(!q(DeviceQuery { version: Some("1.0".into()), ..Default::default() }));
    }

    #[test]
    fn counts_keep_the_largest_names_and_add_up_the_rest() {
        let tally = (0..60u64).map(|i| (Some(format!("v{i:02}")), i + 1)).chain([(None, 1000)]).collect();
        let c = Counts::of(tally);
        assert_eq!(c.counts.len(), FleetSummary::MAX_NAMES);
        assert_eq!(c.counts[0], Count { name: None, devices: 1000 });
        assert_eq!(c.counts[1], Count { name: Some("v59".into()), devices: 60 });
        // The 11 smallest (1..=11 devices) are left out: 66 devices.
        assert_eq!(c.other, (1..=11).sum::<u64>());
        // Broken escapes are no value, not a panic.
        for bad in ["after=%", "after=%4", "after=%zz", "after=%+4", "after=%FF"] {
            assert_eq!(query_value(bad, "after"), None, "{bad}");
        }
    }
}
