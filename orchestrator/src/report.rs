//! Running a viewport end to end: the fan-outs it needs, then the merged table, reconciliation
//! or summary, with one outcome per selected source. The console service answers every `query`
//! and `view` through [`run`]; integrators can call it on their own [`Fleet`].

use std::collections::{BTreeMap, BTreeSet};

use psp_core::Chain;
use psp_core::query::{Query, Table};

use crate::config::Partial;
use crate::fanout::{FanOutLimits, Fleet, Gathered, Source, SourceOutcome, SourceStatus, Watch};
use crate::view::{ViewError, enforce, labelled_query, view, with_labels};
use crate::viewports::{Entry, KpiValue, Viewport};

/// What a report holds besides its outcomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A merged query or rollup.
    Table(Table),
    /// A cross-entity reconciliation's entries.
    Reconciliation(Vec<Entry>),
    /// An executive summary's figures.
    Summary(Vec<KpiValue>),
}

/// A viewport's answer over many archives (`View` in `schema/orchestrator.capnp`).
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Every selected source answered.
    pub complete: bool,
    /// One per selected source.
    pub outcomes: Vec<SourceOutcome>,
    /// The oldest data time among the sources that answered (0 when none did).
    pub as_of_oldest: i64,
    /// The table, reconciliation or summary.
    pub body: Body,
}

impl Report {
    /// The merged table, when this is a query's or a rollup's report.
    pub fn table(&self) -> Option<&Table> {
        match &self.body {
            Body::Table(t) => Some(t),
            _ => None,
        }
    }
}

/// The archives one request reaches: those it asks, and those it reports without asking.
#[derive(Debug, Clone, Default)]
pub struct Reach {
    /// The sources asked, in order.
    pub sources: Vec<Source>,
    /// Each asked source's archive labels, in the same order.
    pub labels: Vec<BTreeMap<String, String>>,
    /// Selected archives that are not asked (outside the capability), with their outcome.
    pub not_asked: Vec<SourceOutcome>,
}

impl Reach {
    /// How many source answers `viewport` waits for (for progress): a summary asks every source
    /// once per key figure.
    pub fn answers_expected(&self, viewport: &Viewport) -> u32 {
        let per_source = match viewport {
            Viewport::Summary(kpis) => kpis.len(),
            _ => 1,
        };
        (self.sources.len() * per_source + self.not_asked.len()) as u32
    }
}

/// How a request fans out: the fleet, its capability, its limits, its partial policy, and the
/// watch its caller steers it with.
pub struct Run<'a> {
    /// The fleet's connection pool.
    pub fleet: &'a Fleet,
    /// The request's capability chain.
    pub chain: &'a Chain,
    /// Time and concurrency limits.
    pub limits: FanOutLimits,
    /// Strict or best-effort.
    pub partial: Partial,
    /// Progress and cancellation.
    pub watch: Watch,
}

/// Runs `viewport` over `reach`.
pub async fn run(viewport: &Viewport, reach: &Reach, how: &Run<'_>) -> Result<Report, ViewError> {
    match viewport {
        Viewport::Rollup { query, labels } => table(query, labels, reach, how).await,
        Viewport::Reconciliation(spec) => {
            let query = spec.query();
            let gathered = gather(&query, reach, how).await;
            let entity = |i: usize, archive: &str| match spec.entity_label.as_str() {
                "" => archive.to_owned(),
                label => reach
                    .labels
                    .get(i)
                    .and_then(|l| l.get(label))
                    .cloned()
                    .unwrap_or_else(|| archive.to_owned()),
            };
            let mut books = BTreeMap::new();
            let mut unanswered = BTreeSet::new();
            let mut outcomes = gathered.outcomes;
            for (i, (outcome, result)) in outcomes.iter_mut().zip(gathered.results).enumerate() {
                let name = entity(i, &outcome.archive);
                match result.map(|r| r.finalize(&query)) {
                    Some(Ok(t)) => {
                        books.insert(name, t);
                    }
                    Some(Err(e)) => {
                        outcome.status = SourceStatus::Error(format!("cannot finalize: {e}"));
                        unanswered.insert(name);
                    }
                    None => {
                        unanswered.insert(name);
                    }
                }
            }
            finish(
                outcomes,
                how.partial,
                Body::Reconciliation(spec.reconcile(&books, &unanswered)),
            )
        }
        Viewport::Summary(kpis) => {
            let gathered =
                futures::future::join_all(kpis.iter().map(|kpi| gather(&kpi.query, reach, how)))
                    .await;
            // A source's outcome over the whole summary: its first failure, else ok.
            let mut outcomes: Vec<SourceOutcome> = Vec::new();
            for g in &gathered {
                if outcomes.is_empty() {
                    outcomes = g.outcomes.clone();
                    continue;
                }
                for (merged, o) in outcomes.iter_mut().zip(&g.outcomes) {
                    merged.latency = merged.latency.max(o.latency);
                    merged.rows += o.rows;
                    merged.suppressed_groups += o.suppressed_groups;
                    if merged.status == SourceStatus::Ok {
                        merged.status = o.status.clone();
                        merged.as_of = merged.as_of.min(o.as_of);
                    }
                }
            }
            let values = kpis.iter().zip(gathered).map(|(k, g)| k.value(g)).collect();
            finish(outcomes, how.partial, Body::Summary(values))
        }
    }
}

/// Runs a fleet query (a rollup without labels).
pub async fn query(query: &Query, reach: &Reach, how: &Run<'_>) -> Result<Report, ViewError> {
    table(query, &[], reach, how).await
}

async fn table(
    query: &Query,
    labels: &[String],
    reach: &Reach,
    how: &Run<'_>,
) -> Result<Report, ViewError> {
    let mut gathered = gather(query, reach, how).await;
    if !labels.is_empty() {
        let none = BTreeMap::new();
        let source_labels = reach.labels.iter().chain(std::iter::repeat(&none));
        gathered.results = gathered
            .results
            .into_iter()
            .zip(source_labels)
            .map(|(r, l)| r.map(|r| with_labels(r, labels, l)))
            .collect();
    }
    let v = view(&labelled_query(query, labels), gathered, how.partial)?;
    Ok(Report {
        complete: v.complete,
        outcomes: v.outcomes,
        as_of_oldest: v.as_of_oldest,
        body: Body::Table(v.table),
    })
}

/// One fan-out of `query`, with the archives not asked appended as they are.
async fn gather(query: &Query, reach: &Reach, how: &Run<'_>) -> Gathered {
    let mut gathered = how
        .fleet
        .query_watched(
            reach.sources.clone(),
            how.chain,
            query.clone(),
            how.limits,
            how.watch.clone(),
        )
        .await;
    gathered
        .results
        .extend(reach.not_asked.iter().map(|_| None));
    gathered.outcomes.extend(reach.not_asked.iter().cloned());
    gathered
}

fn finish(outcomes: Vec<SourceOutcome>, partial: Partial, body: Body) -> Result<Report, ViewError> {
    let (outcomes, missing) = enforce(partial, outcomes)?;
    let as_of_oldest = outcomes
        .iter()
        .filter(|o| o.status == SourceStatus::Ok)
        .map(|o| o.as_of)
        .min()
        .unwrap_or(0);
    Ok(Report {
        complete: missing == 0,
        outcomes,
        as_of_oldest,
        body,
    })
}
