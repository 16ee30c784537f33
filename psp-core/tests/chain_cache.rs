//! The verified-chain cache remembers only that bytes form a valid chain: holder, window,
//! revocation, root trust and archive are still checked on every call.

mod support;

use std::sync::Arc;

use psp_core::capability::{ChainCache, LinkBytes, Presenter};
use psp_core::{Access, Action, ArchiveDigest, RowRequest, Verifier};
use support::{NOW, keys, raw_chain};

const QUERY: Access<'static> = Access {
    action: Action::Query,
    collection: Some("ledger"),
    fields: &["amount"],
    rows: RowRequest::Unrestricted,
};

fn bytes(links: &[psp_core::capability::SignedLink]) -> Vec<LinkBytes<'_>> {
    links
        .iter()
        .map(|l| LinkBytes {
            body: &l.body,
            signature: &l.signature,
        })
        .collect()
}

#[test]
fn a_warm_cache_still_refuses_a_replay_from_another_key() {
    let k = keys();
    let links = raw_chain(&k, |_, _| {});
    let archive = ArchiveDigest::of("tower-a");
    let verifier = Verifier::new([k.owner.public()]);
    let holder = k.orchestrator.public();
    let thief = k.stranger.public();

    verifier
        .verify(
            &bytes(&links),
            &Presenter {
                peer: &holder,
                archive: &archive,
            },
            &QUERY,
            NOW,
        )
        .unwrap();
    assert_eq!(
        verifier.cache().len(),
        1,
        "the first check must fill the cache"
    );

    let refused = verifier
        .verify(
            &bytes(&links),
            &Presenter {
                peer: &thief,
                archive: &archive,
            },
            &QUERY,
            NOW,
        )
        .unwrap_err();
    assert_eq!(refused.rule(), "wrong-holder");
    let elsewhere = ArchiveDigest::of("tower-z");
    let refused = verifier
        .verify(
            &bytes(&links),
            &Presenter {
                peer: &holder,
                archive: &elsewhere,
            },
            &QUERY,
            NOW,
        )
        .unwrap_err();
    assert_eq!(refused.rule(), "archive-not-in-scope");
}

#[test]
fn revoking_or_distrusting_after_caching_takes_effect_at_once() {
    let k = keys();
    let links = raw_chain(&k, |_, _| {});
    let archive = ArchiveDigest::of("tower-b");
    let holder = k.orchestrator.public();
    let presenter = Presenter {
        peer: &holder,
        archive: &archive,
    };
    let cache = Arc::new(ChainCache::default());
    let verifier = Verifier::new([k.owner.public()]).with_cache(cache.clone());
    let chain = verifier
        .verify(&bytes(&links), &presenter, &QUERY, NOW)
        .unwrap();
    assert_eq!(cache.len(), 1);

    // A reload that revokes the console's delegation, sharing the warm cache.
    let leaf_id = chain.last().id;
    let reloaded = Verifier::new([k.owner.public()])
        .with_revoked([leaf_id])
        .with_cache(cache.clone());
    let refused = reloaded
        .verify(&bytes(&links), &presenter, &QUERY, NOW)
        .unwrap_err();
    assert_eq!(refused.rule(), "revoked");

    // A reload that no longer trusts the owner.
    let distrusting = Verifier::new([k.stranger.public()]).with_cache(cache.clone());
    let refused = distrusting
        .verify(&bytes(&links), &presenter, &QUERY, NOW)
        .unwrap_err();
    assert_eq!(refused.rule(), "untrusted-root");
    assert_eq!(
        cache.len(),
        1,
        "the cached entry was used, not re-verified away"
    );
}

#[test]
fn a_cached_chain_expires_and_leaves_the_cache() {
    let k = keys();
    let links = raw_chain(&k, |_, _| {});
    let archive = ArchiveDigest::of("tower-a");
    let holder = k.orchestrator.public();
    let presenter = Presenter {
        peer: &holder,
        archive: &archive,
    };
    let verifier = Verifier::new([k.owner.public()]);
    verifier
        .verify(&bytes(&links), &presenter, &QUERY, NOW)
        .unwrap();
    let later = NOW + 3_600;
    let refused = verifier
        .verify(&bytes(&links), &presenter, &QUERY, later)
        .unwrap_err();
    assert_eq!(refused.rule(), "expired");
    assert!(verifier.cache().is_empty(), "an expired chain is not kept");
}

#[test]
fn a_body_swapped_under_cached_signatures_is_not_a_cache_hit() {
    let k = keys();
    let links = raw_chain(&k, |_, _| {});
    let archive = ArchiveDigest::of("tower-a");
    let holder = k.orchestrator.public();
    let presenter = Presenter {
        peer: &holder,
        archive: &archive,
    };
    let verifier = Verifier::new([k.owner.public()]);
    verifier
        .verify(&bytes(&links), &presenter, &QUERY, NOW)
        .unwrap();

    // Same signatures (the cache key), a widened leaf body: must be verified, and fail.
    let widened = raw_chain(&k, |i, b| {
        if i == 1 {
            b.scope
                .operations
                .push(psp_core::Operation::command("seal"));
        }
    });
    let mut forged = links.clone();
    forged[1].body = widened[1].body.clone();
    let seal = psp_core::CommandDigest::of("seal", "", b"k", b"");
    let access = Access {
        action: Action::Command {
            name: "seal",
            digest: &seal,
        },
        collection: None,
        fields: &[],
        rows: RowRequest::Unrestricted,
    };
    let refused = verifier
        .verify(&bytes(&forged), &presenter, &access, NOW)
        .unwrap_err();
    assert_eq!(refused.rule(), "bad-signature");
}

#[test]
fn the_cache_stays_within_its_capacity() {
    let k = keys();
    let cache = Arc::new(ChainCache::new(3));
    let verifier = Verifier::new([k.owner.public()]).with_cache(cache.clone());
    let archive = ArchiveDigest::of("tower-a");
    let holder = k.orchestrator.public();
    let presenter = Presenter {
        peer: &holder,
        archive: &archive,
    };
    for _ in 0..10 {
        let links = raw_chain(&k, |_, _| {});
        verifier
            .verify(&bytes(&links), &presenter, &QUERY, NOW)
            .unwrap();
        assert!(cache.len() <= 3);
    }
    assert_eq!(cache.len(), 3);
}
