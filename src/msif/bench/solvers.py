"""Benchmark of the inverse-HVP solvers on a config's model: ``python -m msif.bench.solvers`` (``make bench``).

Not a timed test: it writes tables. On the config's experiment (default: digits, MLP 64→32→32) it trains
both stages once, computes the exact scores (dense eigendecompositions) per scenario, then, for every
solver of :data:`msif.arguments.SOLVERS` × stage × scenario, the scores with that solver in that stage
(:mod:`msif.bench.base` describes the stages and columns) and writes, in ``--out`` (default ``results/bench``):

- ``solvers.csv``: agreement with the exact scores and the cost of each solve, on the Hessian; rows
  with ``curvature=ggn`` solve the generalised Gauss–Newton instead and are compared with the exact
  *Hessian* scores; ``full_hvp_equivalents`` counts LiSSA's mini-batch products in full products;
- ``cost.csv``: scoring 1, 10 and 100 test examples end to end, relative to one pretraining epoch, with
  ``exact``, ``cg`` and CG for finetuning + each other solver for pretraining;
- ``solvers.png``: both tables as figures; ``solvers.json``, ``cost.json``: the machine, threads and config.

``python -m msif.bench.solvers --smoke`` runs it on the config shrunk to seconds (tests/test_bench.py).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd

from msif.arguments import SOLVERS
from msif.bench.base import Reference, SolverBench, scoring_cost_axes

COST_SOLVERS = ("exact", "cg", *(f"cg+{s}" for s in SOLVERS if s not in ("exact", "cg")))
GGN_SOLVERS = ("cg", "ekfac")  # also run on the generalised Gauss–Newton in the pretraining stage


class SolversBench(SolverBench):
    """The reference is the exact solve on the Hessian; every solver of msif runs in every stage."""

    REFERENCE = "exact"
    CONFIG = "config/config.yaml"
    THREADS = 1
    DEFAULT_SOLVERS = SOLVERS
    DEFAULT_COST_SOLVERS = COST_SOLVERS
    TABLES = ("solvers", "cost")
    FIGURE = "solvers.png"
    AGREEMENT_COLUMNS = ("scenario", "stage", "solver", "curvature", "pearson", "pearson_min", "spearman", "top10_overlap",
                         "seconds", "fit_seconds", "peak_mib", "hvps", "full_hvp_equivalents", "residual", "converged")
    COST_COLUMNS = ("scenario", "solver", "n_test", "finetune_s", "cross_stage_s", "pretrain_s", "scores_s", "fit_s",
                    "residual_check_s", "cold_s", "warm_s", "epoch_s", "cold_epochs", "warm_epochs", "warm_unchecked_epochs",
                    "peak_mib", "pretrain_residual")

    def __init__(self, config: dict, n_test: int | None = None, run_dir: str | None = None):
        super().__init__(config, n_test, run_dir)
        self.curvature = "hessian"  # the table is on the Hessian whatever the config says; GGN rows are extra

    def extra_rows(self, scenario: str, ref: Reference) -> list[dict]:
        return [self.row(scenario, solver, "pretrain", ref, curvature="ggn") for solver in GGN_SOLVERS]

    @staticmethod
    def panels(agree: pd.DataFrame | None, cost: pd.DataFrame | None) -> list:
        out = []
        if agree is not None:
            hessian = agree[agree.curvature == "hessian"]
            out += [partial(agreement_bars, hessian), partial(cost_vs_residual, hessian)]
        if cost is not None:
            out.append(partial(scoring_cost, cost))
        return out


def agreement_bars(h: pd.DataFrame, ax) -> None:
    """Pearson with the exact scores per scenario × stage, one bar per solver."""
    solvers = list(dict.fromkeys(h.solver))
    labels = [f"{r.scenario}\n{r.stage}" for r in h.drop_duplicates(["scenario", "stage"]).itertuples()]
    width = 0.8 / len(solvers)
    for k, solver in enumerate(solvers):
        d = h[h.solver == solver]
        ax.bar(np.arange(len(d)) + k * width, d.pearson.clip(lower=-1), width, label=solver)
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, fontsize=8)
    ax.set_ylabel("Pearson with exact scores (mean over tests)")
    ax.axhline(0.999, color="k", lw=0.8, ls="--")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("Agreement with the exact scores")


def cost_vs_residual(h: pd.DataFrame, ax) -> None:
    for solver, d in h.groupby("solver", sort=False):
        ax.scatter(d.seconds.clip(lower=1e-3), d.residual.clip(lower=1e-16), label=solver)
    ax.set(xscale="log", yscale="log", xlabel="wall time of the solve(s) incl. fit [s]", ylabel="max relative residual vs true H",
           title="Cost vs residual")
    ax.legend(fontsize=8)


def scoring_cost(cost: pd.DataFrame, ax) -> None:
    for solver, d in cost.groupby("solver", sort=False):
        ax.plot(d.n_test, d.warm_epochs, "o-", label=f"{solver} (warm)")
        ax.plot(d.n_test, d.cold_epochs, "x:", color=ax.lines[-1].get_color(), label=f"{solver} (cold)")
    scoring_cost_axes(ax, "scoring time / one pretraining epoch", "Scoring cost")
    ax.legend(fontsize=7, ncol=2)


def main(argv: list[str] | None = None) -> None:
    SolversBench.cli(argv, "python -m msif.bench.solvers", __doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()
