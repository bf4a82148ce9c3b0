"""Start an app with uvicorn on a free loopback port, in a thread, for real HTTP tests."""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI

from adarec.serve.app import bind_socket


@contextmanager
def running(app: FastAPI) -> Iterator[httpx.Client]:
    """An HTTP client of ``app`` served for real; the server stops on exit."""
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as http:
            yield http
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        assert not thread.is_alive()
