//! Bodies minted here are canonical Cap'n Proto, parse back to what was encoded, and are signed
//! exactly by the documented rule: Ed25519 over "PSP-CAP-v1\0" || body bytes.

mod support;

use capnp::message::ReaderOptions;
use ed25519_dalek::{Signature, VerifyingKey};
use psp_core::capability::{CapabilityBody, SignedLink};
use psp_core::{ArchiveSet, Window};
use support::{NOW, body, keys};

#[test]
fn an_encoded_body_is_canonical_and_round_trips() {
    let k = keys();
    let mut original = body(
        k.owner.public(),
        k.console.public(),
        Window::lasting(NOW, 600),
    );
    original.parent = Some([3; 64]);
    let bytes = original.encode();

    let parsed = CapabilityBody::parse(&bytes).unwrap();
    assert_eq!(parsed, original);
    assert_eq!(parsed.encode(), bytes, "encoding is deterministic");

    let mut slice = &bytes[..];
    let message =
        capnp::serialize::read_message_from_flat_slice(&mut slice, ReaderOptions::new()).unwrap();
    assert!(slice.is_empty());
    assert!(
        message.is_canonical().unwrap(),
        "minted bodies are canonical"
    );
}

#[test]
fn the_signature_follows_the_documented_rule() {
    let k = keys();
    let link = SignedLink::sign(
        &k.owner,
        &body(
            k.owner.public(),
            k.console.public(),
            Window::lasting(NOW, 600),
        ),
    );
    let mut message = b"PSP-CAP-v1\0".to_vec();
    message.extend_from_slice(&link.body);
    let key = VerifyingKey::from_bytes(k.owner.public().as_bytes()).unwrap();
    key.verify_strict(&message, &Signature::from_bytes(&link.signature))
        .expect("a plain Ed25519 library verifies a PSP signature");
    assert!(
        key.verify_strict(&link.body, &Signature::from_bytes(&link.signature))
            .is_err(),
        "the domain prefix is part of what is signed"
    );
}

#[test]
fn archive_sets_encode_sorted_whatever_the_input_order() {
    let k = keys();
    let mut a = body(
        k.owner.public(),
        k.console.public(),
        Window::lasting(NOW, 600),
    );
    let mut b = a.clone();
    a.archives = ArchiveSet::of_ids(["z", "a", "m", "a"]).into();
    b.archives = ArchiveSet::of_ids(["m", "z", "a"]).into();
    assert_eq!(a.encode(), b.encode());
}

#[test]
fn chains_survive_a_trip_through_bytes() {
    let k = keys();
    let chain = psp_core::Chain::mint(
        &k.owner,
        psp_core::Grant {
            holder: k.console.public(),
            archives: support::archives(),
            scope: support::scope(),
            window: Window::lasting(NOW, 3_600),
        },
    )
    .unwrap();
    let bytes = chain.to_bytes();
    assert_eq!(psp_core::Chain::from_bytes(&bytes).unwrap(), chain);
    assert!(psp_core::Chain::from_bytes(&bytes[..bytes.len() - 8]).is_err());
    assert!(psp_core::Chain::from_bytes(b"junk").is_err());
}
