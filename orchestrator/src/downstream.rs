//! One pooled connection down the tree: to a Totebox, or to a regional orchestrator. Both are
//! behind the diode guard, and the pool treats them alike (dial once, share, ping, retire,
//! quarantine); only what is asked differs.

use std::rc::Rc;

use psp_rpc::client::{ConnectError, ToteboxClient};
use psp_rpc::limits::CallError;

use crate::console::ArchiveStatus;
use crate::region::RegionClient;

/// A pooled connection (cheap to clone: both sides are shared).
#[derive(Clone)]
pub(crate) enum Downstream {
    /// To a Totebox.
    Totebox(Rc<ToteboxClient>),
    /// To a regional orchestrator.
    Region(Rc<RegionClient>),
}

impl Downstream {
    /// Whether the connection is up and its session not refused.
    pub(crate) fn is_connected(&self) -> bool {
        match self {
            Downstream::Totebox(c) => c.is_connected(),
            Downstream::Region(c) => c.is_connected(),
        }
    }

    /// Why the diode guard cut it, if it did.
    pub(crate) fn diode_violation(&self) -> Option<String> {
        match self {
            Downstream::Totebox(c) => c.diode_violation(),
            Downstream::Region(c) => c.diode_violation(),
        }
    }

    /// Why its session's confirmation failed, once it has.
    pub(crate) fn confirmation_error(&self) -> Option<&ConnectError> {
        match self {
            Downstream::Totebox(c) => c.confirmation_error(),
            Downstream::Region(c) => c.confirmation_error(),
        }
    }

    /// Waits for the session's confirmation.
    pub(crate) async fn confirmed(&self) -> Result<(), ConnectError> {
        match self {
            Downstream::Totebox(c) => c.confirmed().await.map(drop),
            Downstream::Region(c) => c.confirmed().await.map(drop),
        }
    }

    /// One round trip that needs no capability: a Totebox's `identify`, a region's `fleet`
    /// (whose answer, its directory now, is returned).
    pub(crate) async fn ping(&self) -> Result<Option<Vec<ArchiveStatus>>, CallError> {
        match self {
            Downstream::Totebox(c) => c.identify().await.map(|_| None),
            Downstream::Region(c) => c.directory().await.map(Some),
        }
    }

    /// Whether both are the same connection.
    pub(crate) fn same(&self, other: &Downstream) -> bool {
        match (self, other) {
            (Downstream::Totebox(a), Downstream::Totebox(b)) => Rc::ptr_eq(a, b),
            (Downstream::Region(a), Downstream::Region(b)) => Rc::ptr_eq(a, b),
            _ => false,
        }
    }
}
