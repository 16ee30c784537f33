//! Queries written as text: the console subcommands' arguments and the config's `[[viewports]]`
//! share this small grammar, so a viewport tried on the command line can be pasted into the
//! config unchanged.
//!
//! - A filter term is `field op value` with `op` one of `=`, `!=`, `<`, `<=`, `>`, `>=`;
//!   or `field in a|b|c`; or `field is null`. Several terms must all hold.
//! - A value in quotes (`'x'` or `"x"`) is text; otherwise `true`/`false` are booleans, a whole
//!   number is an int, a number with a point is an exact decimal, and anything else is text.
//! - An aggregate is `count(*)`, `sum(field)`, `min(field)`, `max(field)` or `avg(field)`,
//!   optionally followed by `as name`.
//! - An order key is a column name, optionally followed by `desc` (or `asc`).

use psp_core::query::{
    Aggregate, AggregateFunction, CompareOp, Decimal, Filter, OrderKey, Query, Shape, Value,
};
use serde::Deserialize;

use crate::viewports::{Convention, Kpi, NamedViewport, Reconciliation, Viewport};

/// A query as text (the fields of [`Query`], each in the grammar above).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySpec {
    /// The collection read.
    pub collection: String,
    /// Filter terms, all of which must hold.
    #[serde(default, rename = "where")]
    pub filter: Vec<String>,
    /// Fields returned per record (a rows query); leave empty for an aggregate query.
    #[serde(default)]
    pub fields: Vec<String>,
    /// Group-by fields of an aggregate query.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Aggregates; when present the query is an aggregate query.
    #[serde(default)]
    pub aggregates: Vec<String>,
    /// Order keys, most significant first.
    #[serde(default)]
    pub order: Vec<String>,
    /// At most this many rows after the merge (0: all).
    #[serde(default)]
    pub limit: u64,
}

impl QuerySpec {
    /// The query this text describes, or what is wrong with it.
    pub fn to_query(&self) -> Result<Query, String> {
        if self.collection.is_empty() {
            return Err("a query needs a collection".into());
        }
        let shape = match (self.fields.is_empty(), self.aggregates.is_empty()) {
            (false, false) => {
                return Err("a query returns either fields or aggregates, not both".into());
            }
            (true, true) => return Err("a query needs fields or aggregates".into()),
            (false, true) => {
                if !self.group_by.is_empty() {
                    return Err("group-by needs aggregates".into());
                }
                Shape::Rows(self.fields.clone())
            }
            (true, false) => Shape::Aggregate {
                group_by: self.group_by.clone(),
                aggregates: self
                    .aggregates
                    .iter()
                    .map(|a| aggregate(a))
                    .collect::<Result<_, _>>()?,
            },
        };
        Ok(Query {
            collection: self.collection.clone(),
            filter: filter(&self.filter)?,
            shape,
            order_by: self
                .order
                .iter()
                .map(|o| order_key(o))
                .collect::<Result<_, _>>()?,
            limit: self.limit,
        })
    }
}

/// A viewport as text: a config's `[[viewports]]` entry, or a file given to `orchestrator view`.
///
/// ```toml
/// name = "noi-by-region"
/// [rollup]
/// labels = ["region"]
/// query = { collection = "statements", aggregates = ["sum(noi) as noi"] }
/// ```
///
/// or `[reconciliation]` (the fields of [`ReconciliationSpec`]), or `[[summary]]` entries (the
/// fields of [`KpiSpec`]). Exactly one of the three.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewportSpec {
    /// The viewport's name.
    pub name: String,
    /// A portfolio rollup.
    pub rollup: Option<RollupSpec>,
    /// A cross-entity reconciliation.
    pub reconciliation: Option<ReconciliationSpec>,
    /// An executive summary's key figures.
    pub summary: Option<Vec<KpiSpec>>,
}

/// A rollup as text.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollupSpec {
    /// Archive label keys the groups start with.
    #[serde(default)]
    pub labels: Vec<String>,
    /// The aggregate query.
    pub query: QuerySpec,
}

/// A reconciliation as text.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconciliationSpec {
    /// The ledger collection.
    pub collection: String,
    /// The field naming the other entity.
    pub counterparty: String,
    /// The period field.
    pub period: String,
    /// The currency field.
    pub currency: String,
    /// The amount field.
    pub amount: String,
    /// The archive label naming each entity (default: the archive id).
    #[serde(default)]
    pub entity_label: String,
    /// Which ledger records take part.
    #[serde(default, rename = "where")]
    pub filter: Vec<String>,
    /// `opposite` (a receivable against a payable, the default) or `equal`.
    #[serde(default)]
    pub convention: Option<String>,
    /// Differences up to this are matched (default 0).
    #[serde(default)]
    pub tolerance: Option<String>,
}

/// One key figure as text.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KpiSpec {
    /// Its display name.
    pub name: String,
    /// Its unit.
    #[serde(default)]
    pub unit: String,
    /// One aggregate, no group-by.
    pub query: QuerySpec,
}

impl ViewportSpec {
    /// The viewport this text describes, checked, or what is wrong with it.
    pub fn to_viewport(&self) -> Result<NamedViewport, String> {
        let viewport = match (&self.rollup, &self.reconciliation, &self.summary) {
            (Some(r), None, None) => Viewport::Rollup {
                query: r.query.to_query()?,
                labels: r.labels.clone(),
            },
            (None, Some(r), None) => Viewport::Reconciliation(Reconciliation {
                collection: r.collection.clone(),
                counterparty_field: r.counterparty.clone(),
                period_field: r.period.clone(),
                currency_field: r.currency.clone(),
                amount_field: r.amount.clone(),
                entity_label: r.entity_label.clone(),
                filter: filter(&r.filter)?,
                convention: match r.convention.as_deref() {
                    None | Some("opposite") => Convention::Opposite,
                    Some("equal") => Convention::Equal,
                    Some(other) => {
                        return Err(format!(
                            "convention {other:?}: use \"opposite\" or \"equal\""
                        ));
                    }
                },
                tolerance: match r.tolerance.as_deref() {
                    None => Decimal::new(0, 0).expect("scale 0"),
                    Some(t) => Decimal::parse(t)
                        .ok_or_else(|| format!("tolerance {t:?}: expected a decimal number"))?,
                },
            }),
            (None, None, Some(kpis)) => Viewport::Summary(
                kpis.iter()
                    .map(|k| {
                        Ok(Kpi {
                            name: k.name.clone(),
                            unit: k.unit.clone(),
                            query: k.query.to_query().map_err(|e| format!("{}: {e}", k.name))?,
                        })
                    })
                    .collect::<Result<_, String>>()?,
            ),
            _ => {
                return Err(
                    "a viewport is exactly one of rollup, reconciliation or summary".into(),
                );
            }
        };
        viewport.check()?;
        Ok(NamedViewport {
            name: self.name.clone(),
            viewport,
        })
    }
}

/// The conjunction of `terms` (every record when there are none).
pub fn filter(terms: &[String]) -> Result<Filter, String> {
    let mut parsed = terms
        .iter()
        .map(|t| term(t))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(match parsed.len() {
        0 => Filter::All,
        1 => parsed.remove(0),
        _ => Filter::And(parsed),
    })
}

/// One filter term.
pub fn term(text: &str) -> Result<Filter, String> {
    let text = text.trim();
    let bad = || {
        format!(
            "filter term {text:?}: expected `field op value` (op: = != < <= > >=), `field in a|b` or `field is null`"
        )
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    if let [field, "is", "null"] = words[..] {
        return Ok(Filter::IsNull(field.to_owned()));
    }
    if words.len() >= 3 && words[1] == "in" {
        let rest = text[text.find(" in ").ok_or_else(bad)? + 4..].trim();
        return Ok(Filter::In {
            field: words[0].to_owned(),
            values: rest.split('|').map(|v| value(v.trim())).collect(),
        });
    }
    // Two-character operators first, so `<=` is not read as `<`.
    for (symbol, op) in [
        ("!=", CompareOp::Ne),
        ("<=", CompareOp::Le),
        (">=", CompareOp::Ge),
        ("=", CompareOp::Eq),
        ("<", CompareOp::Lt),
        (">", CompareOp::Gt),
    ] {
        if let Some(at) = text.find(symbol) {
            let field = text[..at].trim();
            let constant = text[at + symbol.len()..].trim();
            if field.is_empty() || constant.is_empty() || field.contains(char::is_whitespace) {
                return Err(bad());
            }
            return Ok(Filter::Compare {
                field: field.to_owned(),
                op,
                value: value(constant),
            });
        }
    }
    Err(bad())
}

/// A constant, typed as the module docs say.
pub fn value(text: &str) -> Value {
    let quoted = |q: char| text.len() >= 2 && text.starts_with(q) && text.ends_with(q);
    if quoted('\'') || quoted('"') {
        return Value::Text(text[1..text.len() - 1].to_owned());
    }
    match text {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Value::Int(i);
    }
    if text.contains('.')
        && let Some(d) = Decimal::parse(text)
    {
        return Value::Decimal(d);
    }
    Value::Text(text.to_owned())
}

/// An aggregate such as `sum(amount) as total`.
pub fn aggregate(text: &str) -> Result<Aggregate, String> {
    let bad = || {
        format!(
            "aggregate {text:?}: expected count(*), sum|min|max|avg(field), optionally `as name`"
        )
    };
    let (call, name) = match text.split_once(" as ") {
        Some((call, name)) => (call.trim(), Some(name.trim())),
        None => (text.trim(), None),
    };
    let (function, rest) = call.split_once('(').ok_or_else(bad)?;
    let field = rest.strip_suffix(')').ok_or_else(bad)?.trim();
    let function = match function.trim() {
        "count" => AggregateFunction::Count,
        "sum" => AggregateFunction::Sum,
        "min" => AggregateFunction::Min,
        "max" => AggregateFunction::Max,
        "avg" => AggregateFunction::Avg,
        _ => return Err(bad()),
    };
    let aggregate = match (function, field) {
        (AggregateFunction::Count, "*" | "") => Aggregate::count(),
        (_, "*" | "") => return Err(bad()),
        (f, field) => Aggregate::of(f, field),
    };
    Ok(match name {
        Some("") => return Err(bad()),
        Some(name) => aggregate.named(name),
        None => aggregate,
    })
}

/// An order key such as `noi desc`.
pub fn order_key(text: &str) -> Result<OrderKey, String> {
    match text.split_whitespace().collect::<Vec<_>>()[..] {
        [column] | [column, "asc"] => Ok(OrderKey {
            column: column.to_owned(),
            descending: false,
        }),
        [column, "desc"] => Ok(OrderKey {
            column: column.to_owned(),
            descending: true,
        }),
        _ => Err(format!(
            "order key {text:?}: expected `column`, `column asc` or `column desc`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_read_as_documented() {
        assert_eq!(
            term("amount >= 10.50").unwrap(),
            Filter::Compare {
                field: "amount".into(),
                op: CompareOp::Ge,
                value: Value::Decimal(Decimal::new(1050, 2).unwrap())
            }
        );
        assert_eq!(
            term("period = '2024'").unwrap(),
            Filter::compare("period", CompareOp::Eq, "2024")
        );
        assert_eq!(
            term("sqft<100").unwrap(),
            Filter::compare("sqft", CompareOp::Lt, 100i64)
        );
        assert_eq!(
            term("region in north | south").unwrap(),
            Filter::In {
                field: "region".into(),
                values: vec!["north".into(), "south".into()]
            }
        );
        assert_eq!(term("end is null").unwrap(), Filter::IsNull("end".into()));
        for bad in ["", "amount", "= 3", "a b = 3", "amount >"] {
            assert!(term(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn aggregates_and_order_keys() {
        assert_eq!(aggregate("count(*)").unwrap(), Aggregate::count());
        assert_eq!(
            aggregate("sum(noi) as noi").unwrap(),
            Aggregate::of(AggregateFunction::Sum, "noi").named("noi")
        );
        for bad in ["sum(*)", "median(x)", "sum x", "sum(x) as "] {
            assert!(aggregate(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(order_key("noi desc").unwrap().descending);
        assert!(order_key("noi sideways").is_err());
    }

    #[test]
    fn a_spec_is_rows_or_aggregates() {
        let spec = QuerySpec {
            collection: "statements".into(),
            aggregates: vec!["sum(noi) as noi".into()],
            group_by: vec!["period".into()],
            order: vec!["noi desc".into()],
            limit: 3,
            ..QuerySpec::default()
        };
        let q = spec.to_query().unwrap();
        assert_eq!(q.limit, 3);
        assert!(matches!(q.shape, Shape::Aggregate { .. }));
        let both = QuerySpec {
            fields: vec!["period".into()],
            ..spec.clone()
        };
        assert!(both.to_query().is_err());
        let neither = QuerySpec {
            aggregates: vec![],
            ..spec
        };
        assert!(neither.to_query().is_err());
    }
}
