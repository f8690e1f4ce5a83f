"""A TCP proxy on 127.0.0.1 in front of a real server (the machine's PostgreSQL), for outage tests.

    with TcpProxy(5432) as proxy:          # clients connect to 127.0.0.1:proxy.port
        proxy.stop()                       # refuses new connections and cuts every open one: "the database is down"
        proxy.start()                      # same port again: "the database is back"
        proxy.cut_when(b"session_renamed") # the next client message holding those bytes is not delivered: its
                                           # connection is cut there ("the database went away mid-transaction")
        proxy.cut_when(b"COMMIT", deliver=True)  # delivered, and the connection cut before the server's answer
                                           # can come back ("the commit happened, its answer was lost")

Stopping the proxy is how a test takes the database away; the shared PostgreSQL server itself is never touched.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from typing import Self

from tests.integration_tests.live_server import free_port


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._cut_pattern: bytes | None = None
        self._deliver_cut = False
        self._swallow: set[socket.socket] = set()  # server ends whose next answer is dropped (deliver=True)
        self.cuts = 0  # connections cut by `cut_when`

    def cut_when(self, pattern: bytes, deliver: bool = False) -> None:
        """Once: cut the connection whose next client-to-server data holds `pattern`, before delivering it; with
        `deliver`, the data is delivered and the connection is cut when the server answers it, without passing
        the answer on: the server has carried it out (a COMMIT: committed), the client never learns it."""
        self._cut_pattern, self._deliver_cut = pattern, deliver

    def start(self) -> Self:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the listening socket and every connection through it."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # stopped meanwhile
                    client.close()
                    upstream.close()
                    return
                self._sockets |= {client, upstream}
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, to_server: bool = False) -> None:
        try:
            while data := source.recv(65536):
                if not to_server and source in self._swallow:
                    return  # the server's answer to a delivered cut: dropped, and both ends closed
                if to_server and self._cut(data):
                    if not self._deliver_cut:
                        return  # the finally clause closes both ends
                    # delivered, and the server's answer to it (sent once it has carried it out) is not
                    self._swallow.add(sink)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            with self._lock:
                self._sockets -= {source, sink}
                self._swallow -= {source, sink}

    def _cut(self, data: bytes) -> bool:
        with self._lock:
            if self._cut_pattern is None or self._cut_pattern not in data:
                return False
            self._cut_pattern = None
            self.cuts += 1
            return True

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
