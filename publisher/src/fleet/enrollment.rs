//! Enrollment with the fleet's enrollment token, rate-limited per token and overall, and
//! re-enrollment requests: a known serial enrolling again gets a token that works nowhere
//! until an operator approves the request (or rejects it). What it is not for: what an
//! enrolled device does next (`devices`).

use ferry_api::device::Enrolled;
use ferry_store::kv::Op;

use serde::{Deserialize, Serialize};

use super::tokens::new_token;
use super::{
    check_name, expect, hash, json, now, parse, Caller, Device, DeviceState, Fleet, FleetError, Reenrollment, Report,
    Result, TokenKind, TokenRecord, LIMITS, TOKENS,
};

/// The default of [`super::Settings::enrollments_per_minute`] (`ferry serve
/// --enrollments-per-minute`): 10 at once, then one every 6 s per enrollment token.
pub const ENROLLMENTS_PER_MINUTE: u32 = 10;

/// All enrollment tokens together may make this many times one token's burst and rate.
pub const ENROLL_ALL_FACTOR: u32 = 6;

/// A token bucket holding at most `per_minute` units, refilled at `per_minute` a minute,
/// kept in the fleet's store (`limits`) so every server on it draws on the same one.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Bucket {
    level: f64,
    /// When `level` was last brought up to date, in milliseconds since the epoch (servers'
    /// clocks agree to well within a unit's refill time).
    at_ms: i64,
}

impl Bucket {
    fn full(per_minute: u32, now_ms: i64) -> Bucket {
        Bucket { level: f64::from(per_minute), at_ms: now_ms }
    }

    /// Takes one unit if there is one; else the seconds until there will be.
    fn take(&mut self, per_minute: u32, now_ms: i64) -> std::result::Result<(), u64> {
        let rate = f64::from(per_minute) / 60.0;
        let elapsed = (now_ms.saturating_sub(self.at_ms)).max(0) as f64 / 1000.0;
        let level = if self.level.is_finite() { self.level } else { 0.0 };
        self.level = (level + elapsed * rate).clamp(0.0, f64::from(per_minute));
        self.at_ms = now_ms.max(self.at_ms);
        if self.level >= 1.0 {
            self.level -= 1.0;
            return Ok(());
        }
        Err(if rate > 0.0 { ((1.0 - self.level) / rate).ceil().max(1.0) as u64 } else { 60 })
    }
}

impl Fleet {
    /// Takes one enrollment from `token_name`'s bucket and the fleet's, read and written
    /// back on condition that no other server took from them meanwhile.
    fn limit_enrollment(&self, token_name: &str) -> Result<()> {
        let per_minute = self.settings.enrollments_per_minute;
        let all_per_minute = per_minute.saturating_mul(ENROLL_ALL_FACTOR);
        let mine_key = [b"enroll\0".as_slice(), token_name.as_bytes()].concat();
        let all_key = b"enroll-all".to_vec();
        self.retrying("rate-limiting an enrollment", || {
            let _l = self.enroll_limits.lock().unwrap_or_else(|e| e.into_inner());
            // The buckets are shared by every replica: their writers take turns.
            let _turn = self.db.turn();
            let now_ms = (super::now_nanos() / 1_000_000) as i64;
            let read = |key: &[u8], per_minute| -> Result<(Bucket, Option<Vec<u8>>)> {
                match self.db.get(LIMITS, key)? {
                    Some(b) => Ok((parse(&b, || "an enrollment rate limit".into())?, Some(b))),
                    None => Ok((Bucket::full(per_minute, now_ms), None)),
                }
            };
            let (mut mine, mine_was) = read(&mine_key, per_minute)?;
            let (mut all, all_was) = read(&all_key, all_per_minute)?;
            let too_many = |what: String, retry_after| FleetError::TooMany { what, retry_after };
            mine.take(per_minute, now_ms)
                .map_err(|s| too_many(format!("too many enrollments with enrollment token {token_name}"), s))?;
            all.take(all_per_minute, now_ms).map_err(|s| too_many("too many enrollments".into(), s))?;
            self.db.write(vec![
                expect(LIMITS, &mine_key, mine_was),
                expect(LIMITS, &all_key, all_was),
                Op::Put { table: LIMITS, key: mine_key.clone(), value: json(&mine) },
                Op::Put { table: LIMITS, key: all_key.clone(), value: json(&all) },
            ])
        })
    }

    /// Enrolls a device with a fleet enrollment token. A serial the fleet knows keeps its
    /// state and token: the enrollment becomes a re-enrollment request (its token works
    /// nowhere, the answer says `pending`) until an operator approves it
    /// ([`Fleet::approve_reenrollment`]); a newer request replaces an older one. A revoked
    /// device is refused. Enrollments are rate-limited per enrollment token and overall.
    ///
    /// `certificate` is the SHA-256 of a client certificate issued for this enrollment
    /// (mutual TLS), bound to the device with its token (to a re-enrollment, on approval).
    pub fn enroll(
        &self,
        serial: &str,
        hardware: &str,
        enrollment_token: &str,
        certificate: Option<[u8; 32]>,
    ) -> Result<Enrolled> {
        self.enroll_issuing(serial, hardware, enrollment_token, || Ok(certificate.map(|c| (String::new(), c))))
            .map(|(enrolled, _)| enrolled)
    }

    /// [`Fleet::enroll`], with `issue` run only once the enrollment token is valid and the
    /// rate limit allowed the enrollment (signing a certificate is work a stranger must not
    /// be able to ask for): it returns the certificate (PEM) and its SHA-256, or none.
    pub fn enroll_issuing(
        &self,
        serial: &str,
        hardware: &str,
        enrollment_token: &str,
        issue: impl FnOnce() -> Result<Option<(String, [u8; 32])>>,
    ) -> Result<(Enrolled, Option<String>)> {
        check_name("serial", serial)?;
        check_name("hardware", hardware)?;
        let who = match self.token(enrollment_token)? {
            Some(r) if r.kind == TokenKind::Enrollment => r.name,
            _ => return Err(FleetError::Unauthorized("not a valid enrollment token".into())),
        };
        self.limit_enrollment(&who)?;
        let issued = issue()?;
        let certificate = issued.as_ref().map(|(_, fp)| hex::encode(fp));
        let enrolled = self.retrying("enrolling", || self.enroll_once(serial, hardware, &who, certificate.clone()))?;
        Ok((enrolled, issued.map(|(pem, _)| pem)))
    }

    fn enroll_once(&self, serial: &str, hardware: &str, who: &str, certificate: Option<String>) -> Result<Enrolled> {
        let _g = self.lock();
        let _d = self.device_lock(serial);
        // The batch expects the record as read (or its absence): a serial enrolled at the
        // same moment through another server is a known serial when this one reads again.
        let (existing, was) = match self.device_read(serial) {
            Ok((d, raw)) => (Some(d), Some(raw)),
            Err(FleetError::NotFound(_)) => (None, None),
            Err(e) => return Err(e),
        };
        let token = new_token(TokenKind::Device)?;
        let hashed = hex::encode(hash(&token));
        let mut ops = Vec::new();
        // The enrollment's audit entry gets this number: it orders the device against
        // rollouts (`counts_for`).
        let (seq, audit) = self.audit_op_numbered(
            &Caller::Device(serial.into()),
            if existing.is_some() { "enroll again" } else { "enroll" },
            format!("hardware {hardware}, token {who}"),
        )?;
        let (device, whats, state) = match existing {
            Some(d) if d.state == DeviceState::Revoked => {
                return Err(FleetError::Forbidden(format!("device {serial} is revoked")));
            }
            Some(mut d) => {
                // The enrollment token is in every image: a second enrollment of a known
                // serial may be a reflashed board or anyone else. The device keeps its
                // token and state; an operator decides.
                let mut whats = vec![format!(
                    "enrolled again ({hardware}) with enrollment token {who}: waiting for an operator to approve it"
                )];
                if let Some(old) = d.reenrollment.take() {
                    let mut old_hash = [0u8; 32];
                    if hex::decode_to_slice(&old.token, &mut old_hash).is_ok() {
                        ops.push(Op::Delete { table: TOKENS, key: old_hash.to_vec() });
                    }
                    whats.push("(it replaces an earlier request, which no longer works)".into());
                }
                d.reenrollment = Some(Reenrollment {
                    token: hashed,
                    hardware: hardware.into(),
                    at: now(),
                    enrollment_token: who.to_string(),
                    client_certificate: certificate.clone(),
                });
                (d, whats, DeviceState::Pending)
            }
            None => {
                let state = if self.settings.require_approval { DeviceState::Pending } else { DeviceState::Accepted };
                let d = Device {
                    serial: serial.into(),
                    hardware: hardware.into(),
                    state,
                    enrolled: now(),
                    token: hashed,
                    groups: Vec::new(),
                    groups_version: 0,
                    served: Default::default(),
                    failed: Default::default(),
                    last_seen: None,
                    report: Report::default(),
                    accepted_by: None,
                    enrolled_seq: Some(seq),
                    reenrollment: None,
                    client_certificate: certificate.clone(),
                };
                (d, vec![format!("enrolled ({hardware}) with enrollment token {who}")], state)
            }
        };
        let record = TokenRecord { kind: TokenKind::Device, name: serial.into(), created: now() };
        ops.push(Op::Put { table: TOKENS, key: hash(&token).to_vec(), value: json(&record) });
        ops.extend(Fleet::device_ops(&device, was));
        ops.extend(self.event_ops(serial, whats)?);
        ops.push(audit);
        self.db.write(ops)?;
        Ok(Enrolled { certificate: None, device_token: token, state: Some(state) })
    }

    /// Approves a device's re-enrollment request, the one whose [`Reenrollment::fingerprint`]
    /// is `request`: its token replaces the device's (which stops working at once); the
    /// device's state, groups and history stay. Another request (a newer one replaced the
    /// one the operator looked at) is a conflict and changes nothing.
    pub fn approve_reenrollment(&self, who: &Caller, serial: &str, request: &str) -> Result<Device> {
        self.settle_reenrollment(who, serial, Some(request))
    }

    /// Rejects a device's re-enrollment request, whichever it is: its token never works.
    pub fn reject_reenrollment(&self, who: &Caller, serial: &str) -> Result<Device> {
        self.settle_reenrollment(who, serial, None)
    }

    fn settle_reenrollment(&self, who: &Caller, serial: &str, approve: Option<&str>) -> Result<Device> {
        self.retrying("settling a re-enrollment", || self.settle_reenrollment_once(who, serial, approve))
    }

    fn settle_reenrollment_once(&self, who: &Caller, serial: &str, approve: Option<&str>) -> Result<Device> {
        let _g = self.lock();
        let _d = self.device_lock(serial);
        let (mut d, was) = self.device_read(serial)?;
        let r = d.reenrollment.take().ok_or_else(|| {
            FleetError::NotFound(format!("device {serial} has no re-enrollment waiting for approval"))
        })?;
        if let Some(request) = approve {
            if request.len() < 8 || !r.fingerprint().starts_with(request) {
                return Err(FleetError::Conflict(format!(
                    "device {serial}'s re-enrollment request is {}, not {request:?}: a newer request replaced the one you looked at (or the fingerprint is mistyped); check it against `ferryd status` on the board and approve that one",
                    r.fingerprint()
                )));
            }
        }
        let approve = approve.is_some();
        let (drop_hash, action) = if approve {
            d.hardware = r.hardware.clone();
            d.accepted_by = Some(who.who());
            d.client_certificate = r.client_certificate.clone();
            (std::mem::replace(&mut d.token, r.token), "approve re-enrollment")
        } else {
            (r.token, "reject re-enrollment")
        };
        let mut ops = Vec::new();
        let mut old = [0u8; 32];
        if hex::decode_to_slice(&drop_hash, &mut old).is_ok() {
            ops.push(Op::Delete { table: TOKENS, key: old.to_vec() });
        }
        ops.extend(Fleet::device_ops(&d, Some(was)));
        ops.extend(self.mark_ops(serial, Some(&d))?);
        ops.push(self.event_op(serial, format!("{action} by {}", who.who()))?);
        ops.push(self.audit_op(who, action, format!("device {serial}"))?);
        self.db.write(ops)?;
        Ok(d)
    }
}
