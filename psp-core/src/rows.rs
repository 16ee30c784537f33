//! Row selectors: which rows of a collection a capability reaches, by key.
//!
//! A selector is a set of exact key values and half-open key ranges over one key field. It is ANDed
//! into every query on the collection; a request that names rows explicitly (a key lookup, a range,
//! records to append) must name only rows inside it.

use std::collections::BTreeSet;

/// A key value: the only value types a row selector may use.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RowKey {
    /// An integer key.
    Int(i64),
    /// A text key, compared byte-wise.
    Text(String),
}

impl RowKey {
    fn same_type(&self, other: &RowKey) -> bool {
        matches!(
            (self, other),
            (RowKey::Int(_), RowKey::Int(_)) | (RowKey::Text(_), RowKey::Text(_))
        )
    }
}

impl From<i64> for RowKey {
    fn from(value: i64) -> Self {
        RowKey::Int(value)
    }
}

impl From<&str> for RowKey {
    fn from(value: &str) -> Self {
        RowKey::Text(value.to_owned())
    }
}

/// The keys `k` with `low <= k < high`, both ends of one type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyRange {
    low: RowKey,
    high: RowKey,
}

impl KeyRange {
    /// The range `[low, high)`. `None` when the ends differ in type or the range is empty.
    pub fn new(low: impl Into<RowKey>, high: impl Into<RowKey>) -> Option<Self> {
        let (low, high) = (low.into(), high.into());
        (low.same_type(&high) && low < high).then_some(Self { low, high })
    }

    /// The inclusive lower end.
    pub fn low(&self) -> &RowKey {
        &self.low
    }

    /// The exclusive upper end.
    pub fn high(&self) -> &RowKey {
        &self.high
    }

    /// Whether `key` falls in the range.
    pub fn contains(&self, key: &RowKey) -> bool {
        key.same_type(&self.low) && &self.low <= key && key < &self.high
    }
}

/// Rows whose key field equals one of `values` or falls in one of `ranges`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeySelector {
    field: String,
    /// Exact integer keys.
    ints: BTreeSet<i64>,
    /// Exact text keys; a `String` set can be probed with a borrowed `&str`.
    texts: BTreeSet<String>,
    /// Sorted, with overlapping or touching ranges merged, so membership is a binary search and
    /// "is this range covered" never has to stitch ranges together.
    ranges: Vec<KeyRange>,
}

impl KeySelector {
    /// A selector over `field` admitting the given values and ranges.
    pub fn new(
        field: impl Into<String>,
        values: impl IntoIterator<Item = RowKey>,
        ranges: impl IntoIterator<Item = KeyRange>,
    ) -> Self {
        let (mut ints, mut texts) = (BTreeSet::new(), BTreeSet::new());
        for value in values {
            match value {
                RowKey::Int(i) => ints.insert(i),
                RowKey::Text(t) => texts.insert(t),
            };
        }
        Self {
            field: field.into(),
            ints,
            texts,
            ranges: normalize(ranges.into_iter().collect()),
        }
    }

    /// The key field.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The exact key values, integers first.
    pub fn values(&self) -> impl Iterator<Item = RowKey> + '_ {
        let ints = self.ints.iter().map(|&i| RowKey::Int(i));
        ints.chain(self.texts.iter().map(|t| RowKey::Text(t.clone())))
    }

    /// How many exact key values there are.
    pub fn value_count(&self) -> usize {
        self.ints.len() + self.texts.len()
    }

    fn has_value(&self, key: &RowKey) -> bool {
        match key {
            RowKey::Int(i) => self.ints.contains(i),
            RowKey::Text(t) => self.texts.contains(t),
        }
    }

    /// The key ranges, sorted and merged.
    pub fn ranges(&self) -> &[KeyRange] {
        &self.ranges
    }

    /// Whether a row with this key is selected.
    pub fn contains(&self, key: &RowKey) -> bool {
        self.has_value(key) || self.range_containing(key).is_some()
    }

    /// Whether a row whose key field holds `value` is selected: the per-record check of a scan,
    /// which allocates nothing. Values of other types than int and text are never selected.
    pub fn contains_value(&self, value: &crate::query::ValueRef<'_>) -> bool {
        use crate::query::ValueRef;
        let probe = match value {
            ValueRef::Int(i) => KeyProbe::Int(*i),
            ValueRef::Text(t) => KeyProbe::Text(t),
            _ => return false,
        };
        let in_values = match probe {
            KeyProbe::Int(i) => self.ints.contains(&i),
            KeyProbe::Text(t) => self.texts.contains(t),
        };
        in_values || {
            let index = self.ranges.partition_point(|r| probe.at_or_above(&r.low));
            index
                .checked_sub(1)
                .and_then(|i| self.ranges.get(i))
                .is_some_and(|r| probe.at_or_above(&r.low) && probe.below(&r.high))
        }
    }

    /// Whether every key of `range` is selected. Exact: an integer range may be covered by ranges
    /// and values together ([0,5) + 5 + [6,9) covers [0,9)); a text range holds infinitely many
    /// keys, so only ranges can cover it.
    pub fn covers(&self, range: &KeyRange) -> bool {
        let RowKey::Int(high) = range.high else {
            return self
                .range_containing(&range.low)
                .is_some_and(|r| range.high <= r.high);
        };
        let RowKey::Int(mut next) = range.low else {
            return false;
        };
        // Walk from `low` to `high`, jumping over ranges and stepping over values; each step
        // consumes a range or a value, so this is O((ranges + values) log n).
        while next < high {
            let key = RowKey::Int(next);
            if let Some(RowKey::Int(end)) = self.range_containing(&key).map(|r| &r.high) {
                next = *end;
            } else if self.ints.contains(&next) {
                next += 1;
            } else {
                return false;
            }
        }
        true
    }

    /// The merged range that contains `key`: the last one starting at or below it, if it reaches.
    fn range_containing(&self, key: &RowKey) -> Option<&KeyRange> {
        let index = self.ranges.partition_point(|r| &r.low <= key);
        let candidate = self.ranges.get(index.checked_sub(1)?)?;
        candidate.contains(key).then_some(candidate)
    }

    /// Whether every row `self` selects is selected by `parent`.
    pub fn is_within(&self, parent: &KeySelector) -> bool {
        self.field == parent.field
            && self.values().all(|v| parent.contains(&v))
            && self.ranges.iter().all(|r| parent.covers(r))
    }
}

/// A key read from a record, compared with stored keys without allocating.
#[derive(Clone, Copy)]
enum KeyProbe<'a> {
    Int(i64),
    Text(&'a str),
}

impl KeyProbe<'_> {
    /// `self >= key` within one type (false across types).
    fn at_or_above(&self, key: &RowKey) -> bool {
        match (self, key) {
            (KeyProbe::Int(a), RowKey::Int(b)) => a >= b,
            (KeyProbe::Text(a), RowKey::Text(b)) => *a >= b.as_str(),
            // Ints sort before texts: a text probe is above every int key.
            (KeyProbe::Text(_), RowKey::Int(_)) => true,
            (KeyProbe::Int(_), RowKey::Text(_)) => false,
        }
    }

    /// `self < key` within one type (false across types).
    fn below(&self, key: &RowKey) -> bool {
        match (self, key) {
            (KeyProbe::Int(a), RowKey::Int(b)) => a < b,
            (KeyProbe::Text(a), RowKey::Text(b)) => *a < b.as_str(),
            _ => false,
        }
    }
}

/// Sorts ranges and merges those that overlap or touch.
fn normalize(mut ranges: Vec<KeyRange>) -> Vec<KeyRange> {
    ranges.sort();
    let mut merged: Vec<KeyRange> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if last.high.same_type(&range.low) && range.low <= last.high => {
                if range.high > last.high {
                    last.high = range.high;
                }
            }
            _ => merged.push(range),
        }
    }
    merged
}

/// Which rows of a collection a capability link reaches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RowSelector {
    /// Every row.
    All,
    /// Only rows selected by key.
    Keys(KeySelector),
}

impl RowSelector {
    /// Whether every row `self` selects is selected by `parent`.
    pub fn is_within(&self, parent: &RowSelector) -> bool {
        match (self, parent) {
            (_, RowSelector::All) => true,
            (RowSelector::All, RowSelector::Keys(_)) => false,
            (RowSelector::Keys(child), RowSelector::Keys(parent)) => child.is_within(parent),
        }
    }

    /// Whether a request for `rows` stays inside the selector.
    pub fn admits(&self, rows: &RowRequest<'_>) -> bool {
        match (self, rows) {
            (RowSelector::All, _) => true,
            // An unrestricted scan is admitted: the selector is ANDed into it by the evaluator.
            (RowSelector::Keys(_), RowRequest::Unrestricted) => true,
            (RowSelector::Keys(sel), RowRequest::Keys { field, keys }) => {
                sel.field == *field && keys.iter().all(|k| sel.contains(k))
            }
            (RowSelector::Keys(sel), RowRequest::Range { field, range }) => {
                sel.field == *field && sel.covers(range)
            }
        }
    }
}

/// The rows a request names explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowRequest<'a> {
    /// No explicit rows: a scan, which the row selector will restrict.
    Unrestricted,
    /// Rows with these keys of `field` (a lookup, or records to append).
    Keys {
        /// The key field.
        field: &'a str,
        /// The keys.
        keys: &'a [RowKey],
    },
    /// Rows whose `field` falls in `range`.
    Range {
        /// The key field.
        field: &'a str,
        /// The range.
        range: &'a KeyRange,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(low: i64, high: i64) -> KeyRange {
        KeyRange::new(low, high).unwrap()
    }

    #[test]
    fn touching_ranges_merge_and_cover() {
        let sel = KeySelector::new("k", [], [range(0, 5), range(5, 10), range(20, 30)]);
        assert_eq!(sel.ranges().len(), 2);
        assert!(sel.covers(&range(2, 9)));
        assert!(!sel.covers(&range(8, 21)));
        let stitched = KeySelector::new("k", [RowKey::Int(5)], [range(0, 5), range(6, 9)]);
        assert!(stitched.covers(&range(0, 9)));
        assert!(!stitched.covers(&range(0, 10)));
        assert!(sel.contains(&RowKey::Int(29)));
        assert!(!sel.contains(&RowKey::Int(30)));
        assert!(!sel.contains(&RowKey::Text("5".into())));
    }

    #[test]
    fn ranges_reject_mixed_types_and_empty_spans() {
        assert!(KeyRange::new(1, 1).is_none());
        assert!(KeyRange::new(RowKey::Int(1), RowKey::Text("z".into())).is_none());
    }
}
