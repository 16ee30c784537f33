//! Viewports beyond a plain rollup: cross-entity reconciliation and executive summaries. Both are
//! data (a query shape and a few field names), not code per view.

use std::collections::{BTreeMap, BTreeSet};

use psp_core::Chain;
use psp_core::query::{Aggregate, AggregateFunction, Decimal, Filter, Query, Shape, Table, Value};

use crate::config::Partial;
use crate::fanout::{FanOutLimits, Fleet, Gathered, Source, SourceStatus};
use crate::view::view;

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
/// What the left and the right entity each record of it.
type Sides = (Option<Decimal>, Option<Decimal>);

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
    /// left - (what the convention expects from right); null unless both sides record it.
    pub difference: Value,
    /// The verdict.
    pub status: MatchStatus,
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
        let known = |e: &str| books.contains_key(e) || unanswered.contains(e);
        // (left, right, period, currency) -> (left's amount, right's amount)
        let mut pairs: BTreeMap<PairKey, Sides> = BTreeMap::new();
        for (entity, table) in books {
            for row in &table.rows {
                let [Value::Text(counterparty), period, currency, amount] = &row[..] else {
                    continue;
                };
                if counterparty == entity || !known(counterparty) {
                    continue;
                }
                let amount = match amount {
                    Value::Decimal(d) => Some(*d),
                    Value::Int(i) => Decimal::new(*i, 0),
                    _ => None,
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
                    slot.0 = amount
                } else {
                    slot.1 = amount
                }
            }
        }
        pairs
            .into_iter()
            .map(|((left, right, period, currency), (l, r))| {
                let (status, difference) = match (l, r) {
                    (Some(l), Some(r)) => {
                        // Opposite books agree when l + r = 0; equal books when l - r = 0.
                        let counter = match self.convention {
                            Convention::Opposite => r,
                            Convention::Equal => {
                                Decimal::new(-r.units(), r.scale()).expect("same scale")
                            }
                        };
                        // left + expected-with-sign: for opposite books, l + r should be zero.
                        let diff = l.checked_add(&counter);
                        let within = diff.is_some_and(|d| {
                            let magnitude = Decimal::new(d.units().saturating_abs(), d.scale())
                                .expect("same scale");
                            Value::Decimal(magnitude) <= Value::Decimal(self.tolerance)
                        });
                        (
                            if within {
                                MatchStatus::Matched
                            } else {
                                MatchStatus::Mismatched
                            },
                            diff.map_or(Value::Null, Value::Decimal),
                        )
                    }
                    (Some(_), None) if unanswered.contains(&right) => {
                        (MatchStatus::Unknown, Value::Null)
                    }
                    (None, Some(_)) if unanswered.contains(&left) => {
                        (MatchStatus::Unknown, Value::Null)
                    }
                    (Some(_), None) => (MatchStatus::LeftOnly, Value::Null),
                    (None, Some(_)) => (MatchStatus::RightOnly, Value::Null),
                    (None, None) => (MatchStatus::Unknown, Value::Null),
                };
                Entry {
                    left,
                    right,
                    period,
                    currency,
                    left_amount: l.map_or(Value::Null, Value::Decimal),
                    right_amount: r.map_or(Value::Null, Value::Decimal),
                    difference,
                    status,
                }
            })
            .collect()
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
        let (sources_ok, missing): (Vec<_>, Vec<_>) = gathered
            .outcomes
            .iter()
            .partition(|o| o.status == SourceStatus::Ok);
        let (sources, missing): (Vec<String>, Vec<String>) = (
            sources_ok.iter().map(|o| o.archive.clone()).collect(),
            missing.iter().map(|o| o.archive.clone()).collect(),
        );
        let (value, as_of_oldest) = match view(&self.query, gathered, Partial::BestEffort) {
            Ok(v) => (
                v.table
                    .rows
                    .first()
                    .and_then(|r| r.first())
                    .cloned()
                    .unwrap_or(Value::Null),
                v.as_of_oldest,
            ),
            Err(_) => (Value::Null, 0),
        };
        KpiValue {
            name: self.name.clone(),
            value,
            unit: self.unit.clone(),
            sources,
            missing,
            as_of_oldest,
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
