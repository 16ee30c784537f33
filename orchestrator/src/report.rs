//! Running a viewport end to end: the fan-outs it needs, then the merged table, reconciliation
//! or summary, with one outcome per selected source. The console service answers every `query`
//! and `view` through [`run`]; integrators can call it on their own [`Fleet`].

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use psp_core::Chain;
use psp_core::query::conform::{self, expected_columns};
use psp_core::query::{CellRef, Merger, Nonconforming, PartialMerge, Query, QueryResult, Table};

use crate::config::Partial;
use crate::fanout::{
    Answer, FanOutLimits, Fleet, Member, Source, SourceOutcome, SourceStatus, Watch, Work,
};
use crate::gate::TenantId;
use crate::live::Live;
use crate::tier::{ID_LABEL, Parts, RegionParts, archive_of, asked_keys, expand};
use crate::view::{ViewError, enforce, labelled_query, reject, with_labels};
use crate::viewports::{Book, Entry, Kpi, KpiValue, Reconciliation, Viewport};

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
    /// For a table: the cells whose exact value leaves the 64-bit range (null in the table).
    pub overflows: Vec<CellRef>,
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

/// How a request fans out: whose request, the fleet, its capability, its limits, its partial
/// policy, and the watch its caller steers it with.
pub struct Run<'a> {
    /// The tenant whose request it is (its calls share each Totebox connection fairly).
    pub tenant: TenantId,
    /// The fleet's connection pool.
    pub fleet: &'a Fleet,
    /// The request's capability chain.
    pub chain: &'a Chain,
    /// Time, concurrency and size limits.
    pub limits: FanOutLimits,
    /// Strict or best-effort.
    pub partial: Partial,
    /// Progress and cancellation.
    pub watch: Watch,
    /// Where the view so far is published when a console asks for it (progressive results).
    pub live: Option<std::rc::Rc<Live>>,
}

/// Runs `viewport` over `reach`. Answers are checked against the query sent and merged as they
/// arrive; an answer that does not fit is its source's `rejected` outcome and nothing more.
pub async fn run(viewport: &Viewport, reach: &Reach, how: &Run<'_>) -> Result<Report, ViewError> {
    match viewport {
        Viewport::Rollup { query, labels } => table(query, labels, reach, how).await,
        Viewport::Reconciliation(spec) => reconciliation(spec, reach, how).await,
        Viewport::Summary(kpis) => summary(kpis, reach, how).await,
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
    let max_rows = how.limits.max_rows_per_source;
    // Each answer is checked against `max_rows` on its own (a region's per archive it reaches).
    let merger = RefCell::new(Merger::new(&labelled_query(query, labels), usize::MAX));
    let none = BTreeMap::new();
    let so_far = |_: &[SourceOutcome]| {
        let merged = merger.borrow().clone().finish();
        (Body::Table(merged.table), merged.overflows, None)
    };
    let outcomes = fan(
        query,
        labels,
        reach,
        (how, &so_far),
        |index, returned| match returned {
            // Judged against the query sent, then labelled with the archive's labels (ours, from
            // the config, never the Totebox's), then merged.
            Returned::Totebox(result) => {
                conform::check(query, &result, max_rows)?;
                let source_labels = reach.labels.get(index).unwrap_or(&none);
                merger
                    .borrow_mut()
                    .add(index, with_labels(result, labels, source_labels))
            }
            // Judged against the query with the label columns it was asked for; the labels its
            // entry sets here are ours to fill in.
            Returned::Region(parts) => {
                for (result, marks) in parts.relabelled(query, labels, max_rows)? {
                    merger.borrow_mut().add_marked(index, result, &marks)?;
                }
                Ok(())
            }
        },
    )
    .await;
    let v = crate::view::finish(merger.into_inner(), outcomes, how.partial)?;
    Ok(Report {
        complete: v.complete,
        outcomes: v.outcomes,
        as_of_oldest: v.as_of_oldest,
        body: Body::Table(v.table),
        overflows: v.overflows,
    })
}

/// The merge of `query` over `reach` left unfinished, for an orchestrator above this one (the
/// `partial` method): one answer to the query with each `labels` key as a leading column (the
/// key [`ID_LABEL`] holds the archive's id), and every source's outcome. Always best effort: the
/// caller applies its own partial policy.
pub async fn partial(
    query: &Query,
    labels: &[String],
    reach: &Reach,
    how: &Run<'_>,
) -> (Vec<PartialMerge>, Vec<SourceOutcome>) {
    let max_rows = how.limits.max_rows_per_source;
    let mut parts = Parts::new(&labelled_query(query, labels));
    let none = BTreeMap::new();
    let outcomes = fan(
        query,
        labels,
        reach,
        (how, &|_: &[SourceOutcome]| {
            (Body::Reconciliation(Vec::new()), Vec::new(), None)
        }),
        |index, returned| match returned {
            Returned::Totebox(result) => {
                conform::check(query, &result, max_rows)?;
                let mut source_labels = reach.labels.get(index).unwrap_or(&none).clone();
                if let Some(source) = reach.sources.get(index) {
                    source_labels.insert(ID_LABEL.to_owned(), source.archive.clone());
                }
                parts.add_marked(index, with_labels(result, labels, &source_labels), &[])
            }
            Returned::Region(region) => {
                for (result, marks) in region.relabelled(query, labels, max_rows)? {
                    parts.add_marked(index, result, &marks)?;
                }
                Ok(())
            }
        },
    )
    .await;
    (parts.into_parts(), outcomes)
}

async fn reconciliation(
    spec: &Reconciliation,
    reach: &Reach,
    how: &Run<'_>,
) -> Result<Report, ViewError> {
    let query = spec.query();
    // An archive's entity: its entity label, else its id (the end of its path).
    let entity = |labels: Option<&BTreeMap<String, String>>, archive: &str| {
        match spec.entity_label.as_str() {
            "" => None,
            label => labels.and_then(|l| l.get(label)).cloned(),
        }
        .unwrap_or_else(|| archive_of(archive).to_owned())
    };
    // Regions are asked for each archive's id, so their merge keeps each archive's books
    // apart; its entity is then told from the region's directory, never from what it answers.
    let wanted = vec![ID_LABEL.to_owned()];
    // One merger per entity: an entity whose books span several archives is merged exactly.
    let books: RefCell<BTreeMap<String, Merger>> = RefCell::default();
    let labels_of = labels_by_name(reach);
    let amount = expected_columns(&query).len() - 1;
    // The entries from the books merged so far and the outcomes of the sources ended so far.
    // So far (`pending`), an entity one of whose archives has not ended gets no verdict yet,
    // as one whose archive failed gets none.
    let entries = |books: &BTreeMap<String, Merger>, outcomes: &[SourceOutcome], pending: bool| {
        let mut unanswered: BTreeSet<String> = outcomes
            .iter()
            .filter(|o| o.status != SourceStatus::Ok)
            .map(|o| entity(labels_of.get(o.archive.as_str()).copied(), &o.archive))
            .collect();
        if pending {
            let ended: BTreeSet<&str> = outcomes.iter().map(|o| o.archive.as_str()).collect();
            unanswered.extend(
                labels_of
                    .iter()
                    .filter(|(name, _)| !ended.contains(name.as_str()))
                    .map(|(name, labels)| entity(Some(labels), name)),
            );
        }
        let books: BTreeMap<String, Book> = books
            .iter()
            .map(|(name, merger)| {
                let merged = merger.clone().finish();
                let overflowed = merged
                    .overflows
                    .iter()
                    .filter(|c| c.column == amount)
                    .map(|c| c.row)
                    .collect();
                (
                    name.clone(),
                    Book {
                        table: merged.table,
                        overflowed,
                    },
                )
            })
            .collect();
        spec.reconcile_books(&books, &unanswered)
    };
    let so_far = |outcomes: &[SourceOutcome]| {
        (
            Body::Reconciliation(entries(&books.borrow(), outcomes, true)),
            Vec::new(),
            None,
        )
    };
    let max_rows = how.limits.max_rows_per_source;
    let outcomes = fan(&query, &wanted, reach, (how, &so_far), |index, returned| {
        let source = reach.sources.get(index);
        let archive = source.map_or("", |s| s.archive.as_str());
        let mut books = books.borrow_mut();
        match returned {
            Returned::Totebox(result) => {
                conform::check(&query, &result, max_rows)?;
                books
                    .entry(entity(reach.labels.get(index), archive))
                    .or_insert_with(|| Merger::new(&query, usize::MAX))
                    .add(index, result)
            }
            Returned::Region(parts) => {
                // Checked whole before any of it is merged.
                for (leaf, result, marks) in parts.by_archive(&query, max_rows)? {
                    books
                        .entry(entity(Some(&leaf.labels), &leaf.id))
                        .or_insert_with(|| Merger::new(&query, usize::MAX))
                        .add_marked(index, result, &marks)?;
                }
                Ok(())
            }
        }
    })
    .await;
    let body = Body::Reconciliation(entries(&books.borrow(), &outcomes, false));
    finish(outcomes, how.partial, body)
}

async fn summary(kpis: &[Kpi], reach: &Reach, how: &Run<'_>) -> Result<Report, ViewError> {
    let max_rows = how.limits.max_rows_per_source;
    // One merger per key figure, each fed by its own fan-out.
    let mergers: RefCell<Vec<Merger>> = RefCell::new(
        kpis.iter()
            .map(|kpi| Merger::new(&kpi.query, usize::MAX))
            .collect(),
    );
    // Each figure's fan-out's outcomes so far, for the view so far: every figure is judged
    // against its own sources, and the sources listed as the final view lists them.
    let ended: RefCell<Vec<Vec<SourceOutcome>>> = RefCell::new(vec![Vec::new(); kpis.len()]);
    let so_far_of = |k: usize, outcomes: &[SourceOutcome]| {
        let mut ended = ended.borrow_mut();
        if let Some(slot) = ended.get_mut(k) {
            *slot = outcomes.to_vec();
        }
        let figures = kpis
            .iter()
            .zip(mergers.borrow().iter())
            .zip(ended.iter())
            .map(|((kpi, merger), outcomes)| kpi.figure(merger.clone().finish(), outcomes))
            .collect();
        (
            Body::Summary(figures),
            Vec::new(),
            Some(over_figures(ended.clone())),
        )
    };
    let (mergers, so_far_of) = (&mergers, &so_far_of);
    let figures = futures::future::join_all(kpis.iter().enumerate().map(|(k, kpi)| async move {
        let so_far = |outcomes: &[SourceOutcome]| so_far_of(k, outcomes);
        let outcomes = fan(&kpi.query, &[], reach, (how, &so_far), |index, returned| {
            let mut mergers = mergers.borrow_mut();
            let merger = &mut mergers[k];
            match returned {
                Returned::Totebox(result) => {
                    conform::check(&kpi.query, &result, max_rows)?;
                    merger.add(index, result)
                }
                Returned::Region(parts) => {
                    for (result, marks) in parts.relabelled(&kpi.query, &[], max_rows)? {
                        merger.add_marked(index, result, &marks)?;
                    }
                    Ok(())
                }
            }
        })
        .await;
        let merged = mergers.borrow()[k].clone().finish();
        (kpi.figure(merged, &outcomes), outcomes)
    }))
    .await;
    let (values, per_figure): (Vec<_>, Vec<_>) = figures.into_iter().unzip();
    finish(over_figures(per_figure), how.partial, Body::Summary(values))
}

/// A source's outcome over a whole summary from each figure's: its first failure, else ok.
/// Matched by name: a region whose directory is not known may report its archives in one figure
/// and only itself in another.
fn over_figures(figures: Vec<Vec<SourceOutcome>>) -> Vec<SourceOutcome> {
    let mut outcomes: Vec<SourceOutcome> = Vec::new();
    let mut position: std::collections::HashMap<String, usize> = Default::default();
    for o in figures.into_iter().flatten() {
        let Some(&at) = position.get(&o.archive) else {
            position.insert(o.archive.clone(), outcomes.len());
            outcomes.push(o);
            continue;
        };
        let merged = &mut outcomes[at];
        merged.latency = merged.latency.max(o.latency);
        merged.rows = merged.rows.saturating_add(o.rows);
        merged.suppressed_groups = merged.suppressed_groups.saturating_add(o.suppressed_groups);
        if merged.status == SourceStatus::Ok {
            merged.status = o.status;
            merged.as_of = merged.as_of.min(o.as_of);
        }
    }
    outcomes
}

/// One fan-out of `query` over `reach`: each answer goes to `fold` as it arrives (and is
/// dropped there); an answer `fold` refuses becomes its source's `rejected` outcome. Returns one
/// outcome per source, then the archives not asked, as they are.
async fn fan(
    query: &Query,
    labels: &[String],
    reach: &Reach,
    (how, so_far): (&Run<'_>, &SoFar<'_>),
    mut fold: impl FnMut(usize, Returned<'_>) -> Result<(), Nonconforming>,
) -> Vec<SourceOutcome> {
    let mut arrivals = how.fleet.stream_labelled(
        how.tenant.clone(),
        reach.sources.clone(),
        how.chain,
        Work::Query(query.clone()),
        labels,
        how.limits,
        how.watch.clone(),
    );
    let mut outcomes: Vec<Option<Vec<SourceOutcome>>> = vec![None; reach.sources.len()];
    // The view so far, published when a console asks (progressive results).
    let publish = |outcomes: &[Option<Vec<SourceOutcome>>]| {
        let Some(live) = how.live.as_deref() else {
            return;
        };
        let ended: Vec<SourceOutcome> = outcomes
            .iter()
            .flatten()
            .flatten()
            .chain(&reach.not_asked)
            .cloned()
            .collect();
        let (body, overflows, merged) = so_far(&ended);
        live.publish(Report {
            complete: false,
            as_of_oldest: oldest(&ended),
            outcomes: merged.unwrap_or(ended),
            body,
            overflows,
        });
    };
    loop {
        let asked = async {
            match how.live.as_deref() {
                Some(live) => live.asked().await,
                None => std::future::pending().await,
            }
        };
        let arrival = tokio::select! {
            arrival = arrivals.recv() => match arrival {
                Some(arrival) => arrival,
                None => break,
            },
            () = asked => {
                publish(&outcomes);
                continue;
            }
        };
        let (Some(slot), Some(source)) = (
            outcomes.get_mut(arrival.index),
            reach.sources.get(arrival.index),
        ) else {
            continue;
        };
        let mut outcome = arrival.outcome;
        *slot = Some(match (arrival.answer, &source.member) {
            (Some(Answer::Region(answer)), Member::Region(ask)) => {
                let asked = asked_keys(labels, &ask.labels);
                let parts = RegionParts {
                    parts: answer.parts,
                    asked: &asked,
                    ask,
                };
                let rejected = match fold(arrival.index, Returned::Region(parts)) {
                    Ok(()) => None,
                    Err(why) => {
                        reject(&mut outcome, &why);
                        Some(outcome.status.clone())
                    }
                };
                expand(
                    &source.archive,
                    ask,
                    Some(answer.outcomes),
                    &outcome.status,
                    rejected.as_ref(),
                    outcome.latency,
                )
            }
            (None, Member::Region(ask)) => expand(
                &source.archive,
                ask,
                None,
                &outcome.status,
                None,
                outcome.latency,
            ),
            (Some(Answer::Result(result)), _) => {
                if let Err(why) = fold(arrival.index, Returned::Totebox(result)) {
                    reject(&mut outcome, &why);
                }
                vec![outcome]
            }
            _ => vec![outcome],
        });
        if let Some(live) = how.live.as_deref() {
            live.merged(1);
            // Asked for while this answer was on its way: published with it, now or as soon
            // as the last view is old enough.
            if live.due() {
                publish(&outcomes);
            }
        }
    }
    outcomes
        .into_iter()
        .zip(&reach.sources)
        .flat_map(|(o, source)| {
            o.unwrap_or_else(|| {
                let ended = SourceStatus::Error("the fan-out ended without this source".into());
                match &source.member {
                    Member::Region(ask) => expand(
                        &source.archive,
                        ask,
                        None,
                        &ended,
                        None,
                        std::time::Duration::ZERO,
                    ),
                    Member::Totebox => vec![SourceOutcome::without_answer(
                        source.archive.clone(),
                        ended,
                        std::time::Duration::ZERO,
                    )],
                }
            })
        })
        .chain(reach.not_asked.iter().cloned())
        .collect()
}

/// The view so far from the outcomes of the sources ended so far: the body, for a table its
/// overflowed cells, and the outcomes to show when they are not those (a summary's, over its
/// figures' fan-outs).
type SoFar<'a> = dyn Fn(&[SourceOutcome]) -> (Body, Vec<CellRef>, Option<Vec<SourceOutcome>>) + 'a;

/// The oldest data time among the outcomes that answered (0 when none did).
fn oldest(outcomes: &[SourceOutcome]) -> i64 {
    outcomes
        .iter()
        .filter(|o| o.status == SourceStatus::Ok)
        .map(|o| o.as_of)
        .min()
        .unwrap_or(0)
}

/// What one source's answer gives a fold.
enum Returned<'a> {
    /// A Totebox's answer to the query.
    Totebox(QueryResult),
    /// A regional orchestrator's unfinished merge.
    Region(RegionParts<'a>),
}

/// Each archive's labels by the name its outcome carries (a region's archives by their paths).
fn labels_by_name(reach: &Reach) -> std::collections::HashMap<String, &BTreeMap<String, String>> {
    let mut names = std::collections::HashMap::new();
    for (source, labels) in reach.sources.iter().zip(&reach.labels) {
        match &source.member {
            Member::Totebox => {
                names.insert(source.archive.clone(), labels);
            }
            Member::Region(ask) => {
                for leaf in &ask.leaves {
                    let path = format!(
                        "{}{}{}",
                        source.archive,
                        crate::config::PATH_SEPARATOR,
                        leaf.id
                    );
                    names.insert(path, &leaf.labels);
                }
            }
        }
    }
    names
}

fn finish(outcomes: Vec<SourceOutcome>, partial: Partial, body: Body) -> Result<Report, ViewError> {
    let (outcomes, missing) = enforce(partial, outcomes)?;
    let as_of_oldest = oldest(&outcomes);
    Ok(Report {
        complete: missing == 0,
        outcomes,
        as_of_oldest,
        body,
        overflows: Vec::new(),
    })
}
