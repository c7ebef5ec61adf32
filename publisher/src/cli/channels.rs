//! `ferry keys`, `ferry promote` and `ferry channel`: arguments and output; the work is in
//! `ferry_publisher::channels`.

use std::path::PathBuf;

use crate::channels::{self, KeyChange, Promotion, ThresholdChange};
use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use ferry_store::channel::{ChannelDoc, KeyDoc};
use ferry_store::{PublicKey, Repository, SecretKey};

use super::{print_json, RepoArg};

/// Default lifetime of a channel document: refresh more often than this (e.g. daily).
const DEFAULT_EXPIRES: &str = "7d";

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Writes the next key document: which keys are roots, which may sign commits, channel
    /// documents and device configuration, how many of each role must sign, and when it
    /// expires.
    ///
    /// The first document needs --root, --commit-key and --channel-key, and --sign-key
    /// naming enough of its roots (its root threshold); put those root public keys in every
    /// device's image (`root_keys`). Each later document keeps the lists, thresholds and
    /// lifetime not given, and must be signed by enough current roots; a new root set must
    /// also be signed by enough of the new roots, so rotating the roots needs the old and the
    /// new root keys together.
    Set {
        #[command(flatten)]
        repo: RepoArg,
        /// Secret key file(s) to sign with (root keys).
        #[arg(long = "sign-key", value_name = "FILE", required = true)]
        sign_keys: Vec<PathBuf>,
        /// Public key file of a root key (replaces the list).
        #[arg(long = "root", value_name = "PUBFILE")]
        roots: Vec<PathBuf>,
        /// Public key file of a key that may sign commits (replaces the list).
        #[arg(long = "commit-key", value_name = "PUBFILE")]
        commit_keys: Vec<PathBuf>,
        /// Public key file of a key that may sign channel documents (replaces the list).
        #[arg(long = "channel-key", value_name = "PUBFILE")]
        channel_keys: Vec<PathBuf>,
        /// Public key file of a key that may sign device configuration (replaces the list).
        #[arg(long = "config-key", value_name = "PUBFILE", conflicts_with = "no_config_keys")]
        config_keys: Vec<PathBuf>,
        /// Removes every configuration key: devices then take no signed configuration.
        #[arg(long)]
        no_config_keys: bool,
        /// Root signatures the next key document needs (default: unchanged, 1 at first).
        #[arg(long, value_name = "N")]
        root_threshold: Option<u16>,
        /// Commit key signatures a commit needs.
        #[arg(long, value_name = "N")]
        commit_threshold: Option<u16>,
        /// Channel key signatures a channel document needs.
        #[arg(long, value_name = "N")]
        channel_threshold: Option<u16>,
        /// Configuration key signatures a configuration document needs.
        #[arg(long, value_name = "N")]
        config_threshold: Option<u16>,
        /// How long devices accept it as their newest key document: e.g. 365d (default:
        /// the current document's lifetime, or a year).
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Re-signs the current key document with a new expiry and the next serial, changing
    /// nothing else; run it well inside the expiry (like `ferry channel refresh`).
    Refresh {
        #[command(flatten)]
        repo: RepoArg,
        /// Secret key file(s) to sign with (enough current root keys).
        #[arg(long = "sign-key", value_name = "FILE", required = true)]
        sign_keys: Vec<PathBuf>,
        /// How long from now: e.g. 365d (default: the current document's lifetime).
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Shows the key documents, oldest first.
    Show {
        #[command(flatten)]
        repo: RepoArg,
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// The commit to promote (id, unique prefix or branch); omit it with --from to take the
    /// source channel's current targets.
    commit: Option<String>,
    /// The channel the commit comes from; recorded as the target channel's upstream.
    #[arg(long, value_name = "CHANNEL")]
    from: Option<String>,
    /// The channel to write.
    #[arg(long, value_name = "CHANNEL")]
    to: String,
    /// Hardware revisions to change (default: every revision the commit, or the source
    /// channel, has).
    #[arg(long = "hardware", value_name = "REV")]
    hardware: Vec<String>,
    /// Secret key file allowed to sign channel documents (repeat it as many times as the
    /// channel threshold asks).
    #[arg(long, value_name = "FILE", required = true)]
    sign_key: Vec<PathBuf>,
    /// How long devices accept the document: e.g. 7d, 12h, 3600 (seconds).
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_EXPIRES)]
    expires: String,
    /// Deliberately move devices to an older version; the document records it.
    #[arg(long)]
    rollback: bool,
    /// Promote a commit the channel's upstream never had.
    #[arg(long)]
    force: bool,
    /// Start the channel if it does not exist (a name that is new is refused without it).
    #[arg(long)]
    create: bool,
    /// Print the channel's new document (and `changed`: false when nothing was written)
    /// as JSON on stdout, for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ChannelCommand {
    /// Shows a channel's current document.
    Show {
        #[command(flatten)]
        repo: RepoArg,
        /// The channel\'s name.
        channel: String,
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Lists a channel's documents, newest first.
    Log {
        #[command(flatten)]
        repo: RepoArg,
        /// The channel\'s name.
        channel: String,
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Lists channels with their serial and targets.
    List {
        #[command(flatten)]
        repo: RepoArg,
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Retires a channel (a mistyped one, one no device follows any more): the server stops
    /// serving it, `channel refresh` stops signing it, and promoting to its name again needs
    /// --create (and goes on from its last serial). Its documents stay in the repository.
    /// Refused while another channel is promoted from it. A fleet's rollout on it is not
    /// touched: finish or abort it first.
    Retire {
        #[command(flatten)]
        repo: RepoArg,
        /// The channel\'s name.
        channel: String,
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Re-signs channel documents (all, or those named) with a new expiry; run it on a timer
    /// well inside the expiry, so devices can tell "nothing new" from "updates withheld".
    Refresh {
        #[command(flatten)]
        repo: RepoArg,
        /// The channels to refresh; every one when none is named.
        channels: Vec<String>,
        /// Secret key file(s) allowed to sign channel documents (as many as the channel
        /// threshold asks).
        #[arg(long, value_name = "FILE", required = true)]
        sign_key: Vec<PathBuf>,
        /// How long devices accept the new documents: 7d, 12h, or seconds.
        #[arg(long, value_name = "DURATION", default_value = DEFAULT_EXPIRES)]
        expires: String,
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn load_publics(paths: &[PathBuf]) -> Result<Option<Vec<PublicKey>>> {
    if paths.is_empty() {
        return Ok(None);
    }
    Ok(Some(paths.iter().map(|p| PublicKey::load(p)).collect::<Result<Vec<_>, _>>()?))
}

/// A key document as `ferry keys show --json` and `ferry keys set --json` print it.
#[derive(serde::Serialize)]
struct KeyDocView {
    id: String,
    serial: u64,
    /// The format version (1 or 2).
    version: u16,
    timestamp: i64,
    /// `null` for a version 1 document, which never expires.
    expires: Option<i64>,
    roots: Vec<String>,
    commit_keys: Vec<String>,
    channel_keys: Vec<String>,
    config_keys: Vec<String>,
    thresholds: ferry_store::channel::Thresholds,
}

fn key_json(id: &ferry_store::Id, d: &KeyDoc) -> KeyDocView {
    let hexes = |v: &[[u8; 32]]| v.iter().map(hex::encode).collect::<Vec<_>>();
    KeyDocView {
        id: id.to_hex(),
        serial: d.serial,
        version: d.version(),
        timestamp: d.timestamp,
        expires: d.expires,
        roots: hexes(&d.roots),
        commit_keys: hexes(&d.commit_keys),
        channel_keys: hexes(&d.channel_keys),
        config_keys: hexes(&d.config_keys),
        thresholds: d.thresholds,
    }
}

fn key_text(id: &ferry_store::Id, d: &KeyDoc) -> String {
    let role = |name: &str, keys: &[[u8; 32]], threshold: u16| {
        let mut out = format!("  {name:<14}");
        if keys.is_empty() {
            out += "(none)\n";
        } else {
            out += &format!("{threshold} of {}\n", keys.len());
            for k in keys {
                out += &format!("    {}\n", hex::encode(k));
            }
        }
        out
    };
    let expires = match d.expires {
        Some(e) => format!("expires {}", crate::show::format_time(e)),
        None => "never expires (format version 1)".to_string(),
    };
    format!(
        "key document {} ({}), version {}, signed {}, {}\n{}{}{}{}",
        d.serial,
        id.short(),
        d.version(),
        crate::show::format_time(d.timestamp),
        expires,
        role("roots:", &d.roots, d.thresholds.root),
        role("commit keys:", &d.commit_keys, d.thresholds.commit),
        role("channel keys:", &d.channel_keys, d.thresholds.channel),
        role("config keys:", &d.config_keys, d.thresholds.config),
    )
}

fn load_secrets(paths: &[PathBuf]) -> Result<Vec<SecretKey>> {
    Ok(paths.iter().map(|p| SecretKey::load(p)).collect::<Result<Vec<_>, _>>()?)
}

fn print_keys(id: &ferry_store::Id, doc: &KeyDoc, json: bool) -> Result<()> {
    if json {
        print_json(&key_json(id, doc))?;
    } else {
        print!("{}", key_text(id, doc));
    }
    Ok(())
}

pub fn keys(cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::Set {
            repo,
            sign_keys,
            roots,
            commit_keys,
            channel_keys,
            config_keys,
            no_config_keys,
            root_threshold,
            commit_threshold,
            channel_threshold,
            config_threshold,
            expires_in,
            json,
        } => {
            let signers = load_secrets(&sign_keys)?;
            let change = KeyChange {
                roots: load_publics(&roots)?,
                commit_keys: load_publics(&commit_keys)?,
                channel_keys: load_publics(&channel_keys)?,
                config_keys: if no_config_keys { Some(Vec::new()) } else { load_publics(&config_keys)? },
                thresholds: ThresholdChange {
                    root: root_threshold,
                    commit: commit_threshold,
                    channel: channel_threshold,
                    config: config_threshold,
                },
                expires_in: expires_in
                    .map(|e| channels::parse_duration(&e).map_err(|e| anyhow!("--expires-in: {e}")))
                    .transpose()?,
            };
            let r = Repository::open(&repo.repo)?;
            let (id, doc) = channels::set_keys(&r, &signers, change, now())?;
            print_keys(&id, &doc, json)?;
        }
        KeysCommand::Refresh { repo, sign_keys, expires_in, json } => {
            let signers = load_secrets(&sign_keys)?;
            let expires_in = expires_in
                .map(|e| channels::parse_duration(&e).map_err(|e| anyhow!("--expires-in: {e}")))
                .transpose()?;
            let r = Repository::open(&repo.repo)?;
            let (id, doc) = channels::refresh_keys(&r, &signers, expires_in, now())?;
            print_keys(&id, &doc, json)?;
        }
        KeysCommand::Show { repo, json } => {
            let r = Repository::open_read_only(&repo.repo)?;
            let mut docs = Vec::new();
            for e in r.key_chain()? {
                docs.push((e.id(), KeyDoc::decode(&e.document)?));
            }
            if json {
                print_json(&docs.iter().map(|(id, d)| key_json(id, d)).collect::<Vec<_>>())?;
            } else if docs.is_empty() {
                eprintln!("no key document yet; create one with `ferry keys set`");
            } else {
                for (id, d) in &docs {
                    print!("{}", key_text(id, d));
                }
            }
        }
    }
    Ok(())
}

pub fn promote(a: PromoteArgs) -> Result<()> {
    let keys = load_secrets(&a.sign_key)?;
    let expires_in = channels::parse_duration(&a.expires).map_err(|e| anyhow!("--expires: {e}"))?;
    let r = Repository::open(&a.repo.repo)?;
    let commit = a.commit.as_deref().map(|c| r.resolve(c)).transpose()?;
    let p = Promotion {
        to: a.to,
        commit,
        from: a.from,
        hardware: a.hardware,
        keys: &keys,
        expires_in,
        rollback: a.rollback,
        force: a.force,
        create: a.create,
        now: now(),
    };
    let out = channels::promote(&r, &p)?;
    if a.json {
        print_json(&ferry_api::admin::Promoted {
            changed: out.changed,
            document: channels::document(&out.id, &out.doc),
        })?;
    } else {
        if !out.changed {
            eprintln!("channel {} already has these targets; nothing written", out.doc.name);
        }
        print!("{}", channels::doc_text(&out.id, &out.doc));
    }
    Ok(())
}

/// A channel document with one more field, for `ferry channel log --json` (`signed_by`) and
/// `ferry channel list --json` (`upstream`): views of this command only, not API messages.
/// They go through serde_json's map, which keeps keys in alphabetical order, as these views
/// always printed them.
fn with_field(
    id: &ferry_store::Id,
    d: &ChannelDoc,
    name: &str,
    value: &impl serde::Serialize,
) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(channels::document(id, d))?;
    if let serde_json::Value::Object(map) = &mut v {
        map.insert(name.to_string(), serde_json::to_value(value)?);
    }
    Ok(v)
}

pub fn channel(cmd: ChannelCommand) -> Result<()> {
    match cmd {
        ChannelCommand::Show { repo, channel, json } => {
            let r = Repository::open_read_only(&repo.repo)?;
            let (id, doc, _) = channels::history(&r, &channel)?
                .into_iter()
                .next()
                .ok_or_else(|| anyhow!("channel {channel} does not exist"))?;
            if json {
                print_json(&channels::document(&id, &doc))?;
            } else {
                print!("{}", channels::doc_text(&id, &doc));
            }
        }
        ChannelCommand::Log { repo, channel, json } => {
            let r = Repository::open_read_only(&repo.repo)?;
            let h = channels::history(&r, &channel)?;
            if h.is_empty() {
                return Err(anyhow!("channel {channel} does not exist"));
            }
            if json {
                let v = h
                    .iter()
                    .map(|(id, d, signers)| with_field(id, d, "signed_by", signers))
                    .collect::<Result<Vec<_>>>()?;
                print_json(&v)?;
            } else {
                for (id, d, _) in &h {
                    print!("{}", channels::doc_text(id, d));
                }
            }
        }
        ChannelCommand::List { repo, json } => {
            let r = Repository::open_read_only(&repo.repo)?;
            let mut all = Vec::new();
            for (name, _) in r.channels()? {
                if let Some(first) = channels::history(&r, &name)?.into_iter().next() {
                    all.push((first.0, first.1, r.upstream(&name)?));
                }
            }
            if json {
                let v = all.iter().map(|(id, d, up)| with_field(id, d, "upstream", up)).collect::<Result<Vec<_>>>()?;
                print_json(&v)?;
            } else if all.is_empty() {
                eprintln!("no channels yet; `ferry promote COMMIT --to CHANNEL --create` starts one");
            } else {
                // One line per channel (`channel show` and `log` give a document whole).
                let mut rows = vec![["CHANNEL", "SERIAL", "EXPIRES", "FROM", "TARGETS"].map(String::from).to_vec()];
                for (id, d, up) in &all {
                    let targets: Vec<String> = d
                        .targets
                        .iter()
                        .map(|t| format!("{} {} ({})", t.hardware, t.version, t.commit.short()))
                        .collect();
                    let soon = ferry_api::admin::expiry_warning(&d.name, d.expires, now()).is_some();
                    rows.push(vec![
                        d.name.clone(),
                        format!("{}{}", d.serial, if d.rollback { " rollback" } else { "" }),
                        format!("{}{}", crate::show::format_time(d.expires), if soon { " (soon!)" } else { "" }),
                        up.clone().unwrap_or_else(|| "-".into()),
                        format!("{} [{}]", targets.join(", "), id.short()),
                    ]);
                }
                crate::cli::print_table(&rows);
            }
        }
        ChannelCommand::Retire { repo, channel, json } => {
            let r = Repository::open(&repo.repo)?;
            let head = r.channel(&channel)?.ok_or_else(|| anyhow!("channel {channel} does not exist"))?;
            let downstream = r.downstream(&channel)?;
            if !downstream.is_empty() {
                bail!(
                    "channel {channel} is the upstream of {}: promotions there check against it; retire those first",
                    downstream.join(", ")
                );
            }
            r.retire_channel(&channel, head)?;
            if json {
                print_json(&serde_json::json!({ "retired": channel, "last_document": head.to_hex() }))?;
            } else {
                eprintln!("retired channel {channel} (its last document {} stays in the repository)", head.short());
            }
        }
        ChannelCommand::Refresh { repo, channels: names, sign_key, expires, json } => {
            let keys = load_secrets(&sign_key)?;
            let expires_in = channels::parse_duration(&expires).map_err(|e| anyhow!("--expires: {e}"))?;
            let r = Repository::open(&repo.repo)?;
            let out = channels::refresh(&r, &names, &keys, expires_in, now())?;
            if json {
                print_json(&out.iter().map(|(id, d)| channels::document(id, d)).collect::<Vec<_>>())?;
            } else {
                for (id, d) in &out {
                    print!("{}", channels::doc_text(id, d));
                }
            }
        }
    }
    Ok(())
}
