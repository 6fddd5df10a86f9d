"""Backend selection shared by every op.

Each op lists its backends in priority order. A backend says *why* it cannot run a call (a short
reason such as "needs CUDA tensors" or "scob_fast._C is not built"); the dispatcher takes the first
one that can, raises with every reason when a forced backend cannot, and records which one ran so
that `last_backend(op)` answers the user's "what actually ran?".
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

from scob_fast import env

log = logging.getLogger("scob_fast.ops")

_LAST: dict[str, str] = {}


class BackendUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class Backend:
    name: str
    # (*inputs) -> None when this backend can run these inputs, else the reason it cannot.
    refuses: Callable[..., Optional[str]]
    # () -> None when the backend exists in this installation at all, else why not.
    installed: Callable[[], Optional[str]] = lambda: None


class Dispatcher:
    def __init__(self, op_name: str, backends: list[Backend]):
        self.op_name = op_name
        self.backends = {b.name: b for b in backends}
        self._logged: set[tuple] = set()

    def names(self) -> list[str]:
        return list(self.backends)

    def availability(self) -> dict[str, Optional[str]]:
        """backend name -> None if installed here, else the reason it is not."""
        return {name: b.installed() for name, b in self.backends.items()}

    def _reason(self, backend: Backend, inputs) -> Optional[str]:
        return backend.installed() or backend.refuses(*inputs)

    def select(self, forced: Optional[str], *inputs) -> str:
        forced = (forced or env.forced_backend(self.op_name) or "auto").lower()
        if forced != "auto":
            if forced not in self.backends:
                raise ValueError(
                    f"{self.op_name}: unknown backend {forced!r}; choose from {['auto', *self.backends]}")
            reason = self._reason(self.backends[forced], inputs)
            if reason:
                raise BackendUnavailable(f"{self.op_name}: backend {forced!r} cannot run this call: {reason}")
            chosen = forced
        else:
            reasons = []
            chosen = None
            for name, backend in self.backends.items():
                reason = self._reason(backend, inputs)
                if reason is None:
                    chosen = name
                    break
                reasons.append(f"{name}: {reason}")
            if chosen is None:
                raise BackendUnavailable(f"{self.op_name}: no backend can run this call ({'; '.join(reasons)})")
        _LAST[self.op_name] = chosen
        key = (chosen,) + tuple((t.device.type, t.dtype) for t in inputs if hasattr(t, "dtype"))
        if key not in self._logged:
            self._logged.add(key)
            log.info("%s: backend %s for %s", self.op_name, chosen, key[1:])
        return chosen


def last_backend(op_name: str) -> Optional[str]:
    """Name of the backend that ran the most recent call of `op_name` in this process (None before any)."""
    return _LAST.get(op_name)
