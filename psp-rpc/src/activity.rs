//! What a server connection has been doing, for the limits that close a connection nobody uses
//! or that trickles: the idle limit (no call running, nothing received) and the message limit in
//! time (a message begun must arrive whole in time).
//!
//! Without them a console or orchestrator that vanished without closing (a partition, a host
//! that lost power, a half-open link) keeps its connection, its file descriptor and its
//! buffers at the server forever, and a peer that sends one byte a second holds a connection
//! open at no cost to itself. The reader ([`crate::frame_limit::FrameLimit`]) marks the bytes
//! and the frame boundaries; the connection's calls mark their ends; the runtime decides.
//!
//! A client reads the same marks the other way: a call that timed out while no whole message
//! arrived on its connection says the link is stalled, dripping or half-open, not that one
//! request is slow (an answer to any other call would have proved the link alive).

use std::cell::Cell;
use std::time::Duration;

use tokio::time::Instant;

/// Why a connection was closed for lack of activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No call ran and nothing arrived for the idle limit.
    Idle(Duration),
    /// A message begun did not arrive whole within the message limit.
    SlowMessage(Duration),
}

impl std::fmt::Display for Expired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expired::Idle(after) => write!(f, "idle for {after:?} with no call running"),
            Expired::SlowMessage(after) => {
                write!(f, "a message did not arrive whole within {after:?}")
            }
        }
    }
}

/// One connection's activity (single-threaded: a connection lives on one worker).
pub struct Activity {
    /// The last byte received, or the last call's end, whichever is later.
    last: Cell<Instant>,
    /// When the message being received began (its first byte), if one is partly in.
    message_since: Cell<Option<Instant>>,
    /// When the last whole message arrived (or the connection began).
    last_message: Cell<Instant>,
    /// Bytes received.
    bytes: Cell<u64>,
    /// Set by [`Activity::abort`].
    aborted: Cell<bool>,
    /// The reader's waker while it waits for bytes.
    waiting: Cell<Option<std::task::Waker>>,
}

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activity")
            .field("bytes", &self.bytes.get())
            .field("aborted", &self.aborted.get())
            .finish_non_exhaustive()
    }
}

impl Default for Activity {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            last: Cell::new(now),
            message_since: Cell::new(None),
            last_message: Cell::new(now),
            bytes: Cell::new(0),
            aborted: Cell::new(false),
            waiting: Cell::new(None),
        }
    }
}

impl Activity {
    /// `n` bytes arrived; `starts_message` when they are the first of a message.
    pub(crate) fn received(&self, n: usize, starts_message: bool) {
        let now = Instant::now();
        self.last.set(now);
        self.bytes.set(self.bytes.get() + n as u64);
        if starts_message {
            self.message_since.set(Some(now));
        }
    }

    /// The message being received is whole.
    pub(crate) fn message_done(&self) {
        self.message_since.set(None);
        self.last_message.set(Instant::now());
    }

    /// Whether a whole message has arrived since `since`.
    pub fn message_arrived_since(&self, since: Instant) -> bool {
        self.last_message.get() >= since
    }

    /// A call ended: the connection was in use until now.
    pub(crate) fn call_ended(&self) {
        self.last.set(Instant::now());
    }

    /// Whether the connection has outlived a limit now, with `calls` calls running (a
    /// connection with a call running is never idle: its answer is still to come).
    pub(crate) fn expired(
        &self,
        calls: usize,
        idle: Duration,
        message: Duration,
    ) -> Option<Expired> {
        let now = Instant::now();
        if self
            .message_since
            .get()
            .is_some_and(|since| now >= after(since, message))
        {
            return Some(Expired::SlowMessage(message));
        }
        (calls == 0 && now >= after(self.last.get(), idle)).then_some(Expired::Idle(idle))
    }

    /// When to look again: the earliest time a limit could run out as things stand, and never
    /// later than one message limit from now, since a message may begin at any moment (its
    /// first byte does not re-arm the runtime's timer).
    pub(crate) fn next_check(&self, calls: usize, idle: Duration, message: Duration) -> Instant {
        let now = Instant::now();
        let mut next = after(now, message);
        if calls == 0 {
            next = next.min(after(self.last.get(), idle));
        }
        if let Some(since) = self.message_since.get() {
            next = next.min(after(since, message));
        }
        next
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.get()
    }

    /// Closes the connection from the reading side: the reader's next (or pending) read fails,
    /// so the RPC system ends and fails every call still waiting, at once.
    pub fn abort(&self) {
        self.aborted.set(true);
        if let Some(waker) = self.waiting.take() {
            waker.wake();
        }
    }

    /// Whether [`Activity::abort`] was called.
    pub(crate) fn aborted(&self) -> bool {
        self.aborted.get()
    }

    /// The reader is waiting for bytes: wake it when [`Activity::abort`] is called.
    pub(crate) fn wait(&self, waker: &std::task::Waker) {
        let mut waiting = self.waiting.take();
        match &mut waiting {
            Some(w) if w.will_wake(waker) => {}
            _ => waiting = Some(waker.clone()),
        }
        self.waiting.set(waiting);
    }
}

/// `at + limit`, or a year from `at` when a limit is too long to add (an integrator may set any
/// `Duration`): never a panic.
fn after(at: Instant, limit: Duration) -> Instant {
    at.checked_add(limit)
        .unwrap_or_else(|| at + Duration::from_secs(365 * 24 * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);
    const MESSAGE: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_with_no_call_and_nothing_received() {
        let activity = Activity::default();
        tokio::time::advance(IDLE - Duration::from_secs(1)).await;
        assert_eq!(activity.expired(0, IDLE, MESSAGE), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            activity.expired(0, IDLE, MESSAGE),
            Some(Expired::Idle(IDLE))
        );
        // A call running: never idle, however long.
        assert_eq!(activity.expired(1, IDLE, MESSAGE), None);
        // A call that just ended starts the idle period again.
        activity.call_ended();
        assert_eq!(activity.expired(0, IDLE, MESSAGE), None);
        // Idle ends in a minute, but a message could begin at any moment: look again within
        // a message limit.
        assert_eq!(
            activity.next_check(0, IDLE, MESSAGE),
            Instant::now() + MESSAGE
        );
    }

    #[tokio::test(start_paused = true)]
    async fn limits_too_long_to_add_never_expire_and_never_panic() {
        let activity = Activity::default();
        activity.received(1, true);
        assert_eq!(activity.expired(0, Duration::MAX, Duration::MAX), None);
        assert!(activity.next_check(0, Duration::MAX, Duration::MAX) > Instant::now());
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_begun_after_a_check_is_judged_at_its_own_limit() {
        let activity = Activity::default();
        let check = activity.next_check(0, IDLE, MESSAGE);
        assert_eq!(check, Instant::now() + MESSAGE);
        tokio::time::advance(MESSAGE / 2).await;
        activity.received(1, true);
        tokio::time::advance(MESSAGE / 2).await;
        // The check finds it young, and looks again when it would be late.
        assert_eq!(activity.expired(0, IDLE, MESSAGE), None);
        assert_eq!(
            activity.next_check(0, IDLE, MESSAGE),
            Instant::now() + MESSAGE / 2
        );
        tokio::time::advance(MESSAGE / 2).await;
        assert_eq!(
            activity.expired(0, IDLE, MESSAGE),
            Some(Expired::SlowMessage(MESSAGE))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_that_trickles_expires_even_while_bytes_arrive() {
        let activity = Activity::default();
        activity.received(1, true);
        for _ in 0..9 {
            tokio::time::advance(Duration::from_secs(1)).await;
            activity.received(1, false);
            assert_eq!(activity.expired(1, IDLE, MESSAGE), None);
        }
        assert_eq!(
            activity.next_check(1, IDLE, MESSAGE),
            Instant::now() + Duration::from_secs(1)
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            activity.expired(1, IDLE, MESSAGE),
            Some(Expired::SlowMessage(MESSAGE))
        );
        // Whole in time: no limit runs.
        activity.message_done();
        assert_eq!(activity.expired(1, IDLE, MESSAGE), None);
    }
}
