//! The chain fixture shared by the `verify` benchmark and the `verify_cost` instruction counter:
//! a realistic scope and chains of 1 to 4 links over a 12-archive set.

#![allow(dead_code, unreachable_pub)]

use psp_core::{
    Access, Action, ArchiveSet, Chain, CollectionGrant, Collections, FieldSet, Grant, IdentityKey,
    KeyRange, KeySelector, Operation, RowRequest, RowSelector, Scope, Window,
};

pub const NOW: i64 = 1_800_000_000;

/// A realistic scope: three collections, one with a field list and a row selector.
pub fn scope() -> Scope {
    let mut grants = std::collections::BTreeMap::new();
    grants.insert(
        "leases".to_owned(),
        CollectionGrant {
            fields: FieldSet::of([
                "lease_id",
                "property",
                "rent",
                "start",
                "end",
                "tenant_class",
            ]),
            rows: RowSelector::Keys(KeySelector::new(
                "property",
                [],
                [KeyRange::new("P000", "P500").unwrap()],
            )),
        },
    );
    grants.insert("occupancy".to_owned(), CollectionGrant::everything());
    grants.insert("valuations".to_owned(), CollectionGrant::everything());
    Scope {
        collections: Collections::Only(grants),
        operations: vec![Operation::Describe, Operation::Query],
    }
}

/// A chain of `depth` links: a trusted owner, intermediaries, and the orchestrator as last holder,
/// over a 12-archive set.
pub fn chain(depth: usize) -> (Chain, IdentityKey, IdentityKey) {
    let owner = IdentityKey::from_seed([1; 32]);
    let keys: Vec<IdentityKey> = (0..depth)
        .map(|i| IdentityKey::from_seed([10 + i as u8; 32]))
        .collect();
    let archives = ArchiveSet::of_ids(
        (0..12)
            .map(|i| format!("archive-{i:02}"))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str),
    );
    let window = |i: usize| Window::lasting(NOW - 60, if i + 1 == depth { 600 } else { 86_400 });
    let mut chain = Chain::mint(
        &owner,
        Grant {
            holder: keys[0].public(),
            archives: archives.clone(),
            scope: scope(),
            window: window(0),
        },
    )
    .unwrap();
    for i in 1..depth {
        chain = chain
            .delegate(
                &keys[i - 1],
                Grant {
                    holder: keys[i].public(),
                    archives: archives.clone(),
                    scope: scope(),
                    window: window(i),
                },
            )
            .unwrap();
    }
    let holder = keys[depth - 1].clone();
    (chain, owner, holder)
}

/// The request every measurement authorizes: a query over three granted `leases` fields.
pub const ACCESS: Access<'static> = Access {
    action: Action::Query,
    collection: Some("leases"),
    fields: &["property", "rent", "start"],
    rows: RowRequest::Unrestricted,
};

/// The archive every measurement presents to (one of the twelve in the set).
pub const ARCHIVE: &str = "archive-03";
