//! The read cache's hit, alone and with two threads hitting the same entry
//! at once (the benchmark's 32 connections on two tokio workers do that all
//! the time): nanoseconds per `ReadCache::get`, with the request's own copy
//! of the key and a clone of the answer, as on the AWS front end's hit path.
//!
//! `cargo bench --bench cache [-- ITERATIONS]` prints one line per thread
//! count; `scripts/bench.sh` puts them in its table. Not criterion: the
//! point is the cost under contention, which needs threads running at once.

use std::time::{Duration, Instant};

use bytes::Bytes;
use keygate::cache::ReadCache;
use keygate::secret::SecretBytes;

fn main() {
    // `cargo bench` passes `--bench`; the iteration count is the first number.
    let iterations: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let cache = ReadCache::new(Duration::from_secs(600), 1000);
    let key = Bytes::from_static(br#"{"SecretId":"demo/api/key"}"#);
    // The size of the demo secret's GetSecretValue answer.
    let answer = SecretBytes::new(Bytes::from(vec![b'x'; 249]));
    cache.insert("GetSecretValue", key.clone(), answer);
    for threads in [1, 2] {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (cache, key) = (cache.clone(), key.clone());
                std::thread::spawn(move || {
                    let started = Instant::now();
                    for _ in 0..iterations {
                        let request_key = Bytes::copy_from_slice(&key);
                        let hit = cache.get("GetSecretValue", &request_key);
                        let hit = hit.expect("the entry was inserted above");
                        std::hint::black_box(hit.expose().clone());
                    }
                    started.elapsed().as_nanos() as f64 / iterations as f64
                })
            })
            .collect();
        let ns: Vec<String> = workers
            .into_iter()
            .map(|w| format!("{:.0}", w.join().expect("bench thread panicked")))
            .collect();
        println!(
            "read cache hit, {threads} thread(s): {} ns per get",
            ns.join(" / ")
        );
    }
}
