"""msif side by side with captum, dattri, pyDVL, kronfluence and TRAK: ``python -m msif.bench.peers`` (``make bench-peers``).

Not a test: it writes ``peers.csv``, ``peers.png`` and ``peers.json`` in ``--out`` (default ``results/bench``). The
peers are not part of msif's install: ``make bench-peers`` builds ``.venv-peers`` (``envs/requirements-peers.txt``);
one adapter module per library (:mod:`msif.bench.peers.captum`, ``.dattri``, ``.pydvl``, ``.kronfluence``,
``.trak``) imports it inside its function, so this module imports without them. ``--smoke`` runs the config
shrunk to seconds on the single-stage problem, with msif and whichever peers are installed.

Problems (one config, trained once with msif; the default config in float64; ``--config config/scale.yaml
--reference cg --dtype float64 --problems pretrain`` is the CNN's row, against a tight CG where no dense Hessian fits):

- ``pretrain``: the single-stage problem every library can express — influence of the pretraining
  examples on pretraining **test** losses (the ``pretrain_test`` split) through the pretraining Hessian;
- ``fixed`` / ``updated``: each library's single-stage scores for the **finetuned** test losses — the
  gradient ``∇_W f`` of the finetuned test loss, through the pretraining Hessian only (msif's
  ``single_stage`` baseline, expressed to the peers as a test loss of :class:`msif.bench.peers.align.PeerModel`) —
  scored against the leave-k-out and LDS retraining actuals of the config's validation stage, beside
  msif's multi-stage scores on the same sets.

Every score is aligned to method.md (removal effect, 1/n, (n_test, n_train)) by
:func:`msif.bench.peers.align.to_removal_effect`; every damping is converted to msif's unit by
:func:`msif.bench.peers.align.peer_damping` — all solve ``(H_mean + δI)`` with ``δ = pretrain.l2 + damping``.
Columns of ``peers.csv`` (:data:`msif.bench.peers.common.COLUMNS`): problem, method, library,
pearson_vs_exact / spearman_vs_exact (per query row, averaged; against msif's exact scores of the same
problem), pearson_vs_ggn (against msif's exact GGN scores, what EK-FAC approximates), scale (least-squares
slope of the aligned scores on msif's exact ones: 1 when the units agree), lkout_pearson / lds (validation
problems), wall_s (the whole call, fit included), peak_mib (rise of the resident high-water mark),
damping (the value passed to the library), notes. :mod:`msif.bench.peers.report` draws and tabulates them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
import traceback
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.func import grad, vmap

from msif import io
from msif.arguments import SolveArguments
from msif.bench.base import config_for, parse, train
from msif.bench.measure import agreement, machine, measured, settle
from msif.bench.peers import captum, dattri, kronfluence, pydvl, trak
from msif.bench.peers.align import PeerModel, PeerProblem, to_removal_effect, total_damping
from msif.bench.peers.common import (
    COLUMNS,
    LIBRARIES,
    METHODS,
    PROBLEMS,
    PeersMissing,
    Settings,
    default_dtype,
    installed,
    require,
)
from msif.bench.peers.report import figure, markdown
from msif.experiments.registry import Experiment
from msif.influence.baselines import _pad, direct_w_gradient
from msif.influence.multi_stage import multi_stage_influence, removal_effect
from msif.influence.scoring import upweight_influence
from msif.influence.stage_solve import stage_solve
from msif.task.objectives import pretrain_losses
from msif.validation.metrics import correlations, lds, lds_predictions, lds_subsets, predicted_effects, removal_sets

log = logging.getLogger("msif.bench.peers")

# each adapter module: METHODS it offers, HOOK_BASED methods (module hooks: they cannot see W_ft), run(pb, settings, method, tmp)
PEERS = {"captum": captum, "dattri": dattri, "pydvl": pydvl, "kronfluence": kronfluence, "traker": trak}
MSIF_METHODS = ("exact", "cg", "cg_columns", "lissa", "arnoldi", "ekfac", "tracin")


# ---------------------------------------------------------------------------------------------
# The trained problem


class Setup:
    """Both stages trained once with msif; the peers' problems and msif's own scores built from it."""

    def __init__(self, config: dict, settings: Settings):
        self.config, self.s = config, settings
        self.exp = Experiment.from_config(config)
        trained = train(self.exp, config)
        self.pt, self.pt_params, self.ft, self.ft_params = trained.pt, trained.pt_params, trained.ft, trained.ft_params
        self.p_w = self.exp.model.w_spec.numel
        self.c_pt = int(self.exp.data.pretrain.y.max()) + 1
        self.delta = total_damping(config["pretrain"]["l2"], settings.damping)
        log.info("trained: p=%d, n=%d, δ = l2 %g + damping %g = %g", self.pt_params.numel(), self.pt.n, config["pretrain"]["l2"],
                 settings.damping, self.delta)

    def query(self, problem: str):
        if problem == "pretrain":
            split = self.exp.data.pretrain_test
            n = min(self.s.n_query, len(split))
            return split.subset(torch.arange(n, device=self.exp.device))
        return self.exp.test

    def problem(self, name: str, shifted: bool = True) -> PeerProblem:
        """The peers' view of a problem; ``shifted=False`` takes the finetuned test gradient at W_pt (hook-based peers)."""
        q, tr = self.query(name), self.exp.data.pretrain
        if name == "pretrain":
            model = PeerModel(self.exp.model, self.pt_params, self.c_pt)
            yq = q.y
        else:
            theta, w_ft = self.ft[name].split(self.ft_params[name])
            shift = (w_ft - self.pt_params[: self.p_w]) if (name == "updated" and shifted) else None
            model = PeerModel(self.exp.model, self.pt_params, self.c_pt, theta=theta, w_shift=shift)
            yq = q.y + self.c_pt
        return PeerProblem(name, model.eval(), tr.x, tr.y, q.x, yq, self.delta, self.c_pt, shifted=name == "updated" and shifted)

    # -- msif ------------------------------------------------------------------------------------

    def rhs(self, problem: str) -> torch.Tensor:
        """``∇f_t`` w.r.t. θ = (W, U), one column per query: pretraining test losses, or ``[∇_W f; 0]`` (single_stage)."""
        if problem == "pretrain":
            q = self.query(problem)

            def one(p, x, y):
                w, u = self.pt.split(p)
                return pretrain_losses(self.exp.model, w, u, x[None], y[None])[0]

            return vmap(grad(one), in_dims=(None, 0, 0), out_dims=1)(self.pt_params, q.x, q.y)
        return _pad(direct_w_gradient(self.ft[problem], self.ft_params[problem], self.exp.test), self.pt_params.numel())

    def solve_arguments(self, block_cg: bool = True) -> SolveArguments:
        """msif's solver settings, the peers' (:class:`Settings`), on the Hessian; ``block_cg=False``: one CG per column."""
        s = self.s
        return SolveArguments.from_config({
            "damping": s.damping, "curvature": "hessian", "cg": {"tol": s.cg_tol, "max_iter": s.cg_max_iter, "block": block_cg},
            "lissa": {"scale": s.lissa_scale, "depth": s.lissa_depth, "batch_size": s.lissa_batch, "seed": s.seed},
            "arnoldi": {"rank": s.arnoldi_rank, "iters": s.arnoldi_iters, "seed": s.seed}, "ekfac": {"batch_size": s.ekfac_batch}})

    def exact_ggn(self, problem: str) -> torch.Tensor:
        """msif's exact scores of a problem on the generalised Gauss–Newton: what every EK-FAC approximates
        (the secondary reference, column ``pearson_vs_ggn``)."""
        sol = stage_solve(self.pt, self.pt_params, self.rhs(problem), "exact", SolveArguments(damping=self.s.damping, curvature="ggn"))
        return removal_effect(upweight_influence(self.pt, self.pt_params, sol.x), self.pt.n)

    def msif(self, problem: str, method: str) -> tuple[torch.Tensor, str]:
        """msif's scores (n_query, n) of a problem; ``tracin``: the gradient inner product at the trained point (no Hessian)."""
        rhs = self.rhs(problem)
        if method == "tracin":
            return removal_effect(upweight_influence(self.pt, self.pt_params, rhs), self.pt.n), "grad_dot: ∇fᵀ∇l/n"
        if method == "multi_stage":
            r = multi_stage_influence(self.pt, self.pt_params, self.ft[problem], self.ft_params[problem], self.exp.test, "exact",
                                      SolveArguments(damping=self.s.damping))
            return r.scores, "exact, both stages"
        # cg_columns: one CG per column, the iteration count dattri's CG gets, and block CG's yardstick
        args = self.solve_arguments(block_cg=method != "cg_columns")
        sol = stage_solve(self.pt, self.pt_params, rhs, "cg" if method == "cg_columns" else method, args)
        note = f"residual {float(sol.residual.max()):.1e}"
        if method == "cg_columns":
            self.s.cg_iters[problem] = int(sol.info["iterations"])
        if method in ("cg", "cg_columns"):
            kind = "block CG" if sol.info.get("block") else "one CG per column"
            note += f", {kind}: {sol.info['iterations']} iterations, {sol.info['hvps']} Hessian products"
        return removal_effect(upweight_influence(self.pt, self.pt_params, sol.x), self.pt.n), note


# ---------------------------------------------------------------------------------------------
# Validation actuals (the config's validation stage)


class Actuals:
    """Leave-k-out and LDS actuals of the config's validation run, with their sets rebuilt as the workflow builds them."""

    def __init__(self, config: dict, results: Path, setup: Setup):
        v = config["validation"]
        self.config, self.results, self.ref = config, results, v["reference_solver"]
        self.lko = pd.read_csv(results / "validation" / "leave_k_out.csv")
        lds_csv = results / "validation" / "lds.csv"
        self.lds_df = pd.read_csv(lds_csv) if lds_csv.exists() and v["lds"]["n_subsets"] else None
        self.sets, self.lko_actual, self.lds_actual = {}, {}, {}
        for scenario in config["scenarios"]:
            test_ids = self._scenario(scenario)
            if [int(t) for t in setup.exp.test.ids] != test_ids:
                raise ValueError(f"{results}: test ids {test_ids} differ from the config's {setup.exp.test.ids.tolist()}")
        self.subsets = lds_subsets(setup.pt.n, v["lds"]["fraction"], v["lds"]["n_subsets"], config["seed"])
        stored = results / "validation" / "lds_subsets.json"
        if stored.exists() and io.read_json(str(stored))["subsets"] != self.subsets:
            raise ValueError(f"{stored}: LDS subsets differ from those rebuilt with the config's seed")

    def _scenario(self, scenario: str) -> list[int]:
        """A scenario's removal sets (rebuilt from the reference scores, checked against the stored ones) and actuals; its test ids."""
        v, ref = self.config["validation"], self.ref
        ref_scores = io.load_tensors(str(self.results / "influence" / scenario / ref / "scores.pt"))
        test_ids = [int(t) for t in ref_scores["test_ids"]]
        sets = removal_sets(ref_scores["scores"], v["ks"], v["selections"], self.config["seed"])
        stored_sets = self.results / "validation" / scenario / "removal_sets.json"
        if stored_sets.exists() and [s["members"] for s in io.read_json(str(stored_sets))["sets"]] != [s["members"] for s in sets]:
            raise ValueError(f"{stored_sets}: removal sets differ from those rebuilt from the {ref} scores and the config's seed")
        rows = self.lko[(self.lko.scenario == scenario) & (self.lko.method == "multi_stage") & (self.lko.solver == ref)]
        key = rows.set_index(["test_id", "selection", "k"])["actual"]
        self.sets[scenario] = sets
        self.lko_actual[scenario] = np.array([key[(test_ids[s["test_index"]], s["selection"], s["k"])] for s in sets])
        if self.lds_df is not None:
            d = self.lds_df[(self.lds_df.scenario == scenario) & (self.lds_df.method == "multi_stage") & (self.lds_df.solver == ref)]
            self.lds_actual[scenario] = d.pivot(index="subset_id", columns="test_id", values="actual").sort_index()[test_ids].to_numpy()
        return test_ids

    def evaluate(self, scenario: str, scores: torch.Tensor) -> dict:
        out = {"lkout_pearson": correlations(predicted_effects(scores, self.sets[scenario]), self.lko_actual[scenario])["pearson"]}
        out["lds"] = lds(lds_predictions(scores, self.subsets), self.lds_actual[scenario])[0] if scenario in self.lds_actual else math.nan
        return out


# ---------------------------------------------------------------------------------------------
# The run: every (library, method) on every problem


def _scale(a: torch.Tensor, b: torch.Tensor) -> float:
    """Least-squares slope of ``a`` on ``b``: 1 when the aligned units agree."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    return float((a @ b) / (b @ b))


def jobs(problem: str, libraries, methods, reference: str) -> list[tuple[str, str]]:
    """(library, method) in the order run: msif's reference first (every other row is compared with it), then msif, then the peers."""
    wanted = [*methods, "cg_columns"] if "cg" in methods else list(methods)
    out = [("msif", reference)] + [("msif", m) for m in MSIF_METHODS if m in wanted and m != reference]
    if problem != "pretrain":
        out.append(("msif", "multi_stage"))
    return out + [(lib, m) for lib in libraries if lib != "msif" for m in PEERS[lib].METHODS if m in methods]


def peer_scores(setup: Setup, library: str, method: str, problem: str, settings: Settings, tmp: Path) -> tuple[torch.Tensor, float, str]:
    """A peer's scores aligned to msif's convention, the damping it was given, its notes."""
    shifted = method not in PEERS[library].HOOK_BASED
    pb = setup.problem(problem, shifted=shifted)
    with default_dtype(pb.x_train.dtype):  # some peers create float32 tensors of their own
        raw, scale, layout, damping, notes = PEERS[library].run(pb, settings, method, tmp)
    if problem == "updated" and not shifted:
        notes += "; test gradient at W_pt (module hooks cannot see W_ft)"
    return to_removal_effect(torch.as_tensor(raw), pb.n, scale, layout), damping, notes


def measure_row(row: dict, setup: Setup, settings: Settings, tmp: Path, refs: dict, actuals: Actuals | None) -> dict:
    """One (library, method) on one problem, measured and compared; ``refs['exact']`` is set by the problem's first job.
    A peer failing is a result, not a crash: its row says what failed."""
    library, method, problem = row["library"], row["method"], row["problem"]
    try:
        with measured() as meas:
            if library == "msif":
                scores, row["notes"] = setup.msif(problem, method)
                row["damping"] = settings.damping
            else:
                scores, row["damping"], row["notes"] = peer_scores(setup, library, method, problem, settings, tmp)
        exact = refs.setdefault("exact", scores)
        a = agreement(scores, exact)
        row.update(pearson_vs_exact=a["pearson"], spearman_vs_exact=a["spearman"], scale=_scale(scores, exact),
                   wall_s=meas["seconds"], peak_mib=meas["peak_mib"])
        if refs["ggn"] is not None:
            row["pearson_vs_ggn"] = agreement(scores, refs["ggn"])["pearson"]
        if actuals is not None and problem != "pretrain":
            row.update(actuals.evaluate(problem, scores))
    except NotImplementedError as err:
        row["notes"] = f"not expressible: {err}" if str(err) else "not offered"
    except PeersMissing:
        raise
    except Exception as err:
        log.warning("%s %s on %s failed:\n%s", library, method, problem, traceback.format_exc())
        row["notes"] = f"failed: {type(err).__name__}: {str(err)[:200]}"
    return row


def run(config: dict, settings: Settings, problems=PROBLEMS, libraries=LIBRARIES, methods=METHODS, results: Path | None = None,
        partial: Path | None = None, reference: str = "exact", skip: dict[str, str] | None = None) -> list[dict]:
    """Every (library, method) on every problem, measured one after another; rows so far go to ``partial`` after each.

    ``reference``: msif's solver whose scores every row is compared with (``exact``; ``cg`` to ``settings.cg_tol``
    where no dense Hessian fits, e.g. the scale config's CNN — then there is no exact GGN column either).
    ``skip``: ``{"library:method": why}``, rows written with the reason instead of being run (e.g. a peer the OOM killer stops).
    """
    skip, setup = skip or {}, Setup(config, settings)
    actuals = Actuals(config, results, setup) if results is not None and any(p != "pretrain" for p in problems) else None
    settle()
    rows = []
    with tempfile.TemporaryDirectory(prefix="msif-peers-") as tmp_dir:
        for problem in [p for p in problems if p == "pretrain" or p in config["scenarios"]]:
            refs = {"ggn": setup.exact_ggn(problem) if "ekfac" in methods and reference == "exact" else None}
            for library, method in jobs(problem, libraries, methods, reference):
                row = {"config": config.get("run"), "problem": problem, "method": method, "library": library, "damping": math.nan, "notes": ""}
                if f"{library}:{method}" in skip:
                    row["notes"] = f"not run: {skip[f'{library}:{method}']}"
                else:
                    row = measure_row(row, setup, settings, Path(tmp_dir), refs, actuals)
                log.info("%s", {k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()})
                rows.append(row)
                if partial is not None:
                    io.write_text(str(partial), pd.DataFrame(rows, columns=COLUMNS).to_csv(index=False))
    return rows


# ---------------------------------------------------------------------------------------------
# Command line


def default_results(config: dict) -> Path:
    """The config's validation outputs: ``results/<run>/seed<seed>`` when the run is per seed, else ``results/<run>``."""
    base = Path("results") / str(config["run"])
    seeded = base / f"seed{config['seed']}"
    return seeded if seeded.exists() else base


def versions() -> dict:
    out = {}
    for lib in ("torch", "captum", "dattri", "pydvl", "kronfluence", "traker"):
        try:
            out[lib] = version({"pydvl": "pyDVL"}.get(lib, lib))
        except PackageNotFoundError:
            out[lib] = None
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m msif.bench.peers", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--seed", type=int, default=None, help="which of the config's seeds (default: the first)")
    p.add_argument("--smoke", action="store_true", help="the config shrunk to seconds, the single-stage problem, msif and the installed peers")
    p.add_argument("--out", default="results/bench", help="output folder (peers.csv, peers.png, peers.json)")
    p.add_argument("--results", default=None, help="the config's workflow results (validation actuals); default results/<run>[/seed<seed>]")
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    p.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--damping", type=float, default=Settings.damping, help="λ added to H + l2·I (msif's unit)")
    p.add_argument("--n-query", type=int, default=Settings.n_query, help="pretraining test examples in the single-stage problem")
    p.add_argument("--lissa-depth", type=int, default=Settings.lissa_depth, help="LiSSA's recursion depth (every library)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cg-tol", type=float, default=Settings.cg_tol, help="relative residual of every library's CG (and of a CG reference)")
    p.add_argument("--reference", default="exact", choices=("exact", "cg"), help="msif's solver every row is compared with "
                   "(cg where no dense Hessian fits)")
    p.add_argument("--dtype", default=None, choices=("float64", "float32"), help="override the config's dtype (float64 lets CG "
                   "reach the reference's tolerance)")
    p.add_argument("--skip", nargs="+", default=[], metavar="LIBRARY:METHOD=WHY",
                   help="rows not to run, with the reason written in their notes (e.g. a peer the OOM killer stops)")
    p.add_argument("--markdown", action="store_true", help="print the docs' tables from <out>/peers.csv and exit")
    p.add_argument("--targets", action="store_true", help="print the workflow outputs the validation problems read, and exit")
    return p


def smoke_defaults() -> dict:
    return {"problems": ["pretrain"], "n_query": 5, "lissa_depth": 100, "libraries": [lib for lib in LIBRARIES if installed(lib)]}


def main(argv: list[str] | None = None) -> None:
    args = parse(parser(), argv, smoke_defaults())
    if args.targets:
        config = config_for(args.config, args.seed)
        base = Path(args.results) if args.results else Path("results") / str(config["run"]) / f"seed{config['seed']}"
        print(" ".join(str(base / "validation" / f"{t}.csv") for t in ("leave_k_out", "lds")))
    elif args.markdown:
        out = Path(args.out)
        meta = json.loads((out / "peers.json").read_text()) if (out / "peers.json").exists() else {}
        print(markdown(pd.read_csv(out / "peers.csv", keep_default_na=True).fillna({"notes": ""}), meta.get("reference", "exact")), end="")
    else:
        measure(args)


def measure(args: argparse.Namespace) -> None:
    """The benchmark: peers.csv (and peers.partial.csv as it goes), peers.png, peers.json; the markdown tables printed."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for lib in args.libraries:
        if lib != "msif":
            require(lib)
    torch.set_num_threads(args.threads)
    config = config_for(args.config, args.seed, args.smoke)
    if args.dtype:
        config["dtype"] = args.dtype
    settings = Settings(damping=args.damping, n_query=args.n_query, cg_tol=args.cg_tol, lissa_depth=args.lissa_depth)
    results = Path(args.results) if args.results else default_results(config)
    if any(pr != "pretrain" for pr in args.problems) and not (results / "validation" / "leave_k_out.csv").exists():
        raise SystemExit(f"{results}/validation/leave_k_out.csv is missing: run the workflow for {args.config} first, or pass "
                         "--results, or --problems pretrain")
    t0, out = time.perf_counter(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(run(config, settings, args.problems, args.libraries, args.methods, results, out / "peers.partial.csv",
                          reference=args.reference, skip=dict(x.split("=", 1) for x in args.skip)), columns=COLUMNS)
    io.write_text(str(out / "peers.csv"), df.to_csv(index=False))
    figure(df, out / "peers.png")
    meta = {"config": args.config, "seed": config["seed"], "smoke": args.smoke, "reference": args.reference, "dtype": config.get("dtype"),
            "results": str(results), "settings": asdict(settings), "versions": versions(), **machine(args.threads),
            "seconds": time.perf_counter() - t0}
    io.write_text(str(out / "peers.json"), json.dumps(meta, indent=2, default=str))
    print(markdown(df.fillna({"notes": ""}), args.reference), end="")


if __name__ == "__main__":
    main()
