//! The orchestrator's configuration: its identity, the fleet, the tenants and the defaults.
//!
//! ```toml
//! identity = "orchestrator.pem"       # this machine's key (relative to this file)
//! listen = "0.0.0.0:7400"             # where consoles connect
//!
//! [defaults]
//! source_timeout_ms = 2000            # one Totebox's answer
//! deadline_ms = 5000                  # the whole request, whatever the sources do
//! partial = "best-effort"             # or "strict"
//! max_concurrency = 64                # sources asked at once per request
//! fleet_workers = 0                   # threads holding the Totebox connections: 0 is one per
//!                                     # core (read at start; a reload keeps the running ones)
//! redial_ms = 5000                    # the background dialer keeps the fleet connected and
//!                                     # redials a dropped Totebox this often; 0 turns it off
//!                                     # (Toteboxes are then dialed when a request needs them)
//! max_request_bytes = 67108864        # answers one request holds, across its sources: each
//!                                     # source may send its share (this / sources, at least
//!                                     # 64 KiB), and answers merge as they arrive
//! idle_ms = 300000                    # a console connection with no call running and nothing
//!                                     # received for this long is closed (read at start)
//!
//! [[fleet]]
//! id = "prop-01"
//! address = "10.0.0.11:7401"
//! key = "ed25519:..."
//! labels = { region = "north", entity = "property" }
//!
//! [[fleet]]                           # a regional orchestrator: this one is an operator of
//! id = "eu-west"                      # one of its tenants and reaches that tenant's archives
//! kind = "orchestrator"               # through it, named "eu-west/<archive>"
//! address = "10.1.0.2:7400"
//! key = "ed25519:..."
//! labels = { region = "eu-west" }     # every archive reached through it has these labels
//!
//! [[tenants]]
//! name = "acme-asset-management"
//! operators = ["ed25519:..."]         # console keys of this tenant's operators
//! archives = ["prop-01"]              # archives it may name, by id ...
//! selectors = [{ region = "north" }]  # ... or by labels (every label must match)
//! quotas = { concurrent_queries = 4, archives_per_query = 100, requests_per_minute = 600 }
//!
//! [[viewports]]                       # fetched by consoles with `viewport(name)`
//! name = "noi-by-region"              # (the grammar is in `spec`)
//! rollup = { labels = ["region"], query = { collection = "statements", aggregates = ["sum(noi) as noi"] } }
//! ```

//!
//! Every rule is checked at load, and an error names the key to fix (`fleet[2].key: ...`):
//! unique archive ids and tenant names, valid keys, a per-source timeout shorter than the
//! deadline, tenants naming only archives of the fleet, and no key both in the fleet and among the
//! operators, since a Totebox must never be able to act as a console.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use psp_core::PublicKey;
use serde::Deserialize;

use crate::spec::ViewportSpec;
use crate::viewports::NamedViewport;

/// What to do when some sources of a fan-out fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partial {
    /// Answer with what arrived; outcomes name what is missing and why.
    BestEffort,
    /// Fail the request unless every source answered.
    Strict,
}

/// The config as written (see the module docs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    identity: PathBuf,
    listen: String,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    fleet: Vec<RawArchive>,
    #[serde(default)]
    tenants: Vec<RawTenant>,
    #[serde(default)]
    viewports: Vec<ViewportSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDefaults {
    source_timeout_ms: u64,
    deadline_ms: u64,
    partial: String,
    max_concurrency: usize,
    max_request_bytes: usize,
    fleet_workers: usize,
    redial_ms: u64,
    idle_ms: u64,
}

impl Default for RawDefaults {
    fn default() -> Self {
        Self {
            source_timeout_ms: 2_000,
            deadline_ms: 5_000,
            partial: "best-effort".into(),
            max_concurrency: 64,
            max_request_bytes: DEFAULT_REQUEST_BYTES,
            fleet_workers: 0,
            redial_ms: 5_000,
            idle_ms: 300_000,
        }
    }
}

/// Answers one request holds at most, across its sources, by default (64 MiB).
pub const DEFAULT_REQUEST_BYTES: usize = 64 << 20;
/// The least share of a request's budget any one source gets (64 KiB): room for a few thousand
/// groups, whatever the number of sources.
pub const MIN_SOURCE_BYTES: usize = 64 << 10;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArchive {
    id: String,
    address: String,
    key: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: String,
    operators: Vec<String>,
    #[serde(default)]
    archives: Vec<String>,
    #[serde(default)]
    selectors: Vec<BTreeMap<String, String>>,
    #[serde(default)]
    quotas: Quotas,
}

/// How much one tenant may ask of the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Requests it may have running at once.
    pub concurrent_queries: usize,
    /// Archives one request may reach.
    pub archives_per_query: usize,
    /// Requests it may start per minute.
    pub requests_per_minute: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            concurrent_queries: 8,
            archives_per_query: 1_000,
            requests_per_minute: 600,
        }
    }
}

/// One archive of the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetArchive {
    /// Its id.
    pub id: String,
    /// Where its Totebox listens.
    pub address: SocketAddr,
    /// Its pinned machine key.
    pub key: PublicKey,
    /// Its labels (region, entity type, portfolio, ...).
    pub labels: BTreeMap<String, String>,
    /// A Totebox, or a regional orchestrator whose archives it reaches through.
    pub kind: MemberKind,
}

/// What a fleet member is (`kind` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemberKind {
    /// A Totebox serving the archive of this id (`kind = "totebox"`, the default).
    #[default]
    Totebox,
    /// A regional orchestrator (`kind = "orchestrator"`): this orchestrator is a console of one
    /// of its tenants, and reaches that tenant's archives through it, each named
    /// `<this id>/<archive>`. Its labels apply to every archive reached through it.
    Orchestrator,
}

/// What separates a regional orchestrator's id from the archives reached through it
/// (`eu-west/prop-0042`); no fleet id may contain it.
pub const PATH_SEPARATOR: char = '/';

/// One tenant: the operators it answers for and the archives they may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Its name (for logs).
    pub name: String,
    /// Its operators' console keys.
    pub operators: BTreeSet<PublicKey>,
    /// Archives it may name by id.
    pub archives: BTreeSet<String>,
    /// Label selectors; an archive matching any of them is the tenant's too.
    pub selectors: Vec<BTreeMap<String, String>>,
    /// Its quotas.
    pub quotas: Quotas,
}

impl Tenant {
    /// Whether the tenant may reach `archive`.
    pub fn reaches(&self, archive: &FleetArchive) -> bool {
        self.archives.contains(&archive.id)
            || self
                .selectors
                .iter()
                .any(|s| s.iter().all(|(k, v)| archive.labels.get(k) == Some(v)))
    }
}

/// A loaded, validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The orchestrator's identity key file.
    pub identity: PathBuf,
    /// Where consoles connect.
    pub listen: String,
    /// One Totebox's time to answer.
    pub source_timeout: Duration,
    /// The whole request's deadline.
    pub deadline: Duration,
    /// The default partial-result policy.
    pub partial: Partial,
    /// Sources asked at once per request.
    pub max_concurrency: usize,
    /// Bytes of answers one request may hold, across its sources.
    pub max_request_bytes: usize,
    /// Threads holding the fleet's connections (at least 1; one per core unless configured).
    pub fleet_workers: usize,
    /// How often the background dialer redials a Totebox that is not connected; `None` when it
    /// is off and Toteboxes are dialed only when a request needs them.
    pub redial: Option<Duration>,
    /// How long a console connection with no call running and nothing received stays open.
    pub idle: Duration,
    /// The fleet, in config order.
    pub fleet: Vec<FleetArchive>,
    /// The tenants.
    pub tenants: Vec<Tenant>,
    /// Viewports defined here, which consoles fetch by name.
    pub viewports: Vec<NamedViewport>,
}

/// A config that cannot be used; the message names the key to fix.
#[derive(Debug, thiserror::Error)]
#[error("orchestrator config {path}: {message}")]
pub struct ConfigError {
    /// The config file.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

impl Config {
    /// Reads and validates a config file (paths resolved against its folder).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let fail = |message: String| ConfigError {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let mut config = Config::parse(&text).map_err(fail)?;
        config.identity = path
            .parent()
            .unwrap_or(Path::new("."))
            .join(&config.identity);
        Ok(config)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, String> {
        let raw: Raw = toml::from_str(text).map_err(|e| e.to_string())?;
        let key = |text: &str, at: &str| -> Result<PublicKey, String> {
            text.parse().map_err(|e| format!("{at}: {e}"))
        };
        let d = &raw.defaults;
        if d.source_timeout_ms == 0 || d.source_timeout_ms >= d.deadline_ms {
            return Err(format!(
                "defaults.source_timeout_ms ({}) must be positive and shorter than defaults.deadline_ms ({})",
                d.source_timeout_ms, d.deadline_ms
            ));
        }
        if d.max_concurrency == 0 {
            return Err("defaults.max_concurrency must be at least 1".into());
        }
        if !(1_000..=86_400_000).contains(&d.idle_ms) {
            return Err(format!(
                "defaults.idle_ms ({}) must be from 1000 (a second) to 86400000 (a day)",
                d.idle_ms
            ));
        }
        if d.max_request_bytes < MIN_SOURCE_BYTES {
            return Err(format!(
                "defaults.max_request_bytes ({}) must be at least {MIN_SOURCE_BYTES}",
                d.max_request_bytes
            ));
        }
        let partial = match d.partial.as_str() {
            "best-effort" => Partial::BestEffort,
            "strict" => Partial::Strict,
            other => {
                return Err(format!(
                    "defaults.partial: {other:?} is not \"best-effort\" or \"strict\""
                ));
            }
        };
        let mut fleet = Vec::new();
        let mut fleet_keys: HashMap<PublicKey, String> = HashMap::new();
        for (i, a) in raw.fleet.iter().enumerate() {
            let at = format!("fleet[{i}] ({:?})", a.id);
            if a.id.trim().is_empty() {
                return Err(format!("fleet[{i}].id: must not be empty"));
            }
            if a.id.contains(PATH_SEPARATOR) || a.id.chars().any(char::is_control) {
                return Err(format!(
                    "{at}.id: must not contain {PATH_SEPARATOR:?} (it separates a regional \
                     orchestrator from its archives) or control characters"
                ));
            }
            if a.labels.keys().any(|k| k.is_empty()) {
                return Err(format!(
                    "{at}.labels: a label needs a name (the empty name stands for the archive id)"
                ));
            }
            let kind = match a.kind.as_deref() {
                None | Some("totebox") => MemberKind::Totebox,
                Some("orchestrator") => MemberKind::Orchestrator,
                Some(other) => {
                    return Err(format!(
                        "{at}.kind: {other:?} is neither \"totebox\" nor \"orchestrator\""
                    ));
                }
            };
            if fleet.iter().any(|f: &FleetArchive| f.id == a.id) {
                return Err(format!("{at}.id: archive id used twice"));
            }
            let address = a
                .address
                .parse()
                .map_err(|e| format!("{at}.address ({:?}): {e}", a.address))?;
            let archive_key = key(&a.key, &format!("{at}.key"))?;
            if let Some(other) = fleet_keys.insert(archive_key, a.id.clone()) {
                return Err(format!("{at}.key: the same key as archive {other:?}"));
            }
            fleet.push(FleetArchive {
                id: a.id.clone(),
                address,
                key: archive_key,
                labels: a.labels.clone(),
                kind,
            });
        }
        let mut tenants: Vec<Tenant> = Vec::new();
        for (i, t) in raw.tenants.iter().enumerate() {
            let at = format!("tenants[{i}] ({:?})", t.name);
            if tenants.iter().any(|o| o.name == t.name) {
                return Err(format!("{at}.name: tenant name used twice"));
            }
            if t.operators.is_empty() {
                return Err(format!(
                    "{at}.operators: a tenant needs at least one operator key"
                ));
            }
            let mut operators = BTreeSet::new();
            for (j, o) in t.operators.iter().enumerate() {
                let operator = key(o, &format!("{at}.operators[{j}]"))?;
                if let Some(archive) = fleet_keys.get(&operator) {
                    return Err(format!(
                        "{at}.operators[{j}]: the key of archive {archive:?}; a Totebox can never act as a console"
                    ));
                }
                if let Some(other) = tenants.iter().find(|o| o.operators.contains(&operator)) {
                    return Err(format!(
                        "{at}.operators[{j}]: already an operator of tenant {:?}",
                        other.name
                    ));
                }
                operators.insert(operator);
            }
            for (j, id) in t.archives.iter().enumerate() {
                if !fleet.iter().any(|f| &f.id == id) {
                    return Err(format!(
                        "{at}.archives[{j}]: no archive {id:?} in the fleet"
                    ));
                }
            }
            if let Some(j) = t.selectors.iter().position(BTreeMap::is_empty) {
                return Err(format!(
                    "{at}.selectors[{j}]: an empty selector would match every archive; list labels"
                ));
            }
            let q = t.quotas;
            if q.concurrent_queries == 0 || q.archives_per_query == 0 || q.requests_per_minute == 0
            {
                return Err(format!("{at}.quotas: every quota must be at least 1"));
            }
            tenants.push(Tenant {
                name: t.name.clone(),
                operators,
                archives: t.archives.iter().cloned().collect(),
                selectors: t.selectors.clone(),
                quotas: q,
            });
        }
        let mut viewports: Vec<NamedViewport> = Vec::new();
        for (i, v) in raw.viewports.iter().enumerate() {
            let at = format!("viewports[{i}] ({:?})", v.name);
            if viewports.iter().any(|o| o.name == v.name) {
                return Err(format!("{at}.name: viewport name used twice"));
            }
            viewports.push(v.to_viewport().map_err(|e| format!("{at}: {e}"))?);
        }
        Ok(Config {
            identity: raw.identity,
            listen: raw.listen,
            source_timeout: Duration::from_millis(d.source_timeout_ms),
            deadline: Duration::from_millis(d.deadline_ms),
            partial,
            max_concurrency: d.max_concurrency,
            max_request_bytes: d.max_request_bytes,
            fleet_workers: match d.fleet_workers {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            },
            redial: (d.redial_ms > 0).then(|| Duration::from_millis(d.redial_ms)),
            idle: Duration::from_millis(d.idle_ms),
            fleet,
            tenants,
            viewports,
        })
    }

    /// The tenant an operator key belongs to, if any.
    pub fn tenant_of(&self, operator: &PublicKey) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.operators.contains(operator))
    }

    /// One source's share of a request's answer budget when `answers` source answers are
    /// expected: an equal share, at least [`MIN_SOURCE_BYTES`], at most `message_limit` (the
    /// largest message a connection reads anyway).
    pub fn source_share(&self, answers: usize, message_limit: usize) -> usize {
        (self.max_request_bytes / answers.max(1))
            .max(MIN_SOURCE_BYTES)
            .min(message_limit)
    }

    /// Every operator key of every tenant: the only keys the console listener accepts.
    pub fn operator_keys(&self) -> impl Iterator<Item = PublicKey> + '_ {
        self.tenants
            .iter()
            .flat_map(|t| t.operators.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::Config;

    fn with_idle(idle: &str) -> Result<Config, String> {
        Config::parse(&format!(
            "identity = \"o.pem\"\nlisten = \"127.0.0.1:0\"\n[defaults]\n{idle}"
        ))
    }

    /// The idle limit is bounded: at zero every console connection would close at once, and an
    /// enormous one would overflow the server's clock arithmetic on every connection.
    #[test]
    fn the_idle_limit_is_five_minutes_unless_set_within_a_second_and_a_day() {
        let default = with_idle("").unwrap();
        assert_eq!(default.idle, std::time::Duration::from_secs(300));
        assert_eq!(
            with_idle("idle_ms = 1000").unwrap().idle,
            std::time::Duration::from_secs(1)
        );
        for wrong in ["idle_ms = 0", "idle_ms = 999", "idle_ms = 86400001"] {
            let error = with_idle(wrong).unwrap_err();
            assert!(error.starts_with("defaults.idle_ms"), "{wrong}: {error}");
        }
    }
}
