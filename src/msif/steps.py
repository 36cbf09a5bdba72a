"""One function per workflow step: paths and config in, artifacts out. Never imports Snakemake.

The workflow's scripts are thin adapters around these functions (``workflow/scripts/*.py``), and
the tests call them directly. Each step records what it computed under (``args``) in the sidecar.
"""

from __future__ import annotations

import logging
import time
import zlib
from contextlib import contextmanager

import numpy as np
import torch

import msif
from msif import health, io
from msif.curvature import Eigh, hvp, lanczos_extremes
from msif.data import DataError, TwoStageData
from msif.experiment import Experiment, load_data
from msif.influence import cross_stage_vector, finetune_ihvp, pretrain_ihvp, removal_effect, shard_rows, upweight_influence
from msif.operators import Stage
from msif.retraining import retrain_both_stages, test_losses
from msif.training import TrainingError, minimize

log = logging.getLogger("msif")


def _experiment(config: dict, data_path: str) -> Experiment:
    return Experiment.from_config(config, TwoStageData.from_state_dict(io.load_tensors(data_path, _data_args(config))))


def _data_args(config: dict) -> dict:
    return {k: config[k] for k in ("seed", "experiment", "plugin", "data")}


def _train_args(config: dict) -> dict:
    return {k: config[k] for k in ("seed", "dtype", "experiment", "plugin", "data", "model", "pretrain", "training")}


def _finetune_args(config: dict, scenario: str) -> dict:
    return {**_train_args(config), "finetune": config["finetune"], "scenario": scenario}


def _check_curvature(name: str, min_eig: float, damping: float) -> None:
    if min_eig + damping <= 0:
        log.warning("%s: smallest eigenvalue %.3e (+ damping %.1e) <= 0 — a saddle or too little regularisation; "
                    "influence at this point is unreliable", name, min_eig, damping)
    else:
        log.info("%s: smallest eigenvalue %.3e", name, min_eig)


def prepare_data(config: dict, out: str, n_test: int | None = None) -> None:
    """Load and check the two stages' data; with ``n_test`` (influence.n_test), check the test split holds it."""
    data = load_data(config)
    sizes = {s: len(getattr(data, s)) for s in data.SPLITS}
    log.info("data %s: %s", config["experiment"], sizes)
    if n_test is not None and n_test > sizes["finetune_test"]:
        raise DataError(f"influence.n_test={n_test} exceeds the finetuning test split of experiment {config['experiment']!r} "
                        f"({sizes['finetune_test']} examples); allowed 1..{sizes['finetune_test']}")
    io.save_tensors(out, data.state_dict(), args=_data_args(config), sizes=sizes)


def newton_steps(config: dict) -> int:
    """``training.newton_steps``: Newton polishing steps after L-BFGS, in training and every retraining (schema default 8)."""
    return config["training"].get("newton_steps", 8)


def _minimum(name: str, fun, x0: torch.Tensor, config: dict) -> tuple[torch.Tensor, dict]:
    t0 = time.perf_counter()
    t = config["training"]
    try:
        res = minimize(fun, x0, grad_tol=t["grad_tol"], max_iter=t["max_iter"], newton_steps=newton_steps(config))
    except TrainingError as err:
        raise TrainingError(f"{name}: {err}") from err
    lo, hi = lanczos_extremes(hvp(fun, res.params), res.params.numel(), res.params, iters=t["lanczos_iters"])
    info = {**res.summary(), "min_eigenvalue_lanczos": lo, "max_eigenvalue_lanczos": hi, "seconds": time.perf_counter() - t0}
    log.info("%s: %s", name, info)
    _check_curvature(name, lo, 0.0)
    info["problems"] = health.training_problems(name, info, t["grad_tol"])
    return res.params, info


def pretrain(config: dict, data_path: str, out: str) -> None:
    """Pretrain (W, U) from the seeded initialisation to a minimum of L_pt."""
    exp = _experiment(config, data_path)
    w, u, _ = exp.init_params()
    params, info = _minimum("pretrain", exp.pretrain_objective(), torch.cat([w, u]), config)
    io.save_tensors(out, {"params": params}, args=_train_args(config), training=info, p_w=exp.model.w_spec.numel,
                    problems=info["problems"])


def finetune(config: dict, scenario: str, data_path: str, pretrain_path: str, out: str) -> None:
    """Finetune Θ (fixed) or (Θ, W) (updated) from the pretrained W and a seeded head."""
    exp = _experiment(config, data_path)
    pt_params = io.load_tensors(pretrain_path, _train_args(config))["params"].to(exp.device)
    ft = exp.finetune_objective(scenario, pt_params[: exp.model.w_spec.numel])
    _, _, theta0 = exp.init_params()
    params, info = _minimum(f"finetune[{scenario}]", ft, ft.initial(theta0), config)
    io.save_tensors(out, {"params": params}, args=_finetune_args(config, scenario), training=info,
                    problems=health.upstream(pretrain_path) + info["problems"])


def _load_stages(config: dict, scenario: str, data_path: str, pretrain_path: str, finetune_path: str):
    exp = _experiment(config, data_path)
    pt_params = io.load_tensors(pretrain_path, _train_args(config))["params"].to(exp.device)
    ft_params = io.load_tensors(finetune_path, _finetune_args(config, scenario))["params"].to(exp.device)
    ft = exp.finetune_objective(scenario, pt_params[: exp.model.w_spec.numel])
    return exp, exp.pretrain_objective(), pt_params, ft, ft_params


def _influence_options(config: dict) -> dict:
    """The ``influence`` block for ``finetune_ihvp``/``pretrain_ihvp``: ``curvature`` and every solver's options."""
    return dict(config["influence"])


@contextmanager
def _named(name: str):
    """Log which step failed (a solver's own error does not know it), then re-raise."""
    try:
        yield
    except Exception as err:
        log.error("%s failed: %s", name, err)
        raise


def _check_solve(name: str, solve, config: dict) -> list[str]:
    summary = solve.summary()
    log.info("%s: %s", name, summary)
    bad = not torch.isfinite(solve.x).all() or summary["max_residual"] > config["influence"]["max_residual"]
    if bad:
        msg = f"{name}: relative residual {summary['max_residual']:.3e} > influence.max_residual or non-finite solution"
        if config["influence"]["fail_on_bad_solve"]:
            raise RuntimeError(msg)
        log.warning(msg)
    _check_curvature(name, summary.get("min_eigenvalue", float("nan")), config["influence"]["damping"])
    return health.solve_problems(name, summary, config["influence"]["max_residual"], config["influence"]["damping"])


def run_finetune_ihvp(config: dict, scenario: str, solver: str, data_path: str, pretrain_path: str, finetune_path: str, out: str) -> None:
    """Step 1 of method.md: ``v = (H_ft + λI)⁻¹ ∇f`` for all scored test examples."""
    exp, _, _, ft, ft_params = _load_stages(config, scenario, data_path, pretrain_path, finetune_path)
    damping = config["influence"]["damping"]
    with _named(f"finetune_ihvp[{scenario},{solver}]"):
        sol = finetune_ihvp(ft, ft_params, exp.test, solver, damping, _influence_options(config))
    problems = _check_solve(f"finetune_ihvp[{scenario},{solver}]", sol, config)
    io.save_tensors(out, {"v": sol.x, "residual": sol.residual}, args=_solve_args(config, scenario, solver),
                    solve=sol.summary(), problems=health.upstream(finetune_path) + problems)


def _solve_args(config: dict, scenario: str, solver: str) -> dict:
    return {**_finetune_args(config, scenario), "influence": config["influence"], "solver": solver}


def run_pretrain_hessian(config: dict, data_path: str, pretrain_path: str, out: str) -> None:
    """The dense pretraining Hessian's eigendecomposition (exact solver only; shared by both scenarios)."""
    exp = _experiment(config, data_path)
    pt_params = io.load_tensors(pretrain_path, _train_args(config))["params"].to(exp.device)
    t0 = time.perf_counter()
    curvature = config["influence"].get("curvature", "hessian")  # the dense matrix of the configured curvature (hessian | ggn)
    eigh = Eigh.of(Stage.of(exp.pretrain_objective()).matvec(pt_params, curvature), pt_params.numel(), pt_params)
    log.info("pretrain_hessian: p=%d, eigenvalues [%.3e, %.3e], %.1fs", pt_params.numel(), eigh.values[0], eigh.values[-1],
             time.perf_counter() - t0)
    _check_curvature("pretrain_hessian", float(eigh.values[0]), config["influence"]["damping"])
    problems = health.curvature_problems("pretrain_hessian", float(eigh.values[0]), config["influence"]["damping"])
    io.save_tensors(out, {"values": eigh.values, "vectors": eigh.vectors}, args=_train_args(config),
                    min_eigenvalue=float(eigh.values[0]), max_eigenvalue=float(eigh.values[-1]), curvature=curvature,
                    problems=health.upstream(pretrain_path) + problems)


def run_pretrain_ihvp(config: dict, scenario: str, solver: str, data_path: str, pretrain_path: str, finetune_path: str,
                      finetune_ihvp_path: str, hessian_path: str | None, out: str) -> None:
    """Steps 2–3 of method.md: ``g`` = cross_stage_vector, then ``s = (H_pt + λI)⁻¹ [g; 0]``."""
    exp, pt, pt_params, ft, ft_params = _load_stages(config, scenario, data_path, pretrain_path, finetune_path)
    v = io.load_tensors(finetune_ihvp_path, _solve_args(config, scenario, solver))["v"].to(exp.device)
    g = cross_stage_vector(ft, ft_params, exp.test, v)
    eigh = None
    if hessian_path:
        h = io.load_tensors(hessian_path, _train_args(config), device=exp.device)
        eigh = Eigh(h["values"], h["vectors"])
    with _named(f"pretrain_ihvp[{scenario},{solver}]"):
        sol = pretrain_ihvp(pt, pt_params, g, solver, config["influence"]["damping"], _influence_options(config), eigh=eigh)
    problems = _check_solve(f"pretrain_ihvp[{scenario},{solver}]", sol, config)
    io.save_tensors(out, {"s": sol.x, "g": g, "residual": sol.residual}, args=_solve_args(config, scenario, solver),
                    solve=sol.summary(), problems=health.upstream(finetune_ihvp_path, hessian_path) + problems)


def _scores_args(config: dict, scenario: str, solver: str) -> dict:
    """What a score matrix depends on: not ``influence.shards`` (a sharded run gives the same numbers)."""
    influence = {k: v for k, v in config["influence"].items() if k != "shards"}
    return {**_finetune_args(config, scenario), "influence": influence, "solver": solver}


def run_scores(config: dict, scenario: str, solver: str, data_path: str, pretrain_path: str, pretrain_ihvp_path: str, out: str,
               shard: int | None = None) -> None:
    """Step 4: ``score[t, i] = sᵀ∇l(z_i) / n`` (removal effect), streamed over pretraining batches.

    With ``shard`` (0..influence.shards-1): only that shard's pretraining rows (:func:`msif.influence.shard_rows`),
    saved with their ``rows``; :func:`run_merge_scores` joins the shards into the full matrix.
    """
    exp = _experiment(config, data_path)
    pt_params = io.load_tensors(pretrain_path, _train_args(config))["params"].to(exp.device)
    s = io.load_tensors(pretrain_ihvp_path, {**_finetune_args(config, scenario), "solver": solver})["s"].to(exp.device)
    pt = exp.pretrain_objective()
    batch_size = config["influence"]["batch_size"]
    rows = slice(0, pt.n) if shard is None else shard_rows(pt.n, batch_size, config["influence"].get("shards", 1), shard)
    name = f"scores[{scenario},{solver}]" + ("" if shard is None else f" shard {shard} (rows {rows.start}..{rows.stop})")
    t0 = time.perf_counter()
    scores = removal_effect(upweight_influence(pt, pt_params, s, batch_size, rows,
                                               query_rank=config["influence"].get("query_rank")), pt.n)
    pretrain_ids = exp.data.pretrain.ids[rows]
    bad = ~torch.isfinite(scores).all(dim=0)
    if bad.any():
        raise RuntimeError(f"{name}: non-finite values for pretraining example ids "
                           f"{pretrain_ids[bad.cpu()][:20].tolist()} ({int(bad.sum())} of {len(bad)})")
    log.info("%s: shape %s in %.2fs", name, tuple(scores.shape), time.perf_counter() - t0)
    extra = {} if shard is None else {"rows": torch.tensor([rows.start, rows.stop])}
    io.save_tensors(out, {"scores": scores, "test_ids": exp.test.ids, "pretrain_ids": pretrain_ids, **extra},
                    args=_scores_args(config, scenario, solver), convention=msif.SCORE_CONVENTION,
                    problems=health.upstream(pretrain_ihvp_path))


def run_merge_scores(config: dict, scenario: str, solver: str, shard_paths: list[str], out: str) -> None:
    """Join the shards of :func:`run_scores` into the (n_test, n_pretrain) matrix, bitwise the unsharded one."""
    from msif.influence import merge_shards

    args = _scores_args(config, scenario, solver)
    parts = [io.load_tensors(p, args) for p in shard_paths]
    test_ids = parts[0]["test_ids"]
    if any(not torch.equal(p["test_ids"], test_ids) for p in parts):
        raise ValueError(f"scores[{scenario},{solver}]: the shards were computed for different test examples")
    n = sum(p["scores"].shape[1] for p in parts)
    as_rows = lambda p: slice(int(p["rows"][0]), int(p["rows"][1]))  # noqa: E731
    scores = merge_shards([(as_rows(p), p["scores"]) for p in parts], n)
    pretrain_ids = merge_shards([(as_rows(p), p["pretrain_ids"][None]) for p in parts], n)[0]
    log.info("scores[%s,%s]: %d shards merged, shape %s", scenario, solver, len(parts), tuple(scores.shape))
    io.save_tensors(out, {"scores": scores, "test_ids": test_ids, "pretrain_ids": pretrain_ids}, args=args,
                    convention=msif.SCORE_CONVENTION, problems=health.upstream(*shard_paths))


def run_baselines(config: dict, scenario: str, data_path: str, pretrain_path: str, finetune_path: str, hessian_path: str | None,
                  out: str) -> None:
    """Baseline score matrices (single-stage, gradient dot product, representation similarity, random)."""
    from msif.baselines import baseline_scores

    exp, pt, pt_params, ft, ft_params = _load_stages(config, scenario, data_path, pretrain_path, finetune_path)
    solver = config["validation"]["reference_solver"]
    eigh = None
    if hessian_path:
        h = io.load_tensors(hessian_path, _train_args(config), device=exp.device)
        eigh = Eigh(h["values"], h["vectors"])
    out_scores = baseline_scores(pt, pt_params, ft, ft_params, exp.test, solver, config["influence"]["damping"],
                                 _influence_options(config), seed=config["seed"], batch_size=config["influence"]["batch_size"], eigh=eigh)
    log.info("baselines[%s]: %s", scenario, sorted(out_scores))
    io.save_tensors(out, out_scores, args={**_finetune_args(config, scenario), "influence": config["influence"]},
                    convention="larger = more helpful; single_stage and grad_dot in removal-effect units (" + msif.SCORE_CONVENTION + ")")


def run_lds_subsets(config: dict, data_path: str, out: str) -> None:
    from msif.validation import batches, lds_subsets

    n = len(io.load_tensors(data_path)["pretrain.y"])
    v = config["validation"]["lds"]
    subsets = lds_subsets(n, v["fraction"], v["n_subsets"], config["seed"])
    io.write_json(out, {"subsets": subsets, "batches": batches(len(subsets), v["subsets_per_job"])})


def run_lds_retrain(config: dict, scenario: str, batch: int, data_path: str, pretrain_path: str, finetune_path: str,
                    subsets_path: str, out: str) -> None:
    """Retrain both stages on each LDS subset S_j of one batch; record Δ test loss for every test example."""
    import pandas as pd
    from tqdm import tqdm

    exp, pt, pt_params, ft, ft_params = _load_stages(config, scenario, data_path, pretrain_path, finetune_path)
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


def run_removal_sets(config: dict, scores_path: str, out: str) -> None:
    from msif.validation import batches, removal_sets

    scores = io.load_tensors(scores_path, {"seed": config["seed"]})["scores"]
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


def run_noise(config: dict, scenario: str, rep: int, data_path: str, pretrain_path: str, finetune_path: str, out: str,
              kind: str = "warm") -> None:
    """Noise floor: retrain both stages on the *full* set and record the change of every test loss.

    ``kind="warm"``: the run's own procedure from a warm start perturbed by ``validation.noise_scale``;
    ``kind="seed"``: a cold start from another seed's initialisation (method.md: "and under another seed").
    """
    import pandas as pd

    from msif.retraining import retrain_from_scratch

    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind {kind!r}: allowed {list(NOISE_KINDS)}")
    exp, pt, pt_params, ft, ft_params = _load_stages(config, scenario, data_path, pretrain_path, finetune_path)
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


def run_compare(config: dict, scores_paths: dict, sets_paths: dict, retrain_paths: dict, noise_paths: dict,
                leave_k_out_out: str, summary_out: str, baselines_paths: dict | None = None, lds_subsets_path: str | None = None,
                lds_paths: dict | None = None, lds_out: str | None = None) -> None:
    """Join predicted (every method and solver) and actual effects; correlations with bootstrap intervals,
    the LDS, and the noise floor per scenario."""
    import pandas as pd

    from msif.validation import bootstrap_lds, bootstrap_pearson, correlations, lds, lds_predictions, predicted_effects

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


def run_aggregate(seeds: list[int], n_boot: int, leave_k_out_paths: list[str], summary_paths: list[str], lds_paths: list[str],
                  leave_k_out_out: str, summary_out: str, lds_out: str) -> None:
    """Pool the per-seed validation tables: every seed's rows (column ``seed``) plus pooled rows (``seed = all``)."""
    import pandas as pd

    from msif.validation import pooled_summary

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
