//! A fan-out's view so far, for progressive results: a console asks (`FleetQuery.next`), and the
//! fan-out publishes its view at once from what has arrived. Nothing is computed unless asked,
//! so a fan-out nobody watches costs nothing more.

use std::cell::{Cell, RefCell};

use tokio::sync::Notify;

use crate::report::Report;

/// Shared by a running fan-out (on the console connection's thread) and its `FleetQuery`.
#[derive(Debug, Default)]
pub struct Live {
    wanted: Cell<bool>,
    asked: Notify,
    latest: RefCell<Option<(u32, Report)>>,
    published: Notify,
}

impl Live {
    /// Asks the fan-out for its view so far, now (see [`Live::asked`]).
    pub fn want(&self) {
        self.wanted.set(true);
        // One permit is kept if the fan-out is not waiting yet: the ask is never lost.
        self.asked.notify_one();
    }

    /// Asks the fan-out for its view at its next arrival (nothing new has arrived yet).
    pub fn want_next(&self) {
        self.wanted.set(true);
    }

    /// Resolves when a console asks for the view so far: the fan-out waits on it beside its
    /// arrivals.
    pub async fn asked(&self) {
        self.asked.notified().await;
    }

    /// Whether a view so far is asked for.
    pub fn wanted(&self) -> bool {
        self.wanted.get()
    }

    /// Publishes the view so far, made when `answered` sources had ended.
    pub fn publish(&self, answered: u32, report: Report) {
        *self.latest.borrow_mut() = Some((answered, report));
        self.wanted.set(false);
        self.published.notify_waiters();
    }

    /// The last view published, with the number of sources ended when it was made.
    pub fn latest(&self) -> Option<(u32, Report)> {
        self.latest.borrow().clone()
    }

    /// Resolves at the next publication (create it before looking at [`Live::latest`]).
    pub fn published(&self) -> tokio::sync::futures::Notified<'_> {
        self.published.notified()
    }
}
