#!/usr/bin/env python3
"""The soak test's driver; benches/soak.sh builds outrider and runs this.

It starts the app (benches/soak_app.py), an OTLP sink (benches/otlp_sink.py)
and outrider in front of the app (pod mode), then for --duration seconds
sends a mixed load at a moderate rate: HTTP/1 keep-alive and one connection
per request, h2c (prior knowledge, several streams at once), WebSocket echo
sessions, slow clients (a trickled head, a trickled body, a slow reader),
large uploads and downloads, and client aborts (mid-head, mid-body,
before and during the response, RST_STREAM, a WebSocket dropped without a
close). Every --restart-every seconds the app is killed (SIGKILL) and
started again --restart-down seconds later.

Every --sample-every seconds it reads outrider's RSS, open descriptors and
tokio task count from /metrics (and /proc), and the connections it holds to
the app. After the warm-up and at the end, the load pauses until every
client connection is closed and the figures are read again ("quiet
points"): with no client connected they must come back to the same values.

Each failed operation is classified: expected when the app was killed while
it was in flight (outrider documents 502, a cut response or a reset
stream then) or when it is the abort the client itself caused; unexpected
otherwise. Verdict: PASS when there is no unexpected error, no growth trend
after the warm-up (see `trend`), the quiet points agree, and outrider
exits cleanly on SIGTERM at the end.

Writes CSV, JSON, a markdown table and a PNG plot to --out-dir.
"""

import argparse
import asyncio
import base64
import collections
import csv
import hashlib
import json
import os
import random
import re
import signal
import socket
import struct
import sys
import time
from functools import lru_cache

from soak_common import PATTERN, SMALL

HERE = os.path.dirname(os.path.abspath(__file__))
MiB = 1 << 20
KiB = 1 << 10


# ---------------------------------------------------------------- errors


def fatal(msg):
    """The soak itself could not run: exit 2, as soak.sh documents."""
    print(f"soak: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


class OpError(Exception):
    """A failed operation, with a short label that names what was seen."""

    def __init__(self, label, detail=""):
        super().__init__(f"{label}: {detail}" if detail else label)
        self.label = label
        self.detail = detail


def label_of(exc):
    if isinstance(exc, OpError):
        return exc.label
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed before the response" if not exc.partial else "cut response"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, BrokenPipeError):
        return "broken pipe"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    return type(exc).__name__


# What a client may see when the app is killed while its request is in
# flight: docs/architecture.md ("app closed or reset the connection: 502"),
# and a response cut where the app's was (HTTP/1: the connection closes
# before the declared length; h2: the stream is reset; WebSocket: the tunnel
# closes without a close frame).
KILL_SLACK = 0.1

APP_KILLED_OK = {
    "status 502",
    "cut response",
    "closed before the response",
    "reset",
    "broken pipe",
    "h2 stream reset",
    "ws closed without a close frame",
}


# ---------------------------------------------------------------- HTTP/1


async def open_conn(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 * MiB)
    writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


def hard_close(writer):
    """Closes with an RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.transport.get_extra_info("socket")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


def soft_close(writer):
    try:
        writer.close()
    except Exception:  # noqa: BLE001 - closing a broken connection
        pass


async def read_head(reader):
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/(\d\.\d) (\d{3})", lines[0])
    if not m:
        raise OpError("bad status line", lines[0][:80])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    return m.group(1), int(m.group(2)), headers


async def read_body(reader, headers, sink=None, piece=64 * KiB, pause=0.0, stop_after=None):
    """Reads a body framed by Content-Length, chunked coding or EOF. `sink`
    gets each piece; `pause` sleeps between pieces (a slow reader);
    `stop_after` returns once that many bytes arrived (an abort)."""
    got = 0

    async def take(data):
        nonlocal got
        if sink:
            sink(got, data)
        got += len(data)
        if pause:
            await asyncio.sleep(pause)

    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return got
            left = size
            while left:
                data = await reader.readexactly(min(piece, left))
                left -= len(data)
                await take(data)
                if stop_after is not None and got >= stop_after:
                    return got
            await reader.readexactly(2)
    elif "content-length" in headers:
        total = left = int(headers["content-length"])
        while left:
            try:
                data = await reader.readexactly(min(piece, left))
            except asyncio.IncompleteReadError as e:
                raise OpError("cut response", f"{got + len(e.partial)} of {total} bytes") from e
            left -= len(data)
            await take(data)
            if stop_after is not None and got >= stop_after:
                return got
        return got
    else:
        while True:
            data = await reader.read(piece)
            if not data:
                return got
            await take(data)


def pattern_checker(offset0=0):
    def check(off, data):
        if memoryview(PATTERN)[offset0 + off : offset0 + off + len(data)] != data:
            raise OpError("corrupt body", f"at offset {off}")

    return check


class Collect:
    def __init__(self):
        self.parts = []

    def __call__(self, _off, data):
        self.parts.append(bytes(data))

    def value(self):
        return b"".join(self.parts)


@lru_cache(maxsize=64)
def upload_answer(n):
    return f"{n} {hashlib.sha256(memoryview(PATTERN)[:n]).hexdigest()}".encode()


def head_bytes(method, path, port, extra=(), length=None, close=False, version="1.1"):
    lines = [f"{method} {path} HTTP/{version}", f"Host: 127.0.0.1:{port}", "User-Agent: outrider-soak"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if close:
        lines.append("Connection: close")
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def expect_status(status, want=200):
    if status != want:
        raise OpError(f"status {status}")


# ---------------------------------------------------------------- h2c


class H2Client:
    """One h2c connection (prior knowledge) with concurrent streams."""

    def __init__(self, port):
        self.port = port
        self.streams = {}
        self.window_waiters = []
        self.dead = None

    async def open(self):
        import h2.config
        import h2.connection
        import h2.settings

        self.reader, self.writer = await open_conn(self.port)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 * MiB})
        self.conn.increment_flow_control_window(15 * MiB)
        self.flush()
        self.pump = asyncio.create_task(self.read_loop())

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    def fail_all(self, label):
        self.dead = label
        for st in self.streams.values():
            if not st["done"].done():
                st["done"].set_exception(OpError(label))
        for w in self.window_waiters:
            if not w.done():
                w.set_result(None)

    async def read_loop(self):
        import h2.events

        try:
            while True:
                data = await self.reader.read(256 * KiB)
                if not data:
                    self.fail_all("h2 connection closed")
                    return
                for ev in self.conn.receive_data(data):
                    st = self.streams.get(getattr(ev, "stream_id", None))
                    if isinstance(ev, h2.events.ResponseReceived) and st:
                        st["headers"] = dict(ev.headers)
                    elif isinstance(ev, h2.events.DataReceived):
                        if ev.flow_controlled_length:
                            self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        if st and not st["done"].done():
                            try:
                                # A failure's text body is not the body asked for.
                                if st["sink"] and (st["headers"] or {}).get(":status") == "200":
                                    st["sink"](st["got"], ev.data)
                                st["got"] += len(ev.data)
                            except OpError as e:
                                st["done"].set_exception(e)
                            if st["abort_at"] is not None and st["got"] >= st["abort_at"]:
                                self.conn.reset_stream(ev.stream_id, 0x8)  # CANCEL
                                st["done"].set_result("aborted")
                    elif isinstance(ev, h2.events.StreamEnded) and st and not st["done"].done():
                        st["done"].set_result("ended")
                    elif isinstance(ev, h2.events.StreamReset) and st and not st["done"].done():
                        st["done"].set_exception(OpError("h2 stream reset", f"code {ev.error_code}"))
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        self.fail_all("h2 GOAWAY")
                    elif isinstance(ev, h2.events.WindowUpdated):
                        for w in self.window_waiters:
                            if not w.done():
                                w.set_result(None)
                        self.window_waiters = []
                self.flush()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - recorded on every open stream
            self.fail_all(label_of(e))

    async def request(self, method, path, body=b"", sink=None, abort_at=None):
        if self.dead:
            raise OpError(self.dead)
        sid = self.conn.get_next_available_stream_id()
        done = asyncio.get_running_loop().create_future()
        st = {"headers": None, "got": 0, "sink": sink, "abort_at": abort_at, "done": done}
        self.streams[sid] = st
        headers = [(":method", method), (":path", path), (":scheme", "http"), (":authority", f"127.0.0.1:{self.port}")]
        if body:
            headers.append(("content-length", str(len(body))))
        try:
            self.conn.send_headers(sid, headers, end_stream=not body)
            self.flush()
            view = memoryview(body)
            while view:
                window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
                if window <= 0:
                    w = asyncio.get_running_loop().create_future()
                    self.window_waiters.append(w)
                    await asyncio.wait([w, done], return_when=asyncio.FIRST_COMPLETED)
                    if done.done() or self.dead:
                        break
                    continue
                n = min(window, len(view))
                self.conn.send_data(sid, view[:n].tobytes(), end_stream=(n == len(view)))
                view = view[n:]
                self.flush()
                await self.writer.drain()
            how = await done
            status = int((st["headers"] or {}).get(":status", 0))
            return status, st["got"], how
        finally:
            del self.streams[sid]

    def close(self):
        self.pump.cancel()
        try:
            self.conn.close_connection()
            self.flush()
        except Exception:  # noqa: BLE001
            pass
        soft_close(self.writer)


# ---------------------------------------------------------------- WebSocket

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_frame(opcode, payload):
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    if n:
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        payload = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")
    return head + mask + payload


async def ws_read(reader):
    """One (unfragmented) frame from the server: (opcode, payload)."""
    try:
        b0, b1 = await reader.readexactly(2)
    except asyncio.IncompleteReadError as e:
        raise OpError("ws closed without a close frame") from e
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    if b1 & 0x80:
        raise OpError("ws masked frame from the server")
    try:
        payload = await reader.readexactly(n)
    except asyncio.IncompleteReadError as e:
        raise OpError("ws closed without a close frame") from e
    return b0 & 0x0F, payload


# ---------------------------------------------------------------- metrics


def parse_metrics(text):
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


async def scrape(port):
    reader, writer = await open_conn(port)
    try:
        writer.write(head_bytes("GET", "/metrics", port, close=True))
        _, status, headers = await read_head(reader)
        body = Collect()
        await read_body(reader, headers, body)
        expect_status(status)
        return parse_metrics(body.value().decode())
    finally:
        soft_close(writer)


def proc_status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def app_connections(app_port):
    """Established TCP connections to the app's port (only outrider opens
    them; the health check's connections last a moment)."""
    n = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "01" and int(parts[2].rsplit(":", 1)[1], 16) == app_port:
                        n += 1
        except FileNotFoundError:
            pass
    return n


# ---------------------------------------------------------------- the soak


class Soak:
    def __init__(self, args):
        self.a = args
        self.port, self.admin, self.app_port, self.sink_port = args.port, args.admin_port, args.app_port, args.sink_port
        self.t0 = time.monotonic()
        self.kills = []  # [killed, reaped, listening again]
        self.killing = None  # the time of a kill whose restart is under way
        self.dead = None  # when that kill's process was reaped
        self.ok = collections.Counter()
        self.errors = collections.Counter()  # (kind, label, class)
        self.unexpected = []
        self.rows = []
        self.quiet = {}
        self.running = asyncio.Event()
        self.running.set()
        self.stop = False
        self.parked = 0
        self.finished = 0
        self.workers = 0
        self.lock = asyncio.Lock()  # a restart and a quiet point never overlap
        self.app = None
        self.tmp = args.tmp
        self.rng = random.Random(args.seed)

    def now(self):
        return time.monotonic() - self.t0

    # ------------------------------------------------------------ processes

    async def start_app(self):
        log = open(os.path.join(self.tmp, "app.log"), "ab")
        self.app = await asyncio.create_subprocess_exec(
            sys.executable, os.path.join(HERE, "soak_app.py"), "--port", str(self.app_port),
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.app.returncode is not None:
                fatal(f"the app exited at start (log: {self.tmp}/app.log)")
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.app_port)
                soft_close(w)
                return
            except OSError:
                await asyncio.sleep(0.05)
        fatal("the app did not listen within 20 s")

    async def kill_app(self):
        if self.app and self.app.returncode is None:
            self.app.kill()
            await self.app.wait()

    async def restarts(self):
        every, down = self.a.restart_every, self.a.restart_down
        n = 1
        while not self.stop:
            await asyncio.sleep(max(0.0, n * every - self.now()))
            if self.stop or self.now() > self.a.duration - down - 5:
                return
            async with self.lock:
                t = self.killing = self.now()
                await self.kill_app()
                self.dead = self.now()
                await asyncio.sleep(down)
                await self.start_app()
                self.kills.append([t, self.dead, self.now()])
                self.killing = self.dead = None
                print(f"[{self.now():7.1f}s] app killed at {t:.1f}s, listening again", file=sys.stderr)
            n += 1

    # ------------------------------------------------------------ bookkeeping

    def classify(self, kind, label, t0, t1, detail=""):
        # In flight at a kill: begun before the app's process was reaped
        # (plus KILL_SLACK for outrider to see its connections close) and
        # not finished when the SIGKILL went out.
        kills = [(k, dead) for k, dead, _ in self.kills]
        if self.killing is not None:
            kills.append((self.killing, self.dead if self.dead is not None else t1))
        during_kill = any(t0 <= dead + KILL_SLACK and t1 >= k for k, dead in kills)
        if during_kill and label in APP_KILLED_OK:
            cls = "expected: app killed in flight"
        else:
            cls = "unexpected"
            if len(self.unexpected) < 200:
                self.unexpected.append(
                    {"t": round(t1, 3), "started": round(t0, 3), "kind": kind, "error": label, "detail": detail[:200]}
                )
            print(f"[{t1:7.1f}s] UNEXPECTED {kind}: {label} {detail[:120]}", file=sys.stderr)
        self.errors[(kind, label, cls)] += 1

    async def op(self, kind, fn, timeout=90):
        """Runs one operation; returns True when it succeeded."""
        t0 = self.now()
        try:
            await asyncio.wait_for(fn(), timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - every failure is classified
            self.classify(kind, label_of(e), t0, self.now(), str(e))
            return False
        self.ok[kind] += 1
        return True

    async def gate(self, on_pause=None):
        """Parks the worker while the load is paused (quiet points)."""
        if self.running.is_set():
            return
        if on_pause:
            on_pause()
        self.parked += 1
        try:
            await self.running.wait()
        finally:
            self.parked -= 1

    async def worker(self, loop):
        try:
            await loop
        finally:
            self.finished += 1

    def sleep(self, mean):
        return asyncio.sleep(mean * self.rng.uniform(0.5, 1.5))

    # ------------------------------------------------------------ workers

    async def w_keepalive(self):
        """Sequential requests on one HTTP/1.1 connection, reopened only
        when it breaks or at a quiet point."""
        conn = None

        def drop():
            nonlocal conn
            if conn:
                soft_close(conn[1])
                conn = None

        while not self.stop:
            await self.gate(drop)
            if conn is None:
                try:
                    conn = await open_conn(self.port)
                except OSError as e:
                    self.classify("h1 keep-alive", label_of(e), self.now(), self.now(), str(e))
                    await asyncio.sleep(1)
                    continue
            reader, writer = conn
            echo = self.rng.random() < 0.3

            async def one():
                if echo:
                    body = os.urandom(self.rng.randint(1, 16 * KiB))
                    writer.write(head_bytes("POST", "/echo", self.port, length=len(body)) + body)
                else:
                    body = SMALL
                    writer.write(head_bytes("GET", "/small", self.port))
                _, status, headers = await read_head(reader)
                got = Collect()
                await read_body(reader, headers, got)
                expect_status(status)
                if got.value() != body:
                    raise OpError("corrupt body")
                if headers.get("connection", "").lower() == "close":
                    raise OpError("keep-alive connection closed by outrider")

            if not await self.op("h1 keep-alive", one):
                drop()
            await self.sleep(0.1)
        drop()

    async def w_newconn(self):
        while not self.stop:
            await self.gate()
            version = "1.0" if self.rng.random() < 0.2 else "1.1"

            async def one():
                reader, writer = await open_conn(self.port)
                try:
                    writer.write(head_bytes("GET", "/small", self.port, close=True, version=version))
                    _, status, headers = await read_head(reader)
                    got = Collect()
                    await read_body(reader, headers, got)
                    expect_status(status)
                    if got.value() != SMALL:
                        raise OpError("corrupt body")
                    if await reader.read(1):
                        raise OpError("bytes after the response")
                finally:
                    soft_close(writer)

            await self.op("h1 new connection", one)
            await self.sleep(0.2)

    async def w_h2(self):
        client = None

        def drop():
            nonlocal client
            if client:
                client.close()
                client = None

        bursts = 0
        while not self.stop:
            await self.gate(drop)
            if client is None or client.dead or bursts >= 40:
                drop()
                client = H2Client(self.port)
                try:
                    await client.open()
                except OSError as e:
                    client = None
                    self.classify("h2c stream", label_of(e), self.now(), self.now(), str(e))
                    await asyncio.sleep(1)
                    continue
                bursts = 0
            bursts += 1
            c = client
            jobs = []
            for _ in range(8):
                r = self.rng.random()
                if r < 0.5:

                    async def small():
                        got = Collect()
                        status, _, _ = await c.request("GET", "/small", sink=got)
                        expect_status(status)
                        if got.value() != SMALL:
                            raise OpError("corrupt body")

                    jobs.append(self.op("h2c stream", small))
                elif r < 0.75:
                    n = self.rng.choice([64 * KiB, 256 * KiB, 1 * MiB])

                    async def big(n=n):
                        status, got, _ = await c.request("GET", f"/big?n={n}", sink=pattern_checker())
                        expect_status(status)
                        if got != n:
                            raise OpError("short body", f"{got} of {n}")

                    jobs.append(self.op("h2c stream", big))
                elif r < 0.92:
                    n = self.rng.choice([1 * KiB, 32 * KiB, 200 * KiB])

                    async def up(n=n):
                        got = Collect()
                        status, _, _ = await c.request("POST", "/upload", body=PATTERN[:n], sink=got)
                        expect_status(status)
                        if got.value() != upload_answer(n):
                            raise OpError("wrong upload digest", got.value()[:80].decode("latin-1"))

                    jobs.append(self.op("h2c stream", up))
                else:

                    async def cancel():
                        status, got, how = await c.request("GET", f"/big?n={4 * MiB}", sink=pattern_checker(), abort_at=128 * KiB)
                        expect_status(status)
                        if how != "aborted":
                            raise OpError("stream ended before the planned RST_STREAM")

                    jobs.append(self.op("h2c RST_STREAM mid-response", cancel))
            await asyncio.gather(*jobs)
            await self.sleep(0.5)
        drop()

    async def w_ws(self):
        while not self.stop:
            await self.gate()
            abort = self.rng.random() < 0.2
            sizes = [self.rng.choice([16, 200, 4 * KiB, 64 * KiB, 300 * KiB]) for _ in range(10)]

            async def session():
                reader, writer = await open_conn(self.port)
                try:
                    key = base64.b64encode(os.urandom(16))
                    writer.write(
                        head_bytes("GET", "/ws", self.port, extra=(
                            "Upgrade: websocket", "Connection: Upgrade",
                            f"Sec-WebSocket-Key: {key.decode()}", "Sec-WebSocket-Version: 13",
                        ))
                    )
                    _, status, headers = await read_head(reader)
                    expect_status(status, 101)
                    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
                    if headers.get("sec-websocket-accept") != accept:
                        raise OpError("ws bad accept")
                    for i, n in enumerate(sizes):
                        text = i % 2 == 0
                        payload = (b"abcdefghij" * (n // 10 + 1))[:n] if text else os.urandom(n)
                        writer.write(ws_frame(1 if text else 2, payload))
                        while True:
                            op, data = await ws_read(reader)
                            if op == 9:  # ping
                                writer.write(ws_frame(10, data))
                                continue
                            break
                        if op != (1 if text else 2) or data != payload:
                            raise OpError("ws wrong echo", f"opcode {op}, {len(data)} of {n} bytes")
                        self.ok["ws message"] += 1
                        await asyncio.sleep(0.05)
                    if abort:
                        hard_close(writer)
                        return
                    writer.write(ws_frame(8, struct.pack("!H", 1000)))
                    op, _ = await ws_read(reader)
                    if op != 8:
                        raise OpError("ws no close frame back")
                    if await reader.read(1):
                        raise OpError("ws bytes after close")
                finally:
                    soft_close(writer)

            await self.op("ws session, dropped without close" if abort else "ws session", session)
            await self.sleep(1.0)

    async def w_slow(self):
        """A slow client at a time: trickled head, trickled body, slow reader."""
        i = 0
        while not self.stop:
            await self.gate()
            which = i % 4
            i += 1

            async def slow_head():
                reader, writer = await open_conn(self.port)
                try:
                    head = head_bytes("GET", "/small", self.port, close=True)
                    step = max(1, len(head) // 20)
                    for off in range(0, len(head), step):  # ~20 pieces over ~3 s
                        writer.write(head[off : off + step])
                        await asyncio.sleep(0.15)
                    _, status, headers = await read_head(reader)
                    got = Collect()
                    await read_body(reader, headers, got)
                    expect_status(status)
                    if got.value() != SMALL:
                        raise OpError("corrupt body")
                finally:
                    soft_close(writer)

            async def slow_upload():
                n = 96 * KiB
                reader, writer = await open_conn(self.port)
                try:
                    writer.write(head_bytes("POST", "/upload", self.port, length=n, close=True))
                    for off in range(0, n, 2 * KiB):  # 48 pieces over ~4 s
                        writer.write(PATTERN[off : off + 2 * KiB])
                        await writer.drain()
                        await asyncio.sleep(0.08)
                    _, status, headers = await read_head(reader)
                    got = Collect()
                    await read_body(reader, headers, got)
                    expect_status(status)
                    if got.value() != upload_answer(n):
                        raise OpError("wrong upload digest")
                finally:
                    soft_close(writer)

            async def paced_read(n, piece):
                # 10 pieces a second. At 32 KiB (320 KiB/s) the last few MiB
                # (what the socket buffers and outrider's write buffer hold
                # once the app's body has ended) take longer than
                # OUTRIDER_HEADER_READ_TIMEOUT.
                reader, writer = await open_conn(self.port)
                try:
                    writer.write(head_bytes("GET", f"/big?n={n}", self.port, close=True))
                    _, status, headers = await read_head(reader)
                    expect_status(status)
                    got = await read_body(reader, headers, pattern_checker(), piece=piece, pause=0.1)
                    if got != n:
                        raise OpError("short body")
                finally:
                    soft_close(writer)

            async def slow_read():
                await paced_read(6 * MiB, 128 * KiB)

            async def very_slow_read():
                await paced_read(8 * MiB, 32 * KiB)

            fn, kind = [(slow_head, "slow client: trickled head"), (slow_upload, "slow client: trickled body"),
                        (slow_read, "slow client: slow reader"),
                        (very_slow_read, "slow client: very slow reader")][which]
            await self.op(kind, fn)
            await self.sleep(1.0)

    async def w_large(self):
        i = 0
        while not self.stop:
            await self.gate()
            up = i % 2 == 0
            i += 1
            n = self.rng.choice([4 * MiB, 8 * MiB, 16 * MiB])

            async def upload():
                reader, writer = await open_conn(self.port)
                try:
                    writer.write(head_bytes("POST", "/upload", self.port, length=n, close=True))
                    view = memoryview(PATTERN)[:n]
                    for off in range(0, n, 256 * KiB):
                        writer.write(view[off : off + 256 * KiB])
                        await writer.drain()
                    _, status, headers = await read_head(reader)
                    got = Collect()
                    await read_body(reader, headers, got)
                    expect_status(status)
                    if got.value() != upload_answer(n):
                        raise OpError("wrong upload digest")
                finally:
                    soft_close(writer)

            async def download():
                reader, writer = await open_conn(self.port)
                try:
                    writer.write(head_bytes("GET", f"/big?n={n}", self.port, close=True))
                    _, status, headers = await read_head(reader)
                    expect_status(status)
                    got = await read_body(reader, headers, pattern_checker(), piece=256 * KiB)
                    if got != n:
                        raise OpError("short body")
                finally:
                    soft_close(writer)

            await self.op("large upload" if up else "large download", upload if up else download)
            await self.sleep(1.5)

    async def w_aborts(self):
        i = 0
        while not self.stop:
            await self.gate()
            which = i % 4
            i += 1
            rst = self.rng.random() < 0.5

            def end(writer):
                hard_close(writer) if rst else soft_close(writer)

            async def mid_head():
                _, writer = await open_conn(self.port)
                head = head_bytes("GET", "/small", self.port)
                writer.write(head[: len(head) // 2])
                await writer.drain()
                await asyncio.sleep(0.2)
                end(writer)

            async def mid_request_body():
                _, writer = await open_conn(self.port)
                writer.write(head_bytes("POST", "/upload", self.port, length=1 * MiB))
                writer.write(PATTERN[: 256 * KiB])
                await writer.drain()
                await asyncio.sleep(0.2)
                end(writer)

            async def before_response():
                reader, writer = await open_conn(self.port)
                writer.write(head_bytes("GET", "/delay?ms=1000", self.port))
                await writer.drain()
                await asyncio.sleep(0.2)
                end(writer)

            async def mid_response():
                reader, writer = await open_conn(self.port)
                try:
                    writer.write(head_bytes("GET", f"/big?n={8 * MiB}", self.port))
                    _, status, headers = await read_head(reader)
                    expect_status(status)
                    await read_body(reader, headers, pattern_checker(), stop_after=128 * KiB)
                finally:
                    end(writer)

            fn, kind = [
                (mid_head, "abort: mid-head"),
                (mid_request_body, "abort: mid-request-body"),
                (before_response, "abort: before the response"),
                (mid_response, "abort: mid-response"),
            ][which]
            await self.op(kind, fn)
            await self.sleep(0.5)

    # ------------------------------------------------------------ sampling

    async def sample(self, quiet=""):
        t = self.now()
        try:
            m = await asyncio.wait_for(scrape(self.admin), 10)
        except Exception as e:  # noqa: BLE001
            self.classify("metrics scrape", label_of(e), t, self.now(), str(e))
            return None
        pid = self.a.outrider_pid
        row = {
            "t_s": round(t, 1),
            "rss_mib": round(m.get("process_resident_memory_bytes", 0) / MiB, 2),
            "rss_proc_mib": round(proc_status_kib(pid, "VmRSS") / 1024, 2),
            "open_fds": int(m.get("process_open_fds", 0)),
            "tasks": int(m.get("outrider_runtime_tasks", -1)),
            "client_conns": int(m.get("outrider_connections_active", 0)),
            "active_requests": int(m.get("http_server_active_requests", 0)),
            "held_requests": int(m.get("outrider_buffered_requests", 0)),
            "app_conns": app_connections(self.app_port),
            "app_ready": int(m.get("outrider_app_ready", 0)),
            "threads": proc_status_kib(pid, "Threads"),
            "outrider_cpu_s": round(m.get("process_cpu_seconds_total", 0), 2),
            "driver_cpu_s": round(time.process_time(), 2),
            "quiet": quiet,
            "ok_total": sum(self.ok.values()),
            "expected_errors": sum(n for (_, _, c), n in self.errors.items() if c != "unexpected"),
            "unexpected_errors": sum(n for (_, _, c), n in self.errors.items() if c == "unexpected"),
            "upstream_errors": int(sum(v for k, v in m.items() if k.startswith("outrider_upstream_errors_total"))),
            "spans_ended": int(m.get("outrider_spans_ended_total", 0)),
            "spans_exported": int(m.get("outrider_spans_exported_total", 0)),
        }
        self.rows.append(row)
        print(
            f"[{t:7.1f}s] rss {row['rss_mib']:.1f} MiB, fds {row['open_fds']}, tasks {row['tasks']}, "
            f"client conns {row['client_conns']}, app conns {row['app_conns']}, ok {row['ok_total']}, "
            f"expected errors {row['expected_errors']}, unexpected {row['unexpected_errors']}{' ' + quiet if quiet else ''}",
            file=sys.stderr,
        )
        return row

    async def sampler(self):
        n = 1
        while not self.stop:
            await asyncio.sleep(max(0.0, n * self.a.sample_every - self.now()))
            n += 1
            if not self.stop:
                await self.sample()

    async def quiet_point(self, name, resume=True):
        """Pauses the load until every worker is parked (its connections
        closed), waits --settle seconds, and samples."""
        async with self.lock:
            self.running.clear()
            deadline = self.now() + 120
            while self.parked + self.finished < self.workers and self.now() < deadline:
                await asyncio.sleep(0.1)
            if self.parked + self.finished < self.workers:
                self.classify("quiet point", "workers did not park within 120 s", self.now(), self.now())
            await asyncio.sleep(self.a.settle)
            row = await self.sample(quiet=name)
            self.quiet[name] = row
            if resume:
                self.running.set()

    # ------------------------------------------------------------ main

    async def run(self):
        a = self.a
        await self.sample(quiet="idle")
        self.quiet["idle"] = self.rows[-1] if self.rows else None
        workers = (
            [self.w_keepalive() for _ in range(4)]
            + [self.w_newconn() for _ in range(2)]
            + [self.w_h2() for _ in range(2)]
            + [self.w_ws() for _ in range(2)]
            + [self.w_slow() for _ in range(2)]
            + [self.w_large()]
            + [self.w_aborts()]
        )
        self.workers = len(workers)
        tasks = [asyncio.create_task(self.worker(w)) for w in workers]
        background = [asyncio.create_task(self.sampler()), asyncio.create_task(self.restarts())]
        await asyncio.sleep(a.warmup)
        await self.quiet_point("after warm-up")
        await asyncio.sleep(max(0.0, a.duration - self.now()))
        self.stop = True  # workers park at the quiet point and then end
        await self.quiet_point("end", resume=False)
        for t in background:
            t.cancel()
        await asyncio.sleep(0.2)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, *background, return_exceptions=True)


# ---------------------------------------------------------------- verdict


def theil_sen(xs, ys):
    slopes = sorted((ys[j] - ys[i]) / (xs[j] - xs[i]) for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[j] != xs[i])
    return slopes[len(slopes) // 2] if slopes else 0.0


def median(v):
    s = sorted(v)
    return s[len(s) // 2] if s else 0.0


def trend(rows, warmup, key, rel, floor):
    """Growth after the warm-up: the Theil-Sen slope (the median of all
    pairwise slopes, which one spike at an app restart does not move)
    times the window, and the median of the last third against the middle
    third. Either above max(floor, rel x median) is growth."""
    post = [r for r in rows if r["t_s"] >= warmup and not r["quiet"]]
    xs = [r["t_s"] for r in post]
    ys = [r[key] for r in post]
    if len(ys) < 6:
        return {"samples": len(ys), "verdict": "too few samples"}
    k = len(ys) // 3
    mid, last = median(ys[k : 2 * k]), median(ys[2 * k :])
    rise = theil_sen(xs, ys) * (xs[-1] - xs[0])
    tol = max(floor, rel * median(ys))
    grew = rise > tol or last - mid > tol
    return {
        "samples": len(ys), "first": ys[0], "last": ys[-1], "min": min(ys), "max": max(ys), "median": median(ys),
        "middle_third_median": mid, "last_third_median": last, "theil_sen_rise_over_window": round(rise, 3),
        "tolerance": round(tol, 3), "verdict": "growth" if grew else "flat",
    }


# ---------------------------------------------------------------- plot


def plot(rows, kills, warmup, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t_s"] / 60 for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(8, 6.4), sharex=True, dpi=90)
    series = [
        ("RSS (MiB)", [r["rss_mib"] for r in rows], "tab:blue"),
        ("open fds", [r["open_fds"] for r in rows], "tab:green"),
        ("tokio tasks", [r["tasks"] for r in rows], "tab:purple"),
    ]
    for ax, (name, ys, color) in zip(axes, series):
        ax.plot(t, ys, color=color, lw=1.2, marker=".", ms=3)
        q = [(r["t_s"] / 60, y) for r, y in zip(rows, ys) if r["quiet"]]
        if q:
            ax.plot([x for x, _ in q], [y for _, y in q], "o", mfc="none", mec="black", ms=6, label="quiet point")
        ax.set_ylabel(name)
        ax.set_ylim(bottom=0, top=max(ys) * 1.2 + 1)
        ax.axvspan(0, warmup / 60, color="0.9", lw=0)
        for k, _, up in kills:
            ax.axvspan(k / 60, up / 60, color="tab:red", alpha=0.25, lw=0)
            ax.axvline(k / 60, color="tab:red", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
    axes[-1].plot(t, [r["client_conns"] for r in rows], color="0.5", lw=0.8, label="client connections")
    axes[-1].legend(loc="upper right", fontsize=7)
    axes[0].legend(loc="lower right", fontsize=7)
    axes[-1].set_xlabel("minutes (grey: warm-up; red dashed: app killed, shaded until it listens again)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------- main


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", required=True)
    p.add_argument("--port", type=int, default=28100)
    p.add_argument("--admin-port", type=int, default=28101)
    p.add_argument("--app-port", type=int, default=28102)
    p.add_argument("--sink-port", type=int, default=28103)
    p.add_argument("--duration", type=float, default=1200)
    p.add_argument("--warmup", type=float, default=None, help="default: 180 s, or a quarter of a shorter run")
    p.add_argument("--restart-every", type=float, default=None, help="default: 180 s, or a quarter of a shorter run")
    p.add_argument("--restart-down", type=float, default=3)
    p.add_argument("--sample-every", type=float, default=10)
    # jemalloc hands freed pages back to the OS over about 10 s
    # (dirty_decay_ms): an RSS read sooner counts what it still holds.
    p.add_argument("--settle", type=float, default=15, help="seconds between the last client close and a quiet sample")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tmp", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--name", default="soak")
    p.add_argument("--commit", default="unknown")
    p.add_argument("--command", default="bash benches/soak.sh")
    args = p.parse_args()
    if args.warmup is None:
        args.warmup = min(180, args.duration / 4)
    if args.restart_every is None:
        args.restart_every = min(180, args.duration / 4)

    procs = []

    def cleanup():
        for pr in reversed(procs):
            if pr.poll() is None:
                pr.kill()
                pr.wait()

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    import subprocess

    started_at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    try:
        sink = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "otlp_sink.py"), "--port", str(args.sink_port)],
            stdin=subprocess.DEVNULL, stdout=open(os.path.join(args.tmp, "sink.log"), "wb"), stderr=subprocess.STDOUT,
        )
        procs.append(sink)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "OUTRIDER_UPSTREAM": f"http://127.0.0.1:{args.app_port}",
            "OUTRIDER_LISTEN": f"127.0.0.1:{args.port}",
            "OUTRIDER_ADMIN_LISTEN": f"127.0.0.1:{args.admin_port}",
            "OUTRIDER_LOG_FORMAT": "json",
            "OUTRIDER_DRAIN_DELAY": "0s",
            "OTEL_SERVICE_NAME": "soak-app",
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{args.sink_port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        }
        outrider_log = os.path.join(args.tmp, "outrider.log")
        soak = None

        async def go():
            nonlocal soak
            soak = Soak(args)
            await soak.start_app()
            proc = subprocess.Popen([args.bin], env=env, stdin=subprocess.DEVNULL,
                                    stdout=open(outrider_log, "wb"), stderr=subprocess.STDOUT)
            procs.append(proc)
            args.outrider_pid = proc.pid
            deadline = time.monotonic() + 20
            while True:
                if proc.poll() is not None:
                    fatal(f"outrider exited at start (log: {outrider_log})")
                try:
                    reader, writer = await open_conn(args.admin_port)
                    writer.write(head_bytes("GET", "/readyz", args.admin_port, close=True))
                    _, status, _ = await read_head(reader)
                    soft_close(writer)
                    if status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    fatal("outrider was not ready within 20 s")
                await asyncio.sleep(0.05)
            soak.t0 = time.monotonic()
            print(f"soak: outrider pid {proc.pid} on 127.0.0.1:{args.port}, app on {args.app_port}, "
                  f"{args.duration:.0f} s, warm-up {args.warmup:.0f} s, app restart every {args.restart_every:.0f} s",
                  file=sys.stderr)
            await soak.run()
            # outrider's own exit: SIGTERM, the drain, exit 0.
            t = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            while proc.poll() is None and time.monotonic() - t < 30:
                await asyncio.sleep(0.05)
            soak.exit = {"code": proc.poll(), "seconds": round(time.monotonic() - t, 2)}
            await soak.kill_app()

        asyncio.run(go())
    finally:
        cleanup()
    report(args, soak, outrider_log, started_at)


def log_levels(path):
    levels = collections.Counter()
    messages = collections.Counter()
    statuses = collections.Counter()
    with open(path, errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                levels["(not json)"] += 1
                messages[("(not json)", line.strip()[:120])] += 1
                continue
            lvl = rec.get("level", "?")
            if rec.get("target") == "outrider::access":
                levels["access"] += 1
                statuses[f"{rec.get('status')} (HTTP/{rec.get('protocol')})"] += 1
                continue
            levels[lvl] += 1
            if lvl in ("WARN", "ERROR"):
                msg = rec.get("message", "")
                if rec.get("error.kind"):
                    msg += f" ({rec['error.kind']}, {rec.get('status')})"
                messages[(lvl, msg)] += 1
    return levels, messages, statuses


def report(args, soak, outrider_log, started_at):
    rows = soak.rows
    os.makedirs(args.out_dir, exist_ok=True)
    base = os.path.join(args.out_dir, args.name)
    with open(base + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)

    levels, messages, statuses = log_levels(outrider_log)
    trends = {
        "rss_mib": trend(rows, args.warmup, "rss_mib", 0.10, 2.0),
        "open_fds": trend(rows, args.warmup, "open_fds", 0.10, 4),
        "tasks": trend(rows, args.warmup, "tasks", 0.10, 4),
    }
    qa, qb = soak.quiet.get("after warm-up"), soak.quiet.get("end")
    quiet_check = None
    if qa and qb:
        # With no client connected: the same tasks, and the same descriptors
        # once the pooled connections to the app are set aside.
        fa, fb = qa["open_fds"] - qa["app_conns"], qb["open_fds"] - qb["app_conns"]
        quiet_check = {
            "tasks": [qa["tasks"], qb["tasks"]],
            "fds_without_app_conns": [fa, fb],
            "rss_mib": [qa["rss_mib"], qb["rss_mib"]],
            "verdict": "same" if qb["tasks"] <= qa["tasks"] and fb <= fa and qb["rss_mib"] <= qa["rss_mib"] * 1.1 + 2 else "grew",
        }
    unexpected = sum(n for (_, _, c), n in soak.errors.items() if c == "unexpected")
    clean_exit = soak.exit["code"] == 0
    reasons = []
    if unexpected:
        reasons.append(f"{unexpected} unexpected errors")
    if levels.get("ERROR"):
        reasons.append(f"{levels['ERROR']} ERROR lines in outrider's log")
    for k, v in trends.items():
        if v["verdict"] != "flat":
            reasons.append(f"{k}: {v['verdict']}")
    if not quiet_check or quiet_check["verdict"] != "same":
        reasons.append("quiet points differ" if quiet_check else "no quiet points")
    if not clean_exit:
        reasons.append(f"outrider exited {soak.exit['code']} on SIGTERM")
    verdict = "PASS" if not reasons else "FAIL"

    by_kind = collections.defaultdict(lambda: {"ok": 0, "expected_errors": 0, "unexpected_errors": 0})
    for k, n in soak.ok.items():
        by_kind[k]["ok"] += n
    for (k, _, c), n in soak.errors.items():
        by_kind[k]["unexpected_errors" if c == "unexpected" else "expected_errors"] += n
    summary = {
        "verdict": verdict,
        "reasons": reasons,
        "command": args.command,
        "commit": args.commit,
        "started_at": started_at,
        "machine": {"nproc": os.cpu_count(), "kernel": os.uname().release, "cpu": cpu_model()},
        "config": {
            "duration_s": args.duration, "warmup_s": args.warmup, "restart_every_s": args.restart_every,
            "restart_down_s": args.restart_down, "sample_every_s": args.sample_every, "seed": args.seed,
        },
        "app_restarts": [{"killed": round(k, 2), "reaped": round(d, 2), "listening": round(u, 2)} for k, d, u in soak.kills],
        "trends": trends,
        "quiet_points": {k: v for k, v in soak.quiet.items() if v},
        "quiet_check": quiet_check,
        "requests_by_kind": dict(sorted(by_kind.items())),
        "ok_ws_messages": soak.ok.get("ws message", 0),
        "errors": [{"kind": k, "error": e, "class": c, "count": n} for (k, e, c), n in sorted(soak.errors.items())],
        "unexpected_errors": soak.unexpected,
        "outrider_log_levels": dict(levels),
        "outrider_log_warnings": [{"level": l, "message": m, "count": n} for (l, m), n in messages.most_common(30)],
        "outrider_exit": soak.exit,
        "access_log_statuses": dict(sorted(statuses.items())),
        "cpu": {
            "outrider_s": rows[-1]["outrider_cpu_s"],
            "outrider_percent_of_one_cpu": round(100 * rows[-1]["outrider_cpu_s"] / max(1, rows[-1]["t_s"]), 1),
            "driver_s": rows[-1]["driver_cpu_s"],
            "driver_percent_of_one_cpu": round(100 * rows[-1]["driver_cpu_s"] / max(1, rows[-1]["t_s"]), 1),
        },
        "rss_mib": {"start": rows[0]["rss_mib"], "end": rows[-1]["rss_mib"], "max": max(r["rss_mib"] for r in rows)},
        "open_fds": {"start": rows[0]["open_fds"], "end": rows[-1]["open_fds"], "max": max(r["open_fds"] for r in rows)},
        "tasks": {"start": rows[0]["tasks"], "end": rows[-1]["tasks"], "max": max(r["tasks"] for r in rows)},
        "spans": {"ended": rows[-1]["spans_ended"], "exported": rows[-1]["spans_exported"]},
    }
    with open(base + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    md = markdown(summary)
    with open(base + ".md", "w") as f:
        f.write(md)
    title = f"outrider soak, {args.duration / 60:.0f} min, commit {args.commit}: {verdict}"
    plot(rows, soak.kills, args.warmup, base + ".png", title)
    print(md)
    print(f"soak: {verdict}" + (f" ({'; '.join(reasons)})" if reasons else ""), file=sys.stderr)
    print(f"soak: wrote {base}.csv, .json, .md, .png", file=sys.stderr)
    sys.exit(0 if verdict == "PASS" else 1)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def markdown(s):
    out = [f"Soak: **{s['verdict']}**" + (f" ({'; '.join(s['reasons'])})" if s["reasons"] else ""), ""]
    out += [f"`{s['command']}`, commit {s['commit']}, started {s['started_at']}; {s['machine']['nproc']} CPUs "
            f"({s['machine']['cpu']}), kernel {s['machine']['kernel']}.", ""]
    c = s["config"]
    out += [f"{c['duration_s']:.0f} s, warm-up {c['warmup_s']:.0f} s, app killed every {c['restart_every_s']:.0f} s "
            f"(down {c['restart_down_s']:.0f} s; {len(s['app_restarts'])} restarts), sampled every {c['sample_every_s']:.0f} s.", ""]
    out += ["| | start | end | max | after warm-up: median, middle → last third | rise over the window (Theil-Sen) | tolerance | trend |",
            "|---|---:|---:|---:|---:|---:|---:|---|"]
    for key, name in (("rss_mib", "RSS (MiB)"), ("open_fds", "open fds"), ("tasks", "tokio tasks")):
        t = s["trends"][key]
        v = s[key]
        out.append(f"| {name} | {v['start']} | {v['end']} | {v['max']} | {t.get('median')}, {t.get('middle_third_median')} → "
                   f"{t.get('last_third_median')} | {t.get('theil_sen_rise_over_window')} | {t.get('tolerance')} | {t['verdict']} |")
    q = s["quiet_check"]
    if q:
        out += ["", f"Quiet points (no client connected), after warm-up → end: tasks {q['tasks'][0]} → {q['tasks'][1]}, "
                f"fds less connections to the app {q['fds_without_app_conns'][0]} → {q['fds_without_app_conns'][1]}, "
                f"RSS {q['rss_mib'][0]} → {q['rss_mib'][1]} MiB: {q['verdict']}."]
    out += ["", "| traffic | ok | expected errors | unexpected errors |", "|---|---:|---:|---:|"]
    for k, v in s["requests_by_kind"].items():
        if k == "ws message":
            continue
        out.append(f"| {k} | {v['ok']} | {v['expected_errors']} | {v['unexpected_errors']} |")
    out.append(f"| (WebSocket messages echoed) | {s['ok_ws_messages']} | | |")
    if s["errors"]:
        out += ["", "| traffic | error | class | count |", "|---|---|---|---:|"]
        for e in s["errors"]:
            out.append(f"| {e['kind']} | {e['error']} | {e['class']} | {e['count']} |")
    lv = s["outrider_log_levels"]
    out += ["", f"outrider's log: {', '.join(f'{k} {v}' for k, v in sorted(lv.items()))}; on SIGTERM it exited "
            f"{s['outrider_exit']['code']} after {s['outrider_exit']['seconds']} s. Spans ended {s['spans']['ended']}, "
            f"exported {s['spans']['exported']}."]
    for w in s["outrider_log_warnings"]:
        out.append(f"* {w['level']} ×{w['count']}: {w['message']}")
    out += ["", "Access log by status: " + ", ".join(f"{k} ×{v}" for k, v in s["access_log_statuses"].items()) + "."]
    cpu = s["cpu"]
    out += ["", f"CPU: outrider {cpu['outrider_s']} s ({cpu['outrider_percent_of_one_cpu']} % of one CPU), "
            f"the load driver {cpu['driver_s']} s ({cpu['driver_percent_of_one_cpu']} %)."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
