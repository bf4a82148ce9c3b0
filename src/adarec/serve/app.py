"""The HTTP service (FastAPI): ``POST /recommend`` (stateless, whole histories),
``POST /events`` (stateful, one event per call), ``POST /users/{id}/reset``,
``GET /users/{id}``, ``GET /health``, ``GET /model``.

Every bad request ends in a 4xx whose ``detail`` is one line naming the field, e.g.
``"k: must be an integer between 1 and 3416; got 0"``. Bodies must be JSON
(``Content-Type: application/json``, else 415) of at most ``max_body`` bytes (else 413).
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

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
    ValidationError,
    model_validator,
)

from adarec.errors import UserError
from adarec.serve.events import EventService, MissingState
from adarec.serve.predictor import Predictor
from adarec.serve.state_store import StoreUnavailable

MAX_BATCH = 1024  # histories per request
MAX_HISTORY = 10_000  # items per history (only the most recent max_len are scored)
# A full batch of MAX_BATCH histories of 200 ids of 10 characters is ~2.5 MB.
MAX_BODY = 4 * 1024 * 1024
# Bodies above this are parsed, validated and scored in a worker thread: a big batch then
# does not hold up the small requests queued behind it on the event loop.
INLINE_BODY = 64 * 1024

Body = TypeVar("Body", bound=BaseModel)


class RequestError(Exception):
    """A request refused before it reaches the model: an HTTP status and one line."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


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


class EventRequest(BaseModel):
    """One event of one user; ``history`` only to rebuild a missing state."""

    model_config = ConfigDict(extra="forbid")

    user: str = Field(min_length=1, max_length=256, description="the user's id")
    item: ItemId = Field(description="the item of the event")
    k: StrictInt = Field(10, description="how many items to recommend")
    history: History | None = Field(
        None, description="the user's items before this event, oldest first (empty: new user)"
    )


def _field_errors(errors: list[dict[str, Any]]) -> str:
    """Pydantic's errors as one line: ``field: message; field: message``."""
    parts = []
    for error in errors:
        if error.get("type") == "json_invalid":
            reason = error.get("ctx", {}).get("error", "")
            parts.append(f"request body: not valid JSON ({reason})")
            continue
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{'.'.join(loc) or 'request body'}: {message}")
    return "; ".join(parts)


async def read_body(request: Request, max_body: int) -> bytes:
    """The raw JSON body; 415 unless it is declared JSON, 413 past ``max_body`` bytes."""
    declared = request.headers.get("content-type", "")
    media = declared.split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise RequestError(
            415, f"Content-Type must be application/json; got {declared or 'no Content-Type'}"
        )
    too_large = RequestError(413, f"request body: at most {max_body} bytes")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_body:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def parse(model: type[Body], data: bytes) -> Body:
    """The validated request; RequestError 422 naming the fields otherwise."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise RequestError(422, _field_errors(exc.errors())) from None


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of an endpoint that reads its body itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def create_app(
    predictor: Predictor, events: EventService | None = None, max_body: int = MAX_BODY
) -> FastAPI:
    """The service answering with ``predictor``; ``/events`` only with an ``events`` service."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if events is not None:
            await events.store.close()

    app = FastAPI(
        title="adarec",
        description="Next-item recommendations of an adarec model.",
        lifespan=lifespan,
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _field_errors(exc.errors())})

    @app.exception_handler(RequestError)
    async def _refused(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.detail})

    @app.exception_handler(MissingState)
    async def _missing_state(request: Request, exc: MissingState) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        store = await events.stats() if events is not None else None
        ok = store is None or store["status"] == "ok"
        return {
            "status": "ok" if ok else "degraded",
            "model": predictor.info.get("model"),
            "backend": predictor.info.get("backend"),
            "store": store,
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
    # Large bodies (big batches) go to a worker thread instead: see INLINE_BODY.
    def answer(data: bytes) -> Any:
        body = parse(RecommendRequest, data)
        if body.histories is not None and len(body.histories) > MAX_BATCH:
            raise RequestError(
                413,
                f"histories: at most {MAX_BATCH} histories per request; got {len(body.histories)}",
            )
        if body.history is not None:
            return predictor.recommend(body.history, body.k, body.exclude_seen)
        results = predictor.recommend_batch(body.histories, body.k, body.exclude_seen)
        return {"results": results}

    @app.post("/recommend", openapi_extra=_schema(RecommendRequest))
    async def recommend(request: Request) -> Any:
        data = await read_body(request, max_body)
        if len(data) > INLINE_BODY:
            return await asyncio.to_thread(answer, data)
        return answer(data)

    def need_events() -> EventService:
        if events is None:
            raise RequestError(
                404, "this server keeps no per-user state (start it with --state memory or redis)"
            )
        return events

    @app.post("/events", openapi_extra=_schema(EventRequest))
    async def event(request: Request) -> Any:
        service = need_events()
        body = parse(EventRequest, await read_body(request, max_body))
        return await service.event(body.user, body.item, body.k, body.history)

    @app.post("/users/{user:path}/reset")
    async def reset(user: str) -> Any:
        return await need_events().reset(user)

    @app.get("/users/{user:path}")
    async def user_state(user: str) -> Any:
        return await need_events().user(user)

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
