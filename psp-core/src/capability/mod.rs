//! Capabilities: signed, attenuating, time-boxed, holder-bound grants of authority.
//!
//! A chain starts with a root link signed by a key a Totebox trusts ([`Chain::mint`]); each holder
//! may delegate a narrower link to another machine ([`Chain::delegate`]); the Totebox checks the
//! whole chain against the peer that presents it ([`Verifier`]).
//!
//! ```
//! use psp_core::capability::{Chain, Grant, Presenter, Verifier};
//! use psp_core::{Access, Action, ArchiveDigest, ArchiveSet, IdentityKey, Operation, RowRequest, Scope, Window};
//!
//! let owner = IdentityKey::from_seed([1; 32]);        // trusted by the Totebox
//! let console = IdentityKey::from_seed([2; 32]);
//! let orchestrator = IdentityKey::from_seed([3; 32]);
//! let now = 1_800_000_000;
//!
//! let root = Chain::mint(&owner, Grant {
//!     holder: console.public(),
//!     archives: ArchiveSet::of_ids(["tower-a", "tower-b"]),
//!     scope: Scope::everything(vec![Operation::Query]),
//!     window: Window::lasting(now, 86_400),
//! }).unwrap();
//! let chain = root.delegate(&console, Grant {
//!     holder: orchestrator.public(),
//!     archives: ArchiveSet::of_ids(["tower-a"]),
//!     scope: Scope::everything(vec![Operation::Query]),
//!     window: Window::lasting(now, 300),
//! }).unwrap();
//!
//! let verifier = Verifier::new([owner.public()]);
//! let peer = orchestrator.public();
//! let archive = ArchiveDigest::of("tower-a");
//! let access = Access { action: Action::Query, collection: Some("leases"), fields: &["rent"], rows: RowRequest::Unrestricted };
//! let presenter = Presenter { peer: &peer, archive: &archive };
//! assert!(verifier.verify(&chain.link_bytes(), &presenter, &access, now).is_ok());
//!
//! // The same chain presented by another machine is refused.
//! let thief = console.public();
//! let stolen = Presenter { peer: &thief, archive: &archive };
//! let refused = verifier.verify(&chain.link_bytes(), &stolen, &access, now).unwrap_err();
//! assert_eq!(refused.rule(), "wrong-holder");
//! ```

mod body;
mod cache;
mod chain;
mod error;
mod verify;

pub use body::{CapabilityBody, FORMAT_VERSION};
pub use cache::ChainCache;
pub use chain::{
    Chain, Grant, Inclusion, LinkBytes, SIGNING_DOMAIN, SignedLink, links_from_reader,
};
pub use error::{CapabilityError, DelegationError};
pub use verify::{Presenter, VerifiedChain, VerifiedLink, Verifier, VerifyPolicy};

/// 16 random bytes naming one link, for revocation lists and audit logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CapabilityId(pub [u8; 16]);

impl CapabilityId {
    /// A fresh id from the operating system's random number generator.
    pub fn random() -> Result<Self, String> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| e.to_string())?;
        Ok(Self(id))
    }
}

impl std::fmt::Display for CapabilityId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for CapabilityId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CapabilityId({self})")
    }
}

impl std::str::FromStr for CapabilityId {
    type Err = hex::FromHexError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut id = [0u8; 16];
        hex::decode_to_slice(text.trim(), &mut id)?;
        Ok(Self(id))
    }
}
