"""Steps of ``workflow/rules/validation.smk``: rule X runs ``workflow/scripts/X.py``, which calls ``X`` here."""

from __future__ import annotations

import logging
import time
import zlib

import numpy as np
import torch

import msif
from msif import io
from msif.core.solvers import Eigh
from msif.influence.baselines import baseline_scores
from msif.steps.common import finetune_args, influence_options, load_stages, newton_steps, train_args
from msif.task.training import TrainingError
from msif.validation import health, metrics
from msif.validation.metrics import (
    batches,
    bootstrap_lds,
    bootstrap_pearson,
    correlations,
    lds,
    lds_predictions,
    pooled_summary,
    predicted_effects,
)
from msif.validation.retraining import retrain_both_stages, retrain_from_scratch, test_losses

log = logging.getLogger("msif")



def removal_sets(config: dict, scores_path: str, out: str) -> None:

    scores = io.load_tensors(scores_path, {"seed": config["seed"]})["scores"]
    v = config["validation"]
    sets = metrics.removal_sets(scores, v["ks"], v["selections"], config["seed"])
    io.write_json(out, {"sets": sets, "batches": batches(len(sets), v["sets_per_job"])})


def retrain(config: dict, scenario: str, batch: int, data_path: str, pretrain_path: str, finetune_path: str,
                sets_path: str, out: str) -> None:
    """Retrain both stages without each removal set of one batch; record the actual Δ test loss."""
    import pandas as pd
    from tqdm import tqdm

    exp, pt, pt_params, ft, ft_params = load_stages(config, scenario, data_path, pretrain_path, finetune_path)
    base = test_losses(ft, ft_params, exp.test)
    spec = io.read_json(sets_path)
    r = config["retraining"]
    rows = []
    for idx in tqdm(spec["batches"][batch], desc=f"retrain[{scenario}] batch {batch}", mininterval=5):
        s = spec["sets"][idx]
        t0 = time.perf_counter()
        t = s["test_index"]
        row = {"scenario": scenario, "set_id": s["set_id"], "test_index": t, "test_id": int(exp.test.ids[t]),
               "selection": s["selection"], "k": s["k"]}
        try:
            res = retrain_both_stages(pt, pt_params, ft, ft_params, exp.test, s["members"], r["grad_tol"], r["max_iter"],
                                      newton_steps=newton_steps(config))
        except TrainingError as err:  # keep the row, flagged: a diverged retraining is a result, not a gap
            log.error("%s: retraining diverged: %s", s["set_id"], err)
            rows.append({**row, "actual": float("nan"), "pretrain_grad_norm": float("nan"), "finetune_grad_norm": float("nan"),
                         "seconds": time.perf_counter() - t0, "flag": f"retrain {s['set_id']}: diverged ({err})"})
            continue
        problems = health.retrain_problems(s["set_id"], res.pretrain, res.finetune, r["grad_tol"])
        rows.append({**row, "actual": float(res.test_losses[t] - base[t]),
                     "pretrain_grad_norm": res.pretrain["grad_norm"], "finetune_grad_norm": res.finetune["grad_norm"],
                     "seconds": time.perf_counter() - t0, "flag": health.flag(problems)})
        log.info("%s: actual %.4e (grad norms %.1e, %.1e)", s["set_id"], rows[-1]["actual"], res.pretrain["grad_norm"],
                 res.finetune["grad_norm"])
    io.write_text(out, pd.DataFrame(rows).to_csv(index=False))


NOISE_KINDS = ("warm", "seed")


def noise_seed(seed: int, kind: str, scenario: str, rep: int) -> int:
    """The seed of one noise-floor retrain: distinct per (run seed, kind, scenario, rep), never the run's own."""
    tag = [NOISE_KINDS.index(kind), zlib.crc32(scenario.encode())]
    return int(np.random.SeedSequence([seed, rep, 7, *tag]).generate_state(1)[0] % 2**31)


def noise_floor(config: dict, scenario: str, rep: int, data_path: str, pretrain_path: str, finetune_path: str, out: str,
              kind: str = "warm") -> None:
    """Noise floor: retrain both stages on the *full* set and record the change of every test loss.

    ``kind="warm"``: the run's own procedure from a warm start perturbed by ``validation.noise_scale``;
    ``kind="seed"``: a cold start from another seed's initialisation (method.md: "and under another seed").
    """
    import pandas as pd


    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind {kind!r}: allowed {list(NOISE_KINDS)}")
    exp, pt, pt_params, ft, ft_params = load_stages(config, scenario, data_path, pretrain_path, finetune_path)
    base = test_losses(ft, ft_params, exp.test)
    r = config["retraining"]
    other = noise_seed(config["seed"], kind, scenario, rep)
    if kind == "warm":
        gen = torch.Generator().manual_seed(other)
        res = retrain_both_stages(pt, pt_params, ft, ft_params, exp.test, [], r["grad_tol"], r["max_iter"], newton_steps=newton_steps(config),
                                  start_noise=config["validation"]["noise_scale"], generator=gen)
    else:
        init = exp.model.init_params(other, exp.dtype, exp.device)
        res = retrain_from_scratch(pt, ft, init, exp.test, r["grad_tol"], r["max_iter"], newton_steps=newton_steps(config))
    delta = (res.test_losses - base).cpu().numpy()
    log.info("noise[%s] %s rep %d (seed %d): RMS Δ %.3e, max |Δ| %.3e", scenario, kind, rep, other,
             np.sqrt(np.mean(delta**2)), np.abs(delta).max())
    problems = health.retrain_problems(f"noise[{scenario}] {kind} rep {rep}", res.pretrain, res.finetune, r["grad_tol"])
    io.write_text(out, pd.DataFrame({"scenario": scenario, "kind": kind, "rep": rep, "test_index": np.arange(len(delta)),
                                     "actual": delta, "flag": health.flag(problems)}).to_csv(index=False))


def noise_floors(noise: pd.DataFrame) -> dict[str, float]:  # noqa: F821 (pandas is imported lazily)
    """RMS change of the test losses over the noise-floor retrains of each kind (NaN where there are none)."""
    import pandas as pd

    kinds = noise["kind"] if "kind" in noise else pd.Series("warm", index=noise.index)
    return {k: float(np.sqrt(np.mean(noise.loc[kinds == k, "actual"] ** 2))) if (kinds == k).any() else float("nan")
            for k in NOISE_KINDS}


def baselines(config: dict, scenario: str, data_path: str, pretrain_path: str, finetune_path: str, hessian_path: str | None,
                  out: str) -> None:
    """Baseline score matrices (single-stage, gradient dot product, representation similarity, random)."""

    exp, pt, pt_params, ft, ft_params = load_stages(config, scenario, data_path, pretrain_path, finetune_path)
    solver = config["validation"]["reference_solver"]
    eigh = None
    if hessian_path:
        h = io.load_tensors(hessian_path, train_args(config), device=exp.device)
        eigh = Eigh(h["values"], h["vectors"])
    out_scores = baseline_scores(pt, pt_params, ft, ft_params, exp.test, solver, config["influence"]["damping"],
                                 influence_options(config), seed=config["seed"], batch_size=config["influence"]["batch_size"], eigh=eigh)
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


def _method_scores(scores_paths: dict, baselines_path: str | None, reference_solver: str) -> dict[tuple[str, str], tuple]:
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


def compare(config: dict, scores_paths: dict, sets_paths: dict, retrain_paths: dict, noise_paths: dict,
                leave_k_out_out: str, summary_out: str, baselines_paths: dict | None = None, lds_subsets_path: str | None = None,
                lds_paths: dict | None = None, lds_out: str | None = None) -> None:
    """Join predicted (every method and solver) and actual effects; correlations with bootstrap intervals,
    the LDS, and the noise floor per scenario."""
    import pandas as pd


    v = config["validation"]
    n_boot, seed = v["bootstrap"], config["seed"]
    frames, lds_frames, summary_rows = [], [], []
    subsets = io.read_json(lds_subsets_path)["subsets"] if lds_subsets_path else None
    for scenario, sets_path in sets_paths.items():
        sets = io.read_json(sets_path)["sets"]
        actual = pd.concat([pd.read_csv(p) for p in retrain_paths[scenario]]).set_index("set_id")
        actual_sets = actual.loc[[s["set_id"] for s in sets], "actual"].to_numpy()
        floors = noise_floors(pd.concat([pd.read_csv(p) for p in noise_paths[scenario]]))
        lds_actual = None
        if subsets is not None:
            lds_df = pd.concat([pd.read_csv(p) for p in lds_paths[scenario]])
            lds_actual = lds_df.pivot(index="subset_id", columns="test_index", values="actual").sort_index().to_numpy()
        methods = _method_scores(scores_paths[scenario], (baselines_paths or {}).get(scenario), v["reference_solver"])
        for (method, solver), (scores, test_ids) in methods.items():
            pred = predicted_effects(scores, sets)
            frames.append(pd.DataFrame({
                "scenario": scenario, "solver": solver, "test_id": [int(test_ids[s["test_index"]]) for s in sets],
                "selection": [s["selection"] for s in sets], "k": [s["k"] for s in sets],
                "predicted": pred, "actual": actual_sets, "method": method, "seed": seed,
            }))
            c = correlations(pred, actual_sets)
            lo, hi = bootstrap_pearson(pred, actual_sets, n_boot, seed)
            row = {"scenario": scenario, "solver": solver, "pearson": c["pearson"], "spearman": c["spearman"], "n_sets": len(sets),
                   "noise_floor": floors["warm"], "noise_floor_seed": floors["seed"], "method": method, "seed": seed, "lds": float("nan"), "pearson_lo": lo, "pearson_hi": hi,
                   "lds_lo": float("nan"), "lds_hi": float("nan"), "slope": c["slope"]}
            if lds_actual is not None:
                lds_pred = lds_predictions(scores, subsets)
                row["lds"], _ = lds(lds_pred, lds_actual)
                row["lds_lo"], row["lds_hi"] = bootstrap_lds(lds_pred, lds_actual, n_boot, seed)
                lds_frames.append(pd.DataFrame({
                    "scenario": scenario, "method": method,
                    "subset_id": np.repeat(np.arange(len(subsets)), lds_pred.shape[1]),
                    "test_id": np.tile([int(t) for t in test_ids], len(subsets)),
                    "predicted": lds_pred.reshape(-1), "actual": lds_actual.reshape(-1), "solver": solver, "seed": seed,
                }))
            summary_rows.append(row)
    lko = pd.concat(frames, ignore_index=True)
    lko["flag"] = health.row_flags(lko, (pd.read_csv(p) for ps in retrain_paths.values() for p in ps), scores_paths)
    if (lko["flag"] != health.OK).any():
        log.warning("%d of %d leave-k-out rows flagged (column 'flag'): %s", int((lko["flag"] != health.OK).sum()), len(lko),
                    sorted(set(lko["flag"]) - {health.OK})[:10])
    summary = pd.DataFrame(summary_rows)
    log.info("summary:\n%s", summary.to_string(index=False))
    io.write_text(leave_k_out_out, lko.to_csv(index=False))
    io.write_text(summary_out, summary.to_csv(index=False))
    if lds_out:
        lds_table = pd.concat(lds_frames, ignore_index=True) if lds_frames else pd.DataFrame(
            columns=["scenario", "method", "subset_id", "test_id", "predicted", "actual", "solver", "seed"])
        io.write_text(lds_out, lds_table.to_csv(index=False))


def aggregate(seeds: list[int], n_boot: int, leave_k_out_paths: list[str], summary_paths: list[str], lds_paths: list[str],
                  leave_k_out_out: str, summary_out: str, lds_out: str) -> None:
    """Pool the per-seed validation tables: every seed's rows (column ``seed``) plus pooled rows (``seed = all``)."""
    import pandas as pd


    read = lambda paths: pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)  # noqa: E731
    lko, per_seed = read(leave_k_out_paths), read(summary_paths)
    lds_table = read(lds_paths) if lds_paths else pd.DataFrame(
        columns=["scenario", "method", "subset_id", "test_id", "predicted", "actual", "solver", "seed"])
    found = sorted(set(per_seed["seed"].astype(int)))
    if found != sorted(seeds):
        raise ValueError(f"seeds: the per-seed summaries hold seeds {found}, the config asks for {sorted(seeds)}")
    summary = pooled_summary(lko, lds_table, per_seed, n_boot, seed=min(seeds)) if len(seeds) > 1 else per_seed
    log.info("summary over seeds %s:\n%s", seeds, summary.to_string(index=False))
    io.write_text(leave_k_out_out, lko.to_csv(index=False))
    io.write_text(summary_out, summary.to_csv(index=False))
    io.write_text(lds_out, lds_table.to_csv(index=False))
