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

/// Whether a failed call never reached the server: hyper hands a request
/// back, cancelled, when the connection it was given closed before the
/// request was written ("connection was not ready"). A server refusing a
/// TLS 1.3 client certificate sends its alert just after the handshake,
/// and when the connection reads that alert first, the request fails this
/// way and the alert itself is lost. Such a request can be sent again
/// whatever its method.
pub fn never_sent(e: &reqwest::Error) -> bool {
    let mut next = e.source();
    while let Some(cause) = next {
        if cause
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        next = cause.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("request failed")]
    struct Outer(#[source] std::io::Error);

    #[tokio::test]
    async fn a_refused_connection_is_not_a_request_never_sent() {
        // A port nobody listens on: the call fails while connecting, before
        // any request exists to hand back, and must not be sent again.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let e = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .expect_err("nothing listens there");
        assert!(e.is_connect(), "{e:?}");
        assert!(!never_sent(&e), "{e:?}");
    }

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
