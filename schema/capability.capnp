# PSP capabilities: the signed objects that carry every piece of authority in the PointSav Protocol.
#
# A capability is a chain of signed links. The first link (the root) is signed by a key that the
# Totebox trusts; every later link is signed by the holder of the link before it, and may only narrow
# what its parent allows (archives, scope, time window). The last link names the machine key of the
# peer that presents the chain: a Totebox accepts the chain only from that TLS-authenticated peer.
#
# Signing rule (reproducible in any language, no canonicalization library needed):
#
#   body      = the bytes of one Cap'n Proto message whose root is `CapabilityBody`, in the standard
#               (unpacked) stream serialization: segment table followed by the segments.
#   signature = Ed25519(issuer's private key, "PSP-CAP-v1\0" || body)
#
# A verifier checks the signature over the exact `body` bytes first and only then parses them (with
# reader limits). It never re-encodes a body. The Rust implementation emits canonical single-segment
# bodies, so the same body always has the same bytes, but any valid encoding verifies.
#
# Time values in this file are whole seconds since the Unix epoch (UTC).
# Keys are raw 32-byte Ed25519 public keys. Fingerprints in configs and logs print them as
# "ed25519:" followed by 64 lowercase hex digits.

@0xf83578186051cf4b;

using Query = import "query.capnp";

const signingDomain :Data = "PSP-CAP-v1\x00";
# Prefix signed in front of every body. Keeps a PSP signature from ever being valid for another
# protocol's message (and the reverse).

const formatVersion :UInt16 = 1;
# The only body format version this schema describes. A verifier rejects any other.

struct CapabilityBody {
  # What one link of a chain grants. Everything here is covered by the link's signature.

  version @0 :UInt16;
  # Body format version; must equal `formatVersion`.

  id @1 :Data;
  # 16 random bytes chosen by the issuer. Names this link in revocation lists and audit logs.

  issuer @2 :Data;
  # 32-byte Ed25519 public key that signed this link. For the root link it must be a key the
  # Totebox trusts; for any later link it must equal the previous link's `holder`.

  holder @3 :Data;
  # 32-byte Ed25519 public key of the machine this link is granted to. The holder of the last link
  # must be the TLS-authenticated peer presenting the chain.

  parent @4 :Data;
  # For a delegated link: the 64-byte signature of the link it narrows, which binds this link to
  # exactly one parent (it cannot be grafted onto another chain). Empty for the root link.

  archives @5 :ArchiveSet;
  # Which archives (Toteboxes) this link is good for.

  scope @6 :Scope;
  # What may be done there: collections, fields, rows and operations.

  notBefore @7 :Int64;
  # Start of the validity window, inclusive (seconds since the Unix epoch).

  notAfter @8 :Int64;
  # End of the validity window, exclusive. Must be greater than `notBefore`.
}

struct ArchiveSet {
  # A set of archives. Archives are named by digest, not by id, so a Totebox that finds itself in
  # the set can learn other members only by guessing their ids and hashing them (from a listed
  # set it can test every guess; from a committed set's inclusion proof only the set's size and
  # its neighbouring leaf):
  #
  #   archiveDigest(id) = SHA-256("PSP-ARCHIVE-v1\0" || UTF-8 bytes of the archive id)

  union {
    anyArchive @0 :Void;
    # Every archive that accepts this chain's root. Meant for root grants by a fleet owner.

    members @1 :Data;
    # The member digests, 32 bytes each, concatenated in ascending byte order with no duplicates
    # (a length that is not a multiple of 32, or any other order, is malformed). One blob rather
    # than a list of blobs. Every Totebox receives every member, so this suits small sets.

    committed :group {
      # The members committed to by a Merkle tree (RFC 9162, section 2.1, with SHA-256) whose
      # leaves are the member digests in ascending byte order with no duplicates. The members
      # travel beside the chain, never in the signed body: in `Chain.archiveProofs`, as the whole
      # list (to a holder that delegates or fans out) or as one archive's inclusion proof (to that
      # archive), so a Totebox receives about log2(size) hashes however large the set.

      root @2 :Data;
      # The 32-byte Merkle Tree Hash of the leaves.

      size @3 :UInt32;
      # How many members (leaves); at least 1.
    }
  }
}

struct ArchiveProof {
  # Unsigned evidence that goes with one link whose archive set is `committed`.

  union {
    none @0 :Void;
    # Nothing: the link's set is `anyArchive` or `members`, or the sender has no proof.

    members @1 :Data;
    # The whole set, as `ArchiveSet.members` would list it; it must hash to the link's root and
    # size. What a console sends its orchestrator, which computes each Totebox's proof from it.

    inclusion :group {
      # One archive's inclusion proof (RFC 9162, section 2.1.3): what a Totebox receives.

      index @2 :UInt32;
      # The archive's leaf index: its digest's position in ascending order.

      path @3 :Data;
      # The audit path, 32-byte hashes concatenated, leaf to root.
    }
  }
}

struct Scope {
  # What a link allows inside the archives it names.

  collections :union {
    allCollections @0 :Void;
    # Every collection, every field, every row.

    only @1 :List(CollectionGrant);
    # Only these collections (each name at most once).
  }

  operations @2 :List(Operation);
  # The operations allowed. Empty means nothing may be done.
}

struct CollectionGrant {
  # Access to one collection of an archive.

  name @0 :Text;
  # The collection's name, as the Totebox describes it.

  fields :union {
    allFields @1 :Void;
    # Any field of the collection (the Totebox's exposure policy still applies).

    only @2 :List(Text);
    # Only these fields. A request may reference (project, filter, group, order or aggregate)
    # no other field.
  }

  rows @3 :RowSelector;
  # Which rows. ANDed into every query on this collection.
}

struct RowSelector {
  # A set of rows of one collection, by key.

  union {
    allRows @0 :Void;
    # Every row.

    keys @1 :KeySelector;
    # Only rows whose key field falls in this set.
  }
}

struct KeySelector {
  # Rows whose `field` equals one of `values` or falls in one of `ranges`.

  field @0 :Text;
  # The key field. A child link's selector must use the same field as its parent's.

  values @1 :List(Query.Value);
  # Exact key values. Only `int` and `text` values are valid keys.

  ranges @2 :List(KeyRange);
  # Key ranges.
}

struct KeyRange {
  # Keys `k` with `low <= k < high`. Both ends have the same type, `int` or `text`.

  low @0 :Query.Value;
  # Inclusive lower end.

  high @1 :Query.Value;
  # Exclusive upper end; must be greater than `low`.
}

struct Operation {
  # One kind of call a link allows.

  union {
    describe @0 :Void;
    # List the collections and exposed fields in scope.

    query @1 :Void;
    # Run read queries.

    command @2 :CommandGrant;
    # Apply one named command.
  }
}

struct CommandGrant {
  # Permission to apply a named command.

  name @0 :Text;
  # The command's name ("append", "seal", "snapshot", "ping", ...).

  digest @1 :Data;
  # Empty: any arguments. Otherwise the 32-byte command digest (see totebox.capnp, `Command`) of the
  # one command this link allows, which makes the link good for exactly one command: the Totebox
  # applies it at most once (see "Idempotency" below).

  holderBinds @2 :Bool;
  # Only with an empty digest. When true, this link's holder may pass the command on only bound to
  # one digest: every `command` operation of the same name in the next link must carry a digest
  # (a link that does not is `capability.widened-scope`). A fleet owner sets it on an operator's
  # grant so that no machine the operator delegates to (an orchestrator) can ever choose which
  # command to apply, or how often. The holder itself, presenting this link last, is not bound.
  #
  # Idempotency. A Totebox applies each (namespace, idempotency key) at most once, where the
  # namespace is the issuer of the first link that binds the command's digest, or, when no link
  # binds it before the presenter's own links begin, the issuer of the first link held by the
  # presenter. Either way it is a key upstream of the presenting machine: nothing the presenter
  # signs (links to itself, keys it makes up, fresh link ids) can move a command into a new
  # namespace, and a console that retries a command under a new request link stays in its own.
}

struct SignedLink {
  # One link of a chain, as it travels.

  body @0 :Data;
  # A serialized `CapabilityBody` message (see the signing rule at the top of this file).

  signature @1 :Data;
  # 64-byte Ed25519 signature by the body's issuer over "PSP-CAP-v1\0" || body.
}

struct Chain {
  # A delegation chain: `links[0]` is the root, each later link narrows the one before it, and the
  # last link's holder is the machine presenting the chain.

  links @0 :List(SignedLink);
  # The links, root first. At most a verifier-chosen depth (8 by default).

  archiveProofs @1 :List(ArchiveProof);
  # Empty, or one entry per link (in link order) saying which archives a `committed` link names.
  # Not signed: a proof only shows what the signed root already fixes, so nothing here can grant.
}
