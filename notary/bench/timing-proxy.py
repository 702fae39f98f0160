#!/usr/bin/env python3
"""A TCP forwarder that measures how long a trust server keeps its clients waiting.

Usage: timing-proxy.py LISTEN_PORT BACKEND_PORT LOG_FILE

It sits between the docker CLI and one trust server on loopback and does not
terminate TLS: it only copies bytes, so the client still talks TLS + HTTP/1.1
to the real server. The Go client on the other side never pipelines, so on one
connection the traffic alternates between client turns and server turns.  A
"server turn" starts when client bytes arrive after the server last spoke (or
when the connection opens) and ends with the last server byte before the
client speaks again; it covers TLS handshake flights and request/response
exchanges alike, i.e. everything the client spends waiting on the server.

Every finished server turn is appended to LOG_FILE as one line:
    <start_ns> <first_response_byte_ns> <last_response_byte_ns> <bytes_up> <bytes_down>
(time.monotonic_ns() clock). Turns that got no server bytes (e.g. the
client's close_notify) are not logged.
"""
import asyncio
import sys
import time

LISTEN, BACKEND, LOG = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
log = open(LOG, "a", buffering=1)


class Conn:
    def __init__(self):
        self.start = None  # first client byte of the current server turn
        self.first = None  # first server byte of the turn
        self.last = None  # last server byte so far
        self.up = 0
        self.down = 0

    def client_bytes(self, n, now):
        if self.first is not None:  # the server had answered: that turn is over
            self.flush()
        if self.start is None:
            self.start = now
        self.up += n

    def server_bytes(self, n, now):
        if self.start is None:  # server spoke first (not expected for TLS)
            self.start = now
        if self.first is None:
            self.first = now
        self.last = now
        self.down += n

    def flush(self):
        if self.first is not None:
            log.write(f"{self.start} {self.first} {self.last} {self.up} {self.down}\n")
        self.start = self.first = self.last = None
        self.up = self.down = 0


async def pump(reader, writer, on_bytes):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            on_bytes(len(data), time.monotonic_ns())
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except OSError:
            pass


async def handle(creader, cwriter):
    conn = Conn()
    conn.start = time.monotonic_ns()  # the connect itself is part of the first turn
    try:
        sreader, swriter = await asyncio.open_connection("127.0.0.1", BACKEND)
    except OSError:
        cwriter.close()
        return
    await asyncio.gather(
        pump(creader, swriter, conn.client_bytes),
        pump(sreader, cwriter, conn.server_bytes),
    )
    conn.flush()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", LISTEN)
    async with server:
        await server.serve_forever()


asyncio.run(main())
