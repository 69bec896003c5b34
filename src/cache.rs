//! Cache of upstream read results, keyed by operation and the exact binding
//! request parameters. The cache is consulted only after the broker has
//! admitted the request; writes through keygate invalidate it.
//!
//! Two tiers. moka is the cache of record: capacity, eviction and the TTL
//! live there. In front of it each thread keeps a small near cache of the
//! entries it served recently, holding its own copy of each value. A moka
//! hit writes to memory every worker shares (the entry's access time and
//! reference count, the read-recording channel, the value's reference
//! count), and on two cores each such write moves a cache line between
//! them (~100 ns each here; BENCHMARKS.md, thirteenth session). A near hit
//! touches only its own thread's memory and reads one shared counter.
//!
//! A near entry is never served longer than the moka entry it copies: it
//! carries that entry's expiry, and the generation it was copied in, which
//! `invalidate_all` advances after invalidating moka.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::sync::Cache;

use crate::secret::SecretBytes;

/// The operation's name is static, so a lookup builds its key without
/// allocating. Keys are hashed with aHash under a per-process random seed:
/// SipHash, moka's default, was ~440 instructions of every cache hit.
type Key = (&'static str, Bytes);

/// Values larger than this are served from moka only: the near caches of
/// all threads together stay small.
const NEAR_MAX_VALUE: usize = 16 * 1024;
/// Bytes of values one thread's near cache holds before it starts over.
const NEAR_MAX_BYTES: usize = 1024 * 1024;

/// Each `ReadCache::new` gets its own id: the near caches are per thread,
/// shared by every cache (the AWS and Vault fronts each have one).
static NEXT_CACHE_ID: AtomicU64 = AtomicU64::new(0);

#[derive(Clone)]
pub struct ReadCache {
    inner: Option<Tiers>,
}

#[derive(Clone)]
struct Tiers {
    id: u64,
    ttl: Duration,
    shared: Cache<Key, Entry, ahash::RandomState>,
    /// Advanced by every `invalidate_all`, after moka is invalidated.
    generation: Arc<AtomicU64>,
}

#[derive(Clone)]
struct Entry {
    value: SecretBytes,
    expires: Instant,
}

thread_local! {
    static NEAR: RefCell<Near> = RefCell::new(Near::default());
}

#[derive(Default)]
struct Near {
    entries: hashbrown::HashMap<NearKey, NearEntry, ahash::RandomState>,
    bytes: usize,
}

#[derive(Hash, PartialEq, Eq)]
struct NearKey {
    cache: u64,
    operation: &'static str,
    key: Bytes,
}

/// A `NearKey` borrowed from the request: looking up needs no copy of the
/// key. Hashes as `NearKey` does (`Bytes` hashes as its slice).
#[derive(Hash)]
struct NearLookup<'a> {
    cache: u64,
    operation: &'static str,
    key: &'a [u8],
}

impl hashbrown::Equivalent<NearKey> for NearLookup<'_> {
    fn equivalent(&self, k: &NearKey) -> bool {
        self.cache == k.cache && self.operation == k.operation && self.key == k.key.as_ref()
    }
}

struct NearEntry {
    /// A copy owned by this thread: cloning it touches no other thread's
    /// reference count.
    value: SecretBytes,
    expires: Instant,
    generation: u64,
}

impl ReadCache {
    /// A zero TTL or capacity disables caching.
    pub fn new(ttl: Duration, max_entries: u64) -> ReadCache {
        let inner = (!ttl.is_zero() && max_entries > 0).then(|| Tiers {
            id: NEXT_CACHE_ID.fetch_add(1, Ordering::Relaxed),
            ttl,
            shared: Cache::builder()
                .time_to_live(ttl)
                .max_capacity(max_entries)
                .build_with_hasher(ahash::RandomState::new()),
            generation: Arc::new(AtomicU64::new(0)),
        });
        ReadCache { inner }
    }

    pub fn get(&self, operation: &'static str, key: &Bytes) -> Option<SecretBytes> {
        let tiers = self.inner.as_ref()?;
        let now = Instant::now();
        // Read before moka: an invalidation that lands after this load
        // makes whatever moka returns below unusable from the near cache.
        let generation = tiers.generation.load(Ordering::Acquire);
        let lookup = NearLookup {
            cache: tiers.id,
            operation,
            key: key.as_ref(),
        };
        let near = NEAR.with(|near| {
            let near = near.borrow();
            let e = near.entries.get(&lookup)?;
            (e.generation == generation && now < e.expires).then(|| e.value.clone())
        });
        if near.is_some() {
            return near;
        }
        let key = (operation, key.clone());
        let entry = tiers.shared.get(&key)?;
        if now >= entry.expires {
            return None;
        }
        if entry.value.expose().len() <= NEAR_MAX_VALUE {
            let near_key = NearKey {
                cache: tiers.id,
                operation,
                key: key.1,
            };
            NEAR.with(|near| {
                near.borrow_mut()
                    .keep(near_key, &entry.value, entry.expires, generation)
            });
        }
        Some(entry.value)
    }

    pub fn insert(&self, operation: &'static str, key: Bytes, value: SecretBytes) {
        if let Some(t) = &self.inner {
            let expires = Instant::now() + t.ttl;
            t.shared.insert((operation, key), Entry { value, expires });
        }
    }

    /// After any write: names and ARNs both address a secret, so the safe
    /// invalidation is all of it. Writes are rare next to reads.
    pub fn invalidate_all(&self) {
        if let Some(t) = &self.inner {
            t.shared.invalidate_all();
            // After moka: a near copy taken from an entry this call
            // invalidated then carries an older generation.
            t.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Near {
    fn keep(&mut self, key: NearKey, value: &SecretBytes, expires: Instant, generation: u64) {
        let len = value.expose().len();
        if self.bytes + len > NEAR_MAX_BYTES {
            // Simpler than an eviction order, and rare: a thread that
            // serves over a megabyte of distinct values starts over.
            self.entries.clear();
            self.bytes = 0;
        }
        let copy = SecretBytes::new(Bytes::copy_from_slice(value.expose()));
        let entry = NearEntry {
            value: copy,
            expires,
            generation,
        };
        if let Some(old) = self.entries.insert(key, entry) {
            self.bytes -= old.value.expose().len();
        }
        self.bytes += len;
    }
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReadCache(enabled: {})", self.inner.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(v: &'static [u8]) -> SecretBytes {
        SecretBytes::new(Bytes::from_static(v))
    }

    #[test]
    fn entries_are_keyed_by_operation_and_body_and_invalidated() {
        let c = ReadCache::new(Duration::from_secs(60), 100);
        let k = Bytes::from_static(b"{\"SecretId\":\"a\"}");
        c.insert("GetSecretValue", k.clone(), value(b"v"));
        assert!(c.get("GetSecretValue", &k).is_some());
        assert!(c.get("DescribeSecret", &k).is_none());
        c.invalidate_all();
        assert!(c.get("GetSecretValue", &k).is_none());
        let off = ReadCache::new(Duration::ZERO, 100);
        off.insert("GetSecretValue", k.clone(), value(b"v"));
        assert!(off.get("GetSecretValue", &k).is_none());
    }

    #[test]
    fn a_near_copy_is_dropped_by_invalidate_all_and_replaced_by_the_new_value() {
        let c = ReadCache::new(Duration::from_secs(60), 100);
        let k = Bytes::from_static(b"k");
        c.insert("GetSecretValue", k.clone(), value(b"old"));
        // Twice: the second answer comes from this thread's near cache.
        for _ in 0..2 {
            let hit = c.get("GetSecretValue", &k).expect("cached");
            assert_eq!(hit.expose().as_ref(), b"old");
        }
        c.invalidate_all();
        assert!(c.get("GetSecretValue", &k).is_none());
        c.insert("GetSecretValue", k.clone(), value(b"new"));
        let hit = c.get("GetSecretValue", &k).expect("cached again");
        assert_eq!(hit.expose().as_ref(), b"new");
    }

    #[test]
    fn a_near_copy_expires_with_the_entry_it_copies() {
        let c = ReadCache::new(Duration::from_millis(50), 100);
        let k = Bytes::from_static(b"k");
        c.insert("GetSecretValue", k.clone(), value(b"v"));
        assert!(c.get("GetSecretValue", &k).is_some());
        assert!(c.get("GetSecretValue", &k).is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert!(c.get("GetSecretValue", &k).is_none());
    }

    #[test]
    fn two_caches_on_one_thread_do_not_share_near_entries() {
        let (a, b) = (
            ReadCache::new(Duration::from_secs(60), 100),
            ReadCache::new(Duration::from_secs(60), 100),
        );
        let k = Bytes::from_static(b"k");
        a.insert("vault", k.clone(), value(b"a"));
        assert!(a.get("vault", &k).is_some());
        assert!(b.get("vault", &k).is_none());
        b.invalidate_all();
        assert!(a.get("vault", &k).is_some(), "b's invalidation is b's own");
    }

    #[test]
    fn large_values_are_served_but_not_copied_near() {
        let c = ReadCache::new(Duration::from_secs(60), 100);
        let k = Bytes::from_static(b"big");
        let big = SecretBytes::new(Bytes::from(vec![7u8; NEAR_MAX_VALUE + 1]));
        c.insert("GetSecretValue", k.clone(), big);
        assert_eq!(
            c.get("GetSecretValue", &k).expect("cached").expose().len(),
            NEAR_MAX_VALUE + 1
        );
        let id = c.inner.as_ref().expect("enabled").id;
        let lookup = NearLookup {
            cache: id,
            operation: "GetSecretValue",
            key: b"big",
        };
        assert!(!NEAR.with(|n| n.borrow().entries.contains_key(&lookup)));
    }
}
