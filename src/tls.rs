//! TLS for keygate's listeners: one rustls crypto provider (aws-lc-rs) for
//! the whole binary, TLS 1.2 and 1.3 only with rustls's modern cipher suites
//! (listeners prefer AES-128-GCM for a cheaper handshake, see
//! `listener_provider`), ALPN h2 and http/1.1, optional client certificates
//! from a CA bundle, and certificates that reload without a restart.
//!
//! A reload builds a complete new `rustls::ServerConfig` and swaps it in;
//! each accepted connection takes the config current at its handshake, so
//! open connections are never disturbed and a bad file on disk leaves the
//! last good config serving (it is logged, and retried at the next check).

pub mod peer;

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::config::{ClientAuth, ListenerTls};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Rustls(String),
}

fn file_err(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The process-wide crypto provider. Every rustls config keygate builds
/// (listeners and upstream clients) uses this one; listeners reorder its
/// cipher suites (`listener_provider`).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Install `provider()` as rustls's process default, for libraries (reqwest,
/// the AWS SDK) that build their own configs. Idempotent.
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, format!("cannot read certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        file_err(
            path,
            format!("no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })
}

pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| file_err(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// Builds rustls server configs from a `ListenerTls`.
pub struct ServerTls;

/// `provider()` with the AES-128-GCM suites moved to the front (the order
/// is otherwise rustls's), for listeners, which choose by their own order.
///
/// OpenSSL, rustls and the SDKs built on them list AES-256-GCM first, and
/// its TLS 1.3 suite runs the key schedule on SHA-384, which x86 CPUs do in
/// software while SHA-256 runs on their SHA extensions: SHA-384 was 16% of
/// keygate's CPU in full handshakes, SHA-256 in its place 3.5%, and a full
/// handshake ~14% cheaper (BENCHMARKS.md, eleventh session). AES-128-GCM
/// is TLS 1.3's mandatory suite and what Go's servers prefer as well. A
/// client that offers only ChaCha20-Poly1305 still gets it.
fn listener_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = Arc::unwrap_or_clone(provider());
    // A stable sort: AES-128-GCM first, the rest in rustls's order.
    provider
        .cipher_suites
        .sort_by_key(|suite| !is_aes_128_gcm(suite.suite()));
    Arc::new(provider)
}

fn is_aes_128_gcm(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite::*;
    matches!(
        suite,
        TLS13_AES_128_GCM_SHA256
            | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

impl ServerTls {
    pub fn build(spec: &ListenerTls) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = listener_provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let builder = match &spec.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = Arc::new(load_roots(ca)?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
                let verifier = match spec.client_auth {
                    ClientAuth::Required => verifier,
                    ClientAuth::Optional => verifier.allow_unauthenticated(),
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| file_err(ca, format!("cannot verify clients with it: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let certs = load_certs(&spec.cert)?;
        let key = load_key(&spec.key)?;
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            file_err(
                &spec.key,
                format!(
                    "does not match the certificate in {}: {e}",
                    spec.cert.display()
                ),
            )
        })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Among the suites a client offers, ours decides (listener_provider).
        config.ignore_client_order = true;
        Ok(Arc::new(config))
    }
}

/// A listener's TLS config, swapped in place when its files change or on SIGHUP.
pub struct ReloadingTls {
    name: &'static str,
    spec: ListenerTls,
    current: ArcSwap<ServerConfig>,
    /// SHA-256 over the files' contents when `current` was built.
    stamp: std::sync::Mutex<[u8; 32]>,
}

impl ReloadingTls {
    pub fn new(name: &'static str, spec: ListenerTls) -> Result<Arc<ReloadingTls>, TlsError> {
        let stamp = files_stamp(&spec);
        let config = ServerTls::build(&spec)?;
        Ok(Arc::new(ReloadingTls {
            name,
            spec,
            current: ArcSwap::new(config),
            stamp: std::sync::Mutex::new(stamp),
        }))
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Rebuild from the files if they changed (or always, when `force`).
    /// Returns whether a new config was swapped in.
    pub fn reload(&self, force: bool) -> bool {
        let stamp = files_stamp(&self.spec);
        let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if !force && *last == stamp {
            return false;
        }
        match ServerTls::build(&self.spec) {
            Ok(config) => {
                self.current.store(config);
                *last = stamp;
                tracing::info!(listener = self.name, cert = %self.spec.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                // Remember the bad stamp so a broken file is reported once,
                // not at every poll; fixing the file changes the stamp again.
                *last = stamp;
                tracing::error!(listener = self.name, error = %e, "TLS reload failed; still serving the previous certificate");
                false
            }
        }
    }

    /// Poll the files every `reload_interval` and reload on SIGHUP, until `stop`.
    pub async fn watch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.spec.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hangup = hangup_signal();
        loop {
            tokio::select! {
                _ = tick.tick() => { self.reload(false); }
                _ = next_hangup(&mut hangup) => {
                    tracing::info!(listener = self.name, "SIGHUP: reloading TLS files");
                    self.reload(true);
                }
                _ = stop.changed() => break,
            }
        }
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}
#[cfg(not(unix))]
fn hangup_signal() -> Hangup {
    None
}

async fn next_hangup(h: &mut Hangup) {
    #[cfg(unix)]
    if let Some(s) = h {
        s.recv().await;
        return;
    }
    let _ = h;
    std::future::pending::<()>().await
}

/// Hash of the TLS files' contents; unreadable files hash as empty, so their
/// return is noticed as a change.
fn files_stamp(spec: &ListenerTls) -> [u8; 32] {
    let mut h = Sha256::new();
    for path in [Some(&spec.cert), Some(&spec.key), spec.client_ca.as_ref()]
        .into_iter()
        .flatten()
    {
        // The key file is secret material: wipe the copy once hashed.
        let bytes = zeroize::Zeroizing::new(std::fs::read(path).unwrap_or_default());
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(&*bytes);
    }
    h.finalize().into()
}
