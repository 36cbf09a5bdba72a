"""Job start-up shared by every workflow script: logging to the rule's log file, threads, determinism.

A job stopped by SIGTERM (``kill``, ``scancel``, a scheduler's time limit) unwinds like Ctrl-C does
(an exception): temporary files are removed, the log says so, and the exit status is 128 + 15.
"""

from __future__ import annotations

import logging
import signal
import sys
from contextlib import contextmanager

import torch


class JobTerminated(SystemExit):
    """Raised in a job when it receives SIGTERM, so that clean-up code runs."""


def _terminate(signum, frame) -> None:
    raise JobTerminated(128 + signum)


@contextmanager
def job(log_path: str, threads: int = 1):
    """Log to ``log_path`` (and stderr), use ``threads`` CPU threads, deterministic kernels; log any failure."""
    handlers = [logging.FileHandler(log_path, mode="w"), logging.StreamHandler(sys.stderr)]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)
    torch.set_num_threads(max(1, int(threads)))
    torch.use_deterministic_algorithms(True)
    log = logging.getLogger("msif")
    log.info("torch %s, %d threads, cuda available: %s", torch.__version__, torch.get_num_threads(), torch.cuda.is_available())
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield log
    except JobTerminated:
        log.error("job terminated by SIGTERM; its temporary files were removed (rerun the workflow to redo it)")
        raise
    except BaseException:
        log.exception("job failed")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
