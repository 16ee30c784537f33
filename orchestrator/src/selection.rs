//! Which archives a request reaches, decided before any Totebox is called.
//!
//! Three rules, in order:
//!
//! 1. **Tenancy.** A console can only name its own tenant's archives. Naming any other archive
//!    (another tenant's, or one that does not exist: the two answers are the same, so a tenant
//!    cannot map the fleet) is an error, not a silent skip. Label selectors only ever match within
//!    the tenant.
//! 2. **No confused deputy.** Every tenant's capabilities name the same holder (this
//!    orchestrator), so Toteboxes cannot tell tenants apart: the orchestrator must. The chain's
//!    last issuer must be the operator key of the console that sent it, so tenant A can never
//!    spend tenant B's capability, even one it intercepted.
//! 3. **Capability scope.** Only archives in both the selection and the chain's archive set are
//!    asked; every other selected archive gets an outcome saying so, without a call.

use std::collections::BTreeMap;

use psp_core::{ArchiveDigest, Chain, PublicKey};

use crate::config::{Config, FleetArchive, MemberKind, PATH_SEPARATOR, Tenant};

/// How a request chooses archives (`ArchiveSelector` in `orchestrator.capnp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Every archive of the tenant.
    All,
    /// These archives, by id.
    Ids(Vec<String>),
    /// The tenant's archives whose labels match every entry.
    Labels(BTreeMap<String, String>),
}

/// Why a request was refused before any Totebox was called. [`Refusal::code`] is the wire code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The console's key belongs to no tenant.
    #[error("key {0} is not an operator of any tenant")]
    NotAnOperator(PublicKey),
    /// An archive named is not one of the tenant's (or does not exist; the answer is the same).
    #[error("archive {0:?} is not one of this tenant's archives")]
    ArchiveNotInTenant(String),
    /// More archives than the tenant's quota allows in one request.
    #[error("the request reaches {count} archives; this tenant may reach {max} at once")]
    TooManyArchives {
        /// Archives selected.
        count: usize,
        /// The quota.
        max: usize,
    },
    /// The selection is empty.
    #[error("no archive of this tenant matches the selection")]
    NothingSelected,
    /// The chain was last delegated by someone other than the console's operator.
    #[error("the capability was delegated by {issuer}, not by this console's operator {operator}")]
    NotYourCapability {
        /// The last link's issuer.
        issuer: PublicKey,
        /// The console's operator key.
        operator: PublicKey,
    },
    /// The chain is not delegated to this orchestrator.
    #[error("the capability is granted to {holder}, not to this orchestrator {orchestrator}")]
    NotForThisOrchestrator {
        /// The last link's holder.
        holder: PublicKey,
        /// This orchestrator's key.
        orchestrator: PublicKey,
    },
}

impl Refusal {
    /// The stable wire code.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NotAnOperator(_) => "tenant.not-an-operator",
            Refusal::ArchiveNotInTenant(_) => "tenant.archive-not-in-tenant",
            Refusal::TooManyArchives { .. } => "tenant.too-many-archives",
            Refusal::NothingSelected => "tenant.nothing-selected",
            Refusal::NotYourCapability { .. } => "tenant.not-your-capability",
            Refusal::NotForThisOrchestrator { .. } => "tenant.wrong-holder",
        }
    }
}

/// The archives `selector` names within `tenant`, in fleet order, under the tenant's quota.
pub fn select<'c>(
    config: &'c Config,
    tenant: &Tenant,
    selector: &Selector,
) -> Result<Vec<&'c FleetArchive>, Refusal> {
    let mine = || config.fleet.iter().filter(|a| tenant.reaches(a));
    let chosen: Vec<&FleetArchive> = match selector {
        Selector::All => mine().collect(),
        Selector::Ids(ids) => {
            let mut chosen = Vec::new();
            for id in ids {
                // `eu-west/prop-0042` names an archive reached through the regional
                // orchestrator `eu-west` (which of its archives exist, the region's directory
                // says: see `tier::region_ask`).
                let (member, below) = match id.split_once(PATH_SEPARATOR) {
                    Some((member, below)) => (member, Some(below)),
                    None => (id.as_str(), None),
                };
                let archive = mine()
                    .find(|a| {
                        a.id == member && (below.is_none() || a.kind == MemberKind::Orchestrator)
                    })
                    .ok_or_else(|| Refusal::ArchiveNotInTenant(id.clone()))?;
                if !chosen.contains(&archive) {
                    chosen.push(archive);
                }
            }
            chosen
        }
        // A region is chosen if its entry's labels do not contradict the selector: which of
        // its archives match the labels its entry does not set, its directory says.
        Selector::Labels(labels) => mine()
            .filter(|a| {
                labels.iter().all(|(k, v)| match a.labels.get(k) {
                    Some(value) => value == v,
                    None => a.kind == MemberKind::Orchestrator,
                })
            })
            .collect(),
    };
    if chosen.is_empty() {
        return Err(Refusal::NothingSelected);
    }
    if chosen.len() > tenant.quotas.archives_per_query {
        return Err(Refusal::TooManyArchives {
            count: chosen.len(),
            max: tenant.quotas.archives_per_query,
        });
    }
    Ok(chosen)
}

/// A selection split by what the capability reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach<'c> {
    /// Archives to ask.
    pub asked: Vec<&'c FleetArchive>,
    /// Selected archives the chain does not name: reported as denied, never called.
    pub outside_capability: Vec<&'c FleetArchive>,
}

/// Checks the chain a console sent against its operator and this orchestrator, then splits the
/// selection by the chain's archive set. The chain's signatures are the Totebox's business; this
/// check only stops one tenant from spending another's capability through us.
pub fn reach<'c>(
    chain: &Chain,
    operator: &PublicKey,
    orchestrator: &PublicKey,
    selected: Vec<&'c FleetArchive>,
) -> Result<Reach<'c>, Refusal> {
    let last = chain.last();
    if last.issuer != *operator {
        return Err(Refusal::NotYourCapability {
            issuer: last.issuer,
            operator: *operator,
        });
    }
    if last.holder != *orchestrator {
        return Err(Refusal::NotForThisOrchestrator {
            holder: last.holder,
            orchestrator: *orchestrator,
        });
    }
    // A region's archives are checked one by one against the chain (`tier::region_ask`).
    let (asked, outside_capability) = selected.into_iter().partition(|a| {
        a.kind == MemberKind::Orchestrator || chain.reaches(&ArchiveDigest::of(&a.id))
    });
    Ok(Reach {
        asked,
        outside_capability,
    })
}
