"""``adarec serve --workers N``: N server processes answering on one listening socket.

The parent binds the socket, forks the workers and only supervises: each worker loads the
model itself (nothing of PyTorch's thread pools crosses a fork) and runs its own uvicorn
on the inherited socket; the kernel spreads connections over them. Per-user states must
then live in Redis (``EventService`` writes them with a check-and-set, so events of one
user answered by different workers never lose an update).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def check_workers(workers: int, state: str | None) -> None:
    """UserError unless ``workers`` >= 1 and, above 1, the states are in Redis."""
    from adarec.errors import UserError

    if workers < 1:
        raise UserError(f"--workers must be 1 or more; got {workers}")
    if workers > 1 and not (state or "").startswith(("redis://", "rediss://", "unix://")):
        raise UserError(
            f"--workers {workers} needs --state redis://host:port/db: the in-process store "
            "keeps each user's state in one process, so events of one user answered by "
            "different workers would lose updates"
        )


def run_workers(worker: Callable[[], None], workers: int) -> int:
    """Fork ``workers`` processes running ``worker()``; SIGINT/SIGTERM are passed on to
    them. Returns once all have exited: 0, or the first failing worker's exit code (the
    others are then stopped)."""
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # the worker: serve, then leave without running the parent's cleanup
            code = 0
            try:
                worker()
            except KeyboardInterrupt:
                pass
            except BaseException:  # noqa: BLE001 - reported, then the worker's exit code
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children.append(pid)

    def stop(sig: int, _frame: object = None) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, sig)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    failed = 0
    try:
        while children:
            pid, status = os.wait()
            if pid in children:
                children.remove(pid)
            code = os.waitstatus_to_exitcode(status)
            if code and not failed:
                failed = code if code > 0 else 1
                stop(signal.SIGTERM)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return failed
