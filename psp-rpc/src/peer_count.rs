//! What one peer key may hold at a server, across the server's workers: how many connections,
//! and how many bytes of messages it has begun and not finished.
//!
//! Each connection costs a file descriptor, TLS and RPC state, and, once a message has begun,
//! that message's buffer: Cap'n Proto allocates a whole message when its segment table arrives
//! and fills it as the body comes. Capping connections alone still let one paired key hold its
//! connection cap times the message limit (64 × 16 MiB = 1 GiB by default) by starting a large
//! message on every connection and trickling it until the message time limit. The byte budget
//! caps that too: a large message is read only when the peer's other unfinished messages leave
//! room for it; until then it waits unread, so the peer's own sends stall (TCP pushes back), and
//! the message time limit still runs. A message within the budget's floor is never held back,
//! so small calls on one connection never wait on another connection's large upload.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use psp_core::PublicKey;

/// Messages of at most this many bytes are read without asking the budget: every call a
/// console or an orchestrator makes is far smaller, and 64 connections of them hold 4 MiB.
pub(crate) const UNBUDGETED_BYTES: u64 = 64 * 1024;

/// What one peer holds.
#[derive(Debug, Default)]
struct Held {
    connections: usize,
    /// Bytes of budgeted messages begun and not yet read whole.
    partial_bytes: u64,
    /// Readers waiting for room in `partial_bytes`, by reader: at most one each, and a reader
    /// that goes takes its own out, so the list is never longer than the peer's connections.
    waiting: Vec<(u64, Waker)>,
}

/// The open connections and unfinished messages of each peer of one server.
#[derive(Debug, Default, Clone)]
pub(crate) struct PeerConnections(Arc<Mutex<HashMap<PublicKey, Held>>>);

/// Names each connection's reader, for its place among a peer's waiting readers.
static READERS: AtomicU64 = AtomicU64::new(0);

impl PeerConnections {
    fn lock(&self) -> MutexGuard<'_, HashMap<PublicKey, Held>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a new connection of `peer`, or refuses it when `peer` already has `max` open.
    pub(crate) fn admit(&self, peer: PublicKey, max: usize) -> Option<PeerSlot> {
        let mut held = self.lock();
        let entry = held.entry(peer).or_default();
        if entry.connections >= max {
            return None;
        }
        entry.connections += 1;
        Some(PeerSlot {
            connections: self.clone(),
            peer,
        })
    }

    fn forget_if_unused(held: &mut HashMap<PublicKey, Held>, peer: &PublicKey) {
        if held
            .get(peer)
            .is_some_and(|h| h.connections == 0 && h.partial_bytes == 0)
        {
            held.remove(peer);
        }
    }
}

/// One admitted connection; uncounted when dropped.
#[derive(Debug)]
pub(crate) struct PeerSlot {
    connections: PeerConnections,
    peer: PublicKey,
}

impl PeerSlot {
    /// The byte budget this connection's reader shares with the peer's other connections: at
    /// most `max_bytes` of budgeted messages unfinished at once.
    pub(crate) fn budget(&self, max_bytes: u64) -> PeerBudget {
        PeerBudget {
            connections: self.connections.clone(),
            peer: self.peer,
            max_bytes,
            reader: READERS.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut held = self.connections.lock();
        if let Some(entry) = held.get_mut(&self.peer) {
            entry.connections = entry.connections.saturating_sub(1);
        }
        PeerConnections::forget_if_unused(&mut held, &self.peer);
    }
}

/// One peer's byte budget for unfinished messages, as one connection's reader sees it.
#[derive(Debug, Clone)]
pub(crate) struct PeerBudget {
    connections: PeerConnections,
    peer: PublicKey,
    max_bytes: u64,
    reader: u64,
}

impl PeerBudget {
    /// Takes `bytes` of the budget for a message about to be read, or registers `cx` to be
    /// woken when some is given back. A message is always admitted when the peer has nothing
    /// else unfinished, so one larger than the budget (but within the message limit) is slow,
    /// never stuck.
    pub(crate) fn poll_take(&self, bytes: u64, cx: &mut Context<'_>) -> Poll<()> {
        let mut held = self.connections.lock();
        let entry = held.entry(self.peer).or_default();
        if entry.partial_bytes == 0 || entry.partial_bytes.saturating_add(bytes) <= self.max_bytes {
            entry.partial_bytes = entry.partial_bytes.saturating_add(bytes);
            return Poll::Ready(());
        }
        match entry.waiting.iter_mut().find(|(r, _)| *r == self.reader) {
            Some((_, waker)) => waker.clone_from(cx.waker()),
            None => entry.waiting.push((self.reader, cx.waker().clone())),
        }
        Poll::Pending
    }

    /// Takes this reader out of the peer's waiting readers (it is going).
    pub(crate) fn stop_waiting(&self) {
        if let Some(entry) = self.connections.lock().get_mut(&self.peer) {
            entry.waiting.retain(|(r, _)| *r != self.reader);
        }
    }

    /// Gives back `bytes` taken by [`PeerBudget::poll_take`] and wakes the readers waiting.
    pub(crate) fn give_back(&self, bytes: u64) {
        let waiting = {
            let mut held = self.connections.lock();
            let waiting = match held.get_mut(&self.peer) {
                Some(entry) => {
                    entry.partial_bytes = entry.partial_bytes.saturating_sub(bytes);
                    std::mem::take(&mut entry.waiting)
                }
                None => Vec::new(),
            };
            PeerConnections::forget_if_unused(&mut held, &self.peer);
            waiting
        };
        // Woken outside the lock: a waker may run code that takes it.
        waiting.into_iter().for_each(|(_, waker)| waker.wake());
    }

    /// Bytes of this peer's budgeted messages begun and not yet read whole.
    #[cfg(test)]
    fn partial_bytes(&self) -> u64 {
        self.connections
            .lock()
            .get(&self.peer)
            .map_or(0, |h| h.partial_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::PeerConnections;
    use psp_core::IdentityKey;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};

    /// Two peers' keys.
    fn peers() -> (psp_core::PublicKey, psp_core::PublicKey) {
        (
            IdentityKey::from_seed([1; 32]).public(),
            IdentityKey::from_seed([2; 32]).public(),
        )
    }

    #[test]
    fn a_peer_is_refused_at_its_cap_and_admitted_again_when_one_closes() {
        let (a, b) = peers();
        let connections = PeerConnections::default();
        let first = connections.admit(a, 2).unwrap();
        let _second = connections.admit(a, 2).unwrap();
        assert!(connections.admit(a, 2).is_none());
        // Another peer has its own count.
        assert!(connections.admit(b, 2).is_some());
        drop(first);
        assert!(connections.admit(a, 2).is_some());
    }

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waiting(connections: &PeerConnections, peer: psp_core::PublicKey) -> usize {
        connections.lock().get(&peer).map_or(0, |h| h.waiting.len())
    }

    #[test]
    fn a_message_waits_for_room_in_its_peers_budget_and_is_woken_when_room_is_given_back() {
        let (a, b) = peers();
        let connections = PeerConnections::default();
        let (one, two) = (
            connections.admit(a, 4).unwrap(),
            connections.admit(a, 4).unwrap(),
        );
        let (one, two) = (one.budget(100), two.budget(100));
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(one.poll_take(70, &mut cx), Poll::Ready(()));
        assert_eq!(two.poll_take(40, &mut cx), Poll::Pending, "over the budget");
        assert_eq!(two.poll_take(30, &mut cx), Poll::Ready(()), "within it");
        assert_eq!(two.partial_bytes(), 100);
        // Another peer's budget is its own.
        let other = connections.admit(b, 4).unwrap().budget(100);
        assert_eq!(other.poll_take(100, &mut cx), Poll::Ready(()));
        assert_eq!(two.poll_take(40, &mut cx), Poll::Pending);
        assert_eq!(woken.0.load(Ordering::SeqCst), 0);
        one.give_back(70);
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "the waiting reader woke");
        assert_eq!(two.poll_take(40, &mut cx), Poll::Ready(()));
        two.give_back(70);
        // A reader asking again is listed once; one that goes is not listed at all.
        assert_eq!(one.poll_take(50, &mut cx), Poll::Ready(()));
        assert_eq!(two.poll_take(90, &mut cx), Poll::Pending);
        assert_eq!(two.poll_take(90, &mut cx), Poll::Pending);
        let third = connections.admit(a, 4).unwrap().budget(100);
        assert_eq!(third.poll_take(90, &mut cx), Poll::Pending);
        assert_eq!(waiting(&connections, a), 2);
        third.stop_waiting();
        assert_eq!(waiting(&connections, a), 1);
        one.give_back(50);
        assert_eq!(waiting(&connections, a), 0, "woken and let go");
        // Alone, a message larger than the whole budget still goes through.
        assert_eq!(one.poll_take(500, &mut cx), Poll::Ready(()));
        one.give_back(500);
        assert_eq!(one.partial_bytes(), 0);
    }
}
