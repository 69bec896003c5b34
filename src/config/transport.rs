//! Transport settings: TLS on the listeners, listener limits, and TLS towards
//! the upstreams. Raw serde shapes and their validation, kept apart from the
//! policy-heavy rest of `config` because they change for different reasons.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{duration, invalid, ConfigError};

/// TLS on one listener (`[server.tls]` or `[server.admin_tls]`).
#[derive(Debug, Clone)]
pub struct ListenerTls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM bundle of CAs that sign client certificates; `Some` turns on mTLS.
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
    /// How often the files are checked for changes (SIGHUP reloads at once).
    pub reload_interval: Duration,
}

/// Whether a client certificate must be presented when `client_ca` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// The handshake fails without a certificate from `client_ca`.
    Required,
    /// A certificate is verified if presented; callers without one
    /// authenticate with SigV4 or a Vault token as usual.
    Optional,
}

/// Limits applied to each listener (`[server.limits]`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request head (request line plus headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// Time allowed to receive a request head, from connect or from the end
    /// of the previous response (slowloris).
    pub header_read_timeout: Duration,
    /// Time allowed for a TLS handshake.
    pub handshake_timeout: Duration,
    /// A keep-alive connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Time allowed for one request, excluding any wait for an approval.
    pub request_timeout: Duration,
    /// Open connections per listener; past it, connections are answered with
    /// one native 503 and closed.
    pub max_connections: usize,
    /// Peers whose `X-Forwarded-For` is believed (load balancers).
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(60),
            // Each held request keeps its connection open, so this must leave
            // room for `gate.max_pending_total` waiting clients.
            max_connections: 16_384,
            trusted_proxies: Vec::new(),
        }
    }
}

/// An address block, e.g. `10.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Option<IpNet> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let a = s.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses (from a dual-stack socket) compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = (prefix / 8) as usize;
    if a[..full] != b[..full] {
        return false;
    }
    let rest = prefix % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    a[full] & mask == b[full] & mask
}

/// TLS towards an upstream (`[upstream.tls]`, `[upstream.vault.tls]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// PEM bundle trusted in addition to the system roots.
    pub ca_bundle: Option<PathBuf>,
    /// PEM client certificate chain and key, presented to the upstream.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Development only: accept any upstream certificate. keygate warns at
    /// every start while this is on.
    pub insecure_skip_verify: bool,
}

impl UpstreamTls {
    /// Nothing configured: the client's own defaults apply.
    pub fn is_default(&self) -> bool {
        *self == UpstreamTls::default()
    }
}

// ---------------------------------------------------------------------------
// Raw shapes
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListenerTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    client_auth: Option<String>,
    reload_interval: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_header_bytes: Option<usize>,
    header_read_timeout: Option<String>,
    handshake_timeout: Option<String>,
    idle_timeout: Option<String>,
    request_timeout: Option<String>,
    max_connections: Option<usize>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstreamTls {
    ca_bundle: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

fn readable(key: &str, path: &Path) -> Result<(), ConfigError> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
}

pub(super) fn validate_listener_tls(
    key: &str,
    raw: RawListenerTls,
) -> Result<ListenerTls, ConfigError> {
    readable(&format!("{key}.cert"), &raw.cert)?;
    readable(&format!("{key}.key"), &raw.key)?;
    if let Some(ca) = &raw.client_ca {
        readable(&format!("{key}.client_ca"), ca)?;
    }
    let client_auth = match (raw.client_auth.as_deref(), &raw.client_ca) {
        (None | Some("required"), _) => ClientAuth::Required,
        (Some("optional"), Some(_)) => ClientAuth::Optional,
        (Some("optional"), None) => {
            return Err(invalid(
                format!("{key}.client_auth"),
                "only applies with client_ca (the CAs that sign client certificates)",
            ))
        }
        (Some(other), _) => {
            return Err(invalid(
                format!("{key}.client_auth"),
                format!("{other:?} is not allowed; use \"required\" or \"optional\""),
            ))
        }
    };
    let reload_interval = match &raw.reload_interval {
        Some(t) => duration(&format!("{key}.reload_interval"), t)?,
        None => Duration::from_secs(5),
    };
    if reload_interval.is_zero() {
        return Err(invalid(
            format!("{key}.reload_interval"),
            "must be more than 0s",
        ));
    }
    let tls = ListenerTls {
        cert: raw.cert,
        key: raw.key,
        client_ca: raw.client_ca,
        client_auth,
        reload_interval,
    };
    // Parse the files now so `keygate check` reports a bad certificate or key.
    crate::tls::ServerTls::build(&tls).map_err(|e| invalid(key, e.to_string()))?;
    Ok(tls)
}

pub(super) fn validate_limits(raw: RawLimits) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let positive =
        |k: &str, v: Option<&String>, default: Duration| -> Result<Duration, ConfigError> {
            let Some(v) = v else { return Ok(default) };
            let t = duration(&format!("server.limits.{k}"), v)?;
            if t.is_zero() {
                return Err(invalid(
                    format!("server.limits.{k}"),
                    "must be more than 0s",
                ));
            }
            Ok(t)
        };
    let max_header_bytes = raw.max_header_bytes.unwrap_or(d.max_header_bytes);
    // hyper's HTTP/1 reader needs at least 8 KiB of buffer.
    if max_header_bytes < 8192 {
        return Err(invalid(
            "server.limits.max_header_bytes",
            format!("{max_header_bytes} is too small; use at least 8192"),
        ));
    }
    let max_connections = raw.max_connections.unwrap_or(d.max_connections);
    if max_connections == 0 {
        return Err(invalid(
            "server.limits.max_connections",
            "0 would refuse every connection; use at least 1",
        ));
    }
    let mut trusted_proxies = Vec::with_capacity(raw.trusted_proxies.len());
    for (i, p) in raw.trusted_proxies.iter().enumerate() {
        trusted_proxies.push(IpNet::parse(p).ok_or_else(|| {
            invalid(
                format!("server.limits.trusted_proxies[{i}]"),
                format!("{p:?} is not an address or CIDR block, e.g. \"10.0.0.0/8\""),
            )
        })?);
    }
    Ok(Limits {
        max_header_bytes,
        header_read_timeout: positive(
            "header_read_timeout",
            raw.header_read_timeout.as_ref(),
            d.header_read_timeout,
        )?,
        handshake_timeout: positive(
            "handshake_timeout",
            raw.handshake_timeout.as_ref(),
            d.handshake_timeout,
        )?,
        idle_timeout: positive("idle_timeout", raw.idle_timeout.as_ref(), d.idle_timeout)?,
        request_timeout: positive(
            "request_timeout",
            raw.request_timeout.as_ref(),
            d.request_timeout,
        )?,
        max_connections,
        trusted_proxies,
    })
}

pub(super) fn validate_upstream_tls(
    key: &str,
    raw: RawUpstreamTls,
) -> Result<UpstreamTls, ConfigError> {
    if let Some(p) = &raw.ca_bundle {
        readable(&format!("{key}.ca_bundle"), p)?;
    }
    match (&raw.client_cert, &raw.client_key) {
        (Some(c), Some(k)) => {
            readable(&format!("{key}.client_cert"), c)?;
            readable(&format!("{key}.client_key"), k)?;
        }
        (None, None) => {}
        _ => return Err(invalid(key, "client_cert and client_key go together")),
    }
    let tls = UpstreamTls {
        ca_bundle: raw.ca_bundle,
        client_cert: raw.client_cert,
        client_key: raw.client_key,
        insecure_skip_verify: raw.insecure_skip_verify,
    };
    // Parse the files now (PEM, a usable CA, a key that matches the
    // certificate) so `keygate check` reports them, not the first request.
    crate::upstream::tls::rustls_client_config(&tls).map_err(|e| {
        let key = match e.field {
            "tls" => key.to_string(),
            field => format!("{key}.{field}"),
        };
        invalid(key, e.message)
    })?;
    Ok(tls)
}

/// The admin API carries approver tokens: off loopback it must be encrypted.
pub(super) fn check_admin_exposure(
    admin_listen: SocketAddr,
    admin_tls: Option<&ListenerTls>,
) -> Result<(), ConfigError> {
    if admin_tls.is_none() && !admin_listen.ip().is_loopback() {
        return Err(invalid(
            "server.admin_listen",
            format!(
                "{admin_listen} is not a loopback address; the admin API carries approver \
                 tokens, so binding it elsewhere needs [server.admin_tls]"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks_match_by_prefix() {
        let net = IpNet::parse("10.1.0.0/16").expect("valid");
        assert!(net.contains("10.1.200.3".parse().expect("ip")));
        assert!(!net.contains("10.2.0.1".parse().expect("ip")));
        let one = IpNet::parse("192.168.1.7").expect("valid");
        assert!(one.contains("192.168.1.7".parse().expect("ip")));
        assert!(!one.contains("192.168.1.8".parse().expect("ip")));
        let odd = IpNet::parse("172.16.0.0/12").expect("valid");
        assert!(odd.contains("172.31.255.255".parse().expect("ip")));
        assert!(!odd.contains("172.32.0.0".parse().expect("ip")));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().expect("ip");
        assert!(net.contains(mapped), "IPv4-mapped IPv6 compares as IPv4");
        let v6 = IpNet::parse("fd00::/8").expect("valid");
        assert!(v6.contains("fd12::1".parse().expect("ip")));
        assert!(!v6.contains("10.1.0.1".parse().expect("ip")));
        assert!(IpNet::parse("10.0.0.0/33").is_none());
        assert!(IpNet::parse("not-an-ip").is_none());
    }

    #[test]
    fn admin_off_loopback_needs_tls() {
        let public: SocketAddr = "0.0.0.0:8741".parse().expect("addr");
        let err = check_admin_exposure(public, None).expect_err("refused");
        assert!(err.to_string().contains("admin_tls"), "{err}");
        let local: SocketAddr = "127.0.0.1:8741".parse().expect("addr");
        check_admin_exposure(local, None).expect("loopback is fine");
    }
}
