"""The ingest app's HTTP server: cheroot, hardened against slow and body-first clients.

Two things plain cheroot does not do:

* **Slow clients.** A worker thread reading a request blocks until the client sends; a client that
  drips one byte every few seconds never hits the per-read timeout and holds its thread forever,
  and a handful of them stop the site. A watchdog cuts (shuts down) a connection whose request line
  and headers take longer than ``slow_client_s``, or whose body, after that long, arrives slower
  than ``MIN_BODY_BYTES_PER_S`` on average. Only time spent waiting for the client counts: an app
  that stops reading for a while (its storage slow or down) does not make its client slow.
* **Answers sent before the body is read.** A refusal (a bad frame, a name, a size) is answered as
  soon as the fault is known. Clients that send the whole body before reading (Python's
  http.client, urllib) only see that answer if the server reads what they still send: closing with
  unread data makes the kernel reset the connection and the client gets ``BrokenPipeError``. So a
  connection with an unread body is closed gracefully: the answer is flushed, writing is shut down,
  and what the client still sends is read and dropped until it closes, for at most ``LINGER_S``.
"""
from __future__ import annotations

import logging
import socket
import threading
import time

from cheroot import server as cheroot_server
from cheroot import wsgi

log = logging.getLogger("crowdsky.serving")

MIN_BODY_BYTES_PER_S = 4096        # below this on average a body counts as dripped (32 kbit/s)
KEEP_ALIVE_DRAIN_BYTES = 1 << 20   # a larger unread body closes the connection instead of being read
LINGER_S = 10.0                    # longest graceful close of a connection with an unread body
_LINGER_CHUNK = 256 * 1024


class _TimedReader:
    """The connection's reader, timing how long reads wait for the client (``waited``): the app
    may pause reading (storage slow or down) without the client counting as slow."""

    def __init__(self, reader):
        self._reader = reader
        self._waited = 0.0
        self._since: float | None = None

    def waited(self, now: float) -> float:
        return self._waited + (now - self._since if self._since is not None else 0.0)

    def _timed(self, method, *args):
        self._since = time.monotonic()
        try:
            return method(*args)
        finally:
            self._waited += time.monotonic() - self._since
            self._since = None

    def read(self, *args):
        return self._timed(self._reader.read, *args)

    def readline(self, *args):
        return self._timed(self._reader.readline, *args)

    def __getattr__(self, name):          # bytes_read, has_data, close, ...
        return getattr(self._reader, name)


class _Watchdog:
    """Cuts connections whose request arrives too slowly; checked twice a second."""

    def __init__(self, slow_client_s: float):
        self.slow_client_s = slow_client_s
        self._watched: dict = {}          # connection -> (request, waited at start, bytes read at start)
        self._lock = threading.Lock()
        thread = threading.Thread(target=self._run, name="slow-client-watchdog", daemon=True)
        thread.start()

    def watch(self, conn, request) -> None:
        with self._lock:
            self._watched[conn] = (request, conn.rfile.waited(time.monotonic()), conn.rfile.bytes_read)

    def unwatch(self, conn) -> None:
        with self._lock:
            self._watched.pop(conn, None)

    def _run(self) -> None:
        while True:
            time.sleep(0.5)
            try:
                self._check()
            except Exception:             # the watchdog must outlive any odd connection state
                log.exception("slow-client watchdog")

    def _check(self) -> None:
        now = time.monotonic()
        with self._lock:
            items = list(self._watched.items())
        for conn, (request, waited_at_start, bytes_at_start) in items:
            waited = conn.rfile.waited(now) - waited_at_start     # time this request waited on the client
            if waited <= self.slow_client_s:
                continue
            if not request.ready:
                why = f"its request headers took more than {self.slow_client_s:g} s"
            else:
                received = conn.rfile.bytes_read - bytes_at_start
                if getattr(request.rfile, "remaining", None) == 0 or received >= MIN_BODY_BYTES_PER_S * waited:
                    continue
                why = f"its body arrived at {received / waited:.0f} bytes/s"
            self.unwatch(conn)
            log.warning("cut a slow client %s: %s", getattr(conn, "remote_addr", "?"), why)
            try:
                conn.socket.shutdown(socket.SHUT_RDWR)   # the blocked read returns at once
            except OSError:
                pass


class _Request(cheroot_server.HTTPRequest):
    watchdog: _Watchdog | None = None

    def parse_request(self):
        if self.watchdog:
            self.watchdog.watch(self.conn, self)
        try:
            super().parse_request()
        finally:
            if not self.ready and self.watchdog:
                self.watchdog.unwatch(self.conn)

    def respond(self):
        try:
            super().respond()
        finally:
            if self.watchdog:
                self.watchdog.unwatch(self.conn)
            unread = getattr(self.rfile, "remaining", 0)
            self.conn.unread_body = bool(unread)
            if unread:
                self.close_connection = True

    def send_headers(self):
        # cheroot reads an unread body before answering on a kept-alive connection, however large:
        # a large one closes the connection instead (gracefully, see _Connection.close).
        if getattr(self.rfile, "remaining", 0) > KEEP_ALIVE_DRAIN_BYTES:
            self.close_connection = True
        super().send_headers()


class _Connection(cheroot_server.HTTPConnection):
    RequestHandlerClass = _Request
    unread_body = False

    def __init__(self, server, sock, makefile=cheroot_server.MakeFile):
        super().__init__(server, sock, makefile)
        self.rfile = _TimedReader(self.rfile)

    def close(self):
        if _Request.watchdog:
            _Request.watchdog.unwatch(self)
        if self.unread_body:
            self._linger()
        super().close()

    def _linger(self) -> None:
        """Shut down writing (the client sees the answer end), then read and drop what it still
        sends until it closes, for at most LINGER_S; only then close for good."""
        try:
            self.wfile.flush()
            self.socket.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_S
            while (left := deadline - time.monotonic()) > 0:
                self.socket.settimeout(min(left, 1.0))
                try:
                    if not self.socket.recv(_LINGER_CHUNK):
                        return
                except socket.timeout:
                    continue
        except OSError:
            pass


def make_server(bind: tuple[str, int], app, *, threads: int, slow_client_s: float) -> wsgi.Server:
    """A cheroot WSGI server for *app* with the slow-client watchdog and graceful closes."""
    server = wsgi.Server(bind, app, numthreads=threads, max=-1, request_queue_size=64, shutdown_timeout=3)
    server.ConnectionClass = _Connection
    _Request.watchdog = _Watchdog(slow_client_s)
    return server
