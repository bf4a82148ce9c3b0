"""The HTTP service (FastAPI): ``POST /recommend`` (stateless, whole histories),
``POST /events`` (stateful, one event per call), ``POST /users/{id}/reset``,
``GET /users/{id}``, ``GET /health``, ``GET /model``.

Every bad request ends in a 4xx whose ``detail`` is one line naming the field, e.g.
``"k: must be an integer between 1 and 3416; got 0"``. Bodies must be JSON
(``Content-Type: application/json``, else 415) of at most ``max_body`` bytes (else 413).

The two hot endpoints, ``POST /events`` and ``POST /recommend``, are answered before
FastAPI's routing (``Service.__call__``): its routing, dependency solving and response
path (``jsonable_encoder``, ``JSONResponse``) cost ~70 us per request, about as much as the
rest of the service together once the model step is compiled. The request is still
validated by the same pydantic models (1.5 us) and errors keep their status and message;
the answer is encoded once to bytes. FastAPI serves everything else (and documents all).
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
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
# A hot endpoint: the raw request body to the encoded JSON answer (errors raised).
Handler = Callable[[bytes], Awaitable[bytes]]
ASGIScope = dict[str, Any]
ASGIReceive = Callable[[], Awaitable[dict[str, Any]]]
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]
JSON = b"application/json"


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
    events: StrictInt | None = Field(
        None,
        ge=0,
        description=(
            "without 'history': the 'events' of the user's last answer; a stored state "
            "that holds another count (e.g. restored from an older snapshot) answers 409"
        ),
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


def encode_json(content: Any) -> bytes:
    """``content`` as compact UTF-8 JSON, as Starlette's ``JSONResponse`` renders it."""
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


def check_headers(declared: str, length: str, max_body: int) -> None:
    """415 unless the body is declared JSON; 413 when its declared length is past
    ``max_body`` bytes."""
    media = declared.split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise RequestError(
            415, f"Content-Type must be application/json; got {declared or 'no Content-Type'}"
        )
    if length.isdigit() and int(length) > max_body:
        raise body_too_large(max_body)


def body_too_large(max_body: int) -> RequestError:
    return RequestError(413, f"request body: at most {max_body} bytes")


async def read_body(request: Request, max_body: int) -> bytes:
    """The raw JSON body; 415 unless it is declared JSON, 413 past ``max_body`` bytes."""
    headers = request.headers
    check_headers(headers.get("content-type", ""), headers.get("content-length", ""), max_body)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body:
            raise body_too_large(max_body)
        chunks.append(chunk)
    return b"".join(chunks)


def error_status(exc: Exception) -> tuple[int, str] | None:
    """The status and one-line detail of an error a client caused (None: a server bug)."""
    if isinstance(exc, RequestError):
        return exc.status, exc.detail
    if isinstance(exc, MissingState):
        return 409, str(exc)
    if isinstance(exc, StoreUnavailable):
        return 503, str(exc)
    if isinstance(exc, UserError):
        return 422, str(exc)
    return None


class Service(FastAPI):
    """The FastAPI app, with ``fast_routes`` (``POST`` path to handler) answered before
    FastAPI's routing: headers checked, body read, the handler's bytes sent, errors
    mapped by ``error_status``; any other request goes through FastAPI."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fast_routes: dict[str, Handler] = {}
        self.max_body = MAX_BODY

    async def __call__(self, scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.fast_routes.get(scope["path"])
            if handler is not None:
                await self._answer(handler, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _answer(
        self, handler: Handler, scope: ASGIScope, receive: ASGIReceive, send: ASGISend
    ) -> None:
        declared, length = "", ""
        for name, value in scope["headers"]:
            if name == b"content-type":
                declared = value.decode("latin-1")
            elif name == b"content-length":
                length = value.decode("latin-1")
        try:
            check_headers(declared, length, self.max_body)
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return  # the client left: nobody to answer
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body:
                    raise body_too_large(self.max_body)
                chunks.append(chunk)
                more = message.get("more_body", False)
            status, body = 200, await handler(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        except Exception as exc:
            refused = error_status(exc)
            if refused is None:
                raise  # a bug: uvicorn logs it and answers 500
            status, body = refused[0], encode_json({"detail": refused[1]})
        headers = [(b"content-length", str(len(body)).encode()), (b"content-type", JSON)]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


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
    predictor: Predictor,
    events: EventService | None = None,
    max_body: int = MAX_BODY,
    events_note: str | None = None,
) -> FastAPI:
    """The service answering with ``predictor``; ``/events`` only with an ``events`` service
    (``events_note``: why not, for the 404 of ``/events``)."""
    if events_note is None:
        events_note = (
            "it needs the eager or compiled backend"
            if predictor.model is None
            else "start it with --state memory or redis://host:port/db"
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if events is not None:
            await events.store.close()

    app = Service(
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
    def answer(data: bytes) -> bytes:
        body = parse(RecommendRequest, data)
        if body.histories is not None and len(body.histories) > MAX_BATCH:
            raise RequestError(
                413,
                f"histories: at most {MAX_BATCH} histories per request; got {len(body.histories)}",
            )
        if body.history is not None:
            return encode_json(predictor.recommend(body.history, body.k, body.exclude_seen))
        results = predictor.recommend_batch(body.histories, body.k, body.exclude_seen)
        return encode_json({"results": results})

    async def recommend_answer(data: bytes) -> bytes:
        if len(data) > INLINE_BODY:
            return await asyncio.to_thread(answer, data)
        return answer(data)

    def need_events() -> EventService:
        if events is None:
            raise RequestError(404, f"this server keeps no per-user state: {events_note}")
        return events

    async def event_answer(data: bytes) -> bytes:
        service = need_events()
        body = parse(EventRequest, data)
        return encode_json(
            await service.event(body.user, body.item, body.k, body.history, body.events)
        )

    app.max_body = max_body
    app.fast_routes = {"/recommend": recommend_answer, "/events": event_answer}

    # The same endpoints through FastAPI: they document the hot paths in the OpenAPI
    # schema; requests reach them only where the fast path does not match.
    @app.post("/recommend", openapi_extra=_schema(RecommendRequest))
    async def recommend(request: Request) -> Response:
        data = await read_body(request, max_body)
        return Response(await recommend_answer(data), media_type="application/json")

    @app.post("/events", openapi_extra=_schema(EventRequest))
    async def event(request: Request) -> Response:
        data = await read_body(request, max_body)
        return Response(await event_answer(data), media_type="application/json")

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
        # Listening from here on: a client connecting while workers still load the model
        # (and its compiled step) waits in the backlog instead of being refused.
        sock.listen(2048)
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
