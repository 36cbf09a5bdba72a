"""Solver benchmark on a model too big for a dense Hessian: ``python -m msif.bench_scale`` (``make bench-scale``).

Not a timed test: it writes tables. On ``config/scale.yaml`` (a CNN, p ≈ 10⁵) there is no exact solve;
the reference is CG run to a tight tolerance (``--ref-tol``) in both stages, on the config's curvature.

- ``scale_solvers.csv``: for every solver (``pcg@k``, ``cg@k``: stopped after k iterations) × stage × scenario (``stage=pretrain``: the reference CG in the
  finetuning stage, the solver for pretraining; ``both``: the solver in both stages; ``finetune``: the
  solver for finetuning, the reference CG for pretraining), agreement with the reference scores —
  Pearson, Spearman, top-10 overlap (mean over test examples; ``pearson_min`` the worst) — wall time
  including any fit, extra peak resident memory, curvature products, the largest relative residual
  against the true curvature, ``converged``;
- ``scale_cost.csv``: scoring 1, 10 and 100 test examples end to end (finetune_ihvp, cross_stage_vector,
  pretrain_ihvp, scores) relative to one pretraining epoch (one forward + backward pass of the mean
  loss over the pretraining set), split by step, ``cold`` (fits included), ``warm`` (fits reused) and
  ``warm_unchecked`` (also without the residual checks, one curvature product per test example);
  ``scores_jvp_s``: the dot products ``∇l(z_i)·s`` computed instead by one JVP per test column
  (:func:`msif.influence.upweight_influence_jvp`, up to ``--jvp-max-n`` test examples);
  ``scores_rank<r>_{s,epochs,pearson,pearson_min}``: the dot products with the low-rank query of rank r
  (``influence.query_rank``), their time and their agreement with the exact dot products of the same ``s``;
  ``pretrain_hvps``: curvature products of the pretraining solve (``pcg`` and ``cg``);
- ``scale_solvers.json`` / ``scale_cost.json``: machine, threads, load average, sizes, the reference's residuals;
- ``scale_solvers.png``: Pearson against curvature products (pretraining stage), and the dot products' cost
  in epochs against the number of test examples, exact and low-rank (``--figure-only`` redraws it).

Times are wall-clock on a possibly shared machine: compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from msif import io
from msif.bench.solvers import agreement, epoch_seconds, measured
from msif.config import for_seed
from msif.experiments.registry import Experiment
from msif.influence.multi_stage import cross_stage_vector, finetune_ihvp, pretrain_ihvp, removal_effect
from msif.influence.scoring import upweight_influence, upweight_influence_jvp
from msif.task.training import minimize

log = logging.getLogger("msif.bench_scale")

SOLVERS = ("cg", "ekfac", "pcg", "lissa", "arnoldi")
STAGES = ("finetune", "pretrain", "both")
COST_SOLVERS = ("cg+ekfac",)
COST_N_TEST = (1, 10, 100)
QUERY_RANKS = (8, 32)


def solver_spec(spec: str) -> tuple[str, int | None]:
    """``'pcg@3'`` → (``'pcg'``, 3): an iterative solver stopped after k iterations (its ``max_iter``); ``'cg'`` → (``'cg'``, None)."""
    name, _, k = spec.partition("@")
    if name not in SOLVERS or (k and (not k.isdigit() or int(k) < 1 or name not in ("cg", "pcg"))):
        raise ValueError(f"solver {spec!r}: allowed {list(SOLVERS)}, or cg@k / pcg@k (k >= 1 iterations)")
    return name, int(k) if k else None


class ScaleBench:
    """Both stages trained once (or loaded from a workflow run), the tight-CG reference, solver runs measured one by one."""

    def __init__(self, config: dict, n_test: int, ref_tol: float, ref_max_iter: int, run_dir: str | None = None):
        self.config = config
        self.exp = Experiment.from_config(config)
        self.options = {**config["influence"], "lanczos_iters": 0}  # the diagnostic Lanczos estimate is not a solver's cost
        self.ref_options = {**self.options, "cg": {**config["influence"].get("cg", {}), "tol": ref_tol, "max_iter": ref_max_iter}}
        self.damping = float(config["influence"]["damping"])
        self.pt = self.exp.pretrain_objective()
        self.ft, self.ft_params = {}, {}
        w, u, theta0 = self.exp.init_params()
        t, t0 = config["training"], time.perf_counter()
        steps = t.get("newton_steps", 8)
        if run_dir:  # the workflow's own optima (train/pretrain.pt, train/finetune_<scenario>.pt)
            self.pt_params = io.load_tensors(Path(run_dir) / "train" / "pretrain.pt")["params"].to(self.exp.device)
        else:
            self.pt_params = minimize(self.pt, torch.cat([w, u]), t["grad_tol"], t["max_iter"], newton_steps=steps).params
        for scenario in config["scenarios"]:
            ft = self.exp.finetune_objective(scenario, self.pt_params[: self.exp.model.w_spec.numel])
            self.ft[scenario] = ft
            if run_dir:
                self.ft_params[scenario] = io.load_tensors(Path(run_dir) / "train" / f"finetune_{scenario}.pt")["params"].to(self.exp.device)
            else:
                self.ft_params[scenario] = minimize(ft, ft.initial(theta0), t["grad_tol"], t["max_iter"], newton_steps=steps).params
        log.info("both stages ready in %.1fs (p_pretrain=%d, n=%d)", time.perf_counter() - t0, self.pt_params.numel(), self.pt.n)
        self.test = self._test(n_test)
        self.reference_residuals: dict = {}
        self.jvp_max_n = 10

    def _test(self, n: int):
        split = self.exp.data.finetune_test
        if n > len(split):
            raise ValueError(f"--n-test {n} exceeds the finetuning test split ({len(split)})")
        return split.subset(torch.arange(n, device=self.exp.device))

    def scores(self, s: torch.Tensor, query_rank: int | None = None) -> torch.Tensor:
        return removal_effect(upweight_influence(self.pt, self.pt_params, s, self.config["influence"]["batch_size"],
                                                 query_rank=query_rank), self.pt.n)

    def _options(self, spec: str, reference: bool) -> tuple[str, dict]:
        """The solver name of ``spec`` (``name`` or ``name@k``, per stage as ``a+b``) and the options it runs with."""
        options = dict(self.ref_options if reference else self.options)
        names = []
        for part in spec.split("+"):
            name, k = solver_spec(part)
            if k is not None:
                options[name] = {**(options.get(name) or {}), "max_iter": k}
            names.append(name)
        return "+".join(names), options

    def _finetune(self, scenario, solver, test, reference=False):
        name, options = self._options(solver.split("+")[0], reference)
        return finetune_ihvp(self.ft[scenario], self.ft_params[scenario], test, name, self.damping, options)

    def _pretrain(self, g, solver, reference=False):
        name, options = self._options(solver.split("+")[-1], reference)
        return pretrain_ihvp(self.pt, self.pt_params, g, name, self.damping, options)

    # -- agreement with the tight CG -------------------------------------------------------------

    def agreement_rows(self, solvers=SOLVERS, stages=STAGES) -> list[dict]:
        rows = []
        for scenario in self.config["scenarios"]:
            with measured() as m:
                ref_v = self._finetune(scenario, "cg", self.test, reference=True)
                ref_g = cross_stage_vector(self.ft[scenario], self.ft_params[scenario], self.test, ref_v.x)
                ref_s = self._pretrain(ref_g, "cg", reference=True)
            reference = self.scores(ref_s.x)
            self.reference_residuals[scenario] = {"finetune": float(ref_v.residual.max()), "pretrain": float(ref_s.residual.max()),
                                                  "finetune_hvps": ref_v.info.get("hvps"), "pretrain_hvps": ref_s.info.get("hvps"),
                                                  "seconds": m["seconds"]}
            log.info("reference[%s]: %s", scenario, self.reference_residuals[scenario])
            for solver in solvers:
                for stage in stages:
                    rows.append(self._row(scenario, solver, stage, ref_v, ref_g, ref_s, reference))
        return rows

    def _row(self, scenario, solver, stage, ref_v, ref_g, ref_s, reference) -> dict:
        row = {"scenario": scenario, "stage": stage, "solver": solver, "curvature": self.options.get("curvature", "hessian"),
               "reference": "cg"}
        solves, g, s = [], ref_g, None
        if stage in ("finetune", "both"):
            with measured() as m:
                v = self._finetune(scenario, solver, self.test)
            g = cross_stage_vector(self.ft[scenario], self.ft_params[scenario], self.test, v.x)
            solves.append((v, m))
        if stage in ("pretrain", "both"):
            with measured() as m:
                s = self._pretrain(g, solver)
            solves.append((s, m))
        else:
            s = self._pretrain(g, "cg", reference=True)
        row.update(agreement(self.scores(s.x), reference))
        row.update(seconds=sum(m["seconds"] for _, m in solves), fit_seconds=sum(x.info.get("fit_seconds", 0.0) for x, _ in solves),
                   peak_mib=max(m["peak_mib"] for _, m in solves), hvps=sum(x.info.get("hvps", 0) for x, _ in solves),
                   residual=max(float(x.residual.max()) for x, _ in solves),
                   converged=all(bool(x.info.get("converged", True)) for x, _ in solves))
        log.info("%s", {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
        return row

    # -- cost relative to one epoch ----------------------------------------------------------------

    def cost_rows(self, solvers=COST_SOLVERS, n_tests=COST_N_TEST, scenario: str = "fixed", query_ranks=QUERY_RANKS) -> list[dict]:
        epoch = epoch_seconds(self.pt, self.pt_params, repeats=5)
        log.info("one pretraining epoch (forward + backward of the mean loss over n=%d): %.3fs", self.pt.n, epoch)
        rows = []
        for solver in solvers:
            for n in n_tests:
                test, t = self._test(n), {}
                with measured() as m:
                    t0 = time.perf_counter()
                    v = self._finetune(scenario, solver, test)
                    t["finetune_s"], t0 = time.perf_counter() - t0, time.perf_counter()
                    g = cross_stage_vector(self.ft[scenario], self.ft_params[scenario], test, v.x)
                    t["cross_stage_s"], t0 = time.perf_counter() - t0, time.perf_counter()
                    s = self._pretrain(g, solver)
                    t["pretrain_s"], t0 = time.perf_counter() - t0, time.perf_counter()
                    exact = self.scores(s.x)
                    t["scores_s"] = time.perf_counter() - t0
                low_rank = {}
                for r in query_ranks:  # the same dot products with every layer block of s truncated to rank r
                    t0 = time.perf_counter()
                    approx = self.scores(s.x, query_rank=r)
                    elapsed, agree = time.perf_counter() - t0, agreement(approx, exact)
                    low_rank.update({f"scores_rank{r}_s": elapsed, f"scores_rank{r}_pearson": agree["pearson"],
                                     f"scores_rank{r}_pearson_min": agree["pearson_min"]})
                low_rank.update({f"scores_rank{r}_epochs": low_rank[f"scores_rank{r}_s"] / epoch for r in query_ranks})
                if n <= self.jvp_max_n:  # the forward-mode alternative for the dot products, timed beside them
                    t0 = time.perf_counter()
                    upweight_influence_jvp(self.pt, self.pt_params, s.x, self.config["influence"]["batch_size"])
                    jvp_s = time.perf_counter() - t0
                else:
                    jvp_s = float("nan")
                fits = sum(x.info.get("fit_seconds", 0.0) for x in (v, s))
                check = sum(x.info.get("residual_seconds", 0.0) for x in (v, s))
                cold = sum(t.values())
                warm = cold - fits
                rows.append({"scenario": scenario, "solver": solver, "n_test": n, "n_pretrain": self.pt.n, **t, "fit_s": fits, "residual_check_s": check,
                             "cold_s": cold, "warm_s": warm, "epoch_s": epoch, "cold_epochs": cold / epoch, "warm_epochs": warm / epoch,
                             "warm_unchecked_epochs": (warm - check) / epoch, "peak_mib": m["peak_mib"],
                             "finetune_hvps": v.info.get("hvps"), "pretrain_residual": float(s.residual.max()),
                             "scores_jvp_s": jvp_s, "scores_epochs": t["scores_s"] / epoch, "scores_jvp_epochs": jvp_s / epoch,
                             "pretrain_hvps": s.info.get("hvps"), **low_rank})
                log.info("cost %s", {k: (round(x, 4) if isinstance(x, float) else x) for k, x in rows[-1].items()})
        return rows


def figure(agree: pd.DataFrame | None, cost: pd.DataFrame | None, path: Path) -> None:
    """``scale_solvers.png``: agreement with the reference against curvature products (pretraining stage),
    and the dot products' cost in epochs against the number of test examples, exact and low-rank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    if agree is not None:
        pre = agree[agree.stage == "pretrain"]
        for (family, scenario), d in pre.groupby([pre.solver.str.split("@").str[0], "scenario"], sort=False):
            d = d.sort_values("hvps")
            axes[0].plot(d.hvps.clip(lower=0.5), d.pearson, "o-" if scenario == "fixed" else "s--", label=f"{family} ({scenario})")
        axes[0].axhline(0.9, color="k", lw=0.8, ls="--")
        axes[0].set(xscale="log", xlabel="curvature products of the pretraining solve (EK-FAC: 0, drawn at 0.5)",
                    ylabel="Pearson with the reference CG's scores", title="Pretraining stage: accuracy per curvature product")
        axes[0].legend(fontsize=8)
    if cost is not None:
        first = cost[cost.solver == cost.solver.iloc[0]]
        axes[1].plot(first.n_test, first.scores_epochs, "ko-", label="exact")
        for col in [c for c in first.columns if c.startswith("scores_rank") and c.endswith("_epochs")]:
            r = col.removeprefix("scores_rank").removesuffix("_epochs")
            pearson = first[f"scores_rank{r}_pearson"].iloc[-1]
            axes[1].plot(first.n_test, first[col], "o:", label=f"low-rank query r={r} (Pearson {pearson:.4f} at {first.n_test.iloc[-1]})")
        axes[1].axhline(3, color="k", lw=0.8, ls="--")
        n = f"n = {int(cost.n_pretrain.iloc[0]):,}" if "n_pretrain" in cost else "n = ?"
        axes[1].set(xscale="log", yscale="log", xlabel="test examples scored", ylabel="dot products' time / one pretraining epoch",
                    title=f"Scoring cost, {n} (target: 100 tests <= 3 epochs)")
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _spec_arg(spec: str) -> str:
    try:
        solver_spec(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return spec


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m msif.bench_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="config/scale.yaml", help="experiment config (its influence block sets the solver options)")
    p.add_argument("--run-dir", default=None, help="a workflow run's seed folder (results/<run>/seed<seed>) to take the trained optima from")
    p.add_argument("--out", default="results/bench", help="output folder")
    p.add_argument("--n-test", type=int, default=None, help="test examples in the agreement table (default: influence.n_test)")
    p.add_argument("--ref-tol", type=float, default=1e-6, help="relative residual of the reference CG")
    p.add_argument("--ref-max-iter", type=int, default=2000, help="iterations of the reference CG")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--solvers", nargs="+", default=["cg", "ekfac"], type=_spec_arg,
                   help=f"solvers of the agreement table: {list(SOLVERS)}, or cg@k / pcg@k (stopped after k iterations)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--cost-solvers", nargs="+", default=list(COST_SOLVERS))
    p.add_argument("--cost-n-test", type=int, nargs="+", default=list(COST_N_TEST))
    p.add_argument("--query-ranks", type=int, nargs="*", default=list(QUERY_RANKS),
                   help="also time the dot products with the low-rank query of these ranks (influence.query_rank), against the exact ones")
    p.add_argument("--jvp-max-n", type=int, default=10, help="time the JVP dot products up to this many test examples")
    p.add_argument("--skip-agreement", action="store_true")
    p.add_argument("--skip-cost", action="store_true")
    p.add_argument("--figure-only", action="store_true", help="redraw scale_solvers.png from the tables in --out and stop")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    config = for_seed(yaml.safe_load(Path(args.config).read_text()))
    config.setdefault("plugin", {})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.figure_only:
        tables = [out / "scale_solvers.csv", out / "scale_cost.csv"]
        figure(*(pd.read_csv(t) if t.exists() else None for t in tables), out / "scale_solvers.png")
        return
    t0 = time.perf_counter()
    bench = ScaleBench(config, args.n_test or config["influence"]["n_test"], args.ref_tol, args.ref_max_iter, args.run_dir)
    bench.jvp_max_n = args.jvp_max_n
    if not args.skip_agreement:
        agree = pd.DataFrame(bench.agreement_rows(tuple(args.solvers), tuple(args.stages)))
        agree.to_csv(out / "scale_solvers.csv", index=False)
        with pd.option_context("display.width", 250, "display.max_columns", 30, "display.precision", 4):
            print(agree.to_string(index=False))
    if not args.skip_cost:
        cost = pd.DataFrame(bench.cost_rows(tuple(args.cost_solvers), tuple(args.cost_n_test), query_ranks=tuple(args.query_ranks)))
        cost.to_csv(out / "scale_cost.csv", index=False)
        with pd.option_context("display.width", 250, "display.max_columns", 30, "display.precision", 4):
            print(cost.to_string(index=False))
    figure(pd.read_csv(out / "scale_solvers.csv") if (out / "scale_solvers.csv").exists() else None,
           pd.read_csv(out / "scale_cost.csv") if (out / "scale_cost.csv").exists() else None, out / "scale_solvers.png")
    meta = {"config": args.config, "run_dir": args.run_dir, "torch": torch.__version__, "threads": args.threads,
            "machine": platform.platform(), "cpus": os.cpu_count(), "load_average_end": os.getloadavg(),
            "device": str(bench.exp.device), "dtype": config["dtype"], "p_pretrain": bench.pt_params.numel(), "n_pretrain": bench.pt.n,
            "n_test": len(bench.test), "ref_tol": args.ref_tol, "ref_max_iter": args.ref_max_iter,
            "reference": bench.reference_residuals, "influence": config["influence"], "seconds": time.perf_counter() - t0}
    for table, ran in (("scale_solvers", not args.skip_agreement), ("scale_cost", not args.skip_cost)):
        if ran:  # a run of one part leaves the other part's tables and metadata alone
            (out / f"{table}.json").write_text(json.dumps(meta, indent=2, default=str))


if __name__ == "__main__":
    main()
