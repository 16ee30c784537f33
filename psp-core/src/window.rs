//! Validity windows: when a capability link may be used.

/// Seconds since the Unix epoch, UTC: the clock capabilities are written in.
pub type UnixSeconds = i64;

/// The current time as [`UnixSeconds`]. Verification takes `now` as an argument instead of reading
/// the clock itself, so it stays deterministic and testable; callers pass this.
pub fn now() -> UnixSeconds {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A half-open span of time `[not_before, not_after)` in which a capability link is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    not_before: UnixSeconds,
    not_after: UnixSeconds,
}

impl Window {
    /// A window from `not_before` (inclusive) to `not_after` (exclusive). `None` when it is empty
    /// (`not_after <= not_before`).
    pub fn new(not_before: UnixSeconds, not_after: UnixSeconds) -> Option<Self> {
        (not_after > not_before).then_some(Self {
            not_before,
            not_after,
        })
    }

    /// A window that opens at `start` and lasts `seconds` (at least one second).
    pub fn lasting(start: UnixSeconds, seconds: u32) -> Self {
        Self {
            not_before: start,
            not_after: start.saturating_add(i64::from(seconds.max(1))),
        }
    }

    /// Start of the window, inclusive.
    pub fn not_before(&self) -> UnixSeconds {
        self.not_before
    }

    /// End of the window, exclusive.
    pub fn not_after(&self) -> UnixSeconds {
        self.not_after
    }

    /// How long the window lasts, in seconds.
    pub fn lifetime(&self) -> i64 {
        self.not_after.saturating_sub(self.not_before)
    }

    /// Whether `inner` lies entirely inside this window (a delegation may only narrow time).
    pub fn contains_window(&self, inner: &Window) -> bool {
        self.not_before <= inner.not_before && inner.not_after <= self.not_after
    }

    /// The part of this window shared with `other`, if any.
    pub fn intersect(&self, other: &Window) -> Option<Window> {
        Window::new(
            self.not_before.max(other.not_before),
            self.not_after.min(other.not_after),
        )
    }
}
