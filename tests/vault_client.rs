//! End-to-end with `vaultrs` as the client, against keygate in-process with
//! the embedded dev store's KV v2 mount (config/demo.toml).

mod common;

use std::collections::HashMap;

use common::{pending, start, Running};
use keygate::admin_client::AdminClient;
use serde_json::json;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

fn vault(k: &Running, token: &str) -> VaultClient {
    let settings = VaultClientSettingsBuilder::default()
        .address(format!("http://{}", k.workload))
        .token(token)
        .build()
        .expect("settings");
    VaultClient::new(settings).expect("client")
}

fn api_code(e: &ClientError) -> Option<u16> {
    match e {
        ClientError::APIError { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv2_read_and_list_pass_for_the_demo_paths() {
    let k = start("20s", 1).await;
    let c = vault(&k, "kg-demo-app-token");
    let secret: HashMap<String, String> = vaultrs::kv2::read(&c, "secret", "demo/db")
        .await
        .expect("allowed read");
    assert_eq!(secret.get("password").map(String::as_str), Some("s3cr3t"));
    let keys = vaultrs::kv2::list(&c, "secret", "demo")
        .await
        .expect("allowed list");
    assert_eq!(keys, vec!["db".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_kv2_read_is_released_to_the_waiting_client() {
    let k = start("20s", 1).await;
    let c = vault(&k, "kg-demo-app-token");
    let call = tokio::spawn(async move {
        vaultrs::kv2::read::<HashMap<String, String>>(&c, "secret", "prod/payments/db").await
    });
    let alice = AdminClient::new(&k.admin.to_string(), "kg-alice-token");
    let list = pending(&alice).await;
    assert_eq!(list[0]["front"], "vault");
    assert_eq!(list[0]["operation"], "kv.read");
    assert_eq!(list[0]["resources"], json!(["secret/prod/payments/db"]));
    let id = list[0]["id"].as_str().expect("id").to_string();
    alice
        .post(&format!("/admin/v1/requests/{id}/approve"), json!({}))
        .await
        .expect("approve");
    let secret = call.await.expect("join").expect("released");
    assert_eq!(
        secret.get("password").map(String::as_str),
        Some("pr0d-pa55")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_writes_and_unknown_tokens_get_vault_403s() {
    let k = start("20s", 1).await;
    let data = HashMap::from([("k", "v")]);
    let err = vaultrs::kv2::set(&vault(&k, "kg-demo-app-token"), "secret", "demo/db", &data)
        .await
        .expect_err("no rule allows writes");
    assert_eq!(api_code(&err), Some(403), "{err:?}");
    let err = vaultrs::kv2::read::<HashMap<String, String>>(
        &vault(&k, "not-a-token"),
        "secret",
        "demo/db",
    )
    .await
    .expect_err("unknown token");
    assert_eq!(api_code(&err), Some(403), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_is_part_of_the_resource_so_rules_do_not_carry_across() {
    let k = start("20s", 1).await;
    let mut settings = VaultClientSettingsBuilder::default();
    settings
        .address(format!("http://{}", k.workload))
        .token("kg-demo-app-token")
        .set_namespace("team1".to_string());
    let c = VaultClient::new(settings.build().expect("settings")).expect("client");
    let err = vaultrs::kv2::read::<HashMap<String, String>>(&c, "secret", "demo/db")
        .await
        .expect_err("secret/demo/* does not cover team1/secret/demo/*");
    match err {
        ClientError::APIError { code: 403, errors } => {
            assert!(
                errors.iter().any(|e| e.contains("team1/secret/demo/db")),
                "{errors:?}"
            )
        }
        other => panic!("expected a 403, got {other:?}"),
    }
}
