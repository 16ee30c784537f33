//! A hostile regional orchestrator: it serves the `Orchestrator` interface over pinned-key TLS
//! like a real one, lists the directory it is given, and answers `partial` with whatever its
//! current script writes, so the orchestrator above is tested against a region that lies well.

use std::rc::Rc;
use std::sync::{Arc, Mutex};

use psp_core::IdentityKey;
use psp_core::query::Query;
use psp_core::query::wire::read_query;
use psp_rpc::limits::Limits;
use psp_rpc::runtime::{Connection, ServerHandle};
use psp_rpc::tls::{self, PairedKeys};
use psp_schema::orchestrator_capnp::{Health, orchestrator, partial_answer};

/// What the region writes into a `partial` answer, given the query and label keys it was asked.
pub type RegionScript = Arc<dyn Fn(&Query, &[String], partial_answer::Builder<'_>) + Send + Sync>;

/// A hostile regional orchestrator, served on 127.0.0.1.
pub struct HostileRegion {
    /// Its machine key.
    pub key: psp_core::PublicKey,
    /// The script its next `partial` answers run (replace it between requests).
    pub script: Arc<Mutex<RegionScript>>,
    /// The chains it was sent, in order.
    pub chains: Arc<Mutex<Vec<psp_core::Chain>>>,
    handle: ServerHandle,
}

impl HostileRegion {
    /// Serves `upper` (the only key it accepts), listing `directory` (archive ids) as its
    /// archives, answering with `script`. Call within a tokio runtime.
    pub async fn start(
        upper: psp_core::PublicKey,
        directory: Vec<String>,
        script: RegionScript,
    ) -> HostileRegion {
        let identity = IdentityKey::generate().unwrap();
        let tls = tls::server_config(&identity, PairedKeys::new([upper])).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let script = Arc::new(Mutex::new(script));
        let chains: Arc<Mutex<Vec<psp_core::Chain>>> = Arc::default();
        let (shared, sent) = (script.clone(), chains.clone());
        let bootstrap: psp_rpc::runtime::Bootstrap = Arc::new(move |_: Rc<Connection>| {
            let client: orchestrator::Client = capnp_rpc::new_client(Liar {
                directory: directory.clone(),
                script: shared.clone(),
                chains: sent.clone(),
            });
            client.client
        });
        let handle = psp_rpc::runtime::serve(listener, tls, bootstrap, Limits::default()).unwrap();
        HostileRegion {
            key: identity.public(),
            script,
            chains,
            handle,
        }
    }

    /// Where it listens.
    pub fn address(&self) -> std::net::SocketAddr {
        self.handle.local_addr()
    }

    /// Answers from now on with `script`.
    pub fn answer_with(&self, script: RegionScript) {
        *self.script.lock().unwrap() = script;
    }
}

struct Liar {
    directory: Vec<String>,
    script: Arc<Mutex<RegionScript>>,
    chains: Arc<Mutex<Vec<psp_core::Chain>>>,
}

impl orchestrator::Server for Liar {
    async fn fleet(
        self: Rc<Self>,
        _: orchestrator::FleetParams,
        mut results: orchestrator::FleetResults,
    ) -> Result<(), capnp::Error> {
        let mut list = results.get().init_archives(self.directory.len() as u32);
        for (i, id) in self.directory.iter().enumerate() {
            let mut entry = list.reborrow().get(i as u32);
            entry.set_id(id);
            entry.set_key("ed25519:00");
            entry.set_health(Health::Up);
        }
        Ok(())
    }

    async fn partial(
        self: Rc<Self>,
        params: orchestrator::PartialParams,
        mut results: orchestrator::PartialResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let query = read_query(params.get_query()?).unwrap();
        let chain = psp_core::Chain::from_reader(params.get_request()?.get_chain()?).unwrap();
        self.chains.lock().unwrap().push(chain);
        let labels: Vec<String> = params
            .get_labels()?
            .iter()
            .map(|t| t.unwrap().to_string().unwrap())
            .collect();
        let script = self.script.lock().unwrap().clone();
        script(&query, &labels, results.get().init_answer());
        Ok(())
    }
}
