//! The web UI's sessions as the fleet's store keeps them (`sessions`, by the BLAKE3 hash of
//! the cookie), so a browser signed in through one replica is signed in on all of them, and
//! a sign-out or a revoked admin token ends it everywhere. What it is not for: the rules of
//! sessions (ages, cookies, cross-site requests, CSRF), which are `fleet_api::sessions`'.

use ferry_store::kv::Op;
use serde::{Deserialize, Serialize};

use super::{json, parse, AdminKey, Fleet, Result, SESSIONS};

/// A signed-in browser's session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The admin token's hash (hex), never the token.
    pub admin: String,
    pub name: String,
    pub csrf: String,
    /// Milliseconds since the epoch (the servers' clocks).
    pub created_ms: i64,
    pub last_used_ms: i64,
}

impl Session {
    pub fn new(admin: &AdminKey, name: String, csrf: String, now_ms: i64) -> Session {
        Session { admin: admin.to_hex(), name, csrf, created_ms: now_ms, last_used_ms: now_ms }
    }

    /// The admin token's key, if the record holds a well-formed one.
    pub fn admin_key(&self) -> Option<AdminKey> {
        AdminKey::from_hex(&self.admin)
    }
}

impl Fleet {
    /// Keeps `session` under `cookie` (its hash), first dropping the sessions `drop` picks
    /// (expired ones; the oldest beyond a bound) among those kept.
    pub fn session_add(
        &self,
        cookie: &[u8; 32],
        session: &Session,
        drop: impl FnOnce(&[([u8; 32], Session)]) -> Vec<[u8; 32]>,
    ) -> Result<()> {
        let kept = self.sessions()?;
        let mut ops: Vec<Op> =
            drop(&kept).into_iter().map(|c| Op::Delete { table: SESSIONS, key: c.to_vec() }).collect();
        ops.push(Op::Put { table: SESSIONS, key: cookie.to_vec(), value: json(session) });
        self.db.write(ops)
    }

    /// The session kept under `cookie`, if any.
    pub fn session(&self, cookie: &[u8; 32]) -> Result<Option<Session>> {
        match self.db.get(SESSIONS, cookie)? {
            Some(v) => Ok(Some(parse(&v, || "a web UI session".into())?)),
            None => Ok(None),
        }
    }

    /// Writes `session` back (its new last use). Two servers doing so at once both write a
    /// time of about now: the last one stays.
    pub fn session_touch(&self, cookie: &[u8; 32], session: &Session) -> Result<()> {
        self.db.write(vec![Op::Put { table: SESSIONS, key: cookie.to_vec(), value: json(session) }])
    }

    pub fn session_remove(&self, cookie: &[u8; 32]) -> Result<()> {
        self.db.write(vec![Op::Delete { table: SESSIONS, key: cookie.to_vec() }])
    }

    /// Every session kept (bounded: signing in drops the expired and the oldest beyond the
    /// web UI's bound). A record that cannot be read is left out (and dropped by the next
    /// sign-in's sweep as unknown).
    pub fn sessions(&self) -> Result<Vec<([u8; 32], Session)>> {
        Ok(self
            .db
            .scan(SESSIONS, b"")?
            .into_iter()
            .filter_map(|(k, v)| Some((k.try_into().ok()?, serde_json::from_slice(&v).ok()?)))
            .collect())
    }
}
