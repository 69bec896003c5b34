//! One line for an error and its causes. reqwest, hyper and vaultrs keep the
//! useful part (a TLS alert, a refused connection) in `source()`, which
//! `Display` leaves out; operators need it in the log line.

use std::error::Error;

/// `error: cause: deeper cause`, skipping a cause whose text the line
/// already contains.
pub fn with_causes(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// A failed outgoing HTTP call: what kind of failure, and why, without the
/// URL (webhook URLs and some upstream URLs carry secrets).
pub fn describe_reqwest(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    format!("{kind}: {}", with_causes(&e.without_url()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("request failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn causes_are_appended_once() {
        let e = Outer(std::io::Error::other(
            "received fatal alert: CertificateRequired",
        ));
        assert_eq!(
            with_causes(&e),
            "request failed: received fatal alert: CertificateRequired"
        );
    }
}
