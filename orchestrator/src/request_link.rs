//! The link a console delegates to the orchestrator for one request: only what that request
//! needs, for only as long as it runs.
//!
//! A console holds its operator's grant and, per request, signs one more link held by the
//! orchestrator. Whatever that link allows, a compromised orchestrator can do until it expires,
//! so it names exactly:
//!
//! * the archives the request selected (never the rest of the grant's archive set); beyond a
//!   few, committed by a Merkle root, so each Totebox is sent only its own inclusion proof
//!   however many archives the request reaches. For a selection by label or "all", which archives those are is
//!   the orchestrator's listing of the tenant (`fleet()`): a compromised orchestrator could list
//!   more of the grant's archives than the tenant has. A grant that names its archives bounds
//!   that; a console that names archives by id does not depend on the listing at all;
//! * the collections the request reads, each with only the fields it references (projected,
//!   filtered, grouped, ordered or aggregated) and the grant's own rows;
//! * the one operation: `query`, or the command bound to its digest (its name, collection,
//!   idempotency key and arguments), so the link applies that command and nothing else, once;
//! * a window ending at the request's deadline plus clock skew.
//!
//! What the grant does not allow is left out rather than refused here: the Toteboxes refuse the
//! request with the rule that failed, which is the answer the operator needs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use psp_core::capability::DelegationError;
use psp_core::query::Query;
use psp_core::{
    ArchiveDigest, ArchiveSet, Chain, CollectionGrant, Collections, CommandDigest, FieldSet, Grant,
    IdentityKey, Operation, PublicKey, Scope, UnixSeconds, Window,
};
use psp_rpc::client::CommandSpec;

use crate::viewports::Viewport;

/// How far the Toteboxes' clocks may differ from the console's (their default
/// `clock_skew_seconds`): a request link stays valid this long past the request's deadline.
pub const CLOCK_SKEW: Duration = Duration::from_secs(30);

/// Why a console could not delegate a request link.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestLinkError {
    /// The grant cannot be delegated (not valid now, not held by this operator, ...).
    #[error(transparent)]
    Delegation(#[from] DelegationError),
}

/// What one request needs from the operator's grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    /// The archives the request selects, by id.
    pub archives: Vec<String>,
    /// Each collection the request touches, with the fields it references; `None` keeps the
    /// grant's fields (a command is bound to its digest, so narrowing its fields adds nothing).
    pub collections: BTreeMap<String, Option<BTreeSet<String>>>,
    /// The one operation.
    pub operation: Operation,
}

impl Needs {
    /// A query over `archives`.
    pub fn query(query: &Query, archives: Vec<String>) -> Needs {
        let mut needs = Needs {
            archives,
            collections: BTreeMap::new(),
            operation: Operation::Query,
        };
        needs.read(query);
        needs
    }

    /// A viewport over `archives`: every query it runs.
    pub fn viewport(viewport: &Viewport, archives: Vec<String>) -> Needs {
        let mut needs = Needs {
            archives,
            collections: BTreeMap::new(),
            operation: Operation::Query,
        };
        match viewport {
            Viewport::Rollup { query, .. } => needs.read(query),
            Viewport::Reconciliation(spec) => needs.read(&spec.query()),
            Viewport::Summary(kpis) => kpis.iter().for_each(|k| needs.read(&k.query)),
        }
        needs
    }

    /// One command over `archives`, bound to its digest.
    pub fn command(command: &CommandSpec, archives: Vec<String>) -> Needs {
        let digest = CommandDigest::of(
            &command.name,
            &command.collection,
            &command.idempotency_key,
            &command.arguments,
        );
        let mut collections = BTreeMap::new();
        if !command.collection.is_empty() {
            collections.insert(command.collection.clone(), None);
        }
        Needs {
            archives,
            collections,
            operation: Operation::bound_command(&command.name, digest),
        }
    }

    fn read(&mut self, query: &Query) {
        let fields = self
            .collections
            .entry(query.collection.clone())
            .or_insert_with(|| Some(BTreeSet::new()));
        if let Some(fields) = fields {
            fields.extend(query.referenced_fields().into_iter().map(str::to_owned));
        }
    }
}

/// Delegates `grant` (whose last holder is `operator`) to `orchestrator` for one request that
/// needs `needs` and ends within `deadline` of `now`: the link described in the module docs.
pub fn delegate(
    grant: &Chain,
    operator: &IdentityKey,
    orchestrator: PublicKey,
    needs: &Needs,
    deadline: Duration,
    now: UnixSeconds,
) -> Result<Chain, RequestLinkError> {
    let parent = grant.last();
    let archives = ArchiveSet::of_digests(
        needs
            .archives
            .iter()
            // An archive reached through regional orchestrators is named by its path; the
            // capability names the archive itself.
            .map(|id| ArchiveDigest::of(crate::tier::archive_of(id)))
            .filter(|d| grant.reaches(d)),
    );
    let mut collections = BTreeMap::new();
    for (name, fields) in &needs.collections {
        // A collection the grant does not reach is left out: the Toteboxes say so.
        let Some(granted) = parent.scope.collection(name) else {
            continue;
        };
        let fields = match fields {
            None => granted.fields.clone(),
            Some(fields) => FieldSet::Only(
                fields
                    .iter()
                    .filter(|f| granted.fields.contains(f))
                    .cloned()
                    .collect(),
            ),
        };
        collections.insert(
            name.clone(),
            CollectionGrant {
                fields,
                rows: granted.rows.clone(),
            },
        );
    }
    let lifetime = (deadline + CLOCK_SKEW)
        .as_secs()
        .clamp(1, u64::from(u32::MAX)) as u32;
    let window = Window::lasting(now, lifetime)
        .intersect(&parent.window)
        .ok_or_else(|| {
            DelegationError::Widens(format!(
                "the grant is not valid now (it runs {} to {})",
                parent.window.not_before(),
                parent.window.not_after()
            ))
        })?;
    let candidate = Scope {
        collections: Collections::Only(collections),
        operations: vec![needs.operation.clone()],
    };
    // An operation the grant does not allow is left out too: the Toteboxes refuse it by rule.
    let scope = if candidate.is_within(&parent.scope).is_ok() {
        candidate
    } else {
        Scope {
            operations: Vec::new(),
            ..candidate
        }
    };
    Ok(grant.delegate(
        operator,
        Grant {
            holder: orchestrator,
            archives,
            scope,
            window,
        },
    )?)
}

#[cfg(test)]
mod tests {
    use psp_core::archive_set::LinkArchives;
    use psp_core::query::{Aggregate, AggregateFunction, CompareOp, Filter};
    use psp_core::{KeyRange, KeySelector, RowSelector};

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn keys() -> (IdentityKey, IdentityKey, IdentityKey) {
        (
            IdentityKey::from_seed([1; 32]),
            IdentityKey::from_seed([2; 32]),
            IdentityKey::from_seed([3; 32]),
        )
    }

    fn grant(scope: Scope) -> Chain {
        let (owner, operator, _) = keys();
        Chain::mint(
            &owner,
            Grant {
                holder: operator.public(),
                archives: ArchiveSet::of_ids(["a", "b", "c"]),
                scope,
                window: Window::lasting(NOW - 10, 86_400),
            },
        )
        .unwrap()
    }

    fn link(grant: &Chain, needs: &Needs) -> psp_core::capability::CapabilityBody {
        delegated(grant, needs).last().clone()
    }

    fn delegated(grant: &Chain, needs: &Needs) -> Chain {
        let (_, operator, orchestrator) = keys();
        delegate(
            grant,
            &operator,
            orchestrator.public(),
            needs,
            Duration::from_secs(10),
            NOW,
        )
        .unwrap()
    }

    #[test]
    fn a_query_link_names_its_archives_collection_fields_operation_and_deadline() {
        let grant = grant(Scope::everything(vec![
            Operation::Query,
            Operation::command("append"),
        ]));
        let query = Query::aggregate(
            "statements",
            ["period"],
            [Aggregate::of(AggregateFunction::Sum, "noi").named("noi")],
        )
        .filter(Filter::compare("period", CompareOp::Ge, "2025-11"))
        .order_by("noi", true);
        let body = link(&grant, &Needs::query(&query, vec!["a".into(), "z".into()]));
        // "z" is not in the grant: left out, not an error.
        assert_eq!(
            body.archives,
            LinkArchives::Listed(vec![ArchiveDigest::of("a")])
        );
        assert_eq!(body.scope.operations, vec![Operation::Query]);
        let Collections::Only(grants) = &body.scope.collections else {
            panic!("only the collection read")
        };
        assert_eq!(grants.keys().collect::<Vec<_>>(), ["statements"]);
        assert_eq!(grants["statements"].fields, FieldSet::of(["noi", "period"]));
        assert_eq!(body.window.not_after(), NOW + 10 + 30);
    }

    #[test]
    fn a_command_link_is_bound_to_that_command_and_keeps_the_grants_rows() {
        let rows = RowSelector::Keys(KeySelector::new(
            "entry",
            [],
            [KeyRange::new(1, 1_000).unwrap()],
        ));
        let mut only = BTreeMap::new();
        only.insert(
            "ledger".to_owned(),
            CollectionGrant {
                fields: FieldSet::All,
                rows: rows.clone(),
            },
        );
        let grant = grant(Scope {
            collections: Collections::Only(only),
            operations: vec![Operation::command_bound_by_holder("append")],
        });
        let command = CommandSpec {
            name: "append".into(),
            collection: "ledger".into(),
            idempotency_key: b"append-2026-12-0001".to_vec(),
            arguments: b"args".to_vec(),
        };
        let body = link(&grant, &Needs::command(&command, vec!["b".into()]));
        let digest = CommandDigest::of("append", "ledger", b"append-2026-12-0001", b"args");
        assert_eq!(
            body.scope.operations,
            vec![Operation::bound_command("append", digest)]
        );
        let Collections::Only(grants) = &body.scope.collections else {
            panic!()
        };
        assert_eq!(grants["ledger"].rows, rows);
    }

    #[test]
    fn what_the_grant_does_not_allow_is_left_for_the_toteboxes_to_refuse() {
        let grant = grant(Scope::everything(vec![Operation::Query]));
        let command = CommandSpec {
            name: "seal".into(),
            collection: String::new(),
            idempotency_key: b"seal-2026-10-ledger-01".to_vec(),
            arguments: Vec::new(),
        };
        let body = link(&grant, &Needs::command(&command, vec!["a".into()]));
        assert!(body.scope.operations.is_empty());
    }

    #[test]
    fn a_large_selection_is_committed_and_names_only_the_grants_archives() {
        let query = Query::aggregate("statements", [], [Aggregate::count()]);
        // 5,000 archives, more than a link could ever list (64 KiB), under an any-archive grant.
        let many: Vec<String> = (0..5_000).map(|i| format!("a{i}")).collect();
        let (owner, operator, _) = keys();
        let any = Chain::mint(
            &owner,
            Grant {
                holder: operator.public(),
                archives: ArchiveSet::Any,
                scope: Scope::everything(vec![Operation::Query]),
                window: Window::lasting(NOW - 10, 86_400),
            },
        )
        .unwrap();
        let chain = delegated(&any, &Needs::query(&query, many.clone()));
        let LinkArchives::Committed(commitment) = chain.last().archives else {
            panic!("a large set is committed, not listed")
        };
        assert_eq!(commitment.size, 5_000);
        assert!(
            chain.last().encode().len() < 1_024,
            "the signed body stays small"
        );
        assert_eq!(
            chain.archives(),
            &ArchiveSet::of_ids(many.iter().map(String::as_str))
        );
        // Each archive's proof is log2(5,000) hashes; the whole chain for one Totebox stays small.
        let proofs = chain.inclusions_for(&ArchiveDigest::of("a42"));
        assert_eq!(proofs[1].as_ref().map(|p| p.path.len()), Some(13 * 32));

        // Padding with archives the grant does not name changes nothing: they are dropped first.
        let padded = grant_of(&["a", "b"]);
        let mut ids: Vec<String> = (0..5_000).map(|i| format!("made-up-{i}")).collect();
        ids.push("a".into());
        let body = link(&padded, &Needs::query(&query, ids));
        assert_eq!(
            body.archives,
            LinkArchives::Listed(vec![ArchiveDigest::of("a")])
        );
    }

    fn grant_of(ids: &[&str]) -> Chain {
        let (owner, operator, _) = keys();
        Chain::mint(
            &owner,
            Grant {
                holder: operator.public(),
                archives: ArchiveSet::of_ids(ids.iter().copied()),
                scope: Scope::everything(vec![Operation::Query]),
                window: Window::lasting(NOW - 10, 86_400),
            },
        )
        .unwrap()
    }
}
