"""What the peers benchmark's adapters, run loop and report share: the names, the settings, the table's columns.

Importable without any peer installed: an adapter imports its library inside its function
(:func:`require`), the one place in msif where an import is not at module top.
"""

from __future__ import annotations

import importlib
import importlib.util
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, TensorDataset

METHODS = ("exact", "cg", "lissa", "arnoldi", "ekfac", "tracin", "trak")
LIBRARIES = ("msif", "captum", "dattri", "pydvl", "kronfluence", "traker")
PROBLEMS = ("pretrain", "fixed", "updated")
PEER_MODULES = {"captum": "captum", "dattri": "dattri", "pydvl": "pydvl", "kronfluence": "kronfluence", "traker": "trak"}
COLUMNS = ["config", "problem", "method", "library", "pearson_vs_exact", "spearman_vs_exact", "pearson_vs_ggn", "scale", "lkout_pearson",
           "lds", "wall_s", "peak_mib", "damping", "notes"]


class PeersMissing(ImportError):
    """A peer library is not installed: the benchmark runs in ``.venv-peers`` (``make bench-peers``)."""


def require(library: str):
    """Import a peer or say how to install it."""
    try:
        return importlib.import_module(PEER_MODULES[library])
    except ImportError as err:
        raise PeersMissing(f"{library} is not installed ({err}); run `make bench-peers`, which builds .venv-peers from "
                           "envs/requirements-peers.txt, or install it there") from err


def installed(library: str) -> bool:
    return library == "msif" or importlib.util.find_spec(PEER_MODULES[library]) is not None


@dataclass(frozen=True)
class Settings:
    """Shared solver settings: every library gets the same damping, tolerances, ranks and depths."""

    damping: float = 1e-3
    n_query: int = 20
    cg_tol: float = 1e-8
    cg_max_iter: int = 3000
    lissa_scale: float = 20.0
    lissa_depth: int = 2000
    lissa_batch: int = 64
    arnoldi_rank: int = 100
    arnoldi_iters: int = 200
    ekfac_batch: int = 100
    trak_proj_dim: int = 256  # TRAK's (ΦᵀΦ)⁻¹ needs proj_dim < n: capped at n/2 per problem
    seed: int = 0
    cg_iters: dict = field(default_factory=dict)  # msif CG's iterations per problem, filled in by the run (dattri's CG has no stopping rule)


def trak_dim(s: Settings, n: int) -> int:
    return max(1, min(s.trak_proj_dim, n // 2))


def loader(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


@contextmanager
def default_dtype(dtype: torch.dtype):
    """Some peers create float32 tensors of their own: run them under the problem's dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)
