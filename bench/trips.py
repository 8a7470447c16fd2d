"""Round trips as the server counts them: a loopback TCP proxy that counts ReadyForQuery messages.

PostgreSQL sends one ReadyForQuery ('Z') after each simple query and after each Sync of the extended protocol, so the
count is the number of times a client waited for the server, whether it pipelines or not. Connection start-up (the
authentication exchange) ends with one as well; `connections` lets the caller subtract it.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from components.engine.connection import ConnectionSettings


class _Proxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.ready = 0  # ReadyForQuery messages seen
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        pending = b""
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                for s in (dst, src):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            if from_server:  # every server message is framed: type byte, int32 length (including itself)
                pending += data
                while len(pending) >= 5 and len(pending) >= 1 + int.from_bytes(pending[1:5], "big"):
                    if pending[:1] == b"Z":
                        with self._lock:
                            self.ready += 1
                    pending = pending[1 + int.from_bytes(pending[1:5], "big") :]
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._listener.close()


class RoundTrips:
    """What `settings` would do, through the proxy; `count()` is the round trips after connecting."""

    def __init__(self, proxy: _Proxy, settings: ConnectionSettings) -> None:
        self._proxy = proxy
        self.settings = dataclasses.replace(settings, host="127.0.0.1", port=proxy.port)

    def reset(self) -> None:
        self._proxy.ready = self._proxy.connections = 0

    def count(self) -> int:
        return self._proxy.ready - self._proxy.connections  # each connection's start-up ends with one ReadyForQuery


@contextmanager
def counting_round_trips(settings: ConnectionSettings) -> Iterator[RoundTrips]:
    proxy = _Proxy(settings.port)
    try:
        yield RoundTrips(proxy, settings)
    finally:
        proxy.close()
