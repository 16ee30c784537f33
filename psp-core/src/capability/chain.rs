//! Delegation chains: minting a root link, delegating (narrowing) it, and moving chains on the wire.

use capnp::message::{self, ReaderOptions};
use capnp::serialize;
use psp_schema::capability_capnp::chain;

use super::body::CapabilityBody;
use super::{CapabilityError, CapabilityId, DelegationError};
use crate::archive_set::ArchiveSet;
use crate::identity::{IdentityKey, PublicKey};
use crate::scope::Scope;
use crate::window::Window;

/// The prefix signed in front of every body (`signingDomain` in the schema).
pub const SIGNING_DOMAIN: &[u8] = psp_schema::capability_capnp::SIGNING_DOMAIN;

/// What an issuer grants in a new link: to whom, where, what and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The machine key the link is granted to.
    pub holder: PublicKey,
    /// The archives it is good for.
    pub archives: ArchiveSet,
    /// What it allows there.
    pub scope: Scope,
    /// When it is valid.
    pub window: Window,
}

/// One link as it travels: the serialized body and the issuer's signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SignedLink {
    /// The serialized `CapabilityBody` message.
    pub body: Vec<u8>,
    /// Ed25519 signature over `SIGNING_DOMAIN || body`.
    pub signature: [u8; 64],
}

impl SignedLink {
    /// Encodes `body` and signs it with `issuer`: the raw signing step, with none of the checks
    /// [`Chain::delegate`] makes. For tools and adversarial tests that must build chains the safe
    /// API refuses; the [`Verifier`](super::Verifier) is the only judge of what a link grants.
    pub fn sign(issuer: &IdentityKey, body: &CapabilityBody) -> SignedLink {
        Self::sign_bytes(issuer, body.encode())
    }

    /// Signs an already serialized body as it stands, e.g. one made by another encoder. Same
    /// caveat as [`SignedLink::sign`]: nothing about the body is checked.
    pub fn sign_bytes(issuer: &IdentityKey, body: Vec<u8>) -> SignedLink {
        let signature = sign_body(issuer, &body);
        SignedLink { body, signature }
    }
}

/// A borrowed view of one link, e.g. pointing straight into a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkBytes<'a> {
    /// The serialized body.
    pub body: &'a [u8],
    /// The signature (64 bytes when well-formed; checked by the verifier).
    pub signature: &'a [u8],
}

/// A delegation chain built or read by this process.
///
/// A chain built with [`Chain::mint`] and [`Chain::delegate`] only ever narrows; a chain read from
/// elsewhere ([`Chain::from_bytes`], [`Chain::from_reader`]) is parsed but **not** verified: only
/// [`Verifier`](super::Verifier) decides whether a chain grants anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    links: Vec<SignedLink>,
    bodies: Vec<CapabilityBody>,
}

/// Signs a body the way every PSP implementation must: Ed25519 over `SIGNING_DOMAIN || body`.
fn sign_body(issuer: &IdentityKey, body: &[u8]) -> [u8; 64] {
    let mut message = Vec::with_capacity(SIGNING_DOMAIN.len() + body.len());
    message.extend_from_slice(SIGNING_DOMAIN);
    message.extend_from_slice(body);
    issuer.sign(&message)
}

impl Chain {
    /// Mints a root link: `issuer` (a key some Toteboxes trust) grants `grant` to its holder.
    pub fn mint(issuer: &IdentityKey, grant: Grant) -> Result<Chain, DelegationError> {
        let mut chain = Chain {
            links: Vec::new(),
            bodies: Vec::new(),
        };
        chain.push(issuer, grant, None)?;
        Ok(chain)
    }

    /// Delegates this chain: `signer`, who must hold its last link, grants a narrower `grant`.
    ///
    /// Refuses, naming what widened, when the grant reaches archives, collections, fields, rows,
    /// operations or time that the last link does not.
    pub fn delegate(&self, signer: &IdentityKey, grant: Grant) -> Result<Chain, DelegationError> {
        let last = self.last();
        if signer.public() != last.holder {
            return Err(DelegationError::NotTheHolder {
                holder: last.holder,
                signer: signer.public(),
            });
        }
        if !grant.archives.is_within(&last.archives) {
            return Err(DelegationError::Widens(
                "archives not granted by the parent".into(),
            ));
        }
        grant
            .scope
            .is_within(&last.scope)
            .map_err(DelegationError::Widens)?;
        if !last.window.contains_window(&grant.window) {
            return Err(DelegationError::Widens(
                "validity window outside the parent's".into(),
            ));
        }
        let parent = self.links.last().map(|l| l.signature);
        let mut chain = self.clone();
        chain.push(signer, grant, parent)?;
        Ok(chain)
    }

    fn push(
        &mut self,
        issuer: &IdentityKey,
        grant: Grant,
        parent: Option<[u8; 64]>,
    ) -> Result<(), DelegationError> {
        let body = CapabilityBody {
            id: CapabilityId::random().map_err(DelegationError::Random)?,
            issuer: issuer.public(),
            holder: grant.holder,
            parent,
            archives: grant.archives,
            scope: grant.scope,
            window: grant.window,
        };
        self.links.push(SignedLink::sign(issuer, &body));
        self.bodies.push(body);
        Ok(())
    }

    /// The links, root first.
    pub fn links(&self) -> &[SignedLink] {
        &self.links
    }

    /// Borrowed views of the links, as the verifier takes them.
    pub fn link_bytes(&self) -> Vec<LinkBytes<'_>> {
        self.links
            .iter()
            .map(|l| LinkBytes {
                body: &l.body,
                signature: &l.signature,
            })
            .collect()
    }

    /// The decoded bodies, root first.
    pub fn bodies(&self) -> &[CapabilityBody] {
        &self.bodies
    }

    /// The last link's body: who holds the chain and what it allows.
    pub fn last(&self) -> &CapabilityBody {
        self.bodies.last().expect("a chain has at least one link")
    }

    /// Writes the chain into a `Chain` struct of a message being built.
    pub fn write(&self, builder: chain::Builder<'_>) {
        let mut list = builder.init_links(self.links.len() as u32);
        for (i, link) in self.links.iter().enumerate() {
            let mut entry = list.reborrow().get(i as u32);
            entry.set_body(&link.body);
            entry.set_signature(&link.signature);
        }
    }

    /// Reads (and decodes, without verifying) a chain from a received `Chain` struct.
    pub fn from_reader(reader: chain::Reader<'_>) -> Result<Chain, CapabilityError> {
        let links = links_from_reader(reader)?;
        if links.is_empty() {
            return Err(CapabilityError::EmptyChain);
        }
        let mut chain = Chain {
            links: Vec::with_capacity(links.len()),
            bodies: Vec::with_capacity(links.len()),
        };
        for (i, link) in links.iter().enumerate() {
            let signature = link
                .signature
                .try_into()
                .map_err(|_| CapabilityError::malformed(i, "a signature is 64 bytes"))?;
            chain.bodies.push(CapabilityBody::decode(link.body, i)?);
            chain.links.push(SignedLink {
                body: link.body.to_vec(),
                signature,
            });
        }
        Ok(chain)
    }

    /// The chain as a standalone serialized `Chain` message (what `grant` and `delegate` write to
    /// files, and what other languages read with their own Cap'n Proto library).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut message = message::Builder::new_default();
        self.write(message.init_root());
        serialize::write_message_to_words(&message)
    }

    /// Reads a chain written by [`Chain::to_bytes`] (decoded, not verified).
    pub fn from_bytes(bytes: &[u8]) -> Result<Chain, CapabilityError> {
        let malformed = |e| CapabilityError::malformed(0, format!("not a Chain message: {e}"));
        let mut words = capnp::Word::allocate_zeroed_vec(bytes.len().div_ceil(8));
        capnp::Word::words_to_bytes_mut(&mut words)[..bytes.len()].copy_from_slice(bytes);
        let mut slice = &capnp::Word::words_to_bytes(&words)[..bytes.len()];
        let message = serialize::read_message_from_flat_slice(&mut slice, ReaderOptions::new())
            .map_err(malformed)?;
        let reader = message.get_root::<chain::Reader<'_>>().map_err(malformed)?;
        Chain::from_reader(reader)
    }
}

/// Borrowed views of the links in a received `Chain` struct: nothing is copied.
pub fn links_from_reader(reader: chain::Reader<'_>) -> Result<Vec<LinkBytes<'_>>, CapabilityError> {
    let list = reader
        .get_links()
        .map_err(|e| CapabilityError::malformed(0, e))?;
    list.iter()
        .enumerate()
        .map(|(i, link)| {
            Ok(LinkBytes {
                body: link
                    .get_body()
                    .map_err(|e| CapabilityError::malformed(i, e))?,
                signature: link
                    .get_signature()
                    .map_err(|e| CapabilityError::malformed(i, e))?,
            })
        })
        .collect()
}
