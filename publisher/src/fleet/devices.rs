//! Devices: the record the store keeps of each (state, token hash, groups, last report, the
//! documents it was served), check-ins and their reports, each device's history, and the
//! operator's accept, revoke and remove. What it is not for: enrollment (`enrollment`),
//! configuration (`config`) or rollouts (`rollouts`), which read and update these records.

use std::collections::HashMap;

use ferry_api::admin::{Counts, DeviceQuery, FleetSummary, Health};
use ferry_store::kv::Op;
use serde::{Deserialize, Serialize};

use super::{
    expect, json, now, parse, Caller, DeviceState, Event, Fleet, FleetError, Report, Result, Scope, CONFIG, DEVICES,
    EVENTS, MAX_EVENTS, MAX_NAME, MAX_TEXT, REPORTS, TOKENS,
};

/// A device's record in the store (the admin API shows it as [`Device::view`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Device {
    pub serial: String,
    pub hardware: String,
    pub state: DeviceState,
    pub enrolled: i64,
    /// Hash of the device's current token (hex).
    pub token: String,
    /// Groups in precedence order: a later group's value wins over an earlier one's.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The configuration version at the last change of `groups`.
    #[serde(default)]
    pub groups_version: u64,
    pub last_seen: Option<i64>,
    #[serde(default, with = "stored_report")]
    pub report: Report,
    /// Per channel, the highest document serial this device was given at check-in.
    #[serde(default)]
    pub served: std::collections::BTreeMap<String, u64>,
    /// Per channel, the serial it was given when it last reported a rollback or an aborted
    /// update (kept, so failures spread over time add up for the automatic halt).
    #[serde(default)]
    pub failed: std::collections::BTreeMap<String, u64>,
    /// The operator who accepted the device (or approved its re-enrollment); `None` for a
    /// device accepted automatically (no `--require-approval`).
    #[serde(default)]
    pub accepted_by: Option<String>,
    /// The audit sequence number of its enrollment, which orders it exactly against the
    /// start of a rollout (`None` in records written before it was kept).
    #[serde(default)]
    pub enrolled_seq: Option<u64>,
    /// A later enrollment of this serial, waiting for an operator.
    #[serde(default)]
    pub reenrollment: Option<Reenrollment>,
    /// The SHA-256 (hex) of the client certificate issued to this device at enrollment: with
    /// mutual TLS, its requests must come over a connection that presented it. Revocation
    /// clears it.
    #[serde(default)]
    pub client_certificate: Option<String>,
}

/// An enrollment of a serial the fleet already knows: the device keeps its state and token
/// until an operator approves this one (its token then replaces the device's) or rejects it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reenrollment {
    /// Hash of the token it was given (hex); that token works nowhere until approved.
    pub token: String,
    pub hardware: String,
    pub at: i64,
    /// The name of the enrollment token it used.
    pub enrollment_token: String,
    /// The SHA-256 (hex) of the certificate issued with it, bound to the device on approval.
    #[serde(default)]
    pub client_certificate: Option<String>,
}

impl Reenrollment {
    /// The request's fingerprint: the first 12 hex digits of its token's BLAKE3 hash, which
    /// `ferryd status` shows on the device that holds the token. An operator approves a
    /// request by it, so a newer request (anyone with the enrollment token can make one)
    /// cannot slip in between looking and approving.
    pub fn fingerprint(&self) -> &str {
        self.token.get(..12).unwrap_or(&self.token)
    }
}

impl Device {
    /// The device as the admin API shows it (never its tokens' hashes); `events` only in
    /// the answer about one device.
    pub fn view(&self, events: Option<Vec<Event>>) -> ferry_api::admin::DeviceView {
        ferry_api::admin::DeviceView {
            accepted_by: self.accepted_by.clone(),
            enrolled: self.enrolled,
            events,
            groups: self.groups.clone(),
            hardware: self.hardware.clone(),
            last_seen: self.last_seen,
            reenrollment: self.reenrollment.as_ref().map(|r| ferry_api::admin::ReenrollmentView {
                at: r.at,
                enrollment_token: r.enrollment_token.clone(),
                hardware: r.hardware.clone(),
                request: r.fingerprint().to_string(),
            }),
            report: self.report.clone(),
            serial: self.serial.clone(),
            state: self.state,
        }
    }
}

/// Refuses reports with oversized fields or control characters, naming the field.
pub fn check_report(report: &Report) -> Result<()> {
    let short = [
        ("current", &report.current),
        ("current_version", &report.current_version),
        ("previous", &report.previous),
        ("channel", &report.channel),
        ("trial", &report.trial),
        ("last_result", &report.last_result),
        ("agent_version", &report.agent_version),
        ("app.strategy_source", &report.app.as_ref().and_then(|a| a.strategy_source.clone())),
    ];
    for (name, v) in short {
        let max = if name == "channel" { 255 } else { MAX_NAME };
        if v.as_ref().is_some_and(|v| v.len() > max) {
            return Err(FleetError::BadRequest(format!("report field {name} is longer than {max} bytes")));
        }
    }
    // Reports are printed on operators' terminals: no escape sequences.
    let texts = [&report.current, &report.current_version, &report.previous, &report.channel, &report.trial]
        .into_iter()
        .chain([&report.last_result, &report.agent_version, &report.last_error, &report.config_error])
        .chain(report.app.as_ref().map(|a| &a.strategy_source));
    if texts.flatten().any(|v| v.chars().any(|c| c.is_control() && c != '\n' && c != '\t')) {
        return Err(FleetError::BadRequest("report fields may not contain control characters".into()));
    }
    for (name, v) in [("last_error", &report.last_error), ("config_error", &report.config_error)] {
        if v.as_ref().is_some_and(|v| v.len() > MAX_TEXT) {
            return Err(FleetError::BadRequest(format!("report field {name} is longer than {MAX_TEXT} bytes")));
        }
    }
    if report.progress.is_some_and(|p| p > 100) {
        return Err(FleetError::BadRequest("report field progress must be 0..=100".into()));
    }
    Ok(())
}

/// A report as a device record holds it: the fields in the order the store has always
/// written them (the API's [`Report`] writes them alphabetically, as devices send them).
mod stored_report {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Report;

    #[derive(Default, Serialize, Deserialize)]
    struct Stored {
        current: Option<String>,
        current_version: Option<String>,
        previous: Option<String>,
        channel: Option<String>,
        trial: Option<String>,
        last_result: Option<String>,
        last_error: Option<String>,
        progress: Option<u8>,
        free_bytes: Option<u64>,
        agent_version: Option<String>,
        uptime: Option<u64>,
        pinned: Option<bool>,
        dev: Option<bool>,
        config_version: Option<u64>,
        config_error: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        app: Option<ferry_api::device::AppRun>,
    }

    pub fn serialize<S: Serializer>(r: &Report, s: S) -> Result<S::Ok, S::Error> {
        let r = r.clone();
        Stored {
            current: r.current,
            current_version: r.current_version,
            previous: r.previous,
            channel: r.channel,
            trial: r.trial,
            last_result: r.last_result,
            last_error: r.last_error,
            progress: r.progress,
            free_bytes: r.free_bytes,
            agent_version: r.agent_version,
            uptime: r.uptime,
            pinned: r.pinned,
            dev: r.dev,
            config_version: r.config_version,
            config_error: r.config_error,
            app: r.app,
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Report, D::Error> {
        let r = Stored::deserialize(d)?;
        Ok(Report {
            agent_version: r.agent_version,
            app: r.app,
            channel: r.channel,
            config_error: r.config_error,
            config_version: r.config_version,
            current: r.current,
            current_version: r.current_version,
            dev: r.dev,
            free_bytes: r.free_bytes,
            last_error: r.last_error,
            last_result: r.last_result,
            pinned: r.pinned,
            previous: r.previous,
            progress: r.progress,
            trial: r.trial,
            uptime: r.uptime,
        })
    }
}

/// What the `reports` table holds for a device: its newest report and when it came.
#[derive(Serialize, Deserialize)]
struct Seen {
    report: Report,
    last_seen: Option<i64>,
}

impl Seen {
    fn of(d: &Device) -> Seen {
        Seen { report: d.report.clone(), last_seen: d.last_seen }
    }

    /// `d` with the report and time stored apart (`bytes`), which are newer than the record's.
    fn merge(d: &mut Device, bytes: &[u8]) -> Result<()> {
        let seen: Seen = parse(bytes, || format!("report of device {}", d.serial))?;
        d.report = seen.report;
        d.last_seen = seen.last_seen;
        Ok(())
    }
}

impl Fleet {
    pub fn device(&self, serial: &str) -> Result<Device> {
        self.device_read(serial).map(|(d, _)| d)
    }

    /// A device's record (with its newest report) and the record's stored bytes, which a
    /// change's batch expects unchanged.
    pub(super) fn device_read(&self, serial: &str) -> Result<(Device, Vec<u8>)> {
        match self.db.get(DEVICES, serial.as_bytes())? {
            Some(v) => {
                let mut d: Device = parse(&v, || format!("device {serial}"))?;
                if let Some(r) = self.db.get(REPORTS, serial.as_bytes())? {
                    Seen::merge(&mut d, &r)?;
                }
                Ok((d, v))
            }
            None => Err(FleetError::NotFound(format!("no device {serial}"))),
        }
    }

    /// The ops writing `d` over the record read as `was` (None: a new device), on condition
    /// that no other server changed it since.
    pub(super) fn device_ops(d: &Device, was: Option<Vec<u8>>) -> [Op; 2] {
        let key = d.serial.as_bytes().to_vec();
        [expect(DEVICES, &key, was), Op::Put { table: DEVICES, key, value: json(d) }]
    }

    pub fn devices(&self) -> Result<Vec<Device>> {
        with_reports(&self.db.scan(DEVICES, b"")?, self.db.scan(REPORTS, b"")?.into_iter().collect())
    }

    /// At most `limit` devices whose serials sort after `after` (from the first if None), in
    /// serial order, and whether more follow: two indexed reads (records and reports of the
    /// same serials), however many devices the fleet has.
    pub fn devices_page(&self, after: Option<&str>, limit: usize) -> Result<(Vec<Device>, bool)> {
        let after = after.map(str::as_bytes);
        let mut records = self.db.page(DEVICES, b"", after, limit + 1)?;
        let more = records.len() > limit;
        records.truncate(limit);
        // The reports of this page's serials: pages of reports after `after` up to the page's
        // last serial (usually one; more if devices enrolled in between).
        let mut reports: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        if let Some((last, _)) = records.last() {
            let mut from = after.map(<[u8]>::to_vec);
            loop {
                let part = self.db.page(REPORTS, b"", from.as_deref(), limit.max(1))?;
                let end = part.len() < limit.max(1) || part.last().is_some_and(|(k, _)| k >= last);
                from = part.last().map(|(k, _)| k.clone());
                reports.extend(part.into_iter().filter(|(k, _)| k <= last));
                if end {
                    break;
                }
            }
        }
        Ok((with_reports(&records, reports)?, more))
    }

    /// Up to `limit` devices after `query.after` that pass its filters, in serial order, and
    /// the serial the next page starts after: None when no device after them passes. Reads
    /// the store a page at a time and at most [`DeviceQuery::MAX_READ`] devices, however few
    /// pass; when that stops it, the next page starts after the last device read.
    pub fn devices_matching(
        &self,
        query: &DeviceQuery,
        limit: usize,
        now: i64,
    ) -> Result<(Vec<Device>, Option<String>)> {
        const READ: usize = 1000;
        let (mut out, mut after, mut read) = (Vec::new(), query.after.clone(), 0);
        loop {
            let (page, more) = self.devices_page(after.as_deref(), READ)?;
            read += page.len();
            for d in page {
                after = Some(d.serial.clone());
                if query.matches(&d.view(None), now) {
                    if out.len() == limit {
                        // One more passes: the next page starts after this one's last.
                        let next = out.last().map(|d: &Device| d.serial.clone());
                        return Ok((out, next));
                    }
                    out.push(d);
                }
            }
            if !more {
                return Ok((out, None));
            }
            if read >= DeviceQuery::MAX_READ {
                return Ok((out, after));
            }
        }
    }

    /// The fleet at a glance: every device counted by state, health, channel, version,
    /// hardware and group, reading the store a page at a time.
    pub fn summary(&self, now: i64) -> Result<FleetSummary> {
        type Tally = HashMap<Option<String>, u64>;
        let (mut state, mut channel, mut version, mut hardware, mut group) =
            (Tally::new(), Tally::new(), Tally::new(), Tally::new(), Tally::new());
        let mut health: Tally = Health::ALL.iter().map(|h| (Some(h.as_str().to_string()), 0)).collect();
        let (mut devices, mut after) = (0, None);
        loop {
            let (page, more) = self.devices_page(after.as_deref(), 1000)?;
            for d in page {
                let v = d.view(None);
                devices += 1;
                *state.entry(Some(v.state.as_str().into())).or_default() += 1;
                *channel.entry(v.report.channel.clone()).or_default() += 1;
                *version.entry(v.report.current_version.clone()).or_default() += 1;
                *hardware.entry(Some(v.hardware.clone())).or_default() += 1;
                for g in &v.groups {
                    *group.entry(Some(g.clone())).or_default() += 1;
                }
                for h in Health::ALL.into_iter().filter(|h| h.of(&v, now)) {
                    *health.entry(Some(h.as_str().into())).or_default() += 1;
                }
                after = Some(d.serial);
            }
            if !more {
                break;
            }
        }
        Ok(FleetSummary {
            at: now,
            devices,
            state: Counts::of(state),
            health: Counts::of(health),
            channel: Counts::of(channel),
            version: Counts::of(version),
            hardware: Counts::of(hardware),
            group: Counts::of(group),
        })
    }

    pub(super) fn event_op(&self, serial: &str, what: String) -> Result<Op> {
        self.event_ops(serial, vec![what])?
            .pop()
            .ok_or_else(|| FleetError::Damaged { what: format!("history of {serial}"), why: "no event".into() })
    }

    /// Ops appending `whats` to a device's history, in order (caller holds the lock).
    pub(super) fn event_ops(&self, serial: &str, whats: Vec<String>) -> Result<Vec<Op>> {
        if whats.is_empty() {
            return Ok(Vec::new());
        }
        let mut prefix = serial.as_bytes().to_vec();
        prefix.push(0);
        let existing = self.db.scan(EVENTS, &prefix)?;
        // The history keeps the newest MAX_EVENTS: older entries go in the same batch.
        let excess = (existing.len() + whats.len()).saturating_sub(MAX_EVENTS);
        let trims = existing.into_iter().take(excess).map(|(key, _)| Op::Delete { table: EVENTS, key });
        let at = now();
        // Keyed by the time in nanoseconds, its order in the batch and 4 random bytes: two
        // servers adding to a history at once never take the same key (so neither waits
        // for the other), and the keys sort in time order after the numbered keys of
        // earlier versions (8 bytes of a small number).
        let stamp = super::now_nanos();
        let mut salt = [0u8; 4];
        getrandom::getrandom(&mut salt).map_err(|e| FleetError::BadRequest(format!("no random bytes: {e}")))?;
        let puts = whats.into_iter().enumerate().map(|(i, what)| {
            let mut key = prefix.clone();
            key.extend_from_slice(&(stamp + i as u128).to_be_bytes());
            key.extend_from_slice(&salt);
            Op::Insert { table: EVENTS, key, value: json(&Event { at, what }) }
        });
        Ok(trims.chain(puts).collect())
    }

    /// A device's history, oldest first (at most [`MAX_EVENTS`]).
    pub fn events(&self, serial: &str) -> Result<Vec<Event>> {
        let mut prefix = serial.as_bytes().to_vec();
        prefix.push(0);
        let all = self.db.scan(EVENTS, &prefix)?;
        let skip = all.len().saturating_sub(MAX_EVENTS);
        all.iter().skip(skip).map(|(_, v)| parse(v, || format!("event of device {serial}"))).collect()
    }

    /// Records a device's check-in. Changes worth a line in its history (a new current
    /// commit, a new result or error) become events.
    pub fn check_in(&self, device: &Device, report: Report) -> Result<Device> {
        check_report(&report)?;
        self.retrying("recording a check-in", || self.check_in_once(device, report.clone()))
    }

    fn check_in_once(&self, device: &Device, report: Report) -> Result<Device> {
        let _d = self.device_lock(&device.serial);
        // Re-read under the lock: an operator may have revoked it meanwhile (and the batch
        // expects the record read, so a revocation through another server is not undone).
        let (mut d, was) = self.device_read(&device.serial)?;
        let failed_before = d.failed.clone();
        if d.state != DeviceState::Accepted || d.token != device.token {
            return Err(FleetError::Forbidden(format!("device {} may not check in", d.serial)));
        }
        let mut whats = Vec::new();
        let old = &d.report;
        if report.current != old.current {
            whats.push(format!(
                "now runs {} ({})",
                report.current_version.as_deref().unwrap_or("?"),
                report.current.as_deref().unwrap_or("nothing")
            ));
        }
        if report.last_result != old.last_result || report.last_error != old.last_error {
            if let Some(r) = &report.last_result {
                let what = match &report.last_error {
                    Some(e) => format!("update {r}: {e}"),
                    None => format!("update {r}"),
                };
                if !(r == "up-to-date" && report.last_error.is_none()) {
                    whats.push(what);
                }
            }
        }
        let mut ops = self.event_ops(&d.serial, whats)?;
        // A release that failed its trial: rolled back, refused by its pre-switch hook, or, as
        // a device's first release, kept flagged bad with nothing to go back to.
        if matches!(report.last_result.as_deref(), Some("rolled-back" | "aborted" | "failed"))
            && report.last_result != old.last_result
        {
            if let Some(channel) = &report.channel {
                if let Some(serial) = d.served.get(channel).copied() {
                    d.failed.insert(channel.clone(), serial);
                }
            }
        }
        let failed_changed = d.failed != failed_before;
        d.report = report;
        d.last_seen = Some(now());
        if failed_changed {
            ops.extend(Fleet::device_ops(&d, Some(was)));
        } else {
            // The record as read must still be the record (not revoked, not removed
            // meanwhile); only the report changes.
            ops.push(expect(DEVICES, d.serial.as_bytes(), Some(was)));
        }
        ops.push(Op::Put { table: REPORTS, key: d.serial.as_bytes().to_vec(), value: json(&Seen::of(&d)) });
        ops.extend(self.mark_ops(&d.serial, Some(&d))?);
        self.db.write(ops)?;
        Ok(d)
    }

    fn set_state(&self, who: &Caller, serial: &str, state: DeviceState, action: &str) -> Result<Device> {
        self.retrying(action, || self.set_state_once(who, serial, state, action))
    }

    fn set_state_once(&self, who: &Caller, serial: &str, state: DeviceState, action: &str) -> Result<Device> {
        let _g = self.lock();
        let _d = self.device_lock(serial);
        let (mut d, was) = self.device_read(serial)?;
        if d.state == DeviceState::Revoked && state == DeviceState::Accepted {
            return Err(FleetError::BadRequest(format!(
                "device {serial} is revoked; a revoked device stays revoked (remove it and enroll it again)"
            )));
        }
        d.state = state;
        let mut ops = Vec::new();
        match state {
            DeviceState::Accepted => d.accepted_by = Some(who.who()),
            DeviceState::Revoked => {
                // Its certificate goes with its token: neither opens anything again.
                d.client_certificate = None;
                // A revoked device's pending re-enrollment goes with it.
                if let Some(r) = d.reenrollment.take() {
                    let mut old = [0u8; 32];
                    if hex::decode_to_slice(&r.token, &mut old).is_ok() {
                        ops.push(Op::Delete { table: TOKENS, key: old.to_vec() });
                    }
                }
            }
            DeviceState::Pending => {}
        }
        ops.extend(Fleet::device_ops(&d, Some(was)));
        ops.extend(self.mark_ops(serial, Some(&d))?);
        ops.push(self.event_op(serial, format!("{action} by {}", who.who()))?);
        ops.push(self.audit_op(who, action, format!("device {serial}"))?);
        self.db.write(ops)?;
        Ok(d)
    }

    /// With mutual TLS: whether `presented` (the SHA-256 of the client certificate the
    /// connection presented) is the one bound to `device`.
    pub fn check_certificate(&self, device: &Device, presented: Option<&[u8; 32]>) -> Result<()> {
        let serial = &device.serial;
        let Some(bound) = &device.client_certificate else {
            return Err(FleetError::Forbidden(format!(
                "device {serial} has no client certificate, which this server requires: remove its device token file and let it enroll again to receive one"
            )));
        };
        match presented {
            None => Err(FleetError::Forbidden(format!(
                "device {serial}: this server requires the device's client certificate, and the connection presented none"
            ))),
            Some(p) if hex::encode(p) != *bound => Err(FleetError::Forbidden(format!(
                "device {serial}: the client certificate presented is not the one issued to this device"
            ))),
            Some(_) => Ok(()),
        }
    }

    pub fn accept(&self, who: &Caller, serial: &str) -> Result<Device> {
        self.set_state(who, serial, DeviceState::Accepted, "accept")
    }

    /// Revokes a device: its token stops working at once and it cannot enroll again.
    pub fn revoke(&self, who: &Caller, serial: &str) -> Result<Device> {
        self.set_state(who, serial, DeviceState::Revoked, "revoke")
    }

    /// Forgets a device (its record, token and history); it may enroll again.
    pub fn remove(&self, who: &Caller, serial: &str) -> Result<()> {
        self.retrying("removing a device", || self.remove_once(who, serial))
    }

    fn remove_once(&self, who: &Caller, serial: &str) -> Result<()> {
        let _g = self.lock();
        let _d = self.device_lock(serial);
        let (d, was) = self.device_read(serial)?;
        let mut ops = vec![
            expect(DEVICES, serial.as_bytes(), Some(was)),
            Op::Delete { table: DEVICES, key: serial.as_bytes().to_vec() },
            Op::Delete { table: REPORTS, key: serial.as_bytes().to_vec() },
        ];
        for token in std::iter::once(&d.token).chain(d.reenrollment.as_ref().map(|r| &r.token)) {
            let mut old = [0u8; 32];
            if hex::decode_to_slice(token, &mut old).is_ok() {
                ops.push(Op::Delete { table: TOKENS, key: old.to_vec() });
            }
        }
        let mut prefix = serial.as_bytes().to_vec();
        prefix.push(0);
        for (k, _) in self.db.scan(EVENTS, &prefix)? {
            ops.push(Op::Delete { table: EVENTS, key: k });
        }
        ops.push(Op::Delete { table: CONFIG, key: Scope::Device(serial.into()).key() });
        ops.push(Op::Delete { table: CONFIG, key: super::config::signed_key(serial) });
        ops.extend(self.mark_ops(serial, None)?);
        ops.push(self.audit_op(who, "remove", format!("device {serial}"))?);
        self.db.write(ops)?;
        Ok(())
    }
}

/// Devices read from their `records`, each with its report from `reports` (by serial) merged.
fn with_reports(records: &[(Vec<u8>, Vec<u8>)], mut reports: HashMap<Vec<u8>, Vec<u8>>) -> Result<Vec<Device>> {
    records
        .iter()
        .map(|(k, v)| {
            let mut d: Device = parse(v, || format!("device {}", String::from_utf8_lossy(k)))?;
            if let Some(r) = reports.remove(k) {
                Seen::merge(&mut d, &r)?;
            }
            Ok(d)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_with_long_or_control_text_is_refused_naming_the_field() {
        let app = |source: &str| ferry_api::device::AppRun {
            strategy: ferry_api::device::Strategy::HandOver,
            outcome: ferry_api::device::AppOutcome::Switched,
            strategy_source: Some(source.into()),
            downtime_ms: Some(5),
            killed: false,
            vetoed_seconds: 0,
            veto_overruled: false,
            at: 1,
        };
        let ok = Report { app: Some(app("the release's metadata")), ..Report::default() };
        assert!(check_report(&ok).is_ok());
        let cases = [
            (Report { app: Some(app(&"x".repeat(MAX_NAME + 1))), ..Report::default() }, "app.strategy_source"),
            (Report { app: Some(app("a\u{1b}[2J")), ..Report::default() }, "control characters"),
            (Report { channel: Some("c".repeat(256)), ..Report::default() }, "channel"),
            (Report { last_error: Some("e".repeat(MAX_TEXT + 1)), ..Report::default() }, "last_error"),
            (Report { progress: Some(101), ..Report::default() }, "progress"),
        ];
        for (r, names) in cases {
            let e = check_report(&r).unwrap_err().to_string();
            assert!(e.contains(names), "{e}");
        }
    }

    /// A device record is written exactly as the store always wrote it: the report's fields
    /// in the store's order, not the API's.
    #[test]
    fn a_device_record_keeps_its_report_in_the_store_s_field_order() {
        let d = Device {
            serial: "SN-1".into(),
            hardware: "rev-a".into(),
            state: DeviceState::Accepted,
            enrolled: 1,
            token: "ab".into(),
            groups: vec!["lab".into()],
            groups_version: 0,
            last_seen: None,
            report: Report { channel: Some("stable".into()), uptime: Some(5), ..Report::default() },
            served: Default::default(),
            failed: Default::default(),
            accepted_by: None,
            enrolled_seq: Some(2),
            reenrollment: None,
            client_certificate: None,
        };
        let text = String::from_utf8(json(&d)).unwrap();
        assert_eq!(
            text,
            r#"{"serial":"SN-1","hardware":"rev-a","state":"accepted","enrolled":1,"token":"ab","groups":["lab"],"groups_version":0,"last_seen":null,"report":{"current":null,"current_version":null,"previous":null,"channel":"stable","trial":null,"last_result":null,"last_error":null,"progress":null,"free_bytes":null,"agent_version":null,"uptime":5,"pinned":null,"dev":null,"config_version":null,"config_error":null},"served":{},"failed":{},"accepted_by":null,"enrolled_seq":2,"reenrollment":null,"client_certificate":null}"#
        );
        let back: Device = parse(text.as_bytes(), || "device".into()).unwrap();
        assert_eq!(back.report, d.report);
    }
}
