//! End-to-end with the official Rust `aws-sdk-secretsmanager` as the client:
//! keygate runs in-process on port-0 listeners with the embedded dev store,
//! and approvers act through the admin API with keygate's own admin client.

mod common;

use std::net::SocketAddr;

use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use aws_sdk_secretsmanager::Client;
use common::{pending, start, Running};
use keygate::admin_client::AdminClient;
use serde_json::json;

fn client(addr: SocketAddr, key_id: &str, secret: &str) -> Client {
    let conf = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(format!("http://{addr}"))
        .credentials_provider(Credentials::new(key_id, secret, None, None, "test"))
        .build();
    Client::from_conf(conf)
}

fn demo_client(k: &Running) -> Client {
    client(k.workload, "AKIAKEYGATEDEMOAPP01", "demo-app-secret-key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routine_read_passes_through_with_the_stored_value() {
    let k = start("20s", 1).await;
    let out = demo_client(&k)
        .get_secret_value()
        .secret_id("demo/api/key")
        .send()
        .await
        .expect("allowed read");
    assert_eq!(out.secret_string(), Some("demo-api-key-123"));
    assert_eq!(out.name(), Some("demo/api/key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_read_is_answered_on_the_open_connection_once_approved() {
    let k = start("20s", 1).await;
    let sm = demo_client(&k);
    let call = tokio::spawn(async move {
        sm.get_secret_value()
            .secret_id("prod/payments/db")
            .send()
            .await
    });
    let alice = AdminClient::new(&k.admin.to_string(), "kg-alice-token");
    let list = pending(&alice).await;
    assert_eq!(list[0]["resources"], json!(["prod/payments/db"]));
    let id = list[0]["id"].as_str().expect("id").to_string();
    alice
        .post(
            &format!("/admin/v1/requests/{id}/approve"),
            json!({"comment": "incident 42"}),
        )
        .await
        .expect("approve");
    let out = call.await.expect("join").expect("released");
    assert!(out.secret_string().is_some_and(|s| s.contains("pr0d-pa55")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_denial_and_bad_keys_are_native_sdk_errors() {
    let k = start("20s", 1).await;
    let err = demo_client(&k)
        .delete_secret()
        .secret_id("demo/api/key")
        .send()
        .await
        .expect_err("denied");
    assert_eq!(err.code(), Some("AccessDeniedException"));
    assert!(
        err.message()
            .is_some_and(|m| m.contains("not allowed through keygate")),
        "{err:?}"
    );

    let err = client(k.workload, "AKIAUNKNOWNKEY000001", "x")
        .get_secret_value()
        .secret_id("demo/api/key")
        .send()
        .await
        .expect_err("unknown key");
    assert_eq!(err.code(), Some("UnrecognizedClientException"));
    let err = client(k.workload, "AKIAKEYGATEDEMOAPP01", "wrong")
        .get_secret_value()
        .secret_id("demo/api/key")
        .send()
        .await
        .expect_err("bad signature");
    assert_eq!(err.code(), Some("InvalidSignatureException"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_approvals_by_one_person_count_once() {
    // Two approvals needed: alice approving twice at once must not meet quorum.
    let k = start("1s", 2).await;
    let sm = demo_client(&k);
    let err = sm
        .get_secret_value()
        .secret_id("prod/payments/db")
        .send()
        .await
        .expect_err("held past the window");
    assert_eq!(err.code(), Some("AccessDeniedException"));
    let id = pending(&AdminClient::new(&k.admin.to_string(), "kg-alice-token")).await[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let path = format!("/admin/v1/requests/{id}/approve");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (admin, path) = (k.admin.to_string(), path.clone());
        tasks.push(tokio::spawn(async move {
            AdminClient::new(&admin, "kg-alice-token")
                .post(&path, json!({}))
                .await
                .is_ok()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.expect("join"));
    }
    assert_eq!(ok, 1, "exactly one of alice's concurrent approvals counts");
    let alice = AdminClient::new(&k.admin.to_string(), "kg-alice-token");
    let v = alice
        .get(&format!("/admin/v1/requests/{id}"))
        .await
        .expect("show");
    assert_eq!(v["state"], "pending");
    assert_eq!(v["approvals"].as_array().map(Vec::len), Some(1));
    // bob completes the quorum; the retry uses the grant exactly once.
    AdminClient::new(&k.admin.to_string(), "kg-bob-token")
        .post(&path, json!({}))
        .await
        .expect("bob approves");
    let out = sm
        .get_secret_value()
        .secret_id("prod/payments/db")
        .send()
        .await
        .expect("retry after approval");
    assert!(out.secret_string().is_some());
    let again = sm
        .get_secret_value()
        .secret_id("prod/payments/db")
        .send()
        .await
        .expect_err("grant used up");
    assert!(
        again
            .message()
            .is_some_and(|m| m.contains("awaiting approval")),
        "{again:?}"
    );
}
