"""What the two solver benchmarks share: the trained problem, the reference scores, the agreement and cost tables, the CLI.

:mod:`msif.bench.solvers` (``python -m msif.bench.solvers``; reference: the exact solve) and
:mod:`msif.bench.scale` (``python -m msif.bench.scale``; reference: a tightly converged CG) subclass
:class:`SolverBench`; they differ in the reference, the defaults, the extra columns and the figure.

- agreement table: for every solver × stage × scenario (``stage=finetune``: the solver in the finetuning
  stage, the reference in pretraining; ``pretrain``: the reference in finetuning, the solver in pretraining;
  ``both``: the solver in both), agreement with the reference scores — Pearson, Spearman and top-10
  overlap per test example, averaged (``pearson_min``: the worst test example) — wall time of the solve(s)
  including any fit, extra peak resident memory, curvature products, the largest relative residual
  against the true curvature, ``converged``. An iterative solver may be stopped after k iterations
  (``cg@k``, ``pcg@k``);
- cost table: scoring 1, 10 and 100 test examples end to end (finetune_ihvp, cross_stage_vector,
  pretrain_ihvp, scores) relative to one pretraining epoch (one forward + backward pass of the mean loss
  over the pretraining set). ``cold`` includes the one-off fits (dense eigendecomposition, Arnoldi,
  EK-FAC), ``warm`` reuses them — a fit is done once per stage, not per test example; ``warm_unchecked``
  also leaves out the residual check against the true curvature (one product per test example and
  stage), which every solve reports;
- ``<table>.json`` beside each table: the machine, threads, sizes, the reference's residuals, the config.

Every entry point takes the config of one seed (:func:`msif.config.for_seed`, ``--seed``; default the
first of ``seeds``). ``--smoke`` runs on the config shrunk to seconds (:func:`smoke_config`).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import torch

from msif import io
from msif.arguments import SOLVERS, SolveArguments
from msif.bench.measure import agreement, epoch_seconds, machine, measured, settle, stopwatch
from msif.config import for_seed, load_config, validate_config
from msif.core.solvers import Eigh, Solve
from msif.experiments.registry import Experiment
from msif.influence.multi_stage import cross_stage_vector, finetune_ihvp, pretrain_ihvp, removal_effect
from msif.influence.scoring import upweight_influence
from msif.task.objectives import PretrainObjective, stage_of
from msif.task.training import minimize

log = logging.getLogger("msif.bench")

STAGES = ("finetune", "pretrain", "both")
COST_N_TEST = (1, 10, 100)
ITERATIVE = ("cg", "pcg")  # the solvers that may be stopped after k iterations: cg@k, pcg@k


# ---------------------------------------------------------------------------------------------
# Config, solver names, the trained problem


def config_for(path: str, seed: int | None = None, smoke: bool = False) -> dict:
    """The config file validated as the workflow validates it (schema defaults filled in), for one seed
    (:func:`msif.config.for_seed`: default the first of ``seeds``); shrunk by ``smoke`` (:func:`smoke_config`)."""
    config = for_seed(validate_config(load_config(path)), seed)
    return smoke_config(config) if smoke else config


def smoke_config(config: dict) -> dict:
    """The config shrunk to run in seconds on a CPU, in float64: 60 pretraining examples, a 6-unit hidden layer
    (2 channels per conv layer), 3 test examples, batches of 16, LiSSA 20 steps deep, Arnoldi of rank 10 (20
    iterations), EK-FAC preconditioned CG run to 1e-10: every path runs; only CG and PCG are accurate."""
    c = copy.deepcopy(config)
    c.update(dtype="float64", device="cpu")
    c["data"].update(n_pretrain=60, n_finetune=40)
    if "n_pretrain_test" in c["data"]:
        c["data"]["n_pretrain_test"] = 10
    c["model"]["hidden"] = [6]
    if "channels" in c["model"]:
        c["model"]["channels"] = [2] * len(c["model"]["channels"])
    t = c["training"]
    t.update(grad_tol=1e-8, max_iter=3000)
    inf = c["influence"]
    inf.update(batch_size=16, n_test=3, lissa={**(inf.get("lissa") or {}), "depth": 20}, arnoldi={"rank": 10, "iters": 20},
               ekfac={"batch_size": 16}, pcg={"batch_size": 16, "tol": 1e-10})
    return c


def solver_spec(spec: str, choices: tuple[str, ...] = SOLVERS) -> list[tuple[str, int | None]]:
    """``'cg@3+ekfac'`` → [(``'cg'``, 3), (``'ekfac'``, None)]: one (solver, iterations) per stage (one or two parts);
    ``@k`` stops an iterative solver after k iterations (its ``max_iter``)."""
    parts = spec.split("+")
    out = []
    for part in parts:
        name, _, k = part.partition("@")
        if len(parts) > 2 or name not in choices or (k and (not k.isdigit() or int(k) < 1 or name not in ITERATIVE)):
            raise ValueError(f"solver {spec!r}: allowed {list(choices)}, or cg@k / pcg@k (k >= 1 iterations), "
                             "or '<finetune>+<pretrain>' naming two of them")
        out.append((name, int(k) if k else None))
    return out


@dataclass
class Trained:
    """Both stages at their optima: the pretraining objective and parameters, the finetuning ones per scenario."""

    pt: PretrainObjective
    pt_params: torch.Tensor
    ft: dict
    ft_params: dict


def train(exp: Experiment, config: dict, run_dir: str | None = None) -> Trained:
    """Both stages trained to their optima (the ``training`` block), or loaded from a workflow run's seed
    folder ``run_dir`` (``train/pretrain.pt``, ``train/finetune_<scenario>.pt``)."""
    t = config["training"]

    def fit(objective, x0: torch.Tensor) -> torch.Tensor:
        return minimize(objective, x0, t["grad_tol"], t["max_iter"], newton_steps=t.get("newton_steps", 8)).params

    def load(name: str) -> torch.Tensor:
        return io.load_tensors(Path(run_dir) / "train" / f"{name}.pt")["params"].to(exp.device)

    w, u, theta0 = exp.init_params()
    pt = exp.pretrain_objective()
    pt_params = load("pretrain") if run_dir else fit(pt, torch.cat([w, u]))
    ft = {s: exp.finetune_objective(s, pt_params[: exp.model.w_spec.numel]) for s in config["scenarios"]}
    ft_params = {s: load(f"finetune_{s}") if run_dir else fit(f, f.initial(theta0)) for s, f in ft.items()}
    return Trained(pt, pt_params, ft, ft_params)


@dataclass
class Reference:
    """A scenario's reference: the finetuning solve, the cross-stage vector, the pretraining solve, the scores."""

    v: Solve
    g: torch.Tensor
    s: Solve
    scores: torch.Tensor


def solve_costs(solves: list[tuple[Solve, dict, dict]]) -> dict:
    """The cost columns of an agreement row from its (solve, measured block, dense fit) triples."""
    fits = sum(fit.get("fit_seconds", 0.0) for _, _, fit in solves)
    return {"seconds": sum(m["seconds"] for _, m, _ in solves) + fits,
            "fit_seconds": fits + sum(x.info.get("fit_seconds", 0.0) for x, _, _ in solves),
            "peak_mib": max(max(m["peak_mib"], fit.get("fit_peak_mib", 0.0)) for _, m, fit in solves),
            "hvps": sum(x.info.get("hvps", 0) for x, _, _ in solves),
            "full_hvp_equivalents": sum(x.info.get("full_hvp_equivalents", x.info.get("hvps", 0)) for x, _, _ in solves),
            "residual": max(float(x.residual.max()) for x, _, _ in solves),
            "converged": all(bool(x.info.get("converged", True)) for x, _, _ in solves)}


def _rounded(row: dict, digits: int = 6) -> dict:
    return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in row.items()}


# ---------------------------------------------------------------------------------------------
# The benchmark


class SolverBench:
    """Both stages trained once; the reference scores per scenario; solver runs measured one by one.

    A subclass sets the reference solver, its defaults, file names and columns, and may add agreement rows
    (:meth:`extra_rows`), cost columns (:meth:`extra_cost`) and figure panels (:meth:`panels`).
    """

    REFERENCE = "exact"
    CHOICES: tuple[str, ...] = SOLVERS
    CONFIG = "config/config.yaml"
    THREADS = 1
    DEFAULT_SOLVERS: tuple[str, ...] = SOLVERS
    DEFAULT_COST_SOLVERS: tuple[str, ...] = ("cg",)
    SMOKE_DEFAULTS: ClassVar[dict] = {"cost_n_test": [1, 3]}  # argument defaults under --smoke
    TABLES = ("solvers", "cost")  # the agreement and cost tables: <out>/<name>.csv and .json
    FIGURE = "solvers.png"
    AGREEMENT_COLUMNS: tuple[str, ...] = ()
    COST_COLUMNS: tuple[str, ...] = ()
    EPOCH_REPEATS = 20

    def __init__(self, config: dict, n_test: int | None = None, run_dir: str | None = None):
        self.config = config
        self.exp = Experiment.from_config(config)
        self.options = {**config["influence"], "lanczos_iters": 0}  # the diagnostic Lanczos estimate is not a solver's cost
        self.ref_options = self.options
        self.curvature = self.options.get("curvature", "hessian")
        t0 = time.perf_counter()
        trained = train(self.exp, config, run_dir)
        self.pt, self.pt_params, self.ft, self.ft_params = trained.pt, trained.pt_params, trained.ft, trained.ft_params
        log.info("both stages ready in %.1fs (p_pretrain=%d, n=%d)", time.perf_counter() - t0, self.pt_params.numel(), self.pt.n)
        self.test = self.test_split(n_test or config["influence"]["n_test"])
        self.references: dict = {}
        self._eigh: dict = {}

    def test_split(self, n: int):
        split = self.exp.data.finetune_test
        if n > len(split):
            raise ValueError(f"--n-test {n} exceeds the finetuning test split ({len(split)})")
        return split.subset(torch.arange(n, device=self.exp.device))

    def scores(self, s: torch.Tensor, query_rank: int | None = None) -> torch.Tensor:
        return removal_effect(upweight_influence(self.pt, self.pt_params, s, self.options["batch_size"], query_rank=query_rank),
                              self.pt.n)

    # -- one stage's solve -----------------------------------------------------------------------

    def solve_arguments(self, part: str, curvature: str | None, reference: bool) -> tuple[str, SolveArguments]:
        """The solver name of one stage's ``part`` (``name`` or ``name@k``) and the arguments it solves with."""
        [(name, k)] = solver_spec(part, SOLVERS)
        block = {**(self.ref_options if reference else self.options), "curvature": curvature or self.curvature}
        if k is not None:
            block[name] = {**(block.get(name) or {}), "max_iter": k}
        return name, SolveArguments.from_config(block)

    def dense_fit(self, name: str, key: str, objective, params: torch.Tensor, curvature: str) -> tuple[Eigh | None, dict]:
        """The exact solver's dense eigendecomposition of a stage's curvature, built once, and what building it took."""
        if name != "exact":
            return None, {}
        if (key, curvature) not in self._eigh:
            with measured() as m:
                e = Eigh.of(stage_of(objective).matvec(params, curvature), params.numel(), params)
            self._eigh[(key, curvature)] = (e, m)
        e, m = self._eigh[(key, curvature)]
        return e, {"fit_seconds": m["seconds"], "fit_peak_mib": m["peak_mib"]}

    def finetune(self, scenario: str, spec: str, test, curvature: str | None = None, reference: bool = False) -> tuple[Solve, dict]:
        """``finetune_ihvp`` with the finetuning part of ``spec`` (``a`` or ``a+b``), and the dense fit it used."""
        name, args = self.solve_arguments(spec.split("+")[0], curvature, reference)
        ft, x = self.ft[scenario], self.ft_params[scenario]
        eigh, fit = self.dense_fit(name, f"finetune_{scenario}", ft, x, args.curvature)
        return finetune_ihvp(ft, x, test, name, args, eigh=eigh), fit

    def pretrain(self, g: torch.Tensor, spec: str, curvature: str | None = None, reference: bool = False) -> tuple[Solve, dict]:
        """``pretrain_ihvp`` with the pretraining part of ``spec`` (``a`` or ``a+b``), and the dense fit it used."""
        name, args = self.solve_arguments(spec.split("+")[-1], curvature, reference)
        eigh, fit = self.dense_fit(name, "pretrain", self.pt, self.pt_params, args.curvature)
        return pretrain_ihvp(self.pt, self.pt_params, g, name, args, eigh=eigh), fit

    # -- agreement table -------------------------------------------------------------------------

    def reference_solve(self, scenario: str) -> Reference:
        """Both stages with the reference solver (and its options); its residuals go to :attr:`references`."""
        with measured() as m:
            v, _ = self.finetune(scenario, self.REFERENCE, self.test, reference=True)
            g = cross_stage_vector(self.ft[scenario], self.ft_params[scenario], self.test, v.x)
            s, _ = self.pretrain(g, self.REFERENCE, reference=True)
        self.references[scenario] = {"solver": self.REFERENCE, "finetune": float(v.residual.max()),
                                     "pretrain": float(s.residual.max()), "finetune_hvps": v.info.get("hvps"),
                                     "pretrain_hvps": s.info.get("hvps"), "seconds": m["seconds"]}
        log.info("reference[%s]: %s", scenario, self.references[scenario])
        return Reference(v, g, s, self.scores(s.x))

    def agreement_rows(self, solvers: tuple[str, ...] | None = None, stages: tuple[str, ...] = STAGES) -> list[dict]:
        rows = []
        solvers = solvers or self.DEFAULT_SOLVERS
        for scenario in self.config["scenarios"]:
            ref = self.reference_solve(scenario)
            rows += [self.row(scenario, solver, stage, ref) for solver in solvers for stage in stages]
            rows += self.extra_rows(scenario, ref)
        return rows

    def extra_rows(self, scenario: str, ref: Reference) -> list[dict]:
        """Rows a subclass adds after a scenario's solver × stage rows."""
        return []

    def row(self, scenario: str, solver: str, stage: str, ref: Reference, curvature: str | None = None) -> dict:
        """One agreement row: ``solver`` in ``stage`` (the reference in the other stage), against the reference scores."""
        curvature = curvature or self.curvature
        solves, g = [], ref.g
        if stage in ("finetune", "both"):
            with measured() as m:
                v, fit = self.finetune(scenario, solver, self.test, curvature)
            g = cross_stage_vector(self.ft[scenario], self.ft_params[scenario], self.test, v.x)
            solves.append((v, m, fit))
        if stage in ("pretrain", "both"):
            with measured() as m:
                s, fit = self.pretrain(g, solver, curvature)
            solves.append((s, m, fit))
        else:
            s, _ = self.pretrain(g, self.REFERENCE, reference=True)
        row = {"scenario": scenario, "stage": stage, "solver": solver, "curvature": curvature, "reference": self.REFERENCE,
               **agreement(self.scores(s.x), ref.scores), **solve_costs(solves)}
        log.info("%s", _rounded(row))
        return row

    # -- cost table ------------------------------------------------------------------------------

    def cost_rows(self, solvers: tuple[str, ...] | None = None, n_tests: tuple[int, ...] = COST_N_TEST,
                  scenario: str = "fixed") -> list[dict]:
        solvers = solvers or self.DEFAULT_COST_SOLVERS
        epoch = epoch_seconds(self.pt, self.pt_params, self.EPOCH_REPEATS)
        log.info("one pretraining epoch (forward + backward of the mean loss over n=%d): %.3fs", self.pt.n, epoch)
        return [self.cost_row(solver, n, scenario, epoch) for solver in solvers for n in n_tests]

    def cost_row(self, solver: str, n: int, scenario: str, epoch: float) -> dict:
        """Scoring ``n`` test examples end to end with ``solver`` (``a`` or ``a+b``), cold: every fit counted."""
        test, t = self.test_split(n), {}
        self._eigh.clear()
        with measured() as m:
            with stopwatch(t, "finetune_s"):
                v, fit_v = self.finetune(scenario, solver, test)
            with stopwatch(t, "cross_stage_s"):
                g = cross_stage_vector(self.ft[scenario], self.ft_params[scenario], test, v.x)
            with stopwatch(t, "pretrain_s"):
                s, fit_s = self.pretrain(g, solver)
            with stopwatch(t, "scores_s"):
                scores = self.scores(s.x)
        fits = sum(x.get("fit_seconds", 0.0) for x in (fit_v, fit_s, v.info, s.info))  # all inside the stage timings
        check = sum(x.info.get("residual_seconds", 0.0) for x in (v, s))
        cold = sum(t.values())
        warm = cold - fits
        row = {"scenario": scenario, "solver": solver, "n_test": n, "n_pretrain": self.pt.n, **t, "fit_s": fits,
               "residual_check_s": check, "cold_s": cold, "warm_s": warm, "epoch_s": epoch, "cold_epochs": cold / epoch,
               "warm_epochs": warm / epoch, "warm_unchecked_epochs": (warm - check) / epoch, "peak_mib": m["peak_mib"],
               "finetune_hvps": v.info.get("hvps"), "pretrain_residual": float(s.residual.max()),
               "scores_epochs": t["scores_s"] / epoch, "pretrain_hvps": s.info.get("hvps"), **self.extra_cost(s, scores, n, epoch)}
        log.info("cost %s", _rounded(row, 4))
        return row

    def extra_cost(self, s: Solve, scores: torch.Tensor, n: int, epoch: float) -> dict:
        """Columns a subclass adds to a cost row, given the pretraining solve and its scores."""
        return {}

    def cost_columns(self) -> list[str]:
        return list(self.COST_COLUMNS)

    def metadata(self, args: argparse.Namespace, seconds: float) -> dict:
        return {"config": args.config, "seed": self.config["seed"], "smoke": args.smoke, "run": self.config.get("run"),
                "run_dir": args.run_dir, **machine(args.threads), "device": str(self.exp.device), "dtype": self.config["dtype"],
                "p_pretrain": self.pt_params.numel(), "n_pretrain": self.pt.n, "n_test": len(self.test),
                "reference": self.references, "influence": self.config["influence"], "seconds": seconds}

    # -- figure ----------------------------------------------------------------------------------

    @staticmethod
    def panels(agree: pd.DataFrame | None, cost: pd.DataFrame | None) -> list:
        """Functions that each draw one panel of the figure on an Axes."""
        return []

    @classmethod
    def figure(cls, out: Path) -> None:
        """The figure from the tables in ``out`` (either may be missing)."""
        agree, cost = (pd.read_csv(out / f"{t}.csv") if (out / f"{t}.csv").exists() else None for t in cls.TABLES)
        draw(out / cls.FIGURE, cls.panels(agree, cost))

    # -- command line ----------------------------------------------------------------------------

    @classmethod
    def parser(cls, prog: str, description: str) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(prog=prog, description=description)
        p.add_argument("--config", default=cls.CONFIG, help="experiment config (its influence block sets the solver options)")
        p.add_argument("--seed", type=int, default=None, help="which of the config's seeds (default: the first)")
        p.add_argument("--smoke", action="store_true", help="the config shrunk to run in seconds (float64, 60 examples)")
        p.add_argument("--run-dir", default=None, help="a workflow run's seed folder (results/<run>/seed<seed>) to take the trained optima from")
        p.add_argument("--out", default="results/bench", help="output folder")
        p.add_argument("--n-test", type=int, default=None, help="test examples in the agreement table (default: influence.n_test)")
        p.add_argument("--threads", type=int, default=cls.THREADS, help="torch threads")
        p.add_argument("--solvers", nargs="+", default=list(cls.DEFAULT_SOLVERS), type=cls.spec_type(single=True),
                       help=f"solvers of the agreement table: {list(cls.CHOICES)}, or cg@k / pcg@k (stopped after k iterations)")
        p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
        p.add_argument("--cost-solvers", nargs="+", default=list(cls.DEFAULT_COST_SOLVERS), type=cls.spec_type(single=False),
                       help="solvers of the cost table: a name, or '<finetune>+<pretrain>'")
        p.add_argument("--cost-n-test", type=int, nargs="+", default=list(COST_N_TEST))
        p.add_argument("--skip-agreement", action="store_true")
        p.add_argument("--skip-cost", action="store_true")
        p.add_argument("--figure-only", action="store_true", help=f"redraw {cls.FIGURE} from the tables in --out and stop")
        return p

    @classmethod
    def spec_type(cls, single: bool):
        def check(spec: str) -> str:
            try:
                if single and "+" in spec:
                    raise ValueError(f"solver {spec!r}: one solver (it runs in the stage of each row)")
                solver_spec(spec, cls.CHOICES)
            except ValueError as err:
                raise argparse.ArgumentTypeError(str(err)) from None
            return spec

        return check

    @classmethod
    def parse(cls, p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
        return parse(p, argv, cls.SMOKE_DEFAULTS)

    @classmethod
    def from_args(cls, config: dict, args: argparse.Namespace) -> SolverBench:
        return cls(config, args.n_test, args.run_dir)

    @classmethod
    def cli(cls, argv: list[str] | None, prog: str, description: str) -> None:
        """Parse ``argv``, measure the tables asked for (unless ``--figure-only``), draw the figure."""
        args = cls.parse(cls.parser(prog, description), argv)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        torch.set_num_threads(args.threads)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if not args.figure_only:
            cls.measure(args, out)
        cls.figure(out)

    @classmethod
    def measure(cls, args: argparse.Namespace, out: Path) -> None:
        """The tables the arguments ask for, each written (CSV, JSON) as soon as it is done; a part not run is left alone."""
        t0 = time.perf_counter()
        bench = cls.from_args(config_for(args.config, args.seed, args.smoke), args)
        settle()
        agreement_table, cost_table = cls.TABLES
        if not args.skip_agreement:
            rows = bench.agreement_rows(tuple(args.solvers), tuple(args.stages))
            write(out, agreement_table, pd.DataFrame(rows, columns=list(cls.AGREEMENT_COLUMNS)), bench.metadata(args, time.perf_counter() - t0))
        if not args.skip_cost:
            rows = bench.cost_rows(tuple(args.cost_solvers), tuple(args.cost_n_test))
            write(out, cost_table, pd.DataFrame(rows, columns=bench.cost_columns()), bench.metadata(args, time.perf_counter() - t0))


def parse(p: argparse.ArgumentParser, argv: list[str] | None, smoke_defaults: dict) -> argparse.Namespace:
    """The arguments; with ``--smoke``, ``smoke_defaults`` replace the parser's defaults (flags given still win)."""
    args = p.parse_args(argv)
    if args.smoke:
        p.set_defaults(**smoke_defaults)
        args = p.parse_args(argv)
    return args


def write(out: Path, name: str, table: pd.DataFrame, meta: dict) -> None:
    """``<out>/<name>.csv`` and ``<name>.json`` (the run's metadata); the table printed."""
    table.to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.json").write_text(json.dumps(meta, indent=2, default=str))
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.precision", 4):
        print(table.to_string(index=False))


def draw(path: Path, panels: list) -> None:
    """Panels (functions that draw on one Axes) side by side in one PNG; nothing when there is none."""
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5.8 * len(panels), 4.8), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        panel(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def scoring_cost_axes(ax, ylabel: str, title: str) -> None:
    """The cost panels' frame: log-log against test examples scored, the 3-epoch target drawn."""
    ax.axhline(3, color="k", lw=0.8, ls="--")
    ax.set(xscale="log", yscale="log", xlabel="test examples scored", ylabel=ylabel, title=f"{title} (target: 100 tests <= 3 epochs)")
