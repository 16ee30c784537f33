//! A Totebox over a small in-memory archive whose every query takes a set time: enough to hold
//! calls in flight on its connection, as a large archive or a busy disk would.

use std::sync::Arc;
use std::time::Duration;

use psp_core::archive::{Archive, CollectionStats, CommandError, CommandOutcome, CommandRequest};
use psp_core::query::{
    Accumulator, CollectionSchema, Exposure, Plan, QueryError, Value, ValueType,
};
use psp_core::{IdentityKey, PublicKey, Verifier};
use psp_rpc::limits::Limits;
use psp_rpc::runtime::ServerHandle;
use psp_rpc::tls::{self, PairedKeys};
use psp_rpc::totebox_server::ToteboxService;

/// `units` (unit, rent): 40 records, each query taking `delay`.
pub struct SlowArchive {
    id: String,
    delay: Duration,
}

impl Archive for SlowArchive {
    fn id(&self) -> &str {
        &self.id
    }

    fn collections(&self) -> Vec<CollectionSchema> {
        vec![
            CollectionSchema::new("units", "unit", 1)
                .field("unit", ValueType::Int, Exposure::Value)
                .field("rent", ValueType::Int, Exposure::Value),
        ]
    }

    fn stats(&self, _: &str) -> Option<CollectionStats> {
        Some(CollectionStats {
            records: 40,
            as_of: 1,
        })
    }

    fn scan(&self, _: &Plan, accumulator: &mut Accumulator<'_>) -> Result<i64, QueryError> {
        std::thread::sleep(self.delay);
        for unit in 0..40 {
            accumulator.push(&[Value::Int(unit), Value::Int(1_000 + unit)][..])?;
        }
        Ok(1)
    }

    fn apply(&self, command: &CommandRequest<'_>) -> Result<CommandOutcome, CommandError> {
        Err(CommandError::UnknownCommand(command.name.to_owned()))
    }
}

/// A real Totebox (the psp-rpc server, its default limits) serving a [`SlowArchive`].
pub struct SlowTotebox {
    /// The archive id.
    pub id: String,
    /// Its machine key.
    pub key: PublicKey,
    /// The server.
    pub handle: ServerHandle,
}

impl SlowTotebox {
    /// Serves `id` to `orchestrator`, trusting `owner`, each query taking `delay`.
    pub async fn start(
        id: &str,
        delay: Duration,
        orchestrator: PublicKey,
        owner: PublicKey,
    ) -> SlowTotebox {
        let identity = IdentityKey::generate().unwrap();
        let archive = Arc::new(SlowArchive {
            id: id.to_owned(),
            delay,
        });
        let service = ToteboxService::new(archive, Verifier::new([owner]), Limits::default());
        let tls = tls::server_config(&identity, PairedKeys::new([orchestrator])).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handle = psp_rpc::runtime::serve(
            listener,
            tls,
            service.bootstrap_factory(),
            Limits::default(),
        )
        .unwrap();
        SlowTotebox {
            id: id.to_owned(),
            key: identity.public(),
            handle,
        }
    }

    /// A `[[fleet]]` entry for it.
    pub fn fleet_toml(&self) -> String {
        format!(
            "[[fleet]]\nid = \"{}\"\naddress = \"{}\"\nkey = \"{}\"\nlabels = {{ entity = \"property\" }}\n",
            self.id,
            self.handle.local_addr(),
            self.key
        )
    }
}
