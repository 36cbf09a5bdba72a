"""How the benchmarks measure: wall time and peak memory of a block, agreement of two score matrices, one epoch.

Peak memory is the rise of the process's resident-set high-water mark (Linux ``VmHWM``, reset through
``/proc/self/clear_refs`` before each measurement, after ``malloc_trim`` has returned freed heap memory;
torch's CPU allocations are invisible to ``tracemalloc``); NaN where the kernel does not allow the reset.
Times are wall-clock on a possibly shared machine: compare rows of one run, not runs.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from torch.func import grad


def _status_kib(key: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return math.nan


def _release_free_memory() -> None:
    """glibc keeps freed heap memory resident; give it back so that a block's own allocations raise the RSS again."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def settle() -> None:
    """Before the first measurement: run one ``torch.func`` transform (a process's first imports ``torch._dynamo``,
    1–4 s that would land in the first measured solve), and leave the objects alive now (imported modules, the
    trained problem: ~4·10⁵ of them) out of every later garbage collection, so that the full collection before
    each measurement takes milliseconds, not a third of a second."""
    grad(lambda x: (x * x).sum())(torch.ones(2))
    gc.collect()
    gc.freeze()


@contextmanager
def measured():
    """Wall time and the rise of the resident-set high-water mark (MiB) of the block: ``out['seconds']``, ``out['peak_mib']``."""
    out: dict = {}
    _release_free_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        reset = True
    except OSError:
        reset = False
    base = _status_kib("VmRSS")
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - t0
        out["peak_mib"] = (_status_kib("VmHWM") - base) / 1024 if reset else math.nan


@contextmanager
def stopwatch(times: dict, key: str):
    """Wall time of the block into ``times[key]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        times[key] = time.perf_counter() - t0


def agreement(scores: torch.Tensor, reference: torch.Tensor, top: int = 10) -> dict:
    """Per test example (row) Pearson, Spearman and top-``top`` overlap with the reference scores, averaged (and the worst Pearson)."""
    a, b = scores.detach().cpu().double().numpy(), reference.detach().cpu().double().numpy()
    if not np.isfinite(a).all():
        return {"pearson": math.nan, "pearson_min": math.nan, "spearman": math.nan, f"top{top}_overlap": math.nan}
    pear = [pearsonr(x, y)[0] for x, y in zip(a, b, strict=True)]
    spear = [spearmanr(x, y)[0] for x, y in zip(a, b, strict=True)]
    over = [len(set(np.argsort(-x)[:top]) & set(np.argsort(-y)[:top])) / top for x, y in zip(a, b, strict=True)]
    return {"pearson": float(np.mean(pear)), "pearson_min": float(np.min(pear)), "spearman": float(np.mean(spear)),
            f"top{top}_overlap": float(np.mean(over))}


def epoch_seconds(pt, params: torch.Tensor, repeats: int = 20) -> float:
    """Median wall time of one forward + backward pass of the mean pretraining loss over the whole set."""
    g = grad(pt)
    g(params)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        g(params)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def machine(threads: int) -> dict:
    """Where a benchmark ran: versions, threads, platform, CPUs, the load average (for its metadata JSON)."""
    return {"torch": torch.__version__, "threads": threads, "machine": platform.platform(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "load_average": os.getloadavg()}
