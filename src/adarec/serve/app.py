"""The HTTP service: ``POST /recommend``, ``GET /health``, ``GET /model`` (FastAPI).

Every bad request ends in a 4xx whose ``detail`` is one line naming the field, e.g.
``"k: must be an integer between 1 and 3416; got 0"``.
"""

from __future__ import annotations

import signal
import socket
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    model_validator,
)

from adarec.errors import UserError
from adarec.serve.predictor import Predictor

MAX_BATCH = 1024  # histories per request
MAX_HISTORY = 10_000  # items per history (only the most recent max_len are scored)


def _item_id(value: Any) -> str | int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"an item id must be a string or an integer; got {value!r}")
    return value


ItemId = Annotated[str | int, PlainValidator(_item_id, json_schema_input_type=str | int)]
History = Annotated[list[ItemId], Field(max_length=MAX_HISTORY)]


class RecommendRequest(BaseModel):
    """One history or a batch of histories; exactly one of the two."""

    model_config = ConfigDict(extra="forbid")

    history: History | None = Field(None, description="item ids, oldest first")
    histories: list[History] | None = Field(None, min_length=1, description="a batch of histories")
    k: StrictInt = Field(10, description="how many items to recommend")
    exclude_seen: StrictBool = Field(False, description="never recommend a history's items")

    @model_validator(mode="after")
    def _one_input(self) -> RecommendRequest:
        if (self.history is None) == (self.histories is None):
            raise ValueError(
                "give exactly one of 'history' (a list of item ids) "
                "or 'histories' (a list of such lists)"
            )
        return self


def _field_errors(exc: RequestValidationError) -> str:
    """Pydantic's errors as one line: ``field: message; field: message``."""
    parts = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            reason = error.get("ctx", {}).get("error", "")
            parts.append(f"request body: not valid JSON ({reason} at character {error['loc'][-1]})")
            continue
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{'.'.join(loc) or 'request body'}: {message}")
    return "; ".join(parts)


def create_app(predictor: Predictor) -> FastAPI:
    """The service answering with ``predictor``."""
    app = FastAPI(title="adarec", description="Next-item recommendations of an adarec model.")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _field_errors(exc)})

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": predictor.info.get("model"),
            "backend": predictor.info.get("backend"),
        }

    @app.get("/model")
    def model() -> dict[str, Any]:
        # The export's provenance holds local file paths: not for clients.
        return {key: value for key, value in predictor.info.items() if key != "source"}

    # Scoring runs on the event loop (an async endpoint), not in FastAPI's thread pool: it
    # is CPU-bound and takes milliseconds, torch already parallelises inside each op, and
    # the thread hop cost ~0.25 ms per request and tripled p99 in the load test (ml-1m
    # student, one core). Concurrent requests queue and are answered one after another;
    # scale out with more server processes.
    @app.post("/recommend")
    async def recommend(body: RecommendRequest) -> Any:
        if body.histories is not None and len(body.histories) > MAX_BATCH:
            return JSONResponse(
                status_code=413,
                content={
                    "detail": f"histories: at most {MAX_BATCH} histories per request; "
                    f"got {len(body.histories)}"
                },
            )
        if body.history is not None:
            return predictor.recommend(body.history, body.k, body.exclude_seen)
        results = predictor.recommend_batch(body.histories, body.k, body.exclude_seen)
        return {"results": results}

    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready socket on ``host:port`` (port 0: a free one), or a UserError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP (not the default 0): asyncio only sets TCP_NODELAY on the
    # connections of such sockets, and without it every response waits ~40 ms (Nagle's
    # algorithm against delayed ACKs).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(app: FastAPI, sock: socket.socket, access_log: bool = True) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully and return normally."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, log_level="info", access_log=access_log, timeout_graceful_shutdown=10)
    )
    # uvicorn re-raises the signal that stopped it once it has shut down; these no-op
    # handlers absorb it, so a stop by Ctrl-C or SIGTERM is a normal, successful exit.
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in handled}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
