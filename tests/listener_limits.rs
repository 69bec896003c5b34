//! Listener limits over real sockets, in-process: the request time budget
//! (and that an approval wait does not spend it), the idle timeout, and
//! shutdown answering a waiting client instead of dropping it.
//!
//! Requests are written by hand to a TcpStream so the tests control timing
//! byte by byte; the Vault front end is used because a token is all it needs.

mod common;

use std::time::{Duration, Instant};

use keygate::admin_client::AdminClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "kg-demo-app-token";

/// Read one HTTP/1.1 response (head and Content-Length body) as text.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("a response within 10 s")
            .expect("read");
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                break;
            }
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: keygate\r\nX-Vault-Token: {TOKEN}\r\n\r\n")
}

#[tokio::test]
async fn a_stalled_body_is_cut_off_by_the_request_budget_with_a_native_error() {
    let kg = common::start_with("20s", 1, "[server.limits]\nrequest_timeout = \"1s\"\n").await;
    let mut s = TcpStream::connect(kg.workload).await.expect("connect");
    let started = Instant::now();
    s.write_all(
        format!(
            "POST /v1/secret/data/demo/db HTTP/1.1\r\nHost: keygate\r\nX-Vault-Token: {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"data\":"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let resp = read_response(&mut s).await;
    let took = started.elapsed();
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(
        resp.contains(
            r#"{"errors":["keygate: the request took longer than server.limits.request_timeout"]}"#
        ),
        "{resp}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test]
async fn waiting_for_approval_does_not_spend_the_request_budget() {
    let kg = common::start_with("10s", 1, "[server.limits]\nrequest_timeout = \"1s\"\n").await;
    let admin = AdminClient::new(&kg.admin.to_string(), "kg-alice-token");
    let mut s = TcpStream::connect(kg.workload).await.expect("connect");
    s.write_all(get("/v1/secret/data/prod/payments/db").as_bytes())
        .await
        .expect("write");
    let pending = common::pending(&admin).await;
    let id = pending[0]["id"].as_str().expect("id").to_string();
    // Longer than the whole budget, spent waiting on a human.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    admin
        .post(
            &format!("/admin/v1/requests/{id}/approve"),
            serde_json::json!({}),
        )
        .await
        .expect("approve");
    let resp = read_response(&mut s).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"data\""), "{resp}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let kg = common::start_with(
        "20s",
        1,
        "[server.limits]\nidle_timeout = \"1s\"\nheader_read_timeout = \"30s\"\n",
    )
    .await;
    let mut s = TcpStream::connect(kg.workload).await.expect("connect");
    s.write_all(get("/v1/secret/data/demo/db").as_bytes())
        .await
        .expect("write");
    let resp = read_response(&mut s).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let idle_from = Instant::now();
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
        .await
        .expect("closed within 10 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "the server closes the idle connection");
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(5),
        "{idle:?}"
    );
}

#[tokio::test]
async fn shutdown_answers_a_waiting_client_and_keeps_its_request_pending() {
    let kg = common::start("20s", 1).await;
    let admin = AdminClient::new(&kg.admin.to_string(), "kg-alice-token");
    let mut s = TcpStream::connect(kg.workload).await.expect("connect");
    s.write_all(get("/v1/secret/data/prod/payments/db").as_bytes())
        .await
        .expect("write");
    let pending = common::pending(&admin).await;
    let id = pending[0]["id"].as_str().expect("id").to_string();
    let started = Instant::now();
    drop(kg); // stops keygate
    let resp = read_response(&mut s).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(resp.contains("shutting down"), "{resp}");
    assert!(
        resp.contains(&id),
        "the client learns which request stays pending: {resp}"
    );
}
