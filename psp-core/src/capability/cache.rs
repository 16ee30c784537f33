//! The verified-chain cache: a Totebox sees the same chain on every query of a session, so the
//! signature work is done once.
//!
//! What it stores is only "these exact bytes form a valid chain" (signatures, delegation links,
//! narrowing). Trust in the root, revocation, the window, the holder and the archive are checked on
//! every call by the verifier, never remembered here.
//!
//! Entries are found by a keyed hash of the chain's signatures (each signature commits to its body),
//! and an entry matches only when every byte of every body and signature equals what was verified,
//! so a collision or a swapped body is just a miss. Entries leave when their chain expires or, when
//! the cache is full, oldest first.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::{Arc, Mutex};

use super::chain::LinkBytes;
use super::verify::VerifiedChain;
use crate::window::UnixSeconds;

/// Default number of chains remembered.
const DEFAULT_CAPACITY: usize = 4096;

/// Most bytes of chains remembered (the verified bytes each entry keeps), whatever their number:
/// 4,096 chains at the 256 KiB a chain may reach would be a gigabyte.
const MAX_BYTES: usize = 64 << 20;

/// A bounded, thread-safe cache of verified chains. See the module docs for what it may store.
#[derive(Debug)]
pub struct ChainCache {
    capacity: usize,
    /// Randomly keyed per process, so nobody can aim chains at one bucket.
    hasher: RandomState,
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_key: HashMap<u64, Entry>,
    /// Insertion order, for eviction when full. May hold keys already removed.
    order: VecDeque<u64>,
    /// The bytes the entries in `by_key` keep.
    bytes: usize,
}

impl Entries {
    fn remove(&mut self, key: &u64) {
        if let Some(entry) = self.by_key.remove(key) {
            self.bytes -= entry.bytes.len();
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// Every link's body and signature, each preceded by its length: the exact verified bytes.
    bytes: Box<[u8]>,
    chain: Arc<VerifiedChain>,
    /// First second at which the chain can no longer be valid, skew included.
    expires: UnixSeconds,
}

impl Default for ChainCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl ChainCache {
    /// A cache remembering at most `capacity` chains; 0 turns caching off.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            hasher: RandomState::new(),
            inner: Mutex::new(Entries::default()),
        }
    }

    /// How many chains are remembered now.
    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything.
    pub fn clear(&self) {
        let mut entries = self.lock();
        entries.by_key.clear();
        entries.order.clear();
        entries.bytes = 0;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The map stays consistent even if a holder panicked, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self, links: &[LinkBytes<'_>]) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        for link in links {
            hasher.write(link.signature);
        }
        hasher.finish()
    }

    /// The verified chain for exactly these bytes, if remembered and not expired at `now`.
    pub(crate) fn lookup(
        &self,
        links: &[LinkBytes<'_>],
        now: UnixSeconds,
    ) -> Option<Arc<VerifiedChain>> {
        if self.capacity == 0 {
            return None;
        }
        let key = self.key(links);
        let mut entries = self.lock();
        let entry = entries.by_key.get(&key)?;
        if now >= entry.expires {
            entries.remove(&key);
            return None;
        }
        same_bytes(&entry.bytes, links).then(|| entry.chain.clone())
    }

    /// Remembers that `links` form the valid `chain`, until `expires`.
    pub(crate) fn insert(
        &self,
        links: &[LinkBytes<'_>],
        chain: &Arc<VerifiedChain>,
        expires: UnixSeconds,
        now: UnixSeconds,
    ) {
        if self.capacity == 0 || now >= expires {
            return;
        }
        let key = self.key(links);
        let mut bytes = Vec::new();
        for link in links {
            for part in [link.body, link.signature] {
                bytes.extend_from_slice(&(part.len() as u32).to_le_bytes());
                bytes.extend_from_slice(part);
            }
        }
        if bytes.len() > MAX_BYTES {
            return;
        }
        let mut entries = self.lock();
        entries.remove(&key);
        while entries.by_key.len() >= self.capacity || entries.bytes + bytes.len() > MAX_BYTES {
            let Some(oldest) = entries.order.pop_front() else {
                break;
            };
            entries.remove(&oldest);
        }
        entries.bytes += bytes.len();
        let entry = Entry {
            bytes: bytes.into_boxed_slice(),
            chain: chain.clone(),
            expires,
        };
        entries.by_key.insert(key, entry);
        // Queued again even if it was already: an older place in the queue only means it may
        // be evicted sooner, which costs a verification, never a wrong answer.
        entries.order.push_back(key);
        // Expired entries leave `by_key` on lookup but stay queued; drop such stale keys before
        // the queue outgrows the cache.
        if entries.order.len() > 2 * self.capacity + 16 {
            let Entries { by_key, order, .. } = &mut *entries;
            order.retain(|k| by_key.contains_key(k));
        }
    }
}

/// Whether `stored` (as written by `insert`) holds exactly the bytes of `links`.
fn same_bytes(stored: &[u8], links: &[LinkBytes<'_>]) -> bool {
    let mut rest = stored;
    for link in links {
        for part in [link.body, link.signature] {
            let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                return false;
            };
            let len = u32::from_le_bytes(*len) as usize;
            if len != part.len() || tail.get(..len) != Some(part) {
                return false;
            }
            rest = &tail[len..];
        }
    }
    rest.is_empty()
}
