//! Fair shares of one Totebox connection among tenants.
//!
//! Every tenant's requests to a Totebox share the orchestrator's one connection to it, and a
//! Totebox refuses calls past its per-connection limit (`limit.calls-in-flight`). Without a gate,
//! one tenant's burst of executive summaries fills that limit and another tenant's requests to
//! the same Totebox fail. The gate keeps the calls on a connection below `capacity` (set below
//! the Totebox's own limit), never lets one tenant hold more than three quarters of it, and when
//! calls wait, hands each freed slot to the waiting tenant with the fewest calls running: a
//! flooding tenant waits for its own calls, everyone else gets a slot at once or after one.
//!
//! Waiting calls queue per tenant, so every step costs a look at each waiting tenant, never at
//! each waiting call: a tenant with a hundred thousand calls queued slows nobody else down.
//!
//! It lives on the fleet thread (not `Send`); waiting is bounded by the caller's own deadline.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::oneshot;

/// A tenant's name, as the gate counts it.
pub type TenantId = Arc<str>;

/// The calls on one connection, by tenant.
#[derive(Debug)]
pub struct Gate {
    capacity: usize,
    per_tenant: usize,
    state: RefCell<State>,
}

#[derive(Debug, Default)]
struct State {
    running: usize,
    by_tenant: HashMap<TenantId, usize>,
    /// Each tenant's waiting calls, oldest first, with the order they arrived in. A call that
    /// stopped waiting stays until it reaches the front, where it is skipped.
    waiting: HashMap<TenantId, VecDeque<(u64, oneshot::Sender<()>)>>,
    next: u64,
}

/// One running call; frees its slot when dropped.
#[derive(Debug)]
pub struct Permit {
    gate: Rc<Gate>,
    tenant: TenantId,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release(&self.tenant);
    }
}

/// A call waiting for a slot. Dropped just after being granted one, it frees it.
struct Waiting {
    gate: Rc<Gate>,
    tenant: TenantId,
    /// `None` once the grant became a [`Permit`].
    granted: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(mut granted) = self.granted.take() else {
            return;
        };
        granted.close();
        if granted.try_recv().is_ok() {
            self.gate.release(&self.tenant);
        } else {
            // Its queue entry is now dead; let whoever can run, run.
            let gate = &self.gate;
            gate.state
                .borrow_mut()
                .hand_out(gate.capacity, gate.per_tenant);
        }
    }
}

impl State {
    fn of(&self, tenant: &str) -> usize {
        self.by_tenant.get(tenant).copied().unwrap_or(0)
    }

    fn take(&mut self, tenant: &TenantId) {
        self.running += 1;
        *self.by_tenant.entry(tenant.clone()).or_default() += 1;
    }

    /// Drops the calls at the front of `tenant`'s queue that stopped waiting.
    fn purge(&mut self, tenant: &str) {
        if let Some(queue) = self.waiting.get_mut(tenant) {
            while queue.front().is_some_and(|(_, wake)| wake.is_closed()) {
                queue.pop_front();
            }
            if queue.is_empty() {
                self.waiting.remove(tenant);
            }
        }
    }

    /// Hands free slots to waiting calls: each to the eligible tenant with the fewest calls
    /// running (oldest call first among equals).
    fn hand_out(&mut self, capacity: usize, per_tenant: usize) {
        while self.running < capacity {
            let tenants: Vec<TenantId> = self.waiting.keys().cloned().collect();
            for t in &tenants {
                self.purge(t);
            }
            let next = self
                .waiting
                .iter()
                .filter(|(t, _)| self.of(t) < per_tenant)
                .filter_map(|(t, q)| q.front().map(|(order, _)| (self.of(t), *order, t.clone())))
                .min();
            let Some((_, _, tenant)) = next else { break };
            let Some((_, wake)) = self.waiting.get_mut(&tenant).and_then(VecDeque::pop_front)
            else {
                break;
            };
            if wake.send(()).is_ok() {
                self.take(&tenant);
            }
        }
    }
}

impl Gate {
    /// A gate admitting `capacity` calls at once (at least one).
    pub fn new(capacity: usize) -> Rc<Gate> {
        let capacity = capacity.max(1);
        Rc::new(Gate {
            capacity,
            per_tenant: (capacity - capacity / 4).max(1),
            state: RefCell::default(),
        })
    }

    /// Calls running now, and of them `tenant`'s.
    pub fn running(&self, tenant: &str) -> (usize, usize) {
        let state = self.state.borrow();
        (state.running, state.of(tenant))
    }

    /// Waits for a slot for one of `tenant`'s calls.
    pub async fn enter(self: &Rc<Self>, tenant: &TenantId) -> Permit {
        let mut waiting = {
            let mut state = self.state.borrow_mut();
            state.purge(tenant);
            let mine = state.of(tenant);
            // Never jump ahead of this tenant's own earlier calls, nor of a waiting tenant with
            // fewer calls running.
            let queued_ahead = state.waiting.contains_key(tenant)
                || state
                    .waiting
                    .iter()
                    .any(|(t, q)| !q.is_empty() && state.of(t) < mine);
            if state.running < self.capacity && mine < self.per_tenant && !queued_ahead {
                state.take(tenant);
                return Permit {
                    gate: self.clone(),
                    tenant: tenant.clone(),
                };
            }
            let (wake, granted) = oneshot::channel();
            let order = state.next;
            state.next += 1;
            state
                .waiting
                .entry(tenant.clone())
                .or_default()
                .push_back((order, wake));
            Waiting {
                gate: self.clone(),
                tenant: tenant.clone(),
                granted: Some(granted),
            }
        };
        let granted = match waiting.granted.as_mut() {
            Some(receiver) => receiver.await.is_ok(),
            None => false,
        };
        // From here the slot belongs to the permit, not to the waiter.
        waiting.granted = None;
        if !granted {
            // The queue entry vanished without a grant (it cannot, short of a bug): take a slot
            // anyway so the permit's release stays balanced.
            self.state.borrow_mut().take(tenant);
        }
        Permit {
            gate: self.clone(),
            tenant: tenant.clone(),
        }
    }

    fn release(&self, tenant: &str) {
        let mut state = self.state.borrow_mut();
        state.running = state.running.saturating_sub(1);
        if let Some(n) = state.by_tenant.get_mut(tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.by_tenant.remove(tenant);
            }
        }
        state.hand_out(self.capacity, self.per_tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::from(name)
    }

    #[tokio::test]
    async fn a_flooding_tenant_never_takes_the_last_quarter_and_others_go_first() {
        let gate = Gate::new(8);
        let (flood, other) = (tenant("flood"), tenant("other"));
        let mut running = Vec::new();
        for _ in 0..6 {
            running.push(gate.enter(&flood).await);
        }
        assert_eq!(gate.running("flood"), (6, 6));
        // Its seventh call waits (6 is three quarters of 8), while another tenant gets in.
        let local = tokio::task::LocalSet::new();
        let queued = local.spawn_local({
            let (gate, flood) = (gate.clone(), flood.clone());
            async move { gate.enter(&flood).await }
        });
        local
            .run_until(tokio::time::sleep(std::time::Duration::from_millis(10)))
            .await;
        let theirs = gate.enter(&other).await;
        assert_eq!(gate.running("other"), (7, 1));
        drop(running.pop());
        let permit = local.run_until(queued).await.unwrap();
        assert_eq!(gate.running("flood"), (7, 6));
        drop((permit, theirs, running));
        assert_eq!(gate.running("flood"), (0, 0));
    }

    #[tokio::test]
    async fn thousands_of_abandoned_waiters_cost_nothing_later() {
        let gate = Gate::new(2);
        let flood = tenant("flood");
        let held = (gate.enter(&flood).await, gate.enter(&tenant("b")).await);
        for _ in 0..10_000 {
            // Polled once (queued), then abandoned, as when its deadline passes.
            assert!(
                futures::FutureExt::now_or_never(gate.enter(&flood)).is_none(),
                "the gate is full"
            );
        }
        drop(held);
        let started = std::time::Instant::now();
        let _permit = gate.enter(&tenant("c")).await;
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(gate.running("c"), (1, 1));
    }
}
