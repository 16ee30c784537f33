//! Charts drawn on the server as SVG (the `svg` crate writes the document and escapes every
//! text node): bars by group, or a line over periods, from a merged table. No script draws
//! anything; a label from the network is only ever a text node.

use psp_core::query::{Table, Value};
use svg::Document;
use svg::node::element::{Line, Polyline, Rectangle, Text, Title};

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 240.0;
/// Room for the value axis on the left and the labels below.
const LEFT: f64 = 72.0;
const BOTTOM: f64 = 48.0;
const TOP: f64 = 12.0;
/// At most this many bars or points are drawn; the table beside the chart has every row.
const MOST: usize = 60;

/// A number to plot (decimals and ints exactly as far as a float goes); `None` for the rest.
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Decimal(d) => Some(d.to_f64()),
        Value::Float(f) if f.is_finite() => Some(*f),
        _ => None,
    }
}

/// Whether a column holds periods (`2026-10`, or a field named like one): drawn as a line.
fn periods(name: &str, values: &[&Value]) -> bool {
    name.contains("period")
        || name.contains("month")
        || (!values.is_empty()
            && values.iter().all(|v| match v {
                Value::Text(t) => {
                    t.len() == 7
                        && t.as_bytes()[4] == b'-'
                        && t.replace('-', "").bytes().all(|b| b.is_ascii_digit())
                }
                _ => false,
            }))
}

/// The chart of `table`: one bar (or point) per row, labelled by its group columns (`keys` of
/// them), valued by its first numeric column after them. `None` when there is nothing to plot.
pub fn chart(table: &Table, keys: usize) -> Option<String> {
    let value_column =
        (keys..table.columns.len()).find(|&c| table.columns[c].value_type.is_numeric())?;
    let mut rows: Vec<(String, f64)> = table
        .rows
        .iter()
        .filter_map(|row| {
            let label: Vec<String> = row[..keys.min(row.len())]
                .iter()
                .map(crate::render::cell)
                .collect();
            Some((label.join(" · "), number(row.get(value_column)?)?))
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let name = &table.columns[value_column].name;
    let firsts: Vec<&Value> = table.rows.iter().filter_map(|r| r.first()).collect();
    let line = keys == 1 && rows.len() >= 3 && periods(&table.columns[0].name, &firsts);
    Some(if line {
        // Periods read left to right, oldest first; the latest are drawn.
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let latest = rows.split_off(rows.len().saturating_sub(MOST));
        line_chart(name, &latest)
    } else {
        // In the table's order (as the query orders it); the first are drawn.
        rows.truncate(MOST);
        bar_chart(name, &rows)
    })
}

/// How many leading columns of `table` are its group keys, which label its bars. A rollup
/// lists its keys and then its figures, but a table does not say where one ends: text columns
/// are keys, and past them a number may still be one (a floor, a year). Rows of a grouped
/// rollup are unique by their keys, and an ungrouped one has a single row, so the keys are the
/// shortest run of leading columns, at least the text ones, that tells every row apart.
pub fn key_columns(table: &Table) -> usize {
    let text = table
        .columns
        .iter()
        .position(|c| c.value_type.is_numeric())
        .unwrap_or(table.columns.len());
    if table.rows.len() < 2 {
        return text;
    }
    let tells_apart = |k: usize| {
        let mut seen = std::collections::HashSet::new();
        table.rows.iter().all(|row| {
            let key: Vec<String> = row.iter().take(k).map(crate::render::cell).collect();
            seen.insert(key)
        })
    };
    // At least one figure stays to plot.
    (text.max(1)..table.columns.len())
        .find(|&k| tells_apart(k))
        .unwrap_or(text)
}

/// The value axis: from the smallest value (or 0) to the largest (or 0).
fn scale(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let low = values.clone().fold(0.0_f64, f64::min);
    let high = values.fold(0.0_f64, f64::max);
    if (high - low).abs() < f64::EPSILON {
        (low, low + 1.0)
    } else {
        (low, high)
    }
}

fn frame(name: &str, low: f64, high: f64) -> Document {
    let y = |v: f64| TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - (v - low) / (high - low));
    Document::new()
        .set("viewBox", (0, 0, WIDTH, HEIGHT))
        .set("class", "chart")
        .set("role", "img")
        .add(Title::new(name))
        .add(
            Text::new(name)
                .set("x", WIDTH - 8.0)
                .set("y", TOP + 10.0)
                .set("text-anchor", "end")
                .set("class", "caption"),
        )
        .add(
            Line::new()
                .set("x1", LEFT)
                .set("x2", WIDTH)
                .set("y1", y(0.0_f64.clamp(low, high)))
                .set("y2", y(0.0_f64.clamp(low, high)))
                .set("class", "axis"),
        )
        .add(
            Text::new(format!("{high:.0}"))
                .set("x", LEFT - 6.0)
                .set("y", TOP + 10.0)
                .set("text-anchor", "end")
                .set("class", "tick"),
        )
        .add(
            Text::new(format!("{low:.0}"))
                .set("x", LEFT - 6.0)
                .set("y", HEIGHT - BOTTOM)
                .set("text-anchor", "end")
                .set("class", "tick"),
        )
}

fn bar_chart(name: &str, rows: &[(String, f64)]) -> String {
    let (low, high) = scale(rows.iter().map(|r| r.1));
    let y = |v: f64| TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - (v - low) / (high - low));
    let slot = (WIDTH - LEFT) / rows.len() as f64;
    let mut document = frame(name, low, high);
    for (i, (label, value)) in rows.iter().enumerate() {
        let (top, bottom) = (y(value.max(0.0)), y(value.min(0.0)));
        let x = LEFT + slot * i as f64;
        document = document
            .add(
                Rectangle::new()
                    .set("x", x + slot * 0.15)
                    .set("y", top)
                    .set("width", slot * 0.7)
                    .set("height", (bottom - top).max(0.5))
                    .set("class", "bar")
                    .add(Title::new(format!("{label}: {value}"))),
            )
            .add(
                Text::new(label.clone())
                    .set("x", x + slot / 2.0)
                    .set("y", HEIGHT - BOTTOM + 16.0)
                    .set("text-anchor", "middle")
                    .set("class", "label"),
            );
    }
    document.to_string()
}

fn line_chart(name: &str, points: &[(String, f64)]) -> String {
    let (low, high) = scale(points.iter().map(|p| p.1));
    let y = |v: f64| TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - (v - low) / (high - low));
    let step = (WIDTH - LEFT - 16.0) / (points.len().max(2) - 1) as f64;
    let x = |i: usize| LEFT + 8.0 + step * i as f64;
    let path: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{:.1},{:.1}", x(i), y(p.1)))
        .collect();
    let mut document = frame(name, low, high).add(
        Polyline::new()
            .set("points", path.join(" "))
            .set("class", "line"),
    );
    // The first and last periods, and every sixth between, are named below the axis.
    for (i, (label, _)) in points.iter().enumerate() {
        if i == 0 || i + 1 == points.len() || i % 6 == 0 {
            document = document.add(
                Text::new(label.clone())
                    .set("x", x(i))
                    .set("y", HEIGHT - BOTTOM + 16.0)
                    .set("text-anchor", "middle")
                    .set("class", "label"),
            );
        }
    }
    document.to_string()
}

#[cfg(test)]
mod tests {
    use psp_core::query::{Column, Decimal, ValueType};

    use super::*;

    fn table(keys: &[&str]) -> Table {
        Table {
            columns: vec![
                Column {
                    name: "region".into(),
                    value_type: ValueType::Text,
                },
                Column {
                    name: "noi".into(),
                    value_type: ValueType::Decimal,
                },
            ],
            rows: keys
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    vec![
                        Value::from(*k),
                        Value::Decimal(Decimal::new(100 * (i as i64 + 1), 2).unwrap()),
                    ]
                })
                .collect(),
        }
    }

    #[test]
    fn a_label_from_the_network_is_text_in_the_chart_never_markup() {
        let svg = chart(&table(&["north", "<script>alert(1)</script>"]), 1).unwrap();
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;"), "{svg}");
        assert!(svg.contains("class=\"bar\""));
    }

    fn numbers(columns: &[&str], rows: &[&[i64]]) -> Table {
        Table {
            columns: columns
                .iter()
                .map(|name| Column {
                    name: (*name).into(),
                    value_type: ValueType::Int,
                })
                .collect(),
            rows: rows
                .iter()
                .map(|r| r.iter().map(|v| Value::Int(*v)).collect())
                .collect(),
        }
    }

    #[test]
    fn a_numeric_group_key_labels_the_bars_and_is_not_plotted() {
        // By floor: the floors tell the rows apart.
        let floors = numbers(&["floor", "noi"], &[&[1, 500], &[2, 700], &[3, 650]]);
        assert_eq!(key_columns(&floors), 1);
        let svg = chart(&floors, key_columns(&floors)).unwrap();
        assert_eq!(svg.matches("class=\"label\"").count(), 3, "{svg}");
        for floor in ["1", "2", "3"] {
            assert!(svg.contains(&format!("\n{floor}\n</text>")), "{svg}");
        }
        assert!(svg.contains("noi"), "the figure is plotted: {svg}");
        // By year and month: years repeat, so both are keys.
        let months = numbers(
            &["year", "month", "noi"],
            &[&[2026, 9, 5], &[2026, 10, 6], &[2025, 10, 4]],
        );
        assert_eq!(key_columns(&months), 2);
        // Text keys first, then a numeric one.
        let mut mixed = table(&["north", "north", "south"]);
        mixed.columns.insert(
            1,
            Column {
                name: "floor".into(),
                value_type: ValueType::Int,
            },
        );
        for (row, floor) in mixed.rows.iter_mut().zip([1, 2, 1]) {
            row.insert(1, Value::Int(floor));
        }
        assert_eq!(key_columns(&mixed), 2);
        // Ungrouped: one row, no keys; grouped by text alone: the text.
        assert_eq!(key_columns(&numbers(&["count", "noi"], &[&[4, 900]])), 0);
        assert_eq!(key_columns(&table(&["north", "south"])), 1);
    }

    #[test]
    fn periods_draw_a_line_and_groups_draw_bars() {
        let periods = chart(&table(&["2026-08", "2026-09", "2026-10"]), 1).unwrap();
        assert!(periods.contains("<polyline"), "{periods}");
        let groups = chart(&table(&["north", "south", "west"]), 1).unwrap();
        assert!(groups.contains("<rect"), "{groups}");
        assert!(chart(&table(&[]), 1).is_none());
    }
}
