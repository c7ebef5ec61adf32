//! Commit signatures and key files.

use ferry_store::{Id, KeyError, PublicKey, SecretKey};

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

#[test]
fn a_signature_verifies_only_for_its_key_and_commit() {
    let id = Id::of(b"commit");
    let sig = key(1).sign_commit(&id);
    assert!(key(1).public().verify_commit(&id, &sig));
    assert!(!key(2).public().verify_commit(&id, &sig), "wrong key accepted");
    assert!(!key(1).public().verify_commit(&Id::of(b"other"), &sig), "other commit accepted");
    for bit in [0, 100, 511] {
        let mut bad = sig;
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(!key(1).public().verify_commit(&id, &bad), "flipped bit {bit} accepted");
    }
}

#[test]
fn signatures_are_domain_separated() {
    use ed25519_dalek::Signer;
    // A signature over the bare commit id (no context prefix) must not verify.
    let seed = [1u8; 32];
    let raw = ed25519_dalek::SigningKey::from_bytes(&seed).sign(Id::of(b"c").as_bytes()).to_bytes();
    assert!(!key(1).public().verify_commit(&Id::of(b"c"), &raw));
}

#[test]
fn weak_public_keys_are_refused() {
    // The identity point (y = 1) has small order: every signature "verifies" leniently.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert!(matches!(PublicKey::from_bytes(&identity), Err(KeyError::Weak { .. })));
    let text = format!("ferry-public-key-v1 {}\n", hex::encode(identity));
    assert!(matches!(PublicKey::parse(&text, "weak.pub"), Err(KeyError::Weak { .. })));
}

#[test]
fn key_files_round_trip_and_bad_files_are_named() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("ci.key");
    let k = key(9);
    k.save(&path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(SecretKey::load(&path).unwrap().public(), k.public());
    assert_eq!(PublicKey::load(&ferry_store::sign::public_path(&path)).unwrap(), k.public());
    assert!(matches!(k.save(&path), Err(KeyError::Exists { .. })), "overwrote a key");

    // A public key where a secret key is expected, garbage, and a missing file.
    let err = SecretKey::load(&ferry_store::sign::public_path(&path)).unwrap_err();
    assert!(matches!(err, KeyError::Malformed { .. }) && err.to_string().contains("ci.key.pub"), "{err}");
    std::fs::write(t.path().join("junk"), "hello").unwrap();
    assert!(matches!(SecretKey::load(&t.path().join("junk")), Err(KeyError::Malformed { .. })));
    let err = SecretKey::load(&t.path().join("missing")).unwrap_err();
    assert!(matches!(err, KeyError::Io { .. }) && err.to_string().contains("missing"), "{err}");
}
