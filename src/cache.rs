//! Cache of upstream read results (moka), keyed by operation and the exact
//! binding request parameters. The cache is consulted only after the broker
//! has admitted the request; writes through keygate invalidate it.

use std::time::Duration;

use bytes::Bytes;
use moka::sync::Cache;

use crate::secret::SecretBytes;

/// The operation's name is static, so a lookup builds its key without
/// allocating. Keys are hashed with aHash under a per-process random seed:
/// SipHash, moka's default, was ~440 instructions of every cache hit.
type Key = (&'static str, Bytes);

#[derive(Clone)]
pub struct ReadCache {
    inner: Option<Cache<Key, SecretBytes, ahash::RandomState>>,
}

impl ReadCache {
    /// A zero TTL or capacity disables caching.
    pub fn new(ttl: Duration, max_entries: u64) -> ReadCache {
        let inner = (!ttl.is_zero() && max_entries > 0).then(|| {
            Cache::builder()
                .time_to_live(ttl)
                .max_capacity(max_entries)
                .build_with_hasher(ahash::RandomState::new())
        });
        ReadCache { inner }
    }

    pub fn get(&self, operation: &'static str, key: &Bytes) -> Option<SecretBytes> {
        self.inner.as_ref()?.get(&(operation, key.clone()))
    }

    pub fn insert(&self, operation: &'static str, key: Bytes, value: SecretBytes) {
        if let Some(c) = &self.inner {
            c.insert((operation, key), value);
        }
    }

    /// After any write: names and ARNs both address a secret, so the safe
    /// invalidation is all of it. Writes are rare next to reads.
    pub fn invalidate_all(&self) {
        if let Some(c) = &self.inner {
            c.invalidate_all();
        }
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

    #[test]
    fn entries_are_keyed_by_operation_and_body_and_invalidated() {
        let c = ReadCache::new(Duration::from_secs(60), 100);
        let k = Bytes::from_static(b"{\"SecretId\":\"a\"}");
        c.insert(
            "GetSecretValue",
            k.clone(),
            SecretBytes::new(Bytes::from_static(b"v")),
        );
        assert!(c.get("GetSecretValue", &k).is_some());
        assert!(c.get("DescribeSecret", &k).is_none());
        c.invalidate_all();
        assert!(c.get("GetSecretValue", &k).is_none());
        let off = ReadCache::new(Duration::ZERO, 100);
        off.insert(
            "GetSecretValue",
            k.clone(),
            SecretBytes::new(Bytes::from_static(b"v")),
        );
        assert!(off.get("GetSecretValue", &k).is_none());
    }
}
