"""Steps of ``workflow/rules/validation.smk``: rule X runs ``workflow/scripts/X.py``, which calls ``X`` here."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

import msif
from msif import io
from msif.core.solvers import Eigh
from msif.influence.baselines import baseline_scores
from msif.steps.common import finetune_args, load_stages, newton_steps, solve_arguments, train_args
from msif.task.training import ANOTHER_MINIMUM, TrainingError
from msif.validation import health, metrics
from msif.validation.basins import BASIN_RATIO, Basins, basin_columns, flag_basins
from msif.validation.compare import LDS_COLUMNS, PerSet, ScenarioInputs, compare_tables, read_csvs, with_accuracy
from msif.validation.metrics import (
    batches,
    lds_cold_seed,
    pooled_summary,
)
from msif.validation.noise import NOISE_KINDS, noise_seed
from msif.validation.retraining import Preconditioners, retrain_both_stages, retrain_from_scratch, test_losses

log = logging.getLogger("msif")



def removal_sets(config: dict, scores_path: str, out: str) -> None:

    scores = io.load_tensors(scores_path, {"seed": config["seed"]})["scores"]
    v = config["validation"]
    sets = metrics.removal_sets(scores, v["ks"], v["selections"], config["seed"])
    io.write_json(out, {"sets": sets, "batches": batches(len(sets), v["sets_per_job"])})


def preconditioners(config: dict, pt, pt_params: torch.Tensor, ft, ft_params: torch.Tensor) -> Preconditioners | None:
    """``retraining.method: newton``: each stage's spectral preconditioner, built once per job; ``lbfgs``: None."""
    if config["retraining"].get("method", "lbfgs") != "newton":
        return None
    t0 = time.perf_counter()
    out = Preconditioners.of(pt, pt_params, ft, ft_params)
    log.info("Newton-PCG preconditioners in %.2f s: %d (pretraining) and %d (finetuning) Ritz pairs", time.perf_counter() - t0,
             out.pretrain.values.numel(), out.finetune.values.numel())
    return out


SOLVE_COLUMNS = ("method", "lbfgs_iterations", "newton_steps", "cg_iterations", "guard", "newton_gap")


def solve_columns(res) -> dict:
    """How each stage of one retraining was solved: ``<stage>_<key>`` for the keys of :data:`SOLVE_COLUMNS`."""
    return {f"{stage}_{k}": info.get(k) for stage, info in (("pretrain", res.pretrain), ("finetune", res.finetune)) for k in SOLVE_COLUMNS}


def landing_problems(name: str, res) -> list[str]:
    """Newton–PCG handed back to L-BFGS, which landed in another minimum: the row's actual effect is L-BFGS's (the
    protocol's), and the flag says that another minimum lies near the warm start (a fold, method.md)."""
    out = []
    for stage, info in (("pretraining", res.pretrain), ("finetuning", res.finetune)):
        gap = info.get("newton_gap")
        if gap is not None and gap > ANOTHER_MINIMUM:
            out.append(f"retrain {name}: {stage} has two minima near the warm start (Newton-PCG landed {gap:.2f} x L-BFGS's "
                       f"displacement away; L-BFGS's is kept)")
    for p in out:
        log.warning("problem: %s", p)
    return out


def basins(pt, pt_params: torch.Tensor, ft, ft_params: torch.Tensor, precond: Preconditioners | None) -> Basins:
    """Both stages' Hessians at the trained optima for the basin check (:mod:`msif.validation.basins`), preconditioned
    by ``precond``'s spectral preconditioners (``retraining.method: newton``) or by their own, built here (``lbfgs``)."""
    t0 = time.perf_counter()
    out = Basins.of(pt, pt_params, ft, ft_params, precond and precond.pretrain, precond and precond.finetune)
    log.info("basin check: curvature of both stages in %.2f s", time.perf_counter() - t0)
    return out


def retrain(config: dict, scenario: str, batch: int, data_path: str, pretrain_path: str, finetune_path: str,
                sets_path: str, out: str) -> None:
    """Retrain both stages without each removal set of one batch; record the actual Δ test loss, how each stage was
    solved (``retraining.method``; columns :func:`solve_columns`) and where each stage landed against its first-order
    step (columns :func:`msif.validation.basins.basin_columns`; rule compare flags the rows past
    ``validation.basin_ratio``). ``retraining.continuation_steps`` ≥ 2: each set's weight goes 1 → 0 in that many
    warm-started steps (:func:`retrain_both_stages`)."""
    import pandas as pd
    from tqdm import tqdm

    exp, pt, pt_params, ft, ft_params = load_stages(config, scenario, data_path, pretrain_path, finetune_path)
    base = test_losses(ft, ft_params, exp.test)
    spec = io.read_json(sets_path)
    r = config["retraining"]
    precond = preconditioners(config, pt, pt_params, ft, ft_params)
    check = basins(pt, pt_params, ft, ft_params, precond)
    rows = []
    for idx in tqdm(spec["batches"][batch], desc=f"retrain[{scenario}] batch {batch}", mininterval=5):
        s = spec["sets"][idx]
        t0 = time.perf_counter()
        t = s["test_index"]
        row = {"scenario": scenario, "set_id": s["set_id"], "test_index": t, "test_id": int(exp.test.ids[t]),
               "selection": s["selection"], "k": s["k"]}
        try:
            res = retrain_both_stages(pt, pt_params, ft, ft_params, exp.test, s["members"], r["grad_tol"], r["max_iter"],
                                      newton_steps=newton_steps(config), precond=precond, basins=check,
                                      continuation_steps=r.get("continuation_steps", 0))
        except TrainingError as err:  # keep the row, flagged: a diverged retraining is a result, not a gap
            log.error("%s: retraining diverged: %s", s["set_id"], err)
            rows.append({**row, "actual": float("nan"), "pretrain_grad_norm": float("nan"), "finetune_grad_norm": float("nan"),
                         "seconds": time.perf_counter() - t0, "flag": f"retrain {s['set_id']}: diverged ({err})"})
            continue
        problems = health.retrain_problems(s["set_id"], res.pretrain, res.finetune, r["grad_tol"]) + landing_problems(s["set_id"], res)
        rows.append({**row, "actual": float(res.test_losses[t] - base[t]),
                     "pretrain_grad_norm": res.pretrain["grad_norm"], "finetune_grad_norm": res.finetune["grad_norm"],
                     **solve_columns(res), **basin_columns(res.pretrain, res.finetune), "seconds": time.perf_counter() - t0,
                     "flag": health.flag(problems)})
        log.info("%s: actual %.4e (grad norms %.1e, %.1e; landed %.2f, %.2f x the first-order step)", s["set_id"], rows[-1]["actual"],
                 res.pretrain["grad_norm"], res.finetune["grad_norm"], res.pretrain.get("basin_ratio", float("nan")),
                 res.finetune.get("basin_ratio", float("nan")))
    io.write_text(out, pd.DataFrame(rows).to_csv(index=False))


def noise_reps(config: dict) -> list[tuple[str, int]]:
    """The noise-floor retrains of one scenario: ``validation.noise_repeats`` warm, then ``validation.seed_noise_repeats`` seed."""
    v = config["validation"]
    return [("warm", rep) for rep in range(v["noise_repeats"])] + [("seed", rep) for rep in range(v.get("seed_noise_repeats", 0))]


def noise_floor(config: dict, scenario: str, data_path: str, pretrain_path: str, finetune_path: str, out: str,
                reps: list[tuple[str, int]] | None = None) -> None:
    """Noise floor of one scenario, every retrain in one job: retrain both stages on the *full* set and record the change
    of every test loss, one row per (kind, rep, test example).

    ``reps``: the (kind, rep) pairs, by default :func:`noise_reps`. ``kind="warm"``: the run's own procedure
    (``retraining.method``) from a warm start perturbed by ``validation.noise_scale``; ``kind="seed"``: a cold start
    from another seed's initialisation (method.md: "and under another seed"). Each rep has its own seed
    (:func:`noise_seed`), so the rows do not depend on which job computes them.
    """
    import pandas as pd

    reps = noise_reps(config) if reps is None else list(reps)
    for kind, _ in reps:
        if kind not in NOISE_KINDS:
            raise ValueError(f"noise kind {kind!r}: allowed {list(NOISE_KINDS)}")
    exp, pt, pt_params, ft, ft_params = load_stages(config, scenario, data_path, pretrain_path, finetune_path)
    base = test_losses(ft, ft_params, exp.test)
    r = config["retraining"]
    precond = preconditioners(config, pt, pt_params, ft, ft_params) if any(kind == "warm" for kind, _ in reps) else None
    frames = []
    for kind, rep in reps:
        other = noise_seed(config["seed"], kind, scenario, rep)
        if kind == "warm":
            gen = torch.Generator().manual_seed(other)
            res = retrain_both_stages(pt, pt_params, ft, ft_params, exp.test, [], r["grad_tol"], r["max_iter"],
                                      newton_steps=newton_steps(config), start_noise=config["validation"]["noise_scale"], generator=gen,
                                      precond=precond)
        else:
            init = exp.model.init_params(other, exp.dtype, exp.device)
            res = retrain_from_scratch(pt, ft, init, exp.test, r["grad_tol"], r["max_iter"], newton_steps=newton_steps(config))
        delta = (res.test_losses - base).cpu().numpy()
        log.info("noise[%s] %s rep %d (seed %d): RMS Δ %.3e, max |Δ| %.3e", scenario, kind, rep, other,
                 np.sqrt(np.mean(delta**2)), np.abs(delta).max())
        problems = health.retrain_problems(f"noise[{scenario}] {kind} rep {rep}", res.pretrain, res.finetune, r["grad_tol"])
        frames.append(pd.DataFrame({"scenario": scenario, "kind": kind, "rep": rep, "test_index": np.arange(len(delta)),
                                    "actual": delta, "pretrain_method": res.pretrain.get("method"),
                                    "finetune_method": res.finetune.get("method"), "flag": health.flag(problems)}))
    io.write_text(out, pd.concat(frames, ignore_index=True).to_csv(index=False))


def baselines(config: dict, scenario: str, data_path: str, pretrain_path: str, finetune_path: str, hessian_path: str | None,
                  out: str) -> None:
    """Baseline score matrices (single-stage, gradient dot product, representation similarity, random)."""

    exp, pt, pt_params, ft, ft_params = load_stages(config, scenario, data_path, pretrain_path, finetune_path)
    solver = config["validation"]["reference_solver"]
    eigh = None
    if hessian_path:
        h = io.load_tensors(hessian_path, train_args(config), device=exp.device)
        eigh = Eigh(h["values"], h["vectors"])
    out_scores = baseline_scores(pt, pt_params, ft, ft_params, exp.test, solver, solve_arguments(config), seed=config["seed"],
                                 batch_size=config["influence"]["batch_size"], eigh=eigh)
    log.info("baselines[%s]: %s", scenario, sorted(out_scores))
    io.save_tensors(out, out_scores, args={**finetune_args(config, scenario), "influence": config["influence"]},
                    convention="larger = more helpful; single_stage and grad_dot in removal-effect units (" + msif.SCORE_CONVENTION + ")")


def lds_subsets(config: dict, data_path: str, out: str) -> None:

    n = len(io.load_tensors(data_path)["pretrain.y"])
    v = config["validation"]["lds"]
    subsets = metrics.lds_subsets(n, v["fraction"], v["n_subsets"], config["seed"])
    io.write_json(out, {"subsets": subsets, "batches": batches(len(subsets), v["subsets_per_job"])})


def lds_retrain(config: dict, scenario: str, batch: int, data_path: str, pretrain_path: str, finetune_path: str,
                    subsets_path: str, out: str) -> None:
    """Retrain both stages on each LDS subset S_j of one batch; record Δ test loss for every test example."""
    import pandas as pd
    from tqdm import tqdm

    exp, pt, pt_params, ft, ft_params = load_stages(config, scenario, data_path, pretrain_path, finetune_path)
    base = test_losses(ft, ft_params, exp.test)
    spec = io.read_json(subsets_path)
    r = config["retraining"]
    rows = []
    for j in tqdm(spec["batches"][batch], desc=f"lds[{scenario}] batch {batch}", mininterval=5):
        kept = set(spec["subsets"][j])
        removed = [i for i in range(pt.n) if i not in kept]
        grad_tol = config["validation"]["lds"]["grad_tol"]
        try:
            res = retrain_both_stages(pt, pt_params, ft, ft_params, exp.test, removed, grad_tol, r["max_iter"],
                                      newton_steps=newton_steps(config))
        except TrainingError as err:  # as in run_retrain: the subset's rows are kept, NaN and flagged
            log.error("lds subset %d: retraining diverged: %s", j, err)
            rows += [{"scenario": scenario, "subset_id": j, "test_index": t, "actual": float("nan"), "pretrain_grad_norm": float("nan"),
                      "finetune_grad_norm": float("nan"), "flag": f"lds subset {j}: diverged ({err})"} for t in range(len(base))]
            continue
        delta = (res.test_losses - base).cpu().numpy()
        flag = health.flag(health.retrain_problems(f"lds subset {j}", res.pretrain, res.finetune, grad_tol))
        rows += [{"scenario": scenario, "subset_id": j, "test_index": t, "actual": float(delta[t]),
                  "pretrain_grad_norm": res.pretrain["grad_norm"], "finetune_grad_norm": res.finetune["grad_norm"],
                  "flag": flag} for t in range(len(delta))]
        log.info("lds subset %d: mean |Δ| %.3e", j, float(np.abs(delta).mean()))
    io.write_text(out, pd.DataFrame(rows).to_csv(index=False))


def lds_cold(config: dict, scenario: str, batch: int, data_path: str, pretrain_path: str, finetune_path: str,
             subsets_path: str, out: str) -> None:
    """Cold-start LDS: train both stages on each LDS subset S_j of one batch from ``validation.lds.cold_seeds`` fresh
    initialisations; one row per (subset, rep, test example) with ``actual = f_t(θ_{S_j, rep}) − f_t(θ)``.

    Rep c of subset j starts from the model's initialisation under :func:`msif.validation.metrics.lds_cold_seed`
    (run seed, j, c) and trains pretraining (the examples outside S_j weighted 0, the denominator n, as the warm
    retrain), then finetuning from θ's fresh initialisation, each to ``validation.lds.grad_tol``
    (:func:`retrain_from_scratch`). The comparison averages the reps (:func:`msif.validation.compare.cold_actual`).
    """
    import pandas as pd
    from tqdm import tqdm

    exp, pt, _, ft, ft_params = load_stages(config, scenario, data_path, pretrain_path, finetune_path)
    base = test_losses(ft, ft_params, exp.test)
    spec = io.read_json(subsets_path)
    grad_tol, max_iter = config["validation"]["lds"]["grad_tol"], config["retraining"]["max_iter"]
    rows = []
    for j in tqdm(spec["batches"][batch], desc=f"lds_cold[{scenario}] batch {batch}", mininterval=5):
        kept = set(spec["subsets"][j])
        removed = [i for i in range(pt.n) if i not in kept]
        for rep in range(config["validation"]["lds"].get("cold_seeds", 0)):
            init_seed = lds_cold_seed(config["seed"], j, rep)
            t0 = time.perf_counter()
            row = {"scenario": scenario, "subset_id": j, "rep": rep, "init_seed": init_seed}
            try:
                res = retrain_from_scratch(pt, ft, exp.model.init_params(init_seed, exp.dtype, exp.device), exp.test, grad_tol,
                                           max_iter, newton_steps=newton_steps(config), removed=removed)
            except TrainingError as err:  # as in lds_retrain: the rows are kept, NaN and flagged
                log.error("lds_cold subset %d rep %d: training diverged: %s", j, rep, err)
                rows += [{**row, "test_index": t, "actual": float("nan"), "pretrain_grad_norm": float("nan"),
                          "finetune_grad_norm": float("nan"), "seconds": time.perf_counter() - t0,
                          "flag": f"lds_cold subset {j} rep {rep}: diverged ({err})"} for t in range(len(base))]
                continue
            delta = (res.test_losses - base).cpu().numpy()
            flag = health.flag(health.retrain_problems(f"lds_cold subset {j} rep {rep}", res.pretrain, res.finetune, grad_tol))
            seconds = time.perf_counter() - t0
            rows += [{**row, "test_index": t, "actual": float(delta[t]), "pretrain_grad_norm": res.pretrain["grad_norm"],
                      "finetune_grad_norm": res.finetune["grad_norm"], "seconds": seconds, "flag": flag} for t in range(len(delta))]
            log.info("lds_cold subset %d rep %d (init seed %d): mean |Δ| %.3e in %.2f s", j, rep, init_seed,
                     float(np.abs(delta).mean()), seconds)
    io.write_text(out, pd.DataFrame(rows).to_csv(index=False))


def compare(config: dict, scores_paths: dict, sets_paths: dict, retrain_paths: dict, noise_paths: dict,
            leave_k_out_out: str, summary_out: str, baselines_paths: dict | None = None, lds_subsets_path: str | None = None,
            lds_paths: dict | None = None, lds_out: str | None = None, pretrain_path: str | None = None,
            finetune_paths: dict | None = None, lds_cold_paths: dict | None = None, group_paths: dict | None = None,
            scratch_path: str | None = None) -> None:
    """One seed's validation tables: predicted (every method and solver) against actual effects (:func:`compare_tables`).

    ``lds_cold_paths`` (scenario → the CSVs of rule ``lds_cold``; empty lists or None without cold-start LDS) fill
    ``lds_cold`` beside ``lds_warm``.

    ``group_paths`` (scenario → rule ``group_predictions``' output; None without ``influence.group``) add the rows of
    ``multi_stage_group`` (:func:`group_set_predictions`), on the same sets, which first order chose.

    With ``pretrain_path`` and ``finetune_paths`` (scenario → finetuned parameters), every summary row also carries the
    accuracy of the models it explains (``pt_*_accuracy``, ``ft_*_accuracy``, from their sidecars) and of the same
    architecture trained from scratch on the finetuning data (``scratch_test_accuracy``, from ``scratch_path``: rule
    ``scratch``'s output).
    """
    lds_paths = lds_paths or {}
    subsets = io.read_json(lds_subsets_path)["subsets"] if lds_subsets_path else None
    inputs = {s: ScenarioInputs(
        methods=method_scores(scores_paths[s], (baselines_paths or {}).get(s), config["validation"]["reference_solver"]),
        sets=io.read_json(sets_paths[s])["sets"], retrain=read_csvs(retrain_paths[s]), noise=read_csvs(noise_paths[s]),
        lds=read_csvs(lds_paths[s]) if subsets is not None else None,
        lds_cold=read_csvs(lds_cold_paths[s]) if subsets is not None and (lds_cold_paths or {}).get(s) else None,
        set_predictions=group_set_predictions((group_paths or {}).get(s), config["validation"]["reference_solver"], config["seed"]))
        for s in sets_paths}
    for inp in inputs.values():  # the basin check: rows past validation.basin_ratio flagged other_basin, kept
        inp.retrain = flag_basins(inp.retrain, config["validation"].get("basin_ratio", BASIN_RATIO))
    lko, summary, lds_table = compare_tables(inputs, subsets, config["validation"]["bootstrap"], config["seed"])
    if pretrain_path and finetune_paths:
        summary = with_accuracy(summary, io.load_meta(pretrain_path).get("accuracy", {}),
                                {s: io.load_meta(p).get("accuracy", {}) for s, p in finetune_paths.items()},
                                io.read_json(scratch_path)["accuracy"] if scratch_path else None)
    lko["flag"] = health.row_flags(lko, (inp.retrain for inp in inputs.values()), scores_paths)
    if lko["other_basin"].any():
        log.warning("%d of %d leave-k-out rows landed in another basin (validation.basin_ratio %g): Pearson %s without them",
                    int(lko["other_basin"].sum()), len(lko), config["validation"].get("basin_ratio", BASIN_RATIO),
                    summary[["scenario", "method", "solver", "pearson", "pearson_same_basin"]].to_string(index=False))
    if (lko["flag"] != health.OK).any():
        log.warning("%d of %d leave-k-out rows flagged (column 'flag'): %s", int((lko["flag"] != health.OK).sum()), len(lko),
                    sorted(set(lko["flag"]) - {health.OK})[:10])
    log.info("summary:\n%s", summary.to_string(index=False))
    log_widening(summary)
    io.write_text(leave_k_out_out, lko.to_csv(index=False))
    io.write_text(summary_out, summary.to_csv(index=False))
    if lds_out:
        io.write_text(lds_out, lds_table.to_csv(index=False))


def group_set_predictions(path: str | None, solver: str, seed: int) -> dict[tuple[str, str], tuple]:
    """``("multi_stage_group", solver)`` → (:class:`PerSet`, test_ids) from rule ``group_predictions``' output (of this
    ``seed``); {} without."""
    if not path:
        return {}
    art = io.load_tensors(path, {"seed": seed})
    lds = art["lds"].numpy() if art["lds"].numel() else None
    return {("multi_stage_group", solver): (PerSet(art["sets"].numpy(), lds), art["test_ids"])}


def log_widening(summary) -> None:
    """Log how much wider the intervals over test examples are than the old ones over sets (Pearson) and subsets (LDS):
    median and range over rows of the ratio of widths."""
    for new, old in (("pearson", "pearson_{}_iid_sets"), ("lds_warm", "lds_warm_{}_iid_subsets")):
        if old.format("lo") not in summary:
            continue
        ratio = ((summary[f"{new}_hi"] - summary[f"{new}_lo"]) / (summary[old.format("hi")] - summary[old.format("lo")])).to_numpy(float)
        ratio = ratio[np.isfinite(ratio)]
        if len(ratio):
            log.info("%s intervals over test examples are %.2fx as wide as the old ones over %s (median of %d rows; range %.2f-%.2f)",
                     new, np.median(ratio), "sets" if new == "pearson" else "subsets", len(ratio), ratio.min(), ratio.max())


def method_scores(scores_paths: dict, baselines_path: str | None, reference_solver: str) -> dict[tuple[str, str], tuple]:
    """(method, solver) → (scores, test_ids) for multi-stage influence (every solver) and each baseline."""
    out = {}
    for solver, path in scores_paths.items():
        art = io.load_tensors(path)
        out[("multi_stage", solver)] = (art["scores"], art["test_ids"])
    if baselines_path:
        test_ids = next(iter(out.values()))[1]
        for method, scores in io.load_tensors(baselines_path).items():
            out[(method, reference_solver if method == "single_stage" else "none")] = (scores, test_ids)
    return out


def aggregate(seeds: list[int], n_boot: int, leave_k_out_paths: list[str], summary_paths: list[str], lds_paths: list[str],
                  leave_k_out_out: str, summary_out: str, lds_out: str) -> None:
    """Pool the per-seed validation tables: every seed's rows (column ``seed``) plus pooled rows (``seed = all``)."""
    import pandas as pd


    read = lambda paths: pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)  # noqa: E731
    lko, per_seed = read(leave_k_out_paths), read(summary_paths)
    lds_table = read(lds_paths) if lds_paths else pd.DataFrame(columns=LDS_COLUMNS)
    found = sorted(set(per_seed["seed"].astype(int)))
    if found != sorted(seeds):
        raise ValueError(f"seeds: the per-seed summaries hold seeds {found}, the config asks for {sorted(seeds)}")
    summary = pooled_summary(lko, lds_table, per_seed, n_boot, seed=min(seeds)) if len(seeds) > 1 else per_seed
    log.info("summary over seeds %s:\n%s", seeds, summary.to_string(index=False))
    log_widening(summary)
    io.write_text(leave_k_out_out, lko.to_csv(index=False))
    io.write_text(summary_out, summary.to_csv(index=False))
    io.write_text(lds_out, lds_table.to_csv(index=False))
