//! Shared fixture for psp-core's integration tests: the keys of a small fleet, a standard scope and
//! a raw link builder that can express chains the safe API refuses to build.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use psp_core::capability::{CapabilityBody, CapabilityId, SignedLink};
use psp_core::{
    ArchiveSet, CollectionGrant, Collections, FieldSet, IdentityKey, KeyRange, KeySelector,
    Operation, PublicKey, RowSelector, Scope, Window,
};

/// The verifier's clock in every test.
pub const NOW: i64 = 1_800_000_000;

/// Keys of the machines in the tests.
pub struct Keys {
    /// Fleet owner: the root the Totebox trusts.
    pub owner: IdentityKey,
    /// The operator's console.
    pub console: IdentityKey,
    /// The orchestrator: final holder and presenting peer.
    pub orchestrator: IdentityKey,
    /// Someone else entirely.
    pub stranger: IdentityKey,
}

pub fn keys() -> Keys {
    Keys {
        owner: IdentityKey::from_seed([1; 32]),
        console: IdentityKey::from_seed([2; 32]),
        orchestrator: IdentityKey::from_seed([3; 32]),
        stranger: IdentityKey::from_seed([4; 32]),
    }
}

/// `leases` limited to some fields and properties P100..P200 plus P900, `ledger` whole;
/// describe, query and the `append` command.
pub fn scope() -> Scope {
    let mut grants = BTreeMap::new();
    grants.insert(
        "leases".to_owned(),
        CollectionGrant {
            fields: FieldSet::of(["lease_id", "property", "rent", "start"]),
            rows: RowSelector::Keys(KeySelector::new(
                "property",
                ["P900".into()],
                [KeyRange::new("P100", "P200").unwrap()],
            )),
        },
    );
    grants.insert("ledger".to_owned(), CollectionGrant::everything());
    Scope {
        collections: Collections::Only(grants),
        operations: vec![
            Operation::Describe,
            Operation::Query,
            Operation::command("append"),
        ],
    }
}

pub fn archives() -> ArchiveSet {
    ArchiveSet::of_ids(["tower-a", "tower-b", "tower-c"])
}

/// A raw link body with a fresh id; tests change fields before signing.
pub fn body(issuer: PublicKey, holder: PublicKey, window: Window) -> CapabilityBody {
    CapabilityBody {
        id: CapabilityId::random().unwrap(),
        issuer,
        holder,
        parent: None,
        archives: archives().into(),
        scope: scope(),
        window,
    }
}

/// The standard two-link chain, built raw: owner -> console (a day), console -> orchestrator
/// (ten minutes). `edit` may change each body (index 0 or 1) before it is signed.
pub fn raw_chain(k: &Keys, mut edit: impl FnMut(usize, &mut CapabilityBody)) -> Vec<SignedLink> {
    let mut root = body(
        k.owner.public(),
        k.console.public(),
        Window::lasting(NOW - 3_600, 86_400),
    );
    edit(0, &mut root);
    let root = SignedLink::sign(&k.owner, &root);
    let mut leaf = body(
        k.console.public(),
        k.orchestrator.public(),
        Window::lasting(NOW - 60, 600),
    );
    leaf.parent = Some(root.signature);
    edit(1, &mut leaf);
    let leaf = SignedLink::sign(&k.console, &leaf);
    vec![root, leaf]
}
