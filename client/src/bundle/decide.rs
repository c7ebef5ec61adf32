//! What a bundle installs on this device: its header read (key documents, channel
//! document, commits, from), and the target checked like an update's: key documents from
//! the image's roots, the channel document, the commit's signature before it is decoded,
//! its hardware list.

use anyhow::{anyhow, Result};
use ferry_delta::bundle::{BundleReader, BundledCommit, Section};
use ferry_store::channel::Envelope;
use ferry_store::{Commit, Id, Signed};

use crate::config::Config;
use crate::local::Local;
use crate::state;

use super::refused;

/// The sections before the trees: what the bundle says it installs.
#[derive(Default)]
pub(super) struct Header {
    pub(super) keys: Vec<Vec<u8>>,
    pub(super) channel: Option<Vec<u8>>,
    pub(super) commits: Vec<BundledCommit>,
    pub(super) from: Vec<Id>,
}

impl Header {
    /// Reads the sections before the trees. The from section ends the header (the format
    /// requires it before any tree), and the reader bounds the header's bytes in all
    /// (`MAX_HEADER`): nothing else is held before the target commit's signature is checked.
    pub(super) fn read(reader: &mut BundleReader<impl std::io::Read>) -> Result<Header> {
        let mut header = Header::default();
        loop {
            match reader.next_section().map_err(refused)? {
                Some(Section::Keys(k)) => header.keys.push(k),
                Some(Section::Channel(c)) => header.channel = Some(c),
                Some(Section::Commit(c)) => header.commits.push(c),
                Some(Section::From(f)) => {
                    header.from = f;
                    return Ok(header);
                }
                Some(_) => return Err(refused("its header has no from section")),
                None => return Err(refused("it has no manifest")),
            }
        }
    }
}

/// "it was made for devices on …; this device runs …", for refusals.
pub(super) fn made_for(from: &[Id], current: Option<Id>) -> String {
    let made = if from.is_empty() {
        "it is a full bundle".to_string()
    } else {
        format!("it was made for devices on {}", from.iter().map(|f| f.short()).collect::<Vec<_>>().join(", "))
    };
    match current {
        Some(c) => format!("{made}, and this device runs {}: make one with `--from {}`", c.short(), c.short()),
        None => format!("{made}, and this device has no release yet: make a full one (without --from)"),
    }
}

/// The release a bundle installs on this device, checked.
pub(super) struct Decided {
    pub(super) commit_id: Id,
    pub(super) commit: Commit,
    pub(super) bytes: Vec<u8>,
    pub(super) channel: Option<String>,
    pub(super) serial: Option<u64>,
    /// The trust state to record once the whole bundle was read.
    pub(super) accepted: Option<crate::trust::TrustState>,
}

pub(super) fn decide(
    config: &Config,
    local: &Local,
    header: &Header,
    current: Option<Id>,
    hardware: Option<&str>,
    force: bool,
) -> Result<Decided> {
    let mut accepted = None;
    let (keys, target, channel) = match &config.channel {
        Some(channel) => {
            let mut state = state::read_trust(config)?;
            let chain = header
                .keys
                .iter()
                .map(|k| Envelope::decode(k))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| refused(format!("its key documents do not decode: {e}")))?;
            let trust = state.trust()?.advance_all(&chain).map_err(refused)?;
            state.set_trust(&trust);
            let keys = trust.quorum(Signed::Commit);
            match &header.channel {
                Some(bytes) => {
                    let envelope = Envelope::decode(bytes)
                        .map_err(|e| refused(format!("its channel document does not decode: {e}")))?;
                    let hw = hardware.ok_or_else(|| anyhow!("no hardware revision configured"))?;
                    let running = match current {
                        Some(c) => Some(
                            local
                                .commit(&c)?
                                .ok_or_else(|| anyhow!("the running commit {c} is not in the device database"))?,
                        ),
                        None => None,
                    };
                    let (doc, target) =
                        state.accept_document(&envelope, channel, &trust, running.as_ref(), hw, refused)?;
                    accepted = Some(state);
                    (keys, Some(target), Some((doc.name, doc.serial)))
                }
                None if !force => {
                    return Err(refused(format!(
                        "this file holds a single build, not a release of channel {channel}, which this device follows; it installs only what its channel says (a technician at the device can override this with `ferryd apply --force`)"
                    )));
                }
                None => {
                    if trust.serial > 0 {
                        accepted = Some(state);
                    }
                    (keys, None, None)
                }
            }
        }
        None => {
            if let Some(bytes) = &header.channel {
                let name = Envelope::decode(bytes)
                    .ok()
                    .and_then(|e| ferry_store::channel::ChannelDoc::decode(&e.document).ok())
                    .map_or("?".to_string(), |d| d.name);
                return Err(refused(format!(
                    "it carries channel {name}'s document, and this device follows {}, not a channel: apply a commit bundle (`ferry bundle --to COMMIT`)",
                    config.follows()
                )));
            }
            (config.commit_quorum()?, None, None)
        }
    };
    let bundled = match &target {
        Some(t) => header.commits.iter().find(|c| c.id == t.commit).ok_or_else(|| {
            refused(format!(
                "the channel's target for this device is {} ({}), which the bundle does not carry",
                t.version, t.commit
            ))
        })?,
        None => match header.commits.as_slice() {
            [one] => one,
            _ => return Err(refused("a bundle without a channel document must carry exactly one commit")),
        },
    };
    let id = bundled.id;
    if bundled.bytes.len() > crate::update::MAX_COMMIT {
        return Err(refused(format!("commit {id} is larger than {} bytes", crate::update::MAX_COMMIT)));
    }
    if Id::of(&bundled.bytes) != id {
        return Err(refused(format!("commit {id} is damaged (its bytes hash to {})", Id::of(&bundled.bytes))));
    }
    let signed = keys.signed(&id, &bundled.signatures);
    if signed < usize::from(keys.threshold) {
        return Err(refused(format!(
            "commit {id} is signed by {signed} of the keys this device trusts, {} needed",
            keys.threshold
        )));
    }
    let commit = Commit::decode(&bundled.bytes).map_err(|e| refused(format!("commit {id} does not decode: {e}")))?;
    match (&target, hardware) {
        (Some(t), Some(hw)) => ferry_store::channel::check_target_commit(t, &commit, hw).map_err(refused)?,
        (None, Some(hw)) if !commit.hardware.is_empty() && !commit.hardware.iter().any(|h| h == hw) => {
            return Err(refused(format!(
                "commit {id} ({}) is built for {} only, not for this device's {hw}",
                commit.version,
                commit.hardware.join(", ")
            )))
        }
        (None, Some(hw)) if commit.hardware.is_empty() && !force => {
            return Err(refused(format!(
                "commit {id} ({}) names no hardware revision, so nothing says it was built for this device's {hw}; commit it with --hardware {hw} (or override with `ferryd apply --force`)",
                commit.version
            )))
        }
        _ => {}
    }
    Ok(Decided {
        commit_id: id,
        commit,
        bytes: bundled.bytes.clone(),
        channel: channel.as_ref().map(|(n, _)| n.clone()),
        serial: channel.map(|(_, s)| s),
        accepted,
    })
}
