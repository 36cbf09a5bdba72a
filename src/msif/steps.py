"""One function per workflow step: paths and config in, artifacts out. Never imports Snakemake.

The workflow's scripts are thin adapters around these functions (``workflow/scripts/*.py``), and
the tests call them directly. Each step records what it computed under (``args``) in the sidecar.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

import msif
from msif import io
from msif.curvature import Eigh, hvp, lanczos_extremes
from msif.data import TwoStageData
from msif.experiment import Experiment, load_data
from msif.influence import cross_stage_vector, finetune_ihvp, pretrain_ihvp, removal_effect, upweight_influence
from msif.retraining import retrain_both_stages, test_losses
from msif.training import minimize

log = logging.getLogger("msif")


def _experiment(config: dict, data_path: str) -> Experiment:
    return Experiment.from_config(config, TwoStageData.from_state_dict(io.load_tensors(data_path)))


def _train_args(config: dict) -> dict:
    return {k: config[k] for k in ("seed", "dtype", "experiment", "data", "model", "pretrain", "training")}


def _finetune_args(config: dict, scenario: str) -> dict:
    return {**_train_args(config), "finetune": config["finetune"], "scenario": scenario}


def _check_curvature(name: str, min_eig: float, damping: float) -> None:
    if min_eig + damping <= 0:
        log.warning("%s: smallest eigenvalue %.3e (+ damping %.1e) <= 0 — a saddle or too little regularisation; "
                    "influence at this point is unreliable", name, min_eig, damping)
    else:
        log.info("%s: smallest eigenvalue %.3e", name, min_eig)


def prepare_data(config: dict, out: str) -> None:
    data = load_data(config)
    sizes = {s: len(getattr(data, s)) for s in data.SPLITS}
    log.info("data %s: %s", config["experiment"], sizes)
    io.save_tensors(out, data.state_dict(), args={"seed": config["seed"], "experiment": config["experiment"], "data": config["data"]},
                    sizes=sizes)


def _minimum(name: str, fun, x0: torch.Tensor, config: dict) -> tuple[torch.Tensor, dict]:
    t0 = time.perf_counter()
    t = config["training"]
    res = minimize(fun, x0, grad_tol=t["grad_tol"], max_iter=t["max_iter"])
    lo, hi = lanczos_extremes(hvp(fun, res.params), res.params.numel(), res.params, iters=t["lanczos_iters"])
    info = {**res.summary(), "min_eigenvalue_lanczos": lo, "max_eigenvalue_lanczos": hi, "seconds": time.perf_counter() - t0}
    log.info("%s: %s", name, info)
    _check_curvature(name, lo, 0.0)
    return res.params, info


def pretrain(config: dict, data_path: str, out: str) -> None:
    """Pretrain (W, U) from the seeded initialisation to a minimum of L_pt."""
    exp = _experiment(config, data_path)
    w, u, _ = exp.init_params()
    params, info = _minimum("pretrain", exp.pretrain_objective(), torch.cat([w, u]), config)
    io.save_tensors(out, {"params": params}, args=_train_args(config), training=info, p_w=exp.model.w_spec.numel)


def finetune(config: dict, scenario: str, data_path: str, pretrain_path: str, out: str) -> None:
    """Finetune Θ (fixed) or (Θ, W) (updated) from the pretrained W and a seeded head."""
    exp = _experiment(config, data_path)
    pt_params = io.load_tensors(pretrain_path, _train_args(config))["params"].to(exp.device)
    ft = exp.finetune_objective(scenario, pt_params[: exp.model.w_spec.numel])
    _, _, theta0 = exp.init_params()
    params, info = _minimum(f"finetune[{scenario}]", ft, ft.initial(theta0), config)
    io.save_tensors(out, {"params": params}, args=_finetune_args(config, scenario), training=info)


def _load_stages(config: dict, scenario: str, data_path: str, pretrain_path: str, finetune_path: str):
    exp = _experiment(config, data_path)
    pt_params = io.load_tensors(pretrain_path, _train_args(config))["params"].to(exp.device)
    ft_params = io.load_tensors(finetune_path, _finetune_args(config, scenario))["params"].to(exp.device)
    ft = exp.finetune_objective(scenario, pt_params[: exp.model.w_spec.numel])
    return exp, exp.pretrain_objective(), pt_params, ft, ft_params


def _solver_options(config: dict, solver: str) -> dict:
    return dict(config["influence"].get(solver, {}))


def _check_solve(name: str, solve, config: dict) -> None:
    summary = solve.summary()
    log.info("%s: %s", name, summary)
    bad = not torch.isfinite(solve.x).all() or summary["max_residual"] > config["influence"]["max_residual"]
    if bad:
        msg = f"{name}: relative residual {summary['max_residual']:.3e} > influence.max_residual or non-finite solution"
        if config["influence"]["fail_on_bad_solve"]:
            raise RuntimeError(msg)
        log.warning(msg)
    _check_curvature(name, summary.get("min_eigenvalue", float("nan")), config["influence"]["damping"])


def run_finetune_ihvp(config: dict, scenario: str, solver: str, data_path: str, pretrain_path: str, finetune_path: str, out: str) -> None:
    """Step 1 of method.md: ``v = (H_ft + λI)⁻¹ ∇f`` for all scored test examples."""
    exp, _, _, ft, ft_params = _load_stages(config, scenario, data_path, pretrain_path, finetune_path)
    damping = config["influence"]["damping"]
    sol = finetune_ihvp(ft, ft_params, exp.test, solver, damping, _solver_options(config, solver))
    _check_solve(f"finetune_ihvp[{scenario},{solver}]", sol, config)
    io.save_tensors(out, {"v": sol.x, "residual": sol.residual}, args={**_finetune_args(config, scenario), "influence": config["influence"]},
                    solve=sol.summary())


def run_pretrain_hessian(config: dict, data_path: str, pretrain_path: str, out: str) -> None:
    """The dense pretraining Hessian's eigendecomposition (exact solver only; shared by both scenarios)."""
    exp = _experiment(config, data_path)
    pt_params = io.load_tensors(pretrain_path, _train_args(config))["params"].to(exp.device)
    t0 = time.perf_counter()
    eigh = Eigh.of(hvp(exp.pretrain_objective(), pt_params), pt_params.numel(), pt_params)
    log.info("pretrain_hessian: p=%d, eigenvalues [%.3e, %.3e], %.1fs", pt_params.numel(), eigh.values[0], eigh.values[-1],
             time.perf_counter() - t0)
    _check_curvature("pretrain_hessian", float(eigh.values[0]), config["influence"]["damping"])
    io.save_tensors(out, {"values": eigh.values, "vectors": eigh.vectors}, args=_train_args(config),
                    min_eigenvalue=float(eigh.values[0]), max_eigenvalue=float(eigh.values[-1]))


def run_pretrain_ihvp(config: dict, scenario: str, solver: str, data_path: str, pretrain_path: str, finetune_path: str,
                      finetune_ihvp_path: str, hessian_path: str | None, out: str) -> None:
    """Steps 2–3 of method.md: ``g`` = cross_stage_vector, then ``s = (H_pt + λI)⁻¹ [g; 0]``."""
    exp, pt, pt_params, ft, ft_params = _load_stages(config, scenario, data_path, pretrain_path, finetune_path)
    v = io.load_tensors(finetune_ihvp_path)["v"].to(exp.device)
    g = cross_stage_vector(ft, ft_params, exp.test, v)
    eigh = None
    if hessian_path:
        h = io.load_tensors(hessian_path, _train_args(config), device=exp.device)
        eigh = Eigh(h["values"], h["vectors"])
    sol = pretrain_ihvp(pt, pt_params, g, solver, config["influence"]["damping"], _solver_options(config, solver), eigh=eigh)
    _check_solve(f"pretrain_ihvp[{scenario},{solver}]", sol, config)
    io.save_tensors(out, {"s": sol.x, "g": g, "residual": sol.residual},
                    args={**_finetune_args(config, scenario), "influence": config["influence"]}, solve=sol.summary())


def run_scores(config: dict, scenario: str, solver: str, data_path: str, pretrain_path: str, pretrain_ihvp_path: str, out: str) -> None:
    """Step 4: ``score[t, i] = sᵀ∇l(z_i) / n`` (removal effect), streamed over pretraining batches."""
    exp = _experiment(config, data_path)
    pt_params = io.load_tensors(pretrain_path, _train_args(config))["params"].to(exp.device)
    s = io.load_tensors(pretrain_ihvp_path)["s"].to(exp.device)
    pt = exp.pretrain_objective()
    t0 = time.perf_counter()
    scores = removal_effect(upweight_influence(pt, pt_params, s, config["influence"]["batch_size"]), pt.n)
    if not torch.isfinite(scores).all():
        raise RuntimeError(f"scores[{scenario},{solver}]: non-finite values")
    log.info("scores[%s,%s]: shape %s in %.2fs", scenario, solver, tuple(scores.shape), time.perf_counter() - t0)
    io.save_tensors(out, {"scores": scores, "test_ids": exp.test.ids, "pretrain_ids": exp.data.pretrain.ids},
                    args={**_finetune_args(config, scenario), "influence": config["influence"], "solver": solver},
                    convention=msif.SCORE_CONVENTION)


def run_removal_sets(config: dict, scores_path: str, out: str) -> None:
    from msif.validation import batches, removal_sets

    scores = io.load_tensors(scores_path)["scores"]
    v = config["validation"]
    sets = removal_sets(scores, v["ks"], v["selections"], config["seed"])
    io.write_json(out, {"sets": sets, "batches": batches(len(sets), v["sets_per_job"])})


def run_retrain(config: dict, scenario: str, batch: int, data_path: str, pretrain_path: str, finetune_path: str,
                sets_path: str, out: str) -> None:
    """Retrain both stages without each removal set of one batch; record the actual Δ test loss."""
    import pandas as pd
    from tqdm import tqdm

    exp, pt, pt_params, ft, ft_params = _load_stages(config, scenario, data_path, pretrain_path, finetune_path)
    base = test_losses(ft, ft_params, exp.test)
    spec = io.read_json(sets_path)
    r = config["retraining"]
    rows = []
    for idx in tqdm(spec["batches"][batch], desc=f"retrain[{scenario}] batch {batch}", mininterval=5):
        s = spec["sets"][idx]
        t0 = time.perf_counter()
        res = retrain_both_stages(pt, pt_params, ft, ft_params, exp.test, s["members"], r["grad_tol"], r["max_iter"])
        t = s["test_index"]
        rows.append({"scenario": scenario, "set_id": s["set_id"], "test_index": t, "test_id": int(exp.test.ids[t]),
                     "selection": s["selection"], "k": s["k"], "actual": float(res.test_losses[t] - base[t]),
                     "pretrain_grad_norm": res.pretrain["grad_norm"], "finetune_grad_norm": res.finetune["grad_norm"],
                     "seconds": time.perf_counter() - t0})
        log.info("%s: actual %.4e (grad norms %.1e, %.1e)", s["set_id"], rows[-1]["actual"], res.pretrain["grad_norm"],
                 res.finetune["grad_norm"])
    io.write_text(out, pd.DataFrame(rows).to_csv(index=False))


def run_noise(config: dict, scenario: str, rep: int, data_path: str, pretrain_path: str, finetune_path: str, out: str) -> None:
    """Noise floor: retrain on the *full* set, warm start perturbed by ``validation.noise_scale`` (seed, rep)."""
    import pandas as pd

    exp, pt, pt_params, ft, ft_params = _load_stages(config, scenario, data_path, pretrain_path, finetune_path)
    base = test_losses(ft, ft_params, exp.test)
    r = config["retraining"]
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([config["seed"], rep, 7]).generate_state(1)[0]))
    res = retrain_both_stages(pt, pt_params, ft, ft_params, exp.test, [], r["grad_tol"], r["max_iter"],
                              start_noise=config["validation"]["noise_scale"], generator=gen)
    delta = (res.test_losses - base).cpu().numpy()
    log.info("noise[%s] rep %d: max |Δ| %.3e", scenario, rep, np.abs(delta).max())
    io.write_text(out, pd.DataFrame({"scenario": scenario, "rep": rep, "test_index": np.arange(len(delta)), "actual": delta}).to_csv(index=False))


def run_compare(params, scores_paths: dict, sets_paths: dict, retrain_paths: dict, noise_paths: dict,
                leave_k_out_out: str, summary_out: str) -> None:
    """Join predicted (every solver) and actual effects; correlations and the noise floor per scenario."""
    import pandas as pd

    from msif.validation import predicted_effects, summarise

    frames, noise_floor = [], {}
    for scenario, sets_path in sets_paths.items():
        sets = io.read_json(sets_path)["sets"]
        actual = pd.concat([pd.read_csv(p) for p in retrain_paths[scenario]]).set_index("set_id")
        noise = pd.concat([pd.read_csv(p) for p in noise_paths[scenario]])
        noise_floor[scenario] = float(np.sqrt(np.mean(noise["actual"] ** 2))) if len(noise) else float("nan")
        for solver, path in scores_paths[scenario].items():
            art = io.load_tensors(path)
            pred = predicted_effects(art["scores"], sets)
            frames.append(pd.DataFrame({
                "scenario": scenario, "solver": solver,
                "test_id": [int(art["test_ids"][s["test_index"]]) for s in sets],
                "selection": [s["selection"] for s in sets], "k": [s["k"] for s in sets],
                "predicted": pred, "actual": actual.loc[[s["set_id"] for s in sets], "actual"].to_numpy(),
            }))
    lko = pd.concat(frames, ignore_index=True)
    summary = summarise(lko, noise_floor)
    log.info("summary:\n%s", summary.to_string(index=False))
    io.write_text(leave_k_out_out, lko.to_csv(index=False))
    io.write_text(summary_out, summary.to_csv(index=False))
