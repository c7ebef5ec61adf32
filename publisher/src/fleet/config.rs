//! Configuration: key-value levels for the fleet, each group and each device, merged for a
//! device in that order (a later group wins), with one version counter every change bumps;
//! and, with the server's online configuration key, the merged configuration signed for one
//! device ([`sign_config`]). What it is not for: applying or verifying it (the device does,
//! from its check-in answer, by `ferry_store::device_config::accept_config`).

use ferry_store::kv::Op;

use super::{
    check_name, expect, json, parse, Caller, Device, Fleet, FleetError, Level, Merged, Result, CONFIG, CONFIG_VERSION,
    DEVICES, MAX_CONFIG_KEYS, MAX_NAME, MAX_TEXT,
};

/// Where a configuration value is set; the narrower level wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Fleet,
    Group(String),
    Device(String),
}

impl Scope {
    pub(super) fn key(&self) -> Vec<u8> {
        match self {
            Scope::Fleet => b"fleet".to_vec(),
            Scope::Group(g) => format!("group/{g}").into_bytes(),
            Scope::Device(d) => format!("device/{d}").into_bytes(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Scope::Fleet => "fleet".into(),
            Scope::Group(g) => format!("group {g}"),
            Scope::Device(d) => format!("device {d}"),
        }
    }
}

/// How long a configuration document signed at a check-in is accepted by a device: it is
/// signed afresh at every check-in, so this only bounds how long a copy can be shown to a
/// device that applied nothing newer.
pub const CONFIG_LIFETIME: i64 = 30 * 86400;

/// The merged configuration `m` of device `serial` as a configuration document signed by
/// `keys` (an encoded envelope), valid for `lifetime` seconds from `now`; `None` while the
/// fleet has no configuration (version 0). The server signs with its online key at each
/// check-in ([`CONFIG_LIFETIME`]); `ferry config sign` with the operator's keys.
pub fn sign_config(
    keys: &[&ferry_store::SecretKey],
    serial: &str,
    m: &Merged,
    now: i64,
    lifetime: i64,
) -> std::result::Result<Option<Vec<u8>>, ferry_store::DecodeError> {
    if m.version == 0 {
        return Ok(None);
    }
    let doc = ferry_store::device_config::ConfigDoc {
        serial: serial.to_string(),
        version: m.version,
        timestamp: now,
        expires: now.saturating_add(lifetime),
        values: m.values.clone(),
    };
    let envelope = ferry_store::channel::Envelope::sign(ferry_store::Signed::Config, doc.encode()?, keys);
    Ok(Some(envelope.encode()))
}

/// Where a device's offline-signed configuration document is kept.
pub(super) fn signed_key(serial: &str) -> Vec<u8> {
    format!("signed/{serial}").into_bytes()
}

/// Checks a configuration key: an environment variable name (`[A-Za-z_][A-Za-z0-9_]*`, at
/// most 128 bytes), so the env-file form needs no quoting of keys.
pub fn check_config_key(k: &str) -> Result<()> {
    let ok = !k.is_empty()
        && k.len() <= MAX_NAME
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !k.as_bytes()[0].is_ascii_digit();
    if !ok {
        return Err(FleetError::BadRequest(format!(
            "configuration key {k:?} must be 1 to {MAX_NAME} letters, digits or `_`, not starting with a digit"
        )));
    }
    Ok(())
}

impl Fleet {
    /// The configuration version (every change of a level or of a device's groups takes
    /// the next one), and its stored bytes: a change's batch expects them unchanged, so of
    /// two servers changing configuration at the same moment one reads again.
    fn config_version(&self) -> Result<(u64, Option<Vec<u8>>)> {
        match self.db.get(CONFIG, CONFIG_VERSION)? {
            Some(v) => Ok((
                u64::from_be_bytes(v.as_slice().try_into().map_err(|_| FleetError::Damaged {
                    what: "configuration version".into(),
                    why: "not 8 bytes".into(),
                })?),
                Some(v),
            )),
            None => Ok((0, None)),
        }
    }

    /// One level's values (empty if never set).
    pub fn level(&self, scope: &Scope) -> Result<Level> {
        match self.db.get(CONFIG, &scope.key())? {
            Some(v) => parse(&v, || format!("configuration of {}", scope.describe())),
            None => Ok(Level::default()),
        }
    }

    /// Sets and unsets keys at one level; returns the new configuration version. A device
    /// level needs the device to exist.
    pub fn set_config(&self, who: &Caller, scope: &Scope, set: &[(String, String)], unset: &[String]) -> Result<u64> {
        for (k, v) in set {
            check_config_key(k)?;
            if v.len() > MAX_TEXT || v.chars().any(char::is_control) {
                return Err(FleetError::BadRequest(format!(
                    "value of {k} must be at most {MAX_TEXT} bytes, on one line, without control characters"
                )));
            }
        }
        for k in unset {
            check_config_key(k)?;
        }
        match scope {
            Scope::Group(g) => check_name("group", g)?,
            Scope::Device(d) => check_name("serial", d)?,
            Scope::Fleet => {}
        }
        self.retrying("changing configuration", || self.set_config_once(who, scope, set, unset))
    }

    fn set_config_once(&self, who: &Caller, scope: &Scope, set: &[(String, String)], unset: &[String]) -> Result<u64> {
        let _g = self.lock();
        // The version first: it guards the level read after it (every change of a level
        // takes the next version, so a level changed since makes this batch fail).
        let (version, was) = self.config_version()?;
        // A device's level: the device as read must still be there when it is written (a
        // removal through another server in between would leave its values to whoever
        // enrolls the serial next).
        let device = match scope {
            Scope::Device(d) => Some(expect(DEVICES, d.as_bytes(), Some(self.device_read(d)?.1))),
            _ => None,
        };
        let mut level = self.level(scope)?;
        for (k, v) in set {
            level.values.insert(k.clone(), v.clone());
        }
        for k in unset {
            level.values.remove(k);
        }
        if level.values.len() > MAX_CONFIG_KEYS {
            return Err(FleetError::BadRequest(format!(
                "{} would hold more than {MAX_CONFIG_KEYS} keys",
                scope.describe()
            )));
        }
        let version = version + 1;
        level.version = version;
        let mut detail: Vec<String> = set.iter().map(|(k, _)| format!("set {k}")).collect();
        detail.extend(unset.iter().map(|k| format!("unset {k}")));
        let mut ops = device.into_iter().collect::<Vec<_>>();
        ops.extend([
            expect(CONFIG, CONFIG_VERSION, was),
            Op::Put { table: CONFIG, key: scope.key(), value: json(&level) },
            Op::Put { table: CONFIG, key: CONFIG_VERSION.to_vec(), value: version.to_be_bytes().to_vec() },
            self.audit_op(who, "config", format!("{}: {}", scope.describe(), detail.join(", ")))?,
        ]);
        self.db.write(ops)?;
        Ok(version)
    }

    /// Stores device `serial`'s configuration signed offline (`envelope`, whose document is
    /// `doc`, its signatures already checked against the key document by the caller): what
    /// its check-ins carry while the server holds no configuration key. It must sign the
    /// device's current configuration, version and values, or it is refused (409): sign
    /// again.
    pub fn set_signed_config(
        &self,
        who: &Caller,
        serial: &str,
        doc: &ferry_store::device_config::ConfigDoc,
        envelope: &[u8],
    ) -> Result<()> {
        check_name("serial", serial)?;
        if doc.serial != serial {
            return Err(FleetError::BadRequest(format!(
                "the configuration document is for device {:?}, not {serial}",
                doc.serial
            )));
        }
        self.retrying("storing signed configuration", || {
            let _g = self.lock();
            // The version read first: a configuration change through another server after it
            // makes this batch fail, and the document is checked again against the new one.
            let (_, was) = self.config_version()?;
            let (device, was_device) = self.device_read(serial)?;
            let m = self.merged_config(&device)?;
            if doc.version != m.version || doc.values != m.values {
                return Err(FleetError::Conflict(format!(
                "device {serial}'s configuration is version {} now, and the document signs version {}{}: sign it again",
                m.version,
                doc.version,
                if doc.version == m.version { " with other values" } else { "" }
            )));
            }
            let ops = vec![
                expect(CONFIG, CONFIG_VERSION, was),
                expect(DEVICES, serial.as_bytes(), Some(was_device)),
                Op::Put { table: CONFIG, key: signed_key(serial), value: envelope.to_vec() },
                self.audit_op(who, "config-sign", format!("device {serial}: version {}", doc.version))?,
            ];
            self.db.write(ops)?;
            Ok(())
        })
    }

    /// Device `serial`'s configuration document signed offline, if one was stored.
    pub fn signed_config(&self, serial: &str) -> Result<Option<Vec<u8>>> {
        self.db.get(CONFIG, &signed_key(serial))
    }

    /// Sets a device's groups, in precedence order (a later group wins).
    pub fn set_groups(&self, who: &Caller, serial: &str, groups: &[String]) -> Result<Device> {
        for g in groups {
            check_name("group", g)?;
        }
        let mut unique = groups.to_vec();
        unique.sort();
        unique.dedup();
        if unique.len() != groups.len() {
            return Err(FleetError::BadRequest("a group is named twice".into()));
        }
        self.retrying("setting a device's groups", || {
            let _g = self.lock();
            let _d = self.device_lock(serial);
            let (mut d, was_device) = self.device_read(serial)?;
            let (version, was) = self.config_version()?;
            let version = version + 1;
            d.groups = groups.to_vec();
            d.groups_version = version;
            let mut ops = Fleet::device_ops(&d, Some(was_device)).to_vec();
            ops.extend([
                expect(CONFIG, CONFIG_VERSION, was),
                Op::Put { table: CONFIG, key: CONFIG_VERSION.to_vec(), value: version.to_be_bytes().to_vec() },
                self.audit_op(who, "groups", format!("device {serial}: {}", groups.join(", ")))?,
            ]);
            self.db.write(ops)?;
            Ok(d)
        })
    }

    /// A device's configuration: fleet, then its groups in order, then its own values, the
    /// later winning. Its version is the newest change among them, so it only grows.
    pub fn merged_config(&self, device: &Device) -> Result<Merged> {
        let mut scopes = vec![Scope::Fleet];
        scopes.extend(device.groups.iter().map(|g| Scope::Group(g.clone())));
        scopes.push(Scope::Device(device.serial.clone()));
        let mut m = Merged { version: device.groups_version, ..Default::default() };
        for scope in scopes {
            let level = self.level(&scope)?;
            m.version = m.version.max(level.version);
            for (k, v) in level.values {
                m.sources.insert(k.clone(), scope.describe());
                m.values.insert(k, v);
            }
        }
        Ok(m)
    }
}
