use ferry_api::repo::{BranchHead, CommitSignatures, Signature, SignedCommit, VersionCommits};
use ferry_api::ErrorBody;

use crate::check;

#[test]
fn branch_heads_and_versions() {
    check(
        &BranchHead { branch: "release/stable".into(), commit: "ab".into() },
        r#"{"branch":"release/stable","commit":"ab"}"#,
    );
    check(
        &VersionCommits { commits: vec!["ab".into(), "cd".into()], version: "1.4.2".into() },
        r#"{"commits":["ab","cd"],"version":"1.4.2"}"#,
    );
}

#[test]
fn commits_and_signatures() {
    let sigs = || vec![Signature { key: "k1".into(), signature: "s1".into() }];
    check(
        &CommitSignatures { commit: "ab".into(), signatures: sigs() },
        r#"{"commit":"ab","signatures":[{"key":"k1","signature":"s1"}]}"#,
    );
    check(
        &SignedCommit { bytes: "0102".into(), commit: "ab".into(), signatures: sigs() },
        r#"{"bytes":"0102","commit":"ab","signatures":[{"key":"k1","signature":"s1"}]}"#,
    );
    check(
        &SignedCommit { bytes: "0102".into(), commit: "ab".into(), signatures: Vec::new() },
        r#"{"bytes":"0102","commit":"ab","signatures":[]}"#,
    );
}

#[test]
fn an_error_names_what_is_missing_only_for_a_batch() {
    check(&ErrorBody::new("no such branch"), r#"{"error":"no such branch"}"#);
    check(
        &ErrorBody {
            error: "1 requested chunks are not in the repository, e.g. ab".into(),
            missing: Some(vec!["ab".into()]),
        },
        r#"{"error":"1 requested chunks are not in the repository, e.g. ab","missing":["ab"]}"#,
    );
}
