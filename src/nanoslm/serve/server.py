"""Running the app with uvicorn: in the foreground for `nanoslm serve`, or on a thread for tests and scripts."""

import contextlib
import logging
import socket
import threading
import time
from typing import Iterator

import uvicorn

from .app import create_app

LOOPBACK = ("127.0.0.1", "::1", "localhost")


class _Server(uvicorn.Server):
    """uvicorn's server, whose first Ctrl-C also ends every story in progress, so it stops at once."""

    def __init__(self, config: uvicorn.Config, app):
        super().__init__(config)
        self.nanoslm_app = app

    def handle_exit(self, sig, frame) -> None:
        self.nanoslm_app.state.scheduler.cancel_all()
        super().handle_exit(sig, frame)


def _config(app, log_level: str) -> uvicorn.Config:
    # timeout_graceful_shutdown: connections that are still open after it are closed
    return uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=3, lifespan="on",
                          access_log=log_level == "debug")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def serve_forever(registry, host: str, port: int, log_level: str = "info", on_ready=None) -> None:
    """Serve until Ctrl-C (SIGINT) or SIGTERM; `on_ready(url)` is called once the socket listens."""
    logging.getLogger("nanoslm.serve").setLevel(log_level.upper())
    app = create_app(registry)
    sock = bind(host, port)
    if on_ready:
        on_ready(url_of(sock))
    try:
        _Server(_config(app, log_level), app).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled, once it has shut down cleanly
        pass
    finally:
        sock.close()


@contextlib.contextmanager
def running(registry, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Iterator[str]:
    """Serve on a thread while the block runs; yields the base URL (a free port by default)."""
    app = create_app(registry)
    sock = bind(host, port)
    server = _Server(_config(app, log_level), app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="nanoslm-serve", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        yield url_of(sock)
    finally:
        app.state.scheduler.cancel_all()
        server.should_exit = True
        thread.join(15)
        sock.close()
