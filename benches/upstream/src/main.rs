//! Benchmark upstream: `bench-upstream PORT` serves, on 127.0.0.1:PORT,
//! HTTP/1.1 with keep-alive on a current-thread runtime:
//! * `GET /`   -> 200 with a 64-byte body;
//! * `GET /1m` -> 200 with a 1 MiB body;
//! * anything else -> 404.
//! The bodies are built once and shared (`Bytes` clones are a refcount bump),
//! so the upstream's own cost per request is as small as hyper allows.

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const SMALL: &[u8; 64] = b"outrider-bench-upstream-64-byte-body-0123456789abcdefghijklmnop\n";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let port: u16 = match std::env::args().nth(1).map(|p| p.parse()) {
        Some(Ok(p)) => p,
        _ => {
            eprintln!("usage: bench-upstream PORT");
            std::process::exit(2);
        }
    };
    let small = Bytes::from_static(SMALL);
    let large = Bytes::from(vec![b'x'; 1 << 20]);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bench-upstream: cannot bind {addr}: {e}");
            std::process::exit(1);
        }
    };
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("bench-upstream: accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (small, large) = (small.clone(), large.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let body = match req.uri().path() {
                    "/" => Some(small.clone()),
                    "/1m" => Some(large.clone()),
                    _ => None,
                };
                async move {
                    Ok::<_, Infallible>(match body {
                        Some(b) => Response::new(Full::new(b)),
                        None => {
                            let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
                            *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                            r
                        }
                    })
                }
            });
            let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
