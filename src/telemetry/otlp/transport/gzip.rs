//! gzip for export bodies (`OTEL_EXPORTER_OTLP_COMPRESSION=gzip`), and
//! for a compressed answer, bounded.

use std::io::{Read, Write};

use flate2::{Compression as Level, read::GzDecoder, write::GzEncoder};

/// How export bodies are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

/// Level 1, measured by the `gzip_levels` test below on a batch of 512 of
/// outrider's server spans (10 attributes each, random trace and span ids)
/// as `encode_request` writes it: 241 277 bytes. Release build, on the
/// shared 2-core build machine, with flate2's two pure-Rust backends:
///
/// | level | zlib-rs (used)          | miniz_oxide             |
/// |-------|-------------------------|-------------------------|
/// | 1     | 36 962 bytes, 0.40 ms   | 36 482 bytes, 0.66 ms   |
/// | 3     | 33 725 bytes, 0.70 ms   | 31 991 bytes, 1.80 ms   |
/// | 6     | 31 788 bytes, 1.35 ms   | 31 741 bytes, 2.57 ms   |
/// | 9     | 31 384 bytes, 2.18 ms   | 31 705 bytes, 2.77 ms   |
///
/// Level 1 takes nearly all of the saving (85 %; what it leaves is mostly
/// the random ids, which no level compresses) for the least CPU: under a
/// microsecond per span, on the export thread, which shares the sidecar's
/// small CPU limit with requests. Under callgrind, gzip and TLS together
/// cost about 10 600 instructions per request with miniz_oxide (a third of
/// the request path's own); see docs/performance.md for zlib-rs's figure.
const LEVEL: u32 = 1;

/// The largest decompressed answer accepted: a collector's answer is a
/// few bytes (a `partial_success` with a message), never megabytes.
pub const MAX_ANSWER: u64 = 4 << 20;

/// `data`, gzipped.
pub fn compress(data: &[u8]) -> Vec<u8> {
    // Writing into a Vec cannot fail; the default only satisfies the types.
    let mut encoder = GzEncoder::new(Vec::with_capacity(data.len() / 4 + 64), Level::new(LEVEL));
    encoder.write_all(data).and_then(|()| encoder.finish()).unwrap_or_default()
}

/// `data` gunzipped, at most [`MAX_ANSWER`] bytes of it.
///
/// # Errors
/// Not gzip, or larger than the bound.
pub fn decompress(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    GzDecoder::new(data).take(MAX_ANSWER + 1).read_to_end(&mut out).map_err(|e| format!("not gzip: {e}"))?;
    if out.len() as u64 > MAX_ANSWER {
        return Err(format!("larger than {MAX_ANSWER} bytes once decompressed"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let data = b"outrider ".repeat(1000);
        let packed = compress(&data);
        assert!(packed.len() < data.len() / 10);
        assert_eq!(decompress(&packed).unwrap(), data);
        assert!(decompress(b"not gzip at all").is_err());
        let bomb = compress(&vec![0; MAX_ANSWER as usize + 1]);
        assert!(decompress(&bomb).is_err(), "an answer past the bound is refused");
    }

    /// The measurement behind [`LEVEL`]:
    /// `cargo test --release --lib gzip_levels -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn gzip_levels() {
        use std::time::{Duration, Instant, SystemTime};

        use opentelemetry::{
            KeyValue,
            trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
        };
        use opentelemetry_sdk::{
            Resource,
            trace::{SpanData, SpanEvents, SpanLinks},
        };

        use crate::telemetry::otlp::{encode_request, encode_resource};

        // What outrider's own server spans carry, with the ids and times
        // of real traffic: random ids, a few ms apart, varied paths.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let scope = opentelemetry::InstrumentationScope::builder("outrider").build();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let batch: Vec<SpanData> = (0..512_u64)
            .map(|i| {
                let trace = (u128::from(random()) << 64) | u128::from(random());
                let start = t0 + Duration::from_micros(i * 4_000 + random() % 3_000);
                let status = if i % 50 == 0 { 504 } else { 200 };
                let path = format!("/api/orders/{}", random() % 100_000);
                SpanData {
                    span_context: SpanContext::new(
                        TraceId::from(trace),
                        SpanId::from(random()),
                        TraceFlags::SAMPLED,
                        false,
                        TraceState::default(),
                    ),
                    parent_span_id: SpanId::from(random()),
                    parent_span_is_remote: true,
                    span_kind: SpanKind::Server,
                    name: "GET /api/orders/{id}".into(),
                    start_time: start,
                    end_time: start + Duration::from_micros(500 + random() % 20_000),
                    attributes: vec![
                        KeyValue::new("http.request.method", "GET"),
                        KeyValue::new("url.path", path),
                        KeyValue::new("url.scheme", "http"),
                        KeyValue::new("http.route", "/api/orders/{id}"),
                        KeyValue::new("server.address", "shop.prod.svc.cluster.local"),
                        KeyValue::new("server.port", 8080_i64),
                        KeyValue::new("client.address", format!("10.42.{}.{}", random() % 4, random() % 250)),
                        KeyValue::new("network.protocol.version", "1.1"),
                        KeyValue::new("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0"),
                        KeyValue::new("http.response.status_code", status),
                    ],
                    dropped_attributes_count: 0,
                    events: SpanEvents::default(),
                    links: SpanLinks::default(),
                    status: if status == 504 { Status::error("timeout") } else { Status::Unset },
                    instrumentation_scope: scope.clone(),
                }
            })
            .collect();
        let resource = encode_resource(
            &Resource::builder()
                .with_service_name("legacy-shop")
                .with_attributes([
                    KeyValue::new("k8s.pod.name", "shop-7d9f8c6b5-x2x9q"),
                    KeyValue::new("k8s.namespace.name", "prod"),
                    KeyValue::new("service.version", "0.1.0"),
                ])
                .build(),
        );
        let message = encode_request(&resource, &batch, false);
        println!("none: {} bytes", message.len());
        for level in [1, 3, 6, 9] {
            let rounds = 50;
            let started = Instant::now();
            let mut size = 0;
            for _ in 0..rounds {
                let mut encoder = GzEncoder::new(Vec::new(), Level::new(level));
                encoder.write_all(&message).unwrap();
                size = encoder.finish().unwrap().len();
            }
            let each = started.elapsed() / rounds;
            println!(
                "level {level}: {size} bytes, {:.0} % saved, {:.2} ms per batch",
                100.0 * (1.0 - size as f64 / message.len() as f64),
                each.as_secs_f64() * 1e3
            );
        }
    }
}
