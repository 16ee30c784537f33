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
    /// How `psp-totebox serve` serves the archive over PSP (not needed to use it locally).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerSection>,
}

/// The `[server]` section: where and to whom the Totebox serves PSP.
///
/// ```toml
/// [server]
/// listen = "0.0.0.0:7401"
/// identity = "identity.pem"                 # this Totebox's key (psp-totebox keygen)
/// paired = ["ed25519:..."]                  # orchestrators allowed to connect
/// trusted_roots = ["ed25519:..."]           # keys whose capabilities this Totebox honours
/// revoked = ["<32 hex digits>"]             # capability ids refused from now on
/// max_lifetime_seconds = 900                # longest last link accepted
/// clock_skew_seconds = 30
/// idle_seconds = 300                        # a connection with no call running and nothing
///                                           # received for this long is closed
/// ```
///
/// `psp-totebox serve` re-reads `paired`, `trusted_roots` and `revoked` on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Address to listen on ("host:port"; port 0 picks a free one).
    pub listen: String,
    /// The identity key file, relative to the config's folder.
    pub identity: PathBuf,
    /// Machine keys allowed to connect (`ed25519:<hex>`).
    #[serde(default)]
    pub paired: Vec<String>,
    /// Keys whose capability chains are honoured (`ed25519:<hex>`).
    #[serde(default)]
    pub trusted_roots: Vec<String>,
    /// Revoked capability ids (32 hex digits).
    #[serde(default)]
    pub revoked: Vec<String>,
    /// Longest lifetime accepted for the last link of a chain, in seconds.
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime_seconds: i64,
    /// Clock difference tolerated, in seconds.
    #[serde(default = "default_clock_skew")]
    pub clock_skew_seconds: i64,
    /// How long a connection with no call running and nothing received stays open, in
    /// seconds (read at start).
    #[serde(default = "default_idle")]
    pub idle_seconds: u64,
}

fn default_idle() -> u64 {
    300
}

fn default_max_lifetime() -> i64 {
    900
}

fn default_clock_skew() -> i64 {
    30
}

/// The trust settings of a server section, parsed.
#[derive(Debug, Clone)]
pub struct Trust {
    /// Paired machine keys.
    pub paired: Vec<psp_core::PublicKey>,
    /// Trusted roots.
    pub roots: Vec<psp_core::PublicKey>,
    /// Revoked capability ids.
    pub revoked: Vec<psp_core::capability::CapabilityId>,
    /// Verifier limits.
    pub policy: psp_core::capability::VerifyPolicy,
}

impl ServerSection {
    /// The connection limits `[server]` sets (the others are the defaults).
    pub fn limits(&self) -> Result<psp_rpc::limits::Limits, String> {
        if !(1..=86_400).contains(&self.idle_seconds) {
            return Err(format!(
                "server.idle_seconds ({}) must be from 1 to 86400 (a day)",
                self.idle_seconds
            ));
        }
        Ok(psp_rpc::limits::Limits {
            idle_timeout: std::time::Duration::from_secs(self.idle_seconds),
            ..psp_rpc::limits::Limits::default()
        })
    }

    /// Parses the keys and ids; errors name the entry (`server.paired[1]: ...`).
    pub fn trust(&self) -> Result<Trust, String> {
        let keys = |list: &[String], name: &str| -> Result<Vec<psp_core::PublicKey>, String> {
            list.iter()
                .enumerate()
                .map(|(i, k)| {
                    k.parse()
                        .map_err(|e| format!("server.{name}[{i}] ({k:?}): {e}"))
                })
                .collect()
        };
        let revoked = self
            .revoked
            .iter()
            .enumerate()
            .map(|(i, id)| {
                id.parse().map_err(|_| {
                    format!("server.revoked[{i}] ({id:?}): a capability id is 32 hex digits")
                })
            })
            .collect::<Result<_, _>>()?;
        if self.max_lifetime_seconds <= 0 || self.clock_skew_seconds < 0 {
            return Err("server.max_lifetime_seconds must be positive and server.clock_skew_seconds not negative".into());
        }
        Ok(Trust {
            paired: keys(&self.paired, "paired")?,
            roots: keys(&self.trusted_roots, "trusted_roots")?,
            revoked,
            policy: psp_core::capability::VerifyPolicy {
                max_lifetime: self.max_lifetime_seconds,
                clock_skew: self.clock_skew_seconds,
                ..psp_core::capability::VerifyPolicy::default()
            },
        })
    }
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
        if let Some(server) = &self.server {
            server.trust()?;
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

#[cfg(test)]
mod tests {
    use super::ServerSection;

    fn with_idle(idle: &str) -> Result<psp_rpc::limits::Limits, String> {
        toml::from_str::<ServerSection>(&format!(
            "listen = \"127.0.0.1:0\"\nidentity = \"i.pem\"\n{idle}"
        ))
        .map_err(|e| e.to_string())?
        .limits()
    }

    /// At zero every connection would close at once; an enormous limit would overflow the
    /// server's clock arithmetic on every connection.
    #[test]
    fn the_idle_limit_is_five_minutes_unless_set_within_a_second_and_a_day() {
        let seconds = |l: psp_rpc::limits::Limits| l.idle_timeout.as_secs();
        assert_eq!(with_idle("").map(seconds), Ok(300));
        assert_eq!(with_idle("idle_seconds = 86400").map(seconds), Ok(86_400));
        for wrong in ["idle_seconds = 0", "idle_seconds = 86401"] {
            let error = with_idle(wrong).unwrap_err();
            assert!(error.starts_with("server.idle_seconds"), "{wrong}: {error}");
        }
    }
}
