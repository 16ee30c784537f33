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
//! It lives on the fleet thread (not `Send`); waiting is bounded by the caller's own deadline.

use std::cell::RefCell;
use std::collections::HashMap;
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
    waiting: Vec<Waiter>,
    next: u64,
}

#[derive(Debug)]
struct Waiter {
    tenant: TenantId,
    order: u64,
    wake: oneshot::Sender<()>,
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

/// A call waiting for a slot. Dropped before its turn (its deadline passed), it leaves the
/// queue; dropped just after being granted one, it frees it.
struct Waiting {
    gate: Rc<Gate>,
    tenant: TenantId,
    order: u64,
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
            let order = self.order;
            self.gate
                .state
                .borrow_mut()
                .waiting
                .retain(|w| w.order != order);
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
            let mine = state.of(tenant);
            // Never jump ahead of a waiting tenant with fewer calls running, nor of this tenant's
            // own earlier calls.
            let queued_ahead = state
                .waiting
                .iter()
                .any(|w| w.tenant == *tenant || state.of(&w.tenant) < mine);
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
            state.waiting.push(Waiter {
                tenant: tenant.clone(),
                order,
                wake,
            });
            Waiting {
                gate: self.clone(),
                tenant: tenant.clone(),
                order,
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
        // Hand freed slots to the waiting tenants with the fewest calls running, oldest first.
        while state.running < self.capacity {
            let next = state
                .waiting
                .iter()
                .enumerate()
                .filter(|(_, w)| state.of(&w.tenant) < self.per_tenant)
                .min_by_key(|(_, w)| (state.of(&w.tenant), w.order))
                .map(|(i, _)| i);
            let Some(i) = next else { break };
            let waiter = state.waiting.swap_remove(i);
            if waiter.wake.send(()).is_ok() {
                state.take(&waiter.tenant);
            }
        }
    }
}
