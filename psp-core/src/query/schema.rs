//! A collection's schema and exposure policy: what each field is and how much of it may leave
//! the Totebox.

use super::value::ValueType;

/// How a field may leave the Totebox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exposure {
    /// Returned as values: may be projected, filtered, grouped, ordered and aggregated.
    Value,
    /// Only inside sum, avg and count over groups of at least the minimum size. Never projected,
    /// filtered, grouped or ordered on, and never min or max (which would return one record's
    /// value).
    AggregateOnly,
    /// Never leaves, in any form; queries naming it are refused as if it did not exist.
    Never,
}

impl std::str::FromStr for Exposure {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "value" => Ok(Exposure::Value),
            "aggregate-only" => Ok(Exposure::AggregateOnly),
            "never" => Ok(Exposure::Never),
            other => Err(format!(
                "unknown exposure {other:?} (value, aggregate-only or never)"
            )),
        }
    }
}

/// One field of a collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSchema {
    /// Its name.
    pub name: String,
    /// Its type.
    pub value_type: ValueType,
    /// How it may leave the Totebox.
    pub exposure: Exposure,
}

/// A collection: its fields in record order, its key field and its exposure policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionSchema {
    /// The collection's name.
    pub name: String,
    /// The key field: what row selectors and the index use. Must be an int or text field.
    pub key: String,
    /// The fields, in the order records store them.
    pub fields: Vec<FieldSchema>,
    /// Aggregate groups with fewer records than this are withheld (counted, not shown).
    pub min_group_size: u32,
}

impl CollectionSchema {
    /// A collection with no fields yet; add them with [`CollectionSchema::field`].
    pub fn new(name: &str, key: &str, min_group_size: u32) -> Self {
        Self {
            name: name.to_owned(),
            key: key.to_owned(),
            fields: Vec::new(),
            min_group_size,
        }
    }

    /// Adds a field (builder style).
    pub fn field(mut self, name: &str, value_type: ValueType, exposure: Exposure) -> Self {
        self.fields.push(FieldSchema {
            name: name.to_owned(),
            value_type,
            exposure,
        });
        self
    }

    /// The position and schema of a field, by name.
    pub fn find(&self, name: &str) -> Option<(usize, &FieldSchema)> {
        self.fields.iter().enumerate().find(|(_, f)| f.name == name)
    }

    /// The position of the key field.
    pub fn key_index(&self) -> Option<usize> {
        self.find(&self.key).map(|(i, _)| i)
    }

    /// Checks the schema itself: unique field names, a key field of type int or text.
    pub fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        for f in &self.fields {
            if !names.insert(f.name.as_str()) {
                return Err(format!(
                    "collection {:?}: field {:?} is declared twice",
                    self.name, f.name
                ));
            }
        }
        match self.find(&self.key) {
            None => Err(format!(
                "collection {:?}: key field {:?} is not a field",
                self.name, self.key
            )),
            Some((_, f)) if !matches!(f.value_type, ValueType::Int | ValueType::Text) => {
                Err(format!(
                    "collection {:?}: key field {:?} must be int or text, not {}",
                    self.name,
                    self.key,
                    f.value_type.name()
                ))
            }
            Some(_) => Ok(()),
        }
    }

    /// The fields a query may reference, with their exposure (never-exposed fields left out):
    /// what `describe` shows.
    pub fn exposed_fields(&self) -> impl Iterator<Item = &FieldSchema> {
        self.fields.iter().filter(|f| f.exposure != Exposure::Never)
    }
}
