//! Property tests of delegation, against a brute-force model that shares no code with psp-core.
//!
//! The model describes each link by plain sets over a small universe that also holds elements no
//! grant names explicitly (archive a3, collection c3, field f4, keys ±1000, a foreign key field),
//! so "everything" and "everything listed" stay distinguishable, as they are for real archives.
//!
//! 1. `Chain::delegate` accepts a child link exactly when everything the child admits, its parent
//!    admits too (checked atom by atom over the universe).
//! 2. A chain built through the public API admits exactly the requests inside the intersection of
//!    all its links (and inside all their windows), whatever the request.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use psp_core::capability::{Presenter, VerifyPolicy};
use psp_core::{
    Access, Action, ArchiveDigest, ArchiveSet, Chain, CollectionGrant, Collections, CommandDigest,
    FieldSet, Grant, IdentityKey, KeyRange, KeySelector, Operation, RowKey, RowRequest,
    RowSelector, Scope, Verifier, Window,
};

const T0: i64 = 1_800_000_000;
const SKEW: i64 = 30;
const ARCHIVES: u8 = 4; // a0..a2 grantable, a3 never named
const COLLECTIONS: u8 = 4; // c0..c2 grantable, c3 never named
const FIELDS: u8 = 5; // f0..f3 grantable, f4 never named
const KEY_MIN: i64 = -3;
const KEY_MAX: i64 = 24;
const OUTSIDE_KEYS: [i64; 2] = [-1000, 1000];

/// Grantable operations: describe, query, append (any), append (bound to digest 1), seal (any),
/// append (any, but its holder may pass it on only bound).
const GRANT_OPS: u8 = 6;
/// Requested actions: describe, query, append d1, append d2, seal d1.
const ACTIONS: u8 = 5;

fn digest(n: u8) -> CommandDigest {
    CommandDigest::of("x", "", &[n], b"")
}

/// Model of the operation rule, written as a table rather than by pattern.
fn model_op_admits(grant: u8, action: u8) -> bool {
    const TABLE: [[bool; ACTIONS as usize]; GRANT_OPS as usize] = [
        [true, false, false, false, false],
        [false, true, false, false, false],
        [false, false, true, true, false],
        [false, false, true, false, false],
        [false, false, false, false, true],
        [false, false, true, true, false],
    ];
    TABLE[grant as usize][action as usize]
}

/// Model of "a child's operation is within one of its parent's": beyond what each admits, an
/// unbound append is never within an append whose holder must bind it.
fn model_op_within(child: u8, parent: u8) -> bool {
    const TABLE: [[bool; GRANT_OPS as usize]; GRANT_OPS as usize] = [
        [true, false, false, false, false, false],
        [false, true, false, false, false, false],
        [false, false, true, false, false, false],
        [false, false, true, true, false, true],
        [false, false, false, false, true, false],
        [false, false, true, false, false, false],
    ];
    TABLE[child as usize][parent as usize]
}

#[derive(Debug, Clone, PartialEq)]
enum ModelRows {
    All,
    Keys {
        values: BTreeSet<i64>,
        ranges: Vec<(i64, i64)>,
    },
}

/// A collection grant in the model: fields (`None` = all) and rows.
type ModelGrant = (Option<BTreeSet<u8>>, ModelRows);

#[derive(Debug, Clone)]
struct ModelLink {
    archives: Option<BTreeSet<u8>>,
    collections: Option<BTreeMap<u8, ModelGrant>>,
    ops: BTreeSet<u8>,
    window: (i64, i64),
}

/// A row atom: a key of the collection's key field, or any key of a foreign field.
#[derive(Debug, Clone, Copy)]
enum RowAtom {
    Key(i64),
    ForeignField,
}

impl ModelLink {
    fn archive(&self, a: u8) -> bool {
        self.archives.as_ref().is_none_or(|s| s.contains(&a))
    }
    fn op(&self, action: u8) -> bool {
        self.ops.iter().any(|&g| model_op_admits(g, action))
    }
    fn collection(&self, c: u8) -> bool {
        self.collections.as_ref().is_none_or(|m| m.contains_key(&c))
    }
    fn field(&self, c: u8, f: u8) -> bool {
        match &self.collections {
            None => true,
            Some(m) => m
                .get(&c)
                .is_some_and(|(fields, _)| fields.as_ref().is_none_or(|s| s.contains(&f))),
        }
    }
    fn row(&self, c: u8, atom: RowAtom) -> bool {
        let rows = match &self.collections {
            None => return true,
            Some(m) => match m.get(&c) {
                None => return false,
                Some((_, rows)) => rows,
            },
        };
        match (rows, atom) {
            (ModelRows::All, _) => true,
            (ModelRows::Keys { .. }, RowAtom::ForeignField) => false,
            (ModelRows::Keys { values, ranges }, RowAtom::Key(k)) => {
                values.contains(&k) || ranges.iter().any(|&(lo, hi)| lo <= k && k < hi)
            }
        }
    }
    fn in_time(&self, now: i64) -> bool {
        self.window.0 - SKEW <= now && now < self.window.1 + SKEW
    }

    /// Every key a selector of this link names, as a value or a range end.
    fn key_ends(&self) -> impl Iterator<Item = i64> + '_ {
        self.collections
            .iter()
            .flat_map(|m| m.values())
            .flat_map(|(_, rows)| match rows {
                ModelRows::All => Vec::new(),
                ModelRows::Keys { values, ranges } => values
                    .iter()
                    .copied()
                    .chain(ranges.iter().flat_map(|&(lo, hi)| [lo, hi]))
                    .collect(),
            })
    }

    /// Everything `self` admits, `parent` admits: checked atom by atom.
    ///
    /// The keys checked span every key either link names, one past each end: both sets of keys
    /// are unions of intervals inside that span, so outside it they agree (nothing, or every key
    /// for `All`, which the outside keys and the foreign field tell apart). Judging only
    /// `KEY_MIN..=KEY_MAX` would miss a range that runs past `KEY_MAX`, which `delegate` rightly
    /// refuses.
    fn within(&self, parent: &ModelLink) -> bool {
        let ends: Vec<i64> = self.key_ends().chain(parent.key_ends()).collect();
        let low = ends.iter().copied().min().unwrap_or(KEY_MIN).min(KEY_MIN) - 1;
        let high = ends.iter().copied().max().unwrap_or(KEY_MAX).max(KEY_MAX) + 1;
        let keys = (low..=high).chain(OUTSIDE_KEYS).map(RowAtom::Key);
        let atoms: Vec<RowAtom> = keys.chain([RowAtom::ForeignField]).collect();
        (0..ARCHIVES).all(|a| !self.archive(a) || parent.archive(a))
            && (0..ACTIONS).all(|x| !self.op(x) || parent.op(x))
            && self
                .ops
                .iter()
                .all(|&c| parent.ops.iter().any(|&p| model_op_within(c, p)))
            && (0..COLLECTIONS).all(|c| {
                !self.collection(c)
                    || (parent.collection(c)
                        && (0..FIELDS).all(|f| !self.field(c, f) || parent.field(c, f))
                        && atoms.iter().all(|&r| !self.row(c, r) || parent.row(c, r)))
            })
            && parent.window.0 <= self.window.0
            && self.window.1 <= parent.window.1
    }
}

#[derive(Debug, Clone)]
struct ModelRequest {
    archive: u8,
    action: u8,
    collection: Option<u8>,
    fields: Vec<u8>,
    rows: ModelRowRequest,
    now: i64,
}

#[derive(Debug, Clone)]
enum ModelRowRequest {
    Unrestricted,
    Keys(Vec<i64>),
    Range(i64, i64),
    ForeignKeys,
}

impl ModelRequest {
    fn admitted_by(&self, link: &ModelLink) -> bool {
        if !(link.archive(self.archive) && link.op(self.action) && link.in_time(self.now)) {
            return false;
        }
        let Some(c) = self.collection else {
            return true;
        };
        link.collection(c)
            && self.fields.iter().all(|&f| link.field(c, f))
            && match &self.rows {
                ModelRowRequest::Unrestricted => true,
                ModelRowRequest::Keys(keys) => keys.iter().all(|&k| link.row(c, RowAtom::Key(k))),
                ModelRowRequest::Range(lo, hi) => (*lo..*hi).all(|k| link.row(c, RowAtom::Key(k))),
                ModelRowRequest::ForeignKeys => link.row(c, RowAtom::ForeignField),
            }
    }
}

// ---- strategies ----

fn subset(universe: u8, min: usize) -> impl Strategy<Value = BTreeSet<u8>> {
    proptest::collection::btree_set(0..universe, min..=universe as usize)
}

fn model_rows() -> impl Strategy<Value = ModelRows> {
    prop_oneof![
        1 => Just(ModelRows::All),
        3 => (
            proptest::collection::btree_set(KEY_MIN..=KEY_MAX, 0..5),
            proptest::collection::vec((KEY_MIN..KEY_MAX, 1i64..8), 0..3),
        )
            .prop_map(|(values, ranges)| ModelRows::Keys {
                values,
                ranges: ranges.into_iter().map(|(lo, len)| (lo, lo + len)).collect(),
            }),
    ]
}

fn model_link() -> impl Strategy<Value = ModelLink> {
    let archives = prop_oneof![1 => Just(None), 3 => subset(ARCHIVES - 1, 1).prop_map(Some)];
    let grant = (
        prop_oneof![1 => Just(None), 3 => subset(FIELDS - 1, 0).prop_map(Some)],
        model_rows(),
    );
    let collections = prop_oneof![
        1 => Just(None),
        3 => proptest::collection::btree_map(0..COLLECTIONS - 1, grant, 0..=3).prop_map(Some),
    ];
    (
        archives,
        collections,
        subset(GRANT_OPS, 1),
        0i64..600,
        1i64..900,
    )
        .prop_map(|(archives, collections, ops, start, len)| ModelLink {
            archives,
            collections,
            ops,
            window: (T0 + start, T0 + start + len),
        })
}

/// A child drawn freely, as a random narrowing of its parent, or as a narrowing plus one small
/// change that may or may not widen it (an extra field, key, range, collection, operation,
/// archive, a stitched range, or a nudged window): the cases where an off-by-one in a narrowing
/// rule would show.
fn narrowed(parent: ModelLink) -> impl Strategy<Value = ModelLink> {
    let p = parent.clone();
    let narrow = (any::<u64>(), 0i64..300, 0i64..300).prop_map(move |(bits, cut_lo, cut_hi)| {
        let mut child = p.clone();
        let mut bit = 0;
        let mut flip = || {
            bit += 1;
            bits >> (bit % 64) & 1 == 1
        };
        child.ops.retain(|_| flip());
        if child.ops.is_empty() {
            child.ops.insert(*p.ops.iter().next().unwrap());
        }
        if let Some(m) = &mut child.collections {
            m.retain(|_, _| flip());
            for (fields, rows) in m.values_mut() {
                if let Some(f) = fields {
                    f.retain(|_| flip());
                }
                if let ModelRows::Keys { values, ranges } = rows {
                    values.retain(|_| flip());
                    ranges.retain(|_| flip());
                }
            }
        }
        let (lo, hi) = p.window;
        let (new_lo, new_hi) = (
            lo + cut_lo.min((hi - lo - 1) / 2),
            hi - cut_hi.min((hi - lo - 1) / 2),
        );
        child.window = (new_lo, new_hi.max(new_lo + 1));
        child
    });
    let perturbed = (narrow.clone(), 0u8..11, 0u8..8, KEY_MIN..KEY_MAX, 1i64..6).prop_map(
        |(mut child, change, pick, key, len)| {
            perturb(&mut child, change, pick, key, len);
            child
        },
    );
    prop_oneof![1 => model_link(), 2 => narrow, 4 => perturbed]
}

fn perturb(child: &mut ModelLink, change: u8, pick: u8, key: i64, len: i64) {
    let grants = child
        .collections
        .as_mut()
        .map(|m| m.values_mut().collect::<Vec<_>>());
    let grant = grants.and_then(|mut g| {
        let n = g.len();
        (n > 0).then(|| g.swap_remove(pick as usize % n))
    });
    match (change, grant) {
        (0, Some((Some(fields), _))) => {
            fields.insert(pick % (FIELDS - 1));
        }
        (1, Some((fields, _))) => *fields = None,
        (2, Some((_, ModelRows::Keys { values, .. }))) => {
            values.insert(key);
        }
        (3, Some((_, ModelRows::Keys { ranges, .. }))) => ranges.push((key, key + len)),
        (4, Some((_, rows))) => *rows = ModelRows::All,
        // A range spanning the selector's own values and ranges: covered only if they leave no gap.
        (5, Some((_, ModelRows::Keys { values, ranges }))) => {
            let keys = values
                .iter()
                .copied()
                .chain(ranges.iter().flat_map(|&(lo, hi)| [lo, hi - 1]));
            if let (Some(lo), Some(hi)) = (keys.clone().min(), keys.max()) {
                ranges.push((lo, hi + 1));
            }
        }
        (6, _) => {
            if let Some(m) = &mut child.collections {
                m.entry(pick % (COLLECTIONS - 1))
                    .or_insert((None, ModelRows::All));
            }
        }
        (7, _) => {
            child.ops.insert(pick % GRANT_OPS);
        }
        (8, _) => {
            if let Some(a) = &mut child.archives {
                a.insert(pick % (ARCHIVES - 1));
            }
        }
        (9, _) => child.window.0 -= 1,
        (10, _) => child.window.1 += 1,
        _ => {}
    }
}

fn chain_specs() -> impl Strategy<Value = Vec<ModelLink>> {
    model_link().prop_flat_map(|root| {
        let r = root.clone();
        narrowed(root).prop_flat_map(move |second| {
            let (r, s) = (r.clone(), second.clone());
            narrowed(second).prop_flat_map(move |third| {
                let (r, s, t) = (r.clone(), s.clone(), third.clone());
                narrowed(third)
                    .prop_map(move |fourth| vec![r.clone(), s.clone(), t.clone(), fourth])
            })
        })
    })
}

fn model_request() -> impl Strategy<Value = ModelRequest> {
    let rows = prop_oneof![
        Just(ModelRowRequest::Unrestricted),
        proptest::collection::vec(prop_oneof![KEY_MIN - 1..=KEY_MAX + 1, Just(1000)], 1..4)
            .prop_map(ModelRowRequest::Keys),
        (KEY_MIN - 1..KEY_MAX, 1i64..7).prop_map(|(lo, len)| ModelRowRequest::Range(lo, lo + len)),
        Just(ModelRowRequest::ForeignKeys),
    ];
    (
        0..ARCHIVES,
        0..ACTIONS,
        proptest::option::weighted(0.9, 0..COLLECTIONS),
        proptest::collection::vec(0..FIELDS, 0..3),
        rows,
        -60i64..1_000,
    )
        .prop_map(
            |(archive, action, collection, fields, rows, at)| ModelRequest {
                archive,
                action,
                collection,
                fields,
                rows,
                now: T0 + at,
            },
        )
}

/// The same request aimed at what the last link grants (its archives, an admitted action, its
/// window, its collections, a range starting at one of its keys), so that the row, field and
/// collection rules are reached instead of the request failing early on archive, action or time.
fn focus(request: &ModelRequest, last: &ModelLink) -> ModelRequest {
    let mut focused = request.clone();
    if let Some(archives) = &last.archives {
        let list: Vec<u8> = archives.iter().copied().collect();
        focused.archive = list[request.archive as usize % list.len()];
    }
    if let Some(action) = (0..ACTIONS)
        .cycle()
        .skip(request.action as usize)
        .take(ACTIONS as usize)
        .find(|&a| last.op(a))
    {
        focused.action = action;
    }
    focused.now = last.window.0 + (request.now - T0).rem_euclid(last.window.1 - last.window.0);
    if let Some(m) = &last.collections
        && !m.is_empty()
    {
        let (&c, (_, rows)) = m.iter().nth(request.fields.len() % m.len()).unwrap();
        focused.collection = Some(c);
        if let (ModelRows::Keys { values, ranges }, ModelRowRequest::Range(lo, hi)) =
            (rows, &request.rows)
        {
            let starts: Vec<i64> = values
                .iter()
                .copied()
                .chain(ranges.iter().map(|r| r.0))
                .collect();
            if !starts.is_empty() {
                let start = starts[lo.rem_euclid(starts.len() as i64) as usize];
                focused.rows = ModelRowRequest::Range(start, start + (hi - lo));
            }
        }
    }
    focused
}

// ---- the model, translated to the real API ----

fn real_scope(link: &ModelLink) -> Scope {
    let operations = link
        .ops
        .iter()
        .map(|&g| match g {
            0 => Operation::Describe,
            1 => Operation::Query,
            2 => Operation::command("append"),
            3 => Operation::bound_command("append", digest(1)),
            4 => Operation::command("seal"),
            _ => Operation::command_bound_by_holder("append"),
        })
        .collect();
    let collections = match &link.collections {
        None => Collections::All,
        Some(m) => Collections::Only(
            m.iter()
                .map(|(c, (fields, rows))| {
                    let fields = match fields {
                        None => FieldSet::All,
                        Some(s) => FieldSet::Only(s.iter().map(|f| format!("f{f}")).collect()),
                    };
                    let rows = match rows {
                        ModelRows::All => RowSelector::All,
                        ModelRows::Keys { values, ranges } => RowSelector::Keys(KeySelector::new(
                            "k",
                            values.iter().map(|&v| RowKey::Int(v)),
                            ranges
                                .iter()
                                .map(|&(lo, hi)| KeyRange::new(lo, hi).unwrap()),
                        )),
                    };
                    (format!("c{c}"), CollectionGrant { fields, rows })
                })
                .collect(),
        ),
    };
    Scope {
        collections,
        operations,
    }
}

fn real_grant(link: &ModelLink, holder: &IdentityKey) -> Grant {
    Grant {
        holder: holder.public(),
        archives: match &link.archives {
            None => ArchiveSet::Any,
            Some(s) => ArchiveSet::of_ids(
                s.iter()
                    .map(|a| format!("a{a}"))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(String::as_str),
            ),
        },
        scope: real_scope(link),
        window: Window::new(link.window.0, link.window.1).unwrap(),
    }
}

fn machine(i: usize) -> IdentityKey {
    IdentityKey::from_seed([i as u8 + 1; 32])
}

/// Builds the chain through the public API, stopping at the first delegation it refuses.
/// Returns the chain, the model links it holds, and whether each refusal matched the model.
fn build(specs: &[ModelLink]) -> (Chain, Vec<ModelLink>) {
    let mut chain = Chain::mint(&machine(0), real_grant(&specs[0], &machine(1))).unwrap();
    let mut held = vec![specs[0].clone()];
    for (i, spec) in specs.iter().enumerate().skip(1) {
        let result = chain.delegate(&machine(i), real_grant(spec, &machine(i + 1)));
        let within = spec.within(held.last().unwrap());
        match result {
            Ok(next) => {
                assert!(
                    within,
                    "delegate accepted a link the model says widens its parent:\nparent {:?}\nchild {spec:?}",
                    held.last()
                );
                chain = next;
                held.push(spec.clone());
            }
            Err(e) => {
                assert!(
                    !within,
                    "delegate refused ({e}) a link the model says is within its parent:\nparent {:?}\nchild {spec:?}",
                    held.last()
                );
                break;
            }
        }
    }
    (chain, held)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn delegation_accepts_exactly_the_narrowing_links(specs in chain_specs()) {
        build(&specs);
    }

    #[test]
    fn a_chain_admits_exactly_the_intersection_of_its_links(
        specs in chain_specs(),
        requests in proptest::collection::vec(model_request(), 40),
    ) {
        let (chain, held) = build(&specs);
        let holder = machine(held.len());
        let verifier = Verifier::new([machine(0).public()]).with_policy(VerifyPolicy {
            max_lifetime: 10_000,
            ..VerifyPolicy::default()
        });
        let links = chain.link_bytes();
        let peer = holder.public();
        let focused: Vec<ModelRequest> = requests.iter().map(|r| focus(r, held.last().unwrap())).collect();
        for request in requests.iter().chain(&focused) {
            let archive = ArchiveDigest::of(&format!("a{}", request.archive));
            let collection = request.collection.map(|c| format!("c{c}"));
            let fields: Vec<String> = request.fields.iter().map(|f| format!("f{f}")).collect();
            let field_refs: Vec<&str> = fields.iter().map(String::as_str).collect();
            let (d1, d2) = (digest(1), digest(2));
            let action = match request.action {
                0 => Action::Describe,
                1 => Action::Query,
                2 => Action::Command { name: "append", digest: &d1 },
                3 => Action::Command { name: "append", digest: &d2 },
                _ => Action::Command { name: "seal", digest: &d1 },
            };
            let keys: Vec<RowKey>;
            let range;
            let rows = match &request.rows {
                ModelRowRequest::Unrestricted => RowRequest::Unrestricted,
                ModelRowRequest::Keys(k) => {
                    keys = k.iter().map(|&v| RowKey::Int(v)).collect();
                    RowRequest::Keys { field: "k", keys: &keys }
                }
                ModelRowRequest::Range(lo, hi) => {
                    range = KeyRange::new(*lo, *hi).unwrap();
                    RowRequest::Range { field: "k", range: &range }
                }
                ModelRowRequest::ForeignKeys => {
                    keys = vec![RowKey::Int(1)];
                    RowRequest::Keys { field: "j", keys: &keys }
                }
            };
            let access = Access { action, collection: collection.as_deref(), fields: &field_refs, rows };
            let presenter = Presenter { peer: &peer, archive: &archive };
            let verdict = verifier.verify(&links, &presenter, &access, request.now);
            let expected = held.iter().all(|link| request.admitted_by(link));
            prop_assert_eq!(
                verdict.is_ok(),
                expected,
                "request {:?} under {} links: verifier said {:?}",
                request,
                held.len(),
                verdict.err()
            );
        }
    }
}

/// Guards the power of the properties above: the generator must often build deep chains, or
/// "admits exactly the intersection" would only ever be checked on one link.
#[test]
fn generated_chains_are_often_deep() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = chain_specs();
    let mut deep = 0;
    for _ in 0..200 {
        let specs = strategy.new_tree(&mut runner).unwrap().current();
        if build(&specs).1.len() >= 3 {
            deep += 1;
        }
    }
    assert!(
        deep >= 60,
        "only {deep} of 200 generated chains reached 3 links"
    );
}
