#!/usr/bin/env python3
"""Helpers for benches/run.sh: parsing wrk's output, the measurements that
need a client of their own, and the final report.

Subcommands (each prints JSON on stdout unless noted):
  record         parse one wrk output, add CPU figures, append a JSON line
  mibps          MiB/s of a wrk run against /1m
  idle-conns     open N idle keep-alive connections, report the server's RSS
  start-to-ready start outrider N times, time process start -> /readyz 200
  readyz-latency N sequential /readyz requests (new connection each), p50/p99
  report         aggregate records + extras -> results JSON, markdown table
  grpc-record    parse one h2load output (benches/grpc.sh), check it, add CPU figures
  grpc-report    aggregate grpc-record's records -> results JSON, markdown table

Only the standard library is used.
"""

import argparse
import datetime
import json
import os
import re
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import time

MIB = 1024 * 1024

# --------------------------------------------------------------------------
# wrk output


_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def _to_us(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"unparsable wrk time {text!r}")
    return float(m.group(1)) * _UNITS_US[m.group(2)]


def parse_wrk(text):
    """The numbers of one `wrk --latency` run (wrk 4.x, no Lua script)."""
    out = {"latency_us": {}, "socket_errors": {}, "non_2xx_3xx": 0}
    for line in text.splitlines():
        s = line.strip()
        m = re.fullmatch(r"(50|75|90|99(?:\.\d+)?)%\s+(\S+)", s)
        if m:
            out["latency_us"]["p" + m.group(1).replace(".", "")] = _to_us(m.group(2))
            continue
        m = re.fullmatch(r"(\d+) requests in ([0-9.]+\w+), ([0-9.]+)(\w+) read", s)
        if m:
            out["requests"] = int(m.group(1))
            out["duration_s"] = _to_us(m.group(2)) / 1e6
            mult = {"B": 1, "KB": 1024, "MB": MIB, "GB": 1024 * MIB, "TB": MIB * MIB}[m.group(4)]
            out["bytes_read"] = float(m.group(3)) * mult
            continue
        m = re.fullmatch(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", s)
        if m:
            out["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
            continue
        m = re.fullmatch(r"Non-2xx or 3xx responses: (\d+)", s)
        if m:
            out["non_2xx_3xx"] = int(m.group(1))
            continue
        m = re.fullmatch(r"Requests/sec:\s+([0-9.]+)", s)
        if m:
            out["rps"] = float(m.group(1))
            continue
        m = re.fullmatch(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)\s+\S+", s)
        if m and "avg" not in out["latency_us"]:
            out["latency_us"]["avg"] = _to_us(m.group(1))
            out["latency_us"]["max"] = _to_us(m.group(3))
    for key in ("requests", "rps"):
        if key not in out:
            raise ValueError(f"wrk output has no {key!r}:\n{text}")
    return out


def cpu_per_request(before, after, clk_tck, n):
    """CPU seconds between two "utime stime" readings (clock ticks), and per
    request for n requests."""
    if not before or not after:
        return None
    (u0, s0), (u1, s1) = (map(int, before.split()), map(int, after.split()))
    user, system = (u1 - u0) / clk_tck, (s1 - s0) / clk_tck
    n = n or None
    return {
        "cpu_s": user + system,
        "user_s": user,
        "system_s": system,
        "cpu_us_per_req": (user + system) * 1e6 / n if n else None,
        "user_us_per_req": user * 1e6 / n if n else None,
        "system_us_per_req": system * 1e6 / n if n else None,
    }


def add_cpu(rec, a, n):
    """The proxy's and the upstream's CPU per request, and how busy the
    servers' CPU was with other processes, from run.sh's (or grpc.sh's)
    before/after readings, into rec."""
    rec["proxy_cpu"] = cpu_per_request(a.proxy_cpu_before, a.proxy_cpu_after, a.clk_tck, n)
    rec["upstream_cpu"] = cpu_per_request(a.upstream_cpu_before, a.upstream_cpu_after, a.clk_tck, n)
    if a.sys_before and a.sys_after:
        b0, st0, t0, o0 = map(int, a.sys_before.split())
        b1, st1, t1, o1 = map(int, a.sys_after.split())
        total = max(1, t1 - t0)
        rec["server_cpu"] = {
            "busy": round((b1 - b0) / total, 3),
            "benchmark_servers": round((o1 - o0) / total, 3),
            "foreign": round(max(0, (b1 - b0) - (o1 - o0)) / total, 3),
            "steal": round((st1 - st0) / total, 3),
        }
        if rec["server_cpu"]["foreign"] > 0.05 or rec["server_cpu"]["steal"] > 0.05:
            rec["warnings"].append(
                f"CPU {a.server_cpu} was {rec['server_cpu']['foreign'] * 100:.0f}% busy with other processes "
                f"and {rec['server_cpu']['steal'] * 100:.0f}% stolen during the run"
            )


def cmd_record(a):
    with open(a.wrk) as f:
        w = parse_wrk(f.read())
    rec = {"load": a.load, "target": a.target, "round": a.round, "url": a.url, **w, "warnings": []}
    if w["requests"] and w["socket_errors"] and sum(w["socket_errors"].values()) > w["requests"] // 1000:
        rec["warnings"].append("socket errors above 0.1% of requests")
    if w["non_2xx_3xx"]:
        rec["warnings"].append(f"{w['non_2xx_3xx']} responses were not 2xx/3xx")

    add_cpu(rec, a, w["requests"])
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    lat = w["latency_us"]
    cpu_txt = f", proxy CPU {rec['proxy_cpu']['cpu_us_per_req']:.2f} us/req" if rec["proxy_cpu"] else ""
    print(
        f"  {a.load:>4} {a.target:<13} round {a.round}: {w['rps']:>10.0f} req/s, "
        f"p50 {lat.get('p50', 0):.0f} us, p99 {lat.get('p99', 0):.0f} us{cpu_txt}"
        + "".join(f"\n    WARNING: {x}" for x in rec["warnings"]),
        file=sys.stderr,
    )


def cmd_mibps(a):
    """MiB/s of a wrk run against /1m: every response carries 1 MiB of body."""
    with open(a.wrk) as f:
        w = parse_wrk(f.read())
    print(json.dumps(round(w["rps"], 1)))
    print(f"  1m   {a.target:<13} {w['rps']:8.0f} MiB/s", file=sys.stderr)


# --------------------------------------------------------------------------
# h2load output (benches/grpc.sh)


def _h2load_bytes(text):
    """The exact count h2load prints in parentheses: "1.23MB (1289748)"."""
    return int(re.search(r"\((\d+)\)", text).group(1))


def parse_h2load(text):
    """The numbers of one h2load run (nghttp2 1.4x-1.6x): calls, their
    outcome, bytes of DATA payload received, and the per-call time (h2load
    prints min, max, mean and sd, no percentiles)."""
    out = {}
    for line in text.splitlines():
        s = line.strip()
        m = re.match(r"finished in ([0-9.]+)(\w+), ([0-9.]+) req/s", s)
        if m:
            out["duration_s"] = _to_us(m.group(1) + m.group(2)) / 1e6
            out["rps"] = float(m.group(3))
            continue
        m = re.match(
            r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", s
        )
        if m:
            keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
            out["calls"] = dict(zip(keys, map(int, m.groups())))
            continue
        m = re.match(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", s)
        if m:
            out["status"] = dict(zip(("2xx", "3xx", "4xx", "5xx"), map(int, m.groups())))
            continue
        if s.startswith("traffic:"):
            parts = s[len("traffic:") :].split(",")
            out["traffic_bytes"] = _h2load_bytes(parts[0])
            out["header_bytes"] = _h2load_bytes(parts[1])
            out["data_bytes"] = _h2load_bytes(parts[-1])
            continue
        m = re.match(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", s)
        if m:
            out["latency_us"] = dict(zip(("min", "max", "mean", "sd"), map(_to_us, m.groups())))
    for key in ("rps", "calls", "status", "data_bytes"):
        if key not in out:
            raise ValueError(f"h2load output has no {key!r}:\n{text}")
    out["requests"] = out["calls"]["succeeded"]
    return out


def cmd_grpc_record(a):
    with open(a.h2load) as f:
        h = parse_h2load(f.read())
    rec = {"load": a.load, "target": a.target, "round": a.round, "url": a.url, **h, "warnings": []}
    c = h["calls"]
    # h2load counts a call as succeeded on HTTP status 200, which is also
    # what a gRPC error carries. Each successful call here brings one
    # response message of a.response_bytes (its 5-byte frame header
    # included); an error is trailers-only, without one. So the DATA bytes
    # received say whether every call that h2load counted got its answer.
    # Calls still in flight when a timed run stops (started, not done) may
    # have brought their status or message too: at most that many more.
    errors = []
    if c["failed"] or c["errored"] or c["timeout"]:
        errors.append(f"{c['failed']} failed, {c['errored']} errored, {c['timeout']} timed out")
    st = h["status"]
    # A call in flight at the stop may have had its 200 counted already.
    if c["succeeded"] != c["done"] or st["3xx"] + st["4xx"] + st["5xx"] or not c["done"] <= st["2xx"] <= c["started"]:
        errors.append(f"{c['done']} done, {c['succeeded']} succeeded; status codes {st}")
    if not c["done"] * a.response_bytes <= h["data_bytes"] <= c["started"] * a.response_bytes:
        errors.append(
            f"{h['data_bytes']} bytes of response messages for {c['done']} calls "
            f"(expected {a.response_bytes} each): some calls got no message (gRPC errors?)"
        )
    if not c["succeeded"]:
        errors.append("no call succeeded")
    add_cpu(rec, a, c["succeeded"])
    rec["errors"] = errors
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    cpu_txt = f", proxy CPU {rec['proxy_cpu']['cpu_us_per_req']:.2f} us/call" if rec["proxy_cpu"] and c["succeeded"] else ""
    lat = h.get("latency_us", {})
    print(
        f"  {a.load:>7} {a.target:<9} round {a.round}: {h['rps']:>9.0f} calls/s, mean {lat.get('mean', 0):.0f} us{cpu_txt}"
        + "".join(f"\n    WARNING: {x}" for x in rec["warnings"])
        + "".join(f"\n    ERROR: {x}" for x in errors),
        file=sys.stderr,
    )
    if errors:
        sys.exit(1)


GRPC_TARGETS = ["direct", "nginx", "outrider"]


def summarize_grpc(records, loads):
    summary = {}
    for load in loads:
        summary[load] = {}
        for t in GRPC_TARGETS:
            rs = [r for r in records if r["load"] == load and r["target"] == t]
            if not rs:
                continue
            rps = [r["rps"] for r in rs]
            cpu = [r["proxy_cpu"]["cpu_us_per_req"] for r in rs if r.get("proxy_cpu")]
            up = [r["upstream_cpu"]["cpu_us_per_req"] for r in rs if r.get("upstream_cpu")]
            summary[load][t] = {
                "rounds": len(rs),
                "calls_per_s": _mean(rps),
                "calls_per_s_rounds": [round(x) for x in rps],
                "mean_latency_us": _mean([r.get("latency_us", {}).get("mean") for r in rs]),
                "max_latency_us": max((r.get("latency_us", {}).get("max", 0) for r in rs), default=None),
                "proxy_cpu_us_per_call": _mean(cpu) if cpu else None,
                "proxy_user_us_per_call": _mean([r["proxy_cpu"]["user_us_per_req"] for r in rs if r.get("proxy_cpu")]) if cpu else None,
                "proxy_system_us_per_call": _mean([r["proxy_cpu"]["system_us_per_req"] for r in rs if r.get("proxy_cpu")]) if cpu else None,
                "proxy_cpu_us_per_call_rounds": [round(x, 2) for x in cpu],
                "app_cpu_us_per_call": _mean(up) if up else None,
                "calls": sum(r["requests"] for r in rs),
                "warnings": [f"round {r['round']}: {x}" for r in rs for x in r.get("warnings", [])],
                "foreign_cpu_max": max((r["server_cpu"]["foreign"] for r in rs if r.get("server_cpu")), default=None),
            }
        d, n = summary[load].get("direct"), summary[load].get("nginx")
        for t, x in summary[load].items():
            x["calls_per_s_vs_direct"] = x["calls_per_s"] / d["calls_per_s"] if d else None
            x["calls_per_s_vs_nginx"] = x["calls_per_s"] / n["calls_per_s"] if n else None
            x["cpu_vs_nginx"] = (
                x["proxy_cpu_us_per_call"] / n["proxy_cpu_us_per_call"]
                if n and n["proxy_cpu_us_per_call"] and x["proxy_cpu_us_per_call"] is not None
                else None
            )
    return summary


def _spread(xs, fmt):
    return "" if len(xs) < 2 else f" ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def markdown_grpc(summary, meta):
    out = []
    if meta.get("mode") == "quick":
        out.append("_Quick mode: one round of 2-second runs. A smoke test of the plumbing; the numbers are indicative only._\n")
    for load, spec in meta["loads"].items():
        s = summary.get(load)
        if not s:
            continue
        out.append(f"#### {spec['title']}\n")
        out.append(
            "| target | calls/s (rounds' range) | mean latency | calls/s vs direct | calls/s vs nginx "
            "| CPU µs/call (user + sys) (rounds' range) | CPU/call vs nginx |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|")
        for t in GRPC_TARGETS:
            if t not in s:
                continue
            r = s[t]
            cpu = r["proxy_cpu_us_per_call"]
            if t == "direct" or cpu is None:
                cpu_txt = f"({_f(r['app_cpu_us_per_call'], '{:.2f}')} app)"
            else:
                cpu_txt = (
                    f"{cpu:.2f} ({r['proxy_user_us_per_call']:.1f} user + {r['proxy_system_us_per_call']:.1f} sys)"
                    + _spread(r["proxy_cpu_us_per_call_rounds"], "{:.2f}")
                )
            out.append(
                f"| {t} | {r['calls_per_s']:.0f}{_spread(r['calls_per_s_rounds'], '{:.0f}')} | {_lat(r['mean_latency_us'])} | "
                f"{_ratio(r['calls_per_s_vs_direct'])} | {_ratio(r['calls_per_s_vs_nginx'])} | {cpu_txt} | "
                f"{_ratio(r['cpu_vs_nginx']) if t != 'direct' else '–'} |"
            )
        out.append("")
    warnings = [f"{load} {t}, {w}" for load in summary for t, r in summary[load].items() for w in r["warnings"]]
    busy = meta.get("machine_busy_before")
    if busy is not None and busy > 0.10:
        warnings.insert(0, f"the machine was {busy * 100:.0f}% busy before the load started: results are noisy")
    if warnings:
        out.append("Warnings:\n")
        out.extend(f"* {w}" for w in warnings[:12])
        if len(warnings) > 12:
            out.append(f"* ... and {len(warnings) - 12} more (see the JSON)")
        out.append("")
    return "\n".join(out)


def cmd_grpc_report(a):
    with open(a.records) as f:
        records = [json.loads(line) for line in f if line.strip()]
    with open(a.meta) as f:
        meta = json.load(f)
    summary = summarize_grpc(records, list(meta["loads"]))
    result = {
        "schema": 1,
        "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **meta,
        "summary": summary,
        "runs": records,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.json_out)), exist_ok=True)
    with open(a.json_out, "w") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)
        f.write("\n")
    md = markdown_grpc(summary, meta)
    if a.md_out:
        with open(a.md_out, "w") as f:
            f.write(md + "\n")
    print(md)


# --------------------------------------------------------------------------
# process memory


def proc_status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_kib(pids):
    return sum(proc_status_kib(p, "VmRSS") for p in pids)


# --------------------------------------------------------------------------
# idle keep-alive connections


def _read_response(sock, deadline):
    """Reads one HTTP/1.1 response with a Content-Length; returns the status."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while len(body) < length:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the body ended")
        body += chunk
    return status


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cmd_idle_conns(a):
    limit = raise_nofile(65536)
    if limit < a.n + 64:
        sys.exit(f"idle-conns: open-file limit {limit} is below {a.n} connections (hard limit too low)")
    pids = [int(p) for p in a.pid]
    before = rss_kib(pids)
    socks, errors = [], 0
    request = f"GET {a.path} HTTP/1.1\r\nHost: 127.0.0.1:{a.port}\r\n\r\n".encode()
    t0 = time.monotonic()
    deadline = t0 + a.timeout
    for _ in range(a.n):
        if time.monotonic() > deadline:
            break
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(5)
            s.connect(("127.0.0.1", a.port))
            s.sendall(request)
            if _read_response(s, time.monotonic() + 5) != 200:
                errors += 1
            socks.append(s)
        except OSError:
            errors += 1
            s.close()
    opened_s = time.monotonic() - t0
    time.sleep(a.settle)
    # A closed connection turns readable (EOF); an idle open one does not.
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLIN)
    open_now = len(socks) - len(poller.poll(0))
    during = rss_kib(pids)
    for s in socks:
        s.close()
    time.sleep(a.settle)
    after = rss_kib(pids)
    returned = None
    if a.returned_after > 0:
        time.sleep(max(0.0, a.returned_after - a.settle))
        returned = rss_kib(pids)
    print(
        json.dumps(
            {
                "requested": a.n,
                "opened": len(socks),
                "open_at_measurement": open_now,
                "errors": errors,
                "open_seconds": round(opened_s, 3),
                "rss_before_kib": before,
                "rss_with_conns_kib": during,
                "rss_after_close_kib": after,
                "rss_returned_after_s": a.returned_after if returned is not None else None,
                "rss_returned_kib": returned,
                "kib_per_conn": round((during - before) / max(1, open_now), 3),
            }
        )
    )


# --------------------------------------------------------------------------
# readiness


def http_status(port, path, timeout=1.0):
    """Status of `GET path` on a new connection, or None if it failed."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            return _read_response(s, time.monotonic() + timeout)
    except (OSError, ValueError, IndexError):
        return None


def pct(values, p):
    """Nearest-rank percentile."""
    if not values:
        return None
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(-(-p * len(v) // 100)) - 1))
    return v[k]


def cmd_start_to_ready(a):
    env = dict(os.environ)
    env.update(kv.split("=", 1) for kv in a.env)
    admin_port = int(env["OUTRIDER_ADMIN_LISTEN"].rsplit(":", 1)[1])
    times, failures = [], []
    for i in range(a.runs):
        if http_status(admin_port, "/readyz", 0.2) is not None:
            sys.exit(f"start-to-ready: something already answers on admin port {admin_port}")
        t0 = time.monotonic()
        p = subprocess.Popen(
            [a.bin],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=(lambda: os.sched_setaffinity(0, {a.cpu})) if a.cpu is not None else None,
        )
        ready_ms = None
        while time.monotonic() - t0 < a.timeout:
            if p.poll() is not None:
                break
            if http_status(admin_port, "/readyz", 0.5) == 200:
                ready_ms = (time.monotonic() - t0) * 1e3
                break
            time.sleep(0.001)
        p.send_signal(signal.SIGTERM)
        try:
            _, err = p.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        if ready_ms is None:
            failures.append({"run": i, "exit": p.returncode, "stderr": err.decode(errors="replace")[-2000:]})
        else:
            times.append(ready_ms)
    out = {"runs": a.runs, "ms": [round(t, 2) for t in times], "failures": failures}
    if times:
        out.update(median_ms=round(statistics.median(times), 2), min_ms=round(min(times), 2), max_ms=round(max(times), 2))
    print(json.dumps(out))
    if failures:
        print(f"start-to-ready: {len(failures)} of {a.runs} starts never became ready: {failures[0]}", file=sys.stderr)


def cmd_readyz_latency(a):
    times, bad = [], 0
    t_end = time.monotonic() + a.deadline
    while len(times) + bad < a.n and time.monotonic() < t_end:
        t0 = time.perf_counter()
        status = http_status(a.port, a.path, 2.0)
        dt = (time.perf_counter() - t0) * 1e3
        if status == 200:
            times.append(dt)
        else:
            bad += 1
    out = {"requested": a.n, "ok": len(times), "failed": bad}
    if times:
        out.update(
            p50_ms=round(pct(times, 50), 3),
            p90_ms=round(pct(times, 90), 3),
            p99_ms=round(pct(times, 99), 3),
            max_ms=round(max(times), 3),
        )
    print(json.dumps(out))


# --------------------------------------------------------------------------
# report

TARGETS = ["direct", "nginx", "outrider-off", "outrider-full"]
LOADS = ["c64", "c1"]


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def summarize(records):
    summary = {}
    for load in LOADS:
        summary[load] = {}
        for t in TARGETS:
            rs = [r for r in records if r["load"] == load and r["target"] == t]
            if not rs:
                continue
            rps = [r["rps"] for r in rs]
            proxy_cpu = [r["proxy_cpu"]["cpu_us_per_req"] for r in rs if r.get("proxy_cpu")]
            proxy_user = [r["proxy_cpu"]["user_us_per_req"] for r in rs if r.get("proxy_cpu")]
            proxy_sys = [r["proxy_cpu"]["system_us_per_req"] for r in rs if r.get("proxy_cpu")]
            up_cpu = [r["upstream_cpu"]["cpu_us_per_req"] for r in rs if r.get("upstream_cpu")]
            summary[load][t] = {
                "rounds": len(rs),
                "rps": _mean(rps),
                "rps_min": min(rps),
                "rps_max": max(rps),
                "p50_us": _mean([r["latency_us"].get("p50") for r in rs]),
                "p90_us": _mean([r["latency_us"].get("p90") for r in rs]),
                "p99_us": _mean([r["latency_us"].get("p99") for r in rs]),
                "p999_us": None,
                "proxy_cpu_us_per_req": _mean(proxy_cpu) if proxy_cpu else None,
                "proxy_user_us_per_req": _mean(proxy_user) if proxy_user else None,
                "proxy_system_us_per_req": _mean(proxy_sys) if proxy_sys else None,
                "upstream_cpu_us_per_req": _mean(up_cpu) if up_cpu else None,
                "requests": sum(r["requests"] for r in rs),
                "warnings": [f"round {r['round']}: {x}" for r in rs for x in r.get("warnings", [])],
                "foreign_cpu_max": max((r["server_cpu"]["foreign"] for r in rs if r.get("server_cpu")), default=None),
            }
        d = summary[load].get("direct")
        n = summary[load].get("nginx")
        for t, s in summary[load].items():
            s["rps_vs_direct"] = s["rps"] / d["rps"] if d else None
            s["rps_vs_nginx"] = s["rps"] / n["rps"] if n else None
            s["cpu_vs_nginx"] = (
                s["proxy_cpu_us_per_req"] / n["proxy_cpu_us_per_req"]
                if n and n["proxy_cpu_us_per_req"] and s["proxy_cpu_us_per_req"] is not None
                else None
            )
            s["added_p50_us"] = s["p50_us"] - d["p50_us"] if d else None
            s["added_p99_us"] = s["p99_us"] - d["p99_us"] if d else None
    return summary


def _f(x, fmt="{:.0f}", none="–"):
    return none if x is None else fmt.format(x)


def _lat(us):
    if us is None:
        return "–"
    return f"{us:.0f} µs" if us < 1000 else f"{us / 1000:.2f} ms"


def _signed_lat(us):
    if us is None:
        return "–"
    return ("+" if us >= 0 else "−") + _lat(abs(us))


def _ratio(x):
    return _f(x, "{:.2f}×")


def _mib(kib):
    return _f(None if kib is None else kib / 1024, "{:.1f} MiB")


def evaluate(summary, extras):
    """The issue's targets: (name, goal, measured, met, margin text)."""
    rows = []
    c64, c1 = summary.get("c64", {}), summary.get("c1", {})
    off, full, ngx = c64.get("outrider-off"), c64.get("outrider-full"), c64.get("nginx")

    def row(name, goal, measured, ok, miss):
        rows.append({"target": name, "goal": goal, "measured": measured, "met": ok, "miss": None if ok else miss})

    if off and ngx and off["proxy_cpu_us_per_req"] and ngx["proxy_cpu_us_per_req"]:
        r = off["proxy_cpu_us_per_req"] / ngx["proxy_cpu_us_per_req"]
        row(
            "telemetry off: CPU per request ≤ nginx (c64)",
            "≤ 1.00× nginx",
            f"{off['proxy_cpu_us_per_req']:.2f} vs {ngx['proxy_cpu_us_per_req']:.2f} µs/req ({r:.2f}×)",
            r <= 1.0,
            f"{(r - 1) * 100:.0f}% more CPU per request than nginx",
        )
        r = off["rps"] / ngx["rps"]
        row(
            "telemetry off: throughput ≥ nginx (c64)",
            "≥ 1.00× nginx",
            f"{off['rps']:.0f} vs {ngx['rps']:.0f} req/s ({r:.2f}×)",
            r >= 1.0,
            f"{(1 - r) * 100:.0f}% fewer requests/s than nginx",
        )
    o1, n1 = c1.get("outrider-off"), c1.get("nginx")
    if o1 and n1 and o1.get("added_p99_us") is not None:
        a_o, a_n = o1["added_p99_us"], n1["added_p99_us"]
        row(
            "telemetry off: added p99 at 1 connection ≤ nginx",
            "≤ nginx's added p99",
            f"{a_o:+.0f} µs vs {a_n:+.0f} µs over direct",
            a_o <= a_n,
            f"{a_o - a_n:.0f} µs more added p99 than nginx",
        )
    if off and full and off["proxy_cpu_us_per_req"] and full["proxy_cpu_us_per_req"]:
        r = full["proxy_cpu_us_per_req"] / off["proxy_cpu_us_per_req"]
        row(
            "tracing+metrics on: CPU per request ≤ 1.15× telemetry off (c64)",
            "≤ 1.15×",
            f"{full['proxy_cpu_us_per_req']:.2f} vs {off['proxy_cpu_us_per_req']:.2f} µs/req ({r:.2f}×)",
            r <= 1.15,
            f"{r:.2f}× instead of ≤ 1.15× ({(r / 1.15 - 1) * 100:.0f}% over the limit)",
        )
    for key, label in (("outrider-off", "telemetry off"), ("outrider-full", "telemetry on")):
        kib = extras.get("idle_rss_kib", {}).get(key)
        if kib is not None:
            row(
                f"idle RSS ≤ 10 MiB ({label})",
                "≤ 10 MiB",
                _mib(kib),
                kib <= 10 * 1024,
                f"{(kib - 10 * 1024) / 1024:.1f} MiB over",
            )
    for key, label in (("outrider-off", "telemetry off"), ("outrider-full", "telemetry on")):
        ic = extras.get("idle_conns", {}).get(key)
        if ic:
            kib = ic["rss_with_conns_kib"]
            n = ic["open_at_measurement"]
            full_n = ic["requested"]
            if full_n < 10000:  # quick mode: extrapolate, do not judge
                est = ic["rss_before_kib"] + ic["kib_per_conn"] * 10000
                rows.append(
                    {
                        "target": f"RSS with 10000 idle connections ≤ 64 MiB ({label})",
                        "goal": "≤ 64 MiB",
                        "measured": f"{_mib(kib)} with {n} open; ~{_mib(est)} extrapolated to 10000",
                        "met": None,
                        "miss": f"not judged: only {full_n} connections opened (quick mode)",
                    }
                )
                continue
            row(
                f"RSS with {full_n} idle connections ≤ 64 MiB ({label})",
                "≤ 64 MiB",
                f"{_mib(kib)} ({n} open)",
                kib <= 64 * 1024 and n == full_n,
                f"{(kib - 64 * 1024) / 1024:.1f} MiB over" if kib > 64 * 1024 else f"only {n} of {full_n} connections stayed open",
            )
    size = extras.get("binary", {}).get("stripped_bytes")
    if size is not None:
        row("stripped binary ≤ 12 MiB", "≤ 12 MiB", f"{size / MIB:.2f} MiB", size <= 12 * MIB, f"{(size - 12 * MIB) / MIB:.2f} MiB over")
    for key, label in (("outrider-off", "telemetry off"), ("outrider-full", "telemetry on")):
        st = extras.get("start_to_ready", {}).get(key)
        if st and st.get("median_ms") is not None:
            row(
                f"start to ready ≤ 50 ms ({label}; median of {len(st['ms'])})",
                "≤ 50 ms",
                f"{st['median_ms']:.1f} ms (max {st['max_ms']:.1f})",
                st["median_ms"] <= 50 and not st["failures"],
                f"{st['median_ms'] - 50:.1f} ms over" if st["median_ms"] > 50 else "some starts never became ready",
            )
    return rows


def markdown(summary, extras, targets, mode="full"):
    out = []
    if mode == "quick":
        out.append("_Quick mode: one round of 2-second runs. A smoke test; the numbers and verdicts are indicative only._\n")
    peak = extras.get("peak_rss_kib", {})
    for load, title in (("c64", "64 connections (`wrk -t1 -c64`)"), ("c1", "1 connection (`wrk -t1 -c1`)")):
        s = summary.get(load)
        if not s:
            continue
        out.append(f"#### {title}\n")
        extra_col = " added p99 |" if load == "c1" else ""
        out.append(
            "| target | req/s | p50 | p99 |" + extra_col + " req/s vs direct | req/s vs nginx | CPU µs/req (user + sys) | CPU/req vs nginx | peak RSS |"
        )
        out.append("|---|---:|---:|---:|" + ("---:|" if load == "c1" else "") + "---:|---:|---:|---:|---:|")
        for t in TARGETS:
            if t not in s:
                continue
            r = s[t]
            cpu = r["proxy_cpu_us_per_req"]
            cpu_txt = (
                f"{cpu:.2f} ({r['proxy_user_us_per_req']:.1f} user + {r['proxy_system_us_per_req']:.1f} sys)"
                if t != "direct" and cpu is not None
                else f"({_f(r['upstream_cpu_us_per_req'], '{:.2f}')} upstream)"
            )
            added = ""
            if load == "c1":
                added = " – |" if t == "direct" else f" {_signed_lat(r['added_p99_us'])} |"
            out.append(
                f"| {t} | {r['rps']:.0f} | {_lat(r['p50_us'])} | {_lat(r['p99_us'])} |{added} "
                f"{_ratio(r['rps_vs_direct'])} | {_ratio(r['rps_vs_nginx'])} | {cpu_txt} | "
                f"{_ratio(r['cpu_vs_nginx']) if t != 'direct' else '–'} | {_mib(peak.get(t)) if t != 'direct' else '–'} |"
            )
        out.append("")
    warnings = [f"{load} {t}, {w}" for load in LOADS for t, r in summary.get(load, {}).items() for w in r["warnings"]]
    busy = extras.get("machine_busy_before")
    if busy is not None and busy > 0.10:
        warnings.insert(0, f"the machine was {busy * 100:.0f}% busy before the load started: results are noisy")
    if warnings:
        out.append("Warnings:\n")
        out.extend(f"* {w}" for w in warnings[:12])
        if len(warnings) > 12:
            out.append(f"* ... and {len(warnings) - 12} more (see the JSON)")
        out.append("")
    out.append("#### Other measurements\n")
    out.append("| measurement | nginx | outrider-off | outrider-full |")
    out.append("|---|---:|---:|---:|")
    tp = extras.get("throughput_1m", {})
    if tp:
        out.append(
            f"| 1 MiB bodies, `wrk -c8` (direct: {_f(tp.get('direct'), '{:.0f}')} MiB/s) | "
            + " | ".join(_f(tp.get(t), "{:.0f} MiB/s") for t in TARGETS[1:])
            + " |"
        )
    idle = extras.get("idle_rss_kib", {})
    out.append("| idle RSS after start | " + " | ".join(_mib(idle.get(t)) for t in TARGETS[1:]) + " |")
    ic = extras.get("idle_conns", {})
    if ic:
        n = next(iter(ic.values()))["requested"]
        cells = []
        for t in TARGETS[1:]:
            c = ic.get(t)
            cells.append("–" if not c else f"{_mib(c['rss_with_conns_kib'])} ({c['kib_per_conn']:.1f} KiB/conn, {c['open_at_measurement']} open)")
        out.append(f"| RSS with {n} idle keep-alive connections | " + " | ".join(cells) + " |")
        after = next((c.get("rss_returned_after_s") for c in ic.values() if c.get("rss_returned_kib") is not None), None)
        if after:
            cells = ["–" if not ic.get(t) or ic[t].get("rss_returned_kib") is None else _mib(ic[t]["rss_returned_kib"]) for t in TARGETS[1:]]
            out.append(f"| RSS {after:.0f} s after those connections closed | " + " | ".join(cells) + " |")
    def outrider_row(label, results, key, fmt):
        # A row measured on the outrider targets only ("–" for nginx).
        if results:
            cells = ["–"] + ["–" if not results.get(t) or results[t].get(key) is None else fmt(results[t]) for t in TARGETS[2:]]
            out.append(f"| {label} | " + " | ".join(cells) + " |")

    outrider_row(
        "process start → `/readyz` 200 (median)",
        extras.get("start_to_ready", {}),
        "median_ms",
        lambda r: f"{r['median_ms']:.1f} ms (max {r['max_ms']:.1f})",
    )
    outrider_row(
        "`/readyz` latency during c64 load (new connection each)",
        extras.get("readyz_under_load", {}),
        "p99_ms",
        lambda r: f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms",
    )
    b = extras.get("binary", {})
    if b:
        out.append(f"| binary size (stripped) | – | {b['stripped_bytes'] / MIB:.2f} MiB | same binary |")
    out.append("")
    if targets:
        out.append("#### Targets\n")
        out.append("| target | measured | met? |")
        out.append("|---|---|---|")
        for t in targets:
            verdict = t["miss"] if t["met"] is None else "yes" if t["met"] else "no: " + t["miss"]
            out.append(f"| {t['target']} | {t['measured']} | {verdict} |")
        out.append("")
    return "\n".join(out)


def cmd_report(a):
    with open(a.records) as f:
        records = [json.loads(line) for line in f if line.strip()]
    extras = {}
    for name in sorted(os.listdir(a.extras)):
        if name.endswith(".json"):
            with open(os.path.join(a.extras, name)) as f:
                text = f.read().strip()
            if text:
                extras[name[:-5]] = json.loads(text)
    # extras/<group>.<key>.json -> extras[group][key]
    grouped = {}
    for name, value in extras.items():
        group, _, key = name.partition(".")
        if key:
            grouped.setdefault(group, {})[key] = value
        else:
            grouped[group] = value
    with open(a.meta) as f:
        meta = json.load(f)
    summary = summarize(records)
    targets = evaluate(summary, grouped)
    result = {
        "schema": 1,
        "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **meta,
        "p999": None,
        "p999_note": "not measured: wrk 4 prints only p50/p75/p90/p99 without a Lua script, and wrk2 is not packaged in Debian",
        "summary": summary,
        "extras": grouped,
        "targets": targets,
        "runs": records,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.json_out)), exist_ok=True)
    with open(a.json_out, "w") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)
        f.write("\n")
    md = markdown(summary, grouped, targets, meta.get("mode", "full"))
    if a.md_out:
        with open(a.md_out, "w") as f:
            f.write(md + "\n")
    print(md)


# --------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description="helpers for benches/run.sh")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("record")
    r.add_argument("--out", required=True)
    r.add_argument("--wrk", required=True)
    r.add_argument("--load", required=True)
    r.add_argument("--target", required=True)
    r.add_argument("--round", type=int, required=True)
    r.add_argument("--url", required=True)
    r.add_argument("--clk-tck", type=int, required=True)
    r.add_argument("--sys-before", help="CPU busy, steal, total and servers' ticks (run.sh sys_snapshot)")
    r.add_argument("--sys-after")
    r.add_argument("--server-cpu", type=int, default=0)
    for k in ("proxy", "upstream"):
        r.add_argument(f"--{k}-cpu-before")
        r.add_argument(f"--{k}-cpu-after")
    r.set_defaults(fn=cmd_record)

    r = sub.add_parser("grpc-record")
    r.add_argument("--out", required=True)
    r.add_argument("--h2load", required=True)
    r.add_argument("--load", required=True)
    r.add_argument("--target", required=True)
    r.add_argument("--round", type=int, required=True)
    r.add_argument("--url", required=True)
    r.add_argument("--response-bytes", type=int, required=True, help="DATA bytes of one successful call's response")
    r.add_argument("--clk-tck", type=int, required=True)
    r.add_argument("--sys-before")
    r.add_argument("--sys-after")
    r.add_argument("--server-cpu", type=int, default=0)
    for k in ("proxy", "upstream"):
        r.add_argument(f"--{k}-cpu-before")
        r.add_argument(f"--{k}-cpu-after")
    r.set_defaults(fn=cmd_grpc_record)

    r = sub.add_parser("grpc-report")
    r.add_argument("--records", required=True)
    r.add_argument("--meta", required=True)
    r.add_argument("--json-out", required=True)
    r.add_argument("--md-out")
    r.set_defaults(fn=cmd_grpc_report)

    r = sub.add_parser("mibps")
    r.add_argument("--wrk", required=True)
    r.add_argument("--target", required=True)
    r.set_defaults(fn=cmd_mibps)

    r = sub.add_parser("idle-conns")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--pid", action="append", required=True, help="server process(es) whose RSS is summed")
    r.add_argument("--n", type=int, default=10000)
    r.add_argument("--path", default="/")
    r.add_argument("--settle", type=float, default=0.5)
    r.add_argument("--timeout", type=float, default=60)
    r.add_argument("--returned-after", type=float, default=0, help="also read the RSS this many seconds after closing (0: no)")
    r.set_defaults(fn=cmd_idle_conns)

    r = sub.add_parser("start-to-ready")
    r.add_argument("--bin", required=True)
    r.add_argument("--env", action="append", default=[], help="VAR=VALUE for outrider")
    r.add_argument("--runs", type=int, default=5)
    r.add_argument("--cpu", type=int)
    r.add_argument("--timeout", type=float, default=10)
    r.set_defaults(fn=cmd_start_to_ready)

    r = sub.add_parser("readyz-latency")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--path", default="/readyz")
    r.add_argument("--n", type=int, default=500)
    r.add_argument("--deadline", type=float, default=30)
    r.set_defaults(fn=cmd_readyz_latency)

    r = sub.add_parser("report")
    r.add_argument("--records", required=True)
    r.add_argument("--extras", required=True, help="directory of <group>[.<key>].json files")
    r.add_argument("--meta", required=True)
    r.add_argument("--json-out", required=True)
    r.add_argument("--md-out")
    r.set_defaults(fn=cmd_report)

    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
