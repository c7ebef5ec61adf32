//! `trust.json`: what a device following a channel has accepted, so no replayed, expired or
//! wrongly signed document gets through later.
//!
//! It holds the key document in force (its serial and key lists; the image's `root_keys`
//! until the first is accepted), the highest serial accepted per channel, and the clock
//! floor: the newest signed time the device has seen. Serials and the floor only grow. The
//! file is written atomically (by [`crate::state`]) and only after a document was accepted; a
//! refusal leaves it as it was. The decisions themselves are `ferry_store::channel`'s.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use ferry_store::channel::{
    accept_channel, ChannelDoc, Envelope, Running, Seen, Target, Thresholds, Trust, TrustError,
};
use ferry_store::Commit;
use serde::{Deserialize, Serialize};

/// The key document in force. The fields after `timestamp` came with key documents version
/// 2; a `trust.json` written from a version 1 chain lacks them and reads as what version 1
/// means (no configuration keys, thresholds of 1, no expiry).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KeysState {
    /// 0 while the image's roots are all the device trusts.
    pub serial: u64,
    pub roots: Vec<String>,
    pub commit_keys: Vec<String>,
    pub channel_keys: Vec<String>,
    pub timestamp: i64,
    #[serde(default)]
    pub config_keys: Vec<String>,
    #[serde(default)]
    pub thresholds: Thresholds,
    #[serde(default)]
    pub expires: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrustState {
    pub keys: KeysState,
    /// Highest accepted document serial per channel.
    pub channels: BTreeMap<String, u64>,
    /// Per channel, the trusted keys that signed the document accepted last (hex): when the
    /// root removes all of them, that channel's serial is forgotten. Absent for documents
    /// accepted by an agent from before it was kept: then any removed key resets.
    #[serde(default)]
    pub signers: BTreeMap<String, Vec<String>>,
    /// Unix seconds the device's clock is never trusted below.
    pub floor: i64,
}

/// No time before this agent was written is ever taken for "now" (2026-11-01 00:00 UTC):
/// a device fresh from the factory, whose clock reset to 1970 and which has seen nothing
/// signed yet, still refuses documents that expired before it was built.
pub const AGENT_FLOOR: i64 = 1_793_491_200;

fn to_hex(keys: &[[u8; 32]]) -> Vec<String> {
    keys.iter().map(hex::encode).collect()
}

fn from_hex(keys: &[String]) -> Result<Vec<[u8; 32]>> {
    keys.iter()
        .map(|k| {
            let mut out = [0u8; 32];
            hex::decode_to_slice(k, &mut out).map_err(|_| anyhow!("trust.json: {k:?} is not a 32-byte key"))?;
            Ok(out)
        })
        .collect()
}

impl TrustState {
    /// Checks a channel document for this device ([`accept_channel`]): its signatures, serial
    /// and expiry against the clock and the floor, and its target against the running
    /// release's version and build time and the hardware. An accepted document is recorded
    /// here, to be saved once the commit it names has passed its own checks; a refusal is
    /// `refuse(reason)` and changes nothing.
    pub fn accept_document(
        &mut self,
        envelope: &Envelope,
        channel: &str,
        trust: &Trust,
        running: Option<&Commit>,
        hardware: &str,
        refuse: impl FnOnce(TrustError) -> anyhow::Error,
    ) -> Result<(ChannelDoc, Target)> {
        let clock = clock()?;
        let seen = self.seen(channel, running.and_then(|c| c.timestamp), clock);
        let (doc, target) = accept_channel(
            envelope,
            channel,
            trust,
            seen,
            clock,
            &Running { version: running.map(|c| &c.version), hardware },
        )
        .map_err(refuse)?;
        self.accept(&doc, seen, clock, &envelope.signed_by(ferry_store::Signed::Channel, &trust.channel_keys));
        Ok((doc, target))
    }

    /// What a device trusts before it accepted any key document: the image's roots.
    pub fn from_roots(roots: &[ferry_store::PublicKey]) -> Result<TrustState> {
        let mut s = TrustState::default();
        s.set_trust(&Trust::from_roots(roots));
        Ok(s)
    }

    pub fn trust(&self) -> Result<Trust> {
        Ok(Trust {
            serial: self.keys.serial,
            roots: from_hex(&self.keys.roots)?,
            commit_keys: from_hex(&self.keys.commit_keys)?,
            channel_keys: from_hex(&self.keys.channel_keys)?,
            config_keys: from_hex(&self.keys.config_keys)?,
            thresholds: self.keys.thresholds,
            expires: self.keys.expires,
            timestamp: self.keys.timestamp,
        })
    }

    /// Takes the trust of a newly accepted key document. A channel whose last document was
    /// signed only by channel keys this one no longer trusts forgets what those keys vouched
    /// for: its serial, and the floor channel documents raised (TUF's fast-forward recovery).
    /// A serial of 2^64-1 or a signed time in 2100, signed with a channel key that leaked,
    /// stops a channel only until the root removes that key; channels whose signers stay
    /// trusted keep their serials, so their older documents cannot be replayed. The floor
    /// restarts from the key documents' signed time (signed offline by the root), and the
    /// agent's build time and the running commit's still bound it from below.
    pub fn set_trust(&mut self, t: &Trust) {
        let still_trusted = |k: &String| {
            from_hex(std::slice::from_ref(k))
                .ok()
                .and_then(|v| v.first().copied())
                .is_some_and(|k| t.channel_keys.contains(&k))
        };
        let removed: Vec<String> = self.keys.channel_keys.iter().filter(|k| !still_trusted(k)).cloned().collect();
        if self.keys.serial > 0 && !removed.is_empty() {
            let orphaned: Vec<String> = self
                .channels
                .keys()
                .filter(|c| match self.signers.get(*c) {
                    Some(signers) => signers.iter().all(|k| removed.contains(k)),
                    None => true,
                })
                .cloned()
                .collect();
            if !orphaned.is_empty() {
                tracing::warn!(
                    ?orphaned,
                    "the channel keys that signed these channels are no longer trusted: forgetting their serials and the signed times they vouched for"
                );
                for c in &orphaned {
                    self.channels.remove(c);
                    self.signers.remove(c);
                }
                self.floor = self.keys.timestamp;
            }
        }
        self.keys = KeysState {
            serial: t.serial,
            roots: to_hex(&t.roots),
            commit_keys: to_hex(&t.commit_keys),
            channel_keys: to_hex(&t.channel_keys),
            timestamp: t.timestamp,
            config_keys: to_hex(&t.config_keys),
            thresholds: t.thresholds,
            expires: t.expires,
        };
        if t.serial > 0 {
            self.floor = self.floor.max(t.timestamp);
        }
    }

    /// Records an accepted channel document: its serial and its signed time (the floor).
    /// `clock` is the device's clock: how much of the signed time it believes is
    /// [`ferry_store::channel::believable_time`]'s.
    /// `signers` are the trusted channel keys that signed it.
    pub fn accept(&mut self, doc: &ferry_store::channel::ChannelDoc, seen: Seen, clock: i64, signers: &[[u8; 32]]) {
        self.channels.insert(doc.name.clone(), doc.serial);
        self.signers.insert(doc.name.clone(), to_hex(signers));
        self.floor = seen.floor.max(self.believable(doc.timestamp, clock));
    }

    /// What was seen of `channel`, with the floor raised to `build_time` (the running
    /// commit's signed timestamp, as far as `clock` believes it) and to [`AGENT_FLOOR`] when
    /// they are later.
    pub fn seen(&self, channel: &str, build_time: Option<i64>, clock: i64) -> Seen {
        let build = build_time.map_or(i64::MIN, |t| self.believable(t, clock));
        Seen { serial: self.channels.get(channel).copied().unwrap_or(0), floor: self.floor.max(build).max(AGENT_FLOOR) }
    }

    /// A signed time as far as the clock believes it: a clock at or above the agent's build
    /// date and the root-signed key documents' time is plausible.
    fn believable(&self, signed: i64, clock: i64) -> i64 {
        let plausible_from = if self.keys.serial > 0 { AGENT_FLOOR.max(self.keys.timestamp) } else { AGENT_FLOOR };
        ferry_store::channel::believable_time(signed, clock, plausible_from)
    }
}

/// The device's clock in Unix seconds, as channel documents are checked against it.
///
/// In debug builds (the tests'), `FERRYD_CLOCK_OFFSET=<seconds>` shifts it, so tests can
/// play a device whose clock was reset to 1970 or runs years ahead (like `FERRYD_CRASH_AT`,
/// a test hook; a wrong clock can never make the device accept what the floor forbids).
/// Release builds, the ones devices run, ignore it.
pub fn clock() -> Result<i64> {
    if !cfg!(debug_assertions) {
        return Ok(crate::state::now());
    }
    let offset = match std::env::var("FERRYD_CLOCK_OFFSET") {
        Ok(v) => v.parse::<i64>().map_err(|_| anyhow!("FERRYD_CLOCK_OFFSET={v:?} is not a number of seconds"))?,
        Err(_) => 0,
    };
    Ok(crate::state::now().saturating_add(offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust(serial: u64, channel_keys: &[[u8; 32]]) -> Trust {
        Trust {
            serial,
            roots: vec![[1; 32]],
            commit_keys: vec![],
            channel_keys: channel_keys.to_vec(),
            config_keys: vec![],
            thresholds: Thresholds::default(),
            expires: None,
            timestamp: 100,
        }
    }

    /// Removing a channel key forgets only the channels it vouched for: a channel whose last
    /// document another, still trusted key signed keeps its serial (its older documents are
    /// still replays), one signed only by the removed key starts afresh.
    #[test]
    fn removing_a_channel_key_forgets_only_the_channels_it_signed() {
        let (a, b, c) = ([0xa; 32], [0xb; 32], [0xc; 32]);
        let mut s = TrustState::default();
        s.set_trust(&trust(1, &[a, b]));
        s.channels.insert("stable".into(), 5);
        s.signers.insert("stable".into(), to_hex(&[b]));
        s.channels.insert("beta".into(), 9);
        s.signers.insert("beta".into(), to_hex(&[a]));
        s.floor = 5_000;
        s.set_trust(&trust(2, &[b, c]));
        assert_eq!(s.channels.get("stable"), Some(&5));
        assert_eq!(s.channels.get("beta"), None);
        assert_eq!(s.floor, 100, "the floor restarts from the key documents' time");
        // Adding a key forgets nothing.
        s.set_trust(&trust(3, &[a, b, c]));
        assert_eq!(s.channels.get("stable"), Some(&5));
        // A channel accepted before signers were kept resets on any removal.
        s.signers.remove("stable");
        s.set_trust(&trust(4, &[b, c]));
        assert_eq!(s.channels.get("stable"), None);
    }
}
