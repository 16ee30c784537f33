//! Identity key files: written 0600, refused when others could read them, clear errors otherwise.

use std::os::unix::fs::PermissionsExt;

use psp_core::{IdentityKey, KeyFileError};

#[test]
fn a_saved_key_is_owner_only_and_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.pem");
    let key = IdentityKey::generate().unwrap();
    key.save(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(IdentityKey::load(&path).unwrap().public(), key.public());
    let pem = std::fs::read_to_string(&path).unwrap();
    assert!(
        pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "PKCS#8 PEM: {pem}"
    );
}

#[test]
fn a_key_others_can_read_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.pem");
    IdentityKey::generate().unwrap().save(&path).unwrap();
    for mode in [0o644, 0o604, 0o660, 0o650, 0o601] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let error = IdentityKey::load(&path).unwrap_err();
        assert!(matches!(error, KeyFileError::Permissions { mode: m, .. } if m == mode));
        assert!(error.to_string().contains("chmod 600"), "{error}");
    }
}

/// How service managers hand a key to one service: systemd credentials (0440, an ACL for the
/// dynamic user) and Kubernetes secret volumes with an `fsGroup` (0440, the pod's group).
#[test]
fn a_key_its_group_may_only_read_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.pem");
    let key = IdentityKey::generate().unwrap();
    key.save(&path).unwrap();
    for mode in [0o400, 0o440, 0o640] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(
            IdentityKey::load(&path).unwrap().public(),
            key.public(),
            "{mode:o}"
        );
    }
}

#[test]
fn saving_never_overwrites_an_identity() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.pem");
    let first = IdentityKey::generate().unwrap();
    first.save(&path).unwrap();
    let error = IdentityKey::generate().unwrap().save(&path).unwrap_err();
    assert!(matches!(error, KeyFileError::Exists(_)), "{error}");
    assert_eq!(IdentityKey::load(&path).unwrap().public(), first.public());
}

#[test]
fn missing_and_garbage_files_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let error = IdentityKey::load(&missing).unwrap_err();
    assert!(matches!(error, KeyFileError::Io { .. }));
    assert!(error.to_string().contains("nope.pem"));

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a key").unwrap();
    std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o600)).unwrap();
    let error = IdentityKey::load(&garbage).unwrap_err();
    assert!(matches!(error, KeyFileError::Format { .. }), "{error}");
}

#[test]
fn generated_keys_differ() {
    let a = IdentityKey::generate().unwrap().public();
    let b = IdentityKey::generate().unwrap().public();
    assert_ne!(a, b);
}
