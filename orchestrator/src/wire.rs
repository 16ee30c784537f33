//! Conversions between `schema/orchestrator.capnp` and the Rust types, shared by the service
//! (which reads requests and writes reports) and the console (which does the opposite), so the
//! two sides cannot drift apart.

use std::time::Duration;

use capnp::text_list;
use psp_core::query::wire::{
    read_filter_alone, read_query, read_value, type_from_wire, type_to_wire, write_filter,
    write_query, write_value,
};
use psp_core::query::{CellRef, Column, Decimal, Table, Value};
use psp_rpc::client::CommandAnswer;
use psp_rpc::limits::CallError;
use psp_schema::orchestrator_capnp::{
    self as wire, archive_selector, command_result, source_outcome, view, viewport,
};

use crate::console::ArchiveStatus;
use crate::fanout::{Health, SourceOutcome, SourceStatus};
use crate::report::{Body, Report};
use crate::selection::Selector;
use crate::viewports::{Convention, Entry, Kpi, KpiValue, MatchStatus, NamedViewport, Viewport};

/// An error with a stable code, as a capnp error (`"code: message"`).
pub fn refuse(code: &str, message: impl std::fmt::Display) -> capnp::Error {
    CallError::new(code, message.to_string()).to_capnp()
}

fn text(t: capnp::Result<capnp::text::Reader<'_>>) -> capnp::Result<String> {
    Ok(t?.to_string()?)
}

fn texts(list: capnp::Result<text_list::Reader<'_>>) -> capnp::Result<Vec<String>> {
    list?.iter().map(text).collect()
}

fn set_texts(mut list: text_list::Builder<'_>, items: &[String]) {
    for (i, item) in items.iter().enumerate() {
        list.set(i as u32, item);
    }
}

fn value(r: capnp::Result<psp_schema::query_capnp::value::Reader<'_>>) -> capnp::Result<Value> {
    read_value(r?).map_err(|e| refuse(e.code(), e))
}

/// Reads an archive selector.
pub fn read_selector(reader: archive_selector::Reader<'_>) -> capnp::Result<Selector> {
    Ok(match reader.which()? {
        archive_selector::All(()) => Selector::All,
        archive_selector::Ids(ids) => Selector::Ids(texts(ids)?),
        archive_selector::Labels(labels) => Selector::Labels(
            labels?
                .iter()
                .map(|l| Ok((text(l.get_key())?, text(l.get_value())?)))
                .collect::<capnp::Result<_>>()?,
        ),
    })
}

/// Writes an archive selector.
pub fn write_selector(selector: &Selector, mut b: archive_selector::Builder<'_>) {
    match selector {
        Selector::All => b.set_all(()),
        Selector::Ids(ids) => set_texts(b.init_ids(ids.len() as u32), ids),
        Selector::Labels(labels) => {
            let mut list = b.init_labels(labels.len() as u32);
            for (i, (k, v)) in labels.iter().enumerate() {
                let mut l = list.reborrow().get(i as u32);
                l.set_key(k);
                l.set_value(v);
            }
        }
    }
}

/// Reads a tenant's archive listing (`fleet()`'s answer).
pub fn read_archives(
    list: capnp::struct_list::Reader<'_, psp_schema::orchestrator_capnp::archive_status::Owned>,
) -> capnp::Result<Vec<ArchiveStatus>> {
    list.iter()
        .map(|a| {
            Ok(ArchiveStatus {
                id: text(a.get_id())?,
                key: text(a.get_key())?,
                labels: a
                    .get_labels()?
                    .iter()
                    .map(|l| Ok((text(l.get_key())?, text(l.get_value())?)))
                    .collect::<capnp::Result<_>>()?,
                health: match a.get_health()? {
                    psp_schema::orchestrator_capnp::Health::Unknown => Health::Unknown,
                    psp_schema::orchestrator_capnp::Health::Up => Health::Up,
                    psp_schema::orchestrator_capnp::Health::Down => Health::Down,
                    psp_schema::orchestrator_capnp::Health::Quarantined => Health::Quarantined,
                },
                latency: Duration::from_micros(a.get_latency_micros()),
                last_seen: a.get_last_seen(),
            })
        })
        .collect()
}

/// Writes one archive of a tenant's listing.
pub fn write_archive(a: &ArchiveStatus, mut entry: wire::archive_status::Builder<'_>) {
    entry.set_id(&a.id);
    entry.set_key(&a.key);
    entry.set_health(match a.health {
        Health::Unknown => wire::Health::Unknown,
        Health::Up => wire::Health::Up,
        Health::Down => wire::Health::Down,
        Health::Quarantined => wire::Health::Quarantined,
    });
    entry.set_latency_micros(a.latency.as_micros() as u64);
    entry.set_last_seen(a.last_seen);
    let mut labels = entry.init_labels(a.labels.len() as u32);
    for (j, (k, v)) in a.labels.iter().enumerate() {
        let mut label = labels.reborrow().get(j as u32);
        label.set_key(k);
        label.set_value(v);
    }
}

/// Writes one source's outcome.
pub fn write_outcome(o: &SourceOutcome, mut b: source_outcome::Builder<'_>) {
    b.set_archive(&o.archive);
    b.set_latency_micros(o.latency.as_micros() as u64);
    b.set_as_of(o.as_of);
    b.set_rows(o.rows);
    b.set_suppressed_groups(o.suppressed_groups);
    let mut status = b.get_status();
    match &o.status {
        SourceStatus::Ok => status.set_ok(()),
        SourceStatus::TimedOut => status.set_timed_out(()),
        SourceStatus::Unreachable(why) => status.set_unreachable(why),
        SourceStatus::Denied { code, message } => {
            let mut d = status.init_denied();
            d.set_code(code);
            d.set_message(message);
        }
        SourceStatus::Error(why) => status.set_error(why),
        SourceStatus::Quarantined(why) => status.set_quarantined(why),
        SourceStatus::Cancelled => status.set_cancelled(()),
        SourceStatus::Rejected { code, message } => {
            let mut d = status.init_rejected();
            d.set_code(code);
            d.set_message(message);
        }
    }
}

/// Reads one source's outcome.
pub fn read_outcome(o: source_outcome::Reader<'_>) -> capnp::Result<SourceOutcome> {
    use source_outcome::status;
    let status = match o.get_status().which()? {
        status::Ok(()) => SourceStatus::Ok,
        status::TimedOut(()) => SourceStatus::TimedOut,
        status::Unreachable(why) => SourceStatus::Unreachable(text(why)?),
        status::Denied(d) => {
            let d = d?;
            SourceStatus::Denied {
                code: text(d.get_code())?,
                message: text(d.get_message())?,
            }
        }
        status::Error(why) => SourceStatus::Error(text(why)?),
        status::Cancelled(()) => SourceStatus::Cancelled,
        status::Quarantined(why) => SourceStatus::Quarantined(text(why)?),
        status::Rejected(d) => {
            let d = d?;
            SourceStatus::Rejected {
                code: text(d.get_code())?,
                message: text(d.get_message())?,
            }
        }
    };
    Ok(SourceOutcome {
        archive: text(o.get_archive())?,
        status,
        latency: Duration::from_micros(o.get_latency_micros()),
        as_of: o.get_as_of(),
        rows: o.get_rows(),
        suppressed_groups: o.get_suppressed_groups(),
    })
}

/// Writes a report as a `View`.
pub fn write_report(r: &Report, mut b: view::Builder<'_>) {
    b.set_complete(r.complete);
    b.set_as_of_oldest(r.as_of_oldest);
    let mut outcomes = b.reborrow().init_outcomes(r.outcomes.len() as u32);
    for (i, o) in r.outcomes.iter().enumerate() {
        write_outcome(o, outcomes.reborrow().get(i as u32));
    }
    let body = b.init_body();
    match &r.body {
        Body::Table(t) => write_table(t, &r.overflows, body.init_table()),
        Body::Reconciliation(entries) => {
            let mut list = body
                .init_reconciliation()
                .init_entries(entries.len() as u32);
            for (i, e) in entries.iter().enumerate() {
                let mut b = list.reborrow().get(i as u32);
                b.set_left(&e.left);
                b.set_right(&e.right);
                write_value(e.period.as_ref(), b.reborrow().init_period());
                b.set_currency(match &e.currency {
                    Value::Text(t) => t.as_str(),
                    _ => "",
                });
                write_value(e.left_amount.as_ref(), b.reborrow().init_left_amount());
                write_value(e.right_amount.as_ref(), b.reborrow().init_right_amount());
                write_value(e.difference.as_ref(), b.reborrow().init_difference());
                b.set_overflowed(e.overflowed);
                b.set_status(match e.status {
                    MatchStatus::Matched => wire::MatchStatus::Matched,
                    MatchStatus::Mismatched => wire::MatchStatus::Mismatched,
                    MatchStatus::LeftOnly => wire::MatchStatus::LeftOnly,
                    MatchStatus::RightOnly => wire::MatchStatus::RightOnly,
                    MatchStatus::Unknown => wire::MatchStatus::Unknown,
                });
            }
        }
        Body::Summary(values) => {
            let mut list = body.init_summary().init_kpis(values.len() as u32);
            for (i, k) in values.iter().enumerate() {
                let mut b = list.reborrow().get(i as u32);
                b.set_name(&k.name);
                b.set_unit(&k.unit);
                b.set_as_of_oldest(k.as_of_oldest);
                b.set_overflowed(k.overflowed);
                write_value(k.value.as_ref(), b.reborrow().init_value());
                set_texts(
                    b.reborrow().init_sources(k.sources.len() as u32),
                    &k.sources,
                );
                set_texts(b.init_missing(k.missing.len() as u32), &k.missing);
            }
        }
    }
}

/// Writes a list of cells (a table's overflows, or a partial merge's).
pub fn write_cells(
    cells: &[CellRef],
    mut list: capnp::struct_list::Builder<'_, wire::cell::Owned>,
) {
    for (i, c) in cells.iter().enumerate() {
        let mut cell = list.reborrow().get(i as u32);
        cell.set_row(u32::try_from(c.row).unwrap_or(u32::MAX));
        cell.set_column(u32::try_from(c.column).unwrap_or(u32::MAX));
    }
}

/// Reads a list of cells.
pub fn read_cells(list: capnp::struct_list::Reader<'_, wire::cell::Owned>) -> Vec<CellRef> {
    list.iter()
        .map(|c| CellRef {
            row: c.get_row() as usize,
            column: c.get_column() as usize,
        })
        .collect()
}

fn write_table(t: &Table, overflows: &[CellRef], mut b: wire::table::Builder<'_>) {
    write_cells(
        overflows,
        b.reborrow().init_overflows(overflows.len() as u32),
    );
    let mut columns = b.reborrow().init_columns(t.columns.len() as u32);
    for (i, c) in t.columns.iter().enumerate() {
        let mut column = columns.reborrow().get(i as u32);
        column.set_name(&c.name);
        column.set_type(type_to_wire(c.value_type));
    }
    let mut rows = b.init_rows(t.rows.len() as u32);
    for (i, row) in t.rows.iter().enumerate() {
        let mut values = rows.reborrow().get(i as u32).init_values(row.len() as u32);
        for (j, v) in row.iter().enumerate() {
            write_value(v.as_ref(), values.reborrow().get(j as u32));
        }
    }
}

/// Reads a `View` into a report.
pub fn read_report(v: view::Reader<'_>) -> capnp::Result<Report> {
    let outcomes = v
        .get_outcomes()?
        .iter()
        .map(read_outcome)
        .collect::<capnp::Result<_>>()?;
    let mut overflows = Vec::new();
    let body = match v.get_body().which()? {
        view::body::Table(t) => {
            let t = t?;
            overflows = read_cells(t.get_overflows()?);
            let columns = t
                .get_columns()?
                .iter()
                .map(|c| {
                    Ok(Column {
                        name: text(c.get_name())?,
                        value_type: type_from_wire(c.get_type()?),
                    })
                })
                .collect::<capnp::Result<_>>()?;
            let rows = t
                .get_rows()?
                .iter()
                .map(|row| row.get_values()?.iter().map(|v| value(Ok(v))).collect())
                .collect::<capnp::Result<_>>()?;
            Body::Table(Table { columns, rows })
        }
        view::body::Reconciliation(r) => Body::Reconciliation(
            r?.get_entries()?
                .iter()
                .map(|e| {
                    Ok(Entry {
                        left: text(e.get_left())?,
                        right: text(e.get_right())?,
                        period: value(e.get_period())?,
                        currency: Value::Text(text(e.get_currency())?),
                        left_amount: value(e.get_left_amount())?,
                        right_amount: value(e.get_right_amount())?,
                        difference: value(e.get_difference())?,
                        overflowed: e.get_overflowed(),
                        status: match e.get_status()? {
                            wire::MatchStatus::Matched => MatchStatus::Matched,
                            wire::MatchStatus::Mismatched => MatchStatus::Mismatched,
                            wire::MatchStatus::LeftOnly => MatchStatus::LeftOnly,
                            wire::MatchStatus::RightOnly => MatchStatus::RightOnly,
                            wire::MatchStatus::Unknown => MatchStatus::Unknown,
                        },
                    })
                })
                .collect::<capnp::Result<_>>()?,
        ),
        view::body::Summary(s) => Body::Summary(
            s?.get_kpis()?
                .iter()
                .map(|k| {
                    Ok(KpiValue {
                        name: text(k.get_name())?,
                        value: value(k.get_value())?,
                        unit: text(k.get_unit())?,
                        sources: texts(k.get_sources())?,
                        missing: texts(k.get_missing())?,
                        as_of_oldest: k.get_as_of_oldest(),
                        overflowed: k.get_overflowed(),
                    })
                })
                .collect::<capnp::Result<_>>()?,
        ),
    };
    Ok(Report {
        complete: v.get_complete(),
        outcomes,
        as_of_oldest: v.get_as_of_oldest(),
        body,
        overflows,
    })
}

/// Writes a viewport.
pub fn write_viewport(v: &NamedViewport, mut b: viewport::Builder<'_>) {
    b.set_name(&v.name);
    match &v.viewport {
        Viewport::Rollup { query, labels } => {
            let mut r = b.init_rollup();
            write_query(query, r.reborrow().init_query());
            set_texts(r.init_group_by_labels(labels.len() as u32), labels);
        }
        Viewport::Reconciliation(spec) => {
            let mut r = b.init_reconciliation();
            r.set_collection(&spec.collection);
            r.set_counterparty_field(&spec.counterparty_field);
            r.set_period_field(&spec.period_field);
            r.set_currency_field(&spec.currency_field);
            r.set_amount_field(&spec.amount_field);
            r.set_entity_label(&spec.entity_label);
            write_filter(&spec.filter, r.reborrow().init_filter());
            r.set_convention(match spec.convention {
                Convention::Opposite => wire::MatchConvention::Opposite,
                Convention::Equal => wire::MatchConvention::Equal,
            });
            let mut t = r.init_tolerance();
            t.set_units(spec.tolerance.units());
            t.set_scale(spec.tolerance.scale());
        }
        Viewport::Summary(kpis) => {
            let mut list = b.init_summary().init_kpis(kpis.len() as u32);
            for (i, k) in kpis.iter().enumerate() {
                let mut b = list.reborrow().get(i as u32);
                b.set_name(&k.name);
                b.set_unit(&k.unit);
                write_query(&k.query, b.init_query());
            }
        }
    }
}

/// Reads a viewport and checks it (`viewport.invalid` when it cannot be computed).
pub fn read_viewport(r: viewport::Reader<'_>) -> capnp::Result<NamedViewport> {
    let query = |q| read_query(q).map_err(|e| refuse(e.code(), e));
    let viewport = match r.which()? {
        viewport::Rollup(rollup) => {
            let rollup = rollup?;
            Viewport::Rollup {
                query: query(rollup.get_query()?)?,
                labels: texts(rollup.get_group_by_labels())?,
            }
        }
        viewport::Reconciliation(spec) => {
            let spec = spec?;
            let filter = if spec.has_filter() {
                read_filter_alone(spec.get_filter()?).map_err(|e| refuse(e.code(), e))?
            } else {
                psp_core::query::Filter::All
            };
            let tolerance = if spec.has_tolerance() {
                let t = spec.get_tolerance()?;
                Decimal::new(t.get_units(), t.get_scale())
                    .ok_or_else(|| refuse("viewport.invalid", "a tolerance's scale is 0 to 18"))?
            } else {
                Decimal::new(0, 0).expect("scale 0")
            };
            Viewport::Reconciliation(crate::viewports::Reconciliation {
                collection: text(spec.get_collection())?,
                counterparty_field: text(spec.get_counterparty_field())?,
                period_field: text(spec.get_period_field())?,
                currency_field: text(spec.get_currency_field())?,
                amount_field: text(spec.get_amount_field())?,
                entity_label: text(spec.get_entity_label())?,
                filter,
                convention: match spec.get_convention()? {
                    wire::MatchConvention::Opposite => Convention::Opposite,
                    wire::MatchConvention::Equal => Convention::Equal,
                },
                tolerance,
            })
        }
        viewport::Summary(summary) => Viewport::Summary(
            summary?
                .get_kpis()?
                .iter()
                .map(|k| {
                    Ok(Kpi {
                        name: text(k.get_name())?,
                        query: query(k.get_query()?)?,
                        unit: text(k.get_unit())?,
                    })
                })
                .collect::<capnp::Result<_>>()?,
        ),
    };
    viewport
        .check()
        .map_err(|why| refuse("viewport.invalid", why))?;
    Ok(NamedViewport {
        name: text(r.get_name())?,
        viewport,
    })
}

/// Writes one archive's answer to a command.
pub fn write_command_result(
    o: &SourceOutcome,
    answer: Option<&CommandAnswer>,
    mut b: command_result::Builder<'_>,
) {
    write_outcome(o, b.reborrow().init_source());
    if let Some(a) = answer {
        let mut out = b.init_outcome();
        out.set_status(if a.applied {
            psp_schema::totebox_capnp::CommandStatus::Applied
        } else {
            psp_schema::totebox_capnp::CommandStatus::Replayed
        });
        out.set_message(&a.message);
        out.set_detail(&a.detail);
        out.set_as_of(a.as_of);
    }
}

/// Reads one archive's answer to a command.
pub fn read_command_result(
    r: command_result::Reader<'_>,
) -> capnp::Result<(SourceOutcome, Option<CommandAnswer>)> {
    let source = read_outcome(r.get_source()?)?;
    let answer = if source.status == SourceStatus::Ok && r.has_outcome() {
        let o = r.get_outcome()?;
        Some(CommandAnswer {
            applied: o.get_status()? == psp_schema::totebox_capnp::CommandStatus::Applied,
            message: text(o.get_message())?,
            detail: o.get_detail()?.to_vec(),
            as_of: o.get_as_of(),
        })
    } else {
        None
    };
    Ok((source, answer))
}
