//! The benchmark's ceiling: a bare hyper 1 server that answers every request
//! with the same bytes keygate returns for a cached GetSecretValue, and does
//! nothing else (no routing, no parsing, no auth, no logging). The benchmark
//! harness (`scripts/bench.sh`) compares keygate's rows against this one, and
//! uses it as the fake AWS upstream of the cache-miss row.
//!
//! ```sh
//! cargo run --release --example bare_hyper -- --port 18750 --body-file body.json
//! ```
//!
//! Built like keygate's own listener: tokio multi-thread runtime (one worker
//! per core), HTTP/1.1 with keep-alive, TCP_NODELAY.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const USAGE: &str = "usage: bare_hyper --port PORT --body-file FILE  (PORT 0 picks a free port)";

struct Args {
    port: u16,
    body_file: String,
}

fn parse_args() -> Result<Args, String> {
    let mut port = None;
    let mut body_file = None;
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
            "--body-file" => body_file = Some(value("--body-file")?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        port: port.ok_or("--port is required")?,
        body_file: body_file.ok_or("--body-file is required")?,
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
    let body = Bytes::from(std::fs::read(&args.body_file).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot read {}: {e}", args.body_file))
    })?);
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
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                // `Bytes` clones are reference counts: no copy per request.
                let body = body.clone();
                async move {
                    // Read the request body as keygate must; an unread body
                    // can also cost hyper the keep-alive connection.
                    let _ = req.into_body().collect().await;
                    let mut resp = Response::new(Full::new(body));
                    resp.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("application/x-amz-json-1.1"),
                    );
                    Ok::<_, Infallible>(resp)
                }
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
