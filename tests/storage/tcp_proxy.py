"""A loopback TCP proxy that cuts connections mid-transfer, to test retries against a real server.

Each connection is cut (both sides reset) once it has carried ``cut_up_after`` bytes towards the
server, or ``cut_down_after`` bytes back to the client, while ``cuts_left`` is above zero. The
client's keep-alive connections count their bytes across requests, so a cut lands in the middle of
whichever request crosses the line: with a budget below the part size, in the middle of a part.
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field

_CHUNK = 64 * 1024


@dataclass
class CutPolicy:
    cut_up_after: int | None = None  # bytes client -> server
    cut_down_after: int | None = None  # bytes server -> client
    cuts_left: float = 0  # float("inf") cuts every connection that crosses a line
    cuts: int = 0  # performed so far
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_cut(self) -> bool:
        with self.lock:
            if self.cuts_left <= 0:
                return False
            self.cuts_left -= 1
            self.cuts += 1
            return True


def _reset(sock: socket.socket) -> None:
    """Drop the connection with a reset (SO_LINGER 0). The shutdown wakes a pump thread blocked in
    recv on it: a bare close would not, and the socket would stay open until that recv returned."""
    for step in (
        lambda: sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)),
        lambda: sock.shutdown(socket.SHUT_RDWR),
        sock.close,
    ):
        try:
            step()
        except OSError:
            pass


class _Pair:
    """Both sockets of one proxied connection; closed when both directions are done, or at once
    (with a reset) when one of them is cut or fails."""

    def __init__(self, client: socket.socket, server: socket.socket):
        self.client, self.server = client, server
        self.failed = False
        self._done = 0
        self._lock = threading.Lock()

    def finish(self) -> bool:
        """True for the caller that should close the pair."""
        with self._lock:
            self._done += 1
            if self.failed and self._done == 1:
                self._done = 2  # the other pump still runs: closing now makes its recv fail and end
                return True
            return self._done == 2


class CuttingProxy:
    def __init__(self, upstream_host: str, upstream_port: int, policy: CutPolicy | None = None):
        self.upstream = (upstream_host, upstream_port)
        self.policy = policy or CutPolicy()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._sockets.update((client, server))
            pair = _Pair(client, server)
            for source, sink, limit in (
                (client, server, self.policy.cut_up_after),
                (server, client, self.policy.cut_down_after),
            ):
                threading.Thread(target=self._pump, args=(pair, source, sink, limit), daemon=True).start()

    def _pump(self, pair: _Pair, source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        carried = 0
        try:
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    sink.shutdown(socket.SHUT_WR)  # a clean half-close passes through
                    break
                if limit is not None and carried + len(data) > limit and self.policy.take_cut():
                    sink.sendall(data[: max(0, limit - carried)])
                    pair.failed = True
                    break
                sink.sendall(data)
                carried += len(data)
        except OSError:
            pair.failed = True
        if pair.finish():
            with self._lock:
                self._sockets.difference_update((pair.client, pair.server))
            for sock in (pair.client, pair.server):
                _reset(sock) if pair.failed else sock.close()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            socks, self._sockets = list(self._sockets), set()
        for sock in socks:
            _reset(sock)
