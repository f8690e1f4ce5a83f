"""A TCP proxy on 127.0.0.1 in front of a real server (the machine's PostgreSQL), for outage tests.

    with TcpProxy(5432) as proxy:          # clients connect to 127.0.0.1:proxy.port
        proxy.stop()                       # refuses new connections and cuts every open one: "the database is down"
        proxy.start()                      # same port again: "the database is back"
        proxy.cut_when(b"session_renamed") # the next client message holding those bytes is not delivered: its
                                           # connection is cut there ("the database went away mid-transaction")
        proxy.cut_after(b"document_uploaded")  # that message is delivered, and the connection cut once the server
                                           # has answered it to the end (ReadyForQuery), the answer not passed on:
                                           # "the COMMIT succeeded, its answer was lost"
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
        self._cut_after: bytes | None = None
        self._stop_after_cut = False
        self._muted: dict[socket.socket, threading.Event] = {}  # server sockets whose answers are dropped
        self._deliver_cut = False
        self._swallow: set[socket.socket] = set()  # server ends whose next answer is dropped (deliver=True)
        self.cuts = 0  # connections cut by `cut_when` or `cut_after`

    def cut_when(self, pattern: bytes, deliver: bool = False) -> None:
        """Once: cut the connection whose next client-to-server data holds `pattern`, before delivering it; with
        `deliver`, the data is delivered and the connection is cut when the server answers it, without passing
        the answer on: the server has carried it out (a COMMIT: committed), the client never learns it."""
        self._cut_pattern, self._deliver_cut = pattern, deliver

    def cut_after(self, pattern: bytes, then_stop: bool = False) -> None:
        """Once: deliver the next client-to-server data holding `pattern` (and what the client sends after it),
        drop everything the server answers from then on, and cut the connection when the server has sent
        ReadyForQuery (PostgreSQL's end of a Sync: a pipeline's implicit transaction is committed by then).
        `then_stop`: stop the whole proxy right after that cut ("the database went away after the commit")."""
        self._cut_after, self._stop_after_cut = pattern, then_stop

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
                    continue
                if to_server and self._cut_after_match(data):
                    answered = threading.Event()
                    with self._lock:
                        self._muted[sink] = answered
                    sink.sendall(data)
                    self._forward_until(source, sink, answered)
                    if self._stop_after_cut:
                        # here, before this connection closes: from another thread the client could see the
                        # cut and look through a pooled connection the stop had not closed yet (a flaky 200)
                        self.stop()
                    return
                muted = self._muted.get(source) if not to_server else None
                if muted is not None:
                    if b"Z\x00\x00\x00\x05" in data:  # ReadyForQuery: the server has answered to the end
                        muted.set()
                    continue
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
                self._muted.pop(source if not to_server else sink, None)
                self._swallow -= {source, sink}

    def _cut(self, data: bytes) -> bool:
        with self._lock:
            if self._cut_pattern is None or self._cut_pattern not in data:
                return False
            self._cut_pattern = None
            self.cuts += 1
            return True

    @staticmethod
    def _forward_until(source: socket.socket, sink: socket.socket, answered: threading.Event) -> None:
        """Pass on what the client sends (the rest of its pipeline, the Sync) until the server has answered."""
        source.settimeout(0.02)
        deadline = 200  # 4 s
        while not answered.is_set() and deadline:
            deadline -= 1
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            sink.sendall(data)

    def _cut_after_match(self, data: bytes) -> bool:
        with self._lock:
            if self._cut_after is None or self._cut_after not in data:
                return False
            self._cut_after = None
            self.cuts += 1
            return True

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
