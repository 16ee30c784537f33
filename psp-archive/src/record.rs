//! Records read in place: a `Record` whose values point straight into the memory map.

use psp_core::query::{Decimal, Record, ValueRef};
use psp_schema::archive_capnp::record;
use psp_schema::query_capnp::value;

/// One stored record, read through its Cap'n Proto reader: nothing is copied or parsed up front;
/// each field is decoded when the query asks for it, and text stays in the map.
#[derive(Clone, Copy)]
pub(crate) struct MappedRecord<'a> {
    values: Option<capnp::struct_list::Reader<'a, value::Owned>>,
}

impl<'a> MappedRecord<'a> {
    pub(crate) fn new(reader: record::Reader<'a>) -> Self {
        Self {
            values: reader.get_values().ok(),
        }
    }

    /// A field's value with the lifetime of the map itself (what the index keeps while sorting).
    /// Values the schema cannot produce (only possible in a file edited by hand, since every frame
    /// is checksummed) read as null.
    pub(crate) fn get(&self, index: usize) -> ValueRef<'a> {
        let Some(values) = self.values else {
            return ValueRef::Null;
        };
        let Ok(index) = u32::try_from(index) else {
            return ValueRef::Null;
        };
        if index >= values.len() {
            return ValueRef::Null;
        }
        match values.get(index).which() {
            Ok(value::Null(())) | Err(_) => ValueRef::Null,
            Ok(value::Bool(b)) => ValueRef::Bool(b),
            Ok(value::Int(i)) => ValueRef::Int(i),
            Ok(value::Float(x)) => ValueRef::Float(x),
            Ok(value::Timestamp(t)) => ValueRef::Timestamp(t),
            Ok(value::Text(t)) => t
                .ok()
                .and_then(|t| t.to_str().ok())
                .map_or(ValueRef::Null, ValueRef::Text),
            Ok(value::Decimal(d)) => {
                Decimal::new(d.get_units(), d.get_scale()).map_or(ValueRef::Null, ValueRef::Decimal)
            }
        }
    }
}

impl Record for MappedRecord<'_> {
    fn value(&self, index: usize) -> ValueRef<'_> {
        self.get(index)
    }

    fn text_bytes(&self, index: usize) -> Option<&[u8]> {
        let values = self.values?;
        let index = u32::try_from(index).ok().filter(|&i| i < values.len())?;
        match values.get(index).which() {
            Ok(value::Text(Ok(text))) => Some(text.as_bytes()),
            _ => None,
        }
    }
}
