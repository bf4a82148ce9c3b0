"""Stateful per-event recommendations: append a user's event, answer top-k from the state.

``EventService`` ties a predictor (id mapping, popularity), a ``Streamer`` (the model's
per-event step), a ``StateStore`` and a ``Catalogue`` (top-k). Events of one user are
applied one at a time, in arrival order (a per-user lock around read, step and write), so
concurrent events of the same user never lose an update. Across server processes sharing
one Redis, the write is a check-and-set against the state read (``StateStore.put_if``): an
event that lost the race to another process reads the new state and is applied again.

A user without a usable state (new, evicted, lost, written by another model, or damaged:
``Streamer.check_state``) is rebuilt from the ``history`` the client sends; without one the
event is refused (409), never answered from a wrong state.

What the service can check depends on what the client sends:

- ``history``: the state is used only when it is the state of exactly that history (same
  count and the same ``history_digest`` of all its known items, for every model);
  otherwise it is rebuilt from the history. This also catches a store restored from an
  older snapshot, or a state another writer changed.
- ``events`` (the ``events`` of the user's last answer): the state is used only when it
  holds that many events; otherwise 409, and the client sends the event again with its
  history. A store restored from an older snapshot then never answers from the old state.
- neither: nothing to compare with, so the stored state is trusted as it is. A client that
  needs the guarantee sends ``events`` (cheap) or ``history``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from adarec.errors import UserError
from adarec.serve.catalogue import Catalogue
from adarec.serve.predictor import Predictor
from adarec.serve.state_store import ForeignState, StateConflict, StateStore, StoreUnavailable
from adarec.serve.streaming import Streamer, StreamState, history_digest

# Check-and-set attempts of one event before it is refused (503): only a user whose events
# arrive at several processes at once retries at all.
CHECK_AND_SET_ATTEMPTS = 100


class MissingState(UserError):
    """The user has no usable state and the request carries no history to rebuild it."""


class StaleState(MissingState):
    """The stored state does not hold the events the client says it sent (409)."""


class UserLocks:
    """One asyncio lock per user with events in flight (dropped once nobody holds it)."""

    def __init__(self) -> None:
        self.locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, user: str) -> AsyncIterator[None]:
        lock, holders = self.locks.get(user, (None, 0))
        lock = lock or asyncio.Lock()
        self.locks[user] = (lock, holders + 1)
        try:
            async with lock:
                yield
        finally:
            lock, holders = self.locks[user]
            if holders == 1:
                del self.locks[user]
            else:
                self.locks[user] = (lock, holders - 1)


class EventService:
    """``event``, ``reset`` and ``user`` of the HTTP service's per-event endpoints."""

    def __init__(
        self, predictor: Predictor, streamer: Streamer, store: StateStore, catalogue: Catalogue
    ):
        self.predictor = predictor
        self.streamer = streamer
        self.store = store
        self.catalogue = catalogue
        self.locks = UserLocks()
        self.rebuilds = 0

    async def _load(self, user: str) -> tuple[StreamState | None, str, Any]:
        """The stored state (None: none usable), why not, and the token for ``put_if``."""
        token: Any = None
        try:
            state, token = await self.store.get_for_update(user)
            if state is not None:
                # A state of this model's tag whose shapes do not fit (damaged, or written
                # by a buggy process) is refused like a foreign one, never stepped from.
                self.streamer.check_state(state)
        except ForeignState as exc:
            return None, f"its stored state was refused: {exc}", getattr(exc, "token", token)
        return state, "new, evicted or lost", token

    @staticmethod
    def _agrees(state: StreamState, history: list[int], digest: int) -> bool:
        """Whether ``state`` is the state of ``history`` (its count and ``digest``, the
        ``history_digest`` of all its items: contents, not only the length)."""
        return state.events == len(history) and state.digest == digest

    async def event(
        self,
        user: str,
        item: Any,
        k: int = 10,
        history: Sequence[Any] | None = None,
        events: int | None = None,
    ) -> dict[str, Any]:
        """Append ``item`` to ``user``'s events; the top-k after it.

        ``history``: the user's earlier items (oldest first); the stored state is rebuilt
        from it when missing or not the state of exactly this history. ``events``: how many
        events the stored state must hold (the ``events`` of the user's last answer),
        without a history: otherwise StaleState (409). Applied again from the new state
        while another process wrote the user's state first (StateConflict).
        """
        if events is not None and (isinstance(events, bool) or not isinstance(events, int)):
            raise UserError(f"events must be an integer; got {events!r}")
        for _ in range(CHECK_AND_SET_ATTEMPTS):
            try:
                return await self._event_once(user, item, k, history, events)
            except StateConflict:
                continue
        raise StoreUnavailable(
            f"the state of user {user!r} kept changing in {CHECK_AND_SET_ATTEMPTS} attempts"
        )

    async def _event_once(
        self, user: str, item: Any, k: int, history: Sequence[Any] | None, events: int | None
    ) -> dict[str, Any]:
        self.predictor.check_k(k)
        known_history = None if history is None else self.predictor.encode(history).items
        # Outside the user's lock: it depends on the request alone.
        digest = None if known_history is None else history_digest(known_history)
        internal = self.predictor.index.get(str(item))
        async with self.locks.hold(user):
            state, reason, token = await self._load(user)
            status = "continued"
            if known_history is not None and (
                state is None or not self._agrees(state, known_history, digest)
            ):
                state = self.streamer.rebuild(known_history)
                status = "rebuilt"
                self.rebuilds += 1
            if state is None:
                raise MissingState(
                    f"user {user!r} has no state on this server ({reason}): send the event "
                    "again with 'history', the user's earlier items (empty for a new user)"
                )
            if known_history is None and events is not None and state.events != events:
                raise StaleState(
                    f"the stored state of user {user!r} holds {state.events} events, not the "
                    f"{events} the request expects (restored from an older copy, or written "
                    "elsewhere): send the event again with 'history', the user's earlier items"
                )
            top = None
            if internal is not None and self.catalogue.kind == "exact":
                # The step, the head and the top-k in one call (one compiled call for a
                # compiled student).
                state, *top = self.streamer.advance_top_k(state, internal, k)
            elif internal is not None:
                state = self.streamer.advance(state, internal)
            await self.store.put_if(user, state, token)
        if state.output is None:
            (items, scores), fallback = self.predictor.popular(k), "popularity"
        elif top is not None:
            (items, scores), fallback = top, None
        else:
            (items, scores), fallback = self.catalogue.top_k(state.output, k), None
        return {
            "user": user,
            "items": [self.predictor.item_ids[i] for i in items],
            "scores": scores,
            "events": state.events,
            "state": status,
            "unknown_item": internal is None,
            "fallback": fallback,
        }

    async def reset(self, user: str) -> dict[str, Any]:
        """Forget ``user``'s state; the next event starts from the history it carries."""
        async with self.locks.hold(user):
            existed = await self.store.delete(user)
        return {"user": user, "reset": True, "existed": existed}

    async def user(self, user: str) -> dict[str, Any]:
        """How many events ``user``'s stored state holds (0 and ``stored: false``: none)."""
        async with self.locks.hold(user):
            state, _, _ = await self._load(user)
        return {"user": user, "stored": state is not None, "events": state.events if state else 0}

    async def stats(self) -> dict[str, Any]:
        return {
            **await self.store.stats(),
            "index": self.catalogue.kind,
            "rebuilds": self.rebuilds,
            "reencodes": self.streamer.reencodes,
        }
