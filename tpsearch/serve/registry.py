"""The indexes a server answers from, each a :class:`~tpsearch.Searcher` on one version, and
their hot swap when a directory is republished.

A reload opens the directory's current version beside the one serving (``Searcher.reopen``:
every file checked, the loaded model kept when the settings and weights match) and, only if that
succeeds, swaps the reference: requests already running finish on the version they started
with, new ones get the new version, nothing is dropped. A damaged new version is refused and the
old one keeps serving; the reason is logged and returned.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import TPSearchError
from ..layout import locate
from ..searcher import Searcher
from .batcher import MicroBatcher
from .config import ServeConfig

log = logging.getLogger("tpsearch.serve")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: Rows per forward pass inside one batched encode: the queries of a micro-batch are sorted by
#: length and cut into passes of this many, so short queries are not padded to the longest of
#: 32. Measured on the demo index (Gemma 3 270M, float32, 2 cores): 16 rows 40.8 ms/query,
#: 32 rows 52.3, 64 rows 81.5 (benchmarks/bench_serve.py's queries).
ENCODE_ROWS = 16


@dataclass
class Served:
    """One version of one index, with the batcher that encodes its queries."""

    name: str
    searcher: Searcher
    batcher: MicroBatcher

    @property
    def version(self) -> str | None:
        return self.searcher.version

    def summary(self) -> dict:
        return {"name": self.name, "directory": str(self.searcher.directory),
                **self.searcher.manifest.summary()}


def index_name(directory: str | Path) -> str:
    """The name an index directory is served under: its folder name."""
    name = Path(directory).resolve().name
    if not NAME.match(name):
        raise TPSearchError(f"{directory}: serve it from a folder named with letters, digits, "
                            "'.', '_' and '-' (the name is used in URLs)")
    return name


class Registry:
    """Name -> the :class:`Served` answering now."""

    def __init__(self, config: ServeConfig, on_batch=None):
        self.config = config
        self.on_batch = on_batch
        self._served: dict[str, Served] = {}
        self._lock = asyncio.Lock()
        self._draining: set[asyncio.Task] = set()
        self.ready = False

    def _batcher(self, name: str, searcher: Searcher) -> MicroBatcher:
        c = self.config
        def observed(size: int, seconds: float) -> None:
            if self.on_batch is not None:
                self.on_batch(name, size, seconds)

        return MicroBatcher(lambda texts: searcher.encode_prepared(
                                texts, batch_size=min(ENCODE_ROWS, c.max_batch)),
                            c.max_batch, c.max_wait_ms, c.queue_size, on_batch=observed)

    def open_all(self, directories: list[str]) -> None:
        """Open every index (its files, checked; the models load in :meth:`load_models`)."""
        names = [index_name(d) for d in directories]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise TPSearchError(f"two indexes would be served as {sorted(dup)[0]!r}: serve "
                                "folders with different names")
        for name, d in zip(names, directories):
            s = Searcher.open(d, device=self.config.device)
            self._served[name] = Served(name, s, self._batcher(name, s))

    def load_models(self) -> None:
        """Load and verify every index's query encoder; then the server is ready."""
        for served in self.all():
            _ = served.searcher.query_encoder
        self.ready = True

    def names(self) -> list[str]:
        return list(self._served)

    def get(self, name: str) -> Served | None:
        return self._served.get(name)

    def default(self) -> Served | None:
        """The index answering requests that name none: the only one, if there is one."""
        return next(iter(self._served.values())) if len(self._served) == 1 else None

    def all(self) -> list[Served]:
        return list(self._served.values())

    async def reload(self, name: str) -> tuple[bool, bool, str]:
        """Swap ``name`` to its directory's current version; (swapped, refused: the new
        version could not be opened, what happened)."""
        async with self._lock:
            old = self._served[name]
            if old.searcher.is_current():
                return False, False, f"{name}: already serving the current version {old.version}"
            try:
                new_searcher = await asyncio.get_running_loop().run_in_executor(
                    None, old.searcher.reopen)
                _ = new_searcher.query_encoder
            except Exception as exc:  # noqa: BLE001 - any failure to open or load refuses it
                # (a model that fails to load raises transformers' or torch's own errors)
                log.warning("%s: the new version is refused, %s keeps serving: %s", name,
                            old.version, exc, exc_info=not isinstance(exc, TPSearchError))
                return False, True, (f"{name}: the new version is refused ({exc}); "
                                     f"{old.version} keeps serving")
            new = Served(name, new_searcher, self._batcher(name, new_searcher))
            self._served[name] = new
            log.info("%s: now serving version %s (was %s)", name, new.version, old.version)
        task = asyncio.get_running_loop().create_task(old.batcher.stop())  # drains in-flight work
        self._draining.add(task)  # a reference until it is done (asyncio keeps only weak ones)
        task.add_done_callback(self._draining.discard)
        return True, False, f"{name}: now serving version {new.version} (was {old.version})"

    async def watch(self) -> None:
        """Reload any index whose directory was republished, every ``watch_seconds``. A
        version refused once is not tried again (a later publish is)."""
        refused: dict[str, str | None] = {}
        while True:
            await asyncio.sleep(self.config.watch_seconds)
            for name in self.names():
                served = self._served[name]
                try:
                    now = locate(served.searcher.directory).path
                except TPSearchError as exc:
                    now = f"unreadable: {exc}"
                if now == served.searcher.location.path or refused.get(name) == now:
                    continue
                try:
                    _, was_refused, _ = await self.reload(name)
                except Exception:  # noqa: BLE001 - one index's trouble never stops the others'
                    log.exception("%s: checking for a new version failed", name)
                    was_refused = True
                if was_refused:
                    refused[name] = now

    async def close(self) -> None:
        for served in self.all():
            await served.batcher.stop()
