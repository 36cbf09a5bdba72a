"""Solver benchmark on a model too big for a dense Hessian: ``python -m msif.bench.scale`` (``make bench-scale``).

Not a timed test: it writes tables. On ``config/scale.yaml`` (a CNN, p ≈ 10⁵) there is no exact solve; the
reference is CG run to a tight tolerance (``--ref-tol``) in both stages, on the config's curvature. Every
solver of :data:`msif.arguments.SOLVERS` but ``exact`` may run, also stopped after k iterations (``cg@k``,
``pcg@k``); :mod:`msif.bench.base` describes the stages and the common columns. In ``--out``:

- ``scale_solvers.csv``: agreement with the reference scores and the cost of each solve (``reference``: cg);
- ``scale_cost.csv``: scoring 1, 10 and 100 test examples end to end relative to one pretraining epoch, split
  by step; ``scores_jvp_s``: the dot products ``∇l(z_i)·s`` computed instead by one JVP per test column
  (:func:`msif.influence.scoring.upweight_influence_jvp`, up to ``--jvp-max-n`` test examples);
  ``scores_rank<r>_{s,epochs,pearson,pearson_min}``: the dot products with the low-rank query of rank r
  (``influence.query_rank``), their time and their agreement with the exact dot products of the same ``s``;
  ``finetune_hvps``, ``pretrain_hvps``: curvature products of each stage's solve;
- ``scale_solvers.json`` / ``scale_cost.json``: machine, threads, load average, sizes, the reference's residuals;
- ``scale_solvers.png``: Pearson against curvature products (pretraining stage), and the dot products' cost
  in epochs against the number of test examples, exact and low-rank (``--figure-only`` redraws it).

``python -m msif.bench.scale --smoke`` runs it on the config shrunk to seconds (tests/test_bench_scale.py).
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from typing import ClassVar

import pandas as pd
import torch

from msif.arguments import SOLVERS
from msif.bench.base import SolverBench, scoring_cost_axes
from msif.bench.measure import agreement
from msif.core.solvers import Solve
from msif.influence.scoring import upweight_influence_jvp

QUERY_RANKS = (8, 32)


class ScaleBench(SolverBench):
    """The reference is CG to ``ref_tol`` on the config's curvature; the cost table adds low-rank and JVP dot products."""

    REFERENCE = "cg"
    CHOICES = tuple(s for s in SOLVERS if s != "exact")  # no dense Hessian at this size
    CONFIG = "config/scale.yaml"
    THREADS = 2
    DEFAULT_SOLVERS = ("cg", "ekfac")
    DEFAULT_COST_SOLVERS = ("cg+ekfac",)
    SMOKE_DEFAULTS: ClassVar[dict] = {"cost_n_test": [1, 3], "ref_tol": 1e-10}
    TABLES = ("scale_solvers", "scale_cost")
    FIGURE = "scale_solvers.png"
    EPOCH_REPEATS = 5
    AGREEMENT_COLUMNS = ("scenario", "stage", "solver", "curvature", "reference", "pearson", "pearson_min", "spearman",
                         "top10_overlap", "seconds", "fit_seconds", "peak_mib", "hvps", "residual", "converged")
    COST_COLUMNS = ("scenario", "solver", "n_test", "n_pretrain", "finetune_s", "cross_stage_s", "pretrain_s", "scores_s", "fit_s",
                    "residual_check_s", "cold_s", "warm_s", "epoch_s", "cold_epochs", "warm_epochs", "warm_unchecked_epochs",
                    "peak_mib", "finetune_hvps", "pretrain_residual", "scores_jvp_s", "scores_epochs", "scores_jvp_epochs",
                    "pretrain_hvps")

    def __init__(self, config: dict, n_test: int | None = None, run_dir: str | None = None, ref_tol: float = 1e-6,
                 ref_max_iter: int = 2000, query_ranks: tuple[int, ...] = QUERY_RANKS, jvp_max_n: int = 10):
        super().__init__(config, n_test, run_dir)
        self.ref_options = {**self.options, "cg": {**(self.options.get("cg") or {}), "tol": ref_tol, "max_iter": ref_max_iter}}
        self.ref_tol, self.ref_max_iter = ref_tol, ref_max_iter
        self.query_ranks, self.jvp_max_n = tuple(query_ranks), jvp_max_n

    def extra_cost(self, s: Solve, scores: torch.Tensor, n: int, epoch: float) -> dict:
        """The same dot products with every layer block of ``s`` truncated to each query rank, and by JVPs (up to ``jvp_max_n``)."""
        out = {}
        for r in self.query_ranks:
            t0 = time.perf_counter()
            approx = self.scores(s.x, query_rank=r)
            elapsed, agree = time.perf_counter() - t0, agreement(approx, scores)
            out.update({f"scores_rank{r}_s": elapsed, f"scores_rank{r}_pearson": agree["pearson"],
                        f"scores_rank{r}_pearson_min": agree["pearson_min"]})
        out.update({f"scores_rank{r}_epochs": out[f"scores_rank{r}_s"] / epoch for r in self.query_ranks})
        jvp_s = float("nan")
        if n <= self.jvp_max_n:
            t0 = time.perf_counter()
            upweight_influence_jvp(self.pt, self.pt_params, s.x, self.options["batch_size"])
            jvp_s = time.perf_counter() - t0
        return {**out, "scores_jvp_s": jvp_s, "scores_jvp_epochs": jvp_s / epoch}

    def cost_columns(self) -> list[str]:
        ranks = [f"scores_rank{r}_{c}" for r in self.query_ranks for c in ("s", "pearson", "pearson_min")]
        return [*self.COST_COLUMNS, *ranks, *(f"scores_rank{r}_epochs" for r in self.query_ranks)]

    def metadata(self, args: argparse.Namespace, seconds: float) -> dict:
        return {**super().metadata(args, seconds), "ref_tol": self.ref_tol, "ref_max_iter": self.ref_max_iter}

    @classmethod
    def parser(cls, prog: str, description: str) -> argparse.ArgumentParser:
        p = super().parser(prog, description)
        p.add_argument("--ref-tol", type=float, default=1e-6, help="relative residual of the reference CG")
        p.add_argument("--ref-max-iter", type=int, default=2000, help="iterations of the reference CG")
        p.add_argument("--query-ranks", type=int, nargs="*", default=list(QUERY_RANKS),
                       help="also time the dot products with the low-rank query of these ranks (influence.query_rank), against the exact ones")
        p.add_argument("--jvp-max-n", type=int, default=10, help="time the JVP dot products up to this many test examples")
        return p

    @classmethod
    def from_args(cls, config: dict, args: argparse.Namespace) -> ScaleBench:
        return cls(config, args.n_test, args.run_dir, args.ref_tol, args.ref_max_iter, args.query_ranks, args.jvp_max_n)

    @staticmethod
    def panels(agree: pd.DataFrame | None, cost: pd.DataFrame | None) -> list:
        out = [] if agree is None else [partial(pearson_per_product, agree)]
        return out if cost is None else [*out, partial(dot_product_cost, cost)]


def pearson_per_product(agree: pd.DataFrame, ax) -> None:
    """Pretraining stage: agreement with the reference against the curvature products spent, per solver family."""
    pre = agree[agree.stage == "pretrain"]
    for (family, scenario), d in pre.groupby([pre.solver.str.split("@").str[0], "scenario"], sort=False):
        d = d.sort_values("hvps")
        ax.plot(d.hvps.clip(lower=0.5), d.pearson, "o-" if scenario == "fixed" else "s--", label=f"{family} ({scenario})")
    ax.axhline(0.9, color="k", lw=0.8, ls="--")
    ax.set(xscale="log", xlabel="curvature products of the pretraining solve (EK-FAC: 0, drawn at 0.5)",
           ylabel="Pearson with the reference CG's scores", title="Pretraining stage: accuracy per curvature product")
    ax.legend(fontsize=8)


def dot_product_cost(cost: pd.DataFrame, ax) -> None:
    """The dot products' time in epochs against the number of test examples: exact, and each low-rank query."""
    first = cost[cost.solver == cost.solver.iloc[0]]
    ax.plot(first.n_test, first.scores_epochs, "ko-", label="exact")
    for col in [c for c in first.columns if c.startswith("scores_rank") and c.endswith("_epochs")]:
        r = col.removeprefix("scores_rank").removesuffix("_epochs")
        pearson = first[f"scores_rank{r}_pearson"].iloc[-1]
        ax.plot(first.n_test, first[col], "o:", label=f"low-rank query r={r} (Pearson {pearson:.4f} at {first.n_test.iloc[-1]})")
    n = f"n = {int(cost.n_pretrain.iloc[0]):,}" if "n_pretrain" in cost else "n = ?"
    scoring_cost_axes(ax, "dot products' time / one pretraining epoch", f"Scoring cost, {n}")
    ax.legend(fontsize=7)


def main(argv: list[str] | None = None) -> None:
    ScaleBench.cli(argv, "python -m msif.bench.scale", __doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()
