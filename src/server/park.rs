//! Parking a held HTTP/1 request outside hyper.
//!
//! An HTTP/1 connection served by hyper keeps an 8 KiB read buffer and an
//! 8 KiB write buffer for as long as it is open (`INIT_BUFFER_SIZE`; the
//! server API cannot shrink them). A request held for a human approval may
//! wait minutes, so 10,000 of them would cost over 160 MiB in buffers alone.
//!
//! When a request on an HTTP/1 connection starts waiting for approval, its
//! handler future moves into this connection's [`ParkSlot`], the server
//! stops polling hyper and takes the socket back (`into_parts`), dropping
//! hyper's connection state and buffers. [`answer`] then drives the handler
//! to its end on the bare socket, writes the response itself and closes the
//! connection (`connection: close`): a client that pipelined further
//! requests sees the close and retries them, as HTTP/1.1 clients must.
//!
//! A request is parked only when hyper has nothing left to write
//! ([`Parkable`] tracks that), so no byte of an earlier response is lost;
//! otherwise it waits inside hyper as before. HTTP/2 requests are never
//! parked: a held stream shares its connection's buffers with the others.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Response;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::budget::Budget;

/// A request handler's future, boxed so it can move out of hyper.
pub type HandlerFuture<B> = Pin<Box<dyn Future<Output = Response<B>> + Send>>;

/// A held request taken off its hyper connection.
pub struct Parked<B> {
    pub handler: HandlerFuture<B>,
    pub budget: Arc<Budget>,
    /// For the timeout answer, in the front end's own format.
    pub path: Box<str>,
    /// A HEAD request: its answer has headers only.
    pub head_only: bool,
}

/// Shared by one HTTP/1 connection's service (which parks a request) and the
/// connection's supervisor (which then takes the socket back from hyper).
pub struct ParkSlot<B> {
    /// Set by [`Parkable`] while hyper has written bytes it has not yet
    /// flushed to the socket.
    unflushed: Arc<AtomicBool>,
    parked: Mutex<Option<Parked<B>>>,
    /// Set once a request is parked. A flag, not a notification: the
    /// service parks while the supervisor polls hyper, in the same task, so
    /// the supervisor checks it right after each poll of the connection
    /// (a `Notify` cost a lock on every poll of every connection).
    is_parked: AtomicBool,
}

impl<B> ParkSlot<B> {
    pub fn new() -> ParkSlot<B> {
        ParkSlot {
            unflushed: Arc::new(AtomicBool::new(false)),
            parked: Mutex::new(None),
            is_parked: AtomicBool::new(false),
        }
    }

    /// The connection's IO as hyper should see it, reporting to this slot.
    pub fn watch<I>(&self, io: I) -> Parkable<I> {
        Parkable {
            io,
            unflushed: self.unflushed.clone(),
        }
    }

    /// Park `request` unless hyper still has response bytes to write, in
    /// which case it is handed back to wait inside hyper.
    pub fn park(&self, request: Parked<B>) -> Result<(), Parked<B>> {
        // The service and the IO are polled by the same connection task, so
        // this read sees the latest write.
        if self.unflushed.load(Ordering::Relaxed) {
            return Err(request);
        }
        *self.parked.lock().unwrap_or_else(|e| e.into_inner()) = Some(request);
        self.is_parked.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether a request has been parked. Wakes no one: see `is_parked`.
    pub fn has_parked(&self) -> bool {
        self.is_parked.load(Ordering::Acquire)
    }

    pub fn take(&self) -> Option<Parked<B>> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The HTTP/1 connection's IO as hyper sees it: passes everything through,
/// noting whether hyper has flushed all it wrote.
pub struct Parkable<I> {
    io: I,
    unflushed: Arc<AtomicBool>,
}

impl<I> Parkable<I> {
    pub fn into_inner(self) -> I {
        self.io
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Parkable<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Parkable<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // hyper writes its buffer and then flushes; it calls the socket's
        // flush only once its own buffer is empty.
        self.unflushed.store(true, Ordering::Relaxed);
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.unflushed.store(true, Ordering::Relaxed);
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            self.unflushed.store(false, Ordering::Relaxed);
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Drive a parked request to its answer on the bare connection, write it and
/// close. `finish` runs the handler within its budget and renders a timeout
/// (the server's `within_budget`). A client that closes first drops the request, as hyper
/// does for a request whose connection ends: the held request stays pending
/// so that a retry after approval succeeds.
pub async fn answer<I, B, F>(
    mut io: I,
    head_only: bool,
    finish: F,
    write_timeout: Duration,
) -> io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = Response<B>>,
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let response = {
        tokio::pin!(finish);
        // Whatever the client sends while it waits is read and discarded:
        // the connection closes after this answer, and reading is how a
        // close is noticed.
        let mut scratch = [0u8; 32];
        loop {
            tokio::select! {
                response = &mut finish => break response,
                read = io.read(&mut scratch) => match read {
                    Ok(0) => return Ok(()),
                    Ok(_) => continue,
                    Err(e) => return Err(e),
                },
            }
        }
    };
    let (parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return Err(io::Error::other(e)),
    };
    let date = httpdate::fmt_http_date(SystemTime::now());
    let bytes = encode(&parts, &body, head_only, &date);
    tokio::time::timeout(write_timeout, async {
        io.write_all(&bytes).await?;
        io.shutdown().await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client did not read the answer"))?
}

/// An HTTP/1.1 response as hyper would write it (lower-case header names, a
/// `date`, a `content-length`), plus `connection: close`.
fn encode(parts: &http::response::Parts, body: &[u8], head_only: bool, date: &str) -> Vec<u8> {
    let status = parts.status;
    // RFC 9110 §6.4.1: 1xx, 204 and 304 answers have no content.
    let bodiless = status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED;
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
        if [CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING].contains(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !bodiless {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"connection: close\r\ndate: ");
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    if !bodiless && !head_only {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(status: u16, headers: &[(&str, &str)]) -> http::response::Parts {
        let mut b = Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("valid response").into_parts().0
    }

    const DATE: &str = "Tue, 24 Nov 2026 10:00:00 GMT";

    #[test]
    fn encodes_status_headers_length_and_close() {
        let p = parts(
            200,
            &[
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amzn-requestid", "r1"),
                ("connection", "keep-alive"),
                ("content-length", "999"),
            ],
        );
        let got = encode(&p, b"{\"a\":1}", false, DATE);
        assert_eq!(
            String::from_utf8(got).expect("ascii"),
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.1\r\n\
             x-amzn-requestid: r1\r\ncontent-length: 7\r\nconnection: close\r\n\
             date: Tue, 24 Nov 2026 10:00:00 GMT\r\n\r\n{\"a\":1}"
        );
    }

    #[test]
    fn no_content_and_head_answers_carry_no_body() {
        let got = encode(&parts(204, &[]), b"ignored", false, DATE);
        assert_eq!(
            String::from_utf8(got).expect("ascii"),
            "HTTP/1.1 204 No Content\r\nconnection: close\r\ndate: Tue, 24 Nov 2026 10:00:00 GMT\r\n\r\n"
        );
        let got = encode(&parts(403, &[]), b"{}", true, DATE);
        assert!(got.ends_with(b"content-length: 2\r\nconnection: close\r\ndate: Tue, 24 Nov 2026 10:00:00 GMT\r\n\r\n"));
    }

    #[tokio::test]
    async fn a_request_is_not_parked_while_hyper_has_unflushed_bytes() {
        let (client, server) = tokio::io::duplex(64);
        let slot = ParkSlot::<http_body_util::Full<Bytes>>::new();
        let mut io = slot.watch(server);
        let parked = || Parked {
            handler: Box::pin(async { Response::new(http_body_util::Full::new(Bytes::new())) }),
            budget: Budget::new(Duration::from_secs(1)),
            path: "/".into(),
            head_only: false,
        };
        io.write_all(b"HTTP/1.1 200 OK\r\n").await.expect("write");
        assert!(slot.park(parked()).is_err(), "written, not yet flushed");
        io.flush().await.expect("flush");
        assert!(slot.park(parked()).is_ok());
        assert!(slot.take().is_some());
        drop(client);
    }

    #[tokio::test]
    async fn a_client_that_hangs_up_ends_the_wait_without_an_answer() {
        let (client, server) = tokio::io::duplex(64);
        drop(client);
        let never = std::future::pending::<Response<http_body_util::Full<Bytes>>>();
        let ended = answer(server, false, never, Duration::from_secs(1)).await;
        assert!(ended.is_ok());
    }

    #[tokio::test]
    async fn the_answer_is_written_and_the_connection_closed() {
        let (mut client, server) = tokio::io::duplex(4096);
        let done = async { Response::new(http_body_util::Full::new(Bytes::from_static(b"hi"))) };
        answer(server, false, done, Duration::from_secs(1))
            .await
            .expect("answered");
        let mut got = String::new();
        client
            .read_to_string(&mut got)
            .await
            .expect("read to close");
        assert!(got.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n"));
        assert!(got.ends_with("\r\n\r\nhi"));
    }
}
