//! Pinned-key mutual TLS: every machine proves its Ed25519 identity key, and each side accepts
//! only the keys it was paired with. No certificate authority, no names, no passwords.
//!
//! * Each machine presents a self-signed X.509 certificate derived *deterministically* from its
//!   identity key (fixed subject, serial from the key, valid 1970 to 9999), so pinning the
//!   certificate and pinning the key are the same thing, and any TLS 1.3 stack (Python's, Go's,
//!   OpenSSL's) can pin it. RFC 7250 raw public keys are not used: those stacks cannot speak them.
//! * A verifier reads the Ed25519 key from the peer's certificate, refuses it unless it is
//!   paired, and then checks the handshake signature with *that same key* (ed25519-dalek, strict).
//!   Whatever else a certificate contains, the peer must hold the private half of a paired key.
//! * TLS 1.3 only, with the `ring` provider, and no session resumption: a resumed handshake
//!   would skip the key check, letting a machine un-paired since its last session back in.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use psp_core::{IdentityKey, PublicKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The name a client puts in its TLS ClientHello. Pinning replaces name checks, so it is fixed.
pub const SERVER_NAME: &str = "psp.invalid";

/// A TLS setup problem (bad key material, rustls refusing a config).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate could not be made from the identity key.
    #[error("cannot derive a certificate from the identity key: {0}")]
    Certificate(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The self-signed certificate of an identity key. Deterministic: the same key always gives the
/// same bytes.
pub fn certificate(identity: &IdentityKey) -> Result<CertificateDer<'static>, TlsError> {
    let pkcs8 = PrivatePkcs8KeyDer::from(identity.to_pkcs8_der());
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params.not_before = rcgen::date_time_ymd(1970, 1, 1);
    params.not_after = rcgen::date_time_ymd(9999, 12, 31);
    // The serial is the key itself (first 16 bytes, top bit cleared to keep it positive).
    let mut serial = identity.public().as_bytes()[..16].to_vec();
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from(serial));
    // The key in hex, without the `ed25519:` prefix: X.509 allows a common name of at most 64
    // characters (72 would make other stacks refuse the certificate). Peers never read it: they
    // check the key the certificate carries.
    let mut name = rcgen::DistinguishedName::new();
    let printed = identity.public().to_string();
    name.push(
        rcgen::DnType::CommonName,
        printed.trim_start_matches("ed25519:"),
    );
    params.distinguished_name = name;
    let cert = params
        .self_signed(&key_pair)
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    Ok(cert.der().clone())
}

/// The Ed25519 identity key a certificate carries.
pub fn certificate_key(cert: &CertificateDer<'_>) -> Result<PublicKey, rustls::Error> {
    let bad = || rustls::Error::InvalidCertificate(CertificateError::BadEncoding);
    let (rest, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|_| bad())?;
    if !rest.is_empty() {
        return Err(bad());
    }
    let spki = parsed.public_key();
    // id-Ed25519 is 1.3.101.112.
    if spki.algorithm.algorithm.to_id_string() != "1.3.101.112" {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(NotEd25519)),
        )));
    }
    PublicKey::from_slice(&spki.subject_public_key.data).ok_or_else(bad)
}

#[derive(Debug)]
struct NotEd25519;

impl std::fmt::Display for NotEd25519 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the certificate does not carry an Ed25519 identity key")
    }
}

impl std::error::Error for NotEd25519 {}

/// The keys a machine is paired with. Shared by its TLS verifiers and replaceable at run time
/// (a config reload): the next handshake sees the new set.
#[derive(Debug, Default)]
pub struct PairedKeys {
    keys: RwLock<HashSet<PublicKey>>,
    /// A key refused like any other unpaired key, but logged at debug: see
    /// [`PairedKeys::refuse_quietly`].
    quiet: std::sync::OnceLock<PublicKey>,
}

impl PairedKeys {
    /// A set of paired keys.
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Arc<Self> {
        Arc::new(Self {
            keys: RwLock::new(keys.into_iter().collect()),
            quiet: std::sync::OnceLock::new(),
        })
    }

    /// Refuses `key` as any unpaired key is refused, but logs its refusals at debug, not as
    /// security events. Meant for the machine's own key, which its readiness probe presents
    /// (`orchestrator probe`): a probe every few seconds would otherwise bury real refusals.
    /// Set once; a later call changes nothing. Pairing `key` still admits it.
    pub fn refuse_quietly(&self, key: PublicKey) {
        let _ = self.quiet.set(key);
    }

    /// Whether `key` is paired.
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }

    /// Replaces the set (sessions already open are not closed here; their owner decides).
    pub fn replace(&self, keys: impl IntoIterator<Item = PublicKey>) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys.into_iter().collect();
    }

    /// Checks a peer's certificate: an Ed25519 key that is paired, and no chain.
    fn admit(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<PublicKey, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            ));
        }
        let key = certificate_key(end_entity)?;
        if !self.contains(&key) {
            if self.quiet.get() == Some(&key) {
                tracing::debug!(target: "psp::security", peer = %key, "refused this machine's own key (a readiness probe)");
            } else {
                tracing::warn!(target: "psp::security", peer = %key, "refused a TLS peer whose key is not paired");
            }
            // Sent to the peer as an `access_denied` alert.
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(key)
    }
}

/// Checks a TLS 1.3 handshake signature with the certificate's own Ed25519 key.
fn verify_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(rustls::Error::PeerMisbehaved(
            rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
        ));
    }
    let key = certificate_key(cert)?;
    let verifying = ed25519_dalek::VerifyingKey::from_bytes(key.as_bytes())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let signature = ed25519_dalek::Signature::from_slice(dss.signature())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
    verifying
        .verify_strict(message, &signature)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
    Ok(HandshakeSignatureValid::assertion())
}

/// Verifies servers for a client: pinned keys instead of names and authorities.
#[derive(Debug)]
struct PinnedServer(Arc<PairedKeys>);

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.admit(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Verifies clients for a server: a certificate is required, and its key must be paired.
#[derive(Debug)]
struct PinnedClient(Arc<PairedKeys>);

impl ClientCertVerifier for PinnedClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.admit(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS config of a server (a Totebox, or the orchestrator's console listener): presents
/// `identity`, requires a client certificate whose key is in `paired`.
pub fn server_config(
    identity: &IdentityKey,
    paired: Arc<PairedKeys>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(PinnedClient(paired)))
        .with_single_cert(
            vec![certificate(identity)?],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.to_pkcs8_der())),
        )?;
    let mut config = config;
    // No session resumption: a resumed handshake skips the certificate check, so a machine
    // un-paired since its last session could walk back in. Sessions are long-lived; a full
    // handshake costs about a millisecond.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The TLS config of a client (the orchestrator toward Toteboxes, a console toward the
/// orchestrator): presents `identity`, accepts only servers whose key is in `paired`.
pub fn client_config(
    identity: &IdentityKey,
    paired: Arc<PairedKeys>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServer(paired)))
        .with_client_auth_cert(
            vec![certificate(identity)?],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.to_pkcs8_der())),
        )?;
    let mut config = config;
    // Every connection proves both keys again (see `server_config`).
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The identity key of the peer of an established TLS session.
pub fn peer_key(connection: &rustls::CommonState) -> Option<PublicKey> {
    connection
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| certificate_key(cert).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_name_fits_x509_and_the_key_is_what_counts() {
        let identity = IdentityKey::from_seed([5; 32]);
        let cert = certificate(&identity).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
        let name = parsed
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        assert!(name.len() <= 64, "{} characters", name.len());
        assert!(identity.public().to_string().ends_with(&name));
        assert_eq!(certificate_key(&cert).unwrap(), identity.public());
        assert_eq!(certificate(&identity).unwrap(), cert, "deterministic");
    }
}
