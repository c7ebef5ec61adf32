//! Staged rollouts: which document each device gets at check-in (the head, or the base for
//! devices outside the share), which devices count in a rollout's statistics
//! ([`counts_for`]), and the automatic halt when too many of them fail. What it is not for:
//! signing or promoting documents (the repository's `channels`).

use ferry_api::admin::RolloutAction;
use ferry_store::kv::Op;

use super::{
    check_name, expect, json, now, parse, Caller, Device, Fleet, FleetError, Result, Rollout, RolloutState,
    RolloutStatus, MAX_TEXT, ROLLOUTS,
};

/// True if a device counts in `r`'s statistics (and so for its automatic halt): an operator
/// accepted it, or it enrolled before the rollout started. Devices enrolled (and accepted
/// automatically) during the rollout take part in it but are not counted, so whoever holds
/// the enrollment token cannot halt a rollout with fake failures or hide real ones among
/// fake successes.
pub fn counts_for(d: &Device, r: &Rollout) -> bool {
    if d.accepted_by.is_some() {
        return true;
    }
    match (d.enrolled_seq, r.started_seq) {
        (Some(e), Some(s)) => e < s,
        (None, _) => true,
        (Some(_), None) => d.enrolled < r.started,
    }
}

/// A device's place in rollouts of `channel`: 0..10000, fixed for the pair.
pub fn bucket(channel: &str, serial: &str) -> u32 {
    let mut h = blake3::Hasher::new();
    h.update(b"ferry rollout v1\0");
    h.update(channel.as_bytes());
    h.update(b"\0");
    h.update(serial.as_bytes());
    let b = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&b.as_bytes()[..8]);
    (u64::from_le_bytes(first) % 10_000) as u32
}

/// Which document a device gets at check-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// The channel's newest document.
    Head,
    /// The rollout's base document (its id).
    Base(String),
}

/// The channel's newest document as the fleet sees it: id, serial, and each hardware
/// revision's target commit.
#[derive(Debug, Clone)]
pub struct HeadDoc {
    pub id: String,
    pub serial: u64,
    pub targets: std::collections::BTreeMap<String, String>,
}

impl Fleet {
    pub fn rollout(&self, channel: &str) -> Result<Option<Rollout>> {
        self.rollout_read(channel).map(|(r, _)| r)
    }

    /// A channel's rollout and its stored bytes, which a change's batch expects unchanged:
    /// of two servers changing it at the same moment, one wins and the other reads again.
    fn rollout_read(&self, channel: &str) -> Result<(Option<Rollout>, Option<Vec<u8>>)> {
        match self.db.get(ROLLOUTS, channel.as_bytes())? {
            Some(v) => Ok((Some(parse(&v, || format!("rollout of {channel}"))?), Some(v))),
            None => Ok((None, None)),
        }
    }

    pub fn rollouts(&self) -> Result<Vec<Rollout>> {
        self.db.scan(ROLLOUTS, b"")?.iter().map(|(_, v)| parse(v, || "rollout".into())).collect()
    }

    /// Starts a rollout on `channel` whose current document (`base`) stays what everyone
    /// gets until a newer one is promoted. A running or paused rollout must be finished
    /// (at 100%) or aborted first.
    pub fn start_rollout(
        &self,
        who: &Caller,
        channel: &str,
        base: &HeadDoc,
        percent: u8,
        group: Option<String>,
        max_failure_percent: u8,
    ) -> Result<Rollout> {
        if percent > 100 || max_failure_percent > 100 {
            return Err(FleetError::BadRequest("percentages must be 0 to 100".into()));
        }
        if let Some(g) = &group {
            check_name("group", g)?;
        }
        self.retrying("starting a rollout", || {
            let _g = self.lock();
            let (old, was) = self.rollout_read(channel)?;
            if let Some(r) = old {
                if r.state != RolloutState::Aborted && r.percent < 100 {
                    return Err(FleetError::BadRequest(format!(
                        "channel {channel} has a rollout at {}% ({:?}); set it to 100 or abort it first",
                        r.percent, r.state
                    )));
                }
            }
            let r = Rollout {
                channel: channel.into(),
                base: base.id.clone(),
                base_serial: base.serial,
                percent,
                group: group.clone(),
                state: RolloutState::Running,
                max_failure_percent,
                halt_reason: None,
                started: now(),
                started_seq: None,
            };
            let detail = format!("{channel}: {percent}% from serial {}", base.serial);
            let (seq, audit) = self.audit_op_numbered(who, "rollout start", detail)?;
            // The start's audit entry's number (`counts_for`).
            let r = Rollout { started_seq: Some(seq), ..r };
            self.db.write(vec![
                expect(ROLLOUTS, channel.as_bytes(), was),
                Op::Put { table: ROLLOUTS, key: channel.as_bytes().to_vec(), value: json(&r) },
                audit,
            ])?;
            Ok(r)
        })
    }

    /// Changes a rollout: raises its percent (`SetPercent`, with `percent`), or pauses,
    /// resumes or aborts it. `Start` is [`Fleet::start_rollout`]'s, and refused here.
    pub fn change_rollout(
        &self,
        who: &Caller,
        channel: &str,
        action: RolloutAction,
        percent: Option<u8>,
    ) -> Result<Rollout> {
        self.retrying("changing a rollout", || self.change_rollout_once(who, channel, action, percent))
    }

    fn change_rollout_once(
        &self,
        who: &Caller,
        channel: &str,
        action: RolloutAction,
        percent: Option<u8>,
    ) -> Result<Rollout> {
        let _g = self.lock();
        let (r, was) = self.rollout_read(channel)?;
        let mut r = r.ok_or_else(|| FleetError::NotFound(format!("channel {channel} has no rollout")))?;
        if r.state == RolloutState::Aborted {
            return Err(FleetError::BadRequest(format!("the rollout on {channel} was aborted; start a new one")));
        }
        match (action, percent) {
            (RolloutAction::SetPercent, Some(p)) if p <= 100 => {
                if p < r.percent {
                    return Err(FleetError::BadRequest(format!(
                        "the rollout is at {}%; lowering it would take the new release away from devices that have it",
                        r.percent
                    )));
                }
                r.percent = p;
            }
            (RolloutAction::SetPercent, _) => {
                return Err(FleetError::BadRequest("set-percent needs a percent from 0 to 100".into()))
            }
            (RolloutAction::Pause, _) => r.state = RolloutState::Paused,
            (RolloutAction::Resume, _) => {
                r.state = RolloutState::Running;
                r.halt_reason = None;
            }
            (RolloutAction::Abort, _) => r.state = RolloutState::Aborted,
            (RolloutAction::Start, _) => return Err(no_rollout_action(action.as_str())),
        }
        let action = action.as_str();
        let detail = format!("{channel}: {action}{}", percent.map(|p| format!(" {p}%")).unwrap_or_default());
        self.db.write(vec![
            expect(ROLLOUTS, channel.as_bytes(), was),
            Op::Put { table: ROLLOUTS, key: channel.as_bytes().to_vec(), value: json(&r) },
            self.audit_op(who, &format!("rollout {action}"), detail)?,
        ])?;
        Ok(r)
    }

    /// Which document `device` gets for `channel` whose newest document is `head`, and
    /// records that it got it. A device that took a failed release may halt the rollout.
    pub fn pick(&self, device: &Device, channel: &str, head: &HeadDoc) -> Result<Pick> {
        let Some(r) = self.rollout(channel)? else {
            return self.record_served(device, channel, head.serial).map(|()| Pick::Head);
        };
        let taken = device.served.get(channel).is_some_and(|s| *s > r.base_serial);
        let eligible = r.group.as_ref().is_none_or(|g| device.groups.contains(g));
        let chosen = bucket(channel, &device.serial) < u32::from(r.percent) * 100;
        let head_wins =
            head.serial <= r.base_serial || taken || (r.state == RolloutState::Running && eligible && chosen);
        if !head_wins {
            return Ok(Pick::Base(r.base));
        }
        self.record_served(device, channel, head.serial)?;
        if taken
            && r.state == RolloutState::Running
            && head.serial > r.base_serial
            && failed(device, channel, r.base_serial)
        {
            self.maybe_halt(channel, head)?;
        }
        Ok(Pick::Head)
    }

    fn record_served(&self, device: &Device, channel: &str, serial: u64) -> Result<()> {
        if device.served.get(channel) == Some(&serial) {
            return Ok(());
        }
        self.retrying("recording what a device was served", || {
            let _d = self.device_lock(&device.serial);
            let (mut d, was) = self.device_read(&device.serial)?;
            d.served.insert(channel.into(), serial);
            self.db.write(Fleet::device_ops(&d, Some(was)).to_vec())
        })
    }

    /// Counts the devices that took documents newer than the base and how many of them
    /// failed; pauses the rollout when the share is above its limit.
    fn maybe_halt(&self, channel: &str, head: &HeadDoc) -> Result<()> {
        self.retrying("halting a rollout", || self.maybe_halt_once(channel, head))
    }

    fn maybe_halt_once(&self, channel: &str, head: &HeadDoc) -> Result<()> {
        let _g = self.lock();
        let (r, was) = self.rollout_read(channel)?;
        let Some(mut r) = r else { return Ok(()) };
        if r.state != RolloutState::Running {
            return Ok(());
        }
        let (mut took, mut bad) = (0usize, Vec::new());
        for d in self.devices()? {
            if counts_for(&d, &r) && took_it(&d, channel, r.base_serial) {
                took += 1;
                if failed(&d, channel, r.base_serial) {
                    bad.push(format!(
                        "{}: {}",
                        d.serial,
                        d.report.last_error.as_deref().or(d.report.last_result.as_deref()).unwrap_or("failed")
                    ));
                }
            }
        }
        if took == 0 || bad.len() * 100 <= took * usize::from(r.max_failure_percent) {
            return Ok(());
        }
        let mut reason = format!(
            "{} of {took} devices that took serial {} failed ({}% > {}%): ",
            bad.len(),
            head.serial,
            bad.len() * 100 / took,
            r.max_failure_percent
        );
        reason += &bad.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
        let mut cut = reason.len().min(MAX_TEXT);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        r.state = RolloutState::Paused;
        r.halt_reason = Some(reason.clone());
        self.db.write(vec![
            expect(ROLLOUTS, channel.as_bytes(), was),
            Op::Put { table: ROLLOUTS, key: channel.as_bytes().to_vec(), value: json(&r) },
            self.audit_op(&Caller::Server, "rollout halt", format!("{channel}: {reason}"))?,
        ])
    }

    pub fn rollout_status(&self, r: Rollout) -> Result<RolloutStatus> {
        let (mut devices, mut eligible, mut took, mut failed_n, mut uncounted) = (0, 0, 0, 0, 0);
        for d in self.devices()? {
            if d.report.channel.as_deref() != Some(r.channel.as_str()) {
                continue;
            }
            if !counts_for(&d, &r) {
                uncounted += 1;
                continue;
            }
            devices += 1;
            if r.group.as_ref().is_none_or(|g| d.groups.contains(g)) {
                eligible += 1;
            }
            if took_it(&d, &r.channel, r.base_serial) {
                took += 1;
                if failed(&d, &r.channel, r.base_serial) {
                    failed_n += 1;
                }
            }
        }
        Ok(RolloutStatus { rollout: r, devices, eligible, took, failed: failed_n, uncounted })
    }
}

/// The error for a path segment that names no change of a rollout.
pub fn no_rollout_action(action: &str) -> FleetError {
    FleetError::NotFound(format!("no rollout action {action:?} (set-percent, pause, resume, abort)"))
}

/// True if a device that took `head` reports a rollback or a failed update and does not run
/// its target.
fn failed(d: &Device, channel: &str, base_serial: u64) -> bool {
    d.failed.get(channel).is_some_and(|s| *s > base_serial)
}

/// True if a device took a document newer than the rollout's base and can run it: pinned
/// and dev boards take no release and do not count.
fn took_it(d: &Device, channel: &str, base_serial: u64) -> bool {
    d.served.get(channel).is_some_and(|s| *s > base_serial)
        && d.report.pinned != Some(true)
        && d.report.dev != Some(true)
}
