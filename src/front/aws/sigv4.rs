//! AWS Signature Version 4 verification for workload requests. Pure: the
//! caller passes the request parts, the body, the secret key and `now`.
//!
//! keygate recomputes the canonical request and the signature with the
//! workload's keygate-issued secret key, checks the credential scope (date,
//! region, service) and the clock skew (at most 5 minutes), and compares
//! signatures in constant time.

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::hexfmt::hex32;
use crate::timestamp::Timestamp;

pub const MAX_SKEW_SECS: i64 = 300;
const ALGORITHM: &str = "AWS4-HMAC-SHA256";

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("Request is missing Authentication Token")]
    Missing,
    #[error("{0}")]
    Incomplete(String),
    #[error("The security token included in the request is invalid.")]
    UnknownKey,
    #[error("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")]
    Mismatch,
    #[error("Signature expired: {stamp} is now earlier than {earliest} ({now} - 5 min.)")]
    Expired {
        stamp: String,
        earliest: String,
        now: String,
    },
    #[error("Signature not yet current: {stamp} is still later than {latest} ({now} + 5 min.)")]
    Future {
        stamp: String,
        latest: String,
        now: String,
    },
    #[error("Credential should be scoped to a valid region, not '{0}'.")]
    Region(String),
    #[error("Credential should be scoped to correct service: 'secretsmanager'.")]
    Service,
}

/// The parsed `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
pub struct Authorization<'a> {
    pub access_key_id: &'a str,
    pub date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
    pub signed_headers: Vec<&'a str>,
    pub signature: &'a str,
}

pub fn parse_authorization(value: &str) -> Result<Authorization<'_>, SigError> {
    let rest = value.strip_prefix(ALGORITHM).ok_or_else(|| {
        SigError::Incomplete(format!(
            "Authorization header requires the {ALGORITHM} algorithm"
        ))
    })?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in split_bytes(rest, b',') {
        // Header values are visible ASCII (checked by the caller's `to_str`):
        // ASCII trimming is exact, and far cheaper than Unicode `trim`.
        let part = part.trim_ascii();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let missing = |what: &str| {
        SigError::Incomplete(format!(
            "Authorization header requires '{what}' parameter. Authorization={value}"
        ))
    };
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed = signed.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    let mut scope = split_bytes(credential, b'/');
    let mut next = || scope.next();
    let (Some(access_key_id), Some(date), Some(region), Some(service), Some(terminator), None) =
        (next(), next(), next(), next(), next(), next())
    else {
        return Err(SigError::Incomplete(format!(
            "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got '{credential}'"
        )));
    };
    if terminator != "aws4_request" {
        return Err(SigError::Incomplete(format!(
            "Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'."
        )));
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SigError::Incomplete(format!(
            "Credential date '{date}' is not YYYYMMDD"
        )));
    }
    let mut signed_headers = Vec::with_capacity(8);
    signed_headers.extend(split_bytes(signed, b';').filter(|h| !h.is_empty()));
    if !signed_headers.contains(&"host") {
        return Err(SigError::Incomplete(
            "SignedHeaders must include host".into(),
        ));
    }
    Ok(Authorization {
        access_key_id,
        date,
        region,
        service,
        signed_headers,
        signature,
    })
}

/// `s.split(sep as char)` for an ASCII separator, found with `memchr`:
/// `str::split`'s char searcher cost ~2,600 instructions for the ten short
/// pieces of an Authorization header, a byte-by-byte scan ~1,700.
fn split_bytes(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    debug_assert!(sep.is_ascii());
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr(sep, r.as_bytes()) {
            // Slicing at an ASCII byte is always on a char boundary.
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// Parse `YYYYMMDDTHHMMSSZ` into a timestamp.
pub fn parse_amz_date(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    let month = time::Month::try_from(u8::try_from(mo).ok()?).ok()?;
    let date = time::Date::from_calendar_date(i32::try_from(y).ok()?, month, u8::try_from(d).ok()?)
        .ok()?;
    let t = date
        .with_hms(
            u8::try_from(h).ok()?,
            u8::try_from(mi).ok()?,
            u8::try_from(se).ok()?,
        )
        .ok()?
        .assume_utc();
    Some(Timestamp::from_millis(t.unix_timestamp() * 1000))
}

fn format_amz_date(t: Timestamp) -> String {
    let dt = time::OffsetDateTime::from_unix_timestamp(t.millis().div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

/// What verification needs of the HTTP request.
pub struct RequestParts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    /// The request target's authority. HTTP/2 carries the host there
    /// (`:authority`), not in a `host` header, yet clients sign it as `host`.
    pub authority: Option<&'a str>,
    pub body: &'a [u8],
}

/// A signing key as HMAC-SHA256 state already keyed with it. Keying hashes
/// two blocks (the padded key, inner and outer); callers cache this per
/// access key and day, so a request only copies it.
#[derive(Clone)]
pub struct SigningMac(Hmac<Sha256>);

impl SigningMac {
    pub fn new(key: &[u8; 32]) -> SigningMac {
        SigningMac(
            <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length"),
        )
    }
}

/// Verify `auth` against the request, with the signing key derived from the
/// identity's secret for `auth`'s date, region and service (see `signing_key`;
/// callers cache it per key and day).
pub fn verify(
    auth: &Authorization<'_>,
    req: &RequestParts<'_>,
    key: SigningMac,
    expected_region: &str,
    expected_service: &str,
    now: Timestamp,
) -> Result<(), SigError> {
    let amz_date = req
        .headers
        .get(crate::front::header::AMZ_DATE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| SigError::Incomplete("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.".into()))?;
    let stamp = parse_amz_date(amz_date).ok_or_else(|| {
        SigError::Incomplete(format!("X-Amz-Date '{amz_date}' is not YYYYMMDDTHHMMSSZ"))
    })?;
    let skew = stamp.millis() - now.millis();
    if skew < -MAX_SKEW_SECS * 1000 {
        return Err(SigError::Expired {
            stamp: amz_date.to_string(),
            earliest: format_amz_date(
                now.minus(std::time::Duration::from_secs(MAX_SKEW_SECS as u64)),
            ),
            now: format_amz_date(now),
        });
    }
    if skew > MAX_SKEW_SECS * 1000 {
        return Err(SigError::Future {
            stamp: amz_date.to_string(),
            latest: format_amz_date(now.plus(std::time::Duration::from_secs(MAX_SKEW_SECS as u64))),
            now: format_amz_date(now),
        });
    }
    if !amz_date.starts_with(auth.date) {
        return Err(SigError::Incomplete(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'",
            auth.date,
            &amz_date[..8]
        )));
    }
    if auth.service != expected_service {
        return Err(SigError::Service);
    }
    if auth.region != expected_region {
        return Err(SigError::Region(auth.region.to_string()));
    }
    let canonical_hash = canonical_request_hash(auth, req)?;
    let mut mac = key.0;
    for part in [
        ALGORITHM,
        "\n",
        amz_date,
        "\n",
        auth.date,
        "/",
        auth.region,
        "/",
        auth.service,
        "/aws4_request\n",
    ] {
        mac.update(part.as_bytes());
    }
    mac.update(&hex32(&canonical_hash));
    let expected: [u8; 32] = mac.finalize().into_bytes().into();
    // Compared in constant time as lowercase hex, the only form SigV4
    // signers write (and the form AWS compares): encoding ours is cheaper
    // than decoding theirs. Slices of different lengths compare unequal.
    if constant_time_eq(&hex32(&expected), auth.signature.as_bytes()) {
        Ok(())
    } else {
        Err(SigError::Mismatch)
    }
}

/// Whether `a == b`, in time that depends only on the lengths. `subtle`'s
/// `ct_eq` puts an optimisation barrier on every byte (~660 instructions
/// for a 64-byte signature); one OR-fold of the XORs behind a single
/// barrier has no data-dependent branch either, and is ~40.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// Where the canonical request is written: straight into SHA-256 when
/// verifying (no intermediate string), into a buffer in tests.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// SHA-256 fed through a stack buffer: the canonical request is written
/// in ~35 small pieces, and each `Sha256::update` call costs ~60
/// instructions of block-buffer bookkeeping whatever its length.
struct StagedSha256 {
    hasher: Sha256,
    staged: [u8; 512],
    len: usize,
}

impl StagedSha256 {
    fn new() -> StagedSha256 {
        StagedSha256 {
            hasher: Sha256::new(),
            staged: [0; 512],
            len: 0,
        }
    }

    fn finalize(mut self) -> [u8; 32] {
        self.hasher.update(&self.staged[..self.len]);
        self.hasher.finalize().into()
    }
}

impl Sink for StagedSha256 {
    fn put(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() > self.staged.len() {
            self.hasher.update(&self.staged[..self.len]);
            self.len = 0;
            if bytes.len() > self.staged.len() {
                self.hasher.update(bytes);
                return;
            }
        }
        self.staged[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

/// SHA-256 of the canonical request, the value the string to sign carries.
fn canonical_request_hash(
    auth: &Authorization<'_>,
    req: &RequestParts<'_>,
) -> Result<[u8; 32], SigError> {
    let mut hasher = StagedSha256::new();
    write_canonical_request(auth, req, &mut hasher)?;
    Ok(hasher.finalize())
}

fn write_canonical_request(
    auth: &Authorization<'_>,
    req: &RequestParts<'_>,
    out: &mut impl Sink,
) -> Result<(), SigError> {
    let body_hash = hex32(&Sha256::digest(req.body).into());
    if let Some(claimed) = req.headers.get(crate::front::header::AMZ_CONTENT_SHA256) {
        let claimed = claimed.as_bytes();
        if claimed != b"UNSIGNED-PAYLOAD" && claimed != body_hash {
            return Err(SigError::Mismatch);
        }
    }
    out.put(req.method.as_bytes());
    out.put(b"\n");
    out.put(if req.path.is_empty() { "/" } else { req.path }.as_bytes());
    out.put(b"\n");
    if !req.query.is_empty() {
        out.put(canonical_query(req.query).as_bytes());
    }
    out.put(b"\n");
    for name in &auth.signed_headers {
        let mut present = false;
        for value in req.headers.get_all(*name) {
            if present {
                out.put(b",");
            } else {
                out.put(name.as_bytes());
                out.put(b":");
            }
            match value.to_str() {
                // Visible ASCII (what `to_str` accepts): ASCII trimming is
                // exact, and Unicode `trim` cost ~200 instructions a value.
                Ok(v) => out.put(collapse_spaces(v.trim_ascii()).as_bytes()),
                // Opaque bytes: SDKs sign what they send, so hash the
                // lossy text as they would see it.
                Err(_) => {
                    let text = String::from_utf8_lossy(value.as_bytes());
                    out.put(collapse_spaces(text.trim()).as_bytes())
                }
            }
            present = true;
        }
        if !present {
            match req.authority.filter(|_| *name == "host") {
                Some(authority) => {
                    out.put(b"host:");
                    out.put(authority.trim().as_bytes());
                }
                None => {
                    return Err(SigError::Incomplete(format!(
                        "signed header '{name}' is not present"
                    )))
                }
            }
        }
        out.put(b"\n");
    }
    out.put(b"\n");
    for (i, name) in auth.signed_headers.iter().enumerate() {
        if i > 0 {
            out.put(b";");
        }
        out.put(name.as_bytes());
    }
    out.put(b"\n");
    out.put(&body_hash);
    Ok(())
}

#[cfg(test)]
fn canonical_request(auth: &Authorization<'_>, req: &RequestParts<'_>) -> Result<String, SigError> {
    let mut out = Vec::new();
    write_canonical_request(auth, req, &mut out)?;
    Ok(String::from_utf8(out).expect("canonical requests are text"))
}

/// Collapse runs of spaces in an already trimmed value, as SigV4 canonical
/// headers want; borrows in the common case where there is nothing to change.
fn collapse_spaces(t: &str) -> std::borrow::Cow<'_, str> {
    // One branch-free pass over each byte and its successor, which the
    // compiler vectorizes (`contains("  ")` built a substring searcher for
    // each value; a stateful byte loop cost ~5 instructions a byte).
    let b = t.as_bytes();
    let tabs = b
        .iter()
        .fold(false, |any, &c| any | (c == b'\t') | (c == b'\n'));
    let doubled = b
        .iter()
        .zip(b.get(1..).unwrap_or_default())
        .fold(false, |any, (&x, &y)| any | ((x == b' ') & (y == b' ')));
    let needs_collapse = tabs | doubled;
    if needs_collapse {
        std::borrow::Cow::Owned(t.split_whitespace().collect::<Vec<_>>().join(" "))
    } else {
        std::borrow::Cow::Borrowed(t)
    }
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    pairs.sort_unstable();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    /// `POST /` with these headers and body, as the Secrets Manager JSON
    /// protocol sends it (HTTP/1: no authority).
    fn post<'a>(headers: &'a HeaderMap, body: &'a str) -> RequestParts<'a> {
        RequestParts {
            method: "POST",
            path: "/",
            query: "",
            headers,
            authority: None,
            body: body.as_bytes(),
        }
    }

    /// Sign like an SDK would, with our own functions, for round-trip cases.
    fn signed(body: &str, date: &str, secret: &str) -> (HeaderMap, String) {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("127.0.0.1:8740"));
        headers.insert("x-amz-date", HeaderValue::from_str(date).expect("date"));
        headers.insert(
            "x-amz-target",
            HeaderValue::from_static("secretsmanager.GetSecretValue"),
        );
        let auth_template = format!(
            "{ALGORITHM} Credential=AKIDEXAMPLE/{}/us-east-1/secretsmanager/aws4_request, SignedHeaders=host;x-amz-date;x-amz-target, Signature=",
            &date[..8]
        );
        let auth = parse_authorization(&auth_template).expect("template parses");
        let parts = post(&headers, body);
        let canonical = canonical_request(&auth, &parts).expect("canonical");
        let scope = format!("{}/us-east-1/secretsmanager/aws4_request", &date[..8]);
        let sts = format!(
            "{ALGORITHM}\n{date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let sig = hex::encode(hmac(
            &signing_key(secret, &date[..8], "us-east-1", "secretsmanager"),
            sts.as_bytes(),
        ));
        (headers, format!("{auth_template}{sig}"))
    }

    /// The keyed HMAC state for SECRET on `amz_date`'s day, as keygate caches it.
    fn test_key(amz_date: &str) -> SigningMac {
        SigningMac::new(&signing_key(
            SECRET,
            &amz_date[..8],
            "us-east-1",
            "secretsmanager",
        ))
    }

    fn check(body_sent: &str, secret_used: &str, now_offset_secs: i64, expect: Result<(), &str>) {
        let date = "20261124T014000Z";
        let (headers, header) = signed("{\"SecretId\":\"x\"}", date, secret_used);
        let auth = parse_authorization(&header).expect("parses");
        let parts = post(&headers, body_sent);
        let now = Timestamp::from_millis(
            parse_amz_date(date).expect("date").millis() + now_offset_secs * 1000,
        );
        let key = test_key(date);
        let got = verify(&auth, &parts, key, "us-east-1", "secretsmanager", now);
        match (got, expect) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(words)) => assert!(e.to_string().contains(words), "{e}"),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn header_values_are_trimmed_and_runs_of_spaces_collapsed() {
        use std::borrow::Cow;
        for (raw, want) in [
            ("a b", "a b"),
            ("  a b ", "a b"),
            ("a  b", "a b"),
            ("a \t b\n c", "a b c"),
            ("a \r b", "a \r b"),
            ("", ""),
            ("a", "a"),
            ("a\tb", "a b"),
            (
                "application/x-amz-json-1.1; charset=utf-8  end",
                "application/x-amz-json-1.1; charset=utf-8 end",
            ),
        ] {
            assert_eq!(collapse_spaces(raw.trim_ascii()), want, "{raw:?}");
        }
        assert!(matches!(
            collapse_spaces(" a b ".trim_ascii()),
            Cow::Borrowed("a b")
        ));
    }

    #[test]
    fn http2_requests_sign_the_authority_as_host() {
        let date = "20261124T014000Z";
        let body = "{\"SecretId\":\"x\"}";
        let (mut headers, header) = signed(body, date, SECRET);
        let host = headers.remove("host").expect("signed with a host header");
        let auth = parse_authorization(&header).expect("parses");
        let key = test_key(date);
        let now = parse_amz_date(date).expect("date");
        let verify_with = |authority: Option<&str>| {
            let parts = RequestParts {
                authority,
                ..post(&headers, body)
            };
            verify(
                &auth,
                &parts,
                key.clone(),
                "us-east-1",
                "secretsmanager",
                now,
            )
        };
        assert_eq!(verify_with(host.to_str().ok()), Ok(()));
        assert_eq!(verify_with(Some("elsewhere:8740")), Err(SigError::Mismatch));
        assert!(matches!(verify_with(None), Err(SigError::Incomplete(_))));
    }

    #[test]
    fn verification_table() {
        let body = "{\"SecretId\":\"x\"}";
        check(body, SECRET, 0, Ok(()));
        check(body, SECRET, 299, Ok(()));
        check(body, SECRET, -299, Ok(()));
        check(body, "wrong-secret", 0, Err("does not match"));
        check("{\"SecretId\":\"y\"}", SECRET, 0, Err("does not match"));
        check(body, SECRET, 301, Err("Signature expired"));
        check(body, SECRET, -301, Err("not yet current"));
    }

    #[test]
    fn only_the_exact_lowercase_hex_signature_verifies() {
        let date = "20261124T014000Z";
        let body = "{\"SecretId\":\"x\"}";
        let (headers, header) = signed(body, date, SECRET);
        let (template, signature) = header.split_at(header.len() - 64);
        let key = test_key(date);
        let parts = post(&headers, body);
        let now = parse_amz_date(date).expect("date");
        let verify_signature = |sig: &str| {
            let header = format!("{template}{sig}");
            let auth = parse_authorization(&header).expect("parses");
            verify(
                &auth,
                &parts,
                key.clone(),
                "us-east-1",
                "secretsmanager",
                now,
            )
        };
        assert_eq!(verify_signature(signature), Ok(()));
        for wrong in [
            signature.to_uppercase(),
            signature[..63].to_string(),
            format!("{signature}0"),
            "zz".repeat(32),
            String::new(),
        ] {
            assert_eq!(
                verify_signature(&wrong),
                Err(SigError::Mismatch),
                "{wrong:?}"
            );
        }
    }

    #[test]
    fn split_bytes_is_str_split() {
        for s in [
            "",
            ",",
            "a",
            "a,b",
            ",a,,b,",
            "é,ü,",
            "Credential=x, Signature=y",
        ] {
            let ours: Vec<&str> = split_bytes(s, b',').collect();
            let std: Vec<&str> = s.split(',').collect();
            assert_eq!(ours, std, "{s:?}");
        }
    }

    #[test]
    fn staged_hashing_is_plain_sha256() {
        // Pieces that fit, fill, straddle and exceed the stage.
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
        for sizes in [
            &[1usize, 2, 3][..],
            &[511, 1, 1],
            &[512],
            &[513, 7],
            &[100, 900, 5, 1200],
        ] {
            let mut staged = StagedSha256::new();
            let mut at = 0;
            for size in sizes.iter().cycle() {
                let end = (at + size).min(data.len());
                staged.put(&data[at..end]);
                at = end;
                if at == data.len() {
                    break;
                }
            }
            assert_eq!(
                staged.finalize(),
                <[u8; 32]>::from(Sha256::digest(&data)),
                "{sizes:?}"
            );
        }
    }

    #[test]
    fn constant_time_eq_is_equality() {
        for (a, b) in [
            ("", ""),
            ("a", "a"),
            ("a", "b"),
            ("ab", "a"),
            ("abc", "abd"),
        ] {
            assert_eq!(
                constant_time_eq(a.as_bytes(), b.as_bytes()),
                a == b,
                "{a:?} {b:?}"
            );
        }
    }

    #[test]
    fn known_answer_from_aws_documentation() {
        // The signing-key example of the SigV4 documentation (IAM, us-east-1, 20120215).
        let key = signing_key(SECRET, "20120215", "us-east-1", "iam");
        assert_eq!(
            hex::encode(key),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    #[test]
    fn malformed_headers_are_incomplete_not_panics() {
        for bad in [
            "AWS4-HMAC-SHA256",
            "AWS4-HMAC-SHA256 Credential=AKID/20261124/us-east-1/secretsmanager/aws4_request",
            "AWS4-HMAC-SHA256 Credential=AKID/2026/us-east-1, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=AKID/20261124/us-east-1/secretsmanager/other, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=AKID/20261124/us-east-1/secretsmanager/aws4_request, SignedHeaders=, Signature=00",
            "Basic dXNlcjpwYXNz",
        ] {
            assert!(matches!(parse_authorization(bad), Err(SigError::Incomplete(_))), "{bad}");
        }
        for bad in [
            "",
            "2026-11-24T01:40:00Z",
            "20261324T014000Z",
            "20261124T254000Z",
            "2026112xT014000Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }
}
