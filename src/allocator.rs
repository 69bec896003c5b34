//! The binary's allocator: jemalloc, built to hand freed pages back to the
//! system within 100 ms (`dirty_decay_ms:100`, set in `.cargo/config.toml`),
//! from a background thread of its own.
//!
//! Why: a request held for approval keeps a few kilobytes for as long as
//! it waits, allocated in between the short-lived buffers and futures of
//! the requests around it. glibc's allocator leaves those freed buffers as
//! holes between the held requests' allocations and cannot return them,
//! so 10,000 held requests cost 8.5-9.7 KB each in RSS. jemalloc keeps
//! each size class in slabs of its own and purges a slab soon after it
//! empties: 6.2 KB each (`benches/held.py`; see BENCHMARKS.md for the runs).
//!
//! Why 100 ms and not 0: with no delay, every emptied slab cost a
//! `madvise`, and the TLB shootdown it sends to the other cores, at once:
//! 0.023 calls per cache hit, ~2% of keygate's CPU at 32 connections.
//! 100 ms makes that 0.004 and holds as little (60.5 MiB for 10,000 held
//! requests either way); 1 s holds 65 MiB.
//!
//! Why a background thread (`background_thread:true`, one of them): without
//! it jemalloc purges only when the program allocates or frees, so memory
//! freed just before keygate goes quiet stays resident. Parsing a config
//! with 10,001 identities frees ~31 MiB, and an idle keygate kept it: 55.4
//! MiB RSS after start, 24.4 MiB with the thread. At 32 connections it
//! made no difference outside the noise (A/B in BENCHMARKS.md).
//!
//! `_RJEM_MALLOC_CONF` in the environment overrides the options at run
//! time (jemalloc's `MALLOC_CONF`, with the `tikv-jemallocator` build's
//! prefix). Building without the `jemalloc` feature keeps the system
//! allocator.

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
