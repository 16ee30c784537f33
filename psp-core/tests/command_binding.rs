//! Single-use commands, attacked by the holder of a request link (a compromised orchestrator).
//!
//! The holder signs whatever it likes after its own link: links to itself, hops through keys it
//! just made up, fresh link ids. None of that may move a command into a new idempotency
//! namespace, and under a grant whose holder must bind commands, an unbound request link is
//! refused outright.

use psp_core::capability::{Presenter, VerifiedChain, Verifier};
use psp_core::{
    Access, Action, ArchiveDigest, ArchiveSet, Chain, CommandDigest, Grant, IdentityKey, Operation,
    RowRequest, Scope, Window,
};

const NOW: i64 = 1_800_000_000;

fn key(seed: u8) -> IdentityKey {
    IdentityKey::from_seed([seed; 32])
}

/// owner (trusted), operator (the console), orchestrator (the presenting peer)
fn machines() -> (IdentityKey, IdentityKey, IdentityKey) {
    (key(1), key(2), key(3))
}

fn grant(holder: &IdentityKey, operations: Vec<Operation>, lifetime: u32) -> Grant {
    Grant {
        holder: holder.public(),
        archives: ArchiveSet::of_ids(["sub-01"]),
        scope: Scope::everything(operations),
        window: Window::lasting(NOW - 10, lifetime),
    }
}

fn digest(arguments: &[u8]) -> CommandDigest {
    CommandDigest::of("append", "ledger", b"append-2026-11-0001", arguments)
}

fn verified(chain: &Chain, owner: &IdentityKey) -> std::sync::Arc<VerifiedChain> {
    let verifier = Verifier::new([owner.public()]);
    let peer = chain.last().holder;
    let archive = ArchiveDigest::of("sub-01");
    let presenter = Presenter {
        peer: &peer,
        archive: &archive,
    };
    verifier
        .check_chain(&chain.link_bytes(), &presenter, NOW)
        .unwrap()
}

/// The operator's grant and its per-request link binding one append to the orchestrator.
fn bound_request(operations: Vec<Operation>) -> (Chain, CommandDigest) {
    let (owner, operator, orchestrator) = machines();
    let d = digest(b"one record");
    let chain = Chain::mint(&owner, grant(&operator, operations, 86_400))
        .unwrap()
        .delegate(
            &operator,
            grant(
                &orchestrator,
                vec![Operation::bound_command("append", d)],
                60,
            ),
        )
        .unwrap();
    (chain, d)
}

#[test]
fn a_bound_command_stays_in_the_operators_namespace_however_the_holder_extends_it() {
    let (owner, operator, orchestrator) = machines();
    let (chain, d) = bound_request(vec![Operation::command("append")]);
    let namespace = |c: &Chain| *verified(c, &owner).idempotency_namespace("append", &d);
    assert_eq!(namespace(&chain), operator.public());

    // A link to itself, with a fresh id every time.
    for _ in 0..3 {
        let self_link = chain
            .delegate(
                &orchestrator,
                grant(
                    &orchestrator,
                    vec![Operation::bound_command("append", d)],
                    30,
                ),
            )
            .unwrap();
        assert_ne!(self_link.last().id, chain.last().id);
        assert_eq!(namespace(&self_link), operator.public());
    }

    // Hops through keys it just made up, ending back at itself (the peer the Totebox paired).
    let made_up = IdentityKey::generate().unwrap();
    let hopped = chain
        .delegate(
            &orchestrator,
            grant(&made_up, vec![Operation::bound_command("append", d)], 30),
        )
        .unwrap()
        .delegate(
            &made_up,
            grant(
                &orchestrator,
                vec![Operation::bound_command("append", d)],
                30,
            ),
        )
        .unwrap();
    assert_eq!(namespace(&hopped), operator.public());
}

#[test]
fn a_retry_under_a_new_request_link_keeps_its_namespace() {
    let (owner, operator, _) = machines();
    let (first, d) = bound_request(vec![Operation::command("append")]);
    let (retry, _) = bound_request(vec![Operation::command("append")]);
    assert_ne!(first.last().id, retry.last().id, "a new link each time");
    assert_eq!(
        verified(&first, &owner).idempotency_namespace("append", &d),
        verified(&retry, &owner).idempotency_namespace("append", &d),
    );
    assert_eq!(
        *verified(&retry, &owner).idempotency_namespace("append", &d),
        operator.public()
    );
}

#[test]
fn through_a_tree_of_orchestrators_the_console_that_bound_it_names_the_namespace() {
    let (owner, operator, upper) = machines();
    let lower = key(7);
    let (chain, d) = bound_request(vec![Operation::command("append")]);
    // The upper orchestrator delegates one step further to a regional one, which presents it.
    let deeper = chain
        .delegate(
            &upper,
            grant(&lower, vec![Operation::bound_command("append", d)], 30),
        )
        .unwrap();
    assert_eq!(
        *verified(&deeper, &owner).idempotency_namespace("append", &d),
        operator.public()
    );
}

#[test]
fn an_unbound_request_link_still_cannot_open_a_new_namespace() {
    let (owner, operator, orchestrator) = machines();
    let chain = Chain::mint(
        &owner,
        grant(&operator, vec![Operation::command("append")], 86_400),
    )
    .unwrap()
    .delegate(
        &operator,
        grant(&orchestrator, vec![Operation::command("append")], 60),
    )
    .unwrap();
    let d = digest(b"chosen by the orchestrator");
    // The holder binds the command itself, then again through a made-up key: the namespace is
    // the operator who delegated to it, not the binder it controls.
    let made_up = IdentityKey::generate().unwrap();
    let rebound = chain
        .delegate(
            &orchestrator,
            grant(&made_up, vec![Operation::command("append")], 30),
        )
        .unwrap()
        .delegate(
            &made_up,
            grant(
                &orchestrator,
                vec![Operation::bound_command("append", d)],
                30,
            ),
        )
        .unwrap();
    for c in [&chain, &rebound] {
        assert_eq!(
            *verified(c, &owner).idempotency_namespace("append", &d),
            operator.public()
        );
    }
}

#[test]
fn a_grant_whose_holder_must_bind_refuses_an_unbound_request_link() {
    let (owner, operator, orchestrator) = machines();
    let root = Chain::mint(
        &owner,
        grant(
            &operator,
            vec![
                Operation::Query,
                Operation::command_bound_by_holder("append"),
            ],
            86_400,
        ),
    )
    .unwrap();

    // The safe API refuses to build it, naming why.
    let refused = root
        .delegate(
            &operator,
            grant(&orchestrator, vec![Operation::command("append")], 60),
        )
        .unwrap_err();
    assert!(refused.to_string().contains("must be bound"), "{refused}");

    // Signed anyway, the Totebox refuses it.
    let mut body = root.last().clone();
    body.id = psp_core::capability::CapabilityId::random().unwrap();
    body.issuer = operator.public();
    body.holder = orchestrator.public();
    body.parent = Some(root.links()[0].signature);
    body.scope = Scope::everything(vec![Operation::command("append")]);
    body.window = Window::lasting(NOW - 5, 60);
    let forged = psp_core::capability::SignedLink::sign(&operator, &body);
    let mut links = root.link_bytes();
    links.push(psp_core::capability::LinkBytes::new(
        &forged.body,
        &forged.signature,
    ));
    let verifier = Verifier::new([owner.public()]);
    let error = verifier.check_links(&links).unwrap_err();
    assert_eq!(error.rule(), "widened-scope", "{error}");

    // Queries are untouched, and a bound request link is accepted.
    let d = digest(b"one record");
    let bound = root
        .delegate(
            &operator,
            grant(
                &orchestrator,
                vec![Operation::Query, Operation::bound_command("append", d)],
                60,
            ),
        )
        .unwrap();
    let chain = verified(&bound, &owner);
    assert!(
        chain
            .authorize(&Access {
                action: Action::Command {
                    name: "append",
                    digest: &d,
                },
                collection: None,
                fields: &[],
                rows: RowRequest::Unrestricted,
            })
            .is_ok()
    );

    // The operator presenting its own grant directly is not bound by it.
    let own = verifier.check_links(&root.link_bytes()).unwrap();
    let other = digest(b"the operator's own choice");
    assert!(
        own.authorize(&Access {
            action: Action::Command {
                name: "append",
                digest: &other,
            },
            collection: None,
            fields: &[],
            rows: RowRequest::Unrestricted,
        })
        .is_ok()
    );
}

#[test]
fn holder_binds_survives_the_wire() {
    let (owner, operator, _) = machines();
    let root = Chain::mint(
        &owner,
        grant(
            &operator,
            vec![Operation::command_bound_by_holder("append")],
            600,
        ),
    )
    .unwrap();
    let read = Chain::from_bytes(&root.to_bytes()).unwrap();
    assert_eq!(
        read.last().scope.operations,
        vec![Operation::command_bound_by_holder("append")]
    );
}
