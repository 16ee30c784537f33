//! Machine pairing over real TLS on 127.0.0.1: paired machines connect and learn each other's
//! key; an unpaired key is refused in either direction; a stolen certificate is useless without
//! its private key.

use std::sync::Arc;

use psp_core::{IdentityKey, PublicKey};
use psp_rpc::tls::{self, PairedKeys};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

struct Outcome {
    server: Result<PublicKey, String>,
    client: Result<PublicKey, String>,
}

/// One connection: the server echoes a byte; each side reports the peer key it saw or its error.
async fn connect(server: Arc<rustls::ServerConfig>, client: Arc<rustls::ClientConfig>) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut stream = TlsAcceptor::from(server)
            .accept(tcp)
            .await
            .map_err(|e| e.to_string())?;
        let peer = tls::peer_key(stream.get_ref().1).ok_or("no peer key")?;
        let mut byte = [0u8; 1];
        stream
            .read_exact(&mut byte)
            .await
            .map_err(|e| e.to_string())?;
        stream.write_all(&byte).await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    });
    let client_side = async {
        let tcp = TcpStream::connect(address).await.unwrap();
        let name = ServerName::try_from(tls::SERVER_NAME).unwrap();
        let mut stream = TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let peer = tls::peer_key(stream.get_ref().1).ok_or("no peer key")?;
        // TLS 1.3: the client finishes before the server has judged its certificate, so only a
        // round trip tells whether the server accepted it.
        stream.write_all(b"?").await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        stream
            .read_exact(&mut byte)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    };
    let client = tokio::time::timeout(std::time::Duration::from_secs(10), client_side)
        .await
        .expect("no hang");
    let server = tokio::time::timeout(std::time::Duration::from_secs(10), server_side)
        .await
        .expect("no hang")
        .unwrap();
    Outcome { server, client }
}

fn keys() -> (IdentityKey, IdentityKey, IdentityKey) {
    (
        IdentityKey::from_seed([1; 32]),
        IdentityKey::from_seed([2; 32]),
        IdentityKey::from_seed([3; 32]),
    )
}

#[tokio::test]
async fn paired_machines_connect_and_learn_each_others_key() {
    let (totebox, orchestrator, _) = keys();
    let server = tls::server_config(&totebox, PairedKeys::new([orchestrator.public()])).unwrap();
    let client = tls::client_config(&orchestrator, PairedKeys::new([totebox.public()])).unwrap();
    let outcome = connect(server, client).await;
    assert_eq!(outcome.server.unwrap(), orchestrator.public());
    assert_eq!(outcome.client.unwrap(), totebox.public());
}

#[tokio::test]
async fn a_server_refuses_a_client_it_was_not_paired_with() {
    let (totebox, orchestrator, stranger) = keys();
    let server = tls::server_config(&totebox, PairedKeys::new([orchestrator.public()])).unwrap();
    let client = tls::client_config(&stranger, PairedKeys::new([totebox.public()])).unwrap();
    let outcome = connect(server, client).await;
    assert!(outcome.server.is_err());
    let error = outcome.client.unwrap_err();
    assert!(
        error.contains("AccessDenied"),
        "the client learns it was refused: {error}"
    );
}

#[tokio::test]
async fn a_client_refuses_a_server_it_was_not_paired_with() {
    let (totebox, orchestrator, stranger) = keys();
    let server = tls::server_config(&stranger, PairedKeys::new([orchestrator.public()])).unwrap();
    let client = tls::client_config(&orchestrator, PairedKeys::new([totebox.public()])).unwrap();
    let outcome = connect(server, client).await;
    assert!(
        outcome
            .client
            .unwrap_err()
            .contains("ApplicationVerificationFailure")
    );
    assert!(outcome.server.is_err());
}

#[tokio::test]
async fn re_pairing_takes_effect_on_the_next_handshake() {
    let (totebox, orchestrator, _) = keys();
    let paired = PairedKeys::new([orchestrator.public()]);
    let server = tls::server_config(&totebox, paired.clone()).unwrap();
    let client = tls::client_config(&orchestrator, PairedKeys::new([totebox.public()])).unwrap();
    assert!(connect(server.clone(), client.clone()).await.client.is_ok());
    paired.replace([]);
    assert!(connect(server, client).await.client.is_err());
}

#[derive(Debug)]
struct StolenCertificate(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for StolenCertificate {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// The attacker copies the orchestrator's certificate (certificates are public) but can only
/// sign the handshake with its own key.
#[tokio::test]
async fn a_stolen_certificate_without_its_key_is_refused() {
    let (totebox, orchestrator, attacker) = keys();
    let provider = rustls::crypto::ring::default_provider();
    let attacker_key = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            attacker.to_pkcs8_der(),
        )))
        .unwrap();
    let stolen = rustls::sign::CertifiedKey::new(
        vec![tls::certificate(&orchestrator).unwrap()],
        attacker_key,
    );
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_client_cert_resolver(Arc::new(StolenCertificate(Arc::new(stolen))));
    let server = tls::server_config(&totebox, PairedKeys::new([orchestrator.public()])).unwrap();
    let outcome = connect(server, Arc::new(client)).await;
    let error = outcome.server.unwrap_err();
    assert!(error.contains("BadSignature"), "{error}");
    assert!(outcome.client.is_err());
}

/// The attacker's own client accepts any server (only the server's judgement is tested).
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        vec![rustls::SignatureScheme::ED25519]
    }
}

#[test]
fn a_certificate_is_a_pure_function_of_the_key() {
    let (key, other, _) = keys();
    let cert = tls::certificate(&key).unwrap();
    assert_eq!(
        cert,
        tls::certificate(&key).unwrap(),
        "same key, same bytes"
    );
    assert_ne!(cert, tls::certificate(&other).unwrap());
    assert_eq!(tls::certificate_key(&cert).unwrap(), key.public());
    let parsed = x509_parser::parse_x509_certificate(cert.as_ref())
        .unwrap()
        .1;
    assert_eq!(parsed.validity().not_before.timestamp(), 0);
    assert_eq!(parsed.validity().not_after.to_datetime().year(), 9999);
}
