"""What every protocol adapter provides to the pacing layer."""

from __future__ import annotations

from typing import Protocol

from slobench.client.http1 import ConnectionPool
from slobench.client.result import RequestResult
from slobench.clock import RunClock


class Backend(Protocol):
    """One adapter per API. ``prepare`` builds the wire payload (ahead of the schedule, so the
    hot path only sends bytes); ``send`` performs the request and fills ``result``, classifying
    every failure into a status instead of raising (CancelledError excepted)."""

    name: str
    url: str

    def prepare(self, prompt: str | list[dict[str, str]], output_tokens: int) -> bytes:
        """``prompt``: text, or a chat message list (a session's turn with its history)."""
        ...

    async def send(self, pool: ConnectionPool, payload: bytes, result: RequestResult,
                   clock: RunClock) -> None: ...
