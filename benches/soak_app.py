#!/usr/bin/env python3
"""The app behind outrider in benches/soak.sh: HTTP/1.1 (aiohttp).

  GET  /small           64-byte body
  GET  /big?n=BYTES     BYTES of the soak pattern, Content-Length framed,
                        written in 64 KiB pieces (so a slow reader holds
                        back-pressure all the way to the app)
  GET  /delay?ms=MS     64-byte body after MS milliseconds
  POST /upload          reads the whole body; answers "LENGTH SHA256HEX"
  POST /echo            the request body back
  GET  /ws              WebSocket echo (text and binary), closes when asked

Usage: soak_app.py --port PORT
"""

import argparse
import asyncio
import hashlib

from aiohttp import WSMsgType, web

from soak_common import PATTERN, SMALL

PIECE = 64 * 1024


async def small(_request):
    return web.Response(body=SMALL)


async def big(request):
    n = int(request.query.get("n", "1048576"))
    if not 0 <= n <= len(PATTERN):
        return web.Response(status=400, text="n out of range\n")
    resp = web.StreamResponse()
    resp.content_length = n
    await resp.prepare(request)
    view = memoryview(PATTERN)
    for off in range(0, n, PIECE):
        await resp.write(view[off : min(n, off + PIECE)])
    await resp.write_eof()
    return resp


async def delay(request):
    await asyncio.sleep(int(request.query.get("ms", "100")) / 1000)
    return web.Response(body=SMALL)


async def upload(request):
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    return web.Response(text=f"{size} {digest.hexdigest()}")


async def echo(request):
    return web.Response(body=await request.read())


async def ws(request):
    sock = web.WebSocketResponse(max_msg_size=1 << 20)
    await sock.prepare(request)
    async for msg in sock:
        if msg.type == WSMsgType.TEXT:
            await sock.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await sock.send_bytes(msg.data)
        else:
            break
    return sock


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    app = web.Application(client_max_size=64 << 20)
    app.add_routes(
        [
            web.get("/small", small),
            web.get("/big", big),
            web.get("/delay", delay),
            web.post("/upload", upload),
            web.post("/echo", echo),
            web.get("/ws", ws),
        ]
    )
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None, handle_signals=True)


if __name__ == "__main__":
    main()
