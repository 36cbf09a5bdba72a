"""What faithfulness costs in accuracy: a sweep of regularisation and damping, ``python -m msif.bench.tradeoff``
(``make bench-tradeoff``).

Not a test: for every named grid point of ``config/bench/tradeoff.yaml`` (a partial config merged onto the base
workflow config, :func:`point_config`) and every seed, it runs the workflow's own steps in-process, in DAG order —
prepare_data, pretrain, pretrain_hessian, finetune, finetune_ihvp / pretrain_ihvp / scores with the ``exact`` solver
and the point's ``influence.damping``, removal_sets, retrain, lds_subsets, lds_retrain — and measures, per scenario:

- ``pt_test_accuracy``, ``ft_test_accuracy``: the trained models' test accuracy (the training steps' sidecars);
- ``pearson``, ``slope``: leave-k-out, Pearson of predicted ``Σ_{i∈S} score[t, i]`` against the retrained actual
  Δ test loss over all ``n_sets`` removal sets, and the slope of actual ≈ slope · predicted
  (:func:`msif.validation.metrics.correlations`);
- ``lds_warm``: the linear datamodeling score over ``n_subsets`` warm-started retrains on half-size subsets
  (:func:`msif.validation.metrics.lds` of :func:`~msif.validation.metrics.lds_predictions`);
- ``seconds``, ``cpu_seconds``: wall and CPU time (this process) of the whole point and seed, both scenarios together
  (measured when computed, then read from the cache; on a shared machine the CPU time is the one to compare);
- ``shared_from``: a point equal to this one but for ``influence.damping``, measured before it in the sweep, whose
  trained models and LDS retrains this point copied (:data:`SHARED`: damping enters the scores only), so its
  accuracy and LDS ground truth are that point's and its time leaves them out; empty when it trained its own.

It writes ``tradeoff.csv`` (:data:`COLUMNS`; ``default`` marks the point whose merged config is the base config
itself, the shipped default), ``tradeoff.json`` (machine, settings, which points were recomputed) and ``tradeoff.png``
(Pearson and LDS against finetuned test accuracy) in ``--out``. Each point and seed is cached in
``<out>/tradeoff/<point>/seed<seed>/`` with the hash of its merged config and measurement sizes (:func:`cache_key`):
a rerun recomputes nothing, and a point whose settings changed is recomputed from scratch. ``--smoke``: the
settings file's ``smoke:`` block (the tiny config, two points; seconds; cache in ``<out>/tradeoff/smoke/``).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import re
import shutil
import time
from pathlib import Path

import pandas as pd
import torch
import yaml
from tqdm import tqdm

from msif import io
from msif.bench.measure import machine
from msif.config import for_seed, validate_config
from msif.steps import influence as influence_steps
from msif.steps import train as train_steps
from msif.steps import validation as validation_steps
from msif.validation import metrics

log = logging.getLogger("msif.bench.tradeoff")

SETTINGS = "config/bench/tradeoff.yaml"
KEYS = {"base", "seeds", "measure", "points", "smoke"}
MEASURE_KEYS = {"n_test", "ks", "selections", "n_subsets"}
SMOKE_KEYS = {"base", "seeds", "measure", "points"}
POINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
SOLVER = "exact"
CACHE_VERSION = 1  # bump when what a cached point holds changes
COLUMNS = ["point", "overrides", "scenario", "seed", "default", "pt_test_accuracy", "ft_test_accuracy", "pearson", "slope",
           "lds_warm", "n_sets", "n_subsets", "seconds", "cpu_seconds", "shared_from"]


# -- settings ----------------------------------------------------------------------------------------------------------

def merge(base: dict, override: dict) -> dict:
    """``override`` merged onto a copy of ``base``: mappings key by key, anything else (lists too) replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else copy.deepcopy(value)
    return out


def flat(override: dict, prefix: str = "") -> str:
    """An override as text, one ``dotted.key=value`` per leaf (``(base config)`` for none)."""
    parts = []
    for key, value in override.items():
        if isinstance(value, dict) and value:
            parts.append(flat(value, f"{prefix}{key}."))
        else:
            parts.append(f"{prefix}{key}={json.dumps(value)}")
    return ", ".join(parts) or "(base config)"


def load_settings(path: str, smoke: bool = False) -> dict:
    """The settings file, its keys and every point's merged config checked (``ValueError`` naming what is wrong);
    ``smoke``: its ``smoke:`` block replaces base, seeds, measure and keeps only the points it names."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: not a YAML mapping")
    unknown = set(raw) - KEYS
    missing = {"base", "points", "measure"} - set(raw)
    if unknown or missing:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}; allowed {sorted(KEYS)}")
    settings = {"seeds": [0], **{k: v for k, v in raw.items() if k != "smoke"}}
    if smoke:
        block = raw.get("smoke") or {}
        if not isinstance(block, dict) or set(block) - SMOKE_KEYS:
            raise ValueError(f"{path}: smoke must be a mapping with keys among {sorted(SMOKE_KEYS)}")
        settings.update({k: v for k, v in block.items() if k != "points"})
        if "points" in block:
            names = block["points"]
            absent = [n for n in names if n not in (raw["points"] or {})]
            if absent:
                raise ValueError(f"{path}: smoke.points names {absent}, which are not among points")
            settings["points"] = {n: raw["points"][n] for n in names}
    check_settings(path, settings)
    return settings


def check_settings(path: str, s: dict) -> None:
    m = s["measure"]
    if not isinstance(m, dict) or set(m) != MEASURE_KEYS:
        raise ValueError(f"{path}: measure needs exactly the keys {sorted(MEASURE_KEYS)}, got {sorted(m) if isinstance(m, dict) else m!r}")
    if not (isinstance(s["seeds"], list) and s["seeds"] and all(isinstance(x, int) and x >= 0 for x in s["seeds"])):
        raise ValueError(f"{path}: seeds must be a non-empty list of integers >= 0, got {s['seeds']!r}")
    if not isinstance(s["points"], dict) or not s["points"]:
        raise ValueError(f"{path}: points must be a non-empty mapping of name -> partial config")
    for name, override in s["points"].items():
        if not POINT_NAME.match(str(name)):
            raise ValueError(f"{path}: point name {name!r}: letters, digits and _.+- only (it names a folder)")
        if not isinstance(override or {}, dict):
            raise ValueError(f"{path}: point {name}: a partial config (a mapping), got {override!r}")
        try:
            point_config(s, override or {})
        except (ValueError, OSError) as err:
            raise ValueError(f"{path}: point {name}: {err}") from None


def resolve(path: str) -> Path:
    """A path as given: relative ones from the current folder (``make`` runs in the checkout's root). The library reads
    no file of the repository tree by its own location (tests/test_imports.py): an installed msif has none."""
    return Path(path)


def base_config(settings: dict) -> dict:
    """The base workflow config as the file holds it (not yet validated)."""
    raw = yaml.safe_load(resolve(settings["base"]).read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{settings['base']}: not a YAML mapping")
    return raw


def point_config(settings: dict, override: dict) -> dict:
    """The workflow config of one point: ``override`` merged onto the base, then the measurement sizes (``n_test``
    test examples, leave-k-out ``ks`` × ``selections``, ``n_subsets`` LDS subsets, all in one retraining batch), the
    seeds and the exact solver set; validated as the workflow validates (schema defaults filled in)."""
    m = settings["measure"]
    c = merge(base_config(settings), override)
    c["seeds"] = list(settings["seeds"])
    inf = c.setdefault("influence", {})
    inf.update({"n_test": m["n_test"], "solvers": [SOLVER], "group": {"enabled": False}})
    inf.pop("shards", None)
    v = c.setdefault("validation", {})
    v.update({"ks": list(m["ks"]), "selections": list(m["selections"]), "reference_solver": SOLVER, "baselines": False,
              "sets_per_job": m["n_test"] * len(m["ks"]) * len(m["selections"])})
    v["lds"] = {**v.get("lds", {}), "n_subsets": m["n_subsets"], "subsets_per_job": max(1, m["n_subsets"]), "cold_seeds": 0}
    return validate_config(c)


def cache_key(config: dict) -> str:
    """SHA-256 of one point and seed's whole config (its ``run`` name aside) and :data:`CACHE_VERSION`."""
    body = {k: v for k, v in config.items() if k != "run"}
    return hashlib.sha256(json.dumps([CACHE_VERSION, body], sort_keys=True, default=str).encode()).hexdigest()


def share_key(config: dict) -> str:
    """:func:`cache_key` with ``influence.damping`` set aside: points equal in it train the same models and retrain the
    same LDS subsets (damping enters the scores only), so a later one copies those files from the first (:data:`SHARED`)."""
    return cache_key({**config, "influence": {**config["influence"], "damping": None}})


# Files that depend on everything but influence.damping: the data, both stages' optima, the pretraining Hessian's
# eigendecomposition (undamped) and the LDS subsets and their retrains; relative to a point's folder.
SHARED = ("data", "train", "influence/pretrain_hessian.pt", "influence/pretrain_hessian.pt.json", "validation/lds_subsets.json",
          "validation/*/lds*.csv")


def copy_shared(donor: Path, folder: Path) -> None:
    for pattern in SHARED:
        for src in donor.glob(pattern):
            dst = folder / src.relative_to(donor)
            dst.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)


# -- one point and seed ------------------------------------------------------------------------------------------------

def paths(folder: Path) -> dict:
    return {
        "data": folder / "data/splits.pt", "pretrain": folder / "train/pretrain.pt",
        "hessian": folder / "influence/pretrain_hessian.pt", "subsets": folder / "validation/lds_subsets.json",
        "finetune": lambda s: folder / f"train/finetune_{s}.pt",
        "finetune_ihvp": lambda s: folder / f"influence/{s}/finetune_ihvp.pt",
        "pretrain_ihvp": lambda s: folder / f"influence/{s}/pretrain_ihvp.pt",
        "scores": lambda s: folder / f"influence/{s}/scores.pt",
        "sets": lambda s: folder / f"validation/{s}/removal_sets.json",
        "retrain": lambda s, b: folder / f"validation/{s}/retrain{b}.csv",
        "lds": lambda s, b: folder / f"validation/{s}/lds{b}.csv",
    }


def step(fun, *args) -> None:
    """Run one workflow step unless its output (the last argument) is there (copied from a point sharing it)."""
    if not Path(args[-1]).exists():
        fun(*args)


def train_and_score(c: dict, p: dict) -> None:
    """The workflow's steps up to the exact scores, for every scenario."""
    s_ = {k: str(v) for k, v in p.items() if not callable(v)}
    if not p["data"].exists():
        train_steps.prepare_data(c, s_["data"], n_test=c["influence"]["n_test"])
    step(train_steps.pretrain, c, s_["data"], s_["pretrain"])
    step(influence_steps.pretrain_hessian, c, s_["data"], s_["pretrain"], s_["hessian"])
    for s in c["scenarios"]:
        ft = str(p["finetune"](s))
        step(train_steps.finetune, c, s, s_["data"], s_["pretrain"], ft)
        influence_steps.finetune_ihvp(c, s, SOLVER, s_["data"], s_["pretrain"], ft, str(p["finetune_ihvp"](s)))
        influence_steps.pretrain_ihvp(c, s, SOLVER, s_["data"], s_["pretrain"], ft, str(p["finetune_ihvp"](s)), s_["hessian"],
                                      str(p["pretrain_ihvp"](s)))
        influence_steps.scores_shard(c, s, SOLVER, s_["data"], s_["pretrain"], str(p["pretrain_ihvp"](s)), str(p["scores"](s)))


def retrain_all(c: dict, p: dict) -> None:
    """Leave-k-out and LDS retraining of both stages (the workflow's retrain and lds_retrain steps), every batch."""
    data, pretrain = str(p["data"]), str(p["pretrain"])
    step(validation_steps.lds_subsets, c, data, str(p["subsets"]))
    for s in c["scenarios"]:
        ft, sets = str(p["finetune"](s)), str(p["sets"](s))
        validation_steps.removal_sets(c, str(p["scores"](s)), sets)
        for b in range(len(io.read_json(sets)["batches"])):
            validation_steps.retrain(c, s, b, data, pretrain, ft, sets, str(p["retrain"](s, b)))
        for b in range(len(io.read_json(p["subsets"])["batches"])):
            step(validation_steps.lds_retrain, c, s, b, data, pretrain, ft, str(p["subsets"]), str(p["lds"](s, b)))


def scenario_metrics(c: dict, p: dict, s: str) -> dict:
    """Accuracy of both trained models, leave-k-out Pearson and slope, and the warm LDS of one scenario."""
    scores = io.load_tensors(p["scores"](s))["scores"]
    sets = io.read_json(p["sets"](s))["sets"]
    retrain = pd.concat([pd.read_csv(p["retrain"](s, b)) for b in range(len(io.read_json(p["sets"](s))["batches"]))])
    actual = retrain.set_index("set_id").loc[[x["set_id"] for x in sets], "actual"].to_numpy()
    corr = metrics.correlations(metrics.predicted_effects(scores, sets), actual)
    spec = io.read_json(p["subsets"])
    lds_table = pd.concat([pd.read_csv(p["lds"](s, b)) for b in range(len(spec["batches"]))])
    lds_actual = lds_table.pivot(index="subset_id", columns="test_index", values="actual").sort_index().to_numpy()
    lds_warm, _ = metrics.lds(metrics.lds_predictions(scores, spec["subsets"]), lds_actual)
    return {"pt_test_accuracy": io.load_meta(p["pretrain"])["accuracy"]["test"],
            "ft_test_accuracy": io.load_meta(p["finetune"](s))["accuracy"]["test"],
            "pearson": corr["pearson"], "slope": corr["slope"], "lds_warm": lds_warm, "n_sets": len(sets),
            "n_subsets": len(spec["subsets"])}


def measure_point(config: dict, folder: Path, donor: tuple[str, Path] | None = None) -> tuple[dict, bool]:
    """One point and seed: ``(per-scenario metrics and seconds, recomputed?)``; read from ``folder/result.json`` when
    its key is this config's :func:`cache_key`, else the folder is emptied and everything computed again — but the
    :data:`SHARED` files of ``donor`` (name, folder: a point equal but for damping, measured before), copied."""
    key, result = cache_key(config), folder / "result.json"
    if result.is_file():
        try:
            cached = io.read_json(result)
        except ValueError:
            cached = {}
        if cached.get("key") == key:
            return cached, False
    if folder.exists():
        shutil.rmtree(folder)
    if donor:
        copy_shared(donor[1], folder)
    p, t0, cpu0 = paths(folder), time.perf_counter(), time.process_time()
    train_and_score(config, p)
    retrain_all(config, p)
    out = {"key": key, "scenarios": {s: scenario_metrics(config, p, s) for s in config["scenarios"]},
           "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu0, "shared_from": donor[0] if donor else ""}
    io.write_json(result, out)
    return out, True


# -- the sweep -----------------------------------------------------------------------------------------------------------

def run(settings: dict, cache: Path) -> tuple[pd.DataFrame, list[str]]:
    """Every point × seed (cached), as the rows of :data:`COLUMNS`; and the ``point/seed`` pairs recomputed."""
    base = point_config(settings, {})
    rows, computed, donors = [], [], {}
    jobs = [(name, seed) for name in settings["points"] for seed in settings["seeds"]]
    for name, seed in tqdm(jobs, desc="tradeoff points", unit="point"):
        override = settings["points"][name] or {}
        merged = point_config(settings, override)
        config = {**for_seed(merged, seed), "run": f"tradeoff-{name}"}
        t0 = time.perf_counter()
        folder = cache / name / f"seed{seed}"
        result, recomputed = measure_point(config, folder, donors.get(share_key(config)))
        donors.setdefault(share_key(config), (name, folder))
        if recomputed:
            computed.append(f"{name}/seed{seed}")
        log.info("%s seed %d: %s in %.1f s", name, seed, "computed" if recomputed else "cached", time.perf_counter() - t0)
        for scenario, m in result["scenarios"].items():
            rows.append({"point": name, "overrides": flat(override), "scenario": scenario, "seed": seed,
                         "default": merged == base, **m, "seconds": result["seconds"], "cpu_seconds": result["cpu_seconds"],
                         "shared_from": result["shared_from"]})
            log.info("  %s: %s", scenario, {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()})
    return pd.DataFrame(rows, columns=COLUMNS), computed


# -- figure ------------------------------------------------------------------------------------------------------------

MARKERS = {"fixed": "o", "updated": "s"}


def figure(df: pd.DataFrame, path: Path) -> None:
    """Pearson and warm LDS against finetuned test accuracy (means over seeds): one marker per scenario, each point
    labelled, the shipped default circled red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = df.groupby(["point", "scenario", "default"], as_index=False, sort=False)[["ft_test_accuracy", "pearson", "lds_warm"]].mean()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, metric, label in zip(axes, ("pearson", "lds_warm"), ("leave-k-out Pearson (predicted vs retrained)",
                                                                  "LDS (warm start)"), strict=True):
        for i, (scenario, d) in enumerate(mean.groupby("scenario", sort=False)):
            ax.scatter(d.ft_test_accuracy, d[metric], marker=MARKERS.get(scenario, "^"), color=f"C{i}", label=scenario, s=50)
            for x, y, name in zip(d.ft_test_accuracy, d[metric], d.point, strict=True):
                if math.isfinite(x) and math.isfinite(y):
                    ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        d = mean[mean.default]
        ax.scatter(d.ft_test_accuracy, d[metric], s=220, facecolors="none", edgecolors="red", linewidths=2, label="shipped default")
        ax.set(xlabel="finetuned test accuracy", ylabel=label, title=f"{label} against accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- command line ------------------------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m msif.bench.tradeoff", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=SETTINGS, help=f"settings file (default {SETTINGS}; not a workflow config)")
    p.add_argument("--out", default="results/bench", help="output folder (tradeoff.{csv,json,png}; cache in tradeoff/)")
    p.add_argument("--points", nargs="+", default=None, help="only these points (default: all)")
    p.add_argument("--smoke", action="store_true", help="the settings' smoke block: tiny config, seconds (cache in tradeoff/smoke/)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine may be shared)")
    p.add_argument("--verbose", action="store_true", help="the workflow steps' own log lines too")
    return p


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("msif").setLevel(logging.INFO if args.verbose else logging.WARNING)
    log.setLevel(logging.INFO)
    settings = load_settings(args.config, args.smoke)
    if args.points:
        absent = [n for n in args.points if n not in settings["points"]]
        if absent:
            raise SystemExit(f"--points: {absent} not among {list(settings['points'])}")
        settings["points"] = {n: settings["points"][n] for n in args.points}
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    df, computed = run(settings, out / "tradeoff" / ("smoke" if args.smoke else ""))
    meta = {"config": args.config, "smoke": args.smoke, "base": settings["base"], "seeds": settings["seeds"],
            "solver": SOLVER, **settings["measure"], "points": settings["points"], "recomputed": computed,
            "point_seconds": float(df.drop_duplicates(["point", "seed"]).seconds.sum()),
            "point_cpu_seconds": float(df.drop_duplicates(["point", "seed"]).cpu_seconds.sum()), **machine(args.threads),
            "seconds": time.perf_counter() - t0}
    io.write_text(out / "tradeoff.csv", df.to_csv(index=False))
    io.write_text(out / "tradeoff.json", json.dumps(meta, indent=2, default=str))
    figure(df, out / "tradeoff.png")
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.precision", 4):
        print(df.drop(columns=["overrides"]).to_string(index=False))
    return df


if __name__ == "__main__":
    main()
