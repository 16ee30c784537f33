//! The orchestrator above a region: what it asks a regional orchestrator, and how it folds the
//! region's unfinished merge and its archives' outcomes into its own, so the tree answers what a
//! flat fleet would.
//!
//! * **Labels.** An archive reached through a region has the region's fleet entry's labels,
//!   and its own (as the region lists them) for keys the entry does not set: this config is the
//!   authority on what it labels, a region only on the rest. A rollup by labels asks the region
//!   only for the keys its entry does not set ([`asked_keys`]), and fills in the entry's values
//!   itself ([`relabel`]).
//! * **Outcomes.** Every archive reached through a region has its own outcome, named by its path
//!   (`eu-west/prop-0042`), whatever happened to the region: a region that did not answer is
//!   reported archive by archive, from its directory ([`expand`]).
//! * **Trust.** A region may only change its own archives' outcomes and contribution: its answer
//!   is checked against the query like any source's, all parts or none, its overflow marks may
//!   only empty a count, sum or average, its books in a reconciliation are told apart by archive
//!   id against its directory, its outcomes are matched to the archives asked (anything else it
//!   reports is ignored), and its outcomes' texts are cut like a Totebox's.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use psp_core::query::conform;
use psp_core::query::{
    CellRef, Column, Merger, Nonconforming, PartialMerge, Query, QueryResult, ResultBody, Value,
    ValueType, check_marks,
};

use psp_core::{ArchiveDigest, Chain};
use psp_rpc::client::CommandAnswer;

use crate::config::{FleetArchive, PATH_SEPARATOR};
use crate::console::ArchiveStatus;
use crate::fanout::{CommandResults, SourceOutcome, SourceStatus};
use crate::selection::{Refusal, Selector};
use crate::view::labelled_query;

/// The label key that stands for an archive's id in `partial`'s `labels`.
pub const ID_LABEL: &str = "";

/// Most outcomes taken from a region whose directory is not known.
const MAX_UNLISTED: usize = 10_000;

/// The archive id at the end of a path (`eu-west/prop-0042` is `prop-0042`): what a capability
/// names, however many orchestrators the archive is reached through.
pub fn archive_of(path: &str) -> &str {
    path.rsplit(PATH_SEPARATOR).next().unwrap_or(path)
}

/// One archive reached through a region, as its directory lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// Its name at the region (an archive id, or a path through a further region).
    pub id: String,
    /// Its labels: the region entry's, then its own for keys the entry does not set.
    pub labels: BTreeMap<String, String>,
}

/// What one request asks one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionAsk {
    /// The region entry's labels.
    pub labels: BTreeMap<String, String>,
    /// Its archives the request reaches, as the region names them.
    pub select: Selector,
    /// Those archives, from its directory, in order: each gets one outcome. Empty when the
    /// directory is not known yet (the region has not answered since this orchestrator started):
    /// the region's own outcomes are then taken as it reports them.
    pub leaves: Vec<Leaf>,
}

/// The label keys a region is asked for: those of `wanted` its entry does not set.
pub fn asked_keys(wanted: &[String], entry: &BTreeMap<String, String>) -> Vec<String> {
    wanted
        .iter()
        .filter(|k| !entry.contains_key(*k))
        .cloned()
        .collect()
}

/// A region's answer with the `asked` label columns in front turned into one with every
/// `wanted` label column in front, the entry's values filled in; its overflow marks move with
/// their columns. `result` must already conform to the query with `asked` prepended.
pub fn relabel(
    mut result: QueryResult,
    overflows: &[CellRef],
    wanted: &[String],
    asked: &[String],
    entry: &BTreeMap<String, String>,
) -> (QueryResult, Vec<CellRef>) {
    if wanted.len() == asked.len() {
        return (result, overflows.to_vec());
    }
    let inserted = wanted.len() - asked.len();
    let rest = result.columns.split_off(asked.len());
    result.columns = wanted
        .iter()
        .map(|k| Column {
            name: k.clone(),
            value_type: ValueType::Text,
        })
        .chain(rest)
        .collect();
    let arrange = |values: &mut Vec<Value>| {
        let tail = values.split_off(asked.len().min(values.len()));
        let mut asked_values = std::mem::take(values).into_iter();
        for key in wanted {
            let value = match entry.get(key) {
                Some(v) => Value::Text(v.clone()),
                None => asked_values.next().unwrap_or(Value::Null),
            };
            values.push(value);
        }
        values.extend(tail);
    };
    match &mut result.body {
        ResultBody::Groups(groups) => {
            for group in groups.iter_mut() {
                arrange(&mut group.key);
            }
            // The entry's values are the same for every group: the order is unchanged.
        }
        ResultBody::Rows(rows) => rows.iter_mut().for_each(arrange),
    }
    let overflows = overflows
        .iter()
        .map(|c| CellRef {
            row: c.row,
            column: c.column + inserted,
        })
        .collect();
    (result, overflows)
}

/// Splits a region's answer to a reconciliation (groups keyed by the `asked` label values, then
/// the reconciliation's own group-by) into one answer per distinct label prefix, each keyed by
/// the rest, with its overflow marks. `result` must conform to the query with `asked`
/// prepended.
pub fn split_by_labels(
    result: QueryResult,
    overflows: &[CellRef],
    asked: usize,
) -> Vec<(Vec<Value>, QueryResult, Vec<CellRef>)> {
    let marks: BTreeSet<(usize, usize)> = overflows.iter().map(|c| (c.row, c.column)).collect();
    let ResultBody::Groups(groups) = result.body else {
        return Vec::new();
    };
    let columns = result.columns[asked.min(result.columns.len())..].to_vec();
    let mut parts: BTreeMap<Vec<Value>, (Vec<psp_core::query::Group>, Vec<CellRef>)> =
        BTreeMap::new();
    for (g, mut group) in groups.into_iter().enumerate() {
        let rest = group.key.split_off(asked.min(group.key.len()));
        let prefix = std::mem::replace(&mut group.key, rest);
        let part = parts.entry(prefix).or_default();
        let row = part.0.len();
        for column in asked..asked + columns.len() {
            if marks.contains(&(g, column)) {
                part.1.push(CellRef {
                    row,
                    column: column - asked,
                });
            }
        }
        part.0.push(group);
    }
    parts
        .into_iter()
        .map(|(prefix, (groups, marks))| {
            (
                prefix,
                QueryResult {
                    as_of: result.as_of,
                    columns: columns.clone(),
                    // Sorted by the whole key before, so by the rest within one prefix.
                    body: ResultBody::Groups(groups),
                    suppressed_groups: 0,
                    scanned_records: 0,
                },
                marks,
            )
        })
        .collect()
}

/// An outcome a region reported, its texts cut to what a Totebox's may carry (a code to 64
/// bytes, a message to 1,024).
fn bounded_outcome(mut outcome: SourceOutcome) -> SourceOutcome {
    let cut = |text: &mut String, max: usize| {
        *text = crate::pool::bounded(std::mem::take(text), max);
    };
    match &mut outcome.status {
        SourceStatus::Unreachable(why)
        | SourceStatus::Error(why)
        | SourceStatus::Quarantined(why) => cut(why, 1024),
        SourceStatus::Denied { code, message } | SourceStatus::Rejected { code, message } => {
            cut(code, 64);
            cut(message, 1024);
        }
        SourceStatus::Ok | SourceStatus::TimedOut | SourceStatus::Cancelled => {}
    }
    outcome
}

/// Every archive's outcome for a region asked as `ask` under the name `region`: its own report
/// when it answered (`reported`), otherwise `failed` for each archive of its directory (or for
/// the region itself when its directory is not known). Paths are `region/<name>`. An answer the
/// caller set aside (`rejected`) marks each archive the region said answered.
pub fn expand(
    region: &str,
    ask: &RegionAsk,
    reported: Option<Vec<SourceOutcome>>,
    failed: &SourceStatus,
    rejected: Option<&SourceStatus>,
    latency: Duration,
) -> Vec<SourceOutcome> {
    let path = |name: &str| format!("{region}{PATH_SEPARATOR}{name}");
    let Some(reported) = reported else {
        if ask.leaves.is_empty() {
            return vec![SourceOutcome::without_answer(
                region.to_owned(),
                failed.clone(),
                latency,
            )];
        }
        return ask
            .leaves
            .iter()
            .map(|leaf| SourceOutcome::without_answer(path(&leaf.id), failed.clone(), latency))
            .collect();
    };
    // A region reports each archive asked once; what it reports beyond (bounded, so a flood
    // costs little) is matched and dropped. Its texts are cut as a Totebox's are.
    let most = if ask.leaves.is_empty() {
        MAX_UNLISTED
    } else {
        ask.leaves.len().saturating_mul(2).saturating_add(16)
    };
    let mut by_name: BTreeMap<String, SourceOutcome> = BTreeMap::new();
    for outcome in reported.into_iter().take(most) {
        by_name
            .entry(outcome.archive.clone())
            .or_insert_with(|| bounded_outcome(outcome));
    }
    let mut outcomes: Vec<SourceOutcome> = if ask.leaves.is_empty() {
        by_name
            .into_values()
            .map(|mut o| {
                o.archive = path(&crate::pool::bounded(o.archive, 256));
                o
            })
            .collect()
    } else {
        ask.leaves
            .iter()
            .map(|leaf| match by_name.remove(&leaf.id) {
                Some(mut o) => {
                    o.archive = path(&leaf.id);
                    o
                }
                None => SourceOutcome::without_answer(
                    path(&leaf.id),
                    SourceStatus::Error(format!(
                        "the regional orchestrator {region:?} did not report this archive"
                    )),
                    latency,
                ),
            })
            .collect()
    };
    if let Some(rejected) = rejected {
        for o in outcomes.iter_mut().filter(|o| o.status == SourceStatus::Ok) {
            o.status = rejected.clone();
            o.rows = 0;
            o.suppressed_groups = 0;
        }
    }
    outcomes
}

/// What one request asks the region `member` (a fleet entry of kind orchestrator) for a
/// console's `selector`, given its `directory` if known, and the outcomes of its archives the
/// request selects but `chain` does not name (reported, never asked). `None` when nothing of the
/// region is left to ask.
///
/// With the directory known, the archives are resolved here (by id, by label, or all) and the
/// region is asked for exactly those, by id; an id it does not list is refused as any archive
/// outside the tenant is. Without it, the region is asked for the selection as it stands
/// (its own ids, or the labels the entry does not set).
pub fn region_ask(
    member: &FleetArchive,
    directory: Option<&[ArchiveStatus]>,
    selector: &Selector,
    chain: &Chain,
) -> Result<(Option<RegionAsk>, Vec<SourceOutcome>), Refusal> {
    let prefix = format!("{}{PATH_SEPARATOR}", member.id);
    // The ids named below this region, or `None` when the region itself is named.
    let named: Option<Vec<&str>> = match selector {
        Selector::Ids(ids) if !ids.contains(&member.id) => Some(
            ids.iter()
                .filter_map(|id| id.strip_prefix(prefix.as_str()))
                .collect(),
        ),
        _ => None,
    };
    // Labels the entry does not set, for the region's archives to match.
    let below_labels: BTreeMap<String, String> = match selector {
        Selector::Labels(labels) => labels
            .iter()
            .filter(|(k, _)| !member.labels.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        _ => BTreeMap::new(),
    };
    let Some(directory) = directory else {
        let select = match (&named, selector) {
            (Some(ids), _) => Selector::Ids(ids.iter().map(|s| (*s).to_owned()).collect()),
            (None, Selector::Labels(_)) if !below_labels.is_empty() => {
                Selector::Labels(below_labels)
            }
            _ => Selector::All,
        };
        let ask = RegionAsk {
            labels: member.labels.clone(),
            select,
            leaves: Vec::new(),
        };
        return Ok((Some(ask), Vec::new()));
    };
    let effective = |listed: &ArchiveStatus| {
        let mut labels = listed.labels.clone();
        labels.extend(member.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        labels
    };
    let mut leaves: Vec<Leaf> = Vec::new();
    match &named {
        Some(ids) => {
            let by_id: std::collections::HashMap<&str, &ArchiveStatus> =
                directory.iter().map(|a| (a.id.as_str(), a)).collect();
            let mut named = std::collections::HashSet::new();
            for id in ids {
                let listed = by_id
                    .get(id)
                    .ok_or_else(|| Refusal::ArchiveNotInTenant(format!("{prefix}{id}")))?;
                if named.insert(listed.id.as_str()) {
                    leaves.push(Leaf {
                        id: listed.id.clone(),
                        labels: effective(listed),
                    });
                }
            }
        }
        None => {
            for listed in directory {
                let labels = effective(listed);
                if below_labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                    leaves.push(Leaf {
                        id: listed.id.clone(),
                        labels,
                    });
                }
            }
        }
    }
    let (reached, outside): (Vec<Leaf>, Vec<Leaf>) = leaves
        .into_iter()
        .partition(|leaf| chain.reaches(&ArchiveDigest::of(archive_of(&leaf.id))));
    let not_asked = outside
        .iter()
        .map(|leaf| {
            SourceOutcome::without_answer(
                format!("{prefix}{}", leaf.id),
                SourceStatus::Denied {
                    code: "capability.archive-not-in-scope".into(),
                    message: "the capability does not name this archive; it was not asked \
                              (a console names a regional orchestrator's archives by path, \
                              or selects them by label or all)"
                        .into(),
                },
                Duration::ZERO,
            )
        })
        .collect();
    if reached.is_empty() {
        return Ok((None, not_asked));
    }
    let ask = RegionAsk {
        labels: member.labels.clone(),
        select: Selector::Ids(reached.iter().map(|l| l.id.clone()).collect()),
        leaves: reached,
    };
    Ok((Some(ask), not_asked))
}

/// [`expand`] for a command: every archive's outcome with its command answer, when the region
/// reports it answered.
pub fn expand_commands(
    region: &str,
    ask: &RegionAsk,
    reported: Option<CommandResults>,
    failed: &SourceStatus,
    latency: Duration,
) -> CommandResults {
    let Some(reported) = reported else {
        return expand(region, ask, None, failed, None, latency)
            .into_iter()
            .map(|o| (o, None))
            .collect();
    };
    let mut answers: BTreeMap<String, CommandAnswer> = BTreeMap::new();
    let mut outcomes = Vec::with_capacity(reported.len());
    for (outcome, answer) in reported.into_iter().take(MAX_UNLISTED) {
        if let (SourceStatus::Ok, Some(mut answer)) = (&outcome.status, answer)
            && !answers.contains_key(&outcome.archive)
        {
            answer.message = crate::pool::bounded(answer.message, 1024);
            answers.insert(outcome.archive.clone(), answer);
        }
        outcomes.push(outcome);
    }
    let prefix = format!("{region}{PATH_SEPARATOR}");
    expand(region, ask, Some(outcomes), failed, None, latency)
        .into_iter()
        .map(|o| {
            let answer = (o.status == SourceStatus::Ok)
                .then(|| o.archive.strip_prefix(&prefix))
                .flatten()
                .and_then(|name| answers.remove(name));
            // Reported as applied, but with no answer: not shown as applied.
            match answer {
                Some(answer) => (o, Some(answer)),
                None if o.status == SourceStatus::Ok => (
                    SourceOutcome {
                        status: SourceStatus::Error(format!(
                            "the regional orchestrator {region:?} reported no outcome for this archive"
                        )),
                        ..o
                    },
                    None,
                ),
                None => (o, None),
            }
        })
        .collect()
}

/// One archive of a region, with its answer and that answer's overflow marks.
pub type ArchiveBook<'a> = (&'a Leaf, QueryResult, Vec<CellRef>);

/// A regional orchestrator's unfinished merge, with what it was asked.
pub struct RegionParts<'a> {
    /// Its parts, one per set of column types.
    pub parts: Vec<PartialMerge>,
    /// The label keys it was asked for.
    pub asked: &'a [String],
    /// What the request asked of it.
    pub ask: &'a RegionAsk,
}

impl<'a> RegionParts<'a> {
    /// Checks every part against `query` with the asked label columns in front, as one
    /// Totebox's answer is checked, allowing `max_rows` rows or groups per archive asked, and
    /// its overflow marks: all parts or none.
    pub fn checked(&self, query: &Query, max_rows: usize) -> Result<(), Nonconforming> {
        let labelled = labelled_query(query, self.asked);
        let most = max_rows.saturating_mul(self.ask.leaves.len().max(1));
        for part in &self.parts {
            let Some(result) = &part.result else {
                return Err(Nonconforming("a part without a result".into()));
            };
            conform::check(&labelled, result, most)?;
            check_marks(&labelled, result, &part.overflows)?;
        }
        Ok(())
    }

    /// The parts, checked, each with every `wanted` label column in front (the entry's values
    /// filled in), ready to merge.
    pub fn relabelled(
        self,
        query: &Query,
        wanted: &[String],
        max_rows: usize,
    ) -> Result<Vec<(QueryResult, Vec<CellRef>)>, Nonconforming> {
        self.checked(query, max_rows)?;
        Ok(self
            .parts
            .into_iter()
            .filter_map(|p| {
                let result = p.result?;
                Some(relabel(
                    result,
                    &p.overflows,
                    wanted,
                    self.asked,
                    &self.ask.labels,
                ))
            })
            .collect())
    }

    /// The parts of an answer asked with the archive id as its only label column, checked and
    /// split by archive: each archive asked with its own answer and marks. An answer for an
    /// archive that was not asked sets the whole answer aside, and so does a region whose
    /// directory is not known yet (its archives could not be told from anyone else's).
    pub fn by_archive(
        self,
        query: &Query,
        max_rows: usize,
    ) -> Result<Vec<ArchiveBook<'a>>, Nonconforming> {
        if self.ask.leaves.is_empty() {
            return Err(Nonconforming(
                "the regional orchestrator has not listed its archives yet, so its books \
                 cannot be told apart"
                    .into(),
            ));
        }
        if self.asked != [ID_LABEL] {
            return Err(Nonconforming("asked for more than the archive id".into()));
        }
        self.checked(query, max_rows)?;
        let mut split = Vec::new();
        for part in self.parts {
            let Some(result) = part.result else { continue };
            for (prefix, result, marks) in split_by_labels(result, &part.overflows, 1) {
                let leaf = match prefix.first() {
                    Some(Value::Text(id)) => self.ask.leaves.iter().find(|l| l.id == *id),
                    _ => None,
                }
                .ok_or_else(|| {
                    Nonconforming(format!(
                        "answered for {:?}, which it was not asked",
                        prefix.first()
                    ))
                })?;
                split.push((leaf, result, marks));
            }
        }
        Ok(split)
    }
}

/// An unfinished merge in parts, one per set of column types its answers declared, so every
/// value travels as it is (see [`PartialMerge`]).
pub struct Parts {
    query: Query,
    mergers: BTreeMap<Vec<ValueType>, Merger>,
}

impl Parts {
    /// Parts for answers to `query`.
    pub fn new(query: &Query) -> Parts {
        Parts {
            query: query.clone(),
            mergers: BTreeMap::new(),
        }
    }

    /// Folds `answer` (and its overflow marks) into the part of its column types.
    pub fn add_marked(
        &mut self,
        source: usize,
        answer: QueryResult,
        overflowed: &[CellRef],
    ) -> Result<(), Nonconforming> {
        let types = answer.columns.iter().map(|c| c.value_type).collect();
        self.mergers
            .entry(types)
            .or_insert_with(|| Merger::new(&self.query, usize::MAX))
            .add_marked(source, answer, overflowed)
    }

    /// The parts, unfinished.
    pub fn into_parts(self) -> Vec<PartialMerge> {
        self.mergers
            .into_values()
            .map(Merger::into_partial)
            .filter(|p| p.result.is_some())
            .collect()
    }
}
