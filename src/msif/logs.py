"""Job start-up shared by every workflow script: logging to the rule's log file, threads, determinism.

A job stopped by SIGTERM (``kill``, ``scancel``, a scheduler's time limit) unwinds like Ctrl-C does
(an exception): temporary files are removed, the log says so, and the exit status is 128 + 15.

Every job logs two lines a benchmark reads back (:mod:`msif.bench.run_time`, by :data:`START_RE` and
:data:`END_RE`): on entering :func:`job`, its rule and its **start-up seconds** (from the process's
creation — Python, the Snakemake preamble, ``import torch`` and the step's imports — to that point), and
on leaving it the seconds and CPU seconds since the process was created, and whether the job imported
``torch._dynamo`` (``dynamo=1``: a ``torch.func`` transform ran, which costs 2–4 s of import the first time).
"""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

START_RE = re.compile(r"msif job start: rule=(?P<rule>\S+) startup_s=(?P<startup>\S+)")
END_RE = re.compile(r"msif job end: rule=(?P<rule>\S+) wall_s=(?P<wall>\S+) cpu_s=(?P<cpu>\S+) status=(?P<status>\S+)"
                    r"(?: dynamo=(?P<dynamo>[01]))?")


class JobTerminated(SystemExit):
    """Raised in a job when it receives SIGTERM, so that clean-up code runs."""


def _terminate(signum, frame) -> None:
    raise JobTerminated(128 + signum)


def process_age() -> float:
    """Seconds since this process was created (NaN where it cannot be read).

    On Linux from ``/proc``: the process's start in clock ticks since boot against ``/proc/uptime``,
    both since boot to 10 ms (``psutil.Process().create_time()`` adds the boot time, which ``/proc/stat``
    gives to whole seconds only); elsewhere through psutil where installed.
    """
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return max(0.0, time.time() - psutil.Process().create_time())
    except Exception:  # no psutil, or no access: the benchmark shows NaN
        return math.nan


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its waited-for children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def rule_name() -> str:
    """The Snakemake rule of this job (its ``snakemake`` object, else the script's name), ``-`` outside one."""
    smk = getattr(sys.modules.get("__main__"), "snakemake", None)
    if getattr(smk, "rule", None):
        return str(smk.rule)
    script = sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c", "-m") else ""
    return Path(script).stem.rsplit(".", 1)[-1] if script else "-"  # Snakemake runs rule X's script as tmpXXXX.X.py


def deterministic_kernels(torch) -> None:
    """``torch.use_deterministic_algorithms(True)`` without its import of ``torch._inductor.config``.

    That import pulls in ``torch._dynamo`` (1–4 s, paid by every job only to set inductor's own flag; msif never
    compiles). The ATen flag is the same; inductor's is set too where inductor is already imported.
    """
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:
        inductor.deterministic = True
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:  # another torch: the public call, whatever it imports
        torch.use_deterministic_algorithms(True)
    else:
        setter(True, warn_only=False)


@contextmanager
def job(log_path: str, threads: int = 1):
    """Log to ``log_path`` (and stderr), use ``threads`` CPU threads, deterministic kernels; log any failure."""
    startup = process_age()
    import torch  # here, not at the top: reading START_RE/END_RE (msif.bench.run_time) needs no torch
    handlers = [logging.FileHandler(log_path, mode="w"), logging.StreamHandler(sys.stderr)]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)
    torch.set_num_threads(max(1, int(threads)))
    deterministic_kernels(torch)
    log = logging.getLogger("msif")
    rule = rule_name()
    log.info("msif job start: rule=%s startup_s=%.3f", rule, startup)
    log.info("torch %s, %d threads, cuda available: %s", torch.__version__, torch.get_num_threads(), torch.cuda.is_available())
    previous = signal.signal(signal.SIGTERM, _terminate)
    status = "failed"
    try:
        yield log
        status = "ok"
    except JobTerminated:
        status = "terminated"
        log.error("job terminated by SIGTERM; its temporary files were removed (rerun the workflow to redo it)")
        raise
    except BaseException:
        log.exception("job failed")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        log.info("msif job end: rule=%s wall_s=%.3f cpu_s=%.3f status=%s dynamo=%d", rule, process_age(), _cpu_seconds(), status,
                 "torch._dynamo" in sys.modules)
