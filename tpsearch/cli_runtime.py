"""What the command line sets up for its process: log output (lines, or JSON for the
server) and torch's thread count."""

from __future__ import annotations

import json
import logging
import sys


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("tpsearch: %(message)s"))
    log = logging.getLogger("tpsearch")
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("transformers", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def use_all_cores() -> None:
    """Intra-op threads = the cores this process may use (shared among torchrun's local ranks)."""
    import os

    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    cores = max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if os.environ.get("LOCAL_WORLD_SIZE"):
        torch.set_num_threads(cores)
    elif torch.get_num_threads() < cores:
        torch.set_num_threads(cores)


def json_logs(config) -> None:
    """One JSON object a line on stderr: request lines as they are, other messages wrapped."""

    class JsonLines(logging.Formatter):
        def format(self, record):
            if record.name == "tpsearch.serve.access":
                return record.getMessage()
            return json.dumps({"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
                               "level": record.levelname.lower(), "logger": record.name,
                               "message": record.getMessage()}, ensure_ascii=False)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    for name in ("tpsearch", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(logging.INFO)
