//! Viewports beyond a plain rollup: cross-entity reconciliation and executive summaries. Both are
//! data (a query shape and a few field names), not code per view.

use std::collections::{BTreeMap, BTreeSet};

use psp_core::Chain;
use psp_core::query::{
    Aggregate, AggregateFunction, Decimal, Filter, Merged, Merger, Query, Shape, Table, Value,
};

use crate::fanout::{FanOutLimits, Fleet, Gathered, Source, SourceStatus};

/// How two entities' records of one balance compare when they agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convention {
    /// A's amount is minus B's (a receivable against a payable).
    Opposite,
    /// Both record the same amount.
    Equal,
}

/// A reconciliation: which ledger, which fields, how amounts relate.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconciliation {
    /// The ledger collection in each archive.
    pub collection: String,
    /// The field naming the other entity.
    pub counterparty_field: String,
    /// The period field.
    pub period_field: String,
    /// The currency field.
    pub currency_field: String,
    /// The amount field (decimal).
    pub amount_field: String,
    /// The archive label whose value names the entity in other archives' counterparty field;
    /// empty: the archive id.
    pub entity_label: String,
    /// Which records take part (the intercompany accounts, say).
    pub filter: Filter,
    /// How the sides relate.
    pub convention: Convention,
    /// Differences up to this are matched.
    pub tolerance: Decimal,
}

/// (left entity, right entity, period, currency): one intercompany balance.
type PairKey = (String, String, Value, Value);

/// What one entity records of one balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Side {
    /// Nothing.
    #[default]
    Absent,
    /// This amount.
    Amount(Decimal),
    /// Something, but its amount is not known: it left the 64-bit range when the entity's
    /// archives were merged, or is not a number.
    Unknown,
}

/// What the left and the right entity each record of it.
type Sides = (Side, Side);

/// The verdict on one balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MatchStatus {
    /// Both sides agree within the tolerance.
    Matched,
    /// Both sides record it but disagree.
    Mismatched,
    /// Only the left entity records it.
    LeftOnly,
    /// Only the right entity records it.
    RightOnly,
    /// One side's archive did not answer: no verdict is possible.
    Unknown,
}

/// One intercompany balance seen from both sides (or one).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The entity whose name sorts first.
    pub left: String,
    /// The other entity.
    pub right: String,
    /// The period.
    pub period: Value,
    /// The currency.
    pub currency: Value,
    /// What left records about right (null when nothing).
    pub left_amount: Value,
    /// What right records about left (null when nothing).
    pub right_amount: Value,
    /// left - (what the convention expects from right); null unless both sides record it (or
    /// when it leaves the 64-bit range).
    pub difference: Value,
    /// The verdict.
    pub status: MatchStatus,
    /// A side's amount is unknown because it left the 64-bit range: status `Unknown`.
    pub overflowed: bool,
}

/// One entity's merged answer to [`Reconciliation::query`].
#[derive(Debug, Clone, PartialEq)]
pub struct Book {
    /// Its balances: (counterparty, period, currency, amount) rows.
    pub table: Table,
    /// Rows of `table` whose amount left the 64-bit range.
    pub overflowed: BTreeSet<usize>,
}

impl From<Table> for Book {
    fn from(table: Table) -> Self {
        Book {
            table,
            overflowed: BTreeSet::new(),
        }
    }
}

impl Reconciliation {
    /// The query each entity's archive answers: its balances with every counterparty.
    pub fn query(&self) -> Query {
        Query::aggregate(
            &self.collection,
            [
                self.counterparty_field.as_str(),
                self.period_field.as_str(),
                self.currency_field.as_str(),
            ],
            [Aggregate::of(AggregateFunction::Sum, &self.amount_field).named("amount")],
        )
        .filter(self.filter.clone())
    }

    /// Pairs every entity's balances with its counterparties'. `books` holds, per entity that
    /// answered, its finalized answer to [`Reconciliation::query`]; `unanswered` names the
    /// entities whose archives did not answer. Counterparties that are neither (outsiders) are
    /// not reconciled.
    pub fn reconcile(
        &self,
        books: &BTreeMap<String, Table>,
        unanswered: &BTreeSet<String>,
    ) -> Vec<Entry> {
        let books: BTreeMap<String, Book> = books
            .iter()
            .map(|(e, t)| (e.clone(), Book::from(t.clone())))
            .collect();
        self.reconcile_books(&books, unanswered)
    }

    /// [`Reconciliation::reconcile`] over merged books, which may mark amounts that left the
    /// 64-bit range: those balances are `Unknown` and say why. All arithmetic here is checked
    /// (amounts come from the network).
    pub fn reconcile_books(
        &self,
        books: &BTreeMap<String, Book>,
        unanswered: &BTreeSet<String>,
    ) -> Vec<Entry> {
        let known = |e: &str| books.contains_key(e) || unanswered.contains(e);
        // (left, right, period, currency) -> (left's amount, right's amount)
        let mut pairs: BTreeMap<PairKey, Sides> = BTreeMap::new();
        for (entity, book) in books {
            for (r, row) in book.table.rows.iter().enumerate() {
                let [Value::Text(counterparty), period, currency, amount] = &row[..] else {
                    continue;
                };
                if counterparty == entity || !known(counterparty) {
                    continue;
                }
                let side = match amount {
                    _ if book.overflowed.contains(&r) => Side::Unknown,
                    Value::Decimal(d) => Side::Amount(*d),
                    Value::Int(i) => Decimal::new(*i, 0).map_or(Side::Unknown, Side::Amount),
                    _ => Side::Unknown,
                };
                let (left, right, is_left) = if entity < counterparty {
                    (entity.clone(), counterparty.clone(), true)
                } else {
                    (counterparty.clone(), entity.clone(), false)
                };
                let slot = pairs
                    .entry((left, right, period.clone(), currency.clone()))
                    .or_default();
                if is_left {
                    slot.0 = side
                } else {
                    slot.1 = side
                }
            }
        }
        pairs
            .into_iter()
            .map(|((left, right, period, currency), (l, r))| {
                let amount = |s: Side| match s {
                    Side::Amount(d) => Value::Decimal(d),
                    _ => Value::Null,
                };
                let overflowed = l == Side::Unknown || r == Side::Unknown;
                // An entity whose books span several archives, one of which did not answer,
                // has only part of its amount: no verdict on it.
                let partial = unanswered.contains(&left) || unanswered.contains(&right);
                let (status, difference) = match (l, r) {
                    (Side::Unknown, _) | (_, Side::Unknown) => (MatchStatus::Unknown, Value::Null),
                    (Side::Amount(_), Side::Amount(_)) if partial => {
                        (MatchStatus::Unknown, Value::Null)
                    }
                    (Side::Amount(l), Side::Amount(r)) => self.compare(l, r),
                    (Side::Amount(_), Side::Absent) if unanswered.contains(&right) => {
                        (MatchStatus::Unknown, Value::Null)
                    }
                    (Side::Absent, Side::Amount(_)) if unanswered.contains(&left) => {
                        (MatchStatus::Unknown, Value::Null)
                    }
                    (Side::Amount(_), Side::Absent) => (MatchStatus::LeftOnly, Value::Null),
                    (Side::Absent, Side::Amount(_)) => (MatchStatus::RightOnly, Value::Null),
                    (Side::Absent, Side::Absent) => (MatchStatus::Unknown, Value::Null),
                };
                Entry {
                    left,
                    right,
                    period,
                    currency,
                    left_amount: amount(l),
                    right_amount: amount(r),
                    difference,
                    status,
                    overflowed,
                }
            })
            .collect()
    }

    /// The verdict on two recorded amounts, and their difference: `l + r` for opposite books,
    /// `l - r` for equal ones, computed in 128 bits so no amount can overflow it; the difference
    /// is null when it does not fit a 64-bit decimal (it is then surely a mismatch).
    fn compare(&self, l: Decimal, r: Decimal) -> (MatchStatus, Value) {
        let widen = |d: Decimal, scale: u8| {
            i128::from(d.units()) * 10i128.pow(u32::from(scale.saturating_sub(d.scale())))
        };
        let scale = l.scale().max(r.scale());
        let difference = match self.convention {
            Convention::Opposite => widen(l, scale) + widen(r, scale),
            Convention::Equal => widen(l, scale) - widen(r, scale),
        };
        // Compared with the tolerance at whichever scale is finer.
        let common = scale.max(self.tolerance.scale());
        let within = difference
            .abs()
            .checked_mul(10i128.pow(u32::from(common - scale)))
            .is_some_and(|d| d <= widen(self.tolerance, common).abs());
        let status = if within {
            MatchStatus::Matched
        } else {
            MatchStatus::Mismatched
        };
        let value = i64::try_from(difference)
            .ok()
            .and_then(|units| Decimal::new(units, scale))
            .map_or(Value::Null, Value::Decimal);
        (status, value)
    }
}

/// One key figure of an executive summary: an aggregate query with exactly one aggregate.
#[derive(Debug, Clone, PartialEq)]
pub struct Kpi {
    /// Its display name.
    pub name: String,
    /// The query (no group-by, one aggregate).
    pub query: Query,
    /// Its unit, for display.
    pub unit: String,
}

/// A key figure with where it came from and how fresh it is.
#[derive(Debug, Clone, PartialEq)]
pub struct KpiValue {
    /// Its display name.
    pub name: String,
    /// The merged figure (null when no source answered).
    pub value: Value,
    /// Its unit.
    pub unit: String,
    /// The archives that contributed.
    pub sources: Vec<String>,
    /// Selected archives that did not (the figure excludes them).
    pub missing: Vec<String>,
    /// The oldest data time among the contributors.
    pub as_of_oldest: i64,
    /// The figure's exact value left the 64-bit range: `value` is null although sources
    /// answered.
    pub overflowed: bool,
}

impl Kpi {
    /// Checks the shape a key figure must have: an aggregate query, one aggregate, no group-by.
    pub fn check(&self) -> Result<(), String> {
        match &self.query.shape {
            Shape::Aggregate {
                group_by,
                aggregates,
            } if group_by.is_empty() && aggregates.len() == 1 => Ok(()),
            _ => Err(format!(
                "key figure {:?}: its query must have exactly one aggregate and no group-by",
                self.name
            )),
        }
    }

    /// The figure from what one fan-out of its query gathered.
    pub fn value(&self, gathered: Gathered) -> KpiValue {
        let mut outcomes = gathered.outcomes;
        let mut merger = Merger::new(&self.query, usize::MAX);
        for (index, (outcome, result)) in outcomes.iter_mut().zip(gathered.results).enumerate() {
            if let Some(result) = result {
                crate::view::fold(&mut merger, index, outcome, result);
            }
        }
        self.figure(merger.finish(), &outcomes)
    }

    /// The figure from its merged answer and every source's outcome.
    pub fn figure(&self, merged: Merged, outcomes: &[crate::fanout::SourceOutcome]) -> KpiValue {
        let (sources_ok, missing): (Vec<_>, Vec<_>) =
            outcomes.iter().partition(|o| o.status == SourceStatus::Ok);
        let overflowed = merged.overflows.iter().any(|c| c.row == 0 && c.column == 0);
        KpiValue {
            name: self.name.clone(),
            value: merged
                .table
                .rows
                .first()
                .and_then(|r| r.first())
                .cloned()
                .unwrap_or(Value::Null),
            unit: self.unit.clone(),
            sources: sources_ok.iter().map(|o| o.archive.clone()).collect(),
            missing: missing.iter().map(|o| o.archive.clone()).collect(),
            as_of_oldest: merged.as_of_oldest,
            overflowed,
        }
    }
}

/// Computes every key figure over `sources` (the figures' fan-outs run side by side), each with
/// its provenance and freshness.
pub async fn summarize(
    fleet: &Fleet,
    sources: &[Source],
    chain: &Chain,
    kpis: &[Kpi],
    limits: FanOutLimits,
) -> Vec<KpiValue> {
    futures::future::join_all(kpis.iter().map(|kpi| async {
        kpi.value(
            fleet
                .query(sources.to_vec(), chain, kpi.query.clone(), limits)
                .await,
        )
    }))
    .await
}

/// Most key figures in one executive summary.
pub const MAX_KEY_FIGURES: usize = 64;

/// A declarative view over the fleet (`Viewport` in `schema/orchestrator.capnp`).
#[derive(Debug, Clone, PartialEq)]
pub enum Viewport {
    /// One aggregate query over many archives, grouped first by archive labels.
    Rollup {
        /// The aggregate query.
        query: Query,
        /// Archive label keys prepended to the group key (e.g. `region`).
        labels: Vec<String>,
    },
    /// A cross-entity reconciliation.
    Reconciliation(Reconciliation),
    /// An executive summary: key figures in display order.
    Summary(Vec<Kpi>),
}

impl Viewport {
    /// Checks what the wire types cannot say: a rollup aggregates, key figures have one
    /// aggregate and no group-by, a summary has figures.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Viewport::Rollup { query, .. } => match query.shape {
                Shape::Aggregate { .. } => Ok(()),
                Shape::Rows(_) => Err("a rollup's query must be an aggregate query".into()),
            },
            Viewport::Reconciliation(r) => {
                for (what, field) in [
                    ("collection", &r.collection),
                    ("counterparty field", &r.counterparty_field),
                    ("period field", &r.period_field),
                    ("currency field", &r.currency_field),
                    ("amount field", &r.amount_field),
                ] {
                    if field.is_empty() {
                        return Err(format!("a reconciliation needs its {what}"));
                    }
                }
                Ok(())
            }
            Viewport::Summary(kpis) if kpis.is_empty() => {
                Err("an executive summary needs at least one key figure".into())
            }
            // Each figure is one call to every source: a bound keeps one request from queueing
            // an unbounded number of calls on the fleet's connections.
            Viewport::Summary(kpis) if kpis.len() > MAX_KEY_FIGURES => Err(format!(
                "an executive summary has at most {MAX_KEY_FIGURES} key figures, not {}",
                kpis.len()
            )),
            Viewport::Summary(kpis) => kpis.iter().try_for_each(Kpi::check),
        }
    }
}

/// A viewport with its name (for logs, displays and `viewport(name)`).
#[derive(Debug, Clone, PartialEq)]
pub struct NamedViewport {
    /// Its name.
    pub name: String,
    /// What it computes.
    pub viewport: Viewport,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(convention: Convention) -> Reconciliation {
        Reconciliation {
            collection: "ledger".into(),
            counterparty_field: "counterparty".into(),
            period_field: "period".into(),
            currency_field: "currency".into(),
            amount_field: "amount".into(),
            entity_label: String::new(),
            filter: Filter::All,
            convention,
            tolerance: Decimal::new(1, 2).unwrap(),
        }
    }

    fn book(counterparty: &str, units: i64) -> Table {
        Table {
            columns: Vec::new(),
            rows: vec![vec![
                Value::from(counterparty),
                Value::from("2026-10"),
                Value::from("USD"),
                Value::Decimal(Decimal::new(units, 2).unwrap()),
            ]],
        }
    }

    #[test]
    fn amounts_at_the_edge_of_64_bits_never_panic_and_differences_stay_exact() {
        for convention in [Convention::Opposite, Convention::Equal] {
            for (a, b) in [(i64::MIN, i64::MIN), (i64::MAX, i64::MIN), (i64::MIN, 5)] {
                let books = BTreeMap::from([
                    ("sub-a".to_owned(), book("sub-b", a)),
                    ("sub-b".to_owned(), book("sub-a", b)),
                ]);
                let [entry] = &spec(convention).reconcile(&books, &BTreeSet::new())[..] else {
                    panic!("one balance")
                };
                let expected = match convention {
                    Convention::Opposite => i128::from(a) + i128::from(b),
                    Convention::Equal => i128::from(a) - i128::from(b),
                };
                match &entry.difference {
                    Value::Decimal(d) => assert_eq!(i128::from(d.units()), expected),
                    Value::Null => assert!(i64::try_from(expected).is_err()),
                    other => panic!("{other:?}"),
                }
                let matched = expected.abs() <= 1;
                assert_eq!(entry.status == MatchStatus::Matched, matched, "{a} {b}");
            }
        }
    }

    #[test]
    fn an_entity_with_an_archive_missing_gets_no_verdict() {
        // sub-b's books span two archives; one answered (-100), one did not.
        let books = BTreeMap::from([
            ("sub-a".to_owned(), book("sub-b", 250)),
            ("sub-b".to_owned(), book("sub-a", -100)),
        ]);
        let partial = BTreeSet::from(["sub-b".to_owned()]);
        let [entry] = &spec(Convention::Opposite).reconcile(&books, &partial)[..] else {
            panic!("one balance")
        };
        assert_eq!(entry.status, MatchStatus::Unknown);
        assert_eq!(entry.difference, Value::Null);
    }

    #[test]
    fn an_amount_that_overflowed_makes_its_balance_unknown() {
        let books = BTreeMap::from([
            (
                "sub-a".to_owned(),
                Book {
                    table: Table {
                        columns: Vec::new(),
                        rows: vec![vec![
                            Value::from("sub-b"),
                            Value::from("2026-10"),
                            Value::from("USD"),
                            Value::Null,
                        ]],
                    },
                    overflowed: BTreeSet::from([0]),
                },
            ),
            ("sub-b".to_owned(), Book::from(book("sub-a", -100))),
        ]);
        let entries = spec(Convention::Opposite).reconcile_books(&books, &BTreeSet::new());
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].status, MatchStatus::Unknown);
        assert!(entries[0].overflowed);
    }
}
