# The Totebox interface: what a PSP archive serves.
#
# Transport: TLS 1.3 with mutual authentication. Each side presents a self-signed X.509 certificate
# carrying its Ed25519 identity key and accepts only the peer keys it was paired with (no certificate
# authority). The RPC protocol is Cap'n Proto's two-party RPC; the bootstrap capability is `Totebox`.
#
# The diode: a Totebox never receives a capability it could call. No method here takes an interface
# parameter, and the orchestrator's side of the connection exports no bootstrap. A Totebox that sends
# a Bootstrap or a Call upstream, or places a capability anywhere other than as the answer to `open`
# (or to the caller's own Bootstrap), is cut off.
#
# Errors are Cap'n Proto exceptions whose description starts with a stable code, a colon and a space,
# then a human message, e.g. "capability.expired: link 1 expired at 1790000000 (now 1790000042)".
# Codes: `capability.<rule>` (the chain was refused; <rule> names the failed rule), `policy.<rule>`
# (the exposure policy refused the query), `query.<rule>` (the query is invalid), `command.<rule>`,
# `limit.<what>` (a size or rate limit), `internal` (the Totebox failed).
#
# Pipelining: `open(chain).session.query(q)` is one network round trip; `query(chain, q)` is the
# same round trip in one call.

@0xa12b1937cd9691df;

using Cap = import "capability.capnp";
using Query = import "query.capnp";

interface Totebox {
  # The bootstrap capability of a Totebox connection.

  identify @0 () -> (archive :Text, formatVersion :UInt16, now :Int64);
  # Which archive this is, the protocol version it speaks, and its clock (seconds since the epoch).
  # Needs no capability: clients call it to confirm the session right after the TLS handshake.

  open @1 (chain :Cap.Chain) -> (session :Session);
  # Verifies the chain against the caller's TLS identity and this archive, and returns a session
  # limited to what the chain allows. Fails with a `capability.<rule>` error otherwise.

  query @2 (chain :Cap.Chain, query :Query.Query) -> (result :Query.QueryResult);
  # `open(chain)` then `Session.query(query)` as one call: the same checks, refusals and answer,
  # with no session left behind. What an orchestrator sends for each request of a fan-out: one
  # call, one answer and one finish on the wire, where the pipelined pair costs two calls, two
  # answers, two finishes and the session's release.

  command @3 (chain :Cap.Chain, command :Command) -> (outcome :CommandOutcome);
  # `open(chain)` then `Session.command(command)` as one call (see `query`).
}

interface Session {
  # Access to one archive under one verified capability chain. Every call re-checks the chain's
  # time window and the revocation list; the session ends when the chain expires.

  describe @0 () -> (collections :List(CollectionInfo), asOf :Int64);
  # The collections in scope and, for each, the fields the exposure policy lets out.

  query @1 (query :Query.Query) -> (result :Query.QueryResult);
  # Runs a read query inside the archive.

  command @2 (command :Command) -> (outcome :CommandOutcome);
  # Applies a command at most once per (namespace, idempotency key), where the namespace is the
  # issuer of the first link binding the command's digest, or, when no link binds it before the
  # presenter's own links, the issuer of the first link held by the presenter (see `holderBinds`
  # in capability.capnp). Never a key the presenting machine chose.
}

struct CollectionInfo {
  # One collection as the exposure policy shows it.

  name @0 :Text;
  # The collection's name.

  key @1 :Text;
  # The key field that row selectors and the index use.

  fields @2 :List(FieldInfo);
  # The fields a query may reference. Fields the policy never exposes are not listed.

  minGroupSize @3 :UInt32;
  # Aggregate groups with fewer records than this are suppressed.

  records @4 :UInt64;
  # How many records the collection holds that the capability's rows reach (all of them when
  # the capability does not restrict rows).
}

struct FieldInfo {
  # One field of a collection.

  name @0 :Text;
  # The field's name.

  type @1 :Query.ValueType;
  # The field's type.

  exposure @2 :Exposure;
  # How the field may be used.
}

enum Exposure {
  # How the exposure policy lets a field out.

  value @0;
  # May be projected, filtered, grouped, ordered and aggregated.

  aggregateOnly @1;
  # May appear only inside sum, avg or count over groups of at least `minGroupSize`: never
  # projected, filtered, grouped or ordered on, and never inside min or max (which would return
  # one record's value). A query that does is refused with `policy.aggregate-only`.
}

struct Command {
  # A command to apply inside the archive.
  #
  # Its digest, used by `CommandGrant.digest` to bind a capability to this one command, is
  #   SHA-256("PSP-CMD-v1\0" || u32be(len(name)) || name || u32be(len(collection)) || collection
  #           || u32be(len(idempotencyKey)) || idempotencyKey || arguments)
  # where lengths are byte lengths, so the digest is reproducible from the wire bytes in any language.

  name @0 :Text;
  # The command's name.

  collection @1 :Text;
  # The collection it targets, or empty for an archive-wide command.

  idempotencyKey @2 :Data;
  # 16 to 64 bytes chosen by the console. The Totebox applies a key at most once per namespace (see
  # `Session.command`); a retry with the same key returns the first outcome, even under a new
  # request link; reusing a key with a different command is an error.

  arguments @3 :Data;
  # A serialized Cap'n Proto message whose type depends on the command (empty when it takes none).
}

struct CommandOutcome {
  # What happened to a command.

  status @0 :CommandStatus;
  # Applied now, or applied earlier under the same idempotency key.

  message @1 :Text;
  # A short human summary ("appended 120 records").

  detail @2 :Data;
  # A serialized Cap'n Proto message with the command-specific result (empty when there is none).

  asOf @3 :Int64;
  # The archive's data time after the command (microseconds since the epoch).
}

enum CommandStatus {
  # The result of a command that did not fail.

  applied @0;
  # Applied by this call.

  replayed @1;
  # Applied by an earlier call with the same idempotency key; this is that call's outcome.
}

# Standard commands. Every Totebox understands these names; `Command.arguments` and
# `CommandOutcome.detail` hold the structs below (empty for ping).
#
#   ping      archive-wide; no arguments; answers "pong" with the archive's data time.
#   append    adds records to `Command.collection`, all or none (AppendArguments / AppendOutcome).
#   seal      closes a period of `Command.collection`: later appends into it are refused
#             (SealArguments).
#   snapshot  writes a consistent copy of the archive (SnapshotArguments / SnapshotOutcome).
#
# A capability for `append` must reach the collection, every field named and the key of every
# record; the Totebox checks these as it checks a query.

struct AppendArguments {
  # The records to append.

  fields @0 :List(Text);
  # The fields each row holds, in order. Fields of the collection not named are null.

  records @1 :List(Query.Row);
  # One row per record, one value per named field.
}

struct AppendOutcome {
  # The result of an append.

  appended @0 :UInt64;
  # How many records were added.
}

struct SealArguments {
  # Which period to close.

  period @0 :Text;
  # The period, as the collection's period field writes it (e.g. "2026-10").
}

struct SnapshotArguments {
  # Where to write the copy.

  name @0 :Text;
  # A file name (letters, digits, '-', '_', '.'; no path) inside the archive's snapshot directory.
}

struct SnapshotOutcome {
  # The copy that was written.

  name @0 :Text;
  # Its file name.

  bytes @1 :UInt64;
  # Its size.

  records @2 :UInt64;
  # Records it holds, over all collections.
}
