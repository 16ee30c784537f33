# The reference Totebox store (psp-archive): its on-disk log. Not part of the wire protocol, but
# written down here so other tools can read an archive file.
#
# An archive file starts with a 16-byte header: the bytes "PSPARCH\0", then a little-endian u32
# format version (1) and a u32 of zero. Frames follow, each 8-byte aligned:
#
#   u32 magic "PSPF" | u32 payload length (a multiple of 8) | u32 sequence number | u32 CRC-32
#   payload: one serialized Cap'n Proto message (segment table + segments) whose root is LogEntry
#
# The CRC-32 (IEEE) covers the length, the sequence number and the payload, so a torn or flipped
# frame is detected. Sequence numbers count frames from 0. A frame that fails its checks at the
# end of the file is a torn append and is cut off on open; a bad frame followed by good ones is
# corruption and the archive refuses to open.

@0x89c18852716728ba;

using Query = import "query.capnp";

struct LogEntry {
  # One applied change.

  at @0 :Int64;
  # When it was applied (microseconds since the Unix epoch).

  issuer @1 :Data;
  # The 32-byte key whose idempotency namespace `idempotencyKey` belongs to; empty for changes
  # made outside PSP (imports, the generator).

  idempotencyKey @2 :Data;
  # The command's idempotency key; empty for changes made outside PSP.

  digest @3 :Data;
  # The command's 32-byte digest (see totebox.capnp), to tell a replay from a reused key.

  message @4 :Text;
  # The outcome message returned when the command was applied (and on every replay).

  detail @5 :Data;
  # The outcome detail returned when the command was applied (and on every replay).

  union {
    append @6 :RecordBatch;
    # Records added to a collection.

    seal @7 :Seal;
    # A period closed.

    snapshot @8 :SnapshotTaken;
    # A snapshot written.
  }
}

struct RecordBatch {
  # Records of one collection, appended together.

  collection @0 :Text;
  # The collection.

  records @1 :List(Record);
  # The records, in append order.
}

struct Record {
  # One record: one value per field, in the collection's field order.

  values @0 :List(Query.Value);
  # The values; a record shorter than the field list has nulls for the rest.
}

struct Seal {
  # A period of a collection closed to appends.

  collection @0 :Text;
  # The collection.

  period @1 :Text;
  # The period, as its period field writes it.
}

struct SnapshotTaken {
  # A consistent copy of the archive was written.

  name @0 :Text;
  # The snapshot's file name.

  bytes @1 :UInt64;
  # Its size.
}
