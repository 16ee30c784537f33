//! Machine identities: the Ed25519 key every Totebox, orchestrator and console owns.
//!
//! A machine's public key *is* its name in PSP: configs pin it, capabilities are granted to it, and
//! TLS sessions are authenticated by it. Its printable form, `ed25519:` followed by 64 hex digits,
//! is lossless, so the string a log shows is the string a config pins.
//!
//! Private keys are stored as PKCS#8 PEM (readable by OpenSSL and Python's `cryptography`) in files
//! only their owner can read: [`IdentityKey::load`] refuses a file that others can access or its
//! group can change (group read is how service managers hand a key to one service).

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

/// Prefix of a public key's printable form.
const KEY_PREFIX: &str = "ed25519:";

/// A machine's private Ed25519 identity key.
///
/// `Debug` prints only the public half, so the secret never lands in a log by accident.
#[derive(Clone)]
pub struct IdentityKey {
    signing: SigningKey,
}

impl IdentityKey {
    /// Generates a fresh key from the operating system's random number generator.
    pub fn generate() -> Result<Self, KeyFileError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyFileError::Random(e.to_string()))?;
        Ok(Self::from_seed(seed))
    }

    /// Derives the key from a 32-byte seed (the Ed25519 secret key). Deterministic: for tests and
    /// reproducible fixtures; production keys come from [`IdentityKey::generate`].
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The public half: the machine's name in configs, capabilities and TLS pinning.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key().to_bytes())
    }

    /// Signs `message`. Callers prepend their own domain-separation prefix.
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// The key as a PKCS#8 v2 DER document (what TLS libraries load).
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        self.signing
            .to_pkcs8_der()
            .expect("encoding an Ed25519 key as PKCS#8 cannot fail")
            .as_bytes()
            .to_vec()
    }

    /// Writes the key to `path` as PKCS#8 PEM, readable and writable by the owner only (0600).
    ///
    /// Refuses to overwrite an existing file: replacing a machine's identity unpairs it from every
    /// peer, so that must be a deliberate act (delete the old file first).
    pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
        // PKCS#8 v1 (RFC 8410 without the optional public key): every library reads it, while
        // the v2 form with the public key is refused by some (Python's `cryptography` among them).
        let v1 = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.signing.to_bytes(),
            public_key: None,
        };
        let pem = v1
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .expect("encoding an Ed25519 key as PKCS#8 PEM cannot fail");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // Created 0600 from the start: no window in which the secret is world-readable.
            options.mode(0o600);
        }
        let io = |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = options.open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyFileError::Exists(path.to_owned())
            } else {
                io(source)
            }
        })?;
        file.write_all(pem.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Reads a key written by [`IdentityKey::save`] (or any PKCS#8 Ed25519 PEM file).
    ///
    /// On Unix the file must not be open to others, nor writable or executable by its group; a
    /// looser file is refused, since a key others could read is no longer this machine's
    /// identity. Reading by the file's group is accepted: that is how service managers hand a
    /// key to one service (systemd credentials are 0440 with an ACL for the service's dynamic
    /// user; a Kubernetes secret volume with an `fsGroup` is 0440 for the pod's group). Give
    /// that group to the service alone.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o037 != 0 {
                return Err(KeyFileError::Permissions {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        let pem = std::fs::read_to_string(path).map_err(io)?;
        let signing = SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyFileError::Format {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self { signing })
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKey")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

/// A machine's public Ed25519 key: 32 bytes, printed as `ed25519:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub(crate) [u8; 32]);

impl PublicKey {
    /// Wraps 32 raw key bytes. Whether they are a valid curve point is checked when a signature is
    /// verified with them, not here.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Reads a key from a byte slice, which must be exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The raw 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The printable, lossless fingerprint used in configs and logs (same as `Display`).
    pub fn fingerprint(&self) -> String {
        self.to_string()
    }

    /// Checks `signature` over `message` under this key, rejecting non-canonical signatures and
    /// small-order keys (RFC 8032 strict verification), so every signature has one valid encoding.
    pub(crate) fn verify_strict(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let Some(key) = decompressed(&self.0) else {
            return false;
        };
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        key.verify_strict(message, &signature).is_ok()
    }
}

/// Keys decompressed lately on this thread, newest last.
const DECOMPRESSED_KEPT: usize = 16;

thread_local! {
    static DECOMPRESSED: std::cell::RefCell<Vec<([u8; 32], VerifyingKey)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// `bytes` as a curve point, from this thread's few most recent keys when it is one of them.
/// Decompressing a key costs a field exponentiation, about a tenth of a verification, and a
/// Totebox checks the same few issuers' signatures (the operator's, each request) again and
/// again. A key that is not a point is never kept; a stream of made-up keys only cycles the
/// list and costs what no list would.
fn decompressed(bytes: &[u8; 32]) -> Option<VerifyingKey> {
    DECOMPRESSED.with(|kept| {
        let mut kept = kept.borrow_mut();
        if let Some(at) = kept.iter().position(|(k, _)| k == bytes) {
            let entry = kept.remove(at);
            let key = entry.1;
            kept.push(entry);
            return Some(key);
        }
        let key = VerifyingKey::from_bytes(bytes).ok()?;
        if kept.len() == DECOMPRESSED_KEPT {
            kept.remove(0);
        }
        kept.push((*bytes, key));
        Some(key)
    })
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_PREFIX}{}", hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for PublicKey {
    type Err = ParseKeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let digits = text
            .trim()
            .strip_prefix(KEY_PREFIX)
            .ok_or(ParseKeyError::MissingPrefix)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(digits, &mut bytes).map_err(|_| ParseKeyError::BadDigits)?;
        Ok(Self(bytes))
    }
}

/// A public key string that is not `ed25519:` followed by 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseKeyError {
    /// The string does not start with `ed25519:`.
    #[error("a public key starts with \"ed25519:\"")]
    MissingPrefix,
    /// What follows the prefix is not exactly 64 hexadecimal digits.
    #[error("a public key is \"ed25519:\" followed by exactly 64 hex digits")]
    BadDigits,
}

/// Why an identity key file could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file system refused (missing file, no permission, disk full, ...).
    #[error("identity key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// [`IdentityKey::save`] will not replace an existing key.
    #[error(
        "identity key file {0} already exists; remove it first to replace this machine's identity"
    )]
    Exists(PathBuf),
    /// Others may access the file, or its group may write or run it.
    #[error(
        "identity key file {path} has mode {mode:04o}; it must be readable by its owner (and at \
         most read by its group), never open to others (run `chmod 600 {path}`)"
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not a PKCS#8 Ed25519 private key in PEM.
    #[error("identity key file {path} is not a PKCS#8 Ed25519 PEM key: {reason}")]
    Format {
        /// The key file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// The operating system's random number generator failed.
    #[error("cannot generate a key: the system random number generator failed: {0}")]
    Random(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_key_round_trips() {
        let key = IdentityKey::from_seed([7; 32]).public();
        let text = key.to_string();
        assert!(text.starts_with("ed25519:") && text.len() == 8 + 64);
        assert_eq!(text.parse::<PublicKey>().unwrap(), key);
        assert_eq!(
            "ed25519:abcd".parse::<PublicKey>(),
            Err(ParseKeyError::BadDigits)
        );
        assert_eq!(
            hex::encode([0u8; 32]).parse::<PublicKey>(),
            Err(ParseKeyError::MissingPrefix)
        );
    }

    #[test]
    fn a_kept_key_verifies_only_its_own_signatures() {
        let keys: Vec<IdentityKey> = (0..DECOMPRESSED_KEPT as u8 + 4)
            .map(|i| IdentityKey::from_seed([i + 1; 32]))
            .collect();
        // Twice round more keys than are kept: every key is decompressed anew at least once and
        // found kept at least once.
        for _ in 0..2 {
            for (i, key) in keys.iter().enumerate() {
                let signed = key.sign(b"link body");
                assert!(key.public().verify_strict(b"link body", &signed));
                assert!(!key.public().verify_strict(b"another body", &signed));
                let other = &keys[(i + 1) % keys.len()];
                assert!(!other.public().verify_strict(b"link body", &signed));
            }
        }
        let kept = DECOMPRESSED.with(|kept| kept.borrow().len());
        assert_eq!(kept, DECOMPRESSED_KEPT);
    }

    #[test]
    fn bytes_that_are_no_point_verify_nothing_and_are_not_kept() {
        // y = 2 has no x on the curve: not a point.
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        assert!(VerifyingKey::from_bytes(&not_a_point).is_err());
        let before = DECOMPRESSED.with(|kept| kept.borrow().len());
        assert!(!PublicKey::from_bytes(not_a_point).verify_strict(b"m", &[0; 64]));
        assert_eq!(DECOMPRESSED.with(|kept| kept.borrow().len()), before);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = IdentityKey::from_seed([9; 32]);
        let shown = format!("{key:?}");
        assert!(shown.contains(&key.public().to_string()));
        assert!(!shown.contains(&hex::encode([9u8; 32])));
    }
}
