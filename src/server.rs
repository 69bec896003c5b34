//! Serving one listener: accept, TLS (optional, with client certificates),
//! HTTP/1.1 or HTTP/2 per connection, and the listener limits: a connection
//! cap answered natively, a TLS handshake timeout, a header read timeout
//! (slowloris), an idle timeout, a per-request time budget that pauses while
//! a request waits for approval, and graceful shutdown with a deadline.
//!
//! Every request gets a `tls::peer::Peer` in its extensions, so front ends
//! can see the socket address and the client certificate's name.

pub mod budget;
mod park;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use crate::config::Limits;
use crate::tls::peer::{self, Peer};
use crate::tls::ReloadingTls;

use budget::Budget;
use park::{HandlerFuture, ParkSlot, Parked};

/// Connections past `max_connections` are still answered (one 503, then
/// closed) up to this many more; beyond that they are closed unanswered, so
/// a flood cannot exhaust file descriptors.
const OVERFLOW_ANSWERED: usize = 256;

/// A bound socket and how to serve it.
pub struct Listener {
    pub name: &'static str,
    pub tcp: TcpListener,
    pub tls: Option<Arc<ReloadingTls>>,
    pub limits: Limits,
}

/// Answers the server gives without consulting the handler, in the
/// listener's own wire format (rendered by the `reject` callback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The listener is at `max_connections`.
    OverCapacity,
    /// The request used up `request_timeout` (approval waits excluded).
    TimedOut,
}

/// Serve `listener` until `shutdown` flips, then give open connections up to
/// `grace` to finish. `reject` renders the server's own refusals.
///
/// `make_handler` is called once per connection and its handler serves that
/// connection's requests: what the handler clones per request can then be
/// the connection's own, which no other core writes to (see `front::Fronts`).
pub async fn serve<M, H, F, R, B>(
    listener: Listener,
    make_handler: M,
    reject: R,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) where
    M: Fn() -> H,
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    R: Fn(Rejection, &str) -> Response<B> + Clone + Send + Sync + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Listener {
        name,
        tcp,
        tls,
        limits,
    } = listener;
    let limits = Arc::new(limits);
    let builders = Arc::new(Builders::new(&limits));
    let conns = Arc::new(Connections::default());
    loop {
        tokio::select! {
            accepted = tcp.accept() => {
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and similar: back off, keep serving.
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let guard = conns.open();
                if guard.count > limits.max_connections + OVERFLOW_ANSWERED {
                    continue; // dropping the stream closes it
                }
                let over_capacity = guard.count > limits.max_connections;
                if over_capacity {
                    tracing::warn!(listener = name, limit = limits.max_connections, "connection cap reached; answering 503");
                }
                let _ = stream.set_nodelay(true);
                let conn = Connection {
                    name,
                    remote,
                    over_capacity,
                    limits: limits.clone(),
                    builders: builders.clone(),
                    shutdown: shutdown.clone(),
                };
                let (handler, reject, tls) = (make_handler(), reject.clone(), tls.clone());
                // The guard counts the connection as open until it and any
                // request parked from it are answered (see `serve`).
                tokio::spawn(conn.run(stream, tls, handler, reject, guard));
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(tcp);
    tokio::select! {
        _ = conns.all_closed() => tracing::info!(listener = name, "all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!(listener = name, "shutdown deadline passed; closing remaining connections"),
    }
}

/// The two protocols' connection settings. Each connection is handed to
/// exactly one: HTTP/2 when TLS negotiated `h2` or a plaintext client opened
/// with the HTTP/2 preface (prior knowledge), HTTP/1.1 otherwise.
///
/// Choosing here, instead of through hyper-util's auto builder, keeps the
/// bytes read to detect the protocol in the kernel (a peek) rather than in
/// a prefix buffer replayed to hyper, which made hyper grow its first read
/// buffer from 8 KiB to 16 KiB on every HTTP/1 connection.
struct Builders {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new(limits: &Limits) -> Builders {
        let mut h1 = http1::Builder::new();
        // No timer for HTTP/1: `supervise` enforces header_read_timeout.
        // hyper's own would arm and disarm a timer entry for every request.
        h1.max_buf_size(limits.max_header_bytes);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(limits.max_header_bytes as u32)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        Builders { h1, h2 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// What an HTTP/2 client with prior knowledge sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Tell HTTP/2 prior knowledge from HTTP/1 by peeking at the first bytes,
/// leaving them queued for hyper. A closed connection is handed to HTTP/1,
/// which sees the end of stream and finishes.
async fn sniff_plaintext(stream: &TcpStream) -> std::io::Result<Protocol> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return Ok(Protocol::Http1);
        }
        if n == H2_PREFACE.len() {
            return Ok(Protocol::Http2);
        }
        // Part of the preface so far. peek returns at once while bytes are
        // queued, so wait a moment instead of spinning.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Counts open connections; `all_closed` resolves when none are left.
#[derive(Default)]
struct Connections {
    open: AtomicUsize,
    closed: Notify,
}

struct ConnectionGuard {
    conns: Arc<Connections>,
    /// Open connections including this one, when it was accepted.
    count: usize,
}

impl Connections {
    fn open(self: &Arc<Self>) -> ConnectionGuard {
        let count = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        ConnectionGuard {
            conns: self.clone(),
            count,
        }
    }

    async fn all_closed(&self) {
        loop {
            let notified = self.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.conns.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.conns.closed.notify_waiters();
        }
    }
}

/// One accepted connection.
struct Connection {
    name: &'static str,
    remote: SocketAddr,
    over_capacity: bool,
    limits: Arc<Limits>,
    builders: Arc<Builders>,
    shutdown: watch::Receiver<bool>,
}

impl Connection {
    async fn run<H, F, R, B>(
        self,
        stream: TcpStream,
        tls: Option<Arc<ReloadingTls>>,
        handler: H,
        reject: R,
        guard: ConnectionGuard,
    ) where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        R: Fn(Rejection, &str) -> Response<B> + Clone + Send + Sync + 'static,
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Each `drive` is boxed: this future is the connection's task and
        // lives as long as the connection, and inline it would be the size
        // of the larger (TLS) variant even for plain connections.
        let Some(tls) = tls else {
            // The sniff is bounded like reading a request head: a client that
            // connects and sends nothing is closed after header_read_timeout.
            let sniffed =
                tokio::time::timeout(self.limits.header_read_timeout, sniff_plaintext(&stream))
                    .await;
            let protocol = match sniffed {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    tracing::debug!(listener = self.name, remote = %self.remote, error = %e, "connection failed before a request");
                    return;
                }
                Err(_) => {
                    tracing::debug!(listener = self.name, remote = %self.remote, "no request within header_read_timeout; closing");
                    return;
                }
            };
            let peer = self.peer(None);
            let serving = Box::pin(self.serve(stream, protocol, peer, handler, reject, guard));
            return serving.await;
        };
        let handshake_timeout = self.limits.handshake_timeout;
        let accept = Box::pin(tls.acceptor().accept(stream));
        let stream = match tokio::time::timeout(handshake_timeout, accept).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                // Wrong CA, expired or missing client certificate, bad
                // protocol version: the client sees the TLS alert.
                tracing::info!(listener = self.name, remote = %self.remote, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(listener = self.name, remote = %self.remote, "TLS handshake timed out");
                return;
            }
        };
        let protocol = match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => Protocol::Http2,
            _ => Protocol::Http1,
        };
        let cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| peer::certificate_name(leaf.as_ref()).map(Arc::new));
        let peer = self.peer(cert);
        let serving = Box::pin(self.serve(stream, protocol, peer, handler, reject, guard));
        serving.await
    }

    /// Serve requests on `io` until the connection ends; if a request was
    /// parked on the way, answer it on the bare connection, in a task of
    /// its own.
    async fn serve<I, H, F, R, B>(
        self,
        io: I,
        protocol: Protocol,
        peer: Peer,
        handler: H,
        reject: R,
        guard: ConnectionGuard,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        R: Fn(Rejection, &str) -> Response<B> + Clone + Send + Sync + 'static,
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (name, remote) = (self.name, self.remote);
        // A client that stops reading its answer is as slow as one that
        // stops sending its request head: the same bound applies.
        let write_timeout = self.limits.header_read_timeout;
        let driving = Box::pin(self.drive(io, protocol, peer, handler, reject.clone()));
        let parked = driving.await;
        let Some((io, parked)) = parked else { return };
        tracing::debug!(listener = name, remote = %remote, "held request parked off hyper");
        // A task of its own, the size of this wait alone: the connection's
        // task, sized for hyper's connection and a TLS handshake, ends here.
        tokio::spawn(async move {
            if let Err(e) = answer_parked(io, parked, reject, write_timeout).await {
                tracing::debug!(listener = name, remote = %remote, error = %e, "parked request's connection failed");
            }
            drop(guard);
        });
    }

    fn peer(&self, cert: Option<Result<Arc<peer::CertName>, String>>) -> Peer {
        Peer {
            remote: self.remote,
            client: self.remote.ip(),
            cert,
            over_capacity: self.over_capacity,
        }
    }

    /// Serve the connection with hyper. Returns the bare connection and the
    /// request if an HTTP/1 request was parked (see `park`).
    async fn drive<I, H, F, R, B>(
        self,
        io: I,
        protocol: Protocol,
        peer: Peer,
        handler: H,
        reject: R,
    ) -> Option<(I, Parked<B>)>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        R: Fn(Rejection, &str) -> Response<B> + Clone + Send + Sync + 'static,
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let activity = Arc::new(Activity::new());
        let over_capacity = self.over_capacity;
        let request_timeout = self.limits.request_timeout;
        let limits = self.limits.clone();
        // HTTP/1 connections can park a held request (see `park`).
        let slot = (protocol == Protocol::Http1).then(|| Arc::new(ParkSlot::new()));
        let service = {
            let activity = activity.clone();
            let slot = slot.clone();
            service_fn(move |mut req: Request<Incoming>| {
                let in_flight = activity.begin();
                let mut peer = peer.clone();
                if !limits.trusted_proxies.is_empty() {
                    let xff = req
                        .headers()
                        .get("x-forwarded-for")
                        .and_then(|v| v.to_str().ok());
                    peer.client = peer.client_ip(xff, &limits.trusted_proxies);
                }
                req.extensions_mut().insert(peer);
                let (handler, reject, slot) = (handler.clone(), reject.clone(), slot.clone());
                async move {
                    let _in_flight = in_flight;
                    if over_capacity {
                        let mut resp = reject(Rejection::OverCapacity, req.uri().path());
                        if req.version() < http::Version::HTTP_2 {
                            resp.headers_mut().insert(
                                http::header::CONNECTION,
                                http::HeaderValue::from_static("close"),
                            );
                        }
                        return Ok::<_, Infallible>(resp);
                    }
                    // An owned copy: a clone of the Uri would share (and so
                    // pin) hyper's read buffer while a request is held.
                    let path: Box<str> = req.uri().path().into();
                    let head_only = req.method() == http::Method::HEAD;
                    let budget = Budget::new(request_timeout);
                    // Boxed once here: passing the handler's (large) future by
                    // value through async fns copies it into each one's state,
                    // which cost ~24 KB per held request (rust-lang/rust#62958).
                    let mut handler: HandlerFuture<B> =
                        Box::pin(budget.clone().scope(handler(req)));
                    // Taken at the first approval wait: a request parks once
                    // at most, and waits in here if it cannot.
                    let mut park_in = slot;
                    loop {
                        match within_budget(handler, &budget, park_in.is_some()).await {
                            Budgeted::Answered(r) => return Ok(r),
                            Budgeted::TimedOut => return Ok(reject(Rejection::TimedOut, &path)),
                            Budgeted::Waiting(h) => {
                                handler = h;
                                let Some(slot) = park_in.take() else { continue };
                                let parked = Parked {
                                    handler,
                                    budget: budget.clone(),
                                    path: path.clone(),
                                    head_only,
                                };
                                match slot.park(parked) {
                                    // The supervisor takes the socket from
                                    // hyper and drops this future.
                                    Ok(()) => match std::future::pending::<Infallible>().await {},
                                    // hyper is still writing: wait in here.
                                    Err(p) => handler = p.handler,
                                }
                            }
                        }
                    }
                }
            })
        };
        let builders = self.builders.clone();
        // The slot exists exactly for HTTP/1.
        match slot.as_deref() {
            Some(slot) => {
                let mut conn = builders
                    .h1
                    .serve_connection(TokioIo::new(slot.watch(io)), service);
                let ended = self
                    .supervise(
                        std::pin::Pin::new(&mut conn),
                        http1::Connection::graceful_shutdown,
                        &activity,
                        Some(slot),
                    )
                    .await;
                let parked = match ended {
                    Ended::Parked => slot.take(),
                    Ended::Closed => None,
                };
                // Dropping hyper's connection state (and its buffers) is the
                // point of parking.
                parked.map(|p| (conn.into_parts().io.into_inner().into_inner(), p))
            }
            None => {
                let conn = std::pin::pin!(builders.h2.serve_connection(TokioIo::new(io), service));
                let no_park: Option<&ParkSlot<B>> = None;
                self.supervise(
                    conn,
                    http2::Connection::graceful_shutdown,
                    &activity,
                    no_park,
                )
                .await;
                None
            }
        }
    }

    /// Run a connection to its end, shutting it down gracefully when the
    /// server stops, after an over-capacity answer, or when it is idle.
    /// Stops early, leaving the connection unfinished, once a request is
    /// parked in `park_slot`.
    async fn supervise<C, B>(
        mut self,
        mut conn: std::pin::Pin<&mut C>,
        graceful_shutdown: fn(std::pin::Pin<&mut C>),
        activity: &Activity,
        park_slot: Option<&ParkSlot<B>>,
    ) -> Ended
    where
        C: Future<Output = hyper::Result<()>>,
    {
        let over_capacity = self.over_capacity;
        let mut closing = *self.shutdown.borrow();
        if closing {
            graceful_shutdown(conn.as_mut());
        }
        // HTTP/1 (the connections that can park) has no request in flight
        // exactly while hyper waits for a request head, or while the client
        // reads its answer: header_read_timeout bounds both, and a connection
        // past it is dropped, not shut down gracefully, because hyper would
        // go on reading a head that trickles in (slowloris). Dropping loses
        // nothing: no request is in flight. HTTP/2 keeps idle_timeout and
        // a GOAWAY.
        let parkable = park_slot.is_some();
        let (idle_timeout, drop_when_idle) = if parkable {
            let limits = &self.limits;
            (limits.header_read_timeout.min(limits.idle_timeout), true)
        } else {
            (self.limits.idle_timeout, false)
        };
        // A request parks while hyper polls its service, inside the poll
        // of `conn`: checked right after it (the select is biased), this
        // needs no waker.
        let parked = std::future::poll_fn(|_| match park_slot {
            Some(slot) if slot.has_parked() => std::task::Poll::Ready(()),
            _ => std::task::Poll::Pending,
        });
        tokio::pin!(parked);
        loop {
            // With a request in flight the idle deadline does not apply (and
            // may be long past): wait for the request to finish instead of
            // waking at once, again and again, for a deadline that is moot.
            let busy = activity.busy();
            let idle_at = activity.idle_deadline(idle_timeout);
            tokio::select! {
                biased;
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(listener = self.name, error = %e, "connection ended with an error");
                    }
                    return Ended::Closed;
                }
                _ = &mut parked, if parkable => return Ended::Parked,
                _ = self.shutdown.changed(), if !closing => {
                    closing = true;
                    graceful_shutdown(conn.as_mut());
                }
                _ = activity.finished.notified(), if busy || (over_capacity && !closing) => {
                    if over_capacity && !closing {
                        // One native 503 answered: close (HTTP/2 gets a GOAWAY).
                        closing = true;
                        graceful_shutdown(conn.as_mut());
                    }
                }
                _ = tokio::time::sleep_until(idle_at.into()), if !busy && (!closing || drop_when_idle) => {
                    if activity.is_idle_for(idle_timeout) {
                        tracing::debug!(listener = self.name, remote = %self.remote, "closing idle connection");
                        if drop_when_idle {
                            return Ended::Closed;
                        }
                        closing = true;
                        graceful_shutdown(conn.as_mut());
                    }
                }
            }
        }
    }
}

/// How `supervise` left a connection.
enum Ended {
    /// hyper finished with it.
    Closed,
    /// A request was parked; the connection is to be taken from hyper.
    Parked,
}

/// Requests in flight on one connection, and when the last one finished.
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `started` when the connection last became idle.
    idle_since_ms: AtomicU64,
    finished: Notify,
}

struct InFlight(Arc<Activity>);

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            finished: Notify::new(),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    fn idle_deadline(&self, idle_timeout: Duration) -> Instant {
        self.started
            + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
            + idle_timeout
    }

    fn is_idle_for(&self, idle_timeout: Duration) -> bool {
        !self.busy() && Instant::now() >= self.idle_deadline(idle_timeout)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since_ms
            .store(a.started.elapsed().as_millis() as u64, Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
        // notify_one keeps a permit if the connection loop is between polls.
        a.finished.notify_one();
    }
}

/// Finish a parked request within its budget and answer it on the bare
/// connection (see `park`).
async fn answer_parked<I, R, B>(
    io: I,
    parked: Parked<B>,
    reject: R,
    write_timeout: Duration,
) -> std::io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin,
    R: Fn(Rejection, &str) -> Response<B>,
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Parked {
        mut handler,
        budget,
        path,
        head_only,
    } = parked;
    let finish = async move {
        // Without `park`, a pause is waited out inside, so this loop only
        // ever runs once.
        loop {
            match within_budget(handler, &budget, false).await {
                Budgeted::Answered(r) => return r,
                Budgeted::TimedOut => return reject(Rejection::TimedOut, &path),
                Budgeted::Waiting(h) => handler = h,
            }
        }
    };
    park::answer(io, head_only, finish, write_timeout).await
}

/// What driving a handler within its budget came to.
enum Budgeted<B> {
    Answered(Response<B>),
    /// The budget ran out outside an approval wait.
    TimedOut,
    /// The handler needs an approval and is waiting (only when asked to park).
    Waiting(HandlerFuture<B>),
}

/// Drive `fut` to completion unless the budget runs out first. While the
/// budget is paused (an approval wait) no deadline applies. With `park`, a
/// request marked parkable (it needs an approval) that has to wait is handed
/// back unfinished instead, to be parked.
async fn within_budget<B>(mut fut: HandlerFuture<B>, budget: &Budget, park: bool) -> Budgeted<B> {
    loop {
        if park && budget.is_parkable() {
            return Budgeted::Waiting(fut);
        }
        if budget.is_paused() {
            let resumed = budget.resumed();
            tokio::pin!(resumed);
            resumed.as_mut().enable();
            if budget.is_paused() {
                tokio::select! {
                    r = &mut fut => return Budgeted::Answered(r),
                    _ = resumed => continue,
                }
            }
            continue;
        }
        // Polls the handler; with `park`, also stops when the handler is
        // pending after marking itself parkable.
        let step = std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
            std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
            std::task::Poll::Pending if park && budget.is_parkable() => {
                std::task::Poll::Ready(None)
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        });
        // Biased, the handler first: a request answered on its first poll
        // (a cache hit) then never registers its deadline with the timer.
        tokio::select! {
            biased;
            r = step => match r {
                Some(r) => return Budgeted::Answered(r),
                None => continue,
            },
            _ = tokio::time::sleep_until(budget.deadline().into()) => {
                if !budget.is_paused() && Instant::now() >= budget.deadline() {
                    return Budgeted::TimedOut;
                }
            }
        }
    }
}
