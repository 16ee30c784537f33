//! Verifying a chain presented by a peer, and authorizing requests under it.
//!
//! Verification has two halves with different lifetimes:
//!
//! * **Links** (cacheable): every signature verifies under its issuer's key; each link's issuer is
//!   the previous link's holder and its `parent` names that link; each link only narrows archives,
//!   scope and window; every body is well-formed and within size limits. This depends only on the
//!   bytes, so [`ChainCache`] may remember it.
//! * **Context** (every call): the root is trusted *now*; no link is revoked; the window covers now
//!   (within the clock skew); the last link's lifetime is under the cap; its holder is the
//!   authenticated peer. Then the request is checked against the scope. None of this is ever
//!   cached, so reloading roots or revocations, a clock moving past `notAfter`, or a replay by
//!   another machine takes effect on the very next call.
//! * **This archive** (when a chain is presented): every link's archive set holds this archive,
//!   a committed set by the proof that came with the link. Fixed by the bytes presented, so a
//!   session checks it once, at `open`.

use std::collections::HashSet;
use std::sync::Arc;

use super::body::CapabilityBody;
use super::cache::ChainCache;
use super::chain::{LinkBytes, SIGNING_DOMAIN};
use super::{CapabilityError, CapabilityId};
use crate::archive_set::{ArchiveDigest, ArchiveProof, LinkArchives};
use crate::identity::PublicKey;
use crate::scope::{Access, CollectionAccess, CommandDigest, Operation, Scope};
use crate::window::{UnixSeconds, Window};

/// Limits a verifier enforces. The defaults are the protocol's recommended values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyPolicy {
    /// Most links in a chain (default 8).
    pub max_depth: usize,
    /// Largest body of one link in bytes (default 64 KiB: room for ~1,900 archives in a set).
    pub max_link_bytes: usize,
    /// Largest chain, all bodies and signatures, in bytes (default 256 KiB).
    pub max_chain_bytes: usize,
    /// Clock difference tolerated between issuer and verifier, in seconds (default 30).
    pub clock_skew: i64,
    /// Longest lifetime accepted for the last link, in seconds (default 900: 15 minutes), so a
    /// presented capability is always short-lived whatever its ancestors allow.
    pub max_lifetime: i64,
}

impl Default for VerifyPolicy {
    fn default() -> Self {
        Self {
            max_depth: 8,
            max_link_bytes: 64 * 1024,
            max_chain_bytes: 256 * 1024,
            clock_skew: 30,
            max_lifetime: 15 * 60,
        }
    }
}

/// Who presents a chain, and where: the TLS-authenticated peer and this archive.
#[derive(Debug, Clone, Copy)]
pub struct Presenter<'a> {
    /// The peer's machine key, from the TLS session (never from the request).
    pub peer: &'a PublicKey,
    /// The digest of the archive being accessed.
    pub archive: &'a ArchiveDigest,
}

/// One verified link: enough to audit who delegated what to whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedLink {
    /// The link's id.
    pub id: CapabilityId,
    /// Who signed it.
    pub issuer: PublicKey,
    /// Who it was granted to.
    pub holder: PublicKey,
    /// Its window.
    pub window: Window,
}

/// A chain whose links are known to be valid. What it grants in a given context is still checked
/// by [`Verifier::check_context`] on every call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChain {
    links: Vec<VerifiedLink>,
    /// Each link's operations, root first: which link first binds a command.
    operations: Vec<Vec<Operation>>,
    /// Each link's archive set, root first, as its body names it.
    archives: Vec<LinkArchives>,
    scope: Scope,
    /// An archive these very links were found to reach (see [`VerifiedChain::reaches`]).
    reached: Reached,
}

/// The archive a cached chain was last found to reach, so that every later call from that
/// archive's Totebox skips the set checks (for a committed set, a Merkle path per link: about
/// 2.4 µs a link, ten times the rest of a cached check). Only a success is kept, and it is a
/// fact about the signed sets: a valid proof is valid whoever sends it. Never carried over:
/// a clone (the start of a longer chain) begins empty, and equality ignores it.
#[derive(Debug, Default)]
struct Reached(std::sync::OnceLock<ArchiveDigest>);

impl Clone for Reached {
    fn clone(&self) -> Self {
        Reached::default()
    }
}

impl PartialEq for Reached {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Reached {}

impl VerifiedChain {
    /// The links, root first (the issuer chain that Totebox audit logs record).
    pub fn links(&self) -> &[VerifiedLink] {
        &self.links
    }

    /// The root link's issuer: the trusted key all authority comes from.
    pub fn root_issuer(&self) -> &PublicKey {
        &self.links[0].issuer
    }

    /// The last link: who holds the chain, who delegated it last, and its window.
    pub fn last(&self) -> &VerifiedLink {
        self.links
            .last()
            .expect("a verified chain has at least one link")
    }

    /// Each link's archive set as its body names it, root first. The chain reaches an archive
    /// that every one of them admits.
    pub fn link_archives(&self) -> &[LinkArchives] {
        &self.archives
    }

    /// Whether every link's archive set admits `archive`, given the proofs that came with the
    /// links (`links` must be the bytes this chain was verified from).
    pub fn reaches(&self, archive: &ArchiveDigest, links: &[LinkBytes<'_>]) -> bool {
        if self.archives.len() != links.len() {
            return false;
        }
        if self.reached.0.get() == Some(archive) {
            return true;
        }
        let reached = self
            .archives
            .iter()
            .zip(links)
            .all(|(set, link)| set.admits(archive, &link.proof));
        if reached {
            let _ = self.reached.0.set(*archive);
        }
        reached
    }

    /// What the chain allows (the last link's scope, the narrowest).
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The idempotency namespace of the command `name` with `digest` under this chain: the key
    /// in whose name the Totebox records it as applied.
    ///
    /// It is the issuer of the first link that binds the command's digest, or, when no link
    /// binds it before the presenter's custody begins, the issuer of the first link held by the
    /// presenter (the last holder). Either way it is a key upstream of the presenting machine:
    /// links the presenter adds (to itself, through keys it makes up, with fresh ids) can never
    /// move a command into a fresh namespace, and a console that retries a command under a new
    /// request link (a new id, through another orchestrator replica or a deeper tree) keeps its
    /// own. An id-keyed ledger would lose the second property, so the issuer is the key.
    pub fn idempotency_namespace(&self, name: &str, digest: &CommandDigest) -> &PublicKey {
        let presenter = &self.last().holder;
        let custody = self
            .links
            .iter()
            .position(|l| l.holder == *presenter)
            .unwrap_or(self.links.len() - 1);
        let binding = self
            .operations
            .iter()
            .position(|ops| Operation::binds_in(ops, name, digest))
            .unwrap_or(usize::MAX);
        &self.links[binding.min(custody)].issuer
    }

    /// Checks a request against the chain's scope; returns the collection's grant, if any.
    pub fn authorize(
        &self,
        access: &Access<'_>,
    ) -> Result<Option<CollectionAccess<'_>>, CapabilityError> {
        self.scope.authorize(access)
    }
}

/// Verifies chains for one Totebox: its trusted roots, revocations, limits and chain cache.
///
/// Cheap to rebuild on a config reload; share the [`ChainCache`] between the old and the new
/// verifier, since it records only facts about bytes, never trust decisions.
#[derive(Debug)]
pub struct Verifier {
    policy: VerifyPolicy,
    trusted_roots: HashSet<PublicKey>,
    revoked: HashSet<CapabilityId>,
    cache: Arc<ChainCache>,
}

impl Verifier {
    /// A verifier trusting these root keys, with the default policy and a fresh cache.
    pub fn new(trusted_roots: impl IntoIterator<Item = PublicKey>) -> Self {
        Self {
            policy: VerifyPolicy::default(),
            trusted_roots: trusted_roots.into_iter().collect(),
            revoked: HashSet::new(),
            cache: Arc::new(ChainCache::default()),
        }
    }

    /// Replaces the limits.
    pub fn with_policy(mut self, policy: VerifyPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Refuses every chain containing a link with one of these ids.
    pub fn with_revoked(mut self, revoked: impl IntoIterator<Item = CapabilityId>) -> Self {
        self.revoked = revoked.into_iter().collect();
        self
    }

    /// Uses `cache` (e.g. the previous verifier's, across a reload). A cache of capacity 0 turns
    /// caching off.
    pub fn with_cache(mut self, cache: Arc<ChainCache>) -> Self {
        self.cache = cache;
        self
    }

    /// The limits in force.
    pub fn policy(&self) -> &VerifyPolicy {
        &self.policy
    }

    /// The verified-chain cache.
    pub fn cache(&self) -> &Arc<ChainCache> {
        &self.cache
    }

    /// Verifies a chain presented by `presenter` at time `now`, then authorizes `access` under it.
    pub fn verify(
        &self,
        links: &[LinkBytes<'_>],
        presenter: &Presenter<'_>,
        access: &Access<'_>,
        now: UnixSeconds,
    ) -> Result<Arc<VerifiedChain>, CapabilityError> {
        let chain = self.check_chain(links, presenter, now)?;
        chain.authorize(access)?;
        Ok(chain)
    }

    /// Verifies a chain presented by `presenter` at time `now` (what `open` does), using the cache:
    /// the links, the context, and that every link's archive set admits this archive.
    pub fn check_chain(
        &self,
        links: &[LinkBytes<'_>],
        presenter: &Presenter<'_>,
        now: UnixSeconds,
    ) -> Result<Arc<VerifiedChain>, CapabilityError> {
        // The limits first, before any work that grows with the chain: a presented chain of a
        // million empty links costs one length check, not a million cache lookups.
        self.check_sizes(links)?;
        let chain = match self.cache.lookup(links, now) {
            Some(chain) => chain,
            None => {
                // A request link is new every time, but what it extends (an operator's grant)
                // is not: start from the longest prefix already verified, so a request costs
                // the new link's signature alone.
                let known = (1..links.len())
                    .rev()
                    .find_map(|k| self.cache.lookup(&links[..k], now));
                let want_prefix = known.is_none() && links.len() > 1;
                let (chain, prefix) =
                    self.check_links_after(links, known.as_deref(), want_prefix)?;
                let chain = Arc::new(chain);
                // Cached before the context checks: a replay from a wrong machine or a stale
                // request then costs no signature work the second time, and the context is
                // checked on every call anyway.
                let skew = self.policy.clock_skew;
                let expires =
                    |chain: &VerifiedChain| chain.last().window.not_after().saturating_add(skew);
                self.cache.insert(links, &chain, expires(&chain), now);
                if let Some(prefix) = prefix {
                    let prefix = Arc::new(prefix);
                    self.cache
                        .insert(&links[..links.len() - 1], &prefix, expires(&prefix), now);
                }
                chain
            }
        };
        self.check_context(&chain, presenter, now)?;
        if !chain.reaches(presenter.archive, links) {
            return Err(CapabilityError::ArchiveNotInScope);
        }
        Ok(chain)
    }

    /// The per-call checks: root trusted, nothing revoked, window covers now, lifetime under the
    /// cap, holder is the peer. Sessions call this before every request. Whether the chain
    /// reaches this archive is fixed by the bytes presented and checked once, by
    /// [`Verifier::check_chain`].
    pub fn check_context(
        &self,
        chain: &VerifiedChain,
        presenter: &Presenter<'_>,
        now: UnixSeconds,
    ) -> Result<(), CapabilityError> {
        let root = chain.root_issuer();
        if !self.trusted_roots.contains(root) {
            return Err(CapabilityError::UntrustedRoot { issuer: *root });
        }
        if !self.revoked.is_empty()
            && let Some((link, l)) = chain
                .links
                .iter()
                .enumerate()
                .find(|(_, l)| self.revoked.contains(&l.id))
        {
            return Err(CapabilityError::Revoked { link, id: l.id });
        }
        // Every ancestor's window contains the last link's, so checking the last one suffices.
        let last = chain.last();
        let skew = self.policy.clock_skew;
        // Saturating: a window at the edge of the 64-bit range gets its real rule (its lifetime
        // is too long), never a wrapped time.
        if now < last.window.not_before().saturating_sub(skew) {
            return Err(CapabilityError::NotYetValid {
                not_before: last.window.not_before(),
                now,
            });
        }
        if now >= last.window.not_after().saturating_add(skew) {
            return Err(CapabilityError::Expired {
                not_after: last.window.not_after(),
                now,
            });
        }
        if last.window.lifetime() > self.policy.max_lifetime {
            return Err(CapabilityError::LifetimeTooLong {
                lifetime: last.window.lifetime(),
                max: self.policy.max_lifetime,
            });
        }
        if last.holder != *presenter.peer {
            return Err(CapabilityError::WrongHolder {
                holder: last.holder,
                peer: *presenter.peer,
            });
        }
        Ok(())
    }

    /// The uncached half: sizes, signatures, delegation links, parents and narrowing.
    ///
    /// Each link's signature is checked before its body is interpreted; the only field read before
    /// that is the issuer, which says which key to check it with.
    pub fn check_links(&self, links: &[LinkBytes<'_>]) -> Result<VerifiedChain, CapabilityError> {
        self.check_sizes(links)?;
        Ok(self.check_links_after(links, None, false)?.0)
    }

    /// The depth and size limits, proofs included (a member list is bytes to hash like any
    /// other).
    fn check_sizes(&self, links: &[LinkBytes<'_>]) -> Result<(), CapabilityError> {
        let policy = &self.policy;
        if links.is_empty() {
            return Err(CapabilityError::EmptyChain);
        }
        if links.len() > policy.max_depth {
            return Err(CapabilityError::ChainTooDeep {
                depth: links.len(),
                max: policy.max_depth,
            });
        }
        let mut total = 0usize;
        for link in links {
            if link.body.len() > policy.max_link_bytes {
                return Err(CapabilityError::ChainTooLarge {
                    bytes: link.body.len(),
                    max: policy.max_link_bytes,
                });
            }
            let proof = match link.proof {
                ArchiveProof::None => 0,
                ArchiveProof::Members(bytes) => bytes.len(),
                ArchiveProof::Inclusion { path, .. } => path.len(),
            };
            total += link.body.len() + link.signature.len() + proof;
        }
        if total > policy.max_chain_bytes {
            return Err(CapabilityError::ChainTooLarge {
                bytes: total,
                max: policy.max_chain_bytes,
            });
        }
        Ok(())
    }

    /// The links after `known` (the verified chain of the first links, as the cache holds it
    /// for exactly those bytes), each checked against the one before it; the sizes are already
    /// checked. With `want_prefix`, also the verified chain of all links but the last, for the
    /// cache.
    fn check_links_after(
        &self,
        links: &[LinkBytes<'_>],
        known: Option<&VerifiedChain>,
        want_prefix: bool,
    ) -> Result<(VerifiedChain, Option<VerifiedChain>), CapabilityError> {
        let start = known.map_or(0, |k| k.links.len()).min(links.len());
        let mut chain = match known {
            Some(known) if start > 0 => known.clone(),
            _ => VerifiedChain {
                links: Vec::with_capacity(links.len()),
                operations: Vec::with_capacity(links.len()),
                archives: Vec::with_capacity(links.len()),
                // Grants nothing; replaced by the first link's scope.
                scope: Scope {
                    collections: crate::scope::Collections::Only(Default::default()),
                    operations: Vec::new(),
                },
                reached: Reached::default(),
            },
        };
        let mut prefix = None;
        let mut signed = Vec::with_capacity(SIGNING_DOMAIN.len() + links[start].body.len());
        for (i, link) in links.iter().enumerate().skip(start) {
            let signature: &[u8; 64] = link
                .signature
                .try_into()
                .map_err(|_| CapabilityError::malformed(i, "a signature is 64 bytes"))?;
            let issuer = CapabilityBody::peek_issuer(link.body, i)?;
            match chain.links.last() {
                None if !self.trusted_roots.contains(&issuer) => {
                    return Err(CapabilityError::UntrustedRoot { issuer });
                }
                Some(parent) if parent.holder != issuer => {
                    return Err(CapabilityError::BrokenDelegation {
                        link: i,
                        issuer,
                        expected: parent.holder,
                    });
                }
                _ => {}
            }
            signed.clear();
            signed.extend_from_slice(SIGNING_DOMAIN);
            signed.extend_from_slice(link.body);
            if !issuer.verify_strict(&signed, signature) {
                return Err(CapabilityError::BadSignature { link: i });
            }
            let body = CapabilityBody::decode(link.body, i)?;
            match i {
                0 if body.parent.is_some() => {
                    return Err(CapabilityError::ParentMismatch { link: i });
                }
                0 => {}
                _ => check_narrowing(i, &body, &chain, links[i - 1].signature)?,
            }
            chain.links.push(VerifiedLink {
                id: body.id,
                issuer: body.issuer,
                holder: body.holder,
                window: body.window,
            });
            chain.operations.push(body.scope.operations.clone());
            chain.archives.push(body.archives);
            chain.scope = body.scope;
            if want_prefix && i + 2 == links.len() {
                prefix = Some(chain.clone());
            }
        }
        Ok((chain, prefix))
    }
}

/// A delegated link must name its parent (the last link of `chain`, verified) and narrow it in
/// archives, scope and window.
fn check_narrowing(
    link: usize,
    body: &CapabilityBody,
    chain: &VerifiedChain,
    parent_signature: &[u8],
) -> Result<(), CapabilityError> {
    if body.parent.as_ref().map(|p| &p[..]) != Some(parent_signature) {
        return Err(CapabilityError::ParentMismatch { link });
    }
    let parent_archives = chain.archives.last().expect("a parent link");
    if !body.archives.may_follow(parent_archives) {
        return Err(CapabilityError::WidenedArchives { link });
    }
    body.scope
        .is_within(chain.scope())
        .map_err(|detail| CapabilityError::WidenedScope { link, detail })?;
    if !chain.last().window.contains_window(&body.window) {
        return Err(CapabilityError::WidenedWindow { link });
    }
    Ok(())
}
