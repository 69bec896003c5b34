//! In-process keygate for integration tests: config/demo.toml with its
//! state in a temp dir, listeners on port 0, stopped when dropped.

#![allow(dead_code)] // each test binary uses a different part

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use keygate::admin_client::AdminClient;
use keygate::app::App;
use keygate::config::Config;
use serde_json::Value;
use tokio::sync::oneshot;

pub struct Running {
    pub workload: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Start keygate from config/demo.toml with its state in a temp dir and the
/// hold window shortened to `hold_window`.
pub async fn start(hold_window: &str, approvals_needed: u32) -> Running {
    start_with(hold_window, approvals_needed, "").await
}

/// `start`, with `extra` TOML appended (e.g. a `[server.limits]` table).
pub async fn start_with(hold_window: &str, approvals_needed: u32, extra: &str) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let demo =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml"))
            .expect("demo config");
    let text =
        demo.replace(
            "./data/keygate.db",
            &dir.path().join("k.db").display().to_string(),
        )
        .replace(
            "hold_window = \"20s\"",
            &format!("hold_window = \"{hold_window}\""),
        )
        .replacen(
            "approvals = 1",
            &format!("approvals = {approvals_needed}"),
            1,
        ) + "\n"
            + extra;
    let config = Config::parse(&text, Path::new("demo.toml")).expect("config");
    let app = App::build(&config).await.expect("build");
    let workload = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (workload_addr, admin_addr) = (
        workload.local_addr().expect("addr"),
        admin.local_addr().expect("addr"),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run(workload, admin, async {
        let _ = stopped.await;
    }));
    Running {
        workload: workload_addr,
        admin: admin_addr,
        stop: Some(stop),
        _dir: dir,
    }
}

/// The pending requests, waiting briefly for the first to appear.
pub async fn pending(admin: &AdminClient) -> Vec<Value> {
    for _ in 0..100 {
        let v = admin
            .get("/admin/v1/requests?state=pending")
            .await
            .expect("list");
        let list = v["requests"].as_array().cloned().unwrap_or_default();
        if !list.is_empty() {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no pending request appeared");
}
