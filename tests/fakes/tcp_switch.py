"""A TCP forwarder that can be switched off, to take a dependency (the S3
bucket) down and bring it back during a test. Down: new connections are
closed at once and open ones are cut, as when a server goes away."""

from __future__ import annotations

import socket
import threading


class TcpSwitch:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.up = True
        self.lock = threading.Lock()
        self.open: set[socket.socket] = set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def down(self) -> None:
        with self.lock:
            self.up = False
            for s in list(self.open):
                _close(s)
            self.open.clear()

    def restore(self) -> None:
        with self.lock:
            self.up = True

    def close(self) -> None:
        self.down()
        _close(self.listener)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if not self.up:
                    _close(client)
                    continue
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    _close(client)
                    continue
                upstream.settimeout(None)  # (5 s was for the connect: an idle link stays up)
                self.open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                _close(s)
            with self.lock:
                self.open -= {src, dst}


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
