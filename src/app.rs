//! Assembling keygate from a validated `Config` and running it.
//!
//! `run` takes already-bound listeners and a shutdown future (as in
//! mini-redis), so tests bind port 0 and stop cleanly.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::broker::Broker;
use crate::cache::ReadCache;
use crate::config::{Config, Limits, UpstreamConfig};
use crate::front::{self, aws::AwsFront, vault::VaultFront};
use crate::holds::Holds;
use crate::server::{Listener, Rejection};
use crate::store::{sqlite::SqliteStore, Store, StoreError};
use crate::timestamp::Timestamp;
use crate::tls::{ReloadingTls, TlsError};
use crate::upstream::vault::{DevVault, RemoteVault, VaultBackend};
use crate::upstream::{
    aws::AwsUpstream, dev::DevStore, dev_kv::DevKv, SecretsUpstream, UpstreamError,
};

const SWEEP_EVERY: Duration = Duration::from_secs(1);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("state store {path}: {source}")]
    Store {
        path: String,
        #[source]
        source: StoreError,
    },
    #[error("Vault upstream: {0}")]
    Vault(#[source] UpstreamError),
    #[error("AWS upstream: {0}")]
    Aws(#[source] UpstreamError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("notifications: {0}")]
    Notify(#[from] crate::notify::NotifyError),
}

pub struct App {
    /// Shared with each request's future (see `AwsFront::handle`).
    aws: Arc<AwsFront>,
    vault: Arc<VaultFront>,
    admin: Admin,
    broker: Arc<Broker>,
    workload_tls: Option<Arc<ReloadingTls>>,
    admin_tls: Option<Arc<ReloadingTls>>,
    limits: Limits,
}

/// Where the Vault front end sends requests: `[upstream.vault]`, else the dev
/// store when the upstream is the dev store, else nowhere (the front answers 404).
async fn vault_backend(config: &Config) -> Result<Option<Arc<dyn VaultBackend>>, AppError> {
    if let Some(remote) = &config.vault.upstream {
        let v = RemoteVault::connect(remote)
            .await
            .map_err(AppError::Vault)?;
        return Ok(Some(Arc::new(v)));
    }
    if !matches!(config.upstream, UpstreamConfig::Dev) {
        return Ok(None);
    }
    let now = std::time::SystemTime::now();
    let mounts = config
        .vault
        .kv2_mounts
        .iter()
        .map(|m| {
            let seeds: Vec<_> = config
                .dev_kv
                .iter()
                .filter(|s| &s.mount == m)
                .map(|s| (s.path.clone(), s.data.clone()))
                .collect();
            DevKv::new(m, &seeds, now)
        })
        .collect();
    Ok(Some(Arc::new(DevVault::new(mounts))))
}

impl App {
    pub async fn build(config: &Config) -> Result<App, AppError> {
        let store_err = |source| AppError::Store {
            path: config.server.state.display().to_string(),
            source,
        };
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&config.server.state).map_err(store_err)?);
        let digest_key = store.digest_key().await.map_err(store_err)?;
        let holds = Holds::load(
            store.clone(),
            config.gate.max_pending_per_identity,
            config.gate.max_pending_total,
            Timestamp::now(),
        )
        .await
        .map_err(store_err)?;
        let upstream: Arc<dyn SecretsUpstream> = match &config.upstream {
            UpstreamConfig::Dev => {
                let seeds: Vec<(String, String)> = config
                    .dev_secrets
                    .iter()
                    .map(|(n, v)| (n.clone(), v.expose().to_string()))
                    .collect();
                Arc::new(DevStore::new(
                    &config.server.region,
                    &seeds,
                    std::time::SystemTime::now(),
                ))
            }
            UpstreamConfig::Aws {
                region,
                endpoint,
                timeout,
                tls,
                client,
            } => Arc::new(
                AwsUpstream::new(region.clone(), endpoint.clone(), *timeout, tls, *client)
                    .await
                    .map_err(AppError::Aws)?,
            ),
        };
        if matches!(config.upstream, UpstreamConfig::Dev) {
            tracing::warn!(
                "upstream is the embedded dev store: secrets live in memory, NOT FOR PRODUCTION"
            );
        }
        tracing::info!(upstream = %upstream.describe(), pending = holds.pending_count().await, "state loaded");
        let broker = Arc::new(Broker::new(
            config.policy.clone(),
            holds,
            store.clone(),
            digest_key,
            config.audit,
        ));
        // Runs until the event hub closes (when the app is dropped).
        let _notifier = crate::notify::Notifier::spawn(
            config.notify.clone(),
            crate::notify::Directory::new(&config.approvers, &config.identities),
            broker.holds().events().subscribe(),
        )?;
        let identities: Vec<Arc<_>> = config.identities.iter().cloned().map(Arc::new).collect();
        let aws = AwsFront::new(
            config.server.region.clone(),
            &identities,
            broker.clone(),
            upstream,
            ReadCache::new(config.cache.ttl, config.cache.max_entries),
            config.server.max_body_bytes,
        );
        let vault_backend = vault_backend(config).await?;
        if let Some(b) = &vault_backend {
            tracing::info!(upstream = %b.describe(), "Vault front end enabled");
        }
        let vault = VaultFront::new(
            config.vault.clone(),
            &identities,
            broker.clone(),
            vault_backend,
            ReadCache::new(config.cache.ttl, config.cache.max_entries),
            config.server.max_body_bytes,
        );
        let admin = Admin::new(config, broker.clone(), store);
        let tls = |name, spec: &Option<crate::config::ListenerTls>| {
            spec.clone().map(|s| ReloadingTls::new(name, s)).transpose()
        };
        Ok(App {
            aws: Arc::new(aws),
            vault: Arc::new(vault),
            admin,
            broker,
            workload_tls: tls("workload", &config.server.tls)?,
            admin_tls: tls("admin", &config.server.admin_tls)?,
            limits: config.server.limits.clone(),
        })
    }

    /// Serve both listeners until `shutdown` resolves.
    pub async fn run(
        self,
        workload: TcpListener,
        admin: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) {
        let app = Arc::new(self);
        let (stop_tx, stop_rx) = watch::channel(false);
        let sweeper = {
            let app = app.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_EVERY);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            if let Err(e) = app.broker.holds().sweep(Timestamp::now()).await {
                                tracing::error!(error = %e, "expiring overdue requests failed; will retry");
                            }
                        }
                        _ = stop.changed() => break,
                    }
                }
            })
        };
        for tls in [&app.workload_tls, &app.admin_tls].into_iter().flatten() {
            tokio::spawn(tls.clone().watch(stop_rx.clone()));
        }
        let workload_app = app.clone();
        let workload_server = crate::server::serve(
            Listener {
                name: "workload",
                tcp: workload,
                tls: app.workload_tls.clone(),
                limits: app.limits.clone(),
            },
            move || {
                let fronts = Arc::new(front::Fronts {
                    aws: workload_app.aws.clone(),
                    vault: workload_app.vault.clone(),
                });
                move |req| front::route(&fronts, req)
            },
            front::reject,
            stop_rx.clone(),
            SHUTDOWN_GRACE,
        );
        let admin_app = app.clone();
        let admin_server = crate::server::serve(
            Listener {
                name: "admin",
                tcp: admin,
                tls: app.admin_tls.clone(),
                limits: app.limits.clone(),
            },
            move || {
                let admin_app = admin_app.clone();
                move |req| {
                    let app = admin_app.clone();
                    async move { app.admin.handle(req).await }
                }
            },
            |rejection: Rejection, _: &str| crate::admin::reject(rejection),
            stop_rx,
            SHUTDOWN_GRACE,
        );
        let servers = tokio::spawn(async move {
            tokio::join!(workload_server, admin_server);
        });
        shutdown.await;
        tracing::info!("shutting down");
        // Answer clients waiting on approvals first (they stay pending in the
        // store), so the listeners' graceful shutdown has nothing to wait for.
        let answered = app.broker.holds().shut_down();
        if answered > 0 {
            tracing::info!(
                waiting = answered,
                "told waiting clients keygate is shutting down"
            );
        }
        let _ = stop_tx.send(true);
        let _ = servers.await;
        let _ = sweeper.await;
        if let Err(e) = app.broker.flush_audit().await {
            tracing::error!(error = %e, "could not flush queued audit records at shutdown");
        }
    }
}
