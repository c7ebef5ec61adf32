//! Staged rollouts: which document each device gets at check-in (the head, or the base for
//! devices outside the share), which devices count in a rollout's statistics
//! ([`counts_for`]), and the automatic halt when too many of them fail. What it is not for:
//! signing or promoting documents (the repository's `channels`).

use ferry_api::admin::RolloutAction;
use ferry_store::kv::Op;
use serde::{Deserialize, Serialize};

use super::{
    check_name, expect, json, now, parse, Caller, Device, Fleet, FleetError, Result, Rollout, RolloutState,
    RolloutStatus, MARKS, MAX_TEXT, ROLLOUTS, ROLLOUT_COUNTS, ROLLOUT_FAILED,
};

/// The examples a halt's reason names.
const HALT_EXAMPLES: usize = 5;

/// Each counter is kept in this many parts (a device adds to the part its serial picks),
/// so devices taking a release at the same moment do not queue on one row.
const COUNTER_PARTS: u8 = 16;

/// A device's part in the statistics of its channel's rollout, kept (in `marks`, by serial)
/// while it took the rollout's release and counts ([`counts_for`]). The rollout's counters
/// are the sums of these marks, changed in the batch that changes a mark: a check-in or a
/// halt reads the counters, never the fleet. A device counts in the rollout of the channel
/// it reports (a device that moved to another channel leaves the figures, as it leaves
/// `rollout status`'s list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Mark {
    channel: String,
    /// The rollout's [`run`].
    run: u64,
    failed: bool,
}

/// One rollout of a channel among those it has had: its start's audit number (its start
/// time for rollouts recorded before those were kept).
fn run(r: &Rollout) -> u64 {
    r.started_seq.unwrap_or(r.started.max(0) as u64)
}

/// The keys of a run's counters and failed devices start with this.
fn run_prefix(channel: &str, run: u64) -> Vec<u8> {
    let mut p = channel.as_bytes().to_vec();
    p.push(0);
    p.extend_from_slice(&run.to_be_bytes());
    p.push(0);
    p
}

/// A part of one of a run's counters: `counted` (present from the start of runs that keep
/// counters), `took`, `failed`.
fn counter_key(channel: &str, run: u64, name: &str, part: u8) -> Vec<u8> {
    let mut k = run_prefix(channel, run);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.push(part);
    k
}

/// The key of a device that took a run's release and failed (the halt's examples).
fn failed_key(channel: &str, run: u64, serial: &str) -> Vec<u8> {
    let mut k = run_prefix(channel, run);
    k.extend_from_slice(serial.as_bytes());
    k
}

/// A rollout's figures: counted devices that took its release, and failed; `counted` if
/// they come from its counters (else from reading every device).
struct Counts {
    took: usize,
    failed: usize,
    counted: bool,
}

impl Mark {
    /// The ops adding (`sign` 1) or taking away (-1) this mark in its run's counters.
    fn count_ops(&self, serial: &str, sign: i64) -> Vec<Op> {
        let part = blake3::hash(serial.as_bytes()).as_bytes()[0] % COUNTER_PARTS;
        let add = |name| Op::Add {
            table: ROLLOUT_COUNTS,
            key: counter_key(&self.channel, self.run, name, part),
            delta: sign,
        };
        let mut ops = vec![add("took")];
        if self.failed {
            ops.push(add("failed"));
            let key = failed_key(&self.channel, self.run, serial);
            ops.push(if sign > 0 {
                Op::Put { table: ROLLOUT_FAILED, key, value: Vec::new() }
            } else {
                Op::Delete { table: ROLLOUT_FAILED, key }
            });
        }
        ops
    }
}

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
                // This run keeps counters from its start (`rollout_counts`).
                Op::Add { table: ROLLOUT_COUNTS, key: counter_key(channel, seq, "counted", 0), delta: 1 },
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
            let mut ops = Fleet::device_ops(&d, Some(was)).to_vec();
            ops.extend(self.mark_ops(&d.serial, Some(&d))?);
            self.db.write(ops)
        })
    }

    /// The ops that keep `serial`'s mark, and its rollout's counters, true to the device as
    /// it is about to be written (`None`: removed), on condition that the mark is still the
    /// one read (always: of two servers writing one device's reports at once, the one that
    /// leaves the mark as it was must not win over the one that changed it) and, when it
    /// changes, that the rollout is still the one read (a check-in racing a rollout's start
    /// reads again and counts in the new run). The caller holds the device's lock.
    pub(super) fn mark_ops(&self, serial: &str, d: Option<&Device>) -> Result<Vec<Op>> {
        let was_bytes = self.db.get(MARKS, serial.as_bytes())?;
        let was: Option<Mark> = match &was_bytes {
            Some(b) => Some(parse(b, || format!("rollout mark of device {serial}"))?),
            None => None,
        };
        let (now, rollout) = match d {
            Some(d) => self.mark_of(d)?,
            None => (None, None),
        };
        let mut ops = vec![expect(MARKS, serial.as_bytes(), was_bytes)];
        if was == now {
            return Ok(ops);
        }
        if let Some((channel, bytes)) = rollout {
            ops.push(expect(ROLLOUTS, channel.as_bytes(), Some(bytes)));
        }
        if let Some(m) = &was {
            ops.extend(m.count_ops(serial, -1));
        }
        match &now {
            Some(m) => {
                ops.extend(m.count_ops(serial, 1));
                ops.push(Op::Put { table: MARKS, key: serial.as_bytes().to_vec(), value: json(m) });
            }
            None => ops.push(Op::Delete { table: MARKS, key: serial.as_bytes().to_vec() }),
        }
        Ok(ops)
    }

    /// `d`'s mark in the rollout of the channel it reports, if it counts and took it; and
    /// that rollout's channel and stored bytes, if there is one.
    #[allow(clippy::type_complexity)]
    fn mark_of(&self, d: &Device) -> Result<(Option<Mark>, Option<(String, Vec<u8>)>)> {
        let Some(channel) = &d.report.channel else { return Ok((None, None)) };
        let (Some(r), Some(bytes)) = self.rollout_read(channel)? else { return Ok((None, None)) };
        let mark = (counts_for(d, &r) && took_it(d, channel, r.base_serial)).then(|| Mark {
            channel: channel.clone(),
            run: run(&r),
            failed: failed(d, channel, r.base_serial),
        });
        Ok((mark, Some((channel.clone(), bytes))))
    }

    /// How many counted devices took `r`'s release, and how many of them failed: its
    /// counters, read together in one indexed read; for a rollout started before counters
    /// were kept (no `counted`), every device read, as then.
    fn rollout_counts(&self, r: &Rollout) -> Result<Counts> {
        let prefix = run_prefix(&r.channel, run(r));
        // 3 counters of at most COUNTER_PARTS parts each, then the failed devices' keys.
        let rows = self.db.page(ROLLOUT_COUNTS, &prefix, None, 3 * usize::from(COUNTER_PARTS))?;
        let (mut counted, mut took, mut failed_n) = (false, 0i64, 0i64);
        for (k, v) in rows {
            let name = &k[prefix.len()..k.len().saturating_sub(2)];
            let n = ferry_store::kv::counter_value(&v).ok_or_else(|| FleetError::Damaged {
                what: format!("counter of the rollout on {}", r.channel),
                why: format!("{} bytes, not 8", v.len()),
            })?;
            match name {
                b"counted" => counted = true,
                b"took" => took += n,
                b"failed" => failed_n += n,
                _ => {}
            }
        }
        if !counted {
            let (took, failed) = self.scan_counts(r)?;
            return Ok(Counts { took, failed, counted });
        }
        Ok(Counts { took: usize::try_from(took).unwrap_or(0), failed: usize::try_from(failed_n).unwrap_or(0), counted })
    }

    /// [`Fleet::rollout_counts`] by reading every device (rollouts started before counters).
    fn scan_counts(&self, r: &Rollout) -> Result<(usize, usize)> {
        let (mut took, mut failed_n) = (0, 0);
        for d in self.devices()? {
            if d.report.channel.as_deref() == Some(r.channel.as_str())
                && counts_for(&d, r)
                && took_it(&d, &r.channel, r.base_serial)
            {
                took += 1;
                failed_n += usize::from(failed(&d, &r.channel, r.base_serial));
            }
        }
        Ok((took, failed_n))
    }

    /// The serials of up to `n` counted devices that took `r`'s release and failed: one
    /// indexed read (for a rollout started before counters, `!counted`, from every device).
    fn failed_examples(&self, r: &Rollout, n: usize, counted: bool) -> Result<Vec<String>> {
        if counted {
            let prefix = run_prefix(&r.channel, run(r));
            let page = self.db.page(ROLLOUT_FAILED, &prefix, None, n)?;
            return Ok(page
                .into_iter()
                .map(|(k, _)| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
                .collect());
        }
        Ok(self
            .devices()?
            .into_iter()
            .filter(|d| {
                d.report.channel.as_deref() == Some(r.channel.as_str())
                    && counts_for(d, r)
                    && took_it(d, &r.channel, r.base_serial)
                    && failed(d, &r.channel, r.base_serial)
            })
            .take(n)
            .map(|d| d.serial)
            .collect())
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
        let Counts { took, failed: bad, counted } = self.rollout_counts(&r)?;
        if took == 0 || bad * 100 <= took * usize::from(r.max_failure_percent) {
            return Ok(());
        }
        let mut examples = Vec::new();
        for serial in self.failed_examples(&r, HALT_EXAMPLES, counted)? {
            let why = match self.device(&serial) {
                Ok(d) => d.report.last_error.or(d.report.last_result).unwrap_or_else(|| "failed".into()),
                Err(_) => "failed".into(),
            };
            examples.push(format!("{serial}: {why}"));
        }
        let mut reason = format!(
            "{bad} of {took} devices that took serial {} failed ({}% > {}%): ",
            head.serial,
            bad * 100 / took,
            r.max_failure_percent
        );
        reason += &examples.join("; ");
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

    /// A rollout and its figures: took and failed from its counters; the devices on the
    /// channel, eligible and uncounted from a read of every device (an operator's look, never
    /// a check-in's).
    pub fn rollout_status(&self, r: Rollout) -> Result<RolloutStatus> {
        let Counts { took, failed: failed_n, .. } = self.rollout_counts(&r)?;
        let (mut devices, mut eligible, mut uncounted) = (0, 0, 0);
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
