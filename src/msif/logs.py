"""Job start-up shared by every workflow script: logging to the rule's log file, threads, determinism."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager

import torch


@contextmanager
def job(log_path: str, threads: int = 1):
    """Log to ``log_path`` (and stderr), use ``threads`` CPU threads, deterministic kernels; log any failure."""
    handlers = [logging.FileHandler(log_path, mode="w"), logging.StreamHandler(sys.stderr)]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)
    torch.set_num_threads(max(1, int(threads)))
    torch.use_deterministic_algorithms(True)
    log = logging.getLogger("msif")
    log.info("torch %s, %d threads, cuda available: %s", torch.__version__, torch.get_num_threads(), torch.cuda.is_available())
    try:
        yield log
    except BaseException:
        log.exception("job failed")
        raise
