//! Key documents, channel promotion and refresh: the operator's side of
//! `ferry_store::channel`.
//!
//! What it is for: building, checking and signing the next key or channel document from the
//! repository's current ones, so nothing a device would refuse is ever published. What it is
//! not for: the device's acceptance rules (those live in `ferry_store::channel`, and every
//! check here runs through them), or serving documents (`serve`).

use anyhow::{anyhow, bail, Context, Result};
use ferry_api::admin::{ChannelDocument, ChannelTarget};
use ferry_store::channel::{ChannelDoc, Envelope, KeyDoc, Target, Thresholds, Trust};
use ferry_store::{Id, PublicKey, Repository, SecretKey, Signed};

/// The trust a device whose image holds the first key document's roots reaches by walking
/// the repository's whole key chain; `None` when the repository has no key document.
pub fn current_trust(repo: &Repository) -> Result<Option<Trust>> {
    let chain = repo.key_chain()?;
    let Some(first) = chain.first() else { return Ok(None) };
    let doc = KeyDoc::decode(&first.document).context("the first key document")?;
    let roots: Vec<PublicKey> = doc.roots.iter().map(PublicKey::from_bytes).collect::<Result<_, _>>()?;
    let trust = Trust::from_roots(&roots).advance_all(&chain).context("the repository's key chain")?;
    Ok(Some(trust))
}

/// Changes to the key document; `None` keeps the current list or value.
#[derive(Debug, Default)]
pub struct KeyChange {
    pub roots: Option<Vec<PublicKey>>,
    pub commit_keys: Option<Vec<PublicKey>>,
    pub channel_keys: Option<Vec<PublicKey>>,
    /// `Some(empty)` removes every configuration key (devices then take no signed
    /// configuration).
    pub config_keys: Option<Vec<PublicKey>>,
    pub thresholds: ThresholdChange,
    /// Seconds from now until devices refuse the document; `None` keeps the current
    /// document's lifetime, or [`DEFAULT_KEYS_LIFETIME`] after a version 1 document.
    pub expires_in: Option<i64>,
}

/// New thresholds per role; `None` keeps the current one (1 for a new document).
#[derive(Debug, Default, Clone, Copy)]
pub struct ThresholdChange {
    pub root: Option<u16>,
    pub commit: Option<u16>,
    pub channel: Option<u16>,
    pub config: Option<u16>,
}

/// How long a key document lives when nothing says otherwise: a year. Re-sign it well
/// before (`ferry keys refresh`).
pub const DEFAULT_KEYS_LIFETIME: i64 = 365 * 86400;

fn sorted(keys: &[PublicKey]) -> Vec<[u8; 32]> {
    let mut v: Vec<[u8; 32]> = keys.iter().map(PublicKey::to_bytes).collect();
    v.sort();
    v.dedup();
    v
}

/// Writes the next key document (always format version 2), signed by `signers`. The first
/// one needs the roots, commit and channel keys, and signatures by its roots meeting its root
/// threshold; each later one needs signatures by current roots meeting the current root
/// threshold and by its own roots meeting its own, exactly as devices check.
pub fn set_keys(repo: &Repository, signers: &[SecretKey], change: KeyChange, now: i64) -> Result<(Id, KeyDoc)> {
    let head = repo.keys_head()?;
    let current = match head {
        Some(id) => Some(KeyDoc::decode(&repo.read_envelope(&id)?.document).context("the current key document")?),
        None => None,
    };
    let pick = |new: &Option<Vec<PublicKey>>, old: Option<&Vec<[u8; 32]>>, what: &str| -> Result<Vec<[u8; 32]>> {
        match (new, old) {
            (Some(n), _) => Ok(sorted(n)),
            (None, Some(o)) => Ok(o.clone()),
            (None, None) => bail!("the first key document needs {what}"),
        }
    };
    let timestamp = current.as_ref().map_or(now, |c| now.max(c.timestamp));
    let lifetime = match (change.expires_in, current.as_ref().and_then(|c| c.expires.map(|e| e - c.timestamp))) {
        (Some(n), _) if n <= 0 => bail!("--expires-in must be in the future"),
        (Some(n), _) => n,
        (None, Some(kept)) => kept,
        (None, None) => DEFAULT_KEYS_LIFETIME,
    };
    let old = current.as_ref().map(|c| c.thresholds).unwrap_or_default();
    let t = change.thresholds;
    let doc = KeyDoc {
        serial: current.as_ref().map_or(1, |c| c.serial + 1),
        timestamp,
        expires: Some(timestamp.saturating_add(lifetime)),
        previous: head,
        roots: pick(&change.roots, current.as_ref().map(|c| &c.roots), "--root")?,
        commit_keys: pick(&change.commit_keys, current.as_ref().map(|c| &c.commit_keys), "--commit-key")?,
        channel_keys: pick(&change.channel_keys, current.as_ref().map(|c| &c.channel_keys), "--channel-key")?,
        config_keys: match (&change.config_keys, &current) {
            (Some(n), _) => sorted(n),
            (None, Some(c)) => c.config_keys.clone(),
            (None, None) => Vec::new(),
        },
        thresholds: Thresholds {
            root: t.root.unwrap_or(old.root),
            commit: t.commit.unwrap_or(old.commit),
            channel: t.channel.unwrap_or(old.channel),
            config: t.config.unwrap_or(old.config),
        },
    };
    let bytes = doc.encode().map_err(|e| {
        anyhow!("the new key document is invalid: {e}; a role's threshold must stay within its number of keys (--root-threshold, --commit-threshold, --channel-threshold, --config-threshold)")
    })?;
    let signers: Vec<&SecretKey> = signers.iter().collect();
    let envelope = Envelope::sign(Signed::Keys, bytes, &signers);
    let trust = match current_trust(repo)? {
        Some(t) => t,
        // Devices' images will hold this document's roots.
        None => Trust::from_roots(&doc.roots.iter().map(PublicKey::from_bytes).collect::<Result<Vec<_>, _>>()?),
    };
    trust.advance(&envelope).map_err(|e| {
        anyhow!("{e}; sign with --sign-key naming enough current root keys (and new ones when the roots change)")
    })?;
    let id = repo.publish_keys(&envelope, head)?;
    Ok((id, doc))
}

/// Re-signs the current key document with a new expiry (`expires_in` seconds from `now`, or
/// its current lifetime) and the next serial; every key list and threshold stays. Run it
/// well inside the expiry, as channel documents are refreshed.
pub fn refresh_keys(
    repo: &Repository,
    signers: &[SecretKey],
    expires_in: Option<i64>,
    now: i64,
) -> Result<(Id, KeyDoc)> {
    if repo.keys_head()?.is_none() {
        bail!("the repository has no key document yet; create one with `ferry keys set`");
    }
    set_keys(repo, signers, KeyChange { expires_in, ..KeyChange::default() }, now)
}

/// What to promote.
#[derive(Debug)]
pub struct Promotion<'a> {
    pub to: String,
    /// An explicit commit; else the source channel's current targets.
    pub commit: Option<Id>,
    /// The channel the commit comes from.
    pub from: Option<String>,
    /// Hardware revisions to change; empty means all the commit (or source channel) has.
    pub hardware: Vec<String>,
    /// Channel keys to sign with: as many as the channel threshold asks.
    pub keys: &'a [SecretKey],
    /// Seconds from now until devices refuse the document.
    pub expires_in: i64,
    pub rollback: bool,
    pub force: bool,
    /// The channel may be new (without it, a channel that does not exist is refused: a
    /// typo would start a channel every refresh then keeps signing).
    pub create: bool,
    pub now: i64,
}

/// The outcome: the new document, or the current one when nothing changed.
#[derive(Debug)]
pub struct Promoted {
    pub id: Id,
    pub doc: ChannelDoc,
    pub changed: bool,
}

fn channel_doc(repo: &Repository, id: &Id) -> Result<ChannelDoc> {
    ChannelDoc::decode(&repo.read_envelope(id)?.document).with_context(|| format!("channel document {id}"))
}

/// A channel's documents, newest first.
pub fn history(repo: &Repository, name: &str) -> Result<Vec<(Id, ChannelDoc, Vec<String>)>> {
    let mut out = Vec::new();
    let mut next = repo.channel(name)?;
    while let Some(id) = next.take() {
        let e = repo.read_envelope(&id)?;
        let doc = ChannelDoc::decode(&e.document).with_context(|| format!("channel document {id}"))?;
        next = doc.previous;
        let signers = e.signatures.iter().map(|(k, _)| hex::encode(k)).collect();
        out.push((id, doc, signers));
    }
    Ok(out)
}

/// True if the channel ever had `commit` as the target for `hardware`.
fn channel_had(repo: &Repository, channel: &str, commit: &Id, hardware: &str) -> Result<bool> {
    Ok(history(repo, channel)?.iter().any(|(_, d, _)| d.target(hardware).is_some_and(|t| t.commit == *commit)))
}

fn check_signed(repo: &Repository, trust: &Trust, commit: &Id) -> Result<()> {
    let signatures: Vec<([u8; 32], [u8; 64])> = repo.signatures(commit)?.iter().map(|s| (s.key, s.signature)).collect();
    let quorum = trust.quorum(Signed::Commit);
    let signed = quorum.signed(commit, &signatures);
    if signed < usize::from(quorum.threshold) {
        bail!(
            "commit {commit} is signed by {signed} of the commit keys of key document {}, {} needed (devices would refuse it)",
            trust.serial,
            quorum.threshold
        );
    }
    Ok(())
}

fn require_channel_keys(trust: &Trust, keys: &[SecretKey]) -> Result<()> {
    for key in keys {
        if !trust.channel_keys.contains(&key.public().to_bytes()) {
            bail!(
                "key {} may not sign channel documents (key document {}); add it with `ferry keys set --channel-key`",
                key.public().to_hex(),
                trust.serial
            );
        }
    }
    let mut distinct: Vec<[u8; 32]> = keys.iter().map(|k| k.public().to_bytes()).collect();
    distinct.sort();
    distinct.dedup();
    if distinct.len() < usize::from(trust.thresholds.channel) {
        bail!(
            "key document {} asks {} signatures by channel keys for a channel document, and {} were given; pass one --sign-key per channel key",
            trust.serial,
            trust.thresholds.channel,
            distinct.len()
        );
    }
    Ok(())
}

/// The serial and signed time of the document that follows `head` (`c`). Normally the next
/// serial and a time no earlier than `c`'s. When no current channel key signed `c` (its key
/// was removed, e.g. after it leaked), devices forget that key's serials and times as they
/// take the key document, so the channel starts afresh at serial 1 and `now`: that also
/// undoes a document a leaked key signed with serial 2^64-1 or a time in 2100. Such a
/// document still signed by a current key is refused, naming the way out.
fn successor(repo: &Repository, trust: &Trust, head: &Id, c: &ChannelDoc, now: i64) -> Result<(u64, i64)> {
    let envelope = repo.read_envelope(head)?;
    if envelope.signed_by(Signed::Channel, &trust.channel_keys).is_empty() {
        return Ok((1, now));
    }
    let rotate = "remove the key that signed it with `ferry keys set --channel-key NEW.pub`, then promote again: devices start the channel's serials afresh";
    let serial = c.serial.checked_add(1).ok_or_else(|| {
        anyhow!("channel {}'s newest document {head} has the largest possible serial; {rotate}", c.name)
    })?;
    if c.timestamp > now.saturating_add(ferry_store::channel::MAX_AHEAD) {
        bail!("channel {}'s newest document {head} is signed at {}, in the future; {rotate}", c.name, c.timestamp);
    }
    Ok((serial, now.max(c.timestamp)))
}

fn trust(repo: &Repository) -> Result<Trust> {
    current_trust(repo)?.ok_or_else(|| {
        anyhow!("the repository has no key document yet; create one with `ferry keys set` (see README, Keys)")
    })
}

/// Promotes a commit, or a channel's targets, to a channel.
pub fn promote(repo: &Repository, p: &Promotion<'_>) -> Result<Promoted> {
    ferry_store::repo::check_branch_name(&p.to)?;
    if p.expires_in <= 0 {
        bail!("--expires must be in the future");
    }
    let trust = trust(repo)?;
    require_channel_keys(&trust, p.keys)?;
    let mut wanted: Vec<Target> = Vec::new();
    // The flags this promotion needs and was not given, each with why: named together, so
    // one more try is enough.
    let mut needs: Vec<(&str, String)> = Vec::new();
    match (&p.commit, &p.from) {
        (Some(commit), from) => {
            let c = repo.read_commit(commit)?;
            check_signed(repo, &trust, commit)?;
            let revisions = if p.hardware.is_empty() { c.hardware.clone() } else { p.hardware.clone() };
            if revisions.is_empty() {
                bail!("commit {commit} lists no hardware revisions; commit it with --hardware REV so devices can check it");
            }
            for rev in &revisions {
                if !c.hardware.contains(rev) {
                    bail!("commit {commit} is built for {} only, not for {rev}", c.hardware.join(", "));
                }
            }
            let source = match from {
                Some(f) => Some(f.clone()),
                None => repo.upstream(&p.to)?,
            };
            if let (Some(source), false) = (&source, p.force) {
                let never: Vec<&str> = revisions
                    .iter()
                    .filter_map(|rev| match channel_had(repo, source, commit, rev) {
                        Ok(true) => None,
                        Ok(false) => Some(Ok(rev.as_str())),
                        Err(e) => Some(Err(e)),
                    })
                    .collect::<Result<_>>()?;
                if !never.is_empty() {
                    needs.push((
                        "--force",
                        format!(
                            "channel {source} never had commit {commit} for {} (or promote it there first)",
                            never.join(", ")
                        ),
                    ));
                }
            }
            wanted.extend(revisions.into_iter().map(|hardware| Target {
                hardware,
                commit: *commit,
                version: c.version.clone(),
            }));
        }
        (None, Some(from)) => {
            let id = repo.channel(from)?.ok_or_else(|| anyhow!("channel {from} does not exist"))?;
            let source = channel_doc(repo, &id)?;
            for t in &source.targets {
                if p.hardware.is_empty() || p.hardware.contains(&t.hardware) {
                    wanted.push(t.clone());
                }
            }
            if let Some(rev) = p.hardware.iter().find(|r| source.target(r).is_none()) {
                bail!("channel {from} has no target for {rev}");
            }
            for t in &wanted {
                check_signed(repo, &trust, &t.commit)?;
            }
        }
        (None, None) => bail!("name a COMMIT or --from CHANNEL to promote"),
    }
    if p.from.as_deref() == Some(p.to.as_str()) {
        bail!("--from and --to name the same channel {}", p.to);
    }
    let head = repo.channel(&p.to)?;
    // A channel made again after it was retired goes on from its last document.
    let retired = if head.is_none() { repo.retired(&p.to)? } else { None };
    if head.is_none() && !p.create {
        let known: Vec<String> = repo.channels()?.into_iter().map(|(name, _)| name).collect();
        needs.push((
            "--create",
            format!(
                "channel {} does not exist ({}): --create starts it",
                p.to,
                if known.is_empty() {
                    "there are no channels yet".to_string()
                } else {
                    format!("the channels are {}", known.join(", "))
                }
            ),
        ));
    }
    let current = head.map(|id| channel_doc(repo, &id)).transpose()?;
    let mut targets: Vec<Target> = current.as_ref().map(|c| c.targets.clone()).unwrap_or_default();
    for w in wanted {
        if let Some(old) = targets.iter_mut().find(|t| t.hardware == w.hardware) {
            match w.version.compare(&old.version) {
                Some(std::cmp::Ordering::Less) if !p.rollback => needs.push((
                    "--rollback",
                    format!(
                        "this moves {} on channel {} back from {} to {}, which only a deliberate rollback does",
                        w.hardware, p.to, old.version, w.version
                    ),
                )),
                None => bail!("version {} cannot be ordered against {} on channel {}", w.version, old.version, p.to),
                _ => {}
            }
            *old = w;
        } else {
            targets.push(w);
        }
    }
    targets.sort_by(|a, b| a.hardware.cmp(&b.hardware));
    if !needs.is_empty() {
        let mut flags: Vec<&str> = needs.iter().map(|(f, _)| *f).collect();
        flags.dedup();
        let why: Vec<String> = needs.iter().map(|(f, why)| format!("{f}: {why}")).collect();
        bail!("this promotion needs {}; nothing was written.\n  {}", flags.join(" and "), why.join("\n  "));
    }
    if let (Some(c), Some(id)) = (&current, head) {
        if c.targets == targets && !p.rollback {
            return Ok(Promoted { id, doc: c.clone(), changed: false });
        }
    }
    // A rolled-back target that stays must keep its mark: a device that missed the rollback
    // document still runs the newer release and needs the mark to go back.
    let keeps_rollback = current.as_ref().is_some_and(|c| c.rollback && c.targets.iter().any(|t| targets.contains(t)));
    let (serial, timestamp) = match (&current, head, retired) {
        (Some(c), Some(id), _) => successor(repo, &trust, &id, c, p.now)?,
        (None, None, Some(old)) => successor(repo, &trust, &old, &channel_doc(repo, &old)?, p.now)?,
        _ => (1, p.now),
    };
    let doc = ChannelDoc {
        name: p.to.clone(),
        serial,
        timestamp,
        expires: timestamp.saturating_add(p.expires_in),
        rollback: p.rollback || keeps_rollback,
        previous: head.or(retired),
        targets,
    };
    let id = sign_and_publish(repo, &doc, p.keys, head, p.from.as_deref())?;
    Ok(Promoted { id, doc, changed: true })
}

fn sign_and_publish(
    repo: &Repository,
    doc: &ChannelDoc,
    keys: &[SecretKey],
    head: Option<Id>,
    upstream: Option<&str>,
) -> Result<Id> {
    let bytes = doc.encode().map_err(|e| anyhow!("the new channel document is invalid: {e}"))?;
    let keys: Vec<&SecretKey> = keys.iter().collect();
    let envelope = Envelope::sign(Signed::Channel, bytes, &keys);
    Ok(repo.publish_channel(&envelope, head, upstream)?)
}

/// Re-signs the current document of each channel (all when `names` is empty) with a new
/// expiry and the next serial; targets and the rollback mark stay.
pub fn refresh(
    repo: &Repository,
    names: &[String],
    keys: &[SecretKey],
    expires_in: i64,
    now: i64,
) -> Result<Vec<(Id, ChannelDoc)>> {
    if expires_in <= 0 {
        bail!("--expires must be in the future");
    }
    let trust = trust(repo)?;
    require_channel_keys(&trust, keys)?;
    let names: Vec<String> =
        if names.is_empty() { repo.channels()?.into_iter().map(|(n, _)| n).collect() } else { names.to_vec() };
    let mut out = Vec::new();
    for name in names {
        let head = repo.channel(&name)?.ok_or_else(|| anyhow!("channel {name} does not exist"))?;
        let c = channel_doc(repo, &head)?;
        for t in &c.targets {
            check_signed(repo, &trust, &t.commit).map_err(|e| {
                anyhow!("channel {name}: {e:#}; add a signature by a current commit key with `ferry sign`")
            })?;
        }
        let (serial, timestamp) = successor(repo, &trust, &head, &c, now)?;
        let doc =
            ChannelDoc { serial, timestamp, expires: timestamp.saturating_add(expires_in), previous: Some(head), ..c };
        let id = sign_and_publish(repo, &doc, keys, Some(head), None)?;
        out.push((id, doc));
    }
    Ok(out)
}

/// Parses `30d`, `12h`, `90m`, `3600s` or plain seconds.
pub fn parse_duration(s: &str) -> Result<i64> {
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: i64 = digits.parse().map_err(|_| anyhow!("duration {s:?}: expected a number with d, h, m or s"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => bail!("duration {s:?}: unit must be d, h, m or s"),
    };
    // Ten years: documents meant to expire must do so within anyone's lifetime of the key.
    const MAX: i64 = 3650 * 86400;
    n.checked_mul(mult)
        .filter(|v| (1..=MAX).contains(v))
        .ok_or_else(|| anyhow!("duration {s:?} must be positive and at most 3650d (ten years)"))
}

/// A channel document as the admin API and `--json` output show it.
pub fn document(id: &Id, doc: &ChannelDoc) -> ChannelDocument {
    ChannelDocument {
        channel: doc.name.clone(),
        expires: doc.expires,
        id: id.to_hex(),
        previous: doc.previous.map(|p| p.to_hex()),
        rollback: doc.rollback,
        serial: doc.serial,
        targets: doc
            .targets
            .iter()
            .map(|t| ChannelTarget {
                commit: t.commit.to_hex(),
                hardware: t.hardware.clone(),
                version: t.version.to_string(),
            })
            .collect(),
        timestamp: doc.timestamp,
    }
}

/// The human form of a channel document.
pub fn doc_text(id: &Id, doc: &ChannelDoc) -> String {
    let mut out = format!(
        "channel {} serial {} ({})\n  signed {}  expires {}{}\n",
        doc.name,
        doc.serial,
        id.short(),
        crate::show::format_time(doc.timestamp),
        crate::show::format_time(doc.expires),
        if doc.rollback { "  ROLLBACK" } else { "" }
    );
    let hardware = doc.targets.iter().map(|t| t.hardware.chars().count()).max().unwrap_or(0).max(16);
    let version = doc.targets.iter().map(|t| t.version.to_string().chars().count()).max().unwrap_or(0);
    for t in &doc.targets {
        out += &format!("  {:<hardware$} {:<version$} {}\n", t.hardware, t.version.to_string(), t.commit);
    }
    out
}
