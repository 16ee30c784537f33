# The reference Totebox store (psp-archive): its on-disk log. Not part of the wire protocol, but
# written down here so other tools can read an archive file.
#
# An archive file starts with a 16-byte header: the bytes "PSPARCH\0", then a little-endian u32
# format version (2) and a u32 of zero. Frames follow, each 8-byte aligned, with a 24-byte header:
#
#   u32 magic "PSPF" | u32 payload length (a multiple of 8) | u32 sequence number |
#   u32 payload CRC | u32 chain | u32 header CRC
#   payload: one serialized Cap'n Proto message (segment table + segments) whose root is LogEntry
#
# All CRCs are CRC-32 (IEEE). The payload CRC covers the length, the sequence number and the
# payload; the chain is the previous frame's payload CRC (for the first frame, the CRC of the file
# header); the header CRC covers the header's first 20 bytes. Sequence numbers count frames from
# 0, and the first frame is always a `created` entry naming the archive, so a file cut to its
# header, or one that belongs to another archive, is recognized.
#
# Frames are read in order from the start, never searched for. A file that ends inside the last
# frame (or whose bytes after the last good frame are all zero) ends in a torn append, which open
# cuts off and reports. A complete frame that fails a check is damage: open refuses and names its
# byte offset, and only an explicit repair moves the damaged tail aside, into a file of its own.
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

    created @9 :Created;
    # The archive was created (always the first frame, and only there).
  }
}

struct Created {
  # The first entry of every archive.

  archive @0 :Text;
  # The id of the archive the file belongs to (its config's `id`).
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
