//! Connections per peer key, across a server's workers: one paired key may not open
//! connections without bound. Each connection costs a file descriptor, TLS and RPC state, and
//! up to a whole message's buffer once a message has begun (Cap'n Proto allocates a message
//! when its segment table arrives), so the cap bounds what one peer can hold.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use psp_core::PublicKey;

/// The open connections of each peer of one server.
#[derive(Debug, Default, Clone)]
pub(crate) struct PeerConnections(Arc<Mutex<HashMap<PublicKey, usize>>>);

impl PeerConnections {
    /// Counts a new connection of `peer`, or refuses it when `peer` already has `max` open.
    pub(crate) fn admit(&self, peer: PublicKey, max: usize) -> Option<PeerSlot> {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(peer).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            connections: self.clone(),
            peer,
        })
    }
}

/// One admitted connection; uncounted when dropped.
#[derive(Debug)]
pub(crate) struct PeerSlot {
    connections: PeerConnections,
    peer: PublicKey,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self
            .connections
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PeerConnections;
    use psp_core::IdentityKey;

    #[test]
    fn a_peer_is_refused_at_its_cap_and_admitted_again_when_one_closes() {
        let (a, b) = (
            IdentityKey::from_seed([1; 32]).public(),
            IdentityKey::from_seed([2; 32]).public(),
        );
        let connections = PeerConnections::default();
        let first = connections.admit(a, 2).unwrap();
        let _second = connections.admit(a, 2).unwrap();
        assert!(connections.admit(a, 2).is_none());
        // Another peer has its own count.
        assert!(connections.admit(b, 2).is_some());
        drop(first);
        assert!(connections.admit(a, 2).is_some());
    }
}
