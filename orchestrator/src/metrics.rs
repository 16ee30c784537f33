//! What `orchestrator serve --metrics ADDRESS` exposes (through [`psp_rpc::metrics`], read-only):
//!
//! | metric | labels | what |
//! | --- | --- | --- |
//! | `psp_orchestrator_requests_total` | `tenant`, `kind`, `code` | requests (query, view, command) admitted (`ok`) or refused (the code) |
//! | `psp_orchestrator_refusals_total` | `rule` | requests refused at admission (tenancy, capability, quota), by code |
//! | `psp_orchestrator_source_outcomes_total` | `status` | each source's end (`ok`, `timed-out`, ...) |
//! | `psp_orchestrator_source_latency_seconds` | `status` | histogram of the sources' times to their end, fleet-wide |
//! | `psp_orchestrator_source_last_latency_seconds` | `archive` | each archive's time to its end, last time it was asked |
//! | `psp_orchestrator_quarantines_total` | `archive` | Toteboxes quarantined for breaking the diode |
//! | `psp_orchestrator_connected_toteboxes` | | Toteboxes whose last contact answered |
//!
//! Labels are tenant names, archive ids and codes from the config and the protocol, never text
//! a console or Totebox chose, so a hostile peer cannot grow the label set without bound. A
//! histogram is never labelled by archive: at 10,000 archives that was about 150,000 series;
//! an archive's latency is one gauge.
//! Without the endpoint, recording is a no-op.

use std::time::Duration;

use psp_rpc::limits::CallError;

use crate::fanout::SourceStatus;

/// Counts a request at admission: `ok`, or the code it was refused with (also counted as a
/// refusal by that rule).
pub fn request(tenant: &str, kind: &'static str, refused: Option<&capnp::Error>) {
    let code = refused.map_or_else(|| "ok".to_owned(), |e| CallError::from_capnp(e).code);
    if refused.is_some() {
        refusal(&code);
    }
    metrics::counter!(
        "psp_orchestrator_requests_total",
        "tenant" => tenant.to_owned(),
        "kind" => kind,
        "code" => code
    )
    .increment(1);
}

/// Counts a request refused at admission, by its code.
fn refusal(code: &str) {
    metrics::counter!("psp_orchestrator_refusals_total", "rule" => code.to_owned()).increment(1);
}

/// Records one source's end: its status and how long it took.
pub fn source_ended(archive: &str, status: &SourceStatus, latency: Duration) {
    metrics::counter!("psp_orchestrator_source_outcomes_total", "status" => status.word())
        .increment(1);
    metrics::histogram!("psp_orchestrator_source_latency_seconds", "status" => status.word())
        .record(latency.as_secs_f64());
    metrics::gauge!("psp_orchestrator_source_last_latency_seconds", "archive" => archive.to_owned())
        .set(latency.as_secs_f64());
}

/// Counts a quarantine.
pub fn quarantined(archive: &str) {
    metrics::counter!("psp_orchestrator_quarantines_total", "archive" => archive.to_owned())
        .increment(1);
}

/// A Totebox became connected (`true`) or stopped being so.
pub fn connected(up: bool) {
    let gauge = metrics::gauge!("psp_orchestrator_connected_toteboxes");
    if up {
        gauge.increment(1.0);
    } else {
        gauge.decrement(1.0);
    }
}
