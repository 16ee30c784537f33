//! Serving PSP from your own store: implement `Archive` (four methods), hand it to the Totebox
//! server, and every capability check, exposure rule and diode guarantee comes with it.
//!
//! Run: `cargo run --example embed_totebox`
//!
//! The store is an equipment register in memory, served on 127.0.0.1; the example then plays the
//! orchestrator: it gets a capability from the owner and asks for equipment value per site.

use std::sync::Arc;

use psp_core::archive::{Archive, CollectionStats, CommandError, CommandOutcome, CommandRequest};
use psp_core::query::{Accumulator, Aggregate, AggregateFunction::Sum, CollectionSchema, Decimal};
use psp_core::query::{Exposure, Plan, Query, QueryError, Value, ValueType};
use psp_core::{ArchiveSet, Chain, Grant, IdentityKey, Operation, Scope, Verifier, Window};
use psp_rpc::totebox_server::ToteboxService;
use psp_rpc::{client::ToteboxClient, limits::Limits, runtime, tls};

/// Your store: here a list of (asset tag, site, purchase price in cents).
struct EquipmentRegister {
    assets: Vec<(&'static str, &'static str, i64)>,
}

impl Archive for EquipmentRegister {
    fn id(&self) -> &str {
        "equipment-register"
    }

    /// What you expose, and how: prices only as totals over 2 or more assets.
    fn collections(&self) -> Vec<CollectionSchema> {
        vec![
            CollectionSchema::new("assets", "tag", 2)
                .field("tag", ValueType::Text, Exposure::Value)
                .field("site", ValueType::Text, Exposure::Value)
                .field("price", ValueType::Decimal, Exposure::AggregateOnly),
        ]
    }

    fn stats(&self, _collection: &str) -> Option<CollectionStats> {
        Some(CollectionStats { records: self.assets.len() as u64, as_of: 0 })
    }

    /// Offer your records; the query engine filters, aggregates and applies the policy.
    fn scan(&self, _plan: &Plan, accumulator: &mut Accumulator<'_>) -> Result<i64, QueryError> {
        for (tag, site, cents) in &self.assets {
            let price = Value::Decimal(Decimal::new(*cents, 2).expect("scale 2"));
            accumulator.push(&[Value::from(*tag), Value::from(*site), price][..])?;
        }
        Ok(0)
    }

    fn apply(&self, command: &CommandRequest<'_>) -> Result<CommandOutcome, CommandError> {
        Err(CommandError::UnknownCommand(command.name.to_owned()))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let [owner, totebox, orchestrator] =
        [(); 3].map(|_| IdentityKey::generate().expect("randomness"));
    let limits = Limits::default();
    let assets =
        vec![("A-1", "north", 120_000), ("A-2", "north", 80_050), ("A-3", "south", 45_000)];
    let register = EquipmentRegister { assets };

    // Serve it: trust the owner's capabilities, accept only the orchestrator's machine key.
    let service = ToteboxService::new(Arc::new(register), Verifier::new([owner.public()]), limits);
    let tls = tls::server_config(&totebox, tls::PairedKeys::new([orchestrator.public()]))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = runtime::serve(listener, tls, service.bootstrap_factory(), limits)?;
    println!("serving PSP on {} as {}", server.local_addr(), totebox.public());

    // The owner grants the orchestrator five minutes of queries on this archive.
    let grant = Grant {
        holder: orchestrator.public(),
        archives: ArchiveSet::of_ids(["equipment-register"]),
        scope: Scope::everything(vec![Operation::Query]),
        window: Window::lasting(psp_core::window::now(), 300),
    };
    let chain = Chain::mint(&owner, grant)?;

    // The orchestrator asks for the value of equipment per site: open + query, one round trip.
    let query =
        Query::aggregate("assets", ["site"], [Aggregate::count(), Aggregate::of(Sum, "price")]);
    let address = server.local_addr();
    let table = tokio::task::LocalSet::new()
        .run_until(async {
            let client =
                ToteboxClient::connect(address, &orchestrator, totebox.public(), limits).await?;
            let result = client.query(&chain, &query).await?;
            println!("{} site(s) withheld: fewer than 2 assets", result.suppressed_groups);
            Ok::<_, Box<dyn std::error::Error>>(result.finalize(&query)?)
        })
        .await?;
    for row in &table.rows {
        println!("{:<6} {:>2} assets  {:>10}", row[0], row[1], row[2]);
    }
    server.shutdown(std::time::Duration::from_secs(1)).await;
    Ok(())
}
