//! Serving an archive over PSP: what `psp-totebox serve` runs.
//!
//! The archive's config names the listen address, the identity key, the paired orchestrators,
//! the trusted roots and the revocations (its `[server]` section). [`RunningTotebox::reload`]
//! re-reads the last three: new handshakes see the new pairing at once, open connections of
//! peers no longer paired are closed, and every session call is checked against the new roots
//! and revocations (the verified-chain cache is kept, since it records no trust decisions).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use psp_core::capability::ChainCache;
use psp_core::{IdentityKey, PublicKey, Verifier};
use psp_rpc::runtime::{self, ServerHandle};
use psp_rpc::tls::{self, PairedKeys};
use psp_rpc::totebox_server::ToteboxService;

use crate::RecordArchive;
use crate::config::{ArchiveConfig, ServerSection, Trust};

/// A Totebox serving its archive.
#[derive(Debug)]
pub struct RunningTotebox {
    config: PathBuf,
    handle: ServerHandle,
    service: Arc<ToteboxService>,
    paired: Arc<PairedKeys>,
    cache: Arc<ChainCache>,
    key: PublicKey,
}

fn server_section(config: &Path) -> Result<(crate::Loaded, ServerSection), String> {
    let loaded = ArchiveConfig::load(config).map_err(|e| e.to_string())?;
    let server = loaded.config.server.clone().ok_or_else(|| {
        format!(
            "{} has no [server] section: add listen, identity, paired and trusted_roots to serve it",
            config.display()
        )
    })?;
    Ok((loaded, server))
}

fn verifier(trust: &Trust, cache: &Arc<ChainCache>) -> Verifier {
    Verifier::new(trust.roots.iter().copied())
        .with_revoked(trust.revoked.iter().copied())
        .with_policy(trust.policy)
        .with_cache(cache.clone())
}

impl RunningTotebox {
    /// Opens the archive of `config` and serves it on its `[server]` address.
    pub async fn start(config: &Path) -> Result<Self, String> {
        let (loaded, server) = server_section(config)?;
        let trust = server.trust()?;
        let base = config.parent().unwrap_or(Path::new("."));
        let identity =
            IdentityKey::load(&base.join(&server.identity)).map_err(|e| e.to_string())?;
        let archive = Arc::new(RecordArchive::open(loaded).map_err(|e| e.to_string())?);
        let report = archive.open_report();
        if report.torn_bytes_cut > 0 {
            metrics::counter!("psp_totebox_recoveries_total").increment(1);
            metrics::counter!("psp_totebox_recovered_bytes_total").increment(report.torn_bytes_cut);
            // Nothing acknowledged was lost (an append is acknowledged once on disk), but an
            // operator must be able to see that a crash happened and what recovery did.
            tracing::warn!(
                archive = psp_core::archive::Archive::id(archive.as_ref()),
                file = %archive.path().display(),
                bytes = report.torn_bytes_cut,
                "recovered: cut a torn last append of {} bytes",
                report.torn_bytes_cut
            );
        }
        let cache = Arc::new(ChainCache::default());
        let limits = server.limits()?;
        let service = ToteboxService::new(archive, verifier(&trust, &cache), limits);
        service.record_sizes();
        let paired = PairedKeys::new(trust.paired.iter().copied());
        let tls = tls::server_config(&identity, paired.clone()).map_err(|e| e.to_string())?;
        let listener = tokio::net::TcpListener::bind(&server.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", server.listen))?;
        let handle = runtime::serve(listener, tls, service.bootstrap_factory(), limits)
            .map_err(|e| e.to_string())?;
        Ok(Self {
            config: config.to_owned(),
            handle,
            service,
            paired,
            cache,
            key: identity.public(),
        })
    }

    /// The address it serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// Its machine key.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// Bytes its peers have sent it so far (the Cap'n Proto frames, after TLS).
    pub fn bytes_received(&self) -> u64 {
        self.handle.bytes_received()
    }

    /// Re-reads pairing, trusted roots and revocations from the config. On an error nothing
    /// changes (the error says what is wrong), so a typo never unpairs the fleet.
    pub fn reload(&self) -> Result<(), String> {
        let (_, server) = server_section(&self.config)?;
        let trust = server.trust()?;
        self.paired.replace(trust.paired.iter().copied());
        self.service.replace_verifier(verifier(&trust, &self.cache));
        let paired = self.paired.clone();
        self.handle
            .recheck(Arc::new(move |peer| paired.contains(peer)));
        tracing::info!(
            paired = trust.paired.len(),
            roots = trust.roots.len(),
            revoked = trust.revoked.len(),
            "reloaded pairing and trust"
        );
        Ok(())
    }

    /// Stops accepting, lets running calls finish for up to `grace`, then closes.
    pub async fn shutdown(self, grace: Duration) {
        self.handle.shutdown(grace).await;
    }
}
