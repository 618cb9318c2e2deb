//! outrider: a sidecar reverse proxy that gives a legacy HTTP app tracing,
//! metrics, probes and a lossless shutdown without changing the app.
//!
//! # Layout
//!
//! * `cli`: the flags, `--version`, `wait-ready`, the runtime.
//! * `run`: turns a `Config` into running parts, supervises them, and runs
//!   the shutdown sequence; `main.rs` only calls it.
//! * `config`: defaults < TOML file < `OUTRIDER_*` env < flags, parsed into a
//!   validated [`config::Config`].
//! * `server`: accepts connections and serves them with hyper, draining them
//!   when told to. Used by both listeners.
//! * `proxy`: the request path: header rewriting, the pooled client to the
//!   app, upgrades, and the mapping of failures to 502/504.
//! * `admin`: the admin listener (probes; metrics come later).
//! * `health`: the app's health, from active checks and real traffic.
//! * `drain`: the shutdown sequence and the one owner of its state: the
//!   phase, readiness, the triggers (signals, `/drain`) and the connection
//!   tracker.
//! * `supervisor`: the wrapped child process: spawn, signal, reap, exit code.
//! * `telemetry`: logs, the OpenTelemetry span per request, Prometheus
//!   metrics, and the tower layer that records all three.
//! * `body`: body wrappers shared by the request path and telemetry.
//! * `tls`: rustls server config, certificate hot reload, mTLS subjects,
//!   and the client configs (to an `https://` app, to the OTLP collector).
//! * `trust`: the front proxies whose forwarding headers are believed.
//! * `inject`: adds outrider to the pod templates of Kubernetes manifests.
//! * `webhook`: `outrider webhook`, the mutating admission webhook that
//!   injects pods as they are created.
//! * `gate`: a future polled only when it woke its task, for the branches
//!   of a connection's `select!` that almost never fire.
//! * `inject`: `outrider inject`, adding outrider to Kubernetes manifests
//!   (and taking it out); its pod edit is the webhook's too.
//! * `hook`: `install-hook` and `drain`, run inside an injected pod.
//! * `webhook`: `outrider webhook`, the mutating admission webhook.
//! * `plain`: the plain-text answers of the admin listener and the webhook.
//!
//! Leaf modules (`server`, `proxy`, `admin`, `supervisor`) take plain
//! parameters and know nothing of `config` or the shutdown sequence; `run` wires.

#![forbid(unsafe_code)]

pub mod admin;
pub mod body;
pub mod cli;
pub mod config;
pub mod drain;
pub mod gate;
pub mod grpc;
pub mod health;
pub mod hook;
pub mod inject;
pub mod plain;
pub mod proxy;
pub mod run;
pub mod server;
pub mod supervisor;
pub mod telemetry;
pub mod tls;
pub mod trust;
pub mod webhook;
