//! Delegation chains: minting a root link, delegating (narrowing) it, and moving chains on the wire.

use std::sync::Arc;

use capnp::message::{self, ReaderOptions};
use capnp::serialize;
use psp_schema::capability_capnp::{archive_proof, chain};

use super::body::CapabilityBody;
use super::{CapabilityError, CapabilityId, DelegationError};
use crate::archive_set::{ArchiveDigest, ArchiveProof, ArchiveSet, LinkArchives, MemberTree};
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

/// One archive's inclusion proof in a committed set, owned: its leaf index and audit path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inclusion {
    /// The leaf index.
    pub index: u32,
    /// The audit path, 32-byte hashes concatenated, leaf to root.
    pub path: Vec<u8>,
}

/// A borrowed view of one link, e.g. pointing straight into a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkBytes<'a> {
    /// The serialized body.
    pub body: &'a [u8],
    /// The signature (64 bytes when well-formed; checked by the verifier).
    pub signature: &'a [u8],
    /// The unsigned proof of which archives a committed set names (`ArchiveProof::None` when
    /// the body lists its set, or none came).
    pub proof: ArchiveProof<'a>,
}

impl<'a> LinkBytes<'a> {
    /// A link's body and signature, with no archive proof.
    pub fn new(body: &'a [u8], signature: &'a [u8]) -> Self {
        Self {
            body,
            signature,
            proof: ArchiveProof::None,
        }
    }
}

/// A delegation chain built or read by this process.
///
/// A chain built with [`Chain::mint`] and [`Chain::delegate`] only ever narrows; a chain read from
/// elsewhere ([`Chain::from_bytes`], [`Chain::from_reader`]) is parsed but **not** verified: only
/// [`Verifier`](super::Verifier) decides whether a chain grants anything.
///
/// A holder knows every link's archive set, members included: a committed set's members come
/// with the chain (`Chain.archiveProofs`) and are checked against the signed root when read. So a
/// holder can narrow, select and prove; what it writes depends on the reader ([`Chain::write`]
/// for a next holder, [`Chain::write_for`] for one archive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    links: Vec<SignedLink>,
    bodies: Vec<CapabilityBody>,
    /// Each link's archive set, members known.
    sets: Vec<ArchiveSet>,
    /// Each committed link's member tree (shared by clones: the orchestrator proves from it for
    /// every Totebox of a request).
    trees: Vec<Option<Arc<MemberTree>>>,
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
            sets: Vec::new(),
            trees: Vec::new(),
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
        if !self.sets.iter().all(|set| grant.archives.is_within(set)) {
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
        let (archives, tree) = LinkArchives::for_set(&grant.archives);
        let body = CapabilityBody {
            id: CapabilityId::random().map_err(DelegationError::Random)?,
            issuer: issuer.public(),
            holder: grant.holder,
            parent,
            archives,
            scope: grant.scope,
            window: grant.window,
        };
        self.links.push(SignedLink::sign(issuer, &body));
        self.bodies.push(body);
        self.sets.push(grant.archives);
        self.trees.push(tree);
        Ok(())
    }

    /// The links, root first.
    pub fn links(&self) -> &[SignedLink] {
        &self.links
    }

    /// Borrowed views of the links, each committed link with its whole member list as its proof
    /// (any archive of the set can check that, at a cost linear in its size).
    pub fn link_bytes(&self) -> Vec<LinkBytes<'_>> {
        self.links
            .iter()
            .zip(&self.trees)
            .map(|(l, tree)| LinkBytes {
                body: &l.body,
                signature: &l.signature,
                proof: tree.as_ref().map_or(ArchiveProof::None, |t| {
                    ArchiveProof::Members(t.member_bytes())
                }),
            })
            .collect()
    }

    /// Each link's inclusion proof for `archive` (`None` for a link whose set is not committed,
    /// or that does not hold the archive): what [`Chain::write_for`] sends that archive.
    pub fn inclusions_for(&self, archive: &ArchiveDigest) -> Vec<Option<Inclusion>> {
        self.trees
            .iter()
            .map(|tree| {
                let (index, path) = tree.as_ref()?.inclusion(archive)?;
                Some(Inclusion {
                    index,
                    path: path.concat(),
                })
            })
            .collect()
    }

    /// Borrowed views of the links with these inclusion proofs (from [`Chain::inclusions_for`]):
    /// the chain exactly as one archive's verifier sees it.
    pub fn link_bytes_proving<'a>(&'a self, proofs: &'a [Option<Inclusion>]) -> Vec<LinkBytes<'a>> {
        self.links
            .iter()
            .enumerate()
            .map(|(i, l)| LinkBytes {
                body: &l.body,
                signature: &l.signature,
                proof: match proofs.get(i) {
                    Some(Some(p)) => ArchiveProof::Inclusion {
                        index: p.index,
                        path: &p.path,
                    },
                    _ => ArchiveProof::None,
                },
            })
            .collect()
    }

    /// Whether every link's archive set holds `archive`: whether the chain reaches it.
    pub fn reaches(&self, archive: &ArchiveDigest) -> bool {
        self.sets.iter().all(|set| set.contains(archive))
    }

    /// The archives the last link names (members known, committed or not).
    pub fn archives(&self) -> &ArchiveSet {
        self.sets.last().expect("a chain has at least one link")
    }

    /// The decoded bodies, root first.
    pub fn bodies(&self) -> &[CapabilityBody] {
        &self.bodies
    }

    /// The last link's body: who holds the chain and what it allows.
    pub fn last(&self) -> &CapabilityBody {
        self.bodies.last().expect("a chain has at least one link")
    }

    /// Writes the chain for its next holder into a `Chain` struct of a message being built:
    /// every committed link with its whole member list, so the holder can narrow and prove.
    pub fn write(&self, builder: chain::Builder<'_>) {
        self.write_with(builder, |tree, mut proof| {
            proof.set_members(tree.member_bytes());
        });
    }

    /// Writes the chain as `archive`'s Totebox receives it: every committed link with only that
    /// archive's inclusion proof (about `log2(size)` hashes), whatever the set's size. A link that
    /// does not hold the archive gets no proof, and the Totebox refuses the chain.
    pub fn write_for(&self, builder: chain::Builder<'_>, archive: &ArchiveDigest) {
        self.write_with(builder, |tree, mut proof| {
            if let Some((index, path)) = tree.inclusion(archive) {
                let mut inclusion = proof.reborrow().init_inclusion();
                inclusion.set_index(index);
                inclusion.set_path(&path.concat());
            }
        });
    }

    fn write_with(
        &self,
        mut builder: chain::Builder<'_>,
        prove: impl Fn(&MemberTree, archive_proof::Builder<'_>),
    ) {
        let mut list = builder.reborrow().init_links(self.links.len() as u32);
        for (i, link) in self.links.iter().enumerate() {
            let mut entry = list.reborrow().get(i as u32);
            entry.set_body(&link.body);
            entry.set_signature(&link.signature);
        }
        // Only a chain with a committed link carries proofs; others stay as they always were.
        if self.trees.iter().any(Option::is_some) {
            let mut proofs = builder.init_archive_proofs(self.links.len() as u32);
            for (i, tree) in self.trees.iter().enumerate() {
                if let Some(tree) = tree {
                    prove(tree, proofs.reborrow().get(i as u32));
                }
            }
        }
    }

    /// Reads (and decodes, without verifying) a chain from a received `Chain` struct. Every
    /// committed link must come with its whole member list, which must hash to its signed root:
    /// a holder has to know what it holds.
    pub fn from_reader(reader: chain::Reader<'_>) -> Result<Chain, CapabilityError> {
        let links = links_from_reader(reader)?;
        if links.is_empty() {
            return Err(CapabilityError::EmptyChain);
        }
        // A holder reads what no verifier would accept no further: every link is decoded (and
        // a committed one's members hashed) before anything else is judged.
        let max = super::VerifyPolicy::default().max_depth;
        if links.len() > max {
            return Err(CapabilityError::ChainTooDeep {
                depth: links.len(),
                max,
            });
        }
        let mut chain = Chain {
            links: Vec::with_capacity(links.len()),
            bodies: Vec::with_capacity(links.len()),
            sets: Vec::with_capacity(links.len()),
            trees: Vec::with_capacity(links.len()),
        };
        for (i, link) in links.iter().enumerate() {
            let signature = link
                .signature
                .try_into()
                .map_err(|_| CapabilityError::malformed(i, "a signature is 64 bytes"))?;
            let body = CapabilityBody::decode(link.body, i)?;
            let (set, tree) = match &body.archives {
                LinkArchives::Any => (ArchiveSet::Any, None),
                LinkArchives::Listed(members) => (ArchiveSet::Members(members.clone()), None),
                LinkArchives::Committed(commitment) => {
                    let ArchiveProof::Members(bytes) = link.proof else {
                        return Err(CapabilityError::malformed(
                            i,
                            "a committed archive set comes with its members to its holder",
                        ));
                    };
                    let tree = MemberTree::from_wire(bytes)
                        .filter(|t| t.commitment() == *commitment)
                        .ok_or_else(|| {
                            CapabilityError::malformed(
                                i,
                                "the archive set's members do not hash to its signed root",
                            )
                        })?;
                    (
                        ArchiveSet::Members(tree.members().collect()),
                        Some(Arc::new(tree)),
                    )
                }
            };
            chain.bodies.push(body);
            chain.sets.push(set);
            chain.trees.push(tree);
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

/// Borrowed views of the links in a received `Chain` struct, each with its archive proof: nothing
/// is copied. A proof list that is neither empty nor one entry per link is malformed.
pub fn links_from_reader(reader: chain::Reader<'_>) -> Result<Vec<LinkBytes<'_>>, CapabilityError> {
    let list = reader
        .get_links()
        .map_err(|e| CapabilityError::malformed(0, e))?;
    let proofs = reader
        .get_archive_proofs()
        .map_err(|e| CapabilityError::malformed(0, e))?;
    if !proofs.is_empty() && proofs.len() != list.len() {
        return Err(CapabilityError::malformed(
            0,
            "archiveProofs has one entry per link, or none",
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, link)| {
            let proof = if proofs.is_empty() {
                ArchiveProof::None
            } else {
                read_proof(proofs.get(i as u32)).map_err(|e| CapabilityError::malformed(i, e))?
            };
            Ok(LinkBytes {
                body: link
                    .get_body()
                    .map_err(|e| CapabilityError::malformed(i, e))?,
                signature: link
                    .get_signature()
                    .map_err(|e| CapabilityError::malformed(i, e))?,
                proof,
            })
        })
        .collect()
}

fn read_proof(proof: archive_proof::Reader<'_>) -> capnp::Result<ArchiveProof<'_>> {
    Ok(match proof.which()? {
        archive_proof::None(()) => ArchiveProof::None,
        archive_proof::Members(bytes) => ArchiveProof::Members(bytes?),
        archive_proof::Inclusion(inclusion) => ArchiveProof::Inclusion {
            index: inclusion.get_index(),
            path: inclusion.get_path()?,
        },
    })
}
