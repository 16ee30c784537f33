//! Chain verification cost, next to a bare Ed25519 verification measured in the same run.
//!
//! Run: `cargo bench -p psp-core --bench verify`
//!
//! * `bare/ed25519`: decode a 32-byte public key and strictly verify one signature over a message
//!   the size of a real link body: the unavoidable cost of one link.
//! * `uncached/depth-N`: a full check of an N-link chain (sizes, N signatures, delegation links,
//!   narrowing, context, scope) with the cache turned off. Goal: within 10% of N x `bare/ed25519`.
//! * `cached/depth-N`: the same check once the chain is cached: only the per-call context and
//!   scope checks run. Goal: at least 1,000,000 checks/s on one core (under 1 µs each).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use psp_core::capability::{ChainCache, LinkBytes, Presenter};
use psp_core::{
    Access, Action, ArchiveDigest, ArchiveSet, Chain, CollectionGrant, Collections, FieldSet,
    Grant, IdentityKey, KeyRange, KeySelector, Operation, RowRequest, RowSelector, Scope, Verifier,
    Window,
};

const NOW: i64 = 1_800_000_000;

/// A realistic scope: three collections, one with a field list and a row selector.
fn scope() -> Scope {
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
fn chain(depth: usize) -> (Chain, IdentityKey, IdentityKey) {
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

fn verification(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify");

    // The baseline: one strict Ed25519 verification, key decoding included, over a body-sized
    // message with the PSP domain prefix.
    let (sample, _, _) = chain(1);
    let body = &sample.links()[0].body;
    let signer = SigningKey::from_bytes(&[7; 32]);
    let mut message = psp_core::capability::SIGNING_DOMAIN.to_vec();
    message.extend_from_slice(body);
    let signature = signer.sign(&message);
    let key_bytes = signer.verifying_key().to_bytes();
    group.bench_function("bare/ed25519", |b| {
        b.iter(|| {
            let key = VerifyingKey::from_bytes(black_box(&key_bytes)).unwrap();
            key.verify_strict(black_box(&message), &signature).unwrap();
        })
    });

    let archive = ArchiveDigest::of("archive-03");
    let access = Access {
        action: Action::Query,
        collection: Some("leases"),
        fields: &["property", "rent", "start"],
        rows: RowRequest::Unrestricted,
    };
    for depth in 1..=4 {
        let (chain, owner, holder) = chain(depth);
        let links: Vec<LinkBytes<'_>> = chain.link_bytes();
        let peer = holder.public();
        let presenter = Presenter {
            peer: &peer,
            archive: &archive,
        };

        let uncached = Verifier::new([owner.public()]).with_cache(Arc::new(ChainCache::new(0)));
        group.bench_with_input(BenchmarkId::new("uncached", depth), &depth, |b, _| {
            b.iter(|| {
                uncached
                    .verify(black_box(&links), &presenter, &access, NOW)
                    .unwrap()
            })
        });

        let cached = Verifier::new([owner.public()]);
        cached.verify(&links, &presenter, &access, NOW).unwrap();
        group.bench_with_input(BenchmarkId::new("cached", depth), &depth, |b, _| {
            b.iter(|| {
                cached
                    .verify(black_box(&links), &presenter, &access, NOW)
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, verification);
criterion_main!(benches);
