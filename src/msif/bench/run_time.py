"""Where a workflow run's time goes: ``python -m msif.bench.run_time`` (``make bench-run``) → ``results/bench/run_time.csv``.

Runs the workflow itself, as ``make run`` does (``snakemake --profile workflow/profiles/default``), on a copy
of the workflow (``Snakefile``, ``workflow/``, ``config/``, ``.test/``, ``envs/`` of ``--source``) in a fresh
folder of its own (``<out>/run_time/<config's run>``, emptied first), so nothing of ``results/`` is reused
or touched: by default ``config/config.yaml`` and then the tiny ``.test/config/config.yaml``; ``--tiny``
(or ``--smoke``) only the tiny one. ``--parse DIR`` reads a finished run's folder instead of running.

One row per (config, rule), then two summary rows per config:

- ``jobs``: the rule's jobs in the run (Snakemake's log);
- ``wall_s``: the sum of the rule's benchmark files' ``s`` (Snakemake's ``benchmark:``); for a rule without
  them, the jobs' own wall time from their logs (``msif job end``), else from Snakemake's log (whole seconds);
  ``wall_source`` says which;
- ``cpu_time_s``: the sum of the benchmark files' ``cpu_time`` (Snakemake samples it: every 0.5 s for 15 s,
  then every 30 s, so a long job's last seconds are missing); ``cpu_s``: the jobs' own CPU seconds at
  exit from their logs (exact; NaN for a job that does not log it);
- ``startup_s``: the summed start-up seconds of the jobs (process creation → entering ``msif.logs.job``:
  Python, Snakemake's script preamble, ``import torch``, the step's imports), ``startup_mean_s`` per job;
- ``dynamo_jobs``: the jobs whose process imported ``torch._dynamo`` (a ``torch.func`` transform ran: 2–4 s of
  import that plain ``torch.autograd`` does not cost);
- ``(jobs)``: every job summed; ``(run)``: ``wall_s`` the whole run's wall time (Snakemake started →
  finished, DAG building included), ``cpu_s`` the summed job CPU seconds, ``utilisation`` the share of
  ``cores × wall`` the jobs' CPU time filled.

Every row carries the machine's load average (1 min) before, during (mean of samples every 5 s) and after
its run: the cores are shared, so compare runs made under similar load. ``run_time.json`` records the
commands, the cores, the git commit and the dates.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from msif.logs import END_RE, START_RE

DEFAULT_CONFIG = "config/config.yaml"
TINY_CONFIG = ".test/config/config.yaml"
WORKFLOW_FILES = ("Snakefile", "workflow", "config", ".test", "envs")
PROFILE = "workflow/profiles/default"
COLUMNS = ["config", "rule", "jobs", "wall_s", "wall_source", "cpu_time_s", "cpu_s", "startup_s", "startup_mean_s", "dynamo_jobs",
           "utilisation", "cores", "load_before", "load_mean", "load_after"]
SUMMARY_ROWS = ("(jobs)", "(run)")

log_line = re.compile(r"^\s+(?P<key>log|benchmark|jobid): (?P<value>.+)$")
rule_line = re.compile(r"^(?:local)?rule (?P<rule>\w+):$")
stamp_line = re.compile(r"^\[(?P<stamp>\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
finished_line = re.compile(r"^Finished jobid: (?P<jobid>\d+)")


@dataclass
class Job:
    rule: str
    jobid: int
    start: datetime | None = None
    end: datetime | None = None
    log: str | None = None
    benchmark: str | None = None
    fields: dict = field(default_factory=dict)


def parse_snakemake_log(text: str) -> list[Job]:
    """The jobs of one Snakemake run log: rule, jobid, start and end (whole seconds), log and benchmark files."""
    jobs: dict[int, Job] = {}
    stamp: datetime | None = None
    current: Job | None = None
    for line in text.splitlines():
        if m := stamp_line.match(line):
            stamp = datetime.strptime(" ".join(m["stamp"].split()), "%a %b %d %H:%M:%S %Y")
            current = None
        elif m := rule_line.match(line):
            current = Job(m["rule"], -1, start=stamp)
        elif current is not None and (m := log_line.match(line)):
            value = m["value"].split(",")[0].strip()
            if m["key"] == "jobid":
                current.jobid = int(value)
                jobs[current.jobid] = current
            else:
                setattr(current, m["key"], value)
        elif m := finished_line.match(line):
            job = jobs.get(int(m["jobid"]))
            if job is not None:
                job.end = stamp
        elif not line.startswith(" "):
            current = None
    return list(jobs.values())


def read_benchmark(path: Path) -> dict:
    """``s`` and ``cpu_time`` of a Snakemake benchmark file (NaN where missing or NA)."""
    try:
        row = pd.read_csv(path, sep="\t").iloc[-1]
    except (OSError, ValueError, IndexError):
        return {"s": math.nan, "cpu_time": math.nan}
    return {k: pd.to_numeric(row.get(k), errors="coerce") for k in ("s", "cpu_time")}


def read_job_log(path: Path) -> dict:
    """The ``msif job start``/``end`` lines of a job's log (NaN where the job did not write them)."""
    out = {"startup": math.nan, "wall": math.nan, "cpu": math.nan, "dynamo": math.nan}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    if m := START_RE.search(text):
        out["startup"] = float(m["startup"])
    if m := END_RE.search(text):
        out["wall"], out["cpu"] = float(m["wall"]), float(m["cpu"])
        out["dynamo"] = float(m["dynamo"]) if m["dynamo"] is not None else math.nan
    return out


def job_table(workdir: Path, snakemake_log: Path) -> pd.DataFrame:
    """One row per job of the run: rule, wall (and where it comes from), CPU time both ways, start-up."""
    rows = []
    for job in parse_snakemake_log(snakemake_log.read_text(errors="replace")):
        bench = read_benchmark(workdir / job.benchmark) if job.benchmark else {"s": math.nan, "cpu_time": math.nan}
        own = read_job_log(workdir / job.log) if job.log else read_job_log(Path("/nonexistent"))
        stamps = (job.end - job.start).total_seconds() if job.start and job.end else math.nan
        if math.isfinite(bench["s"]):
            wall, source = bench["s"], "benchmark"
        elif math.isfinite(own["wall"]):
            wall, source = own["wall"], "job log"
        else:
            wall, source = stamps, "snakemake log"
        rows.append({"rule": job.rule, "jobid": job.jobid, "wall_s": wall, "wall_source": source, "cpu_time_s": bench["cpu_time"],
                     "cpu_s": own["cpu"], "startup_s": own["startup"], "dynamo": own["dynamo"]})
    return pd.DataFrame(rows, columns=["rule", "jobid", "wall_s", "wall_source", "cpu_time_s", "cpu_s", "startup_s", "dynamo"])


def _sum(s: pd.Series) -> float:
    """Sum of the finite values; NaN where none is."""
    s = pd.to_numeric(s, errors="coerce").dropna()
    return float(s.sum()) if len(s) else math.nan


def rule_table(jobs: pd.DataFrame, config: str, run_wall: float, cores: int, load: dict) -> pd.DataFrame:
    """Per rule (in order of first appearance), then ``(jobs)`` and ``(run)`` (see the module's docstring)."""
    rows = []
    for rule, g in jobs.groupby("rule", sort=False):
        startup = _sum(g.startup_s)
        rows.append({"rule": rule, "jobs": len(g), "wall_s": _sum(g.wall_s), "wall_source": "+".join(sorted(set(g.wall_source))),
                     "cpu_time_s": _sum(g.cpu_time_s), "cpu_s": _sum(g.cpu_s), "startup_s": startup,
                     "startup_mean_s": startup / g.startup_s.notna().sum() if g.startup_s.notna().any() else math.nan,
                     "dynamo_jobs": _sum(g.dynamo)})
    cpu = _sum(jobs.cpu_s)
    startup = _sum(jobs.startup_s)
    rows.append({"rule": "(jobs)", "jobs": len(jobs), "wall_s": _sum(jobs.wall_s), "wall_source": "sum",
                 "cpu_time_s": _sum(jobs.cpu_time_s), "cpu_s": cpu, "startup_s": startup,
                 "startup_mean_s": startup / jobs.startup_s.notna().sum() if jobs.startup_s.notna().any() else math.nan,
                 "dynamo_jobs": _sum(jobs.dynamo)})
    rows.append({"rule": "(run)", "jobs": len(jobs), "wall_s": run_wall, "wall_source": "run", "cpu_time_s": _sum(jobs.cpu_time_s),
                 "cpu_s": cpu, "startup_s": startup, "utilisation": cpu / (cores * run_wall) if run_wall > 0 else math.nan})
    out = pd.DataFrame(rows)
    out.insert(0, "config", config)
    out["cores"] = cores
    for k, v in load.items():
        out[k] = v
    return out.reindex(columns=COLUMNS)


class LoadSampler:
    """The 1-minute load average every ``interval`` seconds while a run lasts."""

    def __init__(self, interval: float = 5.0):
        self.interval, self.samples = interval, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        return {"load_before": self.samples[0], "load_mean": sum(self.samples) / len(self.samples), "load_after": os.getloadavg()[0]}


def prepare(source: Path, workdir: Path) -> None:
    """A fresh copy of the workflow (``WORKFLOW_FILES`` of ``source``) in ``workdir``, emptied first."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    for name in WORKFLOW_FILES:
        src = source / name
        if src.is_dir():
            shutil.copytree(src, workdir / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy(src, workdir / name)


def run_workflow(source: Path, workdir: Path, config: str, cores: int | None, extra: list[str]) -> tuple[float, dict, list[str]]:
    """Snakemake with the default profile on ``config`` in ``workdir``: (wall seconds, load averages, the command)."""
    cmd = [sys.executable, "-m", "snakemake", "--profile", PROFILE, "--configfile", config, *(["--cores", str(cores)] if cores else []),
           *extra]
    env = dict(os.environ)
    if (source / "src" / "msif").is_dir():  # the jobs import the msif of the tree they run
        env["PYTHONPATH"] = os.pathsep.join([str((source / "src").resolve()), *filter(None, [env.get("PYTHONPATH")])])
    with LoadSampler() as load:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    (workdir / "snakemake.out").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}) in {workdir}:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return wall, load.summary(), cmd


def latest_snakemake_log(workdir: Path) -> Path:
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    if not logs:
        raise FileNotFoundError(f"no Snakemake log under {workdir}/.snakemake/log")
    return logs[-1]


def measure(source: Path, workdir: Path, config: str, label: str, cores: int | None, extra: list[str]) -> tuple[pd.DataFrame, dict]:
    prepare(source, workdir)
    wall, load, cmd = run_workflow(source, workdir, config, cores, extra)
    n_cores = cores or os.cpu_count() or 1
    table = rule_table(job_table(workdir, latest_snakemake_log(workdir)), label, wall, n_cores, load)
    return table, {"config": config, "workdir": str(workdir), "command": cmd, "wall_s": wall, "cores": n_cores, **load,
                   "finished": datetime.now(UTC).isoformat(timespec="seconds")}


def parse_run(workdir: Path, label: str, cores: int) -> pd.DataFrame:
    """A finished run's table from its folder; the whole-run wall time from Snakemake's log (first to last stamp)."""
    log = latest_snakemake_log(workdir)
    jobs = parse_snakemake_log(log.read_text(errors="replace"))
    stamps = [t for j in jobs for t in (j.start, j.end) if t]
    wall = (max(stamps) - min(stamps)).total_seconds() if stamps else math.nan
    nan = {"load_before": math.nan, "load_mean": math.nan, "load_after": math.nan}
    return rule_table(job_table(workdir, log), label, wall, cores, nan)


def git_commit(source: Path) -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=source, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source, capture_output=True, text=True).stdout
        return head + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_label(source: Path, config: str) -> str:
    import yaml

    return str(yaml.safe_load((source / config).read_text()).get("run", Path(config).stem))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m msif.bench.run_time", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="results/bench", help="folder of run_time.csv/.json (default results/bench)")
    ap.add_argument("--config", default=DEFAULT_CONFIG, help=f"the full run's config, relative to --source (default {DEFAULT_CONFIG})")
    ap.add_argument("--tiny", "--smoke", action="store_true", help=f"only the tiny config ({TINY_CONFIG})")
    ap.add_argument("--no-tiny", action="store_true", help="only --config, not the tiny config after it")
    ap.add_argument("--source", default=".", help="the tree whose workflow (and src/msif, if it has one) is run (default .)")
    ap.add_argument("--workdir", default=None, help="where the runs go (default <out>/run_time/<config's run>)")
    ap.add_argument("--cores", type=int, default=None, help="--cores for Snakemake (default: the profile's, all)")
    ap.add_argument("--parse", metavar="DIR", nargs="+", default=None, help="only read finished runs' folders (no run)")
    ap.add_argument("--name", default="run_time", help="file name stem of the table (default run_time)")
    ap.add_argument("snakemake_args", nargs="*", help="after --: extra Snakemake arguments")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source = Path(args.source).resolve()
    tables, meta = [], {"commit": git_commit(source), "source": str(source), "cpu_count": os.cpu_count(), "runs": []}
    if args.parse:
        for d in map(Path, args.parse):
            tables.append(parse_run(d, d.name, args.cores or os.cpu_count() or 1))
            meta["runs"].append({"workdir": str(d), "parsed": True})
    else:
        configs = [TINY_CONFIG] if args.tiny else [args.config] + ([] if args.no_tiny else [TINY_CONFIG])
        for config in configs:
            label = run_label(source, config)
            workdir = Path(args.workdir) / label if args.workdir else out / "run_time" / label
            print(f"run_time: {config} in {workdir} (load {os.getloadavg()[0]:.2f}) ...", file=sys.stderr, flush=True)
            table, info = measure(source, workdir.resolve(), config, label, args.cores, args.snakemake_args)
            tables.append(table)
            meta["runs"].append(info)
            print(f"run_time: {label}: {info['wall_s']:.1f} s wall (load {info['load_mean']:.2f})", file=sys.stderr, flush=True)
    table = pd.concat(tables, ignore_index=True)
    (out / f"{args.name}.csv").write_text(table.to_csv(index=False))
    (out / f"{args.name}.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
