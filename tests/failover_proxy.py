"""A TCP proxy in front of several collectors, as a load balancer or a
Kubernetes Service puts "one address" in front of them: each connection goes
to the first backend that accepts it. A backend that dies takes its open
connections with it (the client sees them closed, unanswered); the next
connection goes to the next backend that listens."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Sequence

from msgtally.server import free_port


class FailoverProxy:
    """Listens on 127.0.0.1:`port` until `close`; `url` is its HTTP address."""

    def __init__(self, backends: Sequence[int]) -> None:
        self.backends = list(backends)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.served: list[int] = []  # the backend of each connection, in order
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="failover-proxy", daemon=True).start()

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for s in self._open:
                with contextlib.suppress(OSError):
                    s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _addr = self._listener.accept()
            except OSError:
                return  # closed
            upstream = self._connect()
            if upstream is None:
                client.close()
                continue
            with self._lock:
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _connect(self) -> socket.socket | None:
        for port in self.backends:
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=2)
            except OSError:
                continue
            upstream.settimeout(None)
            self.served.append(port)
            return upstream
        return None

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        """Bytes one way until either side ends; then both sockets are closed, so
        a client whose backend died sees its connection end."""
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
            with self._lock:
                self._open.discard(s)
