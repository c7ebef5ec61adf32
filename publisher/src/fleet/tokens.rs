//! Admin and enrollment tokens, and who a token belongs to: the admin, the device (if it
//! may use the device API), or the reader of the repository under `--fleet`. Tokens are
//! stored as their BLAKE3 hash only. What it is not for: device tokens' creation
//! (enrollment) or replacement (re-enrollment), which `enrollment` does.

use ferry_store::kv::Op;

use super::{
    check_name, hash, json, now, parse, Caller, Device, DeviceState, Fleet, FleetError, Result, TokenKind, TokenRecord,
    TOKENS,
};

/// The prefix naming a token's kind.
fn prefix(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Admin => "fa_",
        TokenKind::Enrollment => "fe_",
        TokenKind::Device => "fd_",
    }
}

/// An admin token as the store keeps it (its BLAKE3 hash): what a web session holds
/// instead of the token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AdminKey([u8; 32]);

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey(…)")
    }
}

impl AdminKey {
    /// The key in hex, as a stored session keeps it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<AdminKey> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(AdminKey(bytes))
    }
}

#[cfg(test)]
impl AdminKey {
    /// A key standing for no stored token, for tests of what holds one.
    pub(crate) fn for_tests(bytes: [u8; 32]) -> AdminKey {
        AdminKey(bytes)
    }
}

pub(super) fn new_token(kind: TokenKind) -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| FleetError::BadRequest(format!("no random bytes: {e}")))?;
    Ok(format!("{}{}", prefix(kind), hex::encode(bytes)))
}

impl Fleet {
    /// Creates a token; returns it (the only time it is seen in the clear).
    pub fn create_token(&self, who: &Caller, kind: TokenKind, name: &str) -> Result<String> {
        check_name("token name", name)?;
        if kind == TokenKind::Device {
            return Err(FleetError::BadRequest("device tokens come from enrollment".into()));
        }
        let token = new_token(kind)?;
        let record = TokenRecord { kind, name: name.into(), created: now() };
        self.retrying("creating a token", || {
            let _g = self.lock();
            let audit = self.audit_op(who, "token create", format!("{kind:?} token {name}").to_lowercase())?;
            self.db.write(vec![Op::Insert { table: TOKENS, key: hash(&token).to_vec(), value: json(&record) }, audit])
        })?;
        Ok(token)
    }

    /// Every admin and enrollment token's record (never the tokens themselves).
    pub fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let mut out = Vec::new();
        for (_, v) in self.db.scan(TOKENS, b"")? {
            let r: TokenRecord = parse(&v, || "token".into())?;
            if r.kind != TokenKind::Device {
                out.push(r);
            }
        }
        out.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
        Ok(out)
    }

    /// Revokes every admin or enrollment token named `name`.
    pub fn revoke_token(&self, who: &Caller, name: &str) -> Result<usize> {
        self.retrying("revoking a token", || self.revoke_token_once(who, name))
    }

    fn revoke_token_once(&self, who: &Caller, name: &str) -> Result<usize> {
        let _g = self.lock();
        let mut ops = Vec::new();
        for (k, v) in self.db.scan(TOKENS, b"")? {
            let r: TokenRecord = parse(&v, || "token".into())?;
            if r.kind != TokenKind::Device && r.name == name {
                ops.push(Op::Delete { table: TOKENS, key: k });
            }
        }
        if ops.is_empty() {
            return Err(FleetError::NotFound(format!("no admin or enrollment token named {name}")));
        }
        let n = ops.len();
        ops.push(self.audit_op(who, "token revoke", format!("{n} token(s) named {name}"))?);
        self.db.write(ops)?;
        Ok(n)
    }

    pub(super) fn token(&self, token: &str) -> Result<Option<TokenRecord>> {
        self.token_hashed(&hash(token))
    }

    fn token_hashed(&self, hashed: &[u8; 32]) -> Result<Option<TokenRecord>> {
        match self.db.get(TOKENS, hashed)? {
            Some(v) => Ok(Some(parse(&v, || "token".into())?)),
            None => Ok(None),
        }
    }

    /// The admin a token belongs to.
    pub fn admin(&self, token: &str) -> Result<Caller> {
        match self.token(token)? {
            Some(r) if r.kind == TokenKind::Admin => Ok(Caller::Admin(r.name)),
            _ => Err(FleetError::Unauthorized("not a valid admin token".into())),
        }
    }

    /// The admin a token belongs to and the token's [`AdminKey`], for a web session that
    /// checks it again at every request without keeping the token.
    pub fn admin_key(&self, token: &str) -> Result<(Caller, AdminKey)> {
        Ok((self.admin(token)?, AdminKey(hash(token))))
    }

    /// The admin whose token `key` stands for: refused (401) once that token is revoked.
    pub fn admin_by_key(&self, key: &AdminKey) -> Result<Caller> {
        match self.token_hashed(&key.0)? {
            Some(r) if r.kind == TokenKind::Admin => Ok(Caller::Admin(r.name)),
            _ => Err(FleetError::Unauthorized(
                "the admin token this session signed in with was revoked; sign in again".into(),
            )),
        }
    }

    /// The device a token belongs to, if it may use the device API.
    pub fn device_for(&self, token: &str) -> Result<Device> {
        let serial = match self.token(token)? {
            Some(r) if r.kind == TokenKind::Device => r.name,
            _ => return Err(FleetError::Unauthorized("not a valid device token; enroll again".into())),
        };
        let device = self.device(&serial)?;
        let hashed = hex::encode(hash(token));
        if device.reenrollment.as_ref().is_some_and(|r| r.token == hashed) {
            return Err(FleetError::Forbidden(format!(
                "device {serial} enrolled again: waiting for an operator to approve the new enrollment"
            )));
        }
        if device.token != hashed {
            return Err(FleetError::Unauthorized("this device token was replaced; enroll again".into()));
        }
        match device.state {
            DeviceState::Accepted => Ok(device),
            DeviceState::Pending => Err(FleetError::Forbidden(format!("device {serial} is waiting for approval"))),
            DeviceState::Revoked => Err(FleetError::Forbidden(format!("device {serial} is revoked"))),
        }
    }

    /// Whom a token belongs to, if it may read the repository under `--fleet`: an admin, or
    /// an accepted device (a pending, revoked or replaced device's token reads nothing).
    pub fn reader(&self, token: &str) -> Result<Caller> {
        match self.token(token)? {
            Some(r) if r.kind == TokenKind::Admin => Ok(Caller::Admin(r.name)),
            Some(r) if r.kind == TokenKind::Device => Ok(Caller::Device(self.device_for(token)?.serial)),
            _ => Err(FleetError::Unauthorized("not a valid device or admin token".into())),
        }
    }
}
