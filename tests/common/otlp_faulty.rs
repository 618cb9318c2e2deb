//! OTLP receivers that misbehave on purpose, over real HTTP (hyper) and
//! real gRPC (tonic): they answer each export attempt as a script says
//! (retryable and final failures, `Retry-After`, `RetryInfo`,
//! `partial_success`) and record every attempt's span ids.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use prost::Message;

use super::{
    full,
    otlp::{Exported, Store, hex, store, tokio_stream_from},
};

/// How to answer one export attempt.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Take every span.
    Accept,
    /// Succeed, but reject the last `rejected` spans, saying `message`.
    Partial { rejected: usize, message: &'static str },
    /// HTTP only: this status, with this `Retry-After` if any.
    Http { status: u16, retry_after: Option<&'static str> },
    /// gRPC only: this status code, with a `google.rpc.RetryInfo` in
    /// `grpc-status-details-bin` when `retry_delay` is set.
    Grpc { code: tonic::Code, retry_delay: Option<Duration> },
}

/// The answer to attempt number `n` (from 0, over all batches).
pub type Script = Arc<dyn Fn(usize) -> Answer + Send + Sync>;

pub fn script(f: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Script {
    Arc::new(f)
}

#[derive(Clone, Default)]
struct State {
    /// Span ids of each attempt, in arrival order.
    attempts: Arc<Mutex<Vec<Vec<String>>>>,
    /// Spans taken (accepted, minus those a partial success rejected).
    accepted: Store,
}

impl State {
    /// Records the attempt and answers it.
    fn attempt(&self, script: &Script, request: ExportTraceServiceRequest) -> Answer {
        let ids: Vec<String> =
            request.resource_spans.iter().flat_map(|rs| &rs.scope_spans).flat_map(|ss| &ss.spans).map(|s| hex(&s.span_id)).collect();
        let n = {
            let mut attempts = self.attempts.lock().unwrap();
            attempts.push(ids);
            attempts.len() - 1
        };
        let answer = script(n);
        match &answer {
            Answer::Accept => store(&self.accepted, request),
            Answer::Partial { rejected, .. } => {
                let mut request = request;
                let mut drop = *rejected;
                for rs in request.resource_spans.iter_mut().rev() {
                    for ss in rs.scope_spans.iter_mut().rev() {
                        let keep = ss.spans.len().saturating_sub(drop);
                        drop -= ss.spans.len() - keep;
                        ss.spans.truncate(keep);
                    }
                }
                store(&self.accepted, request);
            }
            Answer::Http { .. } | Answer::Grpc { .. } => {}
        }
        answer
    }
}

/// A misbehaving receiver.
pub struct Faulty {
    pub addr: SocketAddr,
    state: State,
    task: tokio::task::JoinHandle<()>,
}

impl Faulty {
    /// OTLP/HTTP on loopback.
    pub async fn http(script: Script) -> Self {
        Self::http_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), script)
    }

    /// OTLP/HTTP on this listener.
    pub fn http_on(listener: tokio::net::TcpListener, script: Script) -> Self {
        let addr = listener.local_addr().unwrap();
        let state = State::default();
        let shared = state.clone();
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let (state, script) = (shared.clone(), script.clone());
            async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let answer = state.attempt(&script, ExportTraceServiceRequest::decode(body).unwrap());
                Ok::<_, std::convert::Infallible>(http_answer(answer))
            }
        });
        let task = super::otlp::serve_each(listener, service);
        Self { addr, state, task }
    }

    /// OTLP/gRPC on loopback.
    pub async fn grpc(script: Script) -> Self {
        Self::grpc_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), script)
    }

    /// OTLP/gRPC on this listener.
    pub fn grpc_on(listener: tokio::net::TcpListener, script: Script) -> Self {
        let addr = listener.local_addr().unwrap();
        let state = State::default();
        let service = TraceServiceServer::new(Grpc { state: state.clone(), script });
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(tokio_stream_from(listener)).await;
        });
        Self { addr, state, task }
    }

    /// Span ids of every attempt so far, in order.
    pub fn attempts(&self) -> Vec<Vec<String>> {
        self.state.attempts.lock().unwrap().clone()
    }

    /// The spans taken so far.
    pub fn accepted(&self) -> Vec<Exported> {
        self.state.accepted.lock().unwrap().clone()
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn partial(rejected: usize, message: &str) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess { rejected_spans: rejected as i64, error_message: message.to_owned() }),
    }
}

fn http_answer(answer: Answer) -> Response<super::TestBody> {
    let protobuf = |status: u16, body: Vec<u8>| {
        Response::builder().status(status).header("content-type", "application/x-protobuf").body(full(Bytes::from(body)))
    };
    match answer {
        Answer::Accept => protobuf(200, ExportTraceServiceResponse { partial_success: None }.encode_to_vec()),
        Answer::Partial { rejected, message } => protobuf(200, partial(rejected, message).encode_to_vec()),
        Answer::Http { status, retry_after } => {
            // The body of a failure is a google.rpc.Status: message (2).
            let mut body = vec![0x12];
            let message = format!("scripted {status}");
            body.push(message.len() as u8);
            body.extend_from_slice(message.as_bytes());
            let mut response = protobuf(status, body);
            if let (Ok(r), Some(after)) = (&mut response, retry_after) {
                r.headers_mut().insert("retry-after", http::HeaderValue::from_static(after));
            }
            response
        }
        Answer::Grpc { .. } => panic!("a gRPC answer scripted for the HTTP receiver"),
    }
    .unwrap()
}

struct Grpc {
    state: State,
    script: Script,
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        match self.state.attempt(&self.script, request.into_inner()) {
            Answer::Accept => Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None })),
            Answer::Partial { rejected, message } => Ok(tonic::Response::new(partial(rejected, message))),
            Answer::Grpc { code, retry_delay: None } => Err(tonic::Status::new(code, "scripted failure")),
            Answer::Grpc { code, retry_delay: Some(delay) } => {
                Err(tonic::Status::with_details(code, "scripted failure, retry later", retry_info_status(code, delay).into()))
            }
            Answer::Http { .. } => panic!("an HTTP answer scripted for the gRPC receiver"),
        }
    }
}

/// A `google.rpc.Status` carrying a `google.rpc.RetryInfo`, encoded by
/// hand (opentelemetry-proto has no google.rpc types).
pub fn retry_info_status(code: tonic::Code, delay: Duration) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn field_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
        varint(out, field << 3 | 2);
        varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
    let mut duration = Vec::new();
    varint(&mut duration, 1 << 3);
    varint(&mut duration, delay.as_secs());
    varint(&mut duration, 2 << 3);
    varint(&mut duration, u64::from(delay.subsec_nanos()));
    let mut retry_info = Vec::new();
    field_bytes(&mut retry_info, 1, &duration);
    let mut any = Vec::new();
    field_bytes(&mut any, 1, b"type.googleapis.com/google.rpc.RetryInfo");
    field_bytes(&mut any, 2, &retry_info);
    let mut status = Vec::new();
    varint(&mut status, 1 << 3);
    varint(&mut status, code as u64);
    field_bytes(&mut status, 2, b"scripted failure, retry later");
    field_bytes(&mut status, 3, &any);
    status
}
