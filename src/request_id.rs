//! Request ids for logs and `x-amzn-RequestId`: a random per-process prefix
//! and a counter. Unique within a process run, unguessable across runs, and
//! far cheaper than a random UUID per request (no syscall on the hot path).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The prefix as its 16 hex digits, formatted once.
static PREFIX: OnceLock<String> = OnceLock::new();
static COUNTER: AtomicU64 = AtomicU64::new(0);

pub fn next() -> String {
    let prefix = PREFIX.get_or_init(|| {
        let mut hex = String::with_capacity(16);
        crate::hexfmt::hex_u64(rand::random(), 16, &mut hex);
        hex
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // By hand: `format!` with two hex arguments was ~2,500 instructions.
    let mut id = String::with_capacity(29);
    id.push_str(prefix);
    id.push('-');
    crate::hexfmt::hex_u64(n, 12, &mut id);
    id
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_distinct_and_share_the_process_prefix() {
        let (a, b) = (super::next(), super::next());
        assert_ne!(a, b);
        assert_eq!(a[..16], b[..16]);
        assert_eq!(a.len(), 29);
        assert_eq!(&a[16..17], "-");
    }
}
