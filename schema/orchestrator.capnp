# The Orchestrator interface: what a console calls.
#
# Transport: the same pinned-key mutual TLS as totebox.capnp. The orchestrator completes a session only
# for operator keys it knows; the bootstrap capability (`Orchestrator`) is scoped to that operator's
# tenant: an archive outside the tenant cannot be listed, named, queried or commanded.
#
# Authority: the orchestrator holds no keys to the archives. For each query or command the console
# sends a capability chain whose last link delegates to the orchestrator's machine key and whose
# last issuer is the console's own operator key. The orchestrator uses that chain for that request
# only, and queries the intersection of the chain's archive set and the tenant's archives.
#
# Errors follow the convention of totebox.capnp ("<code>: <message>"), with the extra codes
# `tenant.<rule>` (the tenant may not do this) and `fanout.<rule>` (strict mode and a source failed).
#
# Times are microseconds since the Unix epoch unless a field says otherwise.

@0xc6b42d3bf5fb12b8;

using Cap = import "capability.capnp";
using Query = import "query.capnp";
using Totebox = import "totebox.capnp";

interface Orchestrator {
  # The bootstrap capability a console receives, scoped to its operator's tenant.

  fleet @0 () -> (archives :List(ArchiveStatus));
  # The archives of the caller's tenant, with health.

  query @1 (request :FleetRequest, query :Query.Query) -> (fleetQuery :FleetQuery);
  # Fans a query out to the selected archives and merges the answers. Returns at once; the merged
  # view arrives through the returned `FleetQuery` (pipeline `query(...).fleetQuery.view()`).

  view @2 (request :FleetRequest, viewport :Viewport) -> (fleetQuery :FleetQuery);
  # Computes a viewport (rollup, reconciliation or executive summary) over the selected archives.

  viewport @3 (name :Text) -> (viewport :Viewport);
  # A viewport defined in the orchestrator's config, by name, to send back with `view`.

  command @4 (request :FleetRequest, command :Totebox.Command) -> (outcomes :List(CommandResult));
  # Sends a command to every selected archive and reports each archive's outcome. Retrying with the
  # same idempotency key never applies it twice.

  viewConfigured @5 (request :FleetRequest, viewport :Viewport) -> (fleetQuery :FleetQuery);
  # `view` of a console's copy of the config's viewport of that name (from an earlier
  # `viewport(name)`): computed only if the config still holds exactly that definition, so a
  # viewport by name costs one call, not two; otherwise refused with `viewport.changed` (ask
  # again) or `viewport.unknown`. An orchestrator older than this method answers it with
  # `unimplemented`, and never computes a copy it has not checked.

  partial @6 (request :FleetRequest, query :Query.Query, labels :List(Text)) -> (answer :PartialAnswer);
  # For an orchestrator above this one (a regional tree; its key is an operator of one of this
  # orchestrator's tenants, and `request.chain`'s last link is delegated by it to this one):
  # fans `query` out as `query` does and answers with the merge *unfinished*, so the caller
  # merges it with its other sources exactly (see `PartialAnswer`), plus every source's outcome.
  # Each key of `labels` becomes a leading column (a group-by field for an aggregate query, a
  # field for a rows query) holding each archive's value of that label (text, null when it has
  # none); the key "" stands for the archive's id. Always best effort: the caller applies its
  # own partial policy to the outcomes. Answers within `request.options.deadlineMillis`.
  # An orchestrator older than this method answers `unimplemented`.
}

interface FleetQuery {
  # A fan-out in progress. Dropping every reference to it cancels the downstream calls.

  view @0 () -> (view :View);
  # Waits for the fan-out to finish (all sources answered, timed out or failed; never past the
  # deadline) and returns the merged view with one outcome per source.

  progress @1 () -> (answered :UInt32, total :UInt32);
  # How many sources have answered so far.

  cancel @2 () -> ();
  # Stops the fan-out now; `view` then returns what arrived, with the rest marked cancelled.

  next @3 (after :UInt32) -> (update :Update);
  # Progressive results, asked for (the orchestrator never calls a console): returns as soon as
  # more than `after` sources have ended, with the view merged so far, or once the fan-out is
  # over, with the final view (`update.final`; the same as `view()`'s). Call it again with
  # `update.answered` for the next. Never waits past the request's deadline. An orchestrator
  # older than this method answers `unimplemented`.
}

struct Update {
  # A fan-out's view so far.

  answered @0 :UInt32;
  # Answers merged so far (a source's answer, failure or timeout; a summary counts one per
  # source and key figure), as `progress` counts them.

  total @1 :UInt32;
  # Answers expected in all, as `progress` counts them.

  final @2 :Bool;
  # The fan-out is over and `view` is its final view.

  view @3 :View;
  # The view merged from the sources ended so far: their outcomes (the rest are not listed yet)
  # and the figures they give; `complete` is false until the final view.
}

struct FleetRequest {
  # What every fan-out call carries.

  archives @0 :ArchiveSelector;
  # Which of the tenant's archives to use.

  chain @1 :Cap.Chain;
  # The capability for this request, delegated by the caller's operator key to the orchestrator.

  options @2 :FanOutOptions;
  # Deadlines and the partial-result policy.
}

struct ArchiveSelector {
  # Chooses archives from the caller's tenant.

  union {
    all @0 :Void;
    # Every archive of the tenant.

    ids @1 :List(Text);
    # These archives, by id. Naming an archive outside the tenant is an error, not a silent skip.

    labels @2 :List(Label);
    # Archives whose labels match every entry.
  }
}

struct Label {
  # One label of an archive, such as region=emea or entity=subsidiary.

  key @0 :Text;
  # The label's name, e.g. "region".
  value @1 :Text;
  # Its value, e.g. "emea".
}

struct FanOutOptions {
  # How a fan-out treats time and failure. Zero fields take the orchestrator's configured defaults.

  deadlineMillis @0 :UInt32;
  # The whole request ends by then, whatever the sources do.

  sourceTimeoutMillis @1 :UInt32;
  # How long one source may take; shorter than the deadline.

  partial @2 :PartialPolicy;
  # What to do when some sources fail.
}

enum PartialPolicy {
  # What a fan-out does when some sources fail.

  default @0;
  # The orchestrator's configured default.

  bestEffort @1;
  # Answer with what arrived; the outcomes say which sources are missing and why.

  strict @2;
  # Fail the request (code `fanout.incomplete`) unless every source answered.
}

struct ArchiveStatus {
  # One archive of the fleet, as the orchestrator sees it.

  id @0 :Text;
  # The archive's id.

  labels @1 :List(Label);
  # Its labels.

  key @2 :Text;
  # Its pinned machine key, printed as "ed25519:<hex>".

  health @3 :Health;
  # Whether it is reachable now.

  latencyMicros @4 :UInt64;
  # The last measured round trip, 0 when unknown.

  lastSeen @5 :Int64;
  # When it last answered, 0 when never.
}

enum Health {
  # Reachability of an archive.

  unknown @0;
  # Not contacted yet.

  up @1;
  # Answered recently.

  down @2;
  # Did not answer.

  quarantined @3;
  # Cut off for breaking the diode or the protocol; not redialed until the quarantine ends.
}

struct SourceOutcome {
  # What happened at one source of a fan-out. Every selected source has exactly one.

  archive @0 :Text;
  # The archive's id.

  status :union {
    ok @1 :Void;
    # Answered in time; its rows are in the view.

    timedOut @2 :Void;
    # Did not answer within the source timeout or the deadline.

    unreachable @3 :Text;
    # Could not connect (the reason).

    denied @4 :Denial;
    # Refused the capability or the query.

    error @5 :Text;
    # Failed otherwise (the error text, control characters escaped).

    cancelled @6 :Void;
    # The request was cancelled before it answered.

    quarantined @7 :Text;
    # Cut off for a protocol or diode violation (what it did).

    rejected @12 :Denial;
    # Answered, but the orchestrator set the answer aside: it does not fit the query that was
    # sent (`source.malformed-answer`: other columns, kinds, arity or types, or counts that cannot
    # be) or is larger than this request accepts from one source (`source.answer-too-large`).
    # The view is computed as if this source had not answered; nothing it sent reaches it.
  }

  latencyMicros @8 :UInt64;
  # Time from sending to the answer or failure.

  asOf @9 :Int64;
  # The source's data time, 0 when it did not answer.

  rows @10 :UInt64;
  # Rows or groups it contributed.

  suppressedGroups @11 :UInt64;
  # Groups it withheld under its minimum group size.
}

struct Denial {
  # Why a Totebox or the orchestrator refused.

  code @0 :Text;
  # The stable error code, e.g. "capability.expired" or "policy.field-not-exposed".

  message @1 :Text;
  # The human message.
}

struct View {
  # A merged answer over many archives.

  complete @0 :Bool;
  # True only when every selected source answered.

  outcomes @1 :List(SourceOutcome);
  # One per selected source.

  asOfOldest @2 :Int64;
  # The oldest data time among the sources that answered (the view is at least this fresh).

  body :union {
    table @3 :Table;
    # A merged query or rollup.

    reconciliation @4 :ReconciliationReport;
    # A cross-entity reconciliation.

    summary @5 :SummaryReport;
    # An executive summary.
  }
}

struct Table {
  # A merged result table: aggregates finalized, ordered and limited after the merge.

  columns @0 :List(Query.Column);
  # The columns, as in a single archive's result.
  rows @1 :List(Query.Row);
  # The merged rows, ordered and limited as the query asked.

  overflows @2 :List(Cell);
  # Cells whose exact merged value leaves the 64-bit range (a sum of many large amounts, say).
  # Their value in `rows` is null; every other cell is exact and unaffected.
}

struct Cell {
  # One cell of a table.

  row @0 :UInt32;
  # Its row in `rows`.

  column @1 :UInt32;
  # Its column in `columns`.
}

struct Viewport {
  # A declarative view over the fleet: data, not code.

  name @0 :Text;
  # A name for logs and displays.

  union {
    rollup @1 :Rollup;
    # A portfolio rollup.
    reconciliation @2 :Reconciliation;
    # A cross-entity reconciliation.
    summary @3 :ExecutiveSummary;
    # An executive summary.
  }
}

struct Rollup {
  # A portfolio rollup: one aggregate query over many archives, grouped by archive labels and fields.

  query @0 :Query.Query;
  # Must be an aggregate query.

  groupByLabels @1 :List(Text);
  # Archive label keys (e.g. "region") prepended to the group key.
}

struct Reconciliation {
  # Matches what entity A records about B with what B records about A.
  # Each archive is queried for sum(amount) grouped by (counterparty, period, currency); A's row for
  # counterparty B is paired with B's row for counterparty A.

  collection @0 :Text;
  # The ledger collection in each archive.

  counterpartyField @1 :Text;
  # The field naming the other entity of each ledger record.

  periodField @2 :Text;
  # The field holding the record's accounting period.

  currencyField @3 :Text;
  # The field holding the record's currency code.

  amountField @4 :Text;
  # The field holding the amount (an exact decimal).

  entityLabel @5 :Text;
  # The archive label whose value names the entity in other archives' counterparty field
  # (empty: the archive id).

  filter @6 :Query.Filter;
  # Which ledger records take part.

  convention @7 :MatchConvention;
  # How the two sides' amounts relate when they agree.

  tolerance @8 :Query.Decimal;
  # Differences up to this are matched.
}

enum MatchConvention {
  # How two entities' records of the same balance compare.

  opposite @0;
  # A's amount is minus B's (a receivable against a payable).

  equal @1;
  # Both record the same amount.
}

struct ReconciliationReport {
  # The pairs a reconciliation found.

  entries @0 :List(ReconciliationEntry);
  # One entry per (entity pair, period, currency) seen by either side.
}

struct ReconciliationEntry {
  # One intercompany balance seen from both sides (or only one).

  left @0 :Text;
  # The entity whose name sorts first.

  right @1 :Text;
  # The other entity (left < right).

  period @2 :Query.Value;
  # The accounting period.

  currency @3 :Text;
  # The currency both amounts are in.

  leftAmount @4 :Query.Value;
  # What `left` records about `right`, null when it records nothing.

  rightAmount @5 :Query.Value;
  # What `right` records about `left`, null when it records nothing.

  difference @6 :Query.Value;
  # leftAmount - (the amount expected from rightAmount under the convention).

  status @7 :MatchStatus;
  # The verdict.

  overflowed @8 :Bool;
  # One side's amount, merged over that entity's archives, leaves the 64-bit range: it is null
  # and the status `unknown`.
}

enum MatchStatus {
  # The verdict on one reconciliation entry.

  matched @0;
  # Both sides agree within the tolerance.
  mismatched @1;
  # Both sides record the balance but disagree; see `difference`.
  leftOnly @2;
  # Only `left` records it.
  rightOnly @3;
  # Only `right` records it.
  unknown @4;
  # One side's archive did not answer, so no verdict is possible.
}

struct ExecutiveSummary {
  # A set of key figures over the fleet.

  kpis @0 :List(Kpi);
  # The key figures, in display order: 1 to 64 of them (each is one call to every source).
}

struct Kpi {
  # One key figure: an aggregate query without group-by, over the selected archives.

  name @0 :Text;
  # The figure's display name, e.g. "Net operating income".
  query @1 :Query.Query;
  # An aggregate query with exactly one aggregate and no group-by.
  unit @2 :Text;
  # For display, e.g. "USD" or "%".
}

struct SummaryReport {
  # The answered key figures.

  kpis @0 :List(KpiValue);
  # One answer per requested key figure, in the same order.
}

struct KpiValue {
  # One key figure with where it came from.

  name @0 :Text;
  # The figure's display name.
  value @1 :Query.Value;
  # The merged figure (null when no source answered).
  unit @2 :Text;
  # The unit, copied from the KPI definition.

  sources @3 :List(Text);
  # The archives that contributed.

  missing @4 :List(Text);
  # Selected archives that did not answer (the figure excludes them).

  asOfOldest @5 :Int64;
  # The oldest data time among the contributors.

  overflowed @6 :Bool;
  # The figure's exact value leaves the 64-bit range: `value` is null although sources answered.
}

struct PartialAnswer {
  # A merge handed up a tree of orchestrators, unfinished.

  parts @0 :List(MergedPart);
  # The answering sources' answers merged, one part per set of column types they declared (an
  # archive whose field is an int and one whose field is a decimal travel apart, each value as
  # it is); empty when no source answered.

  outcomes @1 :List(SourceOutcome);
  # One per source asked, as in `View.outcomes`; a source reached through a further
  # orchestrator is named by its path ("eu-west/prop-0042").
}

struct MergedPart {
  # Answers of one set of column types merged, unfinished: one answer to the query as if from a
  # single Totebox holding their records (groups with partial states, so an average travels as
  # its sum and count; aggregate groups neither ordered nor limited; rows ordered and cut to the
  # query's limit), then merged by the caller with its other answers.

  answers @0 :UInt32;
  # Sources merged into this part.

  result @1 :Query.QueryResult;
  # The unfinished merge, with the `labels` columns first.

  overflows @2 :List(Cell);
  # Cells of `result` (row: the group's index, column: the column's) whose exact value left the
  # 64-bit range here: a count's state is then its group's records, a sum's or an average's is
  # empty, and the caller keeps them overflowed. No other cell may be marked.
}

struct CommandResult {
  # One archive's answer to a fanned-out command.

  source @0 :SourceOutcome;
  # Whether the archive answered.

  outcome @1 :Totebox.CommandOutcome;
  # Its outcome, when `source.status` is ok.
}
