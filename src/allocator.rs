//! The binary's allocator: jemalloc, built to hand freed pages back to the
//! system at once (`dirty_decay_ms:0`, set in `.cargo/config.toml`).
//!
//! Why: a request held for approval keeps a few kilobytes for as long as
//! it waits, allocated in between the short-lived buffers and futures of
//! the requests around it. glibc's allocator leaves those freed buffers as
//! holes between the held requests' allocations and cannot return them,
//! so 10,000 held requests cost 8.5-9.7 KB each in RSS. jemalloc keeps
//! each size class in slabs of its own and, with no decay delay, purges a
//! slab as soon as it empties: 6.8 KB each (`benches/held.py`; see
//! BENCHMARKS.md for the runs).
//!
//! `_RJEM_MALLOC_CONF` in the environment overrides the options at run
//! time (jemalloc's `MALLOC_CONF`, with the `tikv-jemallocator` build's
//! prefix). Building without the `jemalloc` feature keeps the system
//! allocator.

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
