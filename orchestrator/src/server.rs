//! A running orchestrator: the console listener over the config's fleet, reloadable in place.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use psp_core::{IdentityKey, PublicKey};
use psp_rpc::limits::Limits;
use psp_rpc::runtime::ServerHandle;
use psp_rpc::tls::{self, PairedKeys};

use crate::config::Config;
use crate::service::OrchestratorService;

/// An orchestrator serving consoles (what `orchestrator serve` runs).
pub struct RunningOrchestrator {
    path: PathBuf,
    identity: PublicKey,
    service: Arc<OrchestratorService>,
    operators: Arc<PairedKeys>,
    handle: ServerHandle,
}

impl RunningOrchestrator {
    /// Loads the config at `path` and starts listening. Must run inside a tokio runtime.
    pub async fn start(path: &Path) -> Result<Self, String> {
        let config = Config::load(path).map_err(|e| e.to_string())?;
        let identity = IdentityKey::load(&config.identity).map_err(|e| e.to_string())?;
        let limits = Limits {
            idle_timeout: config.idle,
            ..Limits::default()
        };
        let service = OrchestratorService::new(config.clone(), &identity, limits);
        // Only operator keys complete TLS: a Totebox, or anyone else, can never act as a console.
        let operators = PairedKeys::new(config.operator_keys());
        // `orchestrator probe` presents this orchestrator's own key; refused, but not logged as
        // an attack every few seconds.
        operators.refuse_quietly(identity.public());
        let tls_config =
            tls::server_config(&identity, operators.clone()).map_err(|e| e.to_string())?;
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let handle =
            psp_rpc::runtime::serve(listener, tls_config, service.bootstrap_factory(), limits)
                .map_err(|e| e.to_string())?;
        tracing::info!(
            address = %handle.local_addr(),
            key = %identity.public(),
            archives = config.fleet.len(),
            tenants = config.tenants.len(),
            "serving consoles"
        );
        Ok(Self {
            path: path.to_owned(),
            identity: identity.public(),
            service,
            operators,
            handle,
        })
    }

    /// Where consoles connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// The orchestrator's machine key.
    pub fn key(&self) -> PublicKey {
        self.identity
    }

    /// The service (for its fleet's health, or its config).
    pub fn service(&self) -> &Arc<OrchestratorService> {
        &self.service
    }

    /// Re-reads the config file: fleet, tenants, quotas, defaults and viewports. Requests in
    /// flight finish under the config they started with; operators no longer listed are
    /// disconnected. On an error nothing changes, so a typo never takes the fleet away. The
    /// identity and the listen address take effect only at a restart.
    pub fn reload(&self) -> Result<(), String> {
        let config = Config::load(&self.path).map_err(|e| e.to_string())?;
        let running = self.service.config();
        if config.identity != running.identity || config.listen != running.listen {
            tracing::warn!(
                "identity and listen changed in the config; they take effect at a restart"
            );
        }
        let (archives, tenants) = (config.fleet.len(), config.tenants.len());
        self.operators.replace(config.operator_keys());
        self.service.reload(config);
        let operators = self.operators.clone();
        self.handle
            .recheck(Arc::new(move |peer| operators.contains(peer)));
        tracing::info!(archives, tenants, "reloaded the config");
        Ok(())
    }

    /// Stops accepting, lets running requests finish for up to `grace`, then closes.
    pub async fn shutdown(self, grace: Duration) {
        self.handle.shutdown(grace).await;
    }
}
