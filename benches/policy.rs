//! Policy decision time for 10 / 1,000 / 10,000 rules (target: a 10,000-rule
//! policy decides in under 5 µs, median).
//!
//! Cases per size (see benches/common/policy_fixture.rs):
//! - `last_rule`: only the last rule matches the request;
//! - `no_match`: no rule matches (default deny, which also formats the reason);
//! - `glob_last_rule`: as `last_rule`, but every rule names its identity by a
//!   glob, so no index by identity helps: the linear worst case.
//!
//! `scripts/bench.sh` reads the medians from criterion's `estimates.json`
//! under `$CARGO_TARGET_DIR/criterion/policy_decide/<case>/<size>/new/`.
//!
//! Run alone: `cargo bench --bench policy -- --noplot`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use keygate::policy::{Decision, Policy, ReadHistory};
use keygate::timestamp::Timestamp;

#[path = "common/policy_fixture.rs"]
mod policy_fixture;

use policy_fixture::{
    glob_last_rule_request, last_rule_request, no_match_request, policy_with_glob_rules,
    policy_with_rules, OwnedRequest,
};

const SIZES: [usize; 3] = [10, 1_000, 10_000];

fn decide(c: &mut Criterion) {
    let history = ReadHistory::default();
    let now = Timestamp::from_millis(1_700_000_000_000);
    let mut group = c.benchmark_group("policy_decide");
    for n in SIZES {
        let literal = policy_with_rules(n);
        let glob = policy_with_glob_rules(n);
        let cases: [(&str, &Policy, OwnedRequest); 3] = [
            ("last_rule", &literal, last_rule_request(n)),
            ("no_match", &literal, no_match_request()),
            ("glob_last_rule", &glob, glob_last_rule_request(n)),
        ];
        for (case, policy, owned) in &cases {
            let req = owned.as_request();
            // Check the fixture does what the case's name says before timing it.
            let decision = policy.decide(&req, &history, now);
            let expected_rule = format!("rule-{}", n - 1);
            match (*case, &decision) {
                ("no_match", Decision::Deny { rule: None, .. }) => {}
                (_, Decision::Allow { rule: Some(r) })
                    if *case != "no_match" && *r == expected_rule => {}
                _ => panic!("{case}/{n}: unexpected decision {decision:?}"),
            }
            group.bench_with_input(BenchmarkId::new(*case, n), &n, |b, _| {
                b.iter(|| black_box(policy.decide(black_box(&req), &history, now)));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
