//! A fleet in a test: an in-memory archive (a real `Archive`, as an integrator would write one),
//! Totebox servers on 127.0.0.1:0 with real TLS, and capability chains for them.

#![allow(dead_code, unreachable_pub)]

pub mod scrape;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use psp_core::archive::{
    Archive, CollectionStats, CommandError, CommandOutcome, CommandRequest, CommandStatus,
};
use psp_core::query::{
    Accumulator, CollectionSchema, Exposure, Plan, QueryError, Value, ValueType,
};
use psp_core::{ArchiveSet, Chain, Grant, IdentityKey, Operation, Scope, Verifier, Window};
use psp_rpc::limits::Limits;
use psp_rpc::runtime::{self, ServerHandle};
use psp_rpc::tls::{self, PairedKeys};
use psp_rpc::totebox_server::ToteboxService;

/// `units(unit text, floor int, rent decimal aggregate-only)`, 12 units over 3 floors.
pub struct MemoryArchive {
    pub id: String,
    pub records: Vec<Vec<Value>>,
    /// How long every scan takes (for tests of slow archives).
    pub scan_delay: Duration,
    applied: Mutex<HashMap<Vec<u8>, String>>,
}

impl MemoryArchive {
    pub fn new(id: &str) -> Self {
        let records = (0..12)
            .map(|i| {
                vec![
                    Value::from(format!("U{i:02}").as_str()),
                    Value::Int(i / 4),
                    Value::Decimal(psp_core::query::Decimal::new(100_000 + i * 1_000, 2).unwrap()),
                ]
            })
            .collect();
        Self {
            id: id.into(),
            records,
            scan_delay: Duration::ZERO,
            applied: Mutex::new(HashMap::new()),
        }
    }
}

impl Archive for MemoryArchive {
    fn id(&self) -> &str {
        &self.id
    }

    fn collections(&self) -> Vec<CollectionSchema> {
        vec![
            CollectionSchema::new("units", "unit", 2)
                .field("unit", ValueType::Text, Exposure::Value)
                .field("floor", ValueType::Int, Exposure::Value)
                .field("rent", ValueType::Decimal, Exposure::AggregateOnly),
        ]
    }

    fn stats(&self, _: &str) -> Option<CollectionStats> {
        Some(CollectionStats {
            records: self.records.len() as u64,
            as_of: 1_700_000_000_000_000,
        })
    }

    fn scan(&self, _: &Plan, accumulator: &mut Accumulator<'_>) -> Result<i64, QueryError> {
        std::thread::sleep(self.scan_delay);
        for r in &self.records {
            accumulator.push(r)?;
        }
        Ok(1_700_000_000_000_000)
    }

    fn apply(&self, command: &CommandRequest<'_>) -> Result<CommandOutcome, CommandError> {
        if command.name != "ping" {
            return Err(CommandError::UnknownCommand(command.name.into()));
        }
        let mut applied = self.applied.lock().unwrap();
        let status = if applied
            .insert(command.idempotency_key.to_vec(), "pong".into())
            .is_some()
        {
            CommandStatus::Replayed
        } else {
            CommandStatus::Applied
        };
        Ok(CommandOutcome {
            status,
            message: "pong".into(),
            detail: Vec::new(),
            as_of: 0,
        })
    }
}

/// The machines of a small fleet.
pub struct Machines {
    pub owner: IdentityKey,
    pub totebox: IdentityKey,
    pub orchestrator: IdentityKey,
    pub second_orchestrator: IdentityKey,
    pub stranger: IdentityKey,
}

pub fn machines() -> Machines {
    Machines {
        owner: IdentityKey::from_seed([1; 32]),
        totebox: IdentityKey::from_seed([2; 32]),
        orchestrator: IdentityKey::from_seed([3; 32]),
        second_orchestrator: IdentityKey::from_seed([4; 32]),
        stranger: IdentityKey::from_seed([5; 32]),
    }
}

/// Starts a Totebox serving `archive`, paired with both orchestrators, trusting the owner.
pub async fn start(
    m: &Machines,
    archive: MemoryArchive,
    verifier: Verifier,
    limits: Limits,
) -> (ServerHandle, Arc<ToteboxService>) {
    let service = ToteboxService::new(Arc::new(archive), verifier, limits);
    let paired = PairedKeys::new([m.orchestrator.public(), m.second_orchestrator.public()]);
    let config = tls::server_config(&m.totebox, paired).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = runtime::serve(listener, config, service.bootstrap_factory(), limits).unwrap();
    (handle, service)
}

/// The orchestrator's client of the Totebox at `address` (call on a `LocalSet`).
pub async fn connect(
    m: &Machines,
    address: std::net::SocketAddr,
    limits: Limits,
) -> psp_rpc::client::ToteboxClient {
    psp_rpc::client::ToteboxClient::connect(address, &m.orchestrator, m.totebox.public(), limits)
        .await
        .unwrap()
}

/// A chain from the owner to `holder` for archive `archive`, querying `units`, valid `seconds`.
pub fn chain(m: &Machines, holder: &IdentityKey, archive: &str, seconds: u32) -> Chain {
    let now = psp_core::window::now();
    Chain::mint(
        &m.owner,
        Grant {
            holder: holder.public(),
            archives: ArchiveSet::of_ids([archive]),
            scope: Scope::everything(vec![
                Operation::Describe,
                Operation::Query,
                Operation::command("ping"),
            ]),
            window: Window::lasting(now - 5, seconds + 5),
        },
    )
    .unwrap()
}
