//! A real OTLP receiver built on the official protos (opentelemetry-proto),
//! and the spans it received.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::Span,
};

use super::eventually;
/// One exported span with its resource's attributes.
#[derive(Debug, Clone)]
pub struct Exported {
    pub span: Span,
    pub resource: Vec<KeyValue>,
}

impl Exported {
    pub fn attr(&self, key: &str) -> Option<String> {
        find(&self.span.attributes, key)
    }
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

pub fn find(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| match &kv.value {
        Some(AnyValue { value: Some(Value::StringValue(s)) }) => Some(s.clone()),
        Some(AnyValue { value: Some(Value::IntValue(i)) }) => Some(i.to_string()),
        Some(AnyValue { value: Some(Value::BoolValue(b)) }) => Some(b.to_string()),
        Some(AnyValue { value: Some(Value::DoubleValue(d)) }) => Some(d.to_string()),
        _ => None,
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub type Store = Arc<Mutex<Vec<Exported>>>;

pub fn store(store: &Store, request: ExportTraceServiceRequest) {
    let mut out = store.lock().unwrap();
    for rs in request.resource_spans {
        let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                out.push(Exported { span, resource: resource.clone() });
            }
        }
    }
}

pub struct Grpc(Store);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        store(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// A real OTLP receiver.
pub struct Receiver {
    pub addr: SocketAddr,
    pub spans: Store,
    pub task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// OTLP/gRPC on loopback.
    pub async fn grpc() -> Self {
        Self::grpc_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// OTLP/gRPC on `bind` (port 0: any free port).
    pub async fn grpc_on(bind: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Store::default();
        let service = TraceServiceServer::new(Grpc(spans.clone()));
        let task = tokio::spawn(async move {
            let incoming = tokio_stream_from(listener);
            let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
        });
        Self { addr, spans, task }
    }

    pub fn spans(&self) -> Vec<Exported> {
        self.spans.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Exported) -> bool) -> Exported {
        eventually(what, || {
            let found = self.spans().into_iter().find(|s| pred(s));
            async move { found }
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn tokio_stream_from(listener: tokio::net::TcpListener) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(s, _)| s);
        Some((accepted, listener))
    })
}

/// The accept loop of the hand-written receivers: every connection
/// `listener` accepts is served, HTTP/1 or h2c (hyper-util's auto builder),
/// by a clone of `service`, in a task of its own.
pub fn serve_each<S, B>(listener: tokio::net::TcpListener, service: S) -> tokio::task::JoinHandle<()>
where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let service = service.clone();
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ =
                    hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new()).serve_connection(io, service).await;
            });
        }
    })
}
