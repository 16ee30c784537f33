"""PSP capabilities in Python: read a chain, verify it, and delegate a narrower link.

Written from ``schema/capability.capnp`` and ``docs/protocol.md`` alone. The signing rule:

    signature = Ed25519(issuer's key, signingDomain || body)

where ``body`` is the serialized ``CapabilityBody`` message exactly as it travels in
``SignedLink.body``, so nothing is canonicalized: the bytes signed are the bytes sent.

``verify`` checks what a Totebox checks about the chain itself (version, root trust, the issuer
and parent linkage, every signature, windows, and that each link only narrows its parent). It is
conservative about row selectors: a link that narrows rows by key must repeat its parent's
selector exactly to pass here, where the Rust verifier would also accept a strict subset.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

import psp_identity
import psp_schema

ARCHIVE_DOMAIN = b"PSP-ARCHIVE-v1\x00"
LISTED_AT_MOST = 4
"""Archive sets up to this size are listed in a link; larger ones are committed by a Merkle root."""


class Refused(Exception):
    """A chain that fails a rule. ``rule`` uses the Rust side's names (``capability.<rule>``)."""

    def __init__(self, rule: str, message: str):
        super().__init__(f"capability.{rule}: {message}")
        self.rule = rule


def archive_of(path: str) -> str:
    """The archive id at the end of a path through regional orchestrators
    (``eu-west/prop-0042`` is ``prop-0042``): what a capability names."""
    return path.rsplit("/", 1)[-1]


def archive_digest(archive_id: str) -> bytes:
    """How capabilities name an archive: SHA-256 over the domain and the id."""
    return hashlib.sha256(ARCHIVE_DOMAIN + archive_id.encode()).digest()


# Merkle trees (RFC 9162, section 2.1, with SHA-256) over committed archive sets -----------------


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root(leaves: list[bytes]) -> bytes:
    """The Merkle Tree Hash of ``leaves`` (at least one), by the RFC's recursive definition."""
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = 1 << ((len(leaves) - 1).bit_length() - 1)  # the largest power of two below n
    return node_hash(merkle_root(leaves[:k]), merkle_root(leaves[k:]))


def inclusion_path(leaves: list[bytes], index: int) -> list[bytes]:
    """The audit path of leaf ``index``, leaf to root (RFC 9162, section 2.1.3.1)."""
    if len(leaves) == 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if index < k:
        return inclusion_path(leaves[:k], index) + [merkle_root(leaves[k:])]
    return inclusion_path(leaves[k:], index - k) + [merkle_root(leaves[:k])]


def verify_inclusion(root: bytes, size: int, index: int, leaf: bytes, path: list[bytes]) -> bool:
    """Whether ``path`` proves ``leaf`` (the leaf's bytes, an archive digest: hashed here, where
    Rust's ``merkle::verify_inclusion`` takes the leaf hash) is leaf ``index`` of the tree of
    ``size`` leaves with ``root`` (RFC 9162, section 2.1.3.2)."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf_hash(leaf)
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


@dataclass
class Link:
    """One signed link: its body bytes (as signed), its signature, and the body decoded. For a
    link whose archive set is committed, ``members`` holds the set's digests (ascending): they
    travel beside the chain, in ``Chain.archiveProofs``, and were checked against the root."""

    body_bytes: bytes
    signature: bytes
    body: object = field(repr=False)
    members: list[bytes] | None = None


def _digests(blob: bytes) -> list[bytes]:
    """Concatenated digests, checked ascending and unique."""
    if len(blob) % 32:
        raise Refused("malformed", "an archive set's length is not a multiple of 32")
    digests = [blob[i : i + 32] for i in range(0, len(blob), 32)]
    if any(a >= b for a, b in zip(digests, digests[1:])):
        raise Refused("malformed", "an archive set is not in ascending order without duplicates")
    return digests


def read_chain(data: bytes) -> list[Link]:
    """The links of a serialized ``Chain`` message (a ``.cap`` file), decoded but not verified;
    every committed archive set's members must come with it and hash to its signed root."""
    with psp_schema.capability.Chain.from_bytes(data) as chain:
        proofs = list(chain.archiveProofs)
        if proofs and len(proofs) != len(chain.links):
            raise Refused("malformed", "archiveProofs has one entry per link, or none")
        links = []
        for i, link in enumerate(chain.links):
            body_bytes = bytes(link.body)
            with psp_schema.capability.CapabilityBody.from_bytes(body_bytes) as body:
                members = None
                if body.archives.which() == "committed":
                    if not proofs or proofs[i].which() != "members":
                        raise Refused("malformed", f"link {i} commits to its archive set "
                                                   "but its members did not come with it")
                    members = _digests(bytes(proofs[i].members))
                    committed = body.archives.committed
                    if (not members or len(members) != committed.size
                            or merkle_root(members) != bytes(committed.root)):
                        raise Refused("malformed", f"link {i}: the archive set's members do not "
                                                   "hash to its signed root")
                links.append(Link(body_bytes, bytes(link.signature), body.as_builder(), members))
        return links


def write_chain(links: list[Link]) -> bytes:
    """A serialized ``Chain`` message of ``links`` for their next holder: each committed archive
    set with its members."""
    chain = psp_schema.capability.Chain.new_message()
    out = chain.init("links", len(links))
    for i, link in enumerate(links):
        out[i].body = link.body_bytes
        out[i].signature = link.signature
    if any(link.members is not None for link in links):
        proofs = chain.init("archiveProofs", len(links))
        for i, link in enumerate(links):
            if link.members is not None:
                proofs[i].members = b"".join(link.members)
    return chain.to_bytes()


def _archives(link: Link) -> set[bytes] | None:
    """The archive digests a link names (listed or committed), or None for any archive."""
    which = link.body.archives.which()
    if which == "anyArchive":
        return None
    if which == "committed":
        return set(link.members)
    return set(_digests(bytes(link.body.archives.members)))


def _may_follow(child: Link, parent: Link) -> bool:
    """The `widened-archives` rule, as a Totebox applies it: two listed sets compare as sets, an
    any-archive parent allows anything and an any-archive child under a named parent is wider; a
    committed set on either side is judged per archive (every link must hold the archive),
    since a Totebox sees only its own proof."""
    kinds = (child.body.archives.which(), parent.body.archives.which())
    if kinds[1] == "anyArchive":
        return True
    if kinds[0] == "anyArchive":
        return False
    if "committed" in kinds:
        return True
    return _archives(child) <= _archives(parent)


def reached(links: list[Link]) -> set[bytes] | None:
    """The archives every link names (the chain reaches only those), or None for any."""
    out = None
    for link in links:
        names = _archives(link)
        if names is not None:
            out = names if out is None else out & names
    return out


def command_digest(name: str, collection: str, idempotency_key: bytes, arguments: bytes) -> bytes:
    """The digest that binds a link to one command (``Command`` in ``totebox.capnp``)."""
    digest = hashlib.sha256(b"PSP-CMD-v1\x00")
    for part in (name.encode(), collection.encode(), idempotency_key):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    digest.update(arguments)
    return digest.digest()


def _operation(op) -> tuple:
    """("describe",), ("query",) or ("command", name, digest, holderBinds)."""
    which = op.which()
    if which == "command":
        digest = bytes(op.command.digest)
        return ("command", op.command.name, digest, op.command.holderBinds and not digest)
    return (which,)


def _operation_within(child: tuple, parents: list[tuple]) -> bool:
    for parent in parents:
        if child[0] != parent[0]:
            continue
        if child[0] != "command":
            return True
        if child[1] != parent[1]:
            continue
        if parent[2]:
            if child[2] == parent[2]:
                return True
        elif child[2] or not parent[3]:
            # Under a parent whose holder must bind the command, only a bound one is within.
            return True
    return False


def _collections(scope) -> dict | None:
    """name -> (fields or None for all, rows as a comparable value), or None for all."""
    if scope.collections.which() == "allCollections":
        return None
    grants = {}
    for grant in scope.collections.only:
        fields = None if grant.fields.which() == "allFields" else set(grant.fields.only)
        rows = None if grant.rows.which() == "allRows" else grant.rows.keys.to_dict()
        grants[grant.name] = (fields, rows)
    return grants


def _scope_within(child, parent) -> str | None:
    """Why ``child`` grants more than ``parent``, or None when it does not."""
    parent_ops = [_operation(op) for op in parent.operations]
    for op in child.operations:
        if not _operation_within(_operation(op), parent_ops):
            return f"operation {_operation(op)} is not granted by the parent"
    theirs = _collections(parent)
    if theirs is None:
        return None
    ours = _collections(child)
    if ours is None:
        return "all collections, but the parent grants only some"
    for name, (fields, rows) in ours.items():
        if name not in theirs:
            return f"collection {name!r} is not granted by the parent"
        parent_fields, parent_rows = theirs[name]
        if parent_fields is not None and (fields is None or not fields <= parent_fields):
            return f"fields of collection {name!r} exceed the parent's"
        if parent_rows is not None and rows != parent_rows:
            return f"rows of collection {name!r} are not the parent's (this verifier is strict)"
    return None


CLOCK_SKEW = 30
"""Seconds of clock difference a Totebox tolerates at either end of a window."""
MAX_LIFETIME = 15 * 60
"""Longest a Totebox lets the last link of a presented chain last."""


def verify(links: list[Link], trusted_roots: list[bytes], now: int | None = None,
           presented: bool = False, skew: int = CLOCK_SKEW) -> None:
    """Raises Refused (with the Rust side's rule name) unless the chain is valid at ``now``,
    allowing ``skew`` seconds of clock difference at either end of the last link's window. With
    ``presented`` (the chain as a Totebox receives it), its last link may also last at most
    ``MAX_LIFETIME``: a presented capability is always short-lived."""
    now = int(time.time()) if now is None else now
    if not links:
        raise Refused("empty-chain", "a chain needs at least one link")
    previous = None
    for i, link in enumerate(links):
        body = link.body
        if body.version != psp_schema.FORMAT_VERSION:
            raise Refused("unsupported-version", f"link {i} has version {body.version}")
        issuer = bytes(body.issuer)
        if previous is None:
            if issuer not in trusted_roots:
                raise Refused("untrusted-root", f"root issuer {psp_identity.printable(issuer)}")
            if len(body.parent):
                raise Refused("malformed", "the root link names a parent")
        else:
            if issuer != bytes(previous.body.holder):
                raise Refused("broken-delegation", f"link {i} is not signed by the previous holder")
            if bytes(body.parent) != previous.signature:
                raise Refused("parent-mismatch", f"link {i} names another parent")
        try:
            Ed25519PublicKey.from_public_bytes(issuer).verify(
                link.signature, psp_schema.SIGNING_DOMAIN + link.body_bytes
            )
        except (InvalidSignature, ValueError):
            raise Refused("bad-signature", f"link {i}") from None
        if body.notAfter <= body.notBefore:
            raise Refused("empty-window", f"link {i}")
        if previous is not None:
            p = previous.body
            if body.notBefore < p.notBefore or body.notAfter > p.notAfter:
                raise Refused("widened-window", f"link {i} outlives its parent")
            if not _may_follow(link, previous):
                raise Refused("widened-archives", f"link {i} names archives its parent does not")
            why = _scope_within(body.scope, p.scope)
            if why:
                raise Refused("widened-scope", f"link {i}: {why}")
        previous = link
    last = links[-1].body
    if now < last.notBefore - skew:
        raise Refused("not-yet-valid", f"valid from {last.notBefore}")
    if now >= last.notAfter + skew:
        raise Refused("expired", f"expired at {last.notAfter}")
    if presented and last.notAfter - last.notBefore > MAX_LIFETIME:
        raise Refused("lifetime-too-long",
                      f"the last link lasts {last.notAfter - last.notBefore} s; at most {MAX_LIFETIME}")


def delegate(
    links: list[Link],
    signer: Ed25519PrivateKey,
    holder: bytes,
    lifetime: int,
    archives: list[str] | None = None,
    operations: list[tuple] | None = None,
    collections: dict[str, list[str] | None] | None = None,
) -> list[Link]:
    """A new chain: ``links`` plus a link from ``signer`` (the last holder) to ``holder``.

    ``archives`` (ids), ``operations`` (``("query",)``, ``("command", name)`` or
    ``("command", name, digest)`` for a link bound to one command) and ``collections`` (name ->
    the fields referenced, or None for the parent's fields; each keeps the parent's rows) replace
    the parent's when given. Nothing checks here that they narrow it: the Totebox does, which is
    how a test shows a widening link refused. The window starts now and never outlives the
    parent's.
    """
    parent = links[-1]
    now = int(time.time())
    body = psp_schema.capability.CapabilityBody.new_message()
    body.version = psp_schema.FORMAT_VERSION
    body.id = os.urandom(16)
    body.issuer = psp_identity.raw_public(signer)
    body.holder = holder
    body.parent = parent.signature
    members = None
    if archives is None:
        body.archives = parent.body.archives
        members = parent.members
    else:
        digests = sorted({archive_digest(a) for a in archives})
        if len(digests) <= LISTED_AT_MOST:
            body.archives.members = b"".join(digests)
        else:
            # Committed: the body signs the root; the members travel beside it to the holder,
            # which sends each Totebox only its own inclusion proof.
            committed = body.archives.init("committed")
            committed.root = merkle_root(digests)
            committed.size = len(digests)
            members = digests
    body.scope = parent.body.scope
    if collections is not None:
        _narrow_collections(body.scope, parent.body.scope, collections)
    if operations is not None:
        ops = body.scope.init("operations", len(operations))
        for i, op in enumerate(operations):
            if op[0] == "command":
                command = ops[i].init("command")
                command.name = op[1]
                if len(op) > 2 and op[2]:
                    command.digest = op[2]
            else:
                setattr(ops[i], op[0], None)
    body.notBefore = max(now - 5, parent.body.notBefore)
    body.notAfter = min(now + lifetime, parent.body.notAfter)
    body_bytes = body.to_bytes()
    signature = signer.sign(psp_schema.SIGNING_DOMAIN + body_bytes)
    with psp_schema.capability.CapabilityBody.from_bytes(body_bytes) as decoded:
        return links + [Link(body_bytes, signature, decoded.as_builder(), members)]


def _narrow_collections(scope, parent_scope, wanted: dict[str, list[str] | None]) -> None:
    """Only the ``wanted`` collections the parent reaches, each with only the wanted fields the
    parent allows and the parent's rows."""
    parent_all = parent_scope.collections.which() == "allCollections"
    granted = {} if parent_all else {g.name: g for g in parent_scope.collections.only}
    names = [n for n in sorted(wanted) if parent_all or n in granted]
    grants = scope.collections.init("only", len(names))
    for grant, name in zip(grants, names):
        grant.name = name
        parent_grant = None if parent_all else granted[name]
        parent_fields = None
        if parent_grant is not None and parent_grant.fields.which() == "only":
            parent_fields = set(parent_grant.fields.only)
        fields = wanted[name]
        if fields is None and parent_fields is None:
            grant.fields.allFields = None
        else:
            keep = sorted(f for f in (fields if fields is not None else parent_fields)
                          if parent_fields is None or f in parent_fields)
            only = grant.fields.init("only", len(keep))
            for i, f in enumerate(keep):
                only[i] = f
        if parent_grant is None:
            grant.rows.allRows = None
        else:
            grant.rows = parent_grant.rows
