"""Routers: which replica serves a request (used by the simulator, and by a multi-replica
emulator later).

* ``round_robin``: replicas in turn.
* ``least_outstanding``: the replica with the fewest requests in flight (added, not yet finished
  or rejected); ties go to the lowest index.
* ``prefix_affinity``: the replica that most recently served a request with the same first prefix
  block hash (its KV cache likely still holds that prefix); requests without prefix hashes, or
  whose first hash is new, go to the least outstanding replica.
"""

from __future__ import annotations

from collections.abc import Sequence

from slobench.engine.core import EngineRequest
from slobench.errors import UserError

__all__ = ["ROUTERS", "Router", "make_router"]

ROUTERS = ("round_robin", "least_outstanding", "prefix_affinity")


class Router:
    """Base class: ``choose(request, outstanding) -> replica index``. The replicas to choose
    from are ``range(len(outstanding))``, at most ``replicas`` (fewer while scaled in)."""

    def __init__(self, replicas: int) -> None:
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise UserError(f"replicas={replicas!r} must be a whole number >= 1")
        self.replicas = replicas

    def choose(self, req: EngineRequest, outstanding: Sequence[int]) -> int:
        raise NotImplementedError


class RoundRobin(Router):
    def __init__(self, replicas: int) -> None:
        super().__init__(replicas)
        self._next = 0

    def choose(self, req: EngineRequest, outstanding: Sequence[int]) -> int:
        i = self._next % len(outstanding)
        self._next = i + 1
        return i


def _least(outstanding: Sequence[int]) -> int:
    best = 0
    low = outstanding[0]
    for i in range(1, len(outstanding)):
        if outstanding[i] < low:
            best = i
            low = outstanding[i]
    return best


class LeastOutstanding(Router):
    def choose(self, req: EngineRequest, outstanding: Sequence[int]) -> int:
        return _least(outstanding)


class PrefixAffinity(Router):
    def __init__(self, replicas: int) -> None:
        super().__init__(replicas)
        self._last: dict[int, int] = {}  # first prefix hash -> replica that served it last

    def choose(self, req: EngineRequest, outstanding: Sequence[int]) -> int:
        if not req.prefix_blocks:
            return _least(outstanding)
        key = req.prefix_blocks[0]
        i = self._last.get(key)
        if i is None or i >= len(outstanding):
            i = _least(outstanding)
        self._last[key] = i
        return i


_ROUTERS: dict[str, type[Router]] = {
    "round_robin": RoundRobin,
    "least_outstanding": LeastOutstanding,
    "prefix_affinity": PrefixAffinity,
}


def make_router(name: str, replicas: int) -> Router:
    key = name.replace("-", "_")
    if key not in _ROUTERS:
        raise UserError(f"router {name!r} is not one of {', '.join(ROUTERS)}")
    return _ROUTERS[key](replicas)
