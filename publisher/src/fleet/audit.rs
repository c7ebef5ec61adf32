//! The audit log: one entry per change, with who made it, written in the same synced batch
//! as the change. Its sequence numbers also order enrollments against the start of rollouts
//! ([`super::counts_for`]). What it is not for: a device's own history (`devices`).

use ferry_store::kv::Op;

use super::{json, now, parse, AuditEntry, Caller, Fleet, FleetError, Result, AUDIT};

impl Fleet {
    /// The audit entry for `action`, with the next sequence number (caller holds the lock).
    pub(super) fn audit_op(&self, who: &Caller, action: &str, detail: String) -> Result<Op> {
        self.audit_op_numbered(who, action, detail).map(|(_, op)| op)
    }

    /// [`Fleet::audit_op`] and the number the entry gets (what orders an enrollment or a
    /// rollout's start against the rest: the same number, not one read apart from it).
    pub(super) fn audit_op_numbered(&self, who: &Caller, action: &str, detail: String) -> Result<(u64, Op)> {
        let seq = self.next_audit_seq()?;
        let entry = AuditEntry { seq, at: now(), who: who.who(), action: action.into(), detail };
        // Inserted: a replica that took the same number first makes the batch fail, and
        // the caller tries again with the next number.
        Ok((seq, Op::Insert { table: AUDIT, key: seq.to_be_bytes().to_vec(), value: json(&entry) }))
    }

    /// The sequence number the next audit entry gets (caller holds the lock).
    pub(super) fn next_audit_seq(&self) -> Result<u64> {
        Ok(match self.db.last(AUDIT)? {
            Some((k, _)) => {
                u64::from_be_bytes(k.try_into().map_err(|_| FleetError::Damaged {
                    what: "audit log".into(),
                    why: "a key is not 8 bytes".into(),
                })?) + 1
            }
            None => 1,
        })
    }

    /// Records an action done elsewhere (a promotion through the admin API) in the audit log.
    pub fn record(&self, who: &Caller, action: &str, detail: String) -> Result<()> {
        self.retrying("recording an action", || {
            let _g = self.lock();
            self.db.write(vec![self.audit_op(who, action, detail.clone())?])
        })
    }

    /// The newest `limit` audit entries, oldest first: one page from `limit` numbers before
    /// the last (the numbers run without a hole), however long the log.
    pub fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        let next = self.next_audit_seq()?;
        let from = next.saturating_sub(limit as u64 + 1);
        let after = (from > 0).then(|| from.to_be_bytes());
        let page = self.db.page(AUDIT, b"", after.as_ref().map(|a| &a[..]), limit)?;
        page.iter().map(|(_, v)| parse(v, || "audit entry".into())).collect()
    }
}
