//! The gRPC app of the benchmark's gRPC row (`benches/grpc.sh`): tonic's
//! standard health service (`grpc.health.v1.Health`) over h2c on
//! 127.0.0.1:PORT, on a current-thread runtime like `benches/upstream`, so
//! that it keeps to the one CPU the benchmark pins it to.
//!
//! `Check` with an empty service name answers SERVING: the request is a
//! 5-byte gRPC frame (an empty message), the response a 7-byte one
//! (`status = 1`) and `grpc-status: 0` in the trailers. That is the whole
//! app: the call measures the proxy, not a handler.
//!
//!     cargo build --profile bench-app --locked --example grpc_bench_app
//!     target/bench-app/examples/grpc_bench_app 18086
//!
//! It stops on SIGTERM or SIGINT (the default action: nothing to flush).

use std::net::{Ipv4Addr, SocketAddr};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::args().nth(1).ok_or("usage: grpc_bench_app PORT")?.parse().map_err(|e| format!("PORT: {e}"))?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let (_reporter, health) = tonic_health::server::health_reporter();
        tonic::transport::Server::builder().add_service(health).serve(addr).await
    })?;
    Ok(())
}
