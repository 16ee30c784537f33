//! What a Totebox tells a capability limited to some rows about the rest (nothing: its counts
//! cover its rows only), and the codes it sends for a malformed command, as the docs name them.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use psp_core::query::{Aggregate, Query};
use psp_core::{
    ArchiveSet, Chain, CollectionGrant, Collections, FieldSet, Grant, KeySelector, Operation,
    RowSelector, Scope, Verifier, Window,
};
use psp_rpc::client::CommandSpec;
use psp_rpc::limits::Limits;
use support::{MemoryArchive, machines, start};
use tokio::task::LocalSet;

#[tokio::test]
async fn a_row_restricted_capability_sees_counts_of_its_rows_only() {
    let m = machines();
    let (server, _) = start(
        &m,
        MemoryArchive::new("tower-a"),
        Verifier::new([m.owner.public()]),
        Limits::default(),
    )
    .await;
    // Three of the twelve units.
    let mut grants = BTreeMap::new();
    grants.insert(
        "units".to_owned(),
        CollectionGrant {
            fields: FieldSet::All,
            rows: RowSelector::Keys(KeySelector::new(
                "unit",
                ["U00".into(), "U01".into(), "U02".into()],
                [],
            )),
        },
    );
    let now = psp_core::window::now();
    let chain = Chain::mint(
        &m.owner,
        Grant {
            holder: m.orchestrator.public(),
            archives: ArchiveSet::of_ids(["tower-a"]),
            scope: Scope {
                collections: Collections::Only(grants),
                operations: vec![
                    Operation::Describe,
                    Operation::Query,
                    Operation::command("append"),
                ],
            },
            window: Window::lasting(now - 5, 60),
        },
    )
    .unwrap();
    LocalSet::new()
        .run_until(async {
            let client = support::connect(&m, server.local_addr(), Limits::default()).await;
            let count = Query::aggregate("units", [], [Aggregate::count()]);
            let result = client.query(&chain, &count).await.unwrap();
            assert_eq!(result.scanned_records, 3, "records examined: its rows only");
            let session = client.open(&chain).await.unwrap();
            let described = session.describe().await.unwrap();
            assert_eq!(described[0].records, 3, "records described: its rows only");

            // An append whose arguments are not AppendArguments: the command's fault, by name.
            let garbage = CommandSpec {
                name: "append".into(),
                collection: "units".into(),
                idempotency_key: b"append-garbage-0001".to_vec(),
                arguments: vec![0xff; 24],
            };
            let error = client.command(&chain, &garbage).await.unwrap_err();
            assert_eq!(error.code, "command.invalid-arguments", "{error}");
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}
