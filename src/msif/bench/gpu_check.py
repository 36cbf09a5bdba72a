"""The CUDA path, checked on a machine with a GPU: ``python -m msif.bench.gpu_check`` (``make gpu-check``).

One script, sized to finish in a few minutes on one GPU:

1. the influence rules of ``--config`` (default ``config/scale.yaml``) on the CPU: Snakemake with the default
   profile, ``--config device=cpu``, up to the ``scores`` rule (data, training, every solve, every shard), in a
   fresh copy of the workflow under ``<out>/gpu_check/cpu``;
2. the *same* trained parameters copied (data and ``train/`` folders, times kept) into a second copy, and the
   influence rules run again there with ``--config device=cuda`` and ``--rerun-triggers mtime`` (so a changed
   ``device`` does not retrain: the two runs solve for the same optima);
3. every ``scores.pt`` of the two runs compared: ``rel_err = ‖S_cuda − S_cpu‖_F / ‖S_cpu‖_F`` per (seed, scenario,
   solver), which must not exceed ``--tol`` (default 1e-3: float32 CG to 1e-5 on a CNN, reduction orders differ);
4. ``<out>/gpu.csv``: per rule, jobs and summed wall seconds on each device (Snakemake's ``benchmark:`` files)
   and the speed-up; then one row per scores file with its ``rel_err``. ``gpu.json`` records the devices, the
   commit and the commands.

``make gpu-check`` runs ``pytest -m cuda`` first (the CUDA tests, skipped everywhere else). Without CUDA the
script stops with exit status 2, unless ``--second-device cpu`` (the whole pipeline on the CPU twice: what the
test suite runs on the tiny config, ``--smoke``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import torch
import yaml

from msif import io
from msif.bench.run_time import git_commit, job_table, latest_snakemake_log, prepare, run_workflow

DEFAULT_CONFIG = "config/scale.yaml"
SMOKE_CONFIG = ".test/config/config.yaml"
COLUMNS = ["rule", "jobs", "wall_s_cpu", "wall_s_second", "speedup", "seed", "scenario", "solver", "rel_err", "max_abs_err", "ok"]


def score_targets(config: dict, run: str) -> list[str]:
    """Every ``scores.pt`` of the config: one per (seed, scenario, solver)."""
    return [f"results/{run}/seed{seed}/influence/{scenario}/{solver}/scores.pt"
            for seed in config["seeds"] for scenario in config["scenarios"] for solver in config["influence"]["solvers"]]


def copy_training(src_run: Path, dst_run: Path) -> None:
    """The data splits and trained optima of every seed (``data/``, ``train/``), modification times kept."""
    for seed_dir in sorted(src_run.glob("seed*")):
        for part in ("data", "train"):
            if (seed_dir / part).is_dir():
                shutil.copytree(seed_dir / part, dst_run / seed_dir.name / part, dirs_exist_ok=True, copy_function=shutil.copy2)


def rule_times(workdir: Path) -> pd.DataFrame:
    """Per rule of the run in ``workdir``: jobs and summed wall seconds (benchmark files where the rule has them)."""
    jobs = job_table(workdir, latest_snakemake_log(workdir))
    return jobs.groupby("rule", sort=False).agg(jobs=("jobid", "size"), wall_s=("wall_s", "sum")).reset_index()


def compare_scores(cpu_dir: Path, second_dir: Path, targets_cpu: list[str], targets_second: list[str], tol: float) -> pd.DataFrame:
    """``rel_err = ‖S₂ − S_cpu‖_F / ‖S_cpu‖_F`` and the largest absolute difference of every scores file."""
    rows = []
    for a, b in zip(targets_cpu, targets_second, strict=True):
        s_cpu = io.load_tensors(cpu_dir / a)["scores"].double()
        s_two = io.load_tensors(second_dir / b)["scores"].double()
        rel = float(torch.linalg.norm(s_two - s_cpu) / torch.linalg.norm(s_cpu))
        seed, _, scenario, solver = Path(a).parts[2:6]
        rows.append({"rule": "scores (agreement)", "seed": int(seed.removeprefix("seed")), "scenario": scenario, "solver": solver,
                     "rel_err": rel, "max_abs_err": float((s_two - s_cpu).abs().max()), "ok": rel <= tol})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m msif.bench.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=DEFAULT_CONFIG, help=f"workflow config, relative to --source (default {DEFAULT_CONFIG})")
    ap.add_argument("--smoke", action="store_true", help=f"the tiny config ({SMOKE_CONFIG}) instead")
    ap.add_argument("--out", default="results/bench", help="folder of gpu.csv/.json and the two runs (default results/bench)")
    ap.add_argument("--source", default=".", help="the tree whose workflow is run (default .)")
    ap.add_argument("--second-device", default="cuda", choices=["cuda", "cpu"], help="device of the second run (default cuda)")
    ap.add_argument("--tol", type=float, default=1e-3, help="largest relative Frobenius difference of the scores (default 1e-3)")
    ap.add_argument("--cores", type=int, default=None, help="--cores for Snakemake (default: the profile's, all)")
    args = ap.parse_args(argv)
    if args.second_device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (torch.cuda.is_available() is False); nothing run. "
              "Install a CUDA torch (make setup TORCH_PIP_ARGS=...) on a machine with a GPU.", file=sys.stderr)
        return 2
    source, out = Path(args.source).resolve(), Path(args.out).resolve()
    config_path = SMOKE_CONFIG if args.smoke else args.config
    config = yaml.safe_load((source / config_path).read_text())
    runs = {"cpu": "gpu-check-cpu", "second": f"gpu-check-{args.second_device}"}
    dirs = {k: out / "gpu_check" / k for k in runs}
    meta = {"commit": git_commit(source), "config": config_path, "second_device": args.second_device, "tol": args.tol,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "runs": {}}
    targets = {k: score_targets(config, run) for k, run in runs.items()}
    for key, device in (("cpu", "cpu"), ("second", args.second_device)):
        prepare(source, dirs[key])
        # "--opt=value" ends the option lists before it (--configfile, --config take several values)
        extra = ["--rerun-triggers=mtime", *targets[key], "--config", f"run={runs[key]}", f"device={device}"]
        if key == "second":
            copy_training(dirs["cpu"] / "results" / runs["cpu"], dirs[key] / "results" / runs[key])
        print(f"gpu_check: {config_path} on {device} in {dirs[key]} ...", file=sys.stderr, flush=True)
        wall, load, cmd = run_workflow(source, dirs[key], config_path, args.cores, extra)
        meta["runs"][key] = {"device": device, "wall_s": wall, "command": cmd, **load}
    times = rule_times(dirs["cpu"]).merge(rule_times(dirs["second"]), on="rule", how="outer", suffixes=("_cpu", "_second"))
    times = times.rename(columns={"jobs_cpu": "jobs"}).drop(columns="jobs_second")
    times["speedup"] = times.wall_s_cpu / times.wall_s_second
    agreement = compare_scores(dirs["cpu"], dirs["second"], targets["cpu"], targets["second"], args.tol)
    table = pd.concat([times, agreement], ignore_index=True).reindex(columns=COLUMNS)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "gpu.csv", index=False)
    meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    (out / "gpu.json").write_text(json.dumps(meta, indent=2, default=str))
    print(table.to_string(index=False))
    bad = agreement[~agreement.ok]
    if len(bad):
        print(f"gpu_check: {len(bad)} scores file(s) differ by more than {args.tol:g} (relative Frobenius)", file=sys.stderr)
        return 1
    print(f"gpu_check: every scores file agrees within {args.tol:g}; wrote {out / 'gpu.csv'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
