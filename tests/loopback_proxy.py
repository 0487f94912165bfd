"""A loopback TCP proxy that can cut the line: fault injection with the real server left running.

moto keeps its buckets in memory, so "S3 goes away" cannot be a restart; instead the client talks
to this proxy, and ``cut()`` resets every live connection and every new one until ``restore()``
(the listening port stays, so the endpoint URL never changes). Stdlib only; one accept thread
plus one pump thread per connection, all joined by ``close()``.

    with LoopbackProxy("127.0.0.1", moto_port) as proxy:
        store = S3Store("s3://bucket/x", endpoint_url=proxy.url)
        proxy.cut(); ...; proxy.restore()
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Self

_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST instead of FIN


def _reset(sock: socket.socket) -> None:
    """Drop a socket hard (RST); wakes any thread blocked on it. Never raises."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


@dataclass(eq=False)  # identity hash: links live in a set
class _Link:
    client: socket.socket
    upstream: socket.socket
    dead: threading.Event = field(default_factory=threading.Event)

    def kill(self) -> None:
        self.dead.set()
        _reset(self.client)
        _reset(self.upstream)


class LoopbackProxy:
    """Forwards 127.0.0.1:<free port> to target_host:target_port until cut.

    Counters (read any time): ``connections`` forwarded, ``rejected`` (reset on accept while cut),
    ``cuts`` (cut() calls), ``killed`` (live connections reset by cuts), ``bytes_up`` (client to
    target) and ``bytes_down``; ``live`` is the number of connections open now."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._threads: list[threading.Thread] = []
        self._cut = threading.Event()
        self._stop = threading.Event()
        self.connections = self.rejected = self.cuts = self.killed = self.bytes_up = self.bytes_down = 0
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"proxy-{self.port}", daemon=True)
        self._acceptor.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_cut(self) -> bool:
        return self._cut.is_set()

    @property
    def live(self) -> int:
        with self._lock:
            return len(self._links)

    def cut(self) -> int:
        """Reset every live connection and every new one until restore(); returns how many died."""
        with self._lock:
            self._cut.set()
            links = list(self._links)
            self.cuts += 1
            self.killed += len(links)
        for link in links:
            link.kill()
        return len(links)

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        """Stop accepting, reset everything, join every thread (raises if one hangs)."""
        self._stop.set()
        self._acceptor.join(timeout=5)
        self._listener.close()
        with self._lock:
            links, threads = list(self._links), list(self._threads)
        for link in links:
            link.kill()
        for t in threads:
            t.join(timeout=5)
        alive = [t.name for t in (self._acceptor, *threads) if t.is_alive()]
        if alive:
            raise RuntimeError(f"proxy threads did not stop: {alive}")

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not sel.select(timeout=0.05):
                    continue
                try:
                    client, _ = self._listener.accept()
                except OSError:
                    continue
                if self._cut.is_set():
                    self._drop(client)
                    continue
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    self._drop(client)
                    continue
                upstream.settimeout(None)
                link = _Link(client, upstream)
                t = threading.Thread(target=self._pump, args=(link,), name=f"proxy-{self.port}-link", daemon=True)
                with self._lock:
                    if self._cut.is_set():  # cut between accept and here
                        link.kill()
                    self._links.add(link)
                    self._threads = [x for x in self._threads if x.is_alive()] + [t]
                    self.connections += 1
                t.start()

    def _drop(self, client: socket.socket) -> None:
        with self._lock:
            self.rejected += 1
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
        client.close()  # RST: "connection reset by peer" on the client's first read or write

    def _pump(self, link: _Link) -> None:
        """Copy bytes both ways until either side closes or the link is killed."""
        other = {link.client: link.upstream, link.upstream: link.client}
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(link.client, selectors.EVENT_READ)
                sel.register(link.upstream, selectors.EVENT_READ)
                while not (link.dead.is_set() or self._stop.is_set()):
                    for key, _ in sel.select(timeout=0.05):
                        src: socket.socket = key.fileobj  # type: ignore[assignment]
                        data = src.recv(1 << 16)
                        if not data or link.dead.is_set():
                            return
                        other[src].sendall(data)
                        with self._lock:
                            if src is link.client:
                                self.bytes_up += len(data)
                            else:
                                self.bytes_down += len(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._links.discard(link)
            for s in (link.client, link.upstream):
                if link.dead.is_set():
                    _reset(s)
                s.close()
