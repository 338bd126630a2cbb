"""
How the server holds its connections: uvicorn's settings, taken from Settings, so that no
client can hold more than its share. At most max_connections at once (over it: 503), headers
under max_header_bytes (over: 400), a request's line and headers within header_timeout_s of
the connection opening or of its previous reply (else it is closed), idle keep-alive
connections closed after keep_alive_s, a kernel send buffer of send_buffer_bytes, and on
SIGTERM, shutdown_timeout_s for open streams.
"""
import socket

import h11

from wikigpt.server.checks import Settings

# a closed connection whose bytes are still unsent after this long is dropped (its reader is gone)
CLOSE_GRACE_S = 1.0


def bounded(protocol: type, settings: Settings) -> type:
    """uvicorn's HTTP protocol with two bounds of its own:
      - a connection whose next request has not fully arrived header_timeout_s after the
        connection opened or its previous reply ended is closed: uvicorn waits forever for a
        first request, so a client that trickles its headers (slowloris) or sends nothing would
        hold a connection as long as it liked;
      - its kernel send buffer is send_buffer_bytes, not the up to 4 MB Linux grows it to
        (tcp_wmem) for a client that does not read: what a stalled reader makes the server keep
        stays small, and the stall guard (app.py) sees it stall within seconds."""
    seconds = settings.header_timeout_s

    class Bounded(protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, settings.send_buffer_bytes)
            close = transport.close

            def close_or_abort():  # close() waits for the write buffer to drain: for a client that
                close()            # stopped reading (the stall guard's) it never does, and the
                self.loop.call_later(CLOSE_GRACE_S, abort_if_stuck)  # connection would stay counted

            def abort_if_stuck():
                if transport.get_write_buffer_size():
                    transport.abort()
            transport.close = close_or_abort
            self.arm_header_deadline()

        def send_400_response(self, msg: str):
            if self.conn.our_state is h11.SEND_RESPONSE:  # (our reply begun, no 400 can follow it: closed)
                super().send_400_response(msg)  # a body that broke HTTP mid-request: answered and closed,
            else:
                self.transport.close()
            if self.cycle is not None:  # so the app's own reply (a 404 that never read the body) goes nowhere:
                self.cycle.disconnected = True  # sent to h11 after the 400 it raised, a 500 and two tracebacks

        def on_response_complete(self):
            finished = self.cycle
            super().on_response_complete()  # starts a pipelined request that already arrived, if any
            if self.cycle is finished:  # none did: the next one has header_timeout_s to arrive
                self.arm_header_deadline()  # (armed on a started one, a reply longer than that was cut)

        def arm_header_deadline(self):
            self.loop.call_later(seconds, self.header_deadline, self.cycle)

        def header_deadline(self, cycle_then):
            if self.cycle is cycle_then and not self.transport.is_closing():  # no new request since
                self.transport.close()
    return Bounded


def uvicorn_config(app, settings: Settings):
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    return uvicorn.Config(app, log_level="warning", http=bounded(H11Protocol, settings),
                          # uvicorn counts the new connection among those open: +1 serves max_connections
                          limit_concurrency=settings.max_connections + 1, timeout_keep_alive=settings.keep_alive_s,
                          h11_max_incomplete_event_size=settings.max_header_bytes,
                          timeout_graceful_shutdown=settings.shutdown_timeout_s)
