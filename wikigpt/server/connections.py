"""
How the server holds its connections: uvicorn's settings, taken from Settings, so that no
client can hold more than its share. At most max_connections at once (over it: 503), headers
under max_header_bytes (over: 400), a request's line and headers within header_timeout_s of
the connection opening or of its previous reply (else it is closed), a request body in at most
MAX_BODY_CHUNKS chunks (over: 413), idle keep-alive connections closed after keep_alive_s, a
kernel send buffer of send_buffer_bytes, and on SIGTERM, shutdown_timeout_s for open streams.
"""
import asyncio
import http
import json
import logging
import socket
import time

import h11

from wikigpt.server.checks import ApiError, Settings

# a closed connection whose unsent bytes did not drain at all in this long is dropped (its reader is
# gone); one still reading, however slowly, gets its reply whole (a Connection: close client, urllib's)
CLOSE_GRACE_S = 1.0
# the event loop's buffer of a connection's unsent bytes: past the high mark a streamed reply waits
# until it drains to the low one (a quarter), within the stall guard's stall_timeout_s (app.py). At
# asyncio's 64 KiB, 48 KiB had to drain in 10 s: a client reading steadily below ~5 KB/s was cut as
# stalled; at 8 KiB, 6 KiB: below ~600 B/s, slower than any reader of a stream's ~20 tokens/s
WRITE_BUFFER_HIGH = 8 << 10
# h11 parses each chunk of a chunked body in Python on the event loop (~10 us): a 1 MiB body in
# 1-byte chunks held it for 10 s. Clients send a Content-Length (the OpenAI SDKs, curl -d, fetch)
# or chunks of KBs (httpx: 64 KiB); 4,096 chunks are ~40 ms of parsing, 1 MiB in 256-byte chunks
MAX_BODY_CHUNKS = 4096
TOO_LARGE = http.HTTPStatus(413).phrase.encode()
# uvicorn's warnings about what one client sent, a line per request (a client could fill the log at
# will): each is answered (400, 503, the upgrade ignored), so one line a minute says how many there
# were (an operator still sees clients turned away at --max_connections); other warnings stay.
# Each is counted too, under its label: /metrics' wikigpt_protocol_warnings_total{warning} (an
# upgrade logs two lines, counted once; the request is then served, and counted by route as well)
PER_REQUEST_WARNINGS = {"Invalid HTTP request received.": "invalid_http", "Unsupported upgrade request.": "upgrade",
                        "No supported WebSocket library detected.": "",
                        "Exceeded concurrency limit.": "over_max_connections"}
WARNING_EVERY_S = 60.0


class ChunkCounting(h11.Connection):
    """h11's server side, counting the chunks of the request body it reads."""
    chunks = 0

    def next_event(self):
        event = super().next_event()
        if type(event) is h11.Request:
            self.chunks = 0
        elif type(event) is h11.Data and event.chunk_start:
            self.chunks += 1
            if self.chunks > MAX_BODY_CHUNKS:  # (uvicorn answers it through send_400_response)
                raise h11.RemoteProtocolError("too many chunks", 413)
        return event


def bounded(protocol: type, settings: Settings) -> type:
    """uvicorn's HTTP protocol with bounds of its own:
      - a connection whose next request has not fully arrived header_timeout_s after the
        connection opened or its previous reply ended is closed: uvicorn waits forever for a
        first request, so a client that trickles its headers (slowloris) or sends nothing would
        hold a connection as long as it liked;
      - a request body in more than MAX_BODY_CHUNKS chunks is a 413 (ChunkCounting);
      - its kernel send buffer is send_buffer_bytes, not the up to 4 MB Linux grows it to
        (tcp_wmem) for a client that does not read: what a stalled reader makes the server keep
        stays small, and the stall guard (app.py) sees it stall within seconds."""
    seconds = settings.header_timeout_s

    class Bounded(protocol):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.conn = ChunkCounting(h11.SERVER, settings.max_header_bytes)  # as uvicorn_config's
            self.header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, settings.send_buffer_bytes)
            transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
            close, loop = transport.close, self.loop  # (not self: the grace timer would hold the protocol)

            def close_or_abort():  # close() waits for the write buffer to drain: for a client that
                close()            # stopped reading (the stall guard's) it never does, and the
                if unsent := transport.get_write_buffer_size():  # connection would stay counted
                    loop.call_later(CLOSE_GRACE_S, abort_if_stuck, unsent)

            def abort_if_stuck(before: int):
                if unsent := transport.get_write_buffer_size():
                    if unsent < before:  # still draining: the client reads
                        loop.call_later(CLOSE_GRACE_S, abort_if_stuck, unsent)
                    else:
                        transport.abort()
            transport.close = close_or_abort
            self.arm_header_deadline()

        def connection_lost(self, exc):
            super().connection_lost(exc)
            # each timer would hold this closed connection (h11 state, transport, last request) until it
            # fires: memory grew with the connection rate. (uvicorn cancels its keep-alive one only on a
            # clean close: a client that leaves before its reply is sent resets the connection)
            if self.header_timer is not None:
                self.header_timer.cancel()
            self._unset_keepalive_if_required()

        def send_400_response(self, msg: str):
            # a request h11 could not read (in its line, headers or body), our reply not begun
            # (IDLE: it broke in the line or headers): answered, 400, and closed
            if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                if self.conn.chunks > MAX_BODY_CHUNKS:
                    self.send_413_response()
                else:
                    super().send_400_response(msg)
            else:  # our reply begun (or sent), no 400 can follow it: closed
                self.transport.close()
            if self.cycle is not None:  # so the app's own reply (a 404 that never read the body) goes nowhere:
                self.cycle.disconnected = True  # sent to h11 after the 400 it raised, a 500 and two tracebacks

        def send_413_response(self):
            body = json.dumps(ApiError(413, f"the request body came in over {MAX_BODY_CHUNKS:,} chunks: send it "
                                            "with a Content-Length, or in larger chunks").body()).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                       (b"connection", b"close")]
            reply = (h11.Response(status_code=413, headers=headers, reason=TOO_LARGE), h11.Data(data=body),
                     h11.EndOfMessage())
            self.transport.write(b"".join(map(self.conn.send, reply)))
            self.transport.close()

        def on_response_complete(self):
            finished = self.cycle
            super().on_response_complete()  # starts a pipelined request that already arrived, if any
            if self.cycle is finished:  # none did: the next one has header_timeout_s to arrive
                self.arm_header_deadline()  # (armed on a started one, a reply longer than that was cut)

        def arm_header_deadline(self):
            if self.header_timer is not None:
                self.header_timer.cancel()
            self.header_timer = self.loop.call_later(seconds, self.header_deadline, self.cycle)

        def header_deadline(self, cycle_then):
            if self.cycle is cycle_then and not self.transport.is_closing():  # no new request since
                self.transport.close()
    return Bounded


class PerRequestWarnings(logging.Filter):
    """Passes each of uvicorn's PER_REQUEST_WARNINGS at most once per WARNING_EVERY_S, with how
    many were dropped since the last one; every other record as it is. Counts them all (total)."""

    def __init__(self):
        super().__init__()
        self.last, self.dropped = {}, {}  # message -> when it was last let through, how many since
        self.total = dict.fromkeys(filter(None, PER_REQUEST_WARNINGS.values()), 0)  # label -> how many, since the start

    def filter(self, record):
        kind = next((w for w in PER_REQUEST_WARNINGS if isinstance(record.msg, str) and record.msg.startswith(w)), None)
        if kind is None:
            return True
        if PER_REQUEST_WARNINGS[kind]:
            self.total[PER_REQUEST_WARNINGS[kind]] += 1
        now = time.monotonic()
        if now - self.last.get(kind, -WARNING_EVERY_S) < WARNING_EVERY_S:
            self.dropped[kind] = self.dropped.get(kind, 0) + 1
            return False
        dropped, self.last[kind], self.dropped[kind] = self.dropped.get(kind, 0), now, 0
        if dropped:
            record.msg = f"{record.msg} (and {dropped:,} more since the last such line)"
        return True


QUIET = PerRequestWarnings()


class ShutdownCancels(logging.Filter):
    """At shutdown uvicorn gives open streams shutdown_timeout_s, says how many it cancels past
    that, then logged each one's cancellation as a traceback ("Exception in ASGI application",
    CancelledError: two screens per request on Ctrl-C). A cancelled request is no error: its line says it."""

    def filter(self, record):
        return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


CANCELS = ShutdownCancels()


class ProtocolWarnings:
    """A Prometheus collector of QUIET's counts: requests uvicorn answered before the app saw
    them (a 400 for unreadable HTTP, a 503 past --max_connections), and upgrades it ignored."""

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily("wikigpt_protocol_warnings", "requests uvicorn answered itself (invalid_http, "
                                     "over_max_connections) or served with a warning (upgrade), by the warning it logs "
                                     "once a minute for them, since the process started", labels=["warning"])
        for label, count in QUIET.total.items():
            family.add_metric([label], count)
        yield family


def uvicorn_config(app, settings: Settings):
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    config = uvicorn.Config(app, log_level="warning", http=bounded(H11Protocol, settings),
                            # uvicorn counts the new connection among those open: +1 serves max_connections
                            limit_concurrency=settings.max_connections + 1, timeout_keep_alive=settings.keep_alive_s,
                            h11_max_incomplete_event_size=settings.max_header_bytes,
                            timeout_graceful_shutdown=settings.shutdown_timeout_s)
    for quiet in (QUIET, CANCELS):  # after Config, which sets up uvicorn's loggers; each added once
        logging.getLogger("uvicorn.error").addFilter(quiet)
    return config


def serve_until_stopped(config, sock) -> int | None:
    """Serve on sock until a signal stops uvicorn; that signal (SIGINT, SIGTERM), or None.
    uvicorn re-raises it once it has shut down, but into the handler the process started with:
    where SIGINT was ignored then (a job a script started in the background, some supervisors),
    Ctrl-C or `kill -INT` shut the server down and it exited 0, as if nothing had stopped it."""
    import uvicorn

    stopped_by = []

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            stopped_by.append(sig)
            super().handle_exit(sig, frame)

    Server(config).run(sockets=[sock])
    return stopped_by[0] if stopped_by else None
