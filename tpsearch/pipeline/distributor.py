"""Distributor: one build across processes started by torchrun (one per GPU, any machines).

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous; torch.distributed
(NCCL on GPUs, gloo on CPU) agrees on the plan and on completion. Each rank embeds a disjoint,
balanced set of windows (corpus row ranges read through their Parquet row groups) into its own
shard files; rank 0 then assembles the index in corpus order, exactly as one process would.
A rank that dies leaves its finished shards; the same command run again redoes only the rest.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .workdir import split_windows


@dataclass(frozen=True)
class Distributor:
    """This process's place in the job (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Distributor":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        """``cuda:LOCAL_RANK`` for each rank on a GPU machine, else what was asked."""
        if self.active and requested in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return requested

    def start(self) -> None:
        if self.active and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(self.local_rank)
            # Ranks wait for each other while encoding: allow long waits at the barriers.
            dist.init_process_group(backend, timeout=timedelta(hours=48))

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_ok(self, ok: bool) -> bool:
        """True when every rank reports ``ok`` (so one rank's failure stops all)."""
        if not self.active:
            return ok
        flag = torch.tensor([1 if ok else 0], device=self._comm_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _comm_device(self) -> torch.device:
        return torch.device(f"cuda:{self.local_rank}") if dist.get_backend() == "nccl" else torch.device("cpu")

    def stop(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    def select(self, runs: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
        """This rank's windows: every ``world_size``-th missing window, regrouped into runs."""
        windows = split_windows(runs, size)
        mine = windows[self.rank::self.world_size]
        merged: list[tuple[int, int]] = []
        for a, b in mine:
            if merged and merged[-1][1] == a:
                merged[-1] = (merged[-1][0], b)
            else:
                merged.append((a, b))
        return merged


def run_rank(entry, argv: list[str]) -> None:
    """Run a torchrun rank's command line (``entry(argv)``, a click command, which ends the
    process with its exit status). Under torchrun the process ends without the interpreter's
    teardown, once its output is flushed: the build is published (or refused) and the process
    group destroyed by then, and tearing down torch's and gloo's native threads at
    interpreter exit can abort a rank that has already succeeded ("terminate called without
    an active exception"), which torchrun reports as a failed job."""
    if not Distributor.from_env().active:
        entry(argv)
        return
    try:
        entry(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
