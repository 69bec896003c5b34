//! Who is on the other end of a connection: the socket address, the client
//! certificate's name (when mTLS verified one), and the client address once
//! trusted proxies are accounted for.
//!
//! A certificate is named by its SPIFFE ID (the one `spiffe://` URI SAN),
//! else its first DNS SAN, else its subject CN. The server layer attaches a
//! `Peer` to every request's extensions; front ends map the name to a
//! keygate identity with `CertIdentities`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::{Identity, IpNet};

/// How a certificate names its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    Spiffe,
    Dns,
    CommonName,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertName {
    pub kind: NameKind,
    pub name: String,
}

/// The connection a request arrived on.
#[derive(Debug, Clone)]
pub struct Peer {
    pub remote: SocketAddr,
    /// The client's address for this request: `remote`, or what a trusted
    /// proxy says in `X-Forwarded-For` (see `client_ip`).
    pub client: IpAddr,
    /// The verified client certificate's name; `None` without mTLS. A
    /// certificate that verified but has no usable name is `Err`, so it is
    /// refused rather than treated as absent.
    pub cert: Option<Result<Arc<CertName>, String>>,
    /// Set when the listener is over its connection cap: answer 503 and close.
    pub over_capacity: bool,
}

impl Peer {
    /// The client's address: the socket peer, or, when that peer is a trusted
    /// proxy, the right-most `X-Forwarded-For` entry not itself trusted.
    pub fn client_ip(&self, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
        let mut ip = self.remote.ip();
        if !trusted.iter().any(|n| n.contains(ip)) {
            return ip;
        }
        let Some(header) = forwarded_for else {
            return ip;
        };
        for hop in header.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(hop_ip) => {
                    ip = hop_ip;
                    if !trusted.iter().any(|n| n.contains(hop_ip)) {
                        break;
                    }
                }
                // A malformed entry ends what can be believed.
                Err(_) => break,
            }
        }
        ip
    }
}

/// Name the holder of a DER certificate (already verified by rustls).
pub fn certificate_name(der: &[u8]) -> Result<CertName, String> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| format!("the client certificate cannot be parsed: {e}"))?;
    let mut spiffe = Vec::new();
    let mut dns = None;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) if uri.starts_with("spiffe://") => spiffe.push(*uri),
                GeneralName::DNSName(d) if dns.is_none() => dns = Some(*d),
                _ => {}
            }
        }
    }
    match spiffe.as_slice() {
        [one] => {
            return Ok(CertName {
                kind: NameKind::Spiffe,
                name: one.to_string(),
            })
        }
        [] => {}
        // The X.509-SVID spec allows exactly one; more is ambiguous.
        _ => return Err("the client certificate has more than one SPIFFE ID".to_string()),
    }
    if let Some(d) = dns {
        return Ok(CertName {
            kind: NameKind::Dns,
            name: d.to_string(),
        });
    }
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty());
    match cn {
        Some(cn) => Ok(CertName {
            kind: NameKind::CommonName,
            name: cn.to_string(),
        }),
        None => Err("the client certificate has no SPIFFE ID, DNS name or common name".to_string()),
    }
}

/// Certificate names -> keygate identities, from `identities[].certificates`.
pub struct CertIdentities {
    exact: std::collections::HashMap<String, Arc<Identity>>,
    patterns: Vec<(crate::glob::Glob, Arc<Identity>)>,
}

#[derive(Debug)]
pub enum CertMatch<'a> {
    Identity(&'a Arc<Identity>),
    /// No identity lists this name.
    Unknown,
    /// Several identities' patterns match; refused rather than guessed.
    Ambiguous(Vec<String>),
}

impl CertIdentities {
    pub fn new(identities: &[Arc<Identity>]) -> CertIdentities {
        let mut exact = std::collections::HashMap::new();
        let mut patterns = Vec::new();
        for identity in identities {
            for glob in &identity.certificates {
                if glob.as_str().contains(['*', '?']) {
                    patterns.push((glob.clone(), identity.clone()));
                } else {
                    exact.insert(glob.as_str().to_string(), identity.clone());
                }
            }
        }
        CertIdentities { exact, patterns }
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.patterns.is_empty()
    }

    /// An exact name wins; otherwise exactly one identity's patterns must match.
    pub fn lookup(&self, name: &str) -> CertMatch<'_> {
        if let Some(i) = self.exact.get(name) {
            return CertMatch::Identity(i);
        }
        let mut found: Vec<&Arc<Identity>> = Vec::new();
        for (glob, identity) in &self.patterns {
            if glob.matches(name) && !found.iter().any(|f| f.name == identity.name) {
                found.push(identity);
            }
        }
        match found.as_slice() {
            [] => CertMatch::Unknown,
            [one] => CertMatch::Identity(one),
            many => CertMatch::Ambiguous(many.iter().map(|i| i.name.clone()).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::glob::Glob;

    fn identity(name: &str, certs: &[&str]) -> Arc<Identity> {
        Arc::new(Identity {
            name: name.to_string(),
            groups: vec![],
            owner: None,
            aws: None,
            vault_token: None,
            certificates: certs.iter().map(|c| Glob::new(c)).collect(),
        })
    }

    #[test]
    fn exact_names_win_and_overlapping_patterns_are_refused() {
        let ids = vec![
            identity("payments", &["spiffe://prod.example/ns/payments/sa/api"]),
            identity("payments-any", &["spiffe://prod.example/ns/payments/*"]),
            identity("all-prod", &["spiffe://prod.example/*"]),
            identity("ci", &["ci-*.build.example"]),
        ];
        let map = CertIdentities::new(&ids);
        let name_of = |m: CertMatch<'_>| match m {
            CertMatch::Identity(i) => i.name.clone(),
            other => format!("{other:?}"),
        };
        assert_eq!(
            name_of(map.lookup("spiffe://prod.example/ns/payments/sa/api")),
            "payments"
        );
        assert_eq!(name_of(map.lookup("ci-7.build.example")), "ci");
        assert!(matches!(
            map.lookup("spiffe://dev.example/ns/x/sa/y"),
            CertMatch::Unknown
        ));
        match map.lookup("spiffe://prod.example/ns/payments/sa/batch") {
            CertMatch::Ambiguous(names) => {
                assert_eq!(
                    names,
                    vec!["payments-any".to_string(), "all-prod".to_string()]
                )
            }
            other => panic!("expected ambiguous, got {other:?}"),
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = vec![IpNet::parse("10.0.0.0/8").expect("cidr")];
        let via_proxy = Peer {
            remote: "10.0.0.5:4000".parse().expect("addr"),
            client: "10.0.0.5".parse().expect("ip"),
            cert: None,
            over_capacity: false,
        };
        let direct = Peer {
            remote: "203.0.113.9:4000".parse().expect("addr"),
            ..via_proxy.clone()
        };
        let xff = Some("198.51.100.1, 192.0.2.7, 10.0.0.9");
        assert_eq!(
            via_proxy.client_ip(xff, &trusted).to_string(),
            "192.0.2.7",
            "right-most untrusted hop"
        );
        assert_eq!(direct.client_ip(xff, &trusted).to_string(), "203.0.113.9");
        assert_eq!(via_proxy.client_ip(None, &trusted).to_string(), "10.0.0.5");
        assert_eq!(
            via_proxy
                .client_ip(Some("garbage, 10.0.0.9"), &trusted)
                .to_string(),
            "10.0.0.9",
            "a malformed hop stops the walk at the last trusted one"
        );
        assert_eq!(
            via_proxy.client_ip(xff, &[]).to_string(),
            "10.0.0.5",
            "nothing trusted by default"
        );
    }
}
