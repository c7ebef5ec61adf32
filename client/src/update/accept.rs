//! What a device accepts: the commit a developer names, the channel's target (key and
//! channel documents), a commit's signature before it is decoded, and the branch-mode
//! downgrade rule. Every refusal is a [`Refused`] error and changes nothing.

use anyhow::{anyhow, Context, Result};
use ferry_store::channel::Quorum;
use ferry_store::{Commit, Id, Signed};

use crate::config::Config;
use crate::crash;
use crate::http::{Head, Server, Traffic};
use crate::local::Local;
use crate::state;

use super::Refused;

/// Largest commit and tree the agent accepts (the format's own limits are higher).
pub(crate) const MAX_COMMIT: usize = 2 << 20;

/// The commit a developer names: a full id, a version (exactly one commit on the server's
/// branches has it), or a branch.
pub(crate) async fn resolve(server: &Server, rev: &str, t: &mut Traffic) -> Result<Id> {
    if let Ok(id) = rev.parse::<Id>() {
        return Ok(id);
    }
    if ferry_store::object::check_branch_name(rev).is_ok() {
        if let Ok(Head::At(id)) = server.branch(rev, None, t).await {
            return Ok(id);
        }
    }
    let found = server.version(rev, t).await?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(Refused(format!("{rev:?} names no commit, version or branch on the server")).into()),
        many => Err(Refused(format!(
            "version {rev} has {} commits on the server ({}); name one by id",
            many.len(),
            many.iter().map(|c| c.short()).collect::<Vec<_>>().join(", ")
        ))
        .into()),
    }
}

pub(crate) async fn fetch_commit(
    server: &Server,
    local: &Local,
    id: &Id,
    keys: &Quorum,
    t: &mut Traffic,
) -> Result<Commit> {
    if let Some(c) = local.commit(id)? {
        return Ok(c);
    }
    let (bytes, sigs) = server.commit(id, MAX_COMMIT, t).await?;
    let signed = keys.signed(id, &sigs);
    if signed < usize::from(keys.threshold) {
        return Err(Refused(format!(
            "commit {id} is signed by {signed} of the trusted keys, {} needed; refusing it",
            keys.threshold
        ))
        .into());
    }
    // Only now, with the signature checked, are the bytes decoded.
    let commit = Commit::decode(&bytes).map_err(|e| Refused(format!("commit {id} does not decode: {e}")))?;
    local.put_object(id, &bytes)?;
    crash::point(crash::Step::CommitStored);
    Ok(commit)
}

/// Channel mode: brings the key documents up to date, then fetches and checks the channel
/// document ([`ferry_store::channel::accept_channel`]). Returns this device's target and the
/// keys commits must be signed by. Each refusal is a [`Refused`] error and leaves the
/// channel's serial and the clock floor as they were; a newer valid key document is recorded
/// at once, the channel document once its commit passed ([`Accepted::record`]).
pub(crate) async fn follow_channel(
    config: &Config,
    server: &Server,
    local: &Local,
    hardware: &str,
    current: Option<Id>,
    given: Option<&[u8]>,
    t: &mut Traffic,
) -> Result<(ferry_store::channel::Target, Quorum, Accepted)> {
    use ferry_store::channel::Envelope;
    let channel = config.channel.as_deref().ok_or_else(|| anyhow!("the configuration names no channel"))?;
    let mut state = state::read_trust(config)?;
    let trust = state.trust()?;
    let chain = server.keys(t).await?;
    let chain =
        Envelope::decode_all(&chain).map_err(|e| Refused(format!("the server's key documents do not decode: {e}")))?;
    let trust_now = trust.advance_all(&chain).map_err(|e| Refused(format!("{e}; refusing it")))?;
    if trust_now != trust {
        tracing::info!(serial = trust_now.serial, "accepted a new key document");
        state.set_trust(&trust_now);
        state::save_trust(config, &state)?;
    }
    let bytes = match given {
        // From the check-in: trusted no more than one fetched on its own.
        Some(b) => b.to_vec(),
        // With a fleet server, its answer decides (a rollout may hold the head back).
        None if config.fleet.is_some() => {
            return Err(Refused(format!("the fleet server gave no document for channel {channel}")).into())
        }
        None => {
            server.channel(channel, t).await?.ok_or_else(|| Refused(format!("the server has no channel {channel}")))?
        }
    };
    let envelope = Envelope::decode(&bytes)
        .map_err(|e| Refused(format!("channel {channel}: the document does not decode: {e}")))?;
    let keys = trust_now.quorum(Signed::Commit);
    // The running release's version and build time bound what is accepted: never skip them.
    let running =
        match current {
            Some(c) => Some(fetch_commit(server, local, &c, &keys, t).await.with_context(|| {
                format!("the running commit {c} is not in the device database and cannot be fetched")
            })?),
            None => None,
        };
    let (_, target) = state.accept_document(&envelope, channel, &trust_now, running.as_ref(), hardware, |e| {
        Refused(format!("{e}; refusing it")).into()
    })?;
    Ok((target, keys, Accepted(state)))
}

/// A channel document that passed its checks, recorded (`trust.json`) only once the commit
/// it names passed its own: a refused target leaves the device as it was.
pub(crate) struct Accepted(crate::trust::TrustState);

impl Accepted {
    pub(crate) fn record(self, config: &Config) -> Result<()> {
        state::save_trust(config, &self.0)
    }
}

/// Branch mode: a head older than the running commit is refused. The server names a
/// branch's head without a signature, so it could otherwise serve any commit the trusted
/// keys ever signed, from any branch, however old (`allow_downgrade` or `ferryd deploy`
/// for a developer who means it).
pub(crate) fn refuse_branch_downgrade(local: &Local, current: Option<Id>, head: &Id, commit: &Commit) -> Result<()> {
    let Some(running) = current.map(|c| local.commit(&c)).transpose()?.flatten() else { return Ok(()) };
    match commit.version.compare(&running.version) {
        Some(std::cmp::Ordering::Less) => Err(Refused(format!(
            "the branch's head {head} is version {}, older than the running {}; refusing a downgrade (set allow_downgrade = true, or `ferryd deploy` it)",
            commit.version, running.version
        ))
        .into()),
        None => Err(Refused(format!(
            "the branch's head {head} is version {}, which cannot be ordered against the running {}; refusing it (set allow_downgrade = true, or `ferryd deploy` it)",
            commit.version, running.version
        ))
        .into()),
        _ => Ok(()),
    }
}
