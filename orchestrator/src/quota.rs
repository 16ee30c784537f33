//! A tenant's live quota state: requests running now, and its request rate.
//!
//! The rate is a token bucket: a tenant may burst up to `requests_per_minute` requests, then
//! gets one more every `60 s / requests_per_minute`. Ten lines of arithmetic do not earn a
//! dependency; the tests below pin its behaviour at the edges.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Quotas;

/// One tenant's quota state, shared by all its consoles' connections.
#[derive(Debug)]
pub struct TenantQuota {
    quotas: Quotas,
    running: Arc<Semaphore>,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Why a request was refused by a quota. The code is `tenant.quota` or `tenant.rate`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaRefusal {
    /// Too many requests running at once.
    #[error("this tenant already runs {0} requests, its limit")]
    Concurrency(usize),
    /// Too many requests this minute.
    #[error("this tenant may start {per_minute} requests a minute; retry in {retry_after_ms} ms")]
    Rate {
        /// The quota.
        per_minute: u32,
        /// When the next token arrives.
        retry_after_ms: u64,
    },
}

impl QuotaRefusal {
    /// The stable wire code.
    pub fn code(&self) -> &'static str {
        match self {
            QuotaRefusal::Concurrency(_) => "tenant.quota",
            QuotaRefusal::Rate { .. } => "tenant.rate",
        }
    }
}

impl TenantQuota {
    /// Fresh state for `quotas` (a full bucket, nothing running).
    pub fn new(quotas: Quotas) -> Self {
        Self {
            quotas,
            running: Arc::new(Semaphore::new(quotas.concurrent_queries)),
            bucket: Mutex::new(Bucket {
                tokens: f64::from(quotas.requests_per_minute),
                at: Instant::now(),
            }),
        }
    }

    /// The quotas this state enforces.
    pub fn quotas(&self) -> Quotas {
        self.quotas
    }

    /// Admits one request now: takes a rate token, then a running slot held by the permit.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, QuotaRefusal> {
        self.take_token(Instant::now())?;
        self.running
            .clone()
            .try_acquire_owned()
            .map_err(|_| QuotaRefusal::Concurrency(self.quotas.concurrent_queries))
    }

    fn take_token(&self, now: Instant) -> Result<(), QuotaRefusal> {
        let per_minute = self.quotas.requests_per_minute;
        let rate = f64::from(per_minute) / 60.0; // tokens per second
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(f64::from(per_minute));
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / rate);
            Err(QuotaRefusal::Rate {
                per_minute,
                retry_after_ms: wait.as_millis() as u64 + 1,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(per_minute: u32) -> TenantQuota {
        TenantQuota::new(Quotas {
            requests_per_minute: per_minute,
            ..Quotas::default()
        })
    }

    #[test]
    fn a_burst_of_the_quota_then_one_per_interval() {
        let q = quota(6); // one token every 10 s
        let t0 = Instant::now();
        for _ in 0..6 {
            q.take_token(t0).unwrap();
        }
        let Err(QuotaRefusal::Rate { retry_after_ms, .. }) = q.take_token(t0) else {
            panic!("the seventh request in one instant was admitted");
        };
        assert!(
            (9_990..=10_001).contains(&retry_after_ms),
            "{retry_after_ms}"
        );
        assert!(q.take_token(t0 + Duration::from_millis(9_900)).is_err());
        q.take_token(t0 + Duration::from_millis(10_001)).unwrap();
        assert!(q.take_token(t0 + Duration::from_millis(10_002)).is_err());
    }

    #[test]
    fn an_idle_tenant_saves_up_to_its_quota_only() {
        let q = quota(3);
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(3_600);
        for _ in 0..3 {
            q.take_token(later).unwrap();
        }
        assert!(q.take_token(later).is_err());
    }

    #[test]
    fn concurrency_is_held_by_the_permit() {
        let q = TenantQuota::new(Quotas {
            concurrent_queries: 1,
            ..Quotas::default()
        });
        let permit = q.admit().unwrap();
        assert_eq!(q.admit().unwrap_err().code(), "tenant.quota");
        drop(permit);
        drop(q.admit().unwrap());
    }
}
