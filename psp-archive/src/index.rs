//! The key index: per appended batch, the smallest and largest key (to skip batches a row
//! selector cannot match) and the batch's records sorted by key (to find the matching ones
//! without reading the rest). Keys are read from the map when needed, never copied, so the index
//! costs four bytes per record.

use std::cmp::Ordering;

use psp_core::query::ValueRef;
use psp_core::{KeySelector, RowKey};
use psp_schema::archive_capnp::record;

use crate::log::FrameRef;
use crate::record::MappedRecord;

/// One appended batch of one collection.
#[derive(Debug, Clone)]
pub(crate) struct BatchIndex {
    /// Where the batch's message lies in the file.
    pub(crate) frame: FrameRef,
    /// Smallest and largest key in the batch (`None` when no record has a key).
    bounds: Option<(RowKey, RowKey)>,
    /// Positions of the records that have a key, sorted by key.
    by_key: Vec<u32>,
    /// The batch's data time (its log entry's `at`).
    pub(crate) at: i64,
}

fn as_row_key(v: ValueRef<'_>) -> Option<RowKey> {
    match v {
        ValueRef::Int(i) => Some(RowKey::Int(i)),
        ValueRef::Text(t) => Some(RowKey::Text(t.to_owned())),
        _ => None,
    }
}

fn key_ref(key: &RowKey) -> ValueRef<'_> {
    match key {
        RowKey::Int(i) => ValueRef::Int(*i),
        RowKey::Text(t) => ValueRef::Text(t),
    }
}

impl BatchIndex {
    /// Indexes a batch, written at `at`, on the field at position `key`.
    pub(crate) fn build(
        frame: FrameRef,
        records: capnp::struct_list::Reader<'_, record::Owned>,
        key: usize,
        at: i64,
    ) -> Self {
        let mut keyed: Vec<(ValueRef<'_>, u32)> = records
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let k = MappedRecord::new(r).get(key);
                matches!(k, ValueRef::Int(_) | ValueRef::Text(_)).then_some((k, i as u32))
            })
            .collect();
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
        let bounds = match (keyed.first(), keyed.last()) {
            (Some(lo), Some(hi)) => as_row_key(lo.0).zip(as_row_key(hi.0)),
            _ => None,
        };
        Self {
            frame,
            bounds,
            by_key: keyed.into_iter().map(|(_, i)| i).collect(),
            at,
        }
    }

    /// Whether any record of the batch can fall in the selector (by the batch's key bounds).
    pub(crate) fn may_contain(&self, selector: &KeySelector) -> bool {
        let Some((lo, hi)) = &self.bounds else {
            return false;
        };
        selector.values().any(|v| lo <= &v && &v <= hi)
            || selector
                .ranges()
                .iter()
                .any(|r| r.low() <= hi && r.high() > lo)
    }

    /// Positions of the batch's records whose key the selector admits, in record order.
    pub(crate) fn candidates(
        &self,
        selector: &KeySelector,
        records: capnp::struct_list::Reader<'_, record::Owned>,
        key: usize,
    ) -> Vec<u32> {
        let key_at = |position: u32| MappedRecord::new(records.get(position)).get(key);
        // First sorted position whose key is not below `bound` (or above it, if `inclusive`).
        let first = |bound: &RowKey, past_equal: bool| {
            self.by_key.partition_point(|&p| {
                let o = key_at(p).total_cmp(&key_ref(bound));
                o == Ordering::Less || (past_equal && o == Ordering::Equal)
            })
        };
        let mut found = Vec::new();
        for value in selector.values() {
            found.extend_from_slice(&self.by_key[first(&value, false)..first(&value, true)]);
        }
        for range in selector.ranges() {
            let (start, end) = (first(range.low(), false), first(range.high(), false));
            if start < end {
                found.extend_from_slice(&self.by_key[start..end]);
            }
        }
        found.sort_unstable();
        found.dedup();
        found
    }
}
