//! Presenting commits, trees and diffs: text for people, JSON for scripts.

use ferry_store::{Commit, Entry, EntryKind, Id, PublicKey, Repository};
use serde_json::{json, Value};

pub use ferry_store::time::format_utc as format_time;

/// A signature and whether it verifies.
#[derive(Debug)]
pub struct SignatureStatus {
    pub key: String,
    pub valid: bool,
}

pub fn signature_status(repo: &Repository, id: &Id) -> ferry_store::Result<Vec<SignatureStatus>> {
    Ok(repo
        .signatures(id)?
        .into_iter()
        .map(|s| SignatureStatus {
            key: hex::encode(s.key),
            valid: PublicKey::from_bytes(&s.key).is_ok_and(|k| k.verify_commit(id, &s.signature)),
        })
        .collect())
}

pub fn commit_json(id: &Id, c: &Commit, sigs: &[SignatureStatus]) -> Value {
    json!({
        "id": id.to_hex(),
        "root": c.root.to_hex(),
        "parent": c.parent.map(|p| p.to_hex()),
        "version": c.version.to_string(),
        "timestamp": c.timestamp,
        "subject": c.subject,
        "body": c.body,
        "metadata": c.metadata,
        "hardware": c.hardware,
        "signatures": sigs.iter().map(|s| json!({"key": s.key, "valid": s.valid})).collect::<Vec<_>>(),
    })
}

pub fn commit_text(id: &Id, c: &Commit, sigs: &[SignatureStatus]) -> String {
    let mut out = format!("commit {id}\n");
    out += &format!("version:   {}\n", c.version);
    if let Some(t) = c.timestamp {
        out += &format!("date:      {}\n", format_time(t));
    }
    out += &format!("parent:    {}\n", c.parent.map_or("none".to_string(), |p| p.to_hex()));
    out += &format!("root:      {}\n", c.root);
    if !c.hardware.is_empty() {
        out += &format!("hardware:  {}\n", c.hardware.join(", "));
    }
    for (k, v) in &c.metadata {
        out += &format!("meta:      {k}={v}\n");
    }
    for s in sigs {
        out += &format!("signature: {} {}\n", s.key, if s.valid { "valid" } else { "INVALID" });
    }
    if !c.subject.is_empty() {
        out += &format!("\n    {}\n", c.subject);
    }
    if !c.body.is_empty() {
        out += "\n";
        for line in c.body.lines() {
            out += &format!("    {line}\n");
        }
    }
    out
}

fn mode_string(kind: &EntryKind) -> String {
    let (t, mode) = match kind {
        EntryKind::File { meta, .. } => ('-', meta.mode),
        EntryKind::Dir { .. } => ('d', 0),
        EntryKind::Symlink { .. } => ('l', 0o777),
    };
    let mut s = String::from(t);
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        s.push(if mode & (0o400 >> i) != 0 { c } else { '-' });
    }
    s
}

/// One `ls` line or JSON object for an entry; directories show their tree's own metadata.
pub fn entry_json(repo: &Repository, e: &Entry) -> ferry_store::Result<Value> {
    let name = String::from_utf8_lossy(&e.name);
    Ok(match &e.kind {
        EntryKind::File { meta, size, chunks } => json!({
            "name": name, "kind": "file", "mode": format!("{:04o}", meta.mode), "uid": meta.uid, "gid": meta.gid,
            "size": size, "chunks": chunks.len(),
        }),
        EntryKind::Dir { tree } => {
            let t = repo.read_tree(tree)?;
            json!({"name": name, "kind": "dir", "mode": format!("{:04o}", t.meta.mode), "uid": t.meta.uid, "gid": t.meta.gid, "tree": tree.to_hex()})
        }
        EntryKind::Symlink { uid, gid, target, .. } => json!({
            "name": name, "kind": "symlink", "uid": uid, "gid": gid, "target": String::from_utf8_lossy(target),
        }),
    })
}

pub fn entry_text(repo: &Repository, e: &Entry) -> ferry_store::Result<String> {
    let name = String::from_utf8_lossy(&e.name);
    Ok(match &e.kind {
        EntryKind::File { meta, size, .. } => {
            format!("{}{} {:>5} {:>5} {:>12} {name}", mode_string(&e.kind), suid(meta.mode), meta.uid, meta.gid, size)
        }
        EntryKind::Dir { tree } => {
            let t = repo.read_tree(tree)?;
            let mut m = mode_string(&e.kind);
            m.replace_range(1.., &mode_string(&EntryKind::File { meta: t.meta.clone(), size: 0, chunks: vec![] })[1..]);
            format!("{m}{} {:>5} {:>5} {:>12} {name}/", suid(t.meta.mode), t.meta.uid, t.meta.gid, "-")
        }
        EntryKind::Symlink { uid, gid, target, .. } => {
            format!(
                "{}  {uid:>5} {gid:>5} {:>12} {name} -> {}",
                mode_string(&e.kind),
                "-",
                String::from_utf8_lossy(target)
            )
        }
    })
}

/// Marks set-uid, set-gid and sticky bits, which the rwx string alone does not show.
fn suid(mode: u32) -> &'static str {
    if mode & 0o7000 != 0 {
        "+"
    } else {
        " "
    }
}
