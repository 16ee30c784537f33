//! Chain verification cost, next to a bare Ed25519 verification measured in the same run.
//!
//! Run: `cargo bench -p psp-core --bench verify`
//!
//! * `bare/ed25519`: decode a 32-byte public key and strictly verify one signature over a message
//!   the size of a real link body: the unavoidable cost of one link.
//! * `parse/body`: parsing one such body (a diagnostic: the main per-link cost besides the signature).
//! * `uncached/depth-N`: a full check of an N-link chain (sizes, N signatures, delegation links,
//!   narrowing, context, scope) with the cache turned off. Goal: within 10% of N x `bare/ed25519`.
//! * `cached/depth-N`: the same check once the chain is cached: only the per-call context and
//!   scope checks run. Goal: at least 1,000,000 checks/s on one core (under 1 µs each).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use psp_core::capability::{ChainCache, LinkBytes, Presenter};
use psp_core::{ArchiveDigest, Verifier};
use support::{ACCESS, ARCHIVE, NOW, chain};

mod support;

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

    // What one link costs beyond its signature: parsing its body under reader limits.
    group.bench_function("parse/body", |b| {
        b.iter(|| psp_core::capability::CapabilityBody::parse(black_box(body)).unwrap())
    });

    let archive = ArchiveDigest::of(ARCHIVE);
    let access = ACCESS;
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
