//! An archive's configuration: its id, its file, and its collections with their exposure policy.
//!
//! ```toml
//! id = "tower-a"
//! file = "archive.psp"          # relative to this file's folder
//! snapshots = "snapshots"       # where `snapshot` writes copies (default: "snapshots")
//!
//! [[collections]]
//! name = "leases"
//! key = "lease_id"
//! period = "period"             # optional: the field `seal` closes periods of
//! min_group_size = 3
//! fields = [
//!   { name = "lease_id", type = "text" },
//!   { name = "period", type = "text" },
//!   { name = "rent", type = "decimal", exposure = "aggregate-only" },
//!   { name = "tenant_tax_id", type = "text", exposure = "never" },
//! ]
//! ```

use std::path::{Path, PathBuf};

use psp_core::query::{CollectionSchema, Exposure, ValueType};
use serde::{Deserialize, Serialize};

/// The archive's configuration file, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// The archive's id.
    pub id: String,
    /// The archive file, relative to the config's folder.
    pub file: PathBuf,
    /// The snapshot folder, relative to the config's folder.
    #[serde(default = "default_snapshots")]
    pub snapshots: PathBuf,
    /// The collections.
    pub collections: Vec<CollectionConfig>,
}

fn default_snapshots() -> PathBuf {
    PathBuf::from("snapshots")
}

/// One collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    /// Its name.
    pub name: String,
    /// The key field (int or text): what row selectors and the index use.
    pub key: String,
    /// The field holding each record's period, if the collection can be sealed by period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// Aggregate groups smaller than this are withheld.
    #[serde(default = "default_min_group_size")]
    pub min_group_size: u32,
    /// The fields, in record order.
    pub fields: Vec<FieldConfig>,
}

fn default_min_group_size() -> u32 {
    1
}

/// One field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    /// Its name.
    pub name: String,
    /// Its type: bool, int, float, text, timestamp or decimal.
    #[serde(rename = "type")]
    pub value_type: String,
    /// value (default), aggregate-only or never.
    #[serde(default = "default_exposure")]
    pub exposure: String,
}

fn default_exposure() -> String {
    "value".into()
}

/// A config that cannot be used, with what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read archive config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not fit the format (the message names the key).
    #[error("archive config {path}: {message}")]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// The parser's message, naming the bad key.
        message: String,
    },
    /// The content is inconsistent.
    #[error("archive config {path}: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// A loaded, validated config with paths resolved against its folder.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The config as written.
    pub config: ArchiveConfig,
    /// The archive file.
    pub file: PathBuf,
    /// The snapshot folder.
    pub snapshots: PathBuf,
    /// The collections as schemas.
    pub schemas: Vec<CollectionSchema>,
}

impl ArchiveConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: ArchiveConfig = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config
            .resolve(base)
            .map_err(|message| ConfigError::Invalid {
                path: path.to_owned(),
                message,
            })
    }

    /// Validates the config and resolves its paths against `base`.
    pub fn resolve(self, base: &Path) -> Result<Loaded, String> {
        let schemas = self.schemas()?;
        Ok(Loaded {
            file: base.join(&self.file),
            snapshots: base.join(&self.snapshots),
            schemas,
            config: self,
        })
    }

    /// The collections as schemas, checked: known types and exposures, unique names, a key of
    /// type int or text, a period field that exists.
    pub fn schemas(&self) -> Result<Vec<CollectionSchema>, String> {
        if self.id.trim().is_empty() {
            return Err("id: must not be empty".into());
        }
        let mut names = std::collections::BTreeSet::new();
        let mut schemas = Vec::new();
        for (i, c) in self.collections.iter().enumerate() {
            let at = format!("collections[{i}] ({:?})", c.name);
            if !names.insert(&c.name) {
                return Err(format!("{at}: collection name used twice"));
            }
            let mut schema = CollectionSchema::new(&c.name, &c.key, c.min_group_size);
            for (j, f) in c.fields.iter().enumerate() {
                let value_type: ValueType = f
                    .value_type
                    .parse()
                    .map_err(|e| format!("{at}.fields[{j}] ({:?}).type: {e}", f.name))?;
                let exposure: Exposure = f
                    .exposure
                    .parse()
                    .map_err(|e| format!("{at}.fields[{j}] ({:?}).exposure: {e}", f.name))?;
                schema = schema.field(&f.name, value_type, exposure);
            }
            schema.validate().map_err(|e| format!("{at}: {e}"))?;
            if let Some(period) = &c.period
                && schema.find(period).is_none()
            {
                return Err(format!("{at}.period: {period:?} is not a field"));
            }
            schemas.push(schema);
        }
        Ok(schemas)
    }
}
