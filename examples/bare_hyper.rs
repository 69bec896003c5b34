//! The benchmark's ceiling: a bare hyper 1 server that answers every request
//! with the same bytes keygate returns for a cached GetSecretValue, and does
//! nothing else (no routing, no parsing, no auth, no logging). The benchmark
//! harness (`scripts/bench.sh`) compares keygate's rows against this one, and
//! uses it as the fake AWS upstream of the cache-miss row.
//!
//! With `--forward-to HOST:PORT` it is instead a bare pass-through proxy: it
//! reads each request, sends the same method, path, body and content headers
//! to that upstream over a pooled keep-alive connection, and answers with
//! the upstream's status and body. That is the floor of the cache-miss row:
//! the extra hop (two more socket round trips and the wake-ups between them)
//! that any proxy adds, with no policy, signing or audit.
//!
//! ```sh
//! cargo run --release --example bare_hyper -- --port 18750 --body-file body.json
//! cargo run --release --example bare_hyper -- --port 18751 --forward-to 127.0.0.1:18750
//! ```
//!
//! Built like keygate's own listener: tokio multi-thread runtime (one worker
//! per core), HTTP/1.1 with keep-alive, TCP_NODELAY.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const USAGE: &str = "usage: bare_hyper --port PORT (--body-file FILE | --forward-to HOST:PORT)  (PORT 0 picks a free port)";

struct Args {
    port: u16,
    answer: Answer,
}

/// What the server answers with.
enum Answer {
    /// The same bytes every time (the ceiling).
    File(String),
    /// Whatever this upstream answers (the pass-through floor).
    Forward(String),
}

fn parse_args() -> Result<Args, String> {
    let mut port = None;
    let mut answer = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--port" => {
                let v = value("--port")?;
                port = Some(
                    v.parse()
                        .map_err(|_| format!("--port {v:?} is not a port"))?,
                );
            }
            "--body-file" => answer = Some(Answer::File(value("--body-file")?)),
            "--forward-to" => answer = Some(Answer::Forward(value("--forward-to")?)),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        port: port.ok_or("--port is required")?,
        answer: answer.ok_or("--body-file or --forward-to is required")?,
    })
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let answer = match &args.answer {
        Answer::File(path) => {
            Reply::Fixed(Bytes::from(std::fs::read(path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot read {path}: {e}"))
            })?))
        }
        Answer::Forward(upstream) => Reply::Forward(Arc::new(Forwarder {
            upstream: upstream.clone(),
            client: Client::builder(TokioExecutor::new()).build(connector()),
        })),
    };
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], args.port))).await?;
    // The harness may pass port 0; tell it where we are.
    println!("listening on {}", listener.local_addr()?);

    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and similar: keep serving.
                eprintln!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let answer = answer.clone();
                async move { Ok::<_, Infallible>(answer.reply(req).await) }
            });
            // Keep-alive is hyper's default for HTTP/1.1; errors are clients
            // hanging up mid-request, which a ceiling server ignores.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A request's answer: cheap to clone per connection and per request
/// (both variants are reference counted).
#[derive(Clone)]
enum Reply {
    Fixed(Bytes),
    Forward(Arc<Forwarder>),
}

struct Forwarder {
    upstream: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Reply {
    async fn reply(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        // Read the request body as keygate must; an unread body can also
        // cost hyper the keep-alive connection.
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        match self {
            Reply::Fixed(answer) => {
                let mut resp = Response::new(Full::new(answer.clone()));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-amz-json-1.1"),
                );
                resp
            }
            Reply::Forward(forwarder) => {
                let Forwarder { upstream, client } = forwarder.as_ref();
                let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                let mut out = Request::builder()
                    .method(parts.method)
                    .uri(format!("http://{upstream}{path}"));
                // What a Secrets Manager call needs besides its body; a
                // real proxy would re-sign, which this floor leaves out.
                for name in [CONTENT_TYPE.as_str(), "x-amz-target"] {
                    if let Some(v) = parts.headers.get(name) {
                        out = out.header(name, v);
                    }
                }
                let sent = match out.body(Full::new(body)) {
                    Ok(r) => client.request(r).await,
                    Err(e) => return error(format!("cannot build the request: {e}")),
                };
                let upstream_resp = match sent {
                    Ok(r) => r,
                    Err(e) => return error(format!("upstream: {e}")),
                };
                let (parts, body) = upstream_resp.into_parts();
                match body.collect().await {
                    Ok(b) => Response::from_parts(parts, Full::new(b.to_bytes())),
                    Err(e) => error(format!("upstream body: {e}")),
                }
            }
        }
    }
}

/// Plain TCP with Nagle off, as keygate's own upstream connections.
fn connector() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http
}

fn error(message: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(message)));
    *resp.status_mut() = hyper::StatusCode::BAD_GATEWAY;
    resp
}
