//! Counts the work of chain verification in instructions rather than seconds, so the comparison
//! with a bare Ed25519 verification does not depend on what else the machine is doing.
//!
//! Run under callgrind, twice with different iteration counts, and take the difference; the
//! script `scripts/count-verify-instructions` does exactly that for every mode and depth:
//!
//! ```text
//! cargo build --release -p psp-core --example verify_cost
//! valgrind --tool=callgrind target/release/examples/verify_cost uncached 3 110
//! ```
//!
//! Modes: `bare` (decode a key, strictly verify one signature over a body-sized message),
//! `uncached` and `cached` (a full `Verifier::verify` of a DEPTH-link chain).

use std::hint::black_box;
use std::sync::Arc;

use ed25519_dalek::{Signature, VerifyingKey};
use psp_core::capability::{ChainCache, Presenter, SIGNING_DOMAIN};
use psp_core::{ArchiveDigest, Verifier};

#[path = "../benches/support/mod.rs"]
mod support;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, depth, iterations] = &args[..] else {
        eprintln!("usage: verify_cost bare|uncached|cached DEPTH ITERATIONS");
        std::process::exit(2);
    };
    let depth: usize = depth.parse().expect("DEPTH is 1 to 4");
    let iterations: usize = iterations.parse().expect("ITERATIONS is a count");

    let (chain, owner, holder) = support::chain(depth);
    let links = chain.link_bytes();
    let archive = ArchiveDigest::of(support::ARCHIVE);
    let peer = holder.public();
    let presenter = Presenter {
        peer: &peer,
        archive: &archive,
    };
    let cache = match mode.as_str() {
        "cached" => ChainCache::default(),
        _ => ChainCache::new(0),
    };
    let verifier = Verifier::new([owner.public()]).with_cache(Arc::new(cache));
    let mut message = SIGNING_DOMAIN.to_vec();
    message.extend_from_slice(&chain.links()[0].body);
    let signature = Signature::from_bytes(&chain.links()[0].signature);
    let key = *owner.public().as_bytes();

    for _ in 0..iterations {
        match mode.as_str() {
            "bare" => {
                let key = VerifyingKey::from_bytes(black_box(&key)).unwrap();
                key.verify_strict(black_box(&message), &signature).unwrap();
            }
            "uncached" | "cached" => {
                black_box(verifier.verify(
                    black_box(&links),
                    &presenter,
                    &support::ACCESS,
                    support::NOW,
                ))
                .unwrap();
            }
            other => panic!("unknown mode {other}"),
        }
    }
}
