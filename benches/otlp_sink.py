#!/usr/bin/env python3
"""A do-nothing OTLP/HTTP trace receiver for benches/run.sh.

Accepts `POST /v1/traces` (HTTP/protobuf) and answers 200 with an empty body,
like a collector that keeps up with anything. It counts the requests, the
bytes and the spans it was sent (by walking the protobuf wire format just far
enough: ExportTraceServiceRequest.resource_spans(1) -> ResourceSpans.
scope_spans(2) -> ScopeSpans.spans(2)), so the benchmark can tell how many of
the proxied requests' spans were really exported. `GET /stats` returns the
counters as JSON. `bytes` counts what came over the wire, `decoded_bytes` the
protobuf after gzip (`Content-Encoding: gzip` is decoded, as a collector does).

With --tls-cert and --tls-key it speaks HTTPS only, like a managed backend.

Usage: otlp_sink.py [--host 127.0.0.1] [--port 4318] [--tls-cert PEM --tls-key PEM]
"""

import argparse
import gzip
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATS = {"requests": 0, "bytes": 0, "decoded_bytes": 0, "gzip_requests": 0, "spans": 0, "bad_requests": 0}


def _varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf):
    """Yields (field_number, wire_type, value) of one protobuf message;
    value is the bytes of a length-delimited field, else None."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(buf, i)
            yield field, wire, None
        elif wire == 1:
            i += 8
            yield field, wire, None
        elif wire == 2:
            size, i = _varint(buf, i)
            yield field, wire, buf[i : i + size]
            i += size
        elif wire == 5:
            i += 4
            yield field, wire, None
        else:
            raise ValueError(f"unsupported wire type {wire}")


def count_spans(body):
    spans = 0
    for f, w, resource_spans in _fields(body):
        if f != 1 or w != 2:
            continue
        for f2, w2, scope_spans in _fields(resource_spans):
            if f2 != 2 or w2 != 2:
                continue
            spans += sum(1 for f3, w3, _ in _fields(scope_spans) if f3 == 2 and w3 == 2)
    return spans


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the exporter expects

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        wire = self.rfile.read(length) if length else b""
        gzipped = self.headers.get("Content-Encoding", "").lower() == "gzip"
        try:
            body = gzip.decompress(wire) if gzipped else wire
            spans = count_spans(body) if self.path == "/v1/traces" else 0
            bad = 0
        except (ValueError, IndexError, OSError, EOFError):
            body, spans, bad = b"", 0, 1
        with LOCK:
            STATS["requests"] += 1
            STATS["bytes"] += len(wire)
            STATS["decoded_bytes"] += len(body)
            STATS["gzip_requests"] += int(gzipped)
            STATS["spans"] += spans
            STATS["bad_requests"] += bad
        status = 200 if self.path == "/v1/traces" else 404
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        if self.path != "/stats":
            self.send_error(404)
            return
        with LOCK:
            body = json.dumps(STATS).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet: one line per export would flood
        pass


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4318)
    p.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    a = p.parse_args()
    server = ThreadingHTTPServer((a.host, a.port), Handler)
    server.daemon_threads = True
    if a.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
