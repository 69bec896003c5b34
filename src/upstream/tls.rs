//! TLS towards the upstreams (`[upstream.tls]`, `[upstream.vault.tls]`):
//! a rustls client config with the system roots plus a CA bundle, an optional
//! client certificate, and the explicit, loudly logged `insecure_skip_verify`.
//! The AWS SDK gets it through `upstream::aws_http`; Vault's reqwest client
//! and vaultrs get the same settings through `vault_http`.
//!
//! vaultrs otherwise reads VAULT_SKIP_VERIFY, VAULT_CACERT, VAULT_CLIENT_CERT
//! and friends from keygate's environment, so `VaultTls` is always applied,
//! even when empty: verification is never turned off by an inherited variable.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use vaultrs::client::VaultClientSettingsBuilder;

use crate::config::UpstreamTls;
use crate::tls::provider;

/// An upstream TLS setting that cannot be used: which key, and why.
#[derive(Debug)]
pub struct SettingError {
    /// `ca_bundle`, `client_cert`, `client_key`, or `tls` for the table.
    pub field: &'static str,
    pub message: String,
}

impl std::fmt::Display for SettingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upstream TLS {}: {}", self.field, self.message)
    }
}

fn setting(field: &'static str, message: impl Into<String>) -> SettingError {
    SettingError {
        field,
        message: message.into(),
    }
}

fn load_certs(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, SettingError> {
    crate::tls::load_certs(path).map_err(|e| setting(field, e.to_string()))
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, SettingError> {
    crate::tls::load_key(path).map_err(|e| setting("client_key", e.to_string()))
}

/// Both or neither of client_cert / client_key.
pub fn client_pair(tls: &UpstreamTls) -> Result<Option<(&Path, &Path)>, SettingError> {
    match (&tls.client_cert, &tls.client_key) {
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(setting(
            "client_key",
            "client_cert is set but client_key is not",
        )),
        (None, Some(_)) => Err(setting(
            "client_cert",
            "client_key is set but client_cert is not",
        )),
    }
}

/// rustls client config for `tls`: system roots plus `ca_bundle`, optional
/// client certificate, or (insecure_skip_verify) any server certificate.
pub fn rustls_client_config(tls: &UpstreamTls) -> Result<rustls::ClientConfig, SettingError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| setting("tls", e.to_string()))?;

    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (_ok, _bad) = roots.add_parsable_certificates(native.certs);
        if let Some(path) = &tls.ca_bundle {
            for (i, cert) in load_certs("ca_bundle", path)?.into_iter().enumerate() {
                roots.add(cert).map_err(|e| {
                    setting(
                        "ca_bundle",
                        format!(
                            "{}: certificate #{} is not a usable CA: {e}",
                            path.display(),
                            i + 1
                        ),
                    )
                })?;
            }
        }
        if roots.is_empty() {
            return Err(setting(
                "ca_bundle",
                "no trusted roots: no system CA certificates were found and no ca_bundle is set",
            ));
        }
        builder.with_root_certificates(roots)
    };

    let mut config = match client_pair(tls)? {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = load_certs("client_cert", cert)?;
            let key_der = load_key(key)?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                setting(
                    "client_key",
                    format!(
                        "{} does not fit the certificate in {}: {e}",
                        key.display(),
                        cert.display()
                    ),
                )
            })?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// insecure_skip_verify: any certificate chain and name is accepted, but the
/// handshake signature is still checked (the server holds the key of the
/// certificate it shows).
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What vaultrs needs to match keygate's reqwest client. Always applied,
/// even when empty, so VAULT_SKIP_VERIFY / VAULT_CACERT / VAULT_CAPATH /
/// VAULT_CLIENT_CERT / VAULT_CLIENT_KEY in keygate's environment are ignored.
#[derive(Clone)]
pub struct VaultTls {
    ca_certs: Vec<String>,
    identity: Option<reqwest::Identity>,
    verify: bool,
}

impl VaultTls {
    pub fn apply(&self, settings: &mut VaultClientSettingsBuilder) {
        settings
            .ca_certs(self.ca_certs.clone())
            .identity(self.identity.clone())
            .verify(self.verify);
    }
}

/// keygate's reqwest client (`base` carries its timeouts) with `tls`
/// applied, plus the matching vaultrs settings.
pub fn vault_http(
    tls: &UpstreamTls,
    base: reqwest::ClientBuilder,
) -> Result<(reqwest::Client, VaultTls), String> {
    // Same checks and messages as the AWS side (files readable, PEM present,
    // key matches certificate) before reqwest/vaultrs see the files: they
    // accept a bundle without certificates silently and vaultrs reports a
    // bad identity only as "Error configuring REST client".
    rustls_client_config(tls).map_err(|e| e.to_string())?;
    let mut builder = base.tls_backend_rustls();
    let mut vault = VaultTls {
        ca_certs: Vec::new(),
        identity: None,
        verify: !tls.insecure_skip_verify,
    };
    if let Some(path) = &tls.ca_bundle {
        let pem = std::fs::read(path)
            .map_err(|e| format!("upstream TLS ca_bundle {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("upstream TLS ca_bundle {}: {e}", path.display()))?;
        builder = builder.tls_certs_merge(certs);
        vault.ca_certs = vec![path
            .to_str()
            .ok_or_else(|| {
                format!(
                    "upstream TLS ca_bundle {}: path is not UTF-8",
                    path.display()
                )
            })?
            .to_string()];
    }
    if let Some((cert, key)) = client_pair(tls).map_err(|e| e.to_string())? {
        // reqwest wants certificate chain and key in one PEM buffer.
        let mut pem = zeroize::Zeroizing::new(
            std::fs::read(cert)
                .map_err(|e| format!("upstream TLS client_cert {}: {e}", cert.display()))?,
        );
        let key_pem = zeroize::Zeroizing::new(
            std::fs::read(key)
                .map_err(|e| format!("upstream TLS client_key {}: {e}", key.display()))?,
        );
        pem.push(b'\n');
        pem.extend_from_slice(&key_pem);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
            format!(
                "upstream TLS client_cert {} / client_key {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
        builder = builder.identity(identity.clone());
        vault.identity = Some(identity);
    }
    builder = builder.tls_danger_accept_invalid_certs(tls.insecure_skip_verify);
    let client = builder
        .build()
        .map_err(|e| format!("upstream TLS: cannot build the Vault HTTP client: {e}"))?;
    Ok((client, vault))
}

/// keygate's existing vaultrs_client with the TLS settings applied.
pub fn vaultrs_client(
    address: &str,
    token: &str,
    timeout: Duration,
    tls: &VaultTls,
) -> Result<vaultrs::client::VaultClient, String> {
    let mut settings = VaultClientSettingsBuilder::default();
    settings
        .address(address)
        .token(token)
        .timeout(Some(timeout));
    tls.apply(&mut settings);
    let settings = settings
        .build()
        .map_err(|e| format!("vault client settings: {e}"))?;
    vaultrs::client::VaultClient::new(settings).map_err(|e| format!("vault client: {e}"))
}
