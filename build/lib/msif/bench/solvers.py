"""Benchmark of the inverse-HVP solvers on a config's model: ``python -m msif.bench`` (``make bench``).

Not a timed test: it writes tables. On the config's experiment (default: digits, MLP 64→32→32) it
trains both stages once, computes the exact scores (dense eigendecompositions) per scenario, then,
for every solver × stage × scenario, the scores with that solver in that stage (``stage=finetune``:
``<solver>+exact``; ``pretrain``: ``exact+<solver>``; ``both``: ``<solver>``) and writes

- ``solvers.csv``: agreement with the exact scores — Pearson, Spearman and top-10 overlap (the 10
  largest scores, i.e. proponents) per test example, averaged (``pearson_min``: the worst test
  example) — wall time of the solve(s) including any fit, extra peak resident memory, curvature-
  vector products, the largest relative residual against the true curvature, ``converged``;
  rows with ``curvature=ggn`` solve the GGN instead and are compared with the exact *Hessian* scores;
- ``cost.csv``: scoring 1, 10 and 100 test examples end to end (finetune_ihvp, cross_stage_vector,
  pretrain_ihvp, scores), relative to one pretraining epoch (one forward + backward pass of the mean
  loss over the whole pretraining set). ``cold`` includes the one-off fits (dense eigendecomposition,
  Arnoldi, EK-FAC), ``warm`` reuses them — a fit is done once per stage, not per test example;
  ``warm_unchecked`` also leaves out the residual check against the true curvature (one product per
  test example and stage), which every solve reports;
- ``solvers.png``: both tables as figures; ``solvers.json``: the machine, threads and config.

Peak memory is the rise of the process's resident-set high-water mark (Linux ``VmHWM``, reset
through ``/proc/self/clear_refs`` before each measurement, after ``malloc_trim`` has returned freed
heap memory; torch's CPU allocations are invisible to ``tracemalloc``); NaN where the kernel does not
allow the reset. Times are wall-clock on a possibly
shared machine: compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import math
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from torch.func import grad

from msif.arguments import stage_solvers
from msif.core.solvers import Eigh
from msif.experiments.registry import Experiment
from msif.influence.multi_stage import cross_stage_vector, finetune_ihvp, pretrain_ihvp, removal_effect
from msif.influence.scoring import upweight_influence
from msif.task.objectives import stage_of
from msif.task.training import minimize

log = logging.getLogger("msif.bench")

SOLVERS = ("exact", "cg", "lissa", "arnoldi", "ekfac")
STAGES = ("finetune", "pretrain", "both")
COST_SOLVERS = ("exact", "cg", "cg+lissa", "cg+arnoldi", "cg+ekfac")
COST_N_TEST = (1, 10, 100)


# ---------------------------------------------------------------------------------------------
# Measurement helpers


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


def agreement(scores: torch.Tensor, exact: torch.Tensor, top: int = 10) -> dict:
    """Per test example (row) Pearson, Spearman and top-``top`` overlap with the exact scores, averaged (and the worst Pearson)."""
    from scipy.stats import pearsonr, spearmanr

    a, b = scores.detach().cpu().double().numpy(), exact.detach().cpu().double().numpy()
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


# ---------------------------------------------------------------------------------------------
# The benchmark


class Bench:
    """Both stages trained once; exact factorisations cached; solver runs measured one by one."""

    def __init__(self, config: dict, n_test: int):
        self.config = config
        self.exp = Experiment.from_config(config)
        self.options = dict(config["influence"])
        self.damping = float(self.options.get("damping", 0.0))
        self.pt = self.exp.pretrain_objective()
        t = config["training"]
        w, u, theta0 = self.exp.init_params()
        t0 = time.perf_counter()
        self.pt_params = minimize(self.pt, torch.cat([w, u]), grad_tol=t["grad_tol"], max_iter=t["max_iter"],
                                 newton_steps=t.get("newton_steps", 8)).params
        self.ft, self.ft_params = {}, {}
        for scenario in config["scenarios"]:
            ft = self.exp.finetune_objective(scenario, self.pt_params[: self.exp.model.w_spec.numel])
            self.ft[scenario] = ft
            self.ft_params[scenario] = minimize(ft, ft.initial(theta0), grad_tol=t["grad_tol"], max_iter=t["max_iter"],
                                              newton_steps=t.get("newton_steps", 8)).params
        log.info("trained both stages in %.1fs (p_pretrain=%d)", time.perf_counter() - t0, self.pt_params.numel())
        self.test = self._test(n_test)
        self._eigh: dict = {}

    def _test(self, n: int):
        split = self.exp.data.finetune_test
        if n > len(split):
            raise ValueError(f"--n-test {n} exceeds the finetuning test split ({len(split)})")
        return split.subset(torch.arange(n, device=self.exp.device))

    def eigh(self, key: str, objective, params: torch.Tensor, curvature: str = "hessian") -> tuple[Eigh, dict]:
        """The dense eigendecomposition of a stage's curvature, built once (and how long it took)."""
        if (key, curvature) not in self._eigh:
            with measured() as m:
                e = Eigh.of(stage_of(objective).matvec(params, curvature), params.numel(), params)
            self._eigh[(key, curvature)] = (e, m)
        return self._eigh[(key, curvature)]

    def options_for(self, curvature: str) -> dict:
        """The influence block with the curvature set and the diagnostic Lanczos estimate off (not part of a solver's cost)."""
        return {**self.options, "curvature": curvature, "lanczos_iters": 0}

    def finetune(self, scenario: str, solver: str, test, curvature: str = "hessian"):
        ft, x = self.ft[scenario], self.ft_params[scenario]
        extra = {}
        if stage_solvers(solver)[0] == "exact":
            e, m = self.eigh(f"finetune_{scenario}", ft, x, curvature)
            extra = {"fit_seconds": m["seconds"], "fit_peak_mib": m["peak_mib"]}
            return finetune_ihvp(ft, x, test, solver, self.damping, self.options_for(curvature), eigh=e), extra
        return finetune_ihvp(ft, x, test, solver, self.damping, self.options_for(curvature)), extra

    def pretrain(self, g: torch.Tensor, solver: str, curvature: str = "hessian"):
        extra, eigh = {}, None
        if stage_solvers(solver)[1] == "exact":
            eigh, m = self.eigh("pretrain", self.pt, self.pt_params, curvature)
            extra = {"fit_seconds": m["seconds"], "fit_peak_mib": m["peak_mib"]}
        return pretrain_ihvp(self.pt, self.pt_params, g, solver, self.damping, self.options_for(curvature), eigh=eigh), extra

    def scores(self, s: torch.Tensor) -> torch.Tensor:
        return removal_effect(upweight_influence(self.pt, self.pt_params, s, self.options.get("batch_size", 256)), self.pt.n)

    # -- agreement table -------------------------------------------------------------------------

    def agreement_rows(self, solvers=SOLVERS, stages=STAGES, ggn: tuple[str, ...] = ("cg", "ekfac")) -> list[dict]:
        rows = []
        for scenario in self.config["scenarios"]:
            ref_v, _ = self.finetune(scenario, "exact", self.test)
            ref_g = cross_stage_vector(self.ft[scenario], self.ft_params[scenario], self.test, ref_v.x)
            ref_s, _ = self.pretrain(ref_g, "exact")
            exact = self.scores(ref_s.x)
            for solver in solvers:
                for stage in stages:
                    rows.append(self._row(scenario, solver, stage, "hessian", ref_v, ref_g, exact))
            for solver in ggn:
                rows.append(self._row(scenario, solver, "pretrain", "ggn", ref_v, ref_g, exact))
        return rows

    def _row(self, scenario, solver, stage, curvature, ref_v, ref_g, exact) -> dict:
        name = {"finetune": f"{solver}+exact", "pretrain": f"exact+{solver}", "both": solver}[stage]
        row = {"scenario": scenario, "stage": stage, "solver": solver, "curvature": curvature}
        seconds, peak, hvps, equiv, residual, converged, fit = 0.0, 0.0, 0, 0.0, 0.0, True, 0.0
        solves = []
        g = ref_g
        if stage in ("finetune", "both"):
            with measured() as m:
                v, extra = self.finetune(scenario, name, self.test, curvature)
            g = cross_stage_vector(self.ft[scenario], self.ft_params[scenario], self.test, v.x)
            solves.append((v, m, extra))
        if stage in ("pretrain", "both"):
            with measured() as m:
                s, extra = self.pretrain(g, name, curvature)
            solves.append((s, m, extra))
        else:
            s, _ = self.pretrain(g, "exact")
        for sol, m, extra in solves:
            seconds += m["seconds"] + extra.get("fit_seconds", 0.0)
            fit += extra.get("fit_seconds", 0.0) + sol.info.get("fit_seconds", 0.0)
            peak = max(peak, m["peak_mib"], extra.get("fit_peak_mib", 0.0))
            hvps += sol.info.get("hvps", 0)
            equiv += sol.info.get("full_hvp_equivalents", sol.info.get("hvps", 0))
            residual = max(residual, float(sol.residual.max()))
            converged &= bool(sol.info.get("converged", True))
        row.update(agreement(self.scores(s.x), exact))
        row.update(seconds=seconds, fit_seconds=fit, peak_mib=peak, hvps=hvps, full_hvp_equivalents=equiv, residual=residual,
                   converged=converged)
        log.info("%s", {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
        return row

    # -- cost table --------------------------------------------------------------------------------

    def cost_rows(self, solvers=COST_SOLVERS, n_tests=COST_N_TEST, scenario: str = "fixed") -> list[dict]:
        epoch = epoch_seconds(self.pt, self.pt_params)
        rows = []
        for solver in solvers:
            for n in n_tests:
                test = self._test(n)
                self._eigh.clear()  # cold: every fit counted
                t = {}
                with measured() as m:
                    t0 = time.perf_counter()
                    v, ev = self.finetune(scenario, solver, test)
                    t["finetune_s"] = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    g = cross_stage_vector(self.ft[scenario], self.ft_params[scenario], test, v.x)
                    t["cross_stage_s"] = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    s, ep = self.pretrain(g, solver)
                    t["pretrain_s"] = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self.scores(s.x)
                    t["scores_s"] = time.perf_counter() - t0
                # the one-off fits, all inside the stage timings: dense eigendecompositions, Arnoldi, EK-FAC
                fits = sum(x.get("fit_seconds", 0.0) for x in (ev, ep, v.info, s.info))
                check = v.info.get("residual_seconds", 0.0) + s.info.get("residual_seconds", 0.0)
                cold = sum(t.values())
                warm = cold - fits
                rows.append({"scenario": scenario, "solver": solver, "n_test": n, **t, "fit_s": fits, "residual_check_s": check,
                             "cold_s": cold, "warm_s": warm, "epoch_s": epoch, "cold_epochs": cold / epoch, "warm_epochs": warm / epoch,
                             "warm_unchecked_epochs": (warm - check) / epoch, "peak_mib": m["peak_mib"],
                             "pretrain_residual": float(s.residual.max())})
                log.info("cost %s", {k: (round(x, 4) if isinstance(x, float) else x) for k, x in rows[-1].items()})
        return rows


# ---------------------------------------------------------------------------------------------
# Figures and entry point


def figure(agree: pd.DataFrame, cost: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    h = agree[agree.curvature == "hessian"]
    labels = [f"{r.scenario}\n{r.stage}" for r in h.drop_duplicates(["scenario", "stage"]).itertuples()]
    width = 0.8 / len(SOLVERS)
    for k, solver in enumerate(SOLVERS):
        d = h[h.solver == solver]
        axes[0].bar(np.arange(len(d)) + k * width, d.pearson.clip(lower=-1), width, label=solver)
    axes[0].set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, fontsize=8)
    axes[0].set_ylabel("Pearson with exact scores (mean over tests)")
    axes[0].axhline(0.999, color="k", lw=0.8, ls="--")
    axes[0].legend(fontsize=8, loc="lower left")
    axes[0].set_title("Agreement with the exact scores")
    for solver in SOLVERS:
        d = h[h.solver == solver]
        axes[1].scatter(d.seconds.clip(lower=1e-3), d.residual.clip(lower=1e-16), label=solver)
    axes[1].set(xscale="log", yscale="log", xlabel="wall time of the solve(s) incl. fit [s]",
                ylabel="max relative residual vs true H", title="Cost vs residual")
    axes[1].legend(fontsize=8)
    for solver, d in cost.groupby("solver", sort=False):
        axes[2].plot(d.n_test, d.warm_epochs, "o-", label=f"{solver} (warm)")
        axes[2].plot(d.n_test, d.cold_epochs, "x:", color=axes[2].lines[-1].get_color(), label=f"{solver} (cold)")
    axes[2].axhline(3, color="k", lw=0.8, ls="--")
    axes[2].set(xscale="log", yscale="log", xlabel="test examples scored", ylabel="scoring time / one pretraining epoch",
                title="Scoring cost (target: 100 tests <= 3 epochs)")
    axes[2].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m msif.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="config/config.yaml", help="experiment config (its influence block sets the solver options)")
    p.add_argument("--out", default="results/bench", help="output folder")
    p.add_argument("--n-test", type=int, default=None, help="test examples in the agreement table (default: influence.n_test)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    p.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    p.add_argument("--cost-n-test", type=int, nargs="+", default=list(COST_N_TEST))
    p.add_argument("--skip-cost", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    config = yaml.safe_load(Path(args.config).read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bench = Bench(config, args.n_test or config["influence"]["n_test"])
    agree = pd.DataFrame(bench.agreement_rows(solvers=tuple(args.solvers)))
    agree.to_csv(out / "solvers.csv", index=False)
    cost = pd.DataFrame() if args.skip_cost else pd.DataFrame(bench.cost_rows(n_tests=tuple(args.cost_n_test)))
    if not cost.empty:
        cost.to_csv(out / "cost.csv", index=False)
        figure(agree, cost, out / "solvers.png")
    meta = {"config": args.config, "run": config.get("run"), "torch": torch.__version__, "threads": args.threads,
            "machine": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "load_average": os.getloadavg(), "p_pretrain": bench.pt_params.numel(), "n_pretrain": bench.pt.n,
            "n_test": len(bench.test), "influence": config["influence"], "seconds": time.perf_counter() - t0}
    (out / "solvers.json").write_text(json.dumps(meta, indent=2, default=str))
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.precision", 4):
        print(agree.to_string(index=False))
        if not cost.empty:
            print(cost[["solver", "n_test", "finetune_s", "cross_stage_s", "pretrain_s", "scores_s", "fit_s", "cold_s", "warm_s",
                        "residual_check_s", "epoch_s", "cold_epochs", "warm_epochs", "warm_unchecked_epochs"]].to_string(index=False))


if __name__ == "__main__":
    main()
