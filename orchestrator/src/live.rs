//! A fan-out's view so far, for progressive results: a console asks (`FleetQuery.next`), and the
//! fan-out publishes its view from what it has merged. Nothing is computed unless asked, and at
//! most [`PUBLISH_EVERY`] apart, so a fan-out nobody watches costs nothing more and one watched
//! by many costs at most a few views a second, however many sources answer.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::report::Report;

/// The least time between two views so far of one fan-out (each may clone its whole merge).
pub const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// Shared by a running fan-out (on the console connection's thread) and its `FleetQuery`.
#[derive(Debug, Default)]
pub struct Live {
    wanted: Cell<bool>,
    asked: Notify,
    /// Answers merged so far (and sources reported without an answer).
    merged: Cell<u32>,
    latest: RefCell<Option<(u32, Report)>>,
    last: Cell<Option<Instant>>,
    published: Notify,
}

impl Live {
    /// Asks the fan-out for its view so far, as soon as it may make one (see [`Live::asked`]).
    pub fn want(&self) {
        self.wanted.set(true);
        // One permit is kept if the fan-out is not waiting yet: the ask is never lost.
        self.asked.notify_one();
    }

    /// Asks the fan-out for its view at its next arrival (nothing new has been merged yet).
    pub fn want_next(&self) {
        self.wanted.set(true);
    }

    /// Resolves when a console has asked for the view so far and one may be made (at most
    /// [`PUBLISH_EVERY`] after the last): the fan-out waits on it beside its arrivals.
    pub async fn asked(&self) {
        self.asked.notified().await;
        tokio::time::sleep_until(self.ready_at()).await;
    }

    /// When the next view may be made.
    fn ready_at(&self) -> Instant {
        self.last
            .get()
            .map_or_else(Instant::now, |last| last + PUBLISH_EVERY)
    }

    /// Whether a view so far is asked for and may be made now; when one is asked for but must
    /// wait, the wait is arranged (the fan-out's [`Live::asked`] resolves then).
    pub fn due(&self) -> bool {
        if !self.wanted.get() {
            return false;
        }
        if Instant::now() >= self.ready_at() {
            return true;
        }
        self.asked.notify_one();
        false
    }

    /// Counts `n` more answers merged.
    pub fn merged(&self, n: u32) {
        self.merged.set(self.merged.get().saturating_add(n));
    }

    /// Answers merged so far.
    pub fn answered(&self) -> u32 {
        self.merged.get()
    }

    /// Publishes the view so far, made from the answers merged so far.
    pub fn publish(&self, report: Report) {
        *self.latest.borrow_mut() = Some((self.merged.get(), report));
        self.wanted.set(false);
        self.last.set(Some(Instant::now()));
        self.published.notify_waiters();
    }

    /// The last view published, with the answers it was made from, if it has more than `after`
    /// (cloned only then).
    pub fn latest_after(&self, after: u32) -> Option<(u32, Report)> {
        self.latest
            .borrow()
            .as_ref()
            .filter(|(answered, _)| *answered > after)
            .cloned()
    }

    /// Resolves at the next publication (create it before looking at [`Live::latest_after`]).
    pub fn published(&self) -> tokio::sync::futures::Notified<'_> {
        self.published.notified()
    }
}
