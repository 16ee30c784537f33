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

/// The standard chain, presented by its holder (the orchestrator) to tower-a.
struct Scene {
    links: Vec<psp_core::capability::SignedLink>,
    holder: psp_core::PublicKey,
    archive: ArchiveDigest,
    keys: support::Keys,
}

impl Scene {
    fn new() -> Self {
        let keys = keys();
        Self {
            links: raw_chain(&keys, |_, _| {}),
            holder: keys.orchestrator.public(),
            archive: ArchiveDigest::of("tower-a"),
            keys,
        }
    }

    fn presenter(&self) -> Presenter<'_> {
        Presenter {
            peer: &self.holder,
            archive: &self.archive,
        }
    }

    /// Presents the chain with `verifier` at `now`; returns the failed rule, if any.
    fn check(&self, verifier: &Verifier, now: i64) -> Result<(), &'static str> {
        verifier
            .verify(&bytes(&self.links), &self.presenter(), &QUERY, now)
            .map(drop)
            .map_err(|e| e.rule())
    }
}

fn bytes(links: &[psp_core::capability::SignedLink]) -> Vec<LinkBytes<'_>> {
    links
        .iter()
        .map(|l| LinkBytes::new(&l.body, &l.signature))
        .collect()
}

#[test]
fn a_warm_cache_still_refuses_a_replay_from_another_key() {
    let scene = Scene::new();
    let verifier = Verifier::new([scene.keys.owner.public()]);
    scene.check(&verifier, NOW).unwrap();
    assert_eq!(
        verifier.cache().len(),
        2,
        "the first check must fill the cache: the chain, and the grant it extends"
    );

    let thief = scene.keys.stranger.public();
    let stolen = Presenter {
        peer: &thief,
        archive: &scene.archive,
    };
    let refused = verifier
        .verify(&bytes(&scene.links), &stolen, &QUERY, NOW)
        .unwrap_err();
    assert_eq!(refused.rule(), "wrong-holder");

    let elsewhere = ArchiveDigest::of("tower-z");
    let misplaced = Presenter {
        peer: &scene.holder,
        archive: &elsewhere,
    };
    let refused = verifier
        .verify(&bytes(&scene.links), &misplaced, &QUERY, NOW)
        .unwrap_err();
    assert_eq!(refused.rule(), "archive-not-in-scope");
}

#[test]
fn revoking_or_distrusting_after_caching_takes_effect_at_once() {
    let scene = Scene::new();
    let owner = scene.keys.owner.public();
    let cache = Arc::new(ChainCache::default());
    let verifier = Verifier::new([owner]).with_cache(cache.clone());
    let chain = verifier
        .verify(&bytes(&scene.links), &scene.presenter(), &QUERY, NOW)
        .unwrap();
    assert_eq!(cache.len(), 2);

    // Reloads sharing the warm cache: one revokes the console's delegation, one stops trusting
    // the owner.
    let revoking = Verifier::new([owner])
        .with_revoked([chain.last().id])
        .with_cache(cache.clone());
    assert_eq!(scene.check(&revoking, NOW), Err("revoked"));
    let distrusting = Verifier::new([scene.keys.stranger.public()]).with_cache(cache.clone());
    assert_eq!(scene.check(&distrusting, NOW), Err("untrusted-root"));
    assert_eq!(
        cache.len(),
        2,
        "the cached entries were consulted, not replaced"
    );
}

#[test]
fn a_cached_chain_expires_and_leaves_the_cache() {
    let scene = Scene::new();
    let verifier = Verifier::new([scene.keys.owner.public()]);
    scene.check(&verifier, NOW).unwrap();
    assert_eq!(scene.check(&verifier, NOW + 3_600), Err("expired"));
    // The ten-minute request link is gone; the day-long grant it extended stays.
    assert_eq!(verifier.cache().len(), 1, "an expired chain is not kept");
}

#[test]
fn a_body_swapped_under_cached_signatures_is_not_a_cache_hit() {
    let mut scene = Scene::new();
    let verifier = Verifier::new([scene.keys.owner.public()]);
    scene.check(&verifier, NOW).unwrap();

    // Same signatures (the cache key) under a widened leaf body: verified again, and refused.
    let widened = raw_chain(&scene.keys, |i, b| {
        if i == 1 {
            b.scope.collections = psp_core::Collections::All;
        }
    });
    scene.links[1].body = widened[1].body.clone();
    assert_eq!(scene.check(&verifier, NOW), Err("bad-signature"));
}

#[test]
fn the_cache_stays_within_its_capacity() {
    let cache = Arc::new(ChainCache::new(3));
    for _ in 0..10 {
        let scene = Scene::new();
        let verifier = Verifier::new([scene.keys.owner.public()]).with_cache(cache.clone());
        scene.check(&verifier, NOW).unwrap();
        assert!(cache.len() <= 3);
    }
    assert_eq!(cache.len(), 3);
}

#[test]
fn a_cached_grant_vouches_for_nothing_that_extends_it() {
    // The grant (the root link) is verified once and cached; every later chain that extends it
    // has its own links checked in full: a bad signature, a widened scope, another parent.
    let scene = Scene::new();
    let verifier = Verifier::new([scene.keys.owner.public()]);
    scene.check(&verifier, NOW).unwrap();
    let fresh = |edit: &dyn Fn(&mut psp_core::capability::CapabilityBody)| {
        let mut links = raw_chain(&scene.keys, |i, b| {
            if i == 1 {
                edit(b)
            }
        });
        links[0] = scene.links[0].clone(); // the cached grant, byte for byte
        let mut leaf = psp_core::capability::CapabilityBody::parse(&links[1].body).unwrap();
        leaf.parent = Some(links[0].signature);
        links[1] = psp_core::capability::SignedLink::sign(&scene.keys.console, &leaf);
        links
    };
    let present = |links: &[psp_core::capability::SignedLink]| {
        verifier
            .verify(&bytes(links), &scene.presenter(), &QUERY, NOW)
            .map(drop)
            .map_err(|e| e.rule())
    };
    // A new, honest request link on the cached grant: accepted.
    assert_eq!(present(&fresh(&|_| {})), Ok(()));
    // The grant revoked (or its root no longer trusted) after it was cached: a fresh request
    // link on it is refused at once, by the per-call checks.
    let root_id = psp_core::capability::CapabilityBody::parse(&scene.links[0].body)
        .unwrap()
        .id;
    let revoking = Verifier::new([scene.keys.owner.public()])
        .with_revoked([root_id])
        .with_cache(verifier.cache().clone());
    let refused = revoking
        .verify(&bytes(&fresh(&|_| {})), &scene.presenter(), &QUERY, NOW)
        .unwrap_err();
    assert_eq!(refused.rule(), "revoked");
    // Narrower in scope but outliving the grant.
    let outliving = fresh(&|b| b.window = psp_core::Window::lasting(NOW - 60, 200_000));
    assert_eq!(present(&outliving), Err("widened-window"));
    // Its signature broken.
    let mut forged = fresh(&|_| {});
    forged[1].signature[0] ^= 1;
    assert_eq!(present(&forged), Err("bad-signature"));
    // Wider than the grant.
    let widened = fresh(&|b| b.scope.collections = psp_core::Collections::All);
    assert_eq!(present(&widened), Err("widened-scope"));
    // Naming another parent.
    let mut orphan = fresh(&|_| {});
    let mut leaf = psp_core::capability::CapabilityBody::parse(&orphan[1].body).unwrap();
    leaf.parent = Some([7; 64]);
    orphan[1] = psp_core::capability::SignedLink::sign(&scene.keys.console, &leaf);
    assert_eq!(present(&orphan), Err("parent-mismatch"));
    // Signed by someone other than the grant's holder.
    let mut stranger = fresh(&|_| {});
    let mut leaf = psp_core::capability::CapabilityBody::parse(&stranger[1].body).unwrap();
    leaf.issuer = scene.keys.stranger.public();
    stranger[1] = psp_core::capability::SignedLink::sign(&scene.keys.stranger, &leaf);
    assert_eq!(present(&stranger), Err("broken-delegation"));
}

#[test]
fn a_chain_of_a_million_links_is_refused_before_any_work() {
    // Far past the depth limit, with empty links: refused by its length, before a cache lookup
    // or a signature (each prefix lookup would hash every signature before it).
    let scene = Scene::new();
    let verifier = Verifier::new([scene.keys.owner.public()]);
    let empty = vec![LinkBytes::new(&[], &[]); 1_000_000];
    let refused = verifier
        .check_chain(&empty, &scene.presenter(), NOW)
        .unwrap_err();
    assert_eq!(refused.rule(), "chain-too-deep");
    // And proofs count toward the chain's size: a member list of 10,000 archives (320,000
    // bytes) beside a valid chain is over the 256 KiB limit.
    let members = vec![0u8; 320_000];
    let mut links = bytes(&scene.links);
    links[1].proof = psp_core::archive_set::ArchiveProof::Members(&members);
    let refused = verifier
        .check_chain(&links, &scene.presenter(), NOW)
        .unwrap_err();
    assert_eq!(refused.rule(), "chain-too-large");
}

#[test]
fn a_cached_two_link_prefix_is_extended_and_checked() {
    use psp_core::{ArchiveSet, Chain, Grant, Operation, Scope, Window};
    let keys = keys();
    let everything = |holder: psp_core::PublicKey, lifetime: u32| Grant {
        holder,
        archives: ArchiveSet::of_ids(["tower-a", "tower-b"]),
        scope: Scope::everything(vec![Operation::Query]),
        window: Window::lasting(NOW - 60, lifetime),
    };
    // owner -> console -> a middle machine (the stranger key) -> orchestrator.
    let middle = Chain::mint(&keys.owner, everything(keys.console.public(), 86_400))
        .unwrap()
        .delegate(&keys.console, everything(keys.stranger.public(), 3_600))
        .unwrap();
    let leaf = |grant: Grant| middle.delegate(&keys.stranger, grant).unwrap();
    let verifier = Verifier::new([keys.owner.public()]);
    let peer = keys.orchestrator.public();
    let archive = ArchiveDigest::of("tower-a");
    let presenter = Presenter {
        peer: &peer,
        archive: &archive,
    };
    let present = |chain: &Chain| {
        let links: Vec<LinkBytes<'_>> = chain
            .links()
            .iter()
            .map(|l| LinkBytes::new(&l.body, &l.signature))
            .collect();
        verifier
            .verify(&links, &presenter, &QUERY, NOW)
            .map(drop)
            .map_err(|e| e.rule())
    };
    assert_eq!(present(&leaf(everything(peer, 600))), Ok(()));
    assert_eq!(
        verifier.cache().len(),
        2,
        "the chain and its two-link prefix"
    );
    // A fresh last link on the cached two-link prefix: accepted, checked in full.
    assert_eq!(present(&leaf(everything(peer, 300))), Ok(()));
    // One that outlives the middle link, built raw (the safe API refuses to).
    let mut body = leaf(everything(peer, 300)).last().clone();
    body.window = Window::lasting(NOW - 60, 7_200);
    let mut raw = middle.links().to_vec();
    raw.push(psp_core::capability::SignedLink::sign(
        &keys.stranger,
        &body,
    ));
    let links: Vec<LinkBytes<'_>> = raw
        .iter()
        .map(|l| LinkBytes::new(&l.body, &l.signature))
        .collect();
    let refused = verifier
        .verify(&links, &presenter, &QUERY, NOW)
        .unwrap_err();
    assert_eq!(refused.rule(), "widened-window");

    // A chain found to reach tower-a, cached, then extended by a link that names tower-b
    // alone: the longer chain starts from the cached one but not from what it reached.
    let reaching = leaf(everything(peer, 600));
    assert_eq!(present(&reaching), Ok(()));
    assert_eq!(present(&reaching), Ok(()), "and again, from the cache");
    let narrowed = reaching
        .delegate(
            &keys.orchestrator,
            Grant {
                archives: ArchiveSet::of_ids(["tower-b"]),
                ..everything(keys.stranger.public(), 300)
            },
        )
        .unwrap();
    let stranger = keys.stranger.public();
    let links: Vec<LinkBytes<'_>> = narrowed
        .links()
        .iter()
        .map(|l| LinkBytes::new(&l.body, &l.signature))
        .collect();
    let at = |archive: &ArchiveDigest| {
        verifier
            .verify(
                &links,
                &Presenter {
                    peer: &stranger,
                    archive,
                },
                &QUERY,
                NOW,
            )
            .map(drop)
            .map_err(|e| e.rule())
    };
    assert_eq!(at(&archive), Err("archive-not-in-scope"));
    assert_eq!(at(&ArchiveDigest::of("tower-b")), Ok(()));
    assert_eq!(
        at(&archive),
        Err("archive-not-in-scope"),
        "nor after it reached tower-b"
    );
}
