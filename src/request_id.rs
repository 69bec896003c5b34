//! Request ids for logs and `x-amzn-RequestId`: a random per-process prefix
//! and a counter. Unique within a process run, unguessable across runs, and
//! far cheaper than a random UUID per request (no syscall on the hot path).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The prefix as its 16 hex digits, formatted once.
static PREFIX: OnceLock<String> = OnceLock::new();
/// The next unreserved counter value. Each thread reserves a block of
/// `BLOCK` values at a time: one write to this shared counter per request
/// moved its cache line between the cores on every request.
static COUNTER: AtomicU64 = AtomicU64::new(0);
const BLOCK: u64 = 1024;

thread_local! {
    /// This thread's next value and the end of its reserved block.
    static RESERVED: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

fn next_counter() -> u64 {
    RESERVED.with(|r| {
        let (mut next, mut end) = r.get();
        if next == end {
            next = COUNTER.fetch_add(BLOCK, Ordering::Relaxed);
            end = next + BLOCK;
        }
        r.set((next + 1, end));
        next
    })
}

pub fn next() -> String {
    let prefix = PREFIX.get_or_init(|| {
        let mut hex = String::with_capacity(16);
        crate::hexfmt::hex_u64(rand::random(), 16, &mut hex);
        hex
    });
    let n = next_counter();
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

    #[test]
    fn threads_never_hand_out_the_same_id() {
        let per_thread = 3 * super::BLOCK as usize;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..per_thread).map(|_| super::next()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<String> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("thread"))
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
