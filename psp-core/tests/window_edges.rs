//! Windows at the edges of the 64-bit range get the rule that is true of them, never one that a
//! wrapped subtraction made up: a window from the beginning to the end of time lasts too long, one
//! that ends at the very beginning expired, one that starts at the very end is not yet valid.

use psp_core::capability::{Presenter, Verifier};
use psp_core::{ArchiveDigest, ArchiveSet, Chain, Grant, IdentityKey, Operation, Scope, Window};

const NOW: i64 = 1_800_000_000;

fn rule_for(not_before: i64, not_after: i64) -> String {
    let (owner, holder) = (
        IdentityKey::from_seed([1; 32]),
        IdentityKey::from_seed([2; 32]),
    );
    let chain = Chain::mint(
        &owner,
        Grant {
            holder: holder.public(),
            archives: ArchiveSet::Any,
            scope: Scope::everything(vec![Operation::Query]),
            window: Window::new(not_before, not_after).unwrap(),
        },
    )
    .unwrap();
    let peer = holder.public();
    let archive = ArchiveDigest::of("a");
    let presenter = Presenter {
        peer: &peer,
        archive: &archive,
    };
    Verifier::new([owner.public()])
        .check_chain(&chain.link_bytes(), &presenter, NOW)
        .map(|_| "accepted".to_owned())
        .unwrap_or_else(|e| format!("{}: {e}", e.rule()))
}

#[test]
fn windows_at_the_edges_of_time_get_their_true_rule() {
    let all_time = rule_for(i64::MIN, i64::MAX);
    assert!(all_time.starts_with("lifetime-too-long"), "{all_time}");
    let long_ago = rule_for(i64::MIN, i64::MIN + 10);
    assert!(long_ago.starts_with("expired"), "{long_ago}");
    let far_future = rule_for(i64::MAX - 10, i64::MAX);
    assert!(far_future.starts_with("not-yet-valid"), "{far_future}");
    assert!(
        !far_future.contains("-9223372036854775808"),
        "no wrapped time in the message: {far_future}"
    );
    assert_eq!(rule_for(NOW - 10, NOW + 60), "accepted");
}
