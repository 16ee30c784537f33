# PSP queries and results.
#
# A query runs inside one Totebox against one collection; the Totebox applies its exposure policy and
# returns a result table. Aggregate queries return mergeable partial aggregates per group, so an
# aggregator that receives results from many archives combines them into exactly the answer one
# archive holding all the records would give (averages travel as sum + count, never as averages).
#
# Time values in this file are microseconds since the Unix epoch (UTC) unless a field says otherwise.

@0x966bc62f6995178c;

struct Value {
  # One typed value.

  union {
    null @0 :Void;
    # No value.

    bool @1 :Bool;
    # A truth value.

    int @2 :Int64;
    # A signed 64-bit integer.

    float @3 :Float64;
    # A 64-bit IEEE 754 float. Never used for money: see `decimal`.

    text @4 :Text;
    # UTF-8 text.

    timestamp @5 :Int64;
    # Microseconds since the Unix epoch, UTC.

    decimal :group {
      # An exact decimal number (money, rates): `units / 10^scale`, stored inline (no pointer),
      # so reading one costs what reading an integer does. See `Decimal` for the rules.

      units @6 :Int64;
      # The number scaled by 10^scale.

      scale @7 :UInt8;
      # Digits after the decimal point, 0 to 18.
    }
  }
}

struct Decimal {
  # The exact number `units / 10^scale`, e.g. 1234.50 is {units = 123450, scale = 2}.
  # Sums are exact; a sum that would overflow 64 bits is an error, never a rounded answer.

  units @0 :Int64;
  # The number scaled by 10^scale.

  scale @1 :UInt8;
  # Digits after the decimal point, 0 to 18.
}

enum ValueType {
  # The type of a column or field.

  null @0;
  # Every value is null (or the column is empty).
  bool @1;
  # Truth values.
  int @2;
  # Signed 64-bit integers.
  float @3;
  # 64-bit floats.
  text @4;
  # UTF-8 text.
  timestamp @5;
  # Microseconds since the Unix epoch, UTC.
  decimal @6;
  # Exact decimals.
}

struct Filter {
  # A boolean expression over a record's fields. A record matches when the expression is true;
  # any comparison with a null field is false (SQL-like), except `isNull`.

  union {
    all @0 :Void;
    # Matches every record.

    compare @1 :Comparison;
    # `field op value`.

    and @2 :List(Filter);
    # Every sub-filter matches (an empty list matches everything).

    or @3 :List(Filter);
    # At least one sub-filter matches (an empty list matches nothing).

    not @4 :Filter;
    # The sub-filter does not match.

    isNull @5 :Text;
    # The named field is null or missing.

    in @6 :Membership;
    # The field equals one of a set of values.
  }
}

struct Comparison {
  # Compares one field of the record with a constant.

  field @0 :Text;
  # The field's name.

  op @1 :CompareOp;
  # The comparison.

  value @2 :Value;
  # The constant. Its type must match the field's type (int and decimal compare numerically).
}

enum CompareOp {
  # A comparison operator.

  eq @0;
  # Equal.
  ne @1;
  # Not equal.
  lt @2;
  # Less than.
  le @3;
  # Less than or equal.
  gt @4;
  # Greater than.
  ge @5;
  # Greater than or equal.
}

struct Membership {
  # `field IN (values)`.

  field @0 :Text;
  # The field's name.

  values @1 :List(Value);
  # The set of values.
}

struct Query {
  # A read query over one collection of one archive.

  collection @0 :Text;
  # The collection to read.

  filter @1 :Filter;
  # Which records take part. An unset filter matches every record.

  shape :union {
    rows @2 :List(Text);
    # Return these fields of each matching record (a projection). Allowed only for fields the
    # exposure policy lets out as values.

    aggregate @3 :Aggregation;
    # Return one row per group of matching records, with aggregates.
  }

  orderBy @4 :List(OrderKey);
  # Sort keys, most significant first, over the result's columns.

  limit @5 :UInt64;
  # At most this many rows after ordering; 0 means no limit. A Totebox applies order and limit to
  # the rows of a projection query. For an aggregate query it returns every group as partial
  # states, and order and limit apply when the result is finalized (by the console, or by an
  # aggregator after merging many archives), since partial states cannot be ranked exactly.
}

struct Aggregation {
  # Group-by and aggregates.

  groupBy @0 :List(Text);
  # Fields whose values form the group key. Empty: one group over all matching records.

  aggregates @1 :List(Aggregate);
  # The aggregate columns, in order.
}

struct Aggregate {
  # One aggregate column.

  function @0 :AggregateFunction;
  # What to compute.

  field @1 :Text;
  # The input field. Empty for `count` means "count records" (count(*)); for every other function
  # it must be set. Nulls are skipped.

  name @2 :Text;
  # The output column's name (defaults to "function(field)" when empty).
}

enum AggregateFunction {
  # An aggregate function. Each has a mergeable partial state (see `PartialAggregate`).

  count @0;
  # Number of records, or of non-null values of `field`.
  sum @1;
  # Exact sum of the non-null values.
  min @2;
  # Smallest non-null value.
  max @3;
  # Largest non-null value.
  avg @4;
  # Mean of the non-null values, carried as sum and count until the final answer.
}

struct OrderKey {
  # One sort key.

  column @0 :Text;
  # A result column name: a projected field, a group-by field or an aggregate's name.

  descending @1 :Bool;
  # Sort high to low. Nulls sort first ascending and last descending.
}

struct Column {
  # One column of a result table.

  name @0 :Text;
  # The column's name.

  type @1 :ValueType;
  # The type of its values (`null` when every value is null).
}

struct Row {
  # One row of a result table: one value per column, in column order.

  values @0 :List(Value);
  # The row's values, one per column.
}

struct PartialAggregate {
  # The mergeable state of one aggregate over one group. Merging two partial states of the same
  # aggregate gives the state of the union of their inputs; finalizing gives the answer.

  union {
    count @0 :UInt64;
    # Number of records (count(*)) or of non-null values (count(field)). Merge: add.

    sum @1 :SumState;
    # Merge: add sums and counts. Final: the sum (null when count is 0).

    min @2 :Value;
    # Merge: the smaller. Final: the value (null when no input).

    max @3 :Value;
    # Merge: the larger. Final: the value (null when no input).

    avg @4 :SumState;
    # Merge: add sums and counts. Final: sum / count (null when count is 0).
  }
}

struct SumState {
  # Sum and count of the non-null values of a group.

  sum @0 :Value;
  # The exact sum (`int`, `decimal` or `float`, as the field), or null when count is 0.

  count @1 :UInt64;
  # How many non-null values were added.
}

struct Group {
  # One group of an aggregate result.

  key @0 :List(Value);
  # The group-by values, in `groupBy` order.

  records @1 :UInt64;
  # How many records fell in the group.

  aggregates @2 :List(PartialAggregate);
  # One partial state per aggregate, in `aggregates` order.
}

struct QueryResult {
  # What a Totebox returns for a query: only what its exposure policy lets out.

  asOf @0 :Int64;
  # The archive's data time: the time of the newest record the answer reflects (microseconds since
  # the epoch). Lets an aggregator report freshness per source.

  columns @1 :List(Column);
  # The columns: projected fields for a rows query; group-by fields then aggregates otherwise.

  body :union {
    rows @2 :List(Row);
    # The rows of a projection query, ordered and limited as asked.

    groups @3 :List(Group);
    # The groups of an aggregate query, each with mergeable partial aggregates.
  }

  suppressedGroups @4 :UInt64;
  # Groups withheld because they held fewer records than the collection's minimum group size.
  # Their keys and values are not disclosed, only that they exist.

  scannedRecords @5 :UInt64;
  # How many records the Totebox examined (for cost reporting; not a count of matches).
}
