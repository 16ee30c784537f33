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


class Refused(Exception):
    """A chain that fails a rule. ``rule`` uses the Rust side's names (``capability.<rule>``)."""

    def __init__(self, rule: str, message: str):
        super().__init__(f"capability.{rule}: {message}")
        self.rule = rule


def archive_digest(archive_id: str) -> bytes:
    """How capabilities name an archive: SHA-256 over the domain and the id."""
    return hashlib.sha256(ARCHIVE_DOMAIN + archive_id.encode()).digest()


@dataclass
class Link:
    """One signed link: its body bytes (as signed), its signature, and the body decoded."""

    body_bytes: bytes
    signature: bytes
    body: object = field(repr=False)


def read_chain(data: bytes) -> list[Link]:
    """The links of a serialized ``Chain`` message (a ``.cap`` file), decoded but not verified."""
    with psp_schema.capability.Chain.from_bytes(data) as chain:
        links = []
        for link in chain.links:
            body_bytes = bytes(link.body)
            with psp_schema.capability.CapabilityBody.from_bytes(body_bytes) as body:
                links.append(Link(body_bytes, bytes(link.signature), body.as_builder()))
        return links


def write_chain(links: list[Link]) -> bytes:
    """A serialized ``Chain`` message of ``links``."""
    chain = psp_schema.capability.Chain.new_message()
    out = chain.init("links", len(links))
    for i, link in enumerate(links):
        out[i].body = link.body_bytes
        out[i].signature = link.signature
    return chain.to_bytes()


def _archives(body) -> set[bytes] | None:
    """The archive digests a body names, or None for any archive."""
    which = body.archives.which()
    if which == "anyArchive":
        return None
    members = bytes(body.archives.members)
    if len(members) % 32:
        raise Refused("malformed", "an archive set's length is not a multiple of 32")
    digests = [members[i : i + 32] for i in range(0, len(members), 32)]
    if digests != sorted(set(digests)):
        raise Refused("malformed", "an archive set is not in ascending order without duplicates")
    return set(digests)


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
            theirs, ours = _archives(p), _archives(body)
            if theirs is not None and (ours is None or not ours <= theirs):
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
    if archives is None:
        body.archives = parent.body.archives
    else:
        body.archives.members = b"".join(sorted({archive_digest(a) for a in archives}))
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
        return links + [Link(body_bytes, signature, decoded.as_builder())]


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
