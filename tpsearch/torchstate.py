"""One lock for torch's process-wide state: model loads are exclusive, forward passes shared.

transformers sets torch's *global* default dtype while it loads a model in bfloat16 (and
imports its model classes lazily, which is not thread-safe on first use): a forward pass in
another thread at that moment creates float32 tensors as bfloat16 ("expected m1 and m2 to have
the same dtype"), and two first loads at once can fail with ImportError. So a load waits for
running forward passes to finish and holds new ones back until it is done; forward passes of
different models still run side by side (each model's own lock serialises its TP hooks).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class SharedExclusiveLock:
    """Many holders of ``shared()`` at once, or one of ``exclusive()``; a waiting exclusive
    holder goes before new shared ones (loads are rare, forwards many). Re-entrant for a
    thread that holds ``exclusive()`` (a load that runs a forward pass, say to compile)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._owner: int | None = None
        self._depth = 0
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:  # inside this thread's own exclusive section
                self._depth += 1
            else:
                while self._owner is not None or self._waiting:
                    self._cond.wait()
                self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                if self._owner == me:
                    self._depth -= 1
                else:
                    self._shared -= 1
                    if not self._shared:
                        self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
            else:
                self._waiting += 1
                try:
                    while self._owner is not None or self._shared:
                        self._cond.wait()
                finally:
                    self._waiting -= 1
                self._owner, self._depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._owner = None
                    self._cond.notify_all()


#: The process's lock over torch's global state (see the module docstring).
TORCH_STATE = SharedExclusiveLock()
