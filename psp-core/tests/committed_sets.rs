//! Archive sets committed by a Merkle root: a Totebox in the set gets in with its inclusion proof,
//! and nothing an attacker can send (no proof, another archive's proof, a forged or shifted path,
//! a member list that does not hash to the root, a committed link that widens a listed parent)
//! gets anyone else in.

mod support;

use capnp::message::{Builder, ReaderOptions};
use capnp::serialize;
use psp_core::archive_set::{ArchiveProof, LinkArchives, MemberTree};
use psp_core::capability::{Chain, LinkBytes, Presenter, SignedLink, links_from_reader};
use psp_core::{Access, Action, ArchiveDigest, ArchiveSet, Grant, RowRequest, Verifier, Window};
use psp_schema::capability_capnp::chain;
use support::{NOW, keys, raw_chain, scope};

const QUERY: Access<'static> = Access {
    action: Action::Query,
    collection: Some("ledger"),
    fields: &["amount"],
    rows: RowRequest::Unrestricted,
};

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("prop-{i:04}")).collect()
}

fn set_of(ids: &[String]) -> ArchiveSet {
    ArchiveSet::of_ids(ids.iter().map(String::as_str))
}

/// owner -> console over `root_ids`, console -> orchestrator over `request_ids`, both built with
/// the safe API (so committed when larger than a few).
fn chain(root_ids: &[String], request_ids: &[String]) -> Chain {
    let k = keys();
    Chain::mint(
        &k.owner,
        Grant {
            holder: k.console.public(),
            archives: set_of(root_ids),
            scope: scope(),
            window: Window::lasting(NOW - 3_600, 86_400),
        },
    )
    .unwrap()
    .delegate(
        &k.console,
        Grant {
            holder: k.orchestrator.public(),
            archives: set_of(request_ids),
            scope: scope(),
            window: Window::lasting(NOW - 60, 600),
        },
    )
    .unwrap()
}

/// Presents `links` at `archive` as the orchestrator; the failed rule, if any.
fn present(links: &[LinkBytes<'_>], archive: &str) -> Result<(), &'static str> {
    let k = keys();
    let peer = k.orchestrator.public();
    let digest = ArchiveDigest::of(archive);
    let presenter = Presenter {
        peer: &peer,
        archive: &digest,
    };
    Verifier::new([k.owner.public()])
        .verify(links, &presenter, &QUERY, NOW)
        .map(drop)
        .map_err(|e| e.rule())
}

/// The chain as written for `archive` and read back from the wire, as a Totebox receives it.
fn on_the_wire_for(chain: &Chain, archive: &str) -> Vec<u8> {
    let mut message = Builder::new_default();
    chain.write_for(message.init_root(), &ArchiveDigest::of(archive));
    serialize::write_message_to_words(&message)
}

fn read(bytes: &[u8]) -> capnp::message::Reader<serialize::OwnedSegments> {
    serialize::read_message(bytes, ReaderOptions::new()).unwrap()
}

#[test]
fn every_member_gets_in_with_its_own_proof_and_only_with_it() {
    let fleet = ids(1_000);
    let chain = chain(&fleet, &fleet);
    assert!(matches!(
        chain.bodies()[0].archives,
        LinkArchives::Committed(_)
    ));
    assert!(matches!(
        chain.bodies()[1].archives,
        LinkArchives::Committed(_)
    ));
    for id in fleet.iter().step_by(37) {
        let proofs = chain.inclusions_for(&ArchiveDigest::of(id));
        assert_eq!(
            present(&chain.link_bytes_proving(&proofs), id),
            Ok(()),
            "{id}"
        );
        // The same proofs at another member: refused (they prove another leaf).
        let other = if id == &fleet[0] {
            &fleet[1]
        } else {
            &fleet[0]
        };
        assert_eq!(
            present(&chain.link_bytes_proving(&proofs), other),
            Err("archive-not-in-scope")
        );
    }
    // No proof at all, or proofs for only one of the two committed links: refused.
    let proofs = chain.inclusions_for(&ArchiveDigest::of(&fleet[5]));
    let none = chain.link_bytes_proving(&[]);
    assert_eq!(present(&none, &fleet[5]), Err("archive-not-in-scope"));
    let half = chain.link_bytes_proving(&proofs[..1]);
    assert_eq!(present(&half, &fleet[5]), Err("archive-not-in-scope"));
    // The whole member list proves membership too (at linear cost).
    assert_eq!(present(&chain.link_bytes(), &fleet[5]), Ok(()));
}

#[test]
fn an_archive_outside_the_set_cannot_borrow_a_neighbours_proof() {
    let fleet = ids(100);
    let chain = chain(&fleet, &fleet);
    let proofs = chain.inclusions_for(&ArchiveDigest::of(&fleet[10]));
    // Not a member, with a member's proof, and with the member's index shifted by one.
    assert_eq!(
        present(&chain.link_bytes_proving(&proofs), "prop-9999"),
        Err("archive-not-in-scope")
    );
    let mut shifted = proofs.clone();
    for p in shifted.iter_mut().flatten() {
        p.index += 1;
    }
    assert_eq!(
        present(&chain.link_bytes_proving(&shifted), &fleet[10]),
        Err("archive-not-in-scope")
    );
    // A path cut short, grown, or with one byte changed.
    for edit in [
        |p: &mut Vec<u8>| p.truncate(p.len() - 32),
        |p: &mut Vec<u8>| p.extend_from_slice(&[0; 32]),
        |p: &mut Vec<u8>| p[7] ^= 1,
        |p: &mut Vec<u8>| p.truncate(p.len() - 1),
    ] {
        let mut forged = proofs.clone();
        edit(&mut forged[1].as_mut().unwrap().path);
        assert_eq!(
            present(&chain.link_bytes_proving(&forged), &fleet[10]),
            Err("archive-not-in-scope")
        );
    }
}

#[test]
fn a_member_list_that_does_not_hash_to_the_root_proves_nothing() {
    let fleet = ids(50);
    let chain = chain(&fleet, &fleet);
    // The attacker's list adds an archive; it hashes to another root.
    let mut wider = fleet.clone();
    wider.push("prop-9999".into());
    let tree = MemberTree::new(set_of(&wider).members().unwrap().to_vec()).unwrap();
    let mut links = chain.link_bytes();
    for link in &mut links {
        link.proof = ArchiveProof::Members(tree.member_bytes());
    }
    assert_eq!(present(&links, "prop-9999"), Err("archive-not-in-scope"));
    // Unsorted or ragged member bytes are no list at all.
    let mut unsorted = chain.link_bytes()[1].proof;
    let ArchiveProof::Members(bytes) = unsorted else {
        panic!("the holder's form carries members")
    };
    let mut swapped = bytes.to_vec();
    swapped[..64].rotate_left(32);
    unsorted = ArchiveProof::Members(&swapped);
    let mut links = chain.link_bytes();
    links[1].proof = unsorted;
    assert_eq!(present(&links, &fleet[0]), Err("archive-not-in-scope"));
    let ragged = &bytes[..bytes.len() - 1];
    links[1].proof = ArchiveProof::Members(ragged);
    assert_eq!(present(&links, &fleet[0]), Err("archive-not-in-scope"));
}

#[test]
fn a_committed_link_reaches_only_what_every_link_admits() {
    let k = keys();
    // The console's grant lists three archives; it signs a committed request link over 100
    // archives, its own three among them. The request link's body cannot be compared with the
    // list, so each Totebox checks that every link admits it.
    let wide = ids(100);
    let tree = MemberTree::new(set_of(&wide).members().unwrap().to_vec()).unwrap();
    let links = raw_chain(&k, |i, body| {
        if i == 0 {
            body.archives = ArchiveSet::of_ids(["tower-a", "prop-0001", "prop-0002"]).into();
        } else {
            body.archives = LinkArchives::Committed(tree.commitment());
        }
    });
    let (index, path) = tree.inclusion(&ArchiveDigest::of("prop-0050")).unwrap();
    let path = path.concat();
    let present_at = |archive: &str, index: u32, path: &[u8]| {
        let bytes = [
            LinkBytes::new(&links[0].body, &links[0].signature),
            LinkBytes {
                proof: ArchiveProof::Inclusion { index, path },
                ..LinkBytes::new(&links[1].body, &links[1].signature)
            },
        ];
        present(&bytes, archive)
    };
    // prop-0050 is in the request link's set but not the grant's: refused.
    assert_eq!(
        present_at("prop-0050", index, &path),
        Err("archive-not-in-scope")
    );
    // prop-0001 is in both: admitted.
    let (index, path) = tree.inclusion(&ArchiveDigest::of("prop-0001")).unwrap();
    assert_eq!(present_at("prop-0001", index, &path.concat()), Ok(()));

    // The safe API refuses to build the widening link at all.
    let grant = Chain::mint(
        &k.owner,
        Grant {
            holder: k.console.public(),
            archives: set_of(&ids(10)),
            scope: scope(),
            window: Window::lasting(NOW - 3_600, 86_400),
        },
    )
    .unwrap();
    let widened = grant.delegate(
        &k.console,
        Grant {
            holder: k.orchestrator.public(),
            archives: set_of(&ids(11)),
            scope: scope(),
            window: Window::lasting(NOW - 60, 600),
        },
    );
    assert!(widened.is_err());
}

#[test]
fn a_totebox_is_sent_log_n_bytes_and_reads_them_off_the_wire() {
    let small = chain(&ids(10), &ids(10));
    let large = chain(&ids(10_000), &ids(10_000));
    let small_bytes = on_the_wire_for(&small, "prop-0003");
    let large_bytes = on_the_wire_for(&large, "prop-0003");
    // 1,000 times the archives costs ten more hashes in each of the two proofs (log2 10,000 =
    // 14 against 4), where listing them would cost 320,000 bytes per link.
    assert!(
        large_bytes.len() <= small_bytes.len() + 2 * 10 * 32 + 16,
        "{} vs {}",
        large_bytes.len(),
        small_bytes.len()
    );
    let message = read(&large_bytes);
    let links = links_from_reader(message.get_root::<chain::Reader<'_>>().unwrap()).unwrap();
    assert!(matches!(links[1].proof, ArchiveProof::Inclusion { .. }));
    assert_eq!(present(&links, "prop-0003"), Ok(()));
    assert_eq!(present(&links, "prop-0004"), Err("archive-not-in-scope"));
}

#[test]
fn a_holder_must_be_told_the_members_and_proof_lists_must_match_the_links() {
    let fleet = ids(20);
    let chain = chain(&fleet, &fleet);
    // Written for a holder: read back whole, members known.
    let mut message = Builder::new_default();
    chain.write(message.init_root());
    let bytes = serialize::write_message_to_words(&message);
    let read_back = Chain::from_reader(read(&bytes).get_root().unwrap()).unwrap();
    assert_eq!(read_back.archives(), &set_of(&fleet));
    assert!(read_back.reaches(&ArchiveDigest::of(&fleet[3])));
    assert!(!read_back.reaches(&ArchiveDigest::of("prop-9999")));
    // Written for one archive: a holder cannot learn the set from it, and says so.
    let for_one = on_the_wire_for(&chain, &fleet[3]);
    let error = Chain::from_reader(read(&for_one).get_root().unwrap()).unwrap_err();
    assert_eq!(error.rule(), "malformed", "{error}");
    // A proof list that is not one entry per link is malformed.
    let mut message = Builder::new_default();
    {
        let mut root: chain::Builder<'_> = message.init_root();
        let mut links = root.reborrow().init_links(2);
        for (i, l) in chain.links().iter().enumerate() {
            links.reborrow().get(i as u32).set_body(&l.body);
            links.reborrow().get(i as u32).set_signature(&l.signature);
        }
        root.init_archive_proofs(1);
    }
    let bytes = serialize::write_message_to_words(&message);
    let reader = read(&bytes);
    let error = links_from_reader(reader.get_root().unwrap()).unwrap_err();
    assert_eq!(error.rule(), "malformed", "{error}");
}

#[test]
fn a_committed_set_of_zero_members_or_a_short_root_is_malformed() {
    let k = keys();
    for (root, size) in [([7u8; 32].to_vec(), 0u32), (vec![7u8; 31], 3)] {
        let mut body = support::body(
            k.owner.public(),
            k.orchestrator.public(),
            Window::lasting(NOW - 60, 600),
        );
        body.archives = LinkArchives::Any;
        // Re-encode the archive set by hand: the safe types cannot express these.
        let encoded = body.encode();
        let message = read(&encoded);
        let mut builder = Builder::new_default();
        builder
            .set_root(
                message
                    .get_root::<psp_schema::capability_capnp::capability_body::Reader<'_>>()
                    .unwrap(),
            )
            .unwrap();
        let root_body: psp_schema::capability_capnp::capability_body::Builder<'_> =
            builder.get_root().unwrap();
        let mut committed = root_body.init_archives().init_committed();
        committed.set_root(&root);
        committed.set_size(size);
        let bytes = serialize::write_message_to_words(&builder);
        let link = SignedLink::sign_bytes(&k.owner, bytes);
        let error = Verifier::new([k.owner.public()])
            .check_links(&[LinkBytes::new(&link.body, &link.signature)])
            .unwrap_err();
        assert_eq!(error.rule(), "malformed", "{error}");
    }
}

#[test]
fn a_holder_refuses_a_chain_deeper_than_any_verifier_accepts() {
    // A console could hand an orchestrator thousands of links; it reads none of them.
    let mut message = Builder::new_default();
    {
        let root: chain::Builder<'_> = message.init_root();
        root.init_links(10_000);
    }
    let bytes = serialize::write_message_to_words(&message);
    let error = Chain::from_reader(read(&bytes).get_root().unwrap()).unwrap_err();
    assert_eq!(error.rule(), "chain-too-deep", "{error}");
}
